"""Rank-generic network blocks and the UNet every modality builds on.

One implementation serves 1D ``(B, C, L)``, 2D ``(B, C, H, W)`` and 3D ``(B, C, D, H, W)``
inputs: the rank only picks the convolution class (:func:`conv_nd`); normalization, attention
(over flattened positions), resampling and embeddings never look at it. A modality chooses
``dims``, widths and where attention goes, nothing more.

The layout follows DDPM's UNet (Ho et al. 2020, appendix B) with the improvements of Dhariwal &
Nichol 2021 (sec. 3): scale-shift ("adaptive group norm") conditioning, multi-head attention at
the coarse levels, and zero-initialised output layers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from einops import rearrange
from torch import Tensor, nn

__all__ = [
    "conv_nd",
    "group_norm",
    "NoiseEmbedding",
    "ResBlock",
    "Attention",
    "TokenAttention",
    "CrossAttention",
    "Downsample",
    "Upsample",
    "UNet",
    "space_to_depth",
    "depth_to_space",
    "count_parameters",
    "check_condition",
]


def _cpu_bf16(x: Tensor) -> bool:
    """Whether a CPU op on ``x`` runs in bf16: ``x`` is bf16, or CPU autocast is on at bf16."""
    if x.device.type != "cpu":
        return False
    return x.dtype == torch.bfloat16 or (
        torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    )


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` that works around a CPU bf16 bug of the weight gradient.

    With torch 2.14's CPU (oneDNN) bf16 kernels, the weight gradient of a 3x3x3 convolution whose
    input is shallower than the kernel along the first spatial axis (depth 2, as at a 3D UNet's
    2^3 level) comes out as garbage: entries near 1e18 or inf, relative error inf against 4e-3 at
    depth 3 or more (measured on an AMD EPYC with AVX512-BF16; the forward pass and the input's
    gradient are right). A bf16 run then skips step after step as non-finite. Such a convolution
    runs in fp32 here, which costs nothing at a few voxels; every other one is ``nn.Conv3d``'s.
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-3] < self.kernel_size[0] and _cpu_bf16(x):
            with torch.autocast("cpu", enabled=False):
                bias = None if self.bias is None else self.bias.float()
                y = self._conv_forward(x.float(), self.weight.float(), bias)
            return y.to(x.dtype) if x.dtype == torch.bfloat16 else y
        return super().forward(x)


_CONV: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: Conv3d}


def conv_nd(dims: int, *args, **kwargs) -> nn.Module:
    """``nn.Conv1d``, ``nn.Conv2d`` or ``nn.Conv3d`` for ``dims`` spatial axes."""
    if dims not in _CONV:
        raise ValueError(f"dims must be 1, 2 or 3 (spatial axes), got {dims}")
    return _CONV[dims](*args, **kwargs)


def group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with the largest group count ``<= groups`` that divides ``channels``."""
    g = max(d for d in range(1, min(groups, channels) + 1) if channels % d == 0)
    return nn.GroupNorm(g, channels, eps=1e-6)


