"""Training losses: noise-level distributions, weightings and the per-sample denoising loss.

Every weighting is written once as a weight ``w(sigma)`` on the x0-space error
``|D(x) - x0|^2``, so it means the same whatever the network predicts; the loss itself is
computed on the network's own target, which avoids the cancellation of forming ``D(x) - x0`` at
small sigma. With ``snr = 1 / sigma^2`` (VE view), the eps-MSE is ``snr`` times the x0-MSE,
the v-MSE ``snr + 1`` times (for a VP model) and the rectified-flow velocity MSE
``((1 + sigma) / sigma)^2 = (1 + sqrt(snr))^2`` times.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from . import schedules as S
from ._util import append_dims, mean_flat, randn_like
from .denoiser import Denoiser

__all__ = [
    "WEIGHTINGS",
    "x0_weight",
    "sample_sigma_uniform_t",
    "sample_sigma_log_normal",
    "sample_sigma_logit_normal",
    "diffusion_loss",
    "hybrid_loss",
    "normal_kl",
]

WEIGHTINGS: tuple[str, ...] = ("uniform", "min_snr", "snr_plus_one", "edm", "sigmoid", "flow")


def x0_weight(
    weighting: str,
    sigma: Tensor,
    *,
    c_out: Tensor | None = None,
    gamma: float = 5.0,
    sigma_data: float = 1.0,
    bias: float = 0.0,
) -> Tensor:
    """The weight on the x0-space squared error at VE noise ``sigma``, shape ``(B,)``.

    * ``uniform``: plain MSE on the network's own target (``1 / c_out^2``; ``c_out`` needed);
    * ``min_snr``: ``min(snr, gamma)`` (Hang et al. 2023, eq. 7);
    * ``snr_plus_one``: ``snr + 1``, the v-prediction loss (Salimans & Ho 2022, sec. 4);
    * ``edm``: ``(sigma^2 + sd^2) / (sigma sd)^2`` (Karras et al. 2022, eq. 8 and table 1);
    * ``sigmoid``: ``snr * sigmoid(bias - logsnr)`` (Kingma & Gao 2023, sec. 5.2: the eps-loss
      weighted by ``sigmoid(b - lambda)``);
    * ``flow``: ``((1 + sigma) / sigma)^2``, the velocity MSE of rectified flow (Esser et al. 2024,
      eq. 1 with ``v = eps - x0``; see :func:`multidiff.parameterization.scalings`), which is the
      ``uniform`` weighting of a ``flow`` model and gives any other the same objective.
    """
    snr = sigma.pow(-2)
    if weighting == "uniform":
        if c_out is None:
            raise ValueError("the uniform weighting needs c_out")
        return c_out.pow(-2)
    if weighting == "min_snr":
        if gamma <= 0:
            raise ValueError(f"gamma must be positive, got {gamma}")
        return snr.clamp(max=gamma)
    if weighting == "snr_plus_one":
        return snr + 1
    if weighting == "edm":
        return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    if weighting == "sigmoid":
        return snr * torch.sigmoid(bias - S.sigma_to_logsnr(sigma))
    if weighting == "flow":
        return ((1 + sigma) / sigma) ** 2
    raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")


# --- training noise-level distributions -------------------------------------------------


def _draw(fn, n: int, generator: torch.Generator | None, device: torch.device | str | None) -> Tensor:
    """``fn`` (torch.rand or torch.randn) on the generator's device, float64, moved to ``device``."""
    gdev = generator.device if generator is not None else device
    return fn(n, generator=generator, device=gdev, dtype=torch.float64).to(device)


