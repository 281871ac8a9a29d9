"""Sampling grids: ``n + 1`` decreasing VE sigmas ending in 0, separate from training schedules.

A grid decides where a sampler spends its network evaluations. Grids dense at low noise
(Karras, uniform log-SNR) are several times more accurate at equal NFE than grids uniform in
``t``, which spend the last evaluation at a large sigma and then jump to 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import schedules as S

__all__ = ["karras_sigmas", "logsnr_uniform_sigmas", "uniform_t_sigmas", "schedule_sigma_range", "make_grid", "GRIDS"]

GRIDS: tuple[str, ...] = ("karras", "logsnr", "leading", "trailing", "linspace")


def _check_steps(n: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"steps must be an integer of at least 1, got {n!r}")


def _check_range(sigma_min: float, sigma_max: float) -> None:
    if not (0 < sigma_min < sigma_max < math.inf):
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got sigma_min={sigma_min}, sigma_max={sigma_max}")


def _append_zero(s: Tensor) -> Tensor:
    return torch.cat([s, s.new_zeros(1)])


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """Karras et al. 2022, eq. 5: ``(smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho``, then 0."""
    _check_steps(n)
    _check_range(sigma_min, sigma_max)
    if rho <= 0:
        raise ValueError(f"rho must be positive, got {rho}")
    if n == 1:
        return torch.tensor([sigma_max, 0.0], dtype=torch.float64)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((hi + ramp * (lo - hi)) ** rho)


def logsnr_uniform_sigmas(n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """Uniform in log-SNR (equivalently in log sigma) from ``sigma_max`` to ``sigma_min``, then 0
    (the grid of DPM-Solver, Lu et al. 2022, sec. 3.3)."""
    _check_steps(n)
    _check_range(sigma_min, sigma_max)
    if n == 1:
        return torch.tensor([sigma_max, 0.0], dtype=torch.float64)
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp())


def _discrete_timesteps(num_train: int, n: int, spacing: str, offset: int) -> Tensor:
    """Integer timesteps, decreasing, by the spacings of Lin et al. 2024, table 2."""
    if n > num_train:
        raise ValueError(f"steps={n} exceeds the schedule's {num_train} training steps")
    if spacing == "leading":
        ts = torch.arange(n, dtype=torch.float64) * (num_train // n) + offset
    elif spacing == "trailing":
        ts = torch.round(torch.arange(num_train, 0, -num_train / n, dtype=torch.float64)) - 1
    elif spacing == "linspace":
        ts = torch.round(torch.linspace(0, num_train - 1, n, dtype=torch.float64))
    else:
        raise ValueError(f"spacing must be 'leading', 'trailing' or 'linspace', got {spacing!r}")
    return ts.clamp(0, num_train - 1).sort(descending=True).values


def uniform_t_sigmas(
    schedule: S.Schedule, n: int, spacing: str = "trailing", *, offset: int = 0, t_min: float = 1e-3
) -> Tensor:
    """A grid uniform in the schedule's time.

    For a :class:`~multidiff.schedules.DiscreteSchedule` the points are integer timesteps
    spaced as in Lin et al. 2024, table 2 (``leading`` with ``offset``, ``trailing``,
    ``linspace``), so every evaluation hits a trained noise level exactly. For a continuous
    schedule, ``t`` runs over ``[t_min, 1]``: ``linspace`` includes both ends, ``trailing`` starts at
    1 and omits ``t_min``, ``leading`` starts at ``t_min`` and omits 1.
    """
    _check_steps(n)
    if isinstance(schedule, S.DiscreteSchedule):
        ts = _discrete_timesteps(schedule.num_steps, n, spacing, offset)
        sig = schedule.sigmas()[ts.long()]
    else:
        if not 0 < t_min < 1:
            raise ValueError(f"t_min must lie in (0, 1), got {t_min}")
        if spacing == "linspace":
            t = torch.linspace(1, t_min, n, dtype=torch.float64)
        elif spacing == "trailing":
            t = 1 - torch.arange(n, dtype=torch.float64) * (1 - t_min) / n
        elif spacing == "leading":
            t = (t_min + torch.arange(n, dtype=torch.float64) * (1 - t_min) / n).flip(0)
        else:
            raise ValueError(f"spacing must be 'leading', 'trailing' or 'linspace', got {spacing!r}")
        sig = S.sigma(schedule, t)
    sig = torch.unique_consecutive(sig)
    if sig.numel() < n:
        raise ValueError(f"steps={n} is more than the distinct noise levels this schedule gives ({sig.numel()})")
    return _append_zero(sig)


def schedule_sigma_range(schedule: S.Schedule) -> tuple[float, float]:
    """The smallest and largest VE sigma of a training schedule (``t = 0`` and ``t = 1``)."""
    ends = S.sigma(schedule, torch.tensor([0.0, 1.0], dtype=torch.float64))
    return float(ends[0]), float(ends[1])


def make_grid(
    kind: str,
    n: int,
    *,
    schedule: S.Schedule | None = None,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    rho: float = 7.0,
) -> Tensor:
    """One entry point for every grid; sigma bounds default to the schedule's range."""
    if kind not in GRIDS:
        raise ValueError(f"grid must be one of {GRIDS}, got {kind!r}")
    if kind in ("leading", "trailing", "linspace"):
        if schedule is None:
            raise ValueError(f"grid {kind!r} needs a schedule")
        return uniform_t_sigmas(schedule, n, kind)
    if schedule is not None:
        lo, hi = schedule_sigma_range(schedule)
        sigma_min = lo if sigma_min is None else sigma_min
        sigma_max = hi if sigma_max is None else sigma_max
    if sigma_min is None or sigma_max is None:
        raise ValueError("sigma_min and sigma_max are needed when no schedule is given")
    if kind == "karras":
        return karras_sigmas(n, sigma_min, sigma_max, rho)
    return logsnr_uniform_sigmas(n, sigma_min, sigma_max)
