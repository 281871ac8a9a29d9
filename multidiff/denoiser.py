"""The one contract every sampler, guidance rule and loss depends on.

A *denoiser* is any callable ``denoiser(x, sigma, **cond) -> x0_hat`` where ``x`` is a noisy
sample of any rank ``(B, C, *spatial)`` in the variance-exploding view ``x = x0 + sigma * eps``
and ``sigma`` has shape ``(B,)``. :class:`Denoiser` wraps a network trained under any schedule
and parameterization into that contract.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor, nn

from . import schedules as S
from ._util import append_dims, per_sample
from .parameterization import PARAMETERIZATIONS, Scalings, scalings

NoiseCond = Literal["t", "timestep", "logsnr", "log_sigma"]
NOISE_CONDS: tuple[str, ...] = ("t", "timestep", "logsnr", "log_sigma")

__all__ = ["DataSpace", "Denoiser", "NoiseCond", "default_noise_cond", "noise_condition", "self_conditioned"]


@dataclass(frozen=True)
class DataSpace:
    """The map between data units (what a data set holds and a modality writes) and the space
    the denoiser works in: ``z = scale * (x - shift)``.

    The data's scale is part of the noise schedule (Chen 2023, "On the importance of noise
    scheduling", input scaling; LDM's ``scale_factor``): audio at -20 dBFS RMS wants about 5 to
    look like images in [-1, 1]. This is the one place that arithmetic lives; everything that
    takes examples from a user or a data set calls :meth:`encode`, everything that hands samples
    back calls :meth:`decode`.
    """

    scale: float = 1.0
    shift: float = 0.0

    def __post_init__(self) -> None:
        if not self.scale > 0:
            raise ValueError(f"data_scale must be positive, got {self.scale}")

    @property
    def identity(self) -> bool:
        return self.scale == 1.0 and self.shift == 0.0

    def encode(self, x: Tensor) -> Tensor:
        """Data units to the denoiser's space (float, same device)."""
        x = x.float() if not x.is_floating_point() else x
        return x if self.identity else (x - self.shift) * self.scale

    def decode(self, z: Tensor) -> Tensor:
        """The denoiser's space back to data units (same dtype and device)."""
        return z if self.identity else z / self.scale + self.shift

    def model_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The denoiser's example shape for data examples of ``shape``: the same (a latent space's
        is its latent's, :class:`multidiff.latent.LatentSpace`)."""
        return tuple(shape)

    def encode_mask(self, mask: Tensor) -> Tensor:
        """A mask on the data grid on the denoiser's grid: the same grid here."""
        return mask

    def decode_mask(self, mask: Tensor) -> Tensor:
        """A mask on the denoiser's grid on the data grid: the same grid here."""
        return mask


def default_noise_cond(parameterization: str, schedule: S.Schedule | None) -> str:
    """``log_sigma`` for EDM, ``timestep`` for a discrete schedule, ``t`` otherwise."""
    if parameterization == "edm":
        return "log_sigma"
    return "timestep" if isinstance(schedule, S.DiscreteSchedule) else "t"


def noise_condition(kind: str, sigma: Tensor, schedule: S.Schedule | None) -> Tensor:
    """The scalar a network is conditioned on at VE noise ``sigma``, shape ``(B,)``.

    ``t``: schedule time in [0, 1]; ``timestep``: the discrete index ``t * (T - 1)`` for a
    :class:`~multidiff.schedules.DiscreteSchedule` (``1000 t`` otherwise); ``logsnr``:
    ``-2 log sigma``; ``log_sigma``: EDM's ``ln(sigma) / 4`` (Karras et al. 2022, table 1).
    """
    if kind == "log_sigma":
        return sigma.log() / 4
    if kind == "logsnr":
        return S.sigma_to_logsnr(sigma)
    if schedule is None:
        raise ValueError(f"noise_cond={kind!r} needs a schedule to map sigma to time")
    t = S.t_from_sigma(schedule, sigma)
    if kind == "t":
        return t
    if kind == "timestep":
        return schedule.timestep(t) if isinstance(schedule, S.DiscreteSchedule) else 1000 * t
    raise ValueError(f"noise_cond must be one of {NOISE_CONDS}, got {kind!r}")