def sample_sigma_uniform_t(
    schedule: S.Schedule,
    n: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    t_min: float = 0.0,
    t_max: float = 1.0,
    discrete: bool | None = None,
) -> Tensor:
    """``t ~ U[t_min, t_max]`` mapped through the schedule (DDPM's training, Ho et al. 2020, alg. 1).

    For a discrete schedule ``t`` is drawn on its integer timesteps unless ``discrete=False``.
    Returns float64 ``(n,)``.
    """
    if not 0 <= t_min < t_max <= 1:
        raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
    u = _draw(torch.rand, n, generator, device)
    t = t_min + (t_max - t_min) * u
    if discrete is None:
        discrete = isinstance(schedule, S.DiscreteSchedule)
    if discrete:
        if not isinstance(schedule, S.DiscreteSchedule):
            raise ValueError("discrete=True needs a DiscreteSchedule")
        steps = schedule.num_steps - 1
        lo, hi = math.ceil(t_min * steps), math.floor(t_max * steps)
        t = (lo + torch.floor(u * (hi - lo + 1)).clamp(max=hi - lo)) / steps
    return S.sigma(schedule, t)


def sample_sigma_log_normal(
    n: int,
    *,
    p_mean: float = -1.2,
    p_std: float = 1.2,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """``ln sigma ~ N(p_mean, p_std^2)`` (Karras et al. 2022, table 1). Float64 ``(n,)``."""
    if p_std <= 0:
        raise ValueError(f"p_std must be positive, got {p_std}")
    z = _draw(torch.randn, n, generator, device)
    return torch.exp(p_mean + p_std * z)


def sample_sigma_logit_normal(
    schedule: S.Schedule,
    n: int,
    *,
    mean: float = 0.0,
    std: float = 1.0,
    shift: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """``t = sigmoid(z), z ~ N(mean, std^2)`` (Esser et al. 2024, eq. 19), shifted to
    ``t' = shift t / (1 + (shift - 1) t)`` (eq. 23), through the schedule. Float64 ``(n,)``.

    For a :class:`~multidiff.schedules.FlowSchedule`, ``t`` is the flow time and
    ``sigma = t' / (1 - t') = shift e^(mean + std z)``: logit-normal flow time is log-normal
    sigma, ``ln sigma ~ N(mean + ln shift, std^2)``, and the shift scales sigma. The network is
    conditioned on the shifted time ``t'``, the noise level it actually sees, as in SD3.
    """
    if std <= 0:
        raise ValueError(f"std must be positive, got {std}")
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift}")
    z = _draw(torch.randn, n, generator, device)
    t = torch.sigmoid(mean + std * z)
    if shift != 1.0:
        t = shift * t / (1 + (shift - 1) * t)
    return S.sigma(schedule, t)


# --- the loss ---------------------------------------------------------------------------


def diffusion_loss(
    denoiser: Denoiser,
    x0: Tensor,
    sigma: Tensor,
    *,
    noise: Tensor | None = None,
    weighting: str = "uniform",
    generator: torch.Generator | None = None,
    gamma: float = 5.0,
    bias: float = 0.0,
    **cond: Any,
) -> Tensor:
    """Per-sample weighted denoising loss ``(B,)`` for data ``x0`` of any rank at noise ``sigma (B,)``.

    ``x = x0 + sigma * noise``; the network output ``F`` is compared with its target
    ``((1 - c_skip) x0 - c_skip sigma noise) / c_out`` (which is ``eps``, ``x0`` or ``v`` for
    those parameterizations, Karras et al. 2022 eq. 8 for EDM) under
    ``x0_weight * c_out^2``.
    """
    if noise is None:
        noise = randn_like(x0, generator)
    sigma = sigma.to(device=x0.device, dtype=x0.dtype)
    x = x0 + append_dims(sigma, x0.ndim) * noise
    out, _, sc = denoiser.raw(x, sigma, **cond)
    w = x0_weight(weighting, sigma, c_out=sc.c_out, gamma=gamma, sigma_data=denoiser.sigma_data, bias=bias)
    return _weighted_target_mse(out, x0, noise, sigma, sc, w)


def _weighted_target_mse(out: Tensor, x0: Tensor, noise: Tensor, sigma: Tensor, sc, w: Tensor) -> Tensor:
    """``w c_out^2 |F - target|^2`` with the target ``((1 - c_skip) x0 - c_skip sigma noise) / c_out``
    formed from ``x0`` and ``noise`` directly, never from ``x - x0`` (cancellation at small sigma)."""
    target = (append_dims(1 - sc.c_skip, x0.ndim) * x0 - append_dims(sc.c_skip * sigma, x0.ndim) * noise) / append_dims(
        sc.c_out, x0.ndim
    )
    return w * sc.c_out**2 * mean_flat((out.to(x0.dtype) - target) ** 2)


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """Elementwise ``KL(N(mean1, e^logvar1) || N(mean2, e^logvar2))``."""
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1)


