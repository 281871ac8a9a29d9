"""A rank-generic KL autoencoder for latent diffusion, and what it takes to train and judge one.

:class:`AutoencoderKL` is the first stage of latent diffusion (Rombach et al. 2022, "High-Resolution
Image Synthesis with Latent Diffusion Models", sec. 3.1 and appendix G): an encoder to a
diagonal-Gaussian posterior over a latent grid ``(B, latent_channels, *spatial / factor)``, a
decoder back, and a small KL term towards ``N(0, I)`` that keeps the latent bounded. It is built
from the same rank-generic blocks as the UNet (:mod:`multidiff.nn`; residual blocks without an
embedding, attention in the middle, strided and nearest-neighbour resampling), so one class
serves waveforms ``(B, C, L)``, images ``(B, C, H, W)`` and volumes ``(B, C, D, H, W)``; each
downsampling has its own factor per axis.

A run with ``task: autoencoder`` trains it with the same engine as a diffusion run
(:class:`multidiff.train.Trainer`, through :class:`AutoencoderObjective`): optimizer, EMA, clipping,
precision, DDP, faults, checkpoints and exact resume are the engine's. Its loss is a weighted sum
of reconstruction terms the modality picks (:mod:`multidiff.reconstruction`: L1/L2 for all, a
multi-resolution STFT loss for audio, the error near the surface for SDF/occupancy grids), the KL
term and, optionally, a patch discriminator's hinge loss after ``disc_start`` steps.

**The KL weight's unit.** The KL term is the sum of the per-element KL over the latent divided by
the number of data elements, next to reconstruction losses that are means over data elements:
LDM's objective (sums over everything, per example) divided by a constant, so LDM's
``kl_weight`` (1e-6 for images) means here what it means there. Stable Audio's 1e-4 weighs a KL
summed over channels and averaged over latent frames; in this unit it is ``1e-4 * C * F`` for
``C`` audio channels and a total downsampling ``F``.

:meth:`AutoencoderKL.encode` and :meth:`AutoencoderKL.decode` are what a latent
:class:`~multidiff.denoiser.DataSpace` will wrap; :func:`load_autoencoder` rebuilds a trained one and
refuses one of another modality or data shape.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import reconstruction as R
from .nn import Attention, Downsample, ResBlock, Upsample, conv_nd, depth_to_space, group_norm, space_to_depth

__all__ = [
    "AutoencoderKL",
    "AutoencoderObjective",
    "DiagonalGaussian",
    "PatchDiscriminator",
    "build_autoencoder",
    "evaluate_reconstructions",
    "holdout_split",
    "load_autoencoder",
    "reconstruction_loss",
]


@dataclass(frozen=True)
class DiagonalGaussian:
    """A diagonal Gaussian over a latent ``(B, C, *spatial)``: the encoder's posterior ``q(z | x)``.

    ``logvar`` is clamped to ``[-30, 20]`` (as LDM's ``DiagonalGaussianDistribution``), so ``std``
    neither underflows nor explodes early in training.
    """

    mean: Tensor
    logvar: Tensor

    def __post_init__(self) -> None:
        if self.mean.shape != self.logvar.shape:
            raise ValueError(f"mean {tuple(self.mean.shape)} and logvar {tuple(self.logvar.shape)} differ in shape")
        object.__setattr__(self, "logvar", self.logvar.clamp(-30.0, 20.0))

    @property
    def std(self) -> Tensor:
        return torch.exp(0.5 * self.logvar)

    def sample(self, eps: Tensor | None = None, *, generator: torch.Generator | None = None) -> Tensor:
        """``mean + std * eps`` (the reparameterization trick, Kingma & Welling 2014, sec. 2.4), with
        ``eps`` given or drawn from ``generator``."""
        if eps is None:
            eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps.to(self.mean.dtype)

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        """``KL(q || N(0, I))`` summed over the latent, per example, ``(B,)``:
        ``0.5 * sum(mean^2 + var - 1 - logvar)`` (Kingma & Welling 2014, appendix B)."""
        m, lv = self.mean.float(), self.logvar.float()
        return 0.5 * (m.square() + lv.exp() - 1.0 - lv).reshape(m.shape[0], -1).sum(1)


def _level_factors(factors: int | Sequence[int | Sequence[int]], levels: int, dims: int) -> list[tuple[int, ...]]:
    """One factor per axis for each of the ``levels - 1`` downsamplings, from one int (every
    downsampling, every axis) or one entry per downsampling (an int, or one per axis)."""
    if isinstance(factors, int):
        factors = [factors] * (levels - 1)
    if len(factors) != levels - 1:
        raise ValueError(
            f"autoencoder.factors needs one entry per downsampling, len(channel_mult) - 1 = {levels - 1}, "
            f"got {len(factors)}: {list(factors)}"
        )
    out = []
    for f in factors:
        t = (int(f),) * dims if isinstance(f, int) else tuple(int(v) for v in f)
        if len(t) != dims or any(v < 1 for v in t):
            raise ValueError(
                f"autoencoder.factors: each entry must be a positive int or {dims} of them (one per axis of this "
                f"{dims}-D data), got {f!r}"
            )
        out.append(t)
    return out


class Encoder(nn.Module):
    """``x (B, C, *spatial) -> (B, 2 * latent_channels, *spatial / factor)``: mean and log-variance."""

    def __init__(
        self,
        dims: int,
        in_channels: int,
        latent_channels: int,
        channels: int,
        channel_mult: Sequence[int],
        num_res_blocks: int,
        factors: Sequence[tuple[int, ...]],
        *,
        mid_attention: bool,
        head_channels: int,
        groups: int,
    ) -> None:
        super().__init__()
        self.conv_in = conv_nd(dims, in_channels, channels, 3, padding=1)
        blocks: list[nn.Module] = []
        c = channels
        for lvl, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(dims, c, channels * mult, 0, groups=groups))
                c = channels * mult
            if lvl < len(channel_mult) - 1:
                blocks.append(Downsample(dims, c, factors[lvl]))
        self.down = nn.Sequential(*blocks)
        mid: list[nn.Module] = [ResBlock(dims, c, c, 0, groups=groups)]
        if mid_attention:
            mid.append(Attention(c, head_channels=head_channels, groups=groups))
        mid.append(ResBlock(dims, c, c, 0, groups=groups))
        self.mid = nn.Sequential(*mid)
        self.out = nn.Sequential(group_norm(c, groups), nn.SiLU(), conv_nd(dims, c, 2 * latent_channels, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.mid(self.down(self.conv_in(x))))


class Decoder(nn.Module):
    """``z (B, latent_channels, *spatial / factor) -> (B, C, *spatial)``, the encoder's mirror with
    one more residual block per level (as LDM's)."""

    def __init__(
        self,
        dims: int,
        out_channels: int,
        latent_channels: int,
        channels: int,
        channel_mult: Sequence[int],
        num_res_blocks: int,
        factors: Sequence[tuple[int, ...]],
        *,
        mid_attention: bool,
        head_channels: int,
        groups: int,
    ) -> None:
        super().__init__()
        c = channels * channel_mult[-1]
        self.conv_in = conv_nd(dims, latent_channels, c, 3, padding=1)
        mid: list[nn.Module] = [ResBlock(dims, c, c, 0, groups=groups)]
        if mid_attention:
            mid.append(Attention(c, head_channels=head_channels, groups=groups))
        mid.append(ResBlock(dims, c, c, 0, groups=groups))
        self.mid = nn.Sequential(*mid)
        blocks: list[nn.Module] = []
        for lvl, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + 1):
                blocks.append(ResBlock(dims, c, channels * mult, 0, groups=groups))
                c = channels * mult
            if lvl > 0:
                blocks.append(Upsample(dims, c, factors[lvl - 1]))
        self.up = nn.Sequential(*blocks)
        self.out = nn.Sequential(group_norm(c, groups), nn.SiLU(), conv_nd(dims, c, out_channels, 3, padding=1))

    @property
    def last_layer(self) -> Tensor:
        """The weight of the output convolution (where LDM's adaptive weight is measured)."""
        return self.out[-1].weight

    def forward(self, z: Tensor) -> Tensor:
        return self.out(self.up(self.mid(self.conv_in(z))))


class AutoencoderKL(nn.Module):
    """A KL autoencoder over ``dims`` spatial axes (LDM's ``AutoencoderKL``, any rank).

    Args:
        dims: spatial axes (1 audio, 2 images, 3 voxels).
        in_channels: data channels (the decoder returns as many).
        latent_channels: channels of the latent grid.
        channels: width of the first level.
        channel_mult: width multiplier per level; ``len(channel_mult) - 1`` downsamplings.
        num_res_blocks: residual blocks per level in the encoder (one more in the decoder).
        factors: the downsampling factor: one int for every downsampling and axis (2 by default),
            or one entry per downsampling, each an int (every axis) or one per axis. The total per
            axis is their product.
        mid_attention: self-attention between the two middle residual blocks (at the latent grid).
        head_channels: channels per attention head.
        groups: GroupNorm groups (the largest count up to this that divides each width).
        patch_size: fold each patch of this size (an int for every axis, or one per axis) into
            channels before the first level and unfold after the last (space-to-depth, as the
            UNet's ``patch_size``): a first downsampling without convolutions at full resolution,
            which is what makes 3D grids affordable on a CPU. Part of the total factor.
        odd_sizes: an axis that is not a multiple of its total factor is ``"pad"``-ded at its end
            by replicating the last element (and the decoder's output cropped back when
            :meth:`decode` is given the size), or refused (``"error"``) naming the axis, its size
            and the factor.

    ``encode(x) -> DiagonalGaussian``, ``decode(z, size=None) -> x``, ``forward(x, eps=None) ->
    (reconstruction, posterior)``.
    """

    def __init__(
        self,
        dims: int,
        in_channels: int,
        latent_channels: int = 4,
        *,
        channels: int = 32,
        channel_mult: Sequence[int] = (1, 2, 4),
        num_res_blocks: int = 1,
        factors: int | Sequence[int | Sequence[int]] = 2,
        mid_attention: bool = True,
        head_channels: int = 64,
        groups: int = 32,
        patch_size: int | Sequence[int] = 1,
        odd_sizes: str = "pad",
    ) -> None:
        super().__init__()
        if dims not in (1, 2, 3):
            raise ValueError(f"dims must be 1, 2 or 3 (spatial axes), got {dims}")
        if not channel_mult or any(m < 1 for m in channel_mult) or num_res_blocks < 1 or channels < 1:
            raise ValueError("need at least one level, one residual block per level and one channel")
        if odd_sizes not in ("pad", "error"):
            raise ValueError(f"odd_sizes must be 'pad' or 'error', got {odd_sizes!r}")
        self.dims = dims
        self.in_channels = in_channels
        self.latent_channels = latent_channels
        self.odd_sizes = odd_sizes
        self.factors = _level_factors(factors, len(channel_mult), dims)
        self.patch = (patch_size,) * dims if isinstance(patch_size, int) else tuple(int(p) for p in patch_size)
        if len(self.patch) != dims or any(p < 1 for p in self.patch):
            raise ValueError(
                f"autoencoder.patch_size must be a positive int or {dims} of them (one per axis of this {dims}-D "
                f"data), got {patch_size!r}"
            )
        self.multiple = tuple(p * math.prod(f[i] for f in self.factors) for i, p in enumerate(self.patch))
        fold = math.prod(self.patch)
        args = dict(mid_attention=mid_attention, head_channels=head_channels, groups=groups)
        self.encoder = Encoder(
            dims, in_channels * fold, latent_channels, channels, channel_mult, num_res_blocks, self.factors, **args
        )
        self.decoder = Decoder(
            dims, in_channels * fold, latent_channels, channels, channel_mult, num_res_blocks, self.factors, **args
        )

    def latent_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """The latent shape ``(latent_channels, *ceil(spatial / factor))`` of an example of ``shape = (C, *spatial)``."""
        spatial = self._spatial(tuple(shape)[1:])
        return (self.latent_channels, *(-(-s // m) for s, m in zip(spatial, self.multiple)))

    def _spatial(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        if len(spatial) != self.dims:
            raise ValueError(f"this autoencoder has {self.dims} spatial axes, got spatial size {spatial}")
        if self.odd_sizes == "error":
            for i, (s, m) in enumerate(zip(spatial, self.multiple)):
                if s % m:
                    raise ValueError(
                        f"spatial axis {i} has size {s}, not a multiple of the autoencoder's total downsampling "
                        f"factor {m} on that axis (patch {list(self.patch)}, factors {[list(f) for f in self.factors]}); "
                        "use sizes that are "
                        f"multiples of {list(self.multiple)}, or odd_sizes 'pad'"
                    )
        return spatial

    def encode(self, x: Tensor) -> DiagonalGaussian:
        """The posterior over the latent of ``x (B, in_channels, *spatial)``."""
        if x.ndim != self.dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"this autoencoder takes (B, {self.in_channels}, *spatial) with {self.dims} spatial axes, "
                f"got shape {tuple(x.shape)}"
            )
        spatial = self._spatial(tuple(x.shape[2:]))
        pad = [(-s) % m for s, m in zip(spatial, self.multiple)]
        if any(pad):  # F.pad lists axes last-first, (left, right) each: pad at the end of every axis
            x = F.pad(x, [v for p in reversed(pad) for v in (0, p)], mode="replicate")
        if any(p > 1 for p in self.patch):
            x = space_to_depth(x, self.patch)
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return DiagonalGaussian(mean, logvar)

    def decode(self, z: Tensor, size: Sequence[int] | None = None) -> Tensor:
        """Data ``(B, in_channels, *spatial)`` from a latent ``z (B, latent_channels, *latent)``;
        with ``size`` (the spatial size of the encoded data), cropped to it."""
        if z.ndim != self.dims + 2 or z.shape[1] != self.latent_channels:
            raise ValueError(
                f"this autoencoder decodes (B, {self.latent_channels}, *latent) with {self.dims} spatial axes, "
                f"got shape {tuple(z.shape)}"
            )
        out = self.decoder(z)
        if any(p > 1 for p in self.patch):
            out = depth_to_space(out, self.patch)
        if size is None:
            return out
        size = tuple(int(s) for s in size)
        want = self.latent_shape((self.in_channels, *size))[1:]
        if tuple(z.shape[2:]) != want:
            raise ValueError(
                f"a latent of spatial size {tuple(z.shape[2:])} does not decode to size {size}: with total "
                f"downsampling factors {list(self.multiple)} that size has latent size {want}"
            )
        if tuple(out.shape[2:]) != size:
            out = out[(slice(None), slice(None), *(slice(0, s) for s in size))]
        return out

    def forward(self, x: Tensor, eps: Tensor | None = None) -> tuple[Tensor, DiagonalGaussian]:
        """``(reconstruction, posterior)``: the decoded posterior sample ``mean + std * eps`` (the
        mode when ``eps`` is None), cropped to ``x``'s size."""
        post = self.encode(x)
        z = post.mode() if eps is None else post.sample(eps)
        return self.decode(z, x.shape[2:]), post

    @torch.no_grad()
    def reconstruct(self, x: Tensor, batch_size: int = 64) -> Tensor:
        """The decoded posterior mode of every example of ``x`` (on the model's device), in batches; on ``x``'s device."""
        dev = next(self.parameters()).device
        out = [self(x[i : i + batch_size].to(dev).float())[0].to(x.device) for i in range(0, len(x), batch_size)]
        return torch.cat(out)


class PatchDiscriminator(nn.Module):
    """A PatchGAN discriminator (Isola et al. 2017, sec. 3.2.2; LDM's ``NLayerDiscriminator``) over
    ``dims`` axes: ``layers`` stride-2 convolutions doubling the width (up to 8x), one stride-1
    convolution, and one to a logit per patch, ``(B, 1, *patches)``.

    GroupNorm instead of BatchNorm (no running statistics: the same result on every process count
    and nothing to keep in a checkpoint but weights), and 3-wide kernels, so grids of any size
    down to one element keep at least one patch."""

    def __init__(self, dims: int, in_channels: int, channels: int = 32, layers: int = 3) -> None:
        super().__init__()
        seq: list[nn.Module] = [conv_nd(dims, in_channels, channels, 3, stride=2, padding=1), nn.LeakyReLU(0.2)]
        c = channels
        for n in range(1, layers + 1):
            out = channels * min(2**n, 8)
            # no bias before a norm, which would remove it (LDM's, before its BatchNorm, has none either)
            conv = conv_nd(dims, c, out, 3, stride=2 if n < layers else 1, padding=1, bias=False)
            seq += [conv, group_norm(out)]
            seq.append(nn.LeakyReLU(0.2))
            c = out
        seq.append(conv_nd(dims, c, 1, 3, padding=1))
        self.net = nn.Sequential(*seq)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def build_autoencoder(a: Any, shape: Sequence[int]) -> AutoencoderKL:
    """The :class:`AutoencoderKL` a resolved ``autoencoder`` section (:class:`multidiff.config.AutoencoderConfig`)
    describes, for examples of ``shape = (C, *spatial)``."""
    return AutoencoderKL(
        len(shape) - 1,
        int(shape[0]),
        a.latent_channels,
        channels=a.channels,
        channel_mult=a.channel_mult,
        num_res_blocks=a.num_res_blocks,
        factors=a.factors,
        mid_attention=a.mid_attention,
        head_channels=a.head_channels,
        groups=a.groups,
        patch_size=a.patch_size,
        odd_sizes=a.odd_sizes,
    )


def reconstruction_loss(x: Tensor, target: Tensor, a: Any) -> dict[str, Tensor]:
    """The weighted reconstruction terms an ``autoencoder`` section asks for, each ``(B,)`` and
    already multiplied by its weight: ``l1``, ``l2``, ``stft`` (multi-resolution STFT over the last
    axis), ``surface`` (the error near the target's surface); terms of weight 0 are left out."""
    parts: dict[str, Tensor] = {}
    if a.l1:
        parts["l1"] = a.l1 * R.l1_error(x, target)
    if a.l2:
        parts["l2"] = a.l2 * R.l2_error(x, target)
    if a.stft:
        parts["stft"] = a.stft * R.multi_resolution_stft_loss(x, target, a.stft_sizes)
    if a.surface:
        parts["surface"] = a.surface * R.surface_weighted_error(x, target, a.surface_band)
    return parts


def holdout_split(n: int, fraction: float) -> tuple[Tensor, Tensor]:
    """Indices ``(train, held_out)`` of an autoencoder run's data: a seeded ``fraction`` (the split
    of :func:`multidiff.evaluate.split_holdout`, seed 0) is never trained on, and judged by ``multidiff eval``."""
    if fraction <= 0:
        return torch.arange(n), torch.arange(0)
    from .evaluate import split_holdout

    return split_holdout(n, fraction, seed=0)


def subset(dataset: Any, idx: Tensor) -> Any:
    """The examples ``idx`` of a data set (an in-memory one stays in memory, indexed once)."""
    from .modality import TensorDataset

    if isinstance(dataset, TensorDataset):
        return TensorDataset(dataset.x[idx], dataset.labels[idx])
    return torch.utils.data.Subset(dataset, idx.tolist())


class AutoencoderObjective:
    """``task: autoencoder`` for :class:`multidiff.train.Trainer`: the network is an
    :class:`AutoencoderKL`, a micro-step draws the posterior's noise, and the loss of a batch is
    the modality's reconstruction terms, the KL term and, from step ``disc_start`` on with
    ``disc_weight > 0``, the adversarial term of a :class:`PatchDiscriminator` (:attr:`aux`),
    which the trainer updates with its own optimizer from :meth:`aux_loss`.

    The adversarial weight is ``disc_weight``, times LDM's adaptive weight with ``disc_adaptive``
    (:func:`multidiff.reconstruction.adaptive_weight`; measured on each process's own slice, so a
    data-parallel run with it is not the single-process run, unlike everything else here).
    """

    task = "autoencoder"

    def __init__(
        self, cfg: Any, info: Any, device: torch.device, autocast: Callable[[], AbstractContextManager]
    ) -> None:
        a = cfg.autoencoder
        self.a = a
        self.cfg = cfg
        self.info = info
        self.autocast = autocast
        self.shape = tuple(info.shape)
        try:
            self.net: AutoencoderKL = build_autoencoder(a, self.shape).to(device)
            self.latent = self.net.latent_shape(self.shape)
        except ValueError as e:
            from .config import ConfigError

            raise ConfigError(f"invalid config {cfg.source}: {e}") from None
        self.aux: nn.Module | None = None
        if a.disc_weight > 0:
            self.aux = PatchDiscriminator(len(self.shape) - 1, self.shape[0], a.disc_channels, a.disc_layers).to(device)
        self.part_names = (
            tuple(n for n, w in (("l1", a.l1), ("l2", a.l2), ("stft", a.stft), ("surface", a.surface)) if w)
            + ("kl",)
            + (("adv", "disc") if self.aux is not None else ())
        )
        self.parts: dict[str, Tensor] = {}
        self._kept: tuple[Tensor, Tensor] | None = None
        self.graph_blockers = {"task: autoencoder runs eagerly (its step is not captured yet)": True}

    def train_subset(self, dataset: Any) -> Any:
        """The training part of the data: all but the held-out ``autoencoder.holdout`` (kept, as
        :attr:`held_out`, for the periodic reconstructions: the training data if none is held out)."""
        train, held = holdout_split(len(dataset), self.a.holdout)
        self.held_out = subset(dataset, held) if len(held) else dataset
        return subset(dataset, train) if len(held) else dataset

    def draws(self, x: Tensor, labels: Tensor, g: torch.Generator, rows: Any) -> tuple[Tensor, Tensor]:
        """The micro-batch and the posterior's noise (rows of the global batch), all seeded by ``g``."""
        eps = rows.draw(torch.randn, self.latent, g, dtype=x.dtype)
        return x, eps

    def adversarial(self, step: int) -> bool:
        return self.aux is not None and step >= self.a.disc_start

    def loss(self, net: nn.Module, inputs: tuple[Tensor, Tensor], step: int) -> Tensor:
        """The mean loss of one micro-batch: reconstruction terms + ``kl_weight`` * KL per data element
        (+ the adversarial term from ``disc_start`` on). Keeps the reconstruction for :meth:`aux_loss`
        and the detached terms in :attr:`parts`."""
        x, eps = inputs
        a = self.a
        with self.autocast():
            rec, post = net(x, eps)
        rec = rec.float()
        parts = reconstruction_loss(rec, x, a)
        rec_total = sum(parts.values())
        kl = post.kl() / math.prod(self.shape)  # LDM's unit: per data element (see the module docstring)
        parts["kl"] = kl
        total = rec_total + a.kl_weight * kl
        if self.adversarial(step):
            assert self.aux is not None
            self.aux.requires_grad_(False)  # the generator's loss moves the autoencoder only
            try:
                with self.autocast():
                    logits = self.aux(rec)
            finally:
                self.aux.requires_grad_(True)
            adv = R.hinge_generator_loss(logits.float())
            weight = torch.as_tensor(a.disc_weight, device=x.device)
            if a.disc_adaptive:
                weight = weight * R.adaptive_weight(rec_total.mean(), adv.mean(), self.net.decoder.last_layer)
            parts["adv"] = adv
            total = total + weight * adv
        self._kept = (x, rec.detach())
        self.parts = {k: v.detach().mean() for k, v in parts.items()}
        for k in ("adv", "disc"):
            if k in self.part_names:
                self.parts.setdefault(k, torch.zeros((), device=x.device))
        return total.mean()

    def aux_loss(self, aux_net: nn.Module, step: int) -> Tensor | None:
        """The discriminator's hinge loss on the last micro-batch and its reconstruction (None
        before ``disc_start``)."""
        if not self.adversarial(step) or self._kept is None:
            return None
        x, rec = self._kept
        with self.autocast():
            logits = aux_net(torch.cat([x, rec]))
        real, fake = logits.float().chunk(2)
        d = R.hinge_discriminator_loss(real, fake).mean()
        self.parts["disc"] = d.detach()
        return d

    def meta(self) -> dict[str, Any]:
        """What a checkpoint records beyond the engine's: the task, the data and latent shapes."""
        return {"task": self.task, "data_shape": list(self.shape), "latent_shape": list(self.latent)}

    @torch.no_grad()
    def sample_files(self, ema: nn.Module, out: Path, callback: Any = None) -> list[Path]:
        """Reconstructions of the first ``sample.num_samples`` held-out examples (training examples
        if none are held out) by the EMA weights, beside the originals: ``out/real`` and
        ``out/reconstructed`` (the modality's files)."""
        from .evaluate import real_examples

        n = min(self.cfg.run.sample.num_samples, len(self.held_out))
        x, _ = real_examples(subset(self.held_out, torch.arange(n)))
        rec = ema.reconstruct(x)  # type: ignore[operator]
        save = self.cfg.adapter.save_samples
        return save(x, out / "real", self.info) + save(rec.cpu(), out / "reconstructed", self.info)


def held_out_examples(adapter: Any, cfg: Any, n: int | None = None) -> tuple[Tensor, Tensor]:
    """The first ``n`` (all: ``None``) held-out examples of an autoencoder run and their labels, in
    data units; the training examples when the run holds none out (``autoencoder.holdout: 0``)."""
    from .evaluate import real_examples

    ds, _ = adapter.build_dataset(cfg.data)
    _, held = holdout_split(len(ds), cfg.autoencoder.holdout)
    idx = held if len(held) else torch.arange(len(ds))
    if n is not None:
        idx = idx[:n]
    return real_examples(subset(ds, idx))


def load_autoencoder(
    path: str | Path,
    *,
    device: str = "auto",
    weights: str = "ema",
    modality: str | None = None,
    data_shape: Sequence[int] | None = None,
) -> tuple[AutoencoderKL, Any, Any]:
    """The trained :class:`AutoencoderKL` of a run (its newest checkpoint) or checkpoint folder, on
    ``device``, in eval mode, with its resolved config and checkpoint.

    Refused with ``ValueError`` naming what differs: a checkpoint of a diffusion run, one of
    another ``modality``, or one trained on examples of another ``data_shape`` (``(C, *spatial)``).
    """
    from . import config as C
    from .checkpoint import find_checkpoint, load_state_dict_checked
    from .modality import DataInfo
    from .pipeline import resolve_device

    ckpt = find_checkpoint(str(path))
    task = ckpt.meta.get("task", ckpt.meta.get("config", {}).get("task", "diffusion"))
    if task != "autoencoder":
        raise ValueError(f"{path} holds a {task} run, not an autoencoder (task: autoencoder)")
    cfg = C.resolve_config(ckpt.config, source=str(ckpt.path / "meta.json"))
    if modality is not None and cfg.adapter.name != modality:
        raise ValueError(f"{path} holds an autoencoder of {cfg.adapter.name} data, not of {modality} data")
    info = DataInfo.from_json(ckpt.meta["data_info"])
    shape = tuple(ckpt.meta.get("data_shape", info.shape))
    if data_shape is not None and tuple(int(s) for s in data_shape) != shape:
        raise ValueError(f"{path} holds an autoencoder trained on examples of shape {shape}, not {tuple(data_shape)}")
    net = build_autoencoder(cfg.autoencoder, shape)
    load_state_dict_checked(net, ckpt.weights(weights), str(ckpt.path))
    net = net.to(resolve_device(device)).eval().requires_grad_(False)
    return net, cfg, ckpt


RECONSTRUCTION_HELP = {
    "examples": "held-out examples reconstructed (never trained on)",
    "seconds": "wall clock of encoding and decoding them",
    "rmse": "root mean squared error, data units (lower is better)",
    "mae": "mean absolute error, data units (lower is better)",
}


def evaluate_reconstructions(
    run: str | Path, *, num: int | None = None, device: str = "auto", batch_size: int = 64
) -> dict[str, Any]:
    """Judge a trained autoencoder run (``multidiff eval RUN``): reconstruct (posterior mode, EMA
    weights) its held-out examples, the first ``num`` of them or all, and score them with the
    modality's figures (:meth:`multidiff.modality.Modality.reconstruction_figures`).

    Returns a JSON-ready dict like :func:`multidiff.evaluate.evaluate_run`'s: ``figures``,
    ``help``, ``judge`` (what was measured) and ``settings``.
    """
    if num is not None and num < 1:
        raise ValueError(f"the number of examples must be at least 1, got {num}")
    net, cfg, ckpt = load_autoencoder(run, device=device)
    from .modality import DataInfo

    info = DataInfo.from_json(ckpt.meta["data_info"])
    x, labels = held_out_examples(cfg.adapter, cfg, num)
    t0 = time.perf_counter()
    rec = net.reconstruct(x, batch_size).float().cpu()
    seconds = time.perf_counter() - t0
    err = rec - x
    figures: dict[str, float] = {
        "examples": float(len(x)),
        "seconds": seconds,
        "rmse": float(err.square().mean().sqrt()),
        "mae": float(err.abs().mean()),
    }
    figures.update(cfg.adapter.reconstruction_figures(x, rec, info, labels=labels if (labels >= 0).any() else None))
    held = cfg.autoencoder.holdout > 0
    help_ = {**RECONSTRUCTION_HELP, **getattr(cfg.adapter, "reconstruction_help", {})}
    if not held:
        help_["examples"] = "training examples reconstructed (the run held none out: autoencoder.holdout 0)"
    return {
        "figures": figures,
        "per_class": {},
        "judge": (
            f"reconstructions (posterior mean, EMA weights) of {len(x)} "
            + ("held-out examples the autoencoder never trained on" if held else "training examples")
            + f", latent {tuple(ckpt.meta.get('latent_shape', ()))} for data {tuple(info.shape)}"
        ),
        "help": {k: v for k, v in help_.items() if k in figures},
        "settings": {
            "task": "autoencoder",
            "checkpoint": str(ckpt.path),
            "step": int(ckpt.step),
            "modality": cfg.adapter.name,
            "examples": len(x),
            "holdout": cfg.autoencoder.holdout,
            "latent_shape": list(ckpt.meta.get("latent_shape", [])),
        },
    }
