"""Noise schedules in continuous time ``t`` in [0, 1], all in one representation: log-SNR.

A schedule is a frozen dataclass with two methods, ``logsnr(t)`` and its inverse
``t_from_logsnr(lam)``; everything else is derived from them by the functions below, so a
sampler never needs to know which schedule trained a model:

* VP view (``x_t = alpha * x0 + sigma_vp * eps``): ``alpha^2 = sigmoid(lam)``,
  ``sigma_vp^2 = sigmoid(-lam)``;
* VE view, the one the denoiser contract uses (``x = x0 + sigma * eps``):
  ``sigma = exp(-lam / 2) = sigma_vp / alpha``.

Time runs from clean (``t = 0``, high log-SNR) to noisy (``t = 1``, low log-SNR); ``logsnr`` is
strictly decreasing in ``t``. Every function takes and returns tensors of any shape and computes
in the input's dtype (pass float64 for reference computations).

Discrete-time schedules (DDPM's 1000 steps) are :class:`DiscreteSchedule`: the table of
``alphas_cumprod`` is kept exactly and ``t = i / (T - 1)`` hits entry ``i``; in between, log-SNR is
interpolated linearly, so a sampler can also ask for noise levels between the trained ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = [
    "Schedule",
    "DiscreteSchedule",
    "LinearBetaSchedule",
    "CosineSchedule",
    "SigmoidSchedule",
    "EDMSchedule",
    "FlowSchedule",
    "ShiftedSchedule",
    "ZeroTerminalSNR",
    "linear_betas",
    "scaled_linear_betas",
    "cosine_betas",
    "zero_terminal_snr",
    "sigma",
    "alpha",
    "sigma_vp",
    "t_from_sigma",
    "sigma_to_logsnr",
    "logsnr_to_sigma",
]

# Terminal alpha_bar used where a schedule would reach exactly zero SNR: the VE view needs a
# finite sigma (here 4096, an SNR of 6e-8). The same value diffusers uses for its rescaled schedules.
TERMINAL_ALPHA_BAR = 2.0**-24


@runtime_checkable
class Schedule(Protocol):
    """A training noise schedule: log-SNR as a strictly decreasing function of ``t`` in [0, 1].

    ``vp`` tells how the network saw its input during training: ``True`` for a
    variance-preserving model fed ``alpha * x0 + sigma_vp * eps``, ``False`` for a
    variance-exploding one fed ``x0 + sigma * eps``.
    """

    @property
    def vp(self) -> bool: ...  # read-only: a frozen dataclass field or a property

    def logsnr(self, t: Tensor) -> Tensor: ...

    def t_from_logsnr(self, lam: Tensor) -> Tensor: ...


# ---------------------------------------------------------------------------------------------
# Conversions shared by every schedule


def logsnr_to_sigma(lam: Tensor) -> Tensor:
    """VE sigma from log-SNR: ``sigma = exp(-lam / 2)``."""
    return torch.exp(-0.5 * lam)


def sigma_to_logsnr(s: Tensor) -> Tensor:
    """Log-SNR from VE sigma: ``lam = -2 log sigma``."""
    return -2.0 * torch.log(s)


def sigma(schedule: Schedule, t: Tensor) -> Tensor:
    """VE noise level at time ``t``."""
    return logsnr_to_sigma(schedule.logsnr(t))


def alpha(schedule: Schedule, t: Tensor) -> Tensor:
    """VP signal scale at time ``t``: ``alpha = sqrt(sigmoid(lam))``."""
    return torch.sigmoid(schedule.logsnr(t)).sqrt()


def sigma_vp(schedule: Schedule, t: Tensor) -> Tensor:
    """VP noise scale at time ``t``: ``sigma_vp = sqrt(sigmoid(-lam))``."""
    return torch.sigmoid(-schedule.logsnr(t)).sqrt()


def t_from_sigma(schedule: Schedule, s: Tensor) -> Tensor:
    """Time at which ``schedule`` reaches VE noise level ``s`` (the inverse of :func:`sigma`)."""
    return schedule.t_from_logsnr(sigma_to_logsnr(s))


def _as_tensor(t: Tensor | float) -> Tensor:
    return t if isinstance(t, Tensor) else torch.tensor(t, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------
# Discrete-time tables (DDPM and friends)


def _check_betas(betas: Tensor) -> Tensor:
    if betas.ndim != 1 or betas.numel() < 2:
        raise ValueError(f"betas must be a 1-D sequence of at least 2 values, got shape {tuple(betas.shape)}")
    if not torch.isfinite(betas).all() or (betas <= 0).any() or (betas >= 1).any():
        bad = betas[(betas <= 0) | (betas >= 1) | ~torch.isfinite(betas)][0].item()
        raise ValueError(f"betas must lie in (0, 1); got {bad}")
    return betas


def _check_beta_range(beta_start: float, beta_end: float, num_steps: int) -> None:
    if num_steps < 2:
        raise ValueError(f"num_steps must be at least 2, got {num_steps}")
    for name, value in (("beta_start", beta_start), ("beta_end", beta_end)):
        if not 0 < value < 1:
            raise ValueError(f"{name} must lie in (0, 1), got {value}")


def linear_betas(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """DDPM's linear betas (Ho et al. 2020, sec. 4), float64."""
    _check_beta_range(beta_start, beta_end, num_steps)
    return torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)