class Denoiser(nn.Module):
    """Wrap ``net(x_in, c_noise, **cond)`` into ``D(x, sigma, **cond) -> x0_hat``.

    ``D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)`` (Karras et al. 2022, eq. 7) with the
    scalings of ``parameterization`` (see :func:`multidiff.parameterization.scalings`).

    Args:
        net: the network; called with the scaled input, the noise condition ``(B,)`` and ``cond``.
        schedule: the training schedule; decides VP or VE input scaling and maps sigma to time.
            May be ``None`` for EDM models conditioned on ``log_sigma`` (VE).
        parameterization: ``eps``, ``x0``, ``v``, ``edm`` or ``flow`` (rectified flow's velocity,
            over a :class:`~multidiff.schedules.FlowSchedule` so that ``t`` is the flow time).
        sigma_data: data standard deviation for ``edm``.
        noise_cond: what the network is conditioned on; defaults to ``log_sigma`` for ``edm``,
            ``timestep`` for a discrete schedule and ``t`` otherwise.
        learned_variance: the network returns twice the channels; the second half is the
            improved-DDPM variance interpolation (Nichol & Dhariwal 2021, eq. 15).
        clip_x0: clamp the x0 estimate to ``(-clip_x0, clip_x0)``; off by default, since it
            wrecks data outside [-1, 1].
        data_scale: the network was trained on ``data_scale * x0``: the denoiser works in that
            scaled space, ``self.space`` (a :class:`DataSpace`) maps data to it and back.
        space: the map between data units and the denoiser's space instead of ``data_scale``'s:
            a :class:`multidiff.latent.LatentSpace` (an autoencoder and its fitted scale) for a
            latent model; held as a submodule, so it moves with the denoiser.
    """

    def __init__(
        self,
        net: nn.Module,
        schedule: S.Schedule | None = None,
        parameterization: str = "eps",
        *,
        sigma_data: float = 1.0,
        noise_cond: str | None = None,
        learned_variance: bool = False,
        clip_x0: float | None = None,
        data_scale: float = 1.0,
        space: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}")
        if noise_cond is None:
            noise_cond = default_noise_cond(parameterization, schedule)
        if noise_cond not in NOISE_CONDS:
            raise ValueError(f"noise_cond must be one of {NOISE_CONDS}, got {noise_cond!r}")
        if schedule is None and noise_cond in ("t", "timestep"):
            raise ValueError(f"noise_cond={noise_cond!r} needs a schedule")
        if sigma_data <= 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}")
        self.net = net
        self.schedule = schedule
        self.parameterization = parameterization
        self.sigma_data = sigma_data
        self.noise_cond = noise_cond
        self.learned_variance = learned_variance
        self.clip_x0 = clip_x0
        self.space: Any = DataSpace(float(data_scale)) if space is None else space
        # the network takes ``self_cond``, its own earlier x0 estimate (see :func:`self_conditioned`)
        self.self_condition = bool(getattr(net, "self_condition", False))

    @property
    def data_scale(self) -> float:
        """The scale of :attr:`space` (the network sees ``data_scale * x``)."""
        return self.space.scale

    @data_scale.setter
    def data_scale(self, value: float) -> None:
        if isinstance(self.space, nn.Module):  # a latent space (multidiff.latent): its scale is fitted
            self.space.set_scale(float(value), self.space.shift)
        else:
            self.space = DataSpace(float(value), self.space.shift)

    @property
    def vp(self) -> bool:
        return bool(self.schedule.vp) if self.schedule is not None else False

    def scalings(self, sigma: Tensor) -> Scalings:
        return scalings(self.parameterization, sigma, vp=self.vp, sigma_data=self.sigma_data)

    def raw(self, x: Tensor, sigma: Tensor, **cond: Any) -> tuple[Tensor, Tensor | None, Scalings]:
        """The network's output ``F`` (and variance channels) with the scalings used, for losses."""
        sigma = per_sample(sigma, x)
        sc = self.scalings(sigma)
        # Conditioning is computed in float64 for precision, then cast to the input dtype.
        c_noise = noise_condition(self.noise_cond, sigma.double(), self.schedule).to(x.dtype)
        out = self.net(append_dims(sc.c_in, x.ndim) * x, c_noise, **cond)
        var = None
        if self.learned_variance:
            out, var = out.chunk(2, dim=1)
        return out, var, sc

    def _x0(self, x: Tensor, out: Tensor, sc: Scalings) -> Tensor:
        x0 = append_dims(sc.c_skip, x.ndim) * x + append_dims(sc.c_out, x.ndim) * out.to(x.dtype)
        if self.clip_x0 is not None:
            x0 = x0.clamp(-self.clip_x0, self.clip_x0)
        return x0

    def with_net(self, net: nn.Module) -> Denoiser:
        """A shallow copy that calls ``net`` (the EMA copy, a compiled or DDP-wrapped network)."""
        out = copy.copy(self)
        out._modules = dict(self._modules, net=net)
        return out

    def forward(self, x: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
        out, _, sc = self.raw(x, sigma, **cond)
        return self._x0(x, out, sc)

    def with_variance(self, x: Tensor, sigma: Tensor, **cond: Any) -> tuple[Tensor, Tensor]:
        """``(x0_hat, v)`` with ``v`` in [0, 1] the log-variance interpolation weight."""
        if not self.learned_variance:
            raise ValueError("with_variance needs a Denoiser built with learned_variance=True")
        out, var, sc = self.raw(x, sigma, **cond)
        assert var is not None
        return self._x0(x, out, sc), (var.to(x.dtype) + 1) / 2


def self_conditioned(denoiser: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """A self-conditioned model's denoiser for one sampling run: every call gets the previous
    call's estimate as ``self_cond`` (Chen et al. 2023, "Analog Bits", alg. 2).

    The first call, and a call whose batch has another shape than the previous one, gets none:
    the zeros it was also trained on. Under batched classifier-free guidance the conditional and
    the null rows thus each get back their own estimate. A call that passes ``self_cond`` itself
    is left alone. Make a fresh one per sampling run: it holds state.
    """
    last: Tensor | None = None

    def fn(x: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
        nonlocal last
        if "self_cond" not in cond:
            cond["self_cond"] = last if last is not None and last.shape == x.shape else None
        out = denoiser(x, sigma, **cond)
        last = out.detach()
        return out

    return fn
