"""What a network predicts, and how to convert between predictions.

Two layers:

* **Conversions** between the four usual predictions for a noisy sample
  ``x_t = a * x0 + s * eps`` (any ``a, s``; VP has ``a^2 + s^2 = 1``, the VE view ``a = 1``):
  ``x0``, ``eps``, ``v = a * eps - s * x0`` (Salimans & Ho 2022, sec. 4) and the score
  ``grad log p(x_t) = -eps / s``. Each is a pure function; ``a`` and ``s`` are per-sample ``(B,)``
  tensors or scalars.
* **Scalings**: one table (``c_skip, c_out, c_in``) per parameterization so that the denoiser is
  ``D(x, sigma) = c_skip * x + c_out * F(c_in * x, c_noise)`` in the VE view
  (Karras et al. 2022, eq. 7). Nothing else in the package branches on the parameterization.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ._util import append_dims

Parameterization = Literal["eps", "x0", "v", "edm", "flow"]
PARAMETERIZATIONS: tuple[str, ...] = ("eps", "x0", "v", "edm", "flow")

__all__ = [
    "Parameterization",
    "PARAMETERIZATIONS",
    "Scalings",
    "scalings",
    "eps_to_x0",
    "x0_to_eps",
    "v_to_x0",
    "x0_to_v",
    "v_to_eps",
    "eps_to_v",
    "score_to_x0",
    "x0_to_score",
    "eps_to_score",
    "score_to_eps",
    "flow_time",
    "flow_sigma",
]


def _b(v: Tensor | float, x: Tensor) -> Tensor:
    v = torch.as_tensor(v, dtype=x.dtype, device=x.device)
    return append_dims(v, x.ndim) if v.ndim else v


# --- conversions for x_t = a * x0 + s * eps ---------------------------------------------------


def eps_to_x0(x_t: Tensor, eps: Tensor, a: Tensor | float, s: Tensor | float) -> Tensor:
    return (x_t - _b(s, x_t) * eps) / _b(a, x_t)


def x0_to_eps(x_t: Tensor, x0: Tensor, a: Tensor | float, s: Tensor | float) -> Tensor:
    return (x_t - _b(a, x_t) * x0) / _b(s, x_t)


def v_to_x0(x_t: Tensor, v: Tensor, a: Tensor | float, s: Tensor | float) -> Tensor:
    """``x0 = (a x_t - s v) / (a^2 + s^2)``, from ``v = a eps - s x0``."""
    a, s = _b(a, x_t), _b(s, x_t)
    return (a * x_t - s * v) / (a * a + s * s)


def v_to_eps(x_t: Tensor, v: Tensor, a: Tensor | float, s: Tensor | float) -> Tensor:
    """``eps = (s x_t + a v) / (a^2 + s^2)``."""
    a, s = _b(a, x_t), _b(s, x_t)
    return (s * x_t + a * v) / (a * a + s * s)


def x0_to_v(x_t: Tensor, x0: Tensor, a: Tensor | float, s: Tensor | float) -> Tensor:
    return _b(a, x_t) * x0_to_eps(x_t, x0, a, s) - _b(s, x_t) * x0


def eps_to_v(x_t: Tensor, eps: Tensor, a: Tensor | float, s: Tensor | float) -> Tensor:
    return _b(a, x_t) * eps - _b(s, x_t) * eps_to_x0(x_t, eps, a, s)


def eps_to_score(eps: Tensor, s: Tensor | float) -> Tensor:
    """Tweedie: ``grad log p(x_t) = -eps / s``."""
    return -eps / _b(s, eps)


def score_to_eps(score: Tensor, s: Tensor | float) -> Tensor:
    return -score * _b(s, score)


def score_to_x0(x_t: Tensor, score: Tensor, a: Tensor | float, s: Tensor | float) -> Tensor:
    """Tweedie's formula (Efron 2011): ``x0 = (x_t + s^2 score) / a``."""
    s = _b(s, x_t)
    return (x_t + s * s * score) / _b(a, x_t)


def x0_to_score(x_t: Tensor, x0: Tensor, a: Tensor | float, s: Tensor | float) -> Tensor:
    s = _b(s, x_t)
    return -(x_t - _b(a, x_t) * x0) / (s * s)