def zero_(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters, so a residual branch starts as the identity (Dhariwal & Nichol 2021)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class NoiseEmbedding(nn.Module):
    """Sinusoidal embedding of the noise condition followed by a two-layer MLP.

    ``c_noise (B,) -> (B, out_channels)``. The transformer's positional encoding (Vaswani et al.
    2017, sec. 3.5) on ``scale * c_noise``: ``scale`` brings whatever the network is conditioned
    on (a timestep in [0, 999], time in [0, 1], EDM's ``ln(sigma) / 4``) to the range of positions
    the frequencies resolve.
    """

    def __init__(self, channels: int, out_channels: int, *, scale: float = 1.0, max_period: float = 10_000.0) -> None:
        super().__init__()
        if channels % 2:
            raise ValueError(f"the sinusoidal embedding needs an even width, got {channels}")
        self.channels = channels
        self.scale = scale
        freqs = torch.exp(-math.log(max_period) * torch.arange(channels // 2, dtype=torch.float32) / (channels // 2))
        self.register_buffer("freqs", freqs, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(channels, out_channels), nn.SiLU(), nn.Linear(out_channels, out_channels))

    def forward(self, c_noise: Tensor) -> Tensor:
        arg = (self.scale * c_noise.float())[:, None] * self.freqs[None]
        emb = torch.cat([arg.cos(), arg.sin()], dim=1)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class ResBlock(nn.Module):
    """Residual block with scale-shift conditioning on an embedding (Dhariwal & Nichol 2021, sec. 3).

    ``h = conv(act(norm(x))); h = norm(h) * (1 + scale) + shift; out = skip(x) + conv(drop(act(h)))``.
    With ``emb_channels=0`` the block takes no embedding (``block(x)``; an autoencoder's block):
    ``scale`` and ``shift`` are 0.

    ``checkpoint_norm`` recomputes ``act(norm(h) * (1 + scale) + shift)`` in the backward pass
    instead of keeping the normalised and the modulated activations: two full-size tensors fewer
    per block for one extra GroupNorm and SiLU (a few per cent of a step).
    """

    def __init__(
        self,
        dims: int,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        *,
        dropout: float = 0.0,
        groups: int = 32,
        checkpoint_norm: bool = False,
    ) -> None:
        super().__init__()
        self.checkpoint_norm = checkpoint_norm
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = conv_nd(dims, in_channels, out_channels, 3, padding=1)
        self.emb = nn.Linear(emb_channels, 2 * out_channels) if emb_channels > 0 else None
        self.norm2 = group_norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_(conv_nd(dims, out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if in_channels == out_channels else conv_nd(dims, in_channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.emb is None:
            if emb is not None:
                raise ValueError("this ResBlock was built with emb_channels=0; it takes no embedding")
            h = F.silu(self.norm2(h))
            return self.skip(x) + self.conv2(self.dropout(h))
        if emb is None:
            raise ValueError("this ResBlock is conditioned (emb_channels > 0); it needs an embedding")
        scale, shift = self.emb(F.silu(emb)).reshape(*emb.shape[:1], -1, *([1] * (x.ndim - 2))).chunk(2, dim=1)
        if self.checkpoint_norm and torch.is_grad_enabled():
            # a pure function: no random state to keep (nor to read, which a CUDA graph capture forbids)
            h = torch.utils.checkpoint.checkpoint(
                self._modulate, h, scale, shift, use_reentrant=False, preserve_rng_state=False
            )
        else:
            h = self._modulate(h, scale, shift)
        h = self.conv2(self.dropout(h))
        return self.skip(x) + h

    def _modulate(self, h: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
        return F.silu(self.norm2(h) * (1 + scale) + shift)


class QKNorm(nn.Module):
    """LayerNorm of each head's queries and keys before their dot product (QK-norm: Dehghani et
    al. 2023, "Scaling Vision Transformers to 22 Billion Parameters", sec. 2; Wortsman et al. 2023,
    sec. 3.1.1): the attention logits stay bounded by the norms' learned gains instead of growing
    with the weights, which is what makes attention collapse to one key at high learning rates
    and under low precision."""

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        self.q = nn.LayerNorm(head_dim)
        self.k = nn.LayerNorm(head_dim)

    def forward(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        return self.q(q), self.k(k)


class Attention(nn.Module):
    """Multi-head self-attention over all positions of a ``(B, C, *spatial)`` tensor.

    Positions are flattened with ``rearrange(x, 'b c ... -> b (...) c')`` and attended with
    PyTorch's scaled-dot-product attention (flash / memory-efficient kernels where available).
    """

    def __init__(self, channels: int, *, head_channels: int = 64, groups: int = 32, qk_norm: bool = False) -> None:
        super().__init__()
        self.heads = max(1, channels // head_channels)
        if channels % self.heads:
            raise ValueError(f"channels ({channels}) must be divisible by the number of heads ({self.heads})")
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.qk_norm = QKNorm(channels // self.heads) if qk_norm else None
        self.proj = zero_(nn.Linear(channels, channels))

    def forward(self, x: Tensor) -> Tensor:
        spatial = x.shape[2:]
        h = rearrange(self.norm(x), "b c ... -> b (...) c")
        q, k, v = rearrange(self.qkv(h), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        if self.qk_norm is not None:
            q, k = self.qk_norm(q, k)
        h = F.scaled_dot_product_attention(q, k, v)
        h = self.proj(rearrange(h, "b h n d -> b n (h d)"))
        return x + rearrange(h, "b n c -> b c n").reshape(x.shape[0], -1, *spatial)


class TokenAttention(nn.Module):
    """Multi-head attention of ``(B, N, width)`` queries to themselves or, with ``context`` (a token
    width), to ``(B, T, context)`` tokens, optionally masked.

    ``mask (B, T)`` (True: a token, False: padding) is the keys' attention mask: a masked key gets
    weight exactly zero, so its value changes nothing. A row whose tokens are all masked attends
    to none: its output is zero (softmax over no key would be NaN), i.e. a residual branch adds
    nothing. Shared by the DiT's blocks, the UNet's :class:`CrossAttention` and the learned text
    encoder (:mod:`multidiff.text`).
    """

    def __init__(self, width: int, heads: int, context: int | None = None, *, qk_norm: bool = False) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width ({width}) must be divisible by the number of heads ({heads})")
        self.heads = heads
        self.cross = context is not None
        if self.cross:
            self.q = nn.Linear(width, width)
            self.kv = nn.Linear(context, 2 * width)
        else:
            self.qkv = nn.Linear(width, 3 * width)
        self.qk_norm = QKNorm(width // heads) if qk_norm else None
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        if self.cross:
            if context is None:
                raise ValueError("cross-attention needs context tokens")
            q = rearrange(self.q(x), "b n (h d) -> b h n d", h=self.heads)
            k, v = rearrange(self.kv(context.to(x.dtype)), "b t (two h d) -> two b h t d", two=2, h=self.heads)
        else:
            q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        if self.qk_norm is not None:
            q, k = self.qk_norm(q, k)
        if mask is None:
            h = F.scaled_dot_product_attention(q, k, v)
            return self.proj(rearrange(h, "b h n d -> b n (h d)"))
        mask = mask.bool()
        some = mask.any(dim=1)  # (B,): rows with at least one token; no host read
        attend = (mask | ~some[:, None])[:, None, None, :]  # an empty row attends to all, then is zeroed
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=attend)
        return self.proj(rearrange(h, "b h n d -> b n (h d)")) * some[:, None, None].to(x.dtype)


class CrossAttention(nn.Module):
    """Cross-attention of every position of a ``(B, C, *spatial)`` tensor to ``(B, T, context)``
    tokens (a text encoder's states), as in Stable Diffusion's UNet (Rombach et al. 2022, sec. 3.3):
    ``x + attn(norm(x) -> tokens)`` over ``rearrange(x, 'b c ... -> b (...) c')``, its output
    projection zero-initialised so the block starts as the identity. ``mask (B, T)``: see
    :class:`TokenAttention`.
    """

    def __init__(
        self, channels: int, context: int, *, head_channels: int = 64, groups: int = 32, qk_norm: bool = False
    ) -> None:
        super().__init__()
        heads = max(1, channels // head_channels)
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be divisible by the number of heads ({heads})")
        self.norm = group_norm(channels, groups)
        self.attn = TokenAttention(channels, heads, context, qk_norm=qk_norm)
        zero_(self.attn.proj)

    def forward(self, x: Tensor, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        h = self.attn(rearrange(self.norm(x), "b c ... -> b (...) c"), tokens, mask)
        return x + rearrange(h, "b n c -> b c n").reshape(x.shape)


def _factors(factor: int | Sequence[int], dims: int) -> tuple[int, ...]:
    f = (factor,) * dims if isinstance(factor, int) else tuple(factor)
    if len(f) != dims or any(v < 1 for v in f):
        raise ValueError(f"resampling factor must be a positive int or {dims} of them, got {factor}")
    return f


RESAMPLE = ("conv", "box")


def _learned_resampling(resample: str) -> bool:
    """Whether ``resample`` (one of :data:`RESAMPLE`) asks for a learned convolution."""
    if resample not in RESAMPLE:
        raise ValueError(f"resample must be one of {RESAMPLE}, got {resample!r}")
    return resample == "conv"


class Downsample(nn.Module):
    """Divides each spatial axis by its factor (every axis by default): a strided 3-wide
    convolution (``resample="conv"``, DDPM's), or the mean of each block (``"box"``, no parameters,
    as EDM2's resampling: Karras et al. 2024, sec. 2.3 and fig. 2), which cannot scale the
    residual stream up, however the training goes."""

    def __init__(self, dims: int, channels: int, factor: int | Sequence[int] = 2, *, resample: str = "conv") -> None:
        super().__init__()
        self.factor = f = _factors(factor, dims)
        self.conv: nn.Module | None = None
        if _learned_resampling(resample):
            kernel = tuple(max(3, 2 * v - 1) if v > 1 else 1 for v in f)
            self.conv = conv_nd(dims, channels, channels, kernel, stride=f, padding=tuple(k // 2 for k in kernel))

    def forward(self, x: Tensor) -> Tensor:
        if self.conv is None:
            return (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[x.ndim - 3](x, self.factor)
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling of each axis by its factor, then a 3-wide convolution
    (``resample="conv"``) or nothing more (``"box"``: no parameters, see :class:`Downsample`)."""

    def __init__(self, dims: int, channels: int, factor: int | Sequence[int] = 2, *, resample: str = "conv") -> None:
        super().__init__()
        self.factor = _factors(factor, dims)
        self.conv = conv_nd(dims, channels, channels, 3, padding=1) if _learned_resampling(resample) else None

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=self.factor, mode="nearest")
        return x if self.conv is None else self.conv(x)


def _patch_pattern(dims: int) -> tuple[str, str]:
    axes = " ".join(f"(x{i} p{i})" for i in range(dims))
    return f"b c {axes}", f"b (c {' '.join(f'p{i}' for i in range(dims))}) {' '.join(f'x{i}' for i in range(dims))}"


def space_to_depth(x: Tensor, patch: Sequence[int]) -> Tensor:
    """``(B, C, *spatial) -> (B, C * prod(patch), *spatial / patch)``: each patch becomes channels."""
    src, dst = _patch_pattern(len(patch))
    return rearrange(x, f"{src} -> {dst}", **{f"p{i}": p for i, p in enumerate(patch)})


def depth_to_space(x: Tensor, patch: Sequence[int]) -> Tensor:
    """The inverse of :func:`space_to_depth`."""
    src, dst = _patch_pattern(len(patch))
    return rearrange(x, f"{dst} -> {src}", **{f"p{i}": p for i, p in enumerate(patch)})


def _run_layer(
    layer: nn.ModuleList, h: Tensor, emb: Tensor, tokens: Tensor | None = None, mask: Tensor | None = None
) -> Tensor:
    for m in layer:
        if isinstance(m, ResBlock):
            h = m(h, emb)
        elif isinstance(m, CrossAttention):
            h = m(h, tokens, mask) if tokens is not None else h
        else:
            h = m(h)
    return h


def coordinate_grid(x: Tensor) -> Tensor:
    """``(B, dims, *spatial)``: each position's coordinate along each spatial axis of ``x (B, C,
    *spatial)``, from -1 to 1 (cell centres), in ``x``'s dtype and memory format: extra input
    channels that tell a convolution where it is (CoordConv, Liu et al. 2018)."""
    b, _, *spatial = x.shape
    axes = [(torch.arange(n, device=x.device, dtype=x.dtype) + 0.5) / n * 2 - 1 for n in spatial]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"))
    return grid.expand(b, *grid.shape).contiguous(memory_format=_memory_format(x))


def _memory_format(x: Tensor) -> torch.memory_format:
    if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def network_input(net: nn.Module, x: Tensor, self_cond: Tensor | None) -> Tensor:
    """A network's input checked against its ``dims`` and ``in_channels``, with its self-condition
    channels appended when it was built with ``self_condition`` (zeros when ``self_cond`` is None);
    shared by :class:`UNet` and :class:`multidiff.transformer.DiT`."""
    name = type(net).__name__
    if x.ndim != net.dims + 2:
        raise ValueError(
            f"this {name} has {net.dims} spatial axes and takes (B, C, *spatial) of rank {net.dims + 2}, "
            f"got shape {tuple(x.shape)}"
        )
    if x.shape[1] != net.in_channels:
        raise ValueError(f"expected {net.in_channels} input channels, got {x.shape[1]} (shape {tuple(x.shape)})")
    if net.self_condition:
        if self_cond is None:
            self_cond = torch.zeros_like(x)
        elif self_cond.shape != x.shape:
            raise ValueError(f"self_cond must have the shape of x, {tuple(x.shape)}, got {tuple(self_cond.shape)}")
        return torch.cat([x, self_cond.to(x.dtype)], dim=1)
    if self_cond is not None:
        raise ValueError("this network was built without self_condition=True; it takes no self_cond")
    return x


def check_condition(
    net: nn.Module, batch: int, tokens: Tensor | None, token_mask: Tensor | None, pooled: Tensor | None
) -> None:
    """Check a text condition against a network's ``token_dim`` and ``pooled_dim`` (both 0: it takes
    none): ``tokens (B, T, token_dim)``, ``token_mask (B, T)`` (only with tokens), ``pooled (B,
    pooled_dim)``; shared by :class:`UNet` and :class:`multidiff.transformer.DiT`."""
    name = type(net).__name__
    if tokens is not None:
        if not net.token_dim:
            raise ValueError(f"this {name} has no cross-attention (token_dim=0) but got tokens")
        if tokens.ndim != 3 or tokens.shape[0] != batch or tokens.shape[2] != net.token_dim:
            raise ValueError(f"tokens must have shape ({batch}, T, {net.token_dim}), got {tuple(tokens.shape)}")
    if token_mask is not None:
        if tokens is None:
            raise ValueError("token_mask was given without tokens")
        if tuple(token_mask.shape) != tuple(tokens.shape[:2]):
            raise ValueError(
                f"token_mask must have shape {tuple(tokens.shape[:2])} (one flag per token), got {tuple(token_mask.shape)}"
            )
    if pooled is not None:
        if not net.pooled_dim:
            raise ValueError(f"this {name} takes no pooled vector (pooled_dim=0) but got pooled")
        if tuple(pooled.shape) != (batch, net.pooled_dim):
            raise ValueError(f"pooled must have shape ({batch}, {net.pooled_dim}), got {tuple(pooled.shape)}")


class UNet(nn.Module):
    """A UNet over ``dims`` spatial axes: ``net(x, c_noise, class_labels=None, self_cond=None,
    tokens=None, token_mask=None, pooled=None) -> (B, out, *spatial)``.

    Args:
        dims: number of spatial axes (1 audio, 2 images, 3 voxels).
        in_channels: data channels.
        out_channels: output channels; defaults to ``in_channels`` (twice that with
            ``learned_variance``, the improved-DDPM variance channels).
        channels: width of the first level.
        channel_mult: width multiplier per level; the number of levels is its length.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attention_levels: level indices (0 = full resolution) with self-attention after each
            residual block; the middle block always attends.
        head_channels: channels per attention head.
        dropout: dropout inside residual blocks.
        num_classes: class-conditional when positive; index ``num_classes`` is the null class
            used for classifier-free guidance, and ``class_labels=None`` means all null.
        factor: downsampling factor per level, an int for every axis or one per axis.
        noise_scale: multiplies ``c_noise`` before the sinusoidal embedding (see
            :class:`NoiseEmbedding`).
        groups: GroupNorm groups.
        gradient_checkpointing: recompute each level's blocks in the backward pass instead of
            keeping their activations (Chen et al. 2016): less memory, about one more forward.
        checkpoint_norms: recompute only each residual block's second norm, modulation and
            activation (see :class:`ResBlock`): a smaller saving for a few per cent of time.
        patch_size: fold each patch of this size (an int for every axis, or one per axis) into
            channels before the first level and unfold after the last (space-to-depth, as the
            patching of simple diffusion, Hoogeboom et al. 2023, sec. 3.3): the network runs at
            a coarser grid with more channels, much cheaper for 3D data.
        self_condition: take a second input, ``self_cond``, the model's own earlier estimate of
            x0 (same shape as ``x``), as extra input channels (self-conditioning, Chen et al.
            2023, "Analog Bits", sec. 3.2); ``self_cond=None`` feeds zeros, the estimate-free
            mode that self-conditioned training also teaches.
        token_dim: width of the ``tokens`` (``(B, T, token_dim)``, a text encoder's states) that
            :class:`CrossAttention` blocks attend to, ``token_mask (B, T)`` marking the real ones
            (a masked token changes nothing); 0 (the default) builds none. A network with
            cross-attention called with ``tokens=None`` skips it.
        cross_attention_levels: the levels with a cross-attention block after each residual block
            (after its self-attention, if any); ``None`` means ``attention_levels``. The middle
            block always has one when ``token_dim`` is set.
        coordinates: give the first convolution each position's coordinates as ``dims`` more
            input channels (:func:`coordinate_grid`, on the grid it sees, after patching), so the
            network knows where it is without inferring it from the zero padding: what a condition
            such as "on the left" needs.
        qk_norm: LayerNorm on each head's queries and keys in every self- and cross-attention
            block (:class:`QKNorm`), for training at learning rates where attention logits would
            otherwise grow until the attention collapses.
        resample: ``"conv"`` (DDPM's learned resampling: a strided convolution down, nearest
            neighbours and a convolution up) or ``"box"`` (block means down, nearest neighbours up,
            no parameters: EDM2's). A learned resampling convolution sits on the residual stream
            with no normalisation after it; at high learning rates (3D kernels have 27 taps, so
            Adam's steps are large against their weights) it can grow until the stream is
            thousands of times the residual branches and the network stops using the noise level.
        pooled_dim: width of ``pooled (B, pooled_dim)`` (a text encoder's pooled vector), mapped
            by a linear layer and added to the noise embedding, as the class embedding is (GLIDE,
            Nichol et al. 2022, sec. 2.4; SDXL's ``text_embeds``); 0 (the default) builds nothing,
            and ``pooled=None`` adds nothing.

    With ``token_dim = pooled_dim = 0`` the network has no parameter more than before text
    conditioning existed, so earlier checkpoints load unchanged.

    Any spatial size works: an axis that is not a multiple of ``patch_size * factor ** (levels - 1)``
    is zero-padded up to one and the output cropped back.
    """

    def __init__(
        self,
        dims: int,
        in_channels: int,
        out_channels: int | None = None,
        *,
        channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attention_levels: Sequence[int] = (1,),
        head_channels: int = 64,
        dropout: float = 0.0,
        num_classes: int = 0,
        learned_variance: bool = False,
        factor: int | Sequence[int] = 2,
        noise_scale: float = 1.0,
        groups: int = 32,
        gradient_checkpointing: bool = False,
        checkpoint_norms: bool = False,
        patch_size: int | Sequence[int] = 1,
        self_condition: bool = False,
        token_dim: int = 0,
        cross_attention_levels: Sequence[int] | None = None,
        pooled_dim: int = 0,
        coordinates: bool = False,
        qk_norm: bool = False,
        resample: str = "conv",
    ) -> None:
        super().__init__()
        self.patch = _factors(patch_size, dims)
        self.coordinates = bool(coordinates)
        self.self_condition = bool(self_condition)
        self.gradient_checkpointing = gradient_checkpointing
        levels = len(channel_mult)
        if levels < 1 or num_res_blocks < 1 or channels < 1:
            raise ValueError("need at least one level, one residual block per level and one channel")
        if any(not 0 <= a < levels for a in attention_levels):
            raise ValueError(f"attention_levels must lie in [0, {levels - 1}], got {list(attention_levels)}")
        if token_dim < 0 or pooled_dim < 0:
            raise ValueError(f"token_dim and pooled_dim must be >= 0, got {token_dim} and {pooled_dim}")
        cross_levels = tuple(attention_levels if cross_attention_levels is None else cross_attention_levels)
        if any(not 0 <= a < levels for a in cross_levels):
            raise ValueError(f"cross_attention_levels must lie in [0, {levels - 1}], got {list(cross_levels)}")
        self.token_dim = int(token_dim)
        self.pooled_dim = int(pooled_dim)
        self.cross_attention_levels = cross_levels if token_dim else ()
        self.dims = dims
        self.in_channels = in_channels
        self.out_channels = (out_channels or in_channels) * (2 if learned_variance else 1)
        self.num_classes = num_classes
        self.factor = _factors(factor, dims)
        self.multiple = tuple(p * f ** (levels - 1) for p, f in zip(self.patch, self.factor))
        fold = math.prod(self.patch)
        emb = 4 * channels
        self.noise_embed = NoiseEmbedding(channels, emb, scale=noise_scale)
        self.class_embed = nn.Embedding(num_classes + 1, emb) if num_classes > 0 else None
        if self.class_embed is not None:
            nn.init.normal_(self.class_embed.weight, std=0.02)
        if self.pooled_dim:
            self.pooled_embed = nn.Linear(self.pooled_dim, emb)
        stem_in = in_channels * fold * (2 if self_condition else 1) + (dims if self.coordinates else 0)
        self.stem = conv_nd(dims, stem_in, channels, 3, padding=1)

        def block(cin: int, cout: int) -> ResBlock:
            return ResBlock(dims, cin, cout, emb, dropout=dropout, groups=groups, checkpoint_norm=checkpoint_norms)

        def attn(c: int) -> Attention:
            return Attention(c, head_channels=head_channels, groups=groups, qk_norm=qk_norm)

        def cross(c: int) -> CrossAttention:
            return CrossAttention(c, self.token_dim, head_channels=head_channels, groups=groups, qk_norm=qk_norm)

        self.down = nn.ModuleList()
        skips = [channels]
        c = channels
        for lvl, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layer = nn.ModuleList([block(c, channels * mult)])
                c = channels * mult
                if lvl in attention_levels:
                    layer.append(attn(c))
                if lvl in self.cross_attention_levels:
                    layer.append(cross(c))
                self.down.append(layer)
                skips.append(c)
            if lvl < levels - 1:
                self.down.append(nn.ModuleList([Downsample(dims, c, self.factor, resample=resample)]))
                skips.append(c)
        self.mid = nn.ModuleList([block(c, c), attn(c), *([cross(c)] if self.token_dim else []), block(c, c)])
        self.up = nn.ModuleList()
        for lvl, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layer = nn.ModuleList([block(c + skips.pop(), channels * mult)])
                c = channels * mult
                if lvl in attention_levels:
                    layer.append(attn(c))
                if lvl in self.cross_attention_levels:
                    layer.append(cross(c))
                if lvl > 0 and i == num_res_blocks:
                    layer.append(Upsample(dims, c, self.factor, resample=resample))
                self.up.append(layer)
        self.out = nn.Sequential(
            group_norm(c, groups), nn.SiLU(), zero_(conv_nd(dims, c, self.out_channels * fold, 3, padding=1))
        )

    # Memory layout of 2-D activations: "auto" is channels-last (NHWC) on CPUs and CUDA GPUs, NCHW
    # elsewhere; True or False force it (set it on an instance: ``net.channels_last = False``).
    channels_last: bool | str = "auto"

    @staticmethod
    def _run_checkpointed(
        layer: nn.ModuleList, h: Tensor, emb: Tensor, tokens: Tensor | None = None, mask: Tensor | None = None
    ) -> Tensor:
        return torch.utils.checkpoint.checkpoint(_run_layer, layer, h, emb, tokens, mask, use_reentrant=False)

    def _embed(self, c_noise: Tensor, class_labels: Tensor | None, batch: int, pooled: Tensor | None = None) -> Tensor:
        emb = self.noise_embed(c_noise.reshape(-1).expand(batch))
        if pooled is not None:
            emb = emb + self.pooled_embed(pooled.to(emb.dtype))
        if self.class_embed is not None:
            if class_labels is None:
                class_labels = torch.full((batch,), self.num_classes, device=emb.device, dtype=torch.long)
            emb = emb + self.class_embed(class_labels.reshape(-1).long())
        elif class_labels is not None:
            raise ValueError("this network is unconditional (num_classes=0) but got class_labels")
        return emb

    def forward(
        self,
        x: Tensor,
        c_noise: Tensor,
        class_labels: Tensor | None = None,
        self_cond: Tensor | None = None,
        tokens: Tensor | None = None,
        token_mask: Tensor | None = None,
        pooled: Tensor | None = None,
    ) -> Tensor:
        x = network_input(self, x, self_cond)
        check_condition(self, x.shape[0], tokens, token_mask, pooled)
        spatial = x.shape[2:]
        pad = [(-s) % m for s, m in zip(spatial, self.multiple)]
        if any(pad):
            # F.pad lists axes last-first, (left, right) each; pad at the end of every axis.
            x = F.pad(x, [v for p in reversed(pad) for v in (0, p)])
        emb = self._embed(c_noise, class_labels, x.shape[0], pooled)
        patched = any(p > 1 for p in self.patch)
        if patched:
            x = space_to_depth(x, self.patch)
        nhwc = self.channels_last if self.channels_last != "auto" else x.device.type in ("cpu", "cuda")
        if nhwc and self.dims == 2:
            # oneDNN runs 2-D convolutions on channels-last (NHWC) activations without reordering
            # them: about 10% faster sampling on CPU. Every later layer keeps the layout. On an H100
            # (bf16 training step, DDPM's CIFAR-10 UNet) 7% faster eager and 6% faster compiled.
            x = x.contiguous(memory_format=torch.channels_last)
        run = self._run_checkpointed if self.gradient_checkpointing and torch.is_grad_enabled() else _run_layer
        if self.coordinates:
            x = torch.cat([x, coordinate_grid(x)], dim=1)
        h = self.stem(x)
        hs = [h]
        ctx = (tokens, token_mask) if tokens is not None and self.token_dim else ()
        for layer in self.down:
            h = run(layer, h, emb, *ctx)
            hs.append(h)
        h = run(self.mid, h, emb, *ctx)
        for layer in self.up:
            h = run(layer, torch.cat([h, hs.pop()], dim=1), emb, *ctx)
        h = self.out(h)
        if patched:
            h = depth_to_space(h, self.patch)
        if any(pad):
            h = h[(slice(None), slice(None), *(slice(0, s) for s in spatial))]
        return h.contiguous()