def hybrid_loss(
    denoiser: Denoiser,
    x0: Tensor,
    *,
    lambda_vlb: float = 1e-3,
    weighting: str = "uniform",
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    steps: Tensor | None = None,
    **cond: Any,
) -> Tensor:
    """Improved DDPM's hybrid loss ``L_simple + lambda L_vlb`` (Nichol & Dhariwal 2021, eq. 16), ``(B,)``.

    Needs a :class:`Denoiser` with ``learned_variance=True`` over a
    :class:`~multidiff.schedules.DiscreteSchedule`. A step ``i`` is drawn uniformly; the
    variational term is the KL between the posterior ``q(x_{i-1} | x_i, x0)`` and the model's
    ``p(x_{i-1} | x_i)`` with the mean's gradient stopped (sec. 3.1), in bits per dimension; at
    ``i = 0`` it is the Gaussian negative log-likelihood of ``x0``, its variance floor taken from
    step 1 as in the paper's clipped log-variance.
    """
    if not denoiser.learned_variance:
        raise ValueError("hybrid_loss needs a Denoiser with learned_variance=True")
    sched = denoiser.schedule
    if not isinstance(sched, S.DiscreteSchedule):
        raise ValueError("hybrid_loss needs a DiscreteSchedule: the variational bound is over its steps")
    b = x0.shape[0]
    table = sched.sigmas().to(x0.device)
    if steps is None:
        gdev = generator.device if generator is not None else x0.device
        steps = torch.randint(0, sched.num_steps, (b,), generator=generator, device=gdev).to(x0.device)
    s_t = table[steps]
    s_prev = torch.where(steps > 0, table[(steps - 1).clamp(min=0)], torch.zeros_like(s_t))
    if noise is None:
        noise = randn_like(x0, generator)
    sigma = s_t.to(x0.dtype)
    x = x0 + append_dims(sigma, x0.ndim) * noise
    out, var, sc = denoiser.raw(x, sigma, **cond)
    assert var is not None
    w = x0_weight(weighting, sigma, c_out=sc.c_out, sigma_data=denoiser.sigma_data)
    l_simple = _weighted_target_mse(out, x0, noise, sigma, sc, w)

    # Variational term, float64 for the variance algebra.
    st, sp = s_t.double(), s_prev.double()
    s1, s0 = table[1].double(), table[0].double()
    beta_tilde = torch.where(sp > 0, sp**2 * (st**2 - sp**2) / st**2, s0**2 * (s1**2 - s0**2) / s1**2)
    beta = (st**2 - sp**2) * (1 + sp**2) / (1 + st**2)
    v = (var.double() + 1) / 2
    logvar = v * append_dims(beta.log(), x0.ndim) + (1 - v) * append_dims(beta_tilde.log(), x0.ndim)
    x0_hat = (append_dims(sc.c_skip, x0.ndim) * x + append_dims(sc.c_out, x0.ndim) * out.detach().to(x0.dtype)).double()
    r = append_dims((sp / st) ** 2, x0.ndim)
    xd = x.double()
    mean_model = x0_hat + r * (xd - x0_hat)
    mean_true = x0.double() + r * (xd - x0.double())
    # At i = 0 the posterior is a point mass; its KL is not used (the NLL is), so any finite value will do.
    logvar_true = append_dims(torch.where(sp > 0, beta_tilde, torch.ones_like(beta_tilde)).log(), x0.ndim)
    kl = normal_kl(mean_true, logvar_true.expand_as(mean_true), mean_model, logvar)
    nll = 0.5 * (math.log(2 * math.pi) + logvar + (x0.double() - mean_model) ** 2 * torch.exp(-logvar))
    vlb_elem = torch.where(append_dims(steps > 0, x0.ndim), kl, nll)
    l_vlb = mean_flat(vlb_elem) / math.log(2.0)
    return l_simple + lambda_vlb * l_vlb.to(l_simple.dtype)