def scaled_linear_betas(num_steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> Tensor:
    """Betas linear in sqrt(beta), as in latent diffusion / Stable Diffusion, float64."""
    _check_beta_range(beta_start, beta_end, num_steps)
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float64) ** 2


def cosine_betas(num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Improved DDPM's cosine betas (Nichol & Dhariwal 2021, eq. 17), clipped at ``max_beta``."""
    if num_steps < 2:
        raise ValueError(f"num_steps must be at least 2, got {num_steps}")
    i = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    f = torch.cos((i + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


@dataclass(frozen=True, eq=False)
class DiscreteSchedule:
    """A discrete-time schedule given by its ``alphas_cumprod`` table (float64, kept exactly).

    Entry ``i`` of the table sits at ``t = i / (T - 1)``; the network's timestep for ``t`` is
    ``t * (T - 1)`` (see :meth:`timestep`). Log-SNR is linear between entries, so the inverse
    map is exact at the table's entries and monotone in between.
    """

    alphas_cumprod: Tensor
    vp: bool = True
    _logsnr_table: Tensor = field(init=False, repr=False)
    # the table on each (device, dtype) it was asked for: no host-to-device copy per call (a copy
    # from pageable memory would also stop a CUDA graph capture)
    _tables: dict = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        ac = torch.as_tensor(self.alphas_cumprod, dtype=torch.float64)
        if ac.ndim != 1 or ac.numel() < 2:
            raise ValueError("alphas_cumprod must be a 1-D table of at least 2 entries")
        if (ac <= 0).any() or (ac > 1).any() or (ac[1:] >= ac[:-1]).any():
            raise ValueError("alphas_cumprod must be strictly decreasing within (0, 1]")
        object.__setattr__(self, "alphas_cumprod", ac)
        object.__setattr__(self, "_logsnr_table", torch.log(ac) - torch.log1p(-ac))

    def _table_on(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        """The log-SNR table on ``device`` in ``dtype``, copied there once."""
        key = (device, dtype)
        if key not in self._tables:
            self._tables[key] = self._logsnr_table.to(device, dtype)
        return self._tables[key]

    @classmethod
    def from_betas(cls, betas: Tensor) -> DiscreteSchedule:
        """``alphas_cumprod = prod_{s <= i} (1 - beta_s)`` (Ho et al. 2020, sec. 2)."""
        betas = _check_betas(torch.as_tensor(betas, dtype=torch.float64))
        return cls(torch.cumprod(1 - betas, dim=0))

    @classmethod
    def linear(cls, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> DiscreteSchedule:
        return cls.from_betas(linear_betas(num_steps, beta_start, beta_end))

    @classmethod
    def scaled_linear(
        cls, num_steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
    ) -> DiscreteSchedule:
        return cls.from_betas(scaled_linear_betas(num_steps, beta_start, beta_end))

    @classmethod
    def cosine(cls, num_steps: int = 1000, s: float = 0.008) -> DiscreteSchedule:
        return cls.from_betas(cosine_betas(num_steps, s))

    @property
    def num_steps(self) -> int:
        return self.alphas_cumprod.numel()

    def timestep(self, t: Tensor) -> Tensor:
        """The (fractional) index into the table that the network was trained with."""
        return t * (self.num_steps - 1)

    def sigmas(self) -> Tensor:
        """The VE sigma of every table entry, increasing, float64."""
        return logsnr_to_sigma(self._logsnr_table)

    def logsnr(self, t: Tensor) -> Tensor:
        t = _as_tensor(t)
        table = self._table_on(t.device, t.dtype)
        pos = (t.clamp(0, 1) * (self.num_steps - 1)).to(table.dtype)
        lo = pos.floor().long().clamp(max=self.num_steps - 2)
        w = pos - lo
        return table[lo] * (1 - w) + table[lo + 1] * w

    def t_from_logsnr(self, lam: Tensor) -> Tensor:
        lam = _as_tensor(lam)
        # The table decreases; search its negation, which increases.
        neg = -self._table_on(lam.device, lam.dtype)
        x = (-lam).clamp(neg[0], neg[-1])
        hi = torch.searchsorted(neg, x.contiguous()).clamp(1, self.num_steps - 1)
        lo = hi - 1
        w = (x - neg[lo]) / (neg[hi] - neg[lo])
        return (lo + w) / (self.num_steps - 1)


# ---------------------------------------------------------------------------------------------
# Continuous-time schedules


@dataclass(frozen=True)
class LinearBetaSchedule:
    """The continuous limit of DDPM's linear betas, the VP-SDE of Song et al. 2021 (eq. 33).

    ``log alpha_bar(t) = -(beta_min t + (beta_max - beta_min) t^2 / 2)``; defaults match
    DDPM's 1e-4 .. 0.02 over 1000 steps (``beta * T``). Time is floored at ``t_eps`` (Song et
    al.'s 1e-5), where the SNR would otherwise be infinite.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    t_eps: float = 1e-5
    vp: bool = True

    def __post_init__(self) -> None:
        if self.beta_min <= 0 or self.beta_max <= self.beta_min:
            raise ValueError(f"need 0 < beta_min < beta_max, got beta_min={self.beta_min}, beta_max={self.beta_max}")

    def _log_alpha_bar(self, t: Tensor) -> Tensor:
        return -(self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2)

    def logsnr(self, t: Tensor) -> Tensor:
        la = self._log_alpha_bar(_as_tensor(t).clamp(min=self.t_eps))
        return la - torch.log(-torch.expm1(la))  # log(ab / (1 - ab))

    def t_from_logsnr(self, lam: Tensor) -> Tensor:
        lam = _as_tensor(lam)
        c = -torch.nn.functional.logsigmoid(lam)  # -log alpha_bar, solve a t^2 / 2 + b t = c
        a, b = self.beta_max - self.beta_min, self.beta_min
        return (2 * c / (b + torch.sqrt(b * b + 2 * a * c))).clamp(self.t_eps, 1)


@dataclass(frozen=True)
class CosineSchedule:
    """Cosine schedule in log-SNR form: ``lam(t) = -2 log tan(a t + b)``.

    Nichol & Dhariwal 2021 (eq. 17) without the offset, written as in Hoogeboom et al. 2023
    (simple diffusion, sec. 3.1) with ``a, b`` chosen so log-SNR spans
    ``[logsnr_min, logsnr_max]`` exactly.
    """

    logsnr_min: float = -15.0
    logsnr_max: float = 15.0
    vp: bool = True

    def __post_init__(self) -> None:
        if not self.logsnr_min < self.logsnr_max:
            raise ValueError(f"need logsnr_min < logsnr_max, got {self.logsnr_min} and {self.logsnr_max}")

    def _ab(self) -> tuple[float, float]:
        b = math.atan(math.exp(-0.5 * self.logsnr_max))
        a = math.atan(math.exp(-0.5 * self.logsnr_min)) - b
        return a, b

    def logsnr(self, t: Tensor) -> Tensor:
        a, b = self._ab()
        return -2.0 * torch.log(torch.tan(a * _as_tensor(t) + b))

    def t_from_logsnr(self, lam: Tensor) -> Tensor:
        a, b = self._ab()
        return ((torch.atan(torch.exp(-0.5 * _as_tensor(lam))) - b) / a).clamp(0, 1)


@dataclass(frozen=True)
class SigmoidSchedule:
    """Sigmoid schedule of Jabri et al. 2023 / Chen 2023 ("On the importance of noise scheduling",
    alg. 1): ``alpha_bar(t) = (v_end - sigmoid((t (end - start) + start) / tau)) / (v_end - v_start)``.

    The end points are clamped to ``logsnr_range`` so the VE sigma stays finite.
    """

    start: float = -3.0
    end: float = 3.0
    tau: float = 1.0
    logsnr_min: float = -15.0
    logsnr_max: float = 15.0
    vp: bool = True

    def __post_init__(self) -> None:
        if not self.start < self.end or self.tau <= 0:
            raise ValueError(f"need start < end and tau > 0, got start={self.start}, end={self.end}, tau={self.tau}")

    def logsnr(self, t: Tensor) -> Tensor:
        t = _as_tensor(t)
        vs = 1 / (1 + math.exp(-self.start / self.tau))
        ve = 1 / (1 + math.exp(-self.end / self.tau))
        v = torch.sigmoid((t * (self.end - self.start) + self.start) / self.tau)
        ab = (ve - v) / (ve - vs)
        lam = torch.log(ab) - torch.log1p(-ab)
        return lam.clamp(self.logsnr_min, self.logsnr_max)

    def t_from_logsnr(self, lam: Tensor) -> Tensor:
        lam = _as_tensor(lam).clamp(self.logsnr_min, self.logsnr_max)
        vs = 1 / (1 + math.exp(-self.start / self.tau))
        ve = 1 / (1 + math.exp(-self.end / self.tau))
        ab = torch.sigmoid(lam)
        v = ve - ab * (ve - vs)
        return ((torch.logit(v) * self.tau - self.start) / (self.end - self.start)).clamp(0, 1)


@dataclass(frozen=True)
class EDMSchedule:
    """Karras et al. 2022 (EDM, eq. 5): ``sigma(t) = (smin^(1/rho) + t (smax^(1/rho) - smin^(1/rho)))^rho``.

    Variance exploding: the network sees ``x0 + sigma * eps`` (scaled by its own ``c_in``).
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    vp: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min} and {self.sigma_max}")
        if self.rho <= 0:
            raise ValueError(f"rho must be positive, got {self.rho}")

    def logsnr(self, t: Tensor) -> Tensor:
        lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        s = (lo + _as_tensor(t) * (hi - lo)) ** self.rho
        return sigma_to_logsnr(s)

    def t_from_logsnr(self, lam: Tensor) -> Tensor:
        lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        s = logsnr_to_sigma(_as_tensor(lam))
        return ((s ** (1 / self.rho) - lo) / (hi - lo)).clamp(0, 1)


@dataclass(frozen=True)
class FlowSchedule:
    """Rectified flow (Liu et al. 2023; Esser et al. 2024, sec. 2): ``x_t = (1 - t) x0 + t eps``.

    In the VE view ``sigma(t) = t / (1 - t)``, so ``lam(t) = -2 logit(t)`` and
    ``t = sigmoid(-lam / 2) = sigma / (1 + sigma)``: this schedule's time is the flow time, the
    ``t`` a ``flow`` model is conditioned on (``noise_cond: t``). Pure data (``t = 0``) and pure
    noise (``t = 1``) sit at sigma 0 and infinity; ``logsnr`` clamps ``t`` to ``[t_min, t_max]``, the
    range training draws and sampling grids span (defaults: sigma from 0.002 to 99). The inverse is
    not clamped, so any sigma a sampler asks for maps to its own exact ``t``.

    ``vp`` only matters for the other parameterizations on this schedule (``flow`` and ``edm``
    bring their own input scaling): an eps or v network sees the unit-variance VP input.
    A resolution shift (Esser et al. 2024, eq. 23, ``t' = shift t / (1 + (shift - 1) t)``) is
    ``sigma' = shift * sigma``: simple diffusion's log-SNR shift (:class:`ShiftedSchedule`) with
    ``shift = size / base_size``.
    """

    t_min: float = 0.002
    t_max: float = 0.99
    vp: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.t_min < self.t_max < 1:
            raise ValueError(f"need 0 < t_min < t_max < 1, got t_min={self.t_min}, t_max={self.t_max}")

    def logsnr(self, t: Tensor) -> Tensor:
        t = _as_tensor(t).clamp(self.t_min, self.t_max)
        return 2.0 * (torch.log1p(-t) - torch.log(t))

    def t_from_logsnr(self, lam: Tensor) -> Tensor:
        return torch.sigmoid(-0.5 * _as_tensor(lam))


# ---------------------------------------------------------------------------------------------
# Schedule transforms


@dataclass(frozen=True)
class ShiftedSchedule:
    """Log-SNR shifted for resolution (Hoogeboom et al. 2023, simple diffusion, eq. 4):
    ``lam_shifted(t) = lam(t) + 2 log(base_size / size)``.

    ``size`` is the data's side length (or number of samples for audio), ``base_size`` the one the
    base schedule was designed for; larger data get lower SNR at every ``t``.
    """

    base: Schedule
    base_size: float = 64.0
    size: float = 64.0

    def __post_init__(self) -> None:
        if self.base_size <= 0 or self.size <= 0:
            raise ValueError(f"base_size and size must be positive, got {self.base_size} and {self.size}")

    @property
    def vp(self) -> bool:
        return self.base.vp

    @property
    def shift(self) -> float:
        return 2.0 * math.log(self.base_size / self.size)

    def logsnr(self, t: Tensor) -> Tensor:
        return self.base.logsnr(t) + self.shift

    def t_from_logsnr(self, lam: Tensor) -> Tensor:
        return self.base.t_from_logsnr(_as_tensor(lam) - self.shift)


@dataclass(frozen=True)
class ZeroTerminalSNR:
    """Rescale a VP schedule to zero terminal SNR (Lin et al. 2024, alg. 1), continuous time.

    ``alpha'(t) = (alpha(t) - alpha(1)) * alpha(0) / (alpha(0) - alpha(1))`` keeps ``alpha(0)`` and
    sends ``alpha(1)`` to 0; the terminal point is then clamped to
    ``alpha_bar = TERMINAL_ALPHA_BAR`` so that the VE sigma stays finite (4096).
    """

    base: Schedule
    vp: bool = True

    def _ends(self, like: Tensor) -> tuple[Tensor, Tensor]:
        zero, one = (
            torch.zeros((), dtype=like.dtype, device=like.device),
            torch.ones((), dtype=like.dtype, device=like.device),
        )
        return torch.sigmoid(self.base.logsnr(zero)).sqrt(), torch.sigmoid(self.base.logsnr(one)).sqrt()

    def _floor(self) -> float:
        return math.log(TERMINAL_ALPHA_BAR) - math.log1p(-TERMINAL_ALPHA_BAR)

    def logsnr(self, t: Tensor) -> Tensor:
        t = _as_tensor(t)
        a0, a1 = self._ends(t)
        a = torch.sigmoid(self.base.logsnr(t)).sqrt()
        a_new = ((a - a1) * a0 / (a0 - a1)).clamp(min=0)
        ab = a_new**2
        lam = torch.log(ab) - torch.log1p(-ab)
        return lam.clamp(min=self._floor())

    def t_from_logsnr(self, lam: Tensor) -> Tensor:
        lam = _as_tensor(lam)
        a0, a1 = self._ends(lam)
        a_new = torch.sigmoid(lam.clamp(min=self._floor())).sqrt()
        a = a_new * (a0 - a1) / a0 + a1
        base_lam = torch.log(a**2) - torch.log1p(-(a**2))
        t = self.base.t_from_logsnr(base_lam)
        return torch.where(lam <= self._floor(), torch.ones_like(t), t)


def zero_terminal_snr(schedule: Schedule) -> Schedule:
    """Zero-terminal-SNR version of a VP schedule (Lin et al. 2024, alg. 1).

    A :class:`DiscreteSchedule` keeps its table form (``sqrt(alpha_bar)`` shifted and scaled, the
    last entry clamped to ``TERMINAL_ALPHA_BAR``); any other schedule is wrapped in
    :class:`ZeroTerminalSNR`.
    """
    if not schedule.vp:
        raise ValueError(
            "zero_terminal_snr needs a VP schedule (vp=True); a VE schedule has no terminal SNR to rescale"
        )
    if isinstance(schedule, DiscreteSchedule):
        a = schedule.alphas_cumprod.sqrt()
        a = (a - a[-1]) * a[0] / (a[0] - a[-1])
        ab = a**2
        # Exactly zero would make the VE sigma infinite; keep the last entry finite and below its neighbour.
        ab[-1] = min(TERMINAL_ALPHA_BAR, ab[-2].item() / 4)
        return DiscreteSchedule(ab)
    return ZeroTerminalSNR(schedule)