def flow_time(sigma: Tensor) -> Tensor:
    """Rectified-flow time of VE noise ``sigma``: ``t = sigma / (1 + sigma)`` (``x_t = (1 - t) x``)."""
    return sigma / (1 + sigma)


def flow_sigma(t: Tensor) -> Tensor:
    """VE noise of rectified-flow time ``t`` in [0, 1): ``sigma = t / (1 - t)``."""
    return t / (1 - t)


# --- the scalings table -------------------------------------------------------------------


@dataclass(frozen=True)
class Scalings:
    """Per-sample ``(B,)`` factors of ``D(x, sigma) = c_skip x + c_out F(c_in x)`` in the VE view."""

    c_skip: Tensor
    c_out: Tensor
    c_in: Tensor


def scalings(parameterization: str, sigma: Tensor, *, vp: bool, sigma_data: float = 1.0) -> Scalings:
    """The scalings for a network trained to predict ``parameterization`` at VE noise ``sigma``.

    ``vp`` says whether the network was fed ``a x0 + s eps`` with ``a = 1 / sqrt(1 + sigma^2)``,
    ``s = sigma a`` (VP, as DDPM) or ``x0 + sigma eps`` (VE, ``a = 1``, ``s = sigma``); the VE
    sample ``x`` is then ``x_t / a``. ``edm`` is Karras et al. 2022, table 1, and ``flow`` is
    rectified flow; both bring their own input scaling and ignore ``vp``.

    Derivations (``x = x0 + sigma eps``, ``x_t = a x``):

    * eps: ``x0 = x - sigma eps``                       -> ``c_skip = 1, c_out = -sigma``
    * x0:  ``x0 = F``                                   -> ``c_skip = 0, c_out = 1``
    * v:   ``x0 = (a x_t - s v) / (a^2 + s^2)``          -> ``c_skip = a^2 / (a^2 + s^2), c_out = -s / (a^2 + s^2)``
    * edm: ``c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2)``
    * flow (rectified flow, Liu et al. 2023; Esser et al. 2024, sec. 2 and 3.1): the network sees
      ``x_t = (1 - t) x0 + t eps`` at time ``t`` in (0, 1) and predicts the velocity
      ``v = dx_t/dt = eps - x0``. Dividing by ``1 - t``, ``x_t / (1 - t) = x0 + t / (1 - t) eps``
      is the VE sample, so ``sigma = t / (1 - t)``, ``t = sigma / (1 + sigma)`` (:func:`flow_time`),
      ``1 - t = 1 / (1 + sigma)`` and ``x_t = x / (1 + sigma)``: ``c_in = 1 / (1 + sigma)``. From
      ``x_t - t v = (1 - t) x0 + t eps - t eps + t x0 = x0``,
      ``x0 = x / (1 + sigma) - sigma / (1 + sigma) v`` -> ``c_skip = 1 / (1 + sigma)``,
      ``c_out = -sigma / (1 + sigma)``. (It is the ``v`` row's algebra with ``a = 1 - t``,
      ``s = t``, which do not satisfy ``a^2 + s^2 = 1``, so the rows differ.) The x0 error is
      ``D - x0 = c_out (F - v)``: the velocity MSE is ``((1 + sigma) / sigma)^2`` times the x0 MSE,
      the ``flow`` weighting of :func:`multidiff.losses.x0_weight`. The noise condition is ``t``
      itself (``noise_cond: t`` over :class:`~multidiff.schedules.FlowSchedule`, whose time is
      this ``t``; the network's embedding multiplies it by 1000, as SD3 does).
    """
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}")
    one = torch.ones_like(sigma)
    if vp:
        a = torch.rsqrt(1 + sigma * sigma)
        s = sigma * a
    else:
        a, s = one, sigma
    if parameterization == "eps":
        return Scalings(one, -sigma, a)
    if parameterization == "x0":
        return Scalings(torch.zeros_like(sigma), one, a)
    if parameterization == "v":
        n = a * a + s * s
        return Scalings(a * a / n, -s / n, a)
    if parameterization == "flow":
        c = 1 / (1 + sigma)
        return Scalings(c, -sigma * c, c)
    sd2 = sigma_data**2
    n = sigma * sigma + sd2
    return Scalings(sd2 / n, sigma * sigma_data * torch.rsqrt(n), torch.rsqrt(n))
