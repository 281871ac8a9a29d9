"""A diffusion transformer over any number of spatial axes: DiT with adaLN-Zero, optional U-ViT skips.

One implementation serves 1D ``(B, C, L)``, 2D ``(B, C, H, W)`` and 3D ``(B, C, D, H, W)`` inputs:

1. patchify: a convolution whose kernel and stride are the patch size (one linear map per patch)
   turns the input into a grid of tokens, flattened with ``rearrange('b c ... -> b (...) c')``;
2. add fixed sin-cos position embeddings, the width split across the axes (each axis gets its
   own 1D embedding of its grid index, as DiT's 2D one does for two axes);
3. ``depth`` transformer blocks conditioned through adaLN-Zero (Peebles & Xie 2023, sec. 3.2) on
   ``c = noise embedding + class embedding``; optionally cross-attention to ``tokens`` and U-ViT
   long skips (Bao et al. 2023, sec. 3.1);
4. a final adaptive LayerNorm and linear map back to a patch per token, then unpatchify.

It keeps :class:`multidiff.nn.UNet`'s contract, ``net(x, c_noise, class_labels=None,
self_cond=None, tokens=None, token_mask=None, pooled=None)``, so denoisers, samplers, guidance and the trainer use either.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from einops import rearrange
from torch import Tensor, nn

from .nn import NoiseEmbedding, TokenAttention, check_condition, conv_nd, depth_to_space, network_input

__all__ = ["DiT", "DiTBlock", "sincos_position_embedding"]


def _per_axis(value: int | Sequence[int], dims: int, what: str) -> tuple[int, ...]:
    v = (value,) * dims if isinstance(value, int) else tuple(int(p) for p in value)
    if len(v) != dims or any(p < 1 for p in v):
        raise ValueError(f"{what} must be a positive int or a list of {dims} (one per spatial axis), got {value}")
    return v


def sincos_position_embedding(grid: Sequence[int], width: int, *, device=None, max_period: float = 10_000.0) -> Tensor:
    """Fixed sin-cos embeddings ``(prod(grid), width)`` of the positions of a grid, row-major.

    The width is split across the axes in sin-cos pairs, as evenly as it goes (the first axes get
    the spare pairs); each part is the transformer's 1D encoding (Vaswani et al. 2017, sec. 3.5)
    of that axis' integer index, as in DiT's 2D embedding. ``width`` must be even.
    """
    if width % 2:
        raise ValueError(f"the sin-cos position embedding needs an even width, got {width}")
    dims = len(grid)
    pairs = [width // 2 // dims + (i < (width // 2) % dims) for i in range(dims)]
    coords = torch.meshgrid(*(torch.arange(n, device=device, dtype=torch.float32) for n in grid), indexing="ij")
    parts = []
    for n_pairs, pos in zip(pairs, coords):
        if n_pairs == 0:
            continue
        freqs = torch.exp(-math.log(max_period) * torch.arange(n_pairs, device=device, dtype=torch.float32) / n_pairs)
        arg = pos.reshape(-1, 1) * freqs[None]
        parts += [arg.sin(), arg.cos()]
    return torch.cat(parts, dim=1)


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """``x * (1 + scale) + shift`` with per-sample ``(B, C)`` parameters over ``(B, N, C)`` tokens."""
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """A transformer block with adaLN-Zero conditioning (Peebles & Xie 2023, sec. 3.2, fig. 3).

    From ``c (B, width)`` a zero-initialised linear map regresses a shift, scale and gate for the
    attention and for the MLP: ``x = x + gate_a * attn(LN(x) * (1 + scale_a) + shift_a)``, and
    likewise for the MLP, so every block starts as the identity. With ``context`` (a token width)
    a cross-attention layer to the tokens sits between the two, pre-LN as in PixArt-alpha (Chen et
    al. 2023, sec. 2.3), its output projection zero-initialised so that it also starts as the
    identity; ``token_mask (B, T)`` marks the real tokens (see :class:`multidiff.nn.TokenAttention`).
    With ``skip`` the block first mixes in a U-ViT long skip: ``x = linear([x, skip])``.
    """

    def __init__(
        self,
        width: int,
        heads: int,
        *,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        context: int | None = None,
        skip: bool = False,
        qk_norm: bool = False,
    ) -> None:
        super().__init__()
        self.skip = nn.Linear(2 * width, width) if skip else None
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = TokenAttention(width, heads, qk_norm=qk_norm)
        if context is not None:
            self.norm_cross = nn.LayerNorm(width, eps=1e-6)
            self.cross = TokenAttention(width, heads, context, qk_norm=qk_norm)
        else:
            self.cross = None
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Dropout(dropout), nn.Linear(hidden, width)
        )
        self.adaLN = nn.Linear(width, 6 * width)

    def forward(
        self,
        x: Tensor,
        c: Tensor,
        tokens: Tensor | None = None,
        skip: Tensor | None = None,
        token_mask: Tensor | None = None,
    ) -> Tensor:
        if self.skip is not None:
            assert skip is not None
            x = self.skip(torch.cat([x, skip], dim=-1))
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN(F.silu(c)).chunk(6, dim=1)
        x = x + gate_a[:, None] * self.attn(_modulate(self.norm1(x), shift_a, scale_a))
        if self.cross is not None and tokens is not None:
            x = x + self.cross(self.norm_cross(x), tokens, token_mask)
        return x + gate_m[:, None] * self.mlp(_modulate(self.norm2(x), shift_m, scale_m))


class _FinalLayer(nn.Module):
    """Adaptive LayerNorm (shift and scale from ``c``) and a linear map to one patch per token."""

    def __init__(self, width: int, out: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.adaLN = nn.Linear(width, 2 * width)
        self.linear = nn.Linear(width, out)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN(F.silu(c)).chunk(2, dim=1)
        return self.linear(_modulate(self.norm(x), shift, scale))


class DiT(nn.Module):
    """A diffusion transformer over ``dims`` spatial axes: ``net(x, c_noise, class_labels=None,
    self_cond=None, tokens=None, token_mask=None, pooled=None) -> (B, out, *spatial)``.

    Args:
        dims: number of spatial axes (1 audio, 2 images, 3 voxels).
        in_channels: data channels.
        out_channels: output channels; defaults to ``in_channels`` (twice that with
            ``learned_variance``, the improved-DDPM variance channels).
        patch_size: patch side, an int for every axis or one per axis; a token per patch.
        width: token width (DiT's hidden size); must be even and divisible by ``heads``.
        depth: number of transformer blocks.
        heads: attention heads.
        mlp_ratio: hidden width of each block's MLP over ``width``.
        dropout: dropout inside each MLP.
        num_classes: class-conditional when positive; index ``num_classes`` is the null class
            used for classifier-free guidance, and ``class_labels=None`` means all null. The class
            embedding is added to the noise embedding: their sum ``c`` drives every adaLN.
        noise_scale: multiplies ``c_noise`` before the sinusoidal embedding (see
            :class:`multidiff.nn.NoiseEmbedding`).
        long_skips: U-ViT long skips (Bao et al. 2023): block ``i`` of the first half feeds block
            ``depth - 1 - i`` of the second, concatenated with its input and mapped back to
            ``width`` by a linear layer (an odd ``depth`` leaves the middle block without one).
        token_dim: width of the ``tokens`` (``(B, T, token_dim)``, a text encoder's states) that
            every block cross-attends to; 0 (the default) builds no cross-attention. A network with
            cross-attention called with ``tokens=None`` skips it. ``token_mask (B, T)`` marks the
            real tokens: a masked one changes nothing.
        pooled_dim: width of ``pooled (B, pooled_dim)`` (a text encoder's pooled vector), mapped by
            a linear layer and added to ``c``, as the class embedding is; 0 (the default) builds
            nothing, and ``pooled=None`` adds nothing.
        self_condition: take ``self_cond``, the model's earlier x0 estimate (the shape of ``x``),
            as extra input channels, as :class:`multidiff.nn.UNet` does; ``None`` feeds zeros.
        gradient_checkpointing: recompute each block in the backward pass instead of keeping its
            activations (less memory, about one more forward).
        qk_norm: LayerNorm on each head's queries and keys in every attention (self and cross;
            :class:`multidiff.nn.QKNorm`), as ViT-22B and SD3's MMDiT do for stable training.

    Any spatial size works: an axis that is not a multiple of its patch side is zero-padded at
    its end up to one, and the output cropped back (the padded positions are tokens like any
    other, with their own position embeddings), as :class:`multidiff.nn.UNet` pads to its
    downsampling multiple. Position embeddings are computed for the grid of each call, so one
    network runs at any size (DiT's table is fixed to one grid).

    At initialisation every block is the identity and the output is exactly zero (adaLN-Zero and
    a zero final layer, DiT sec. 3.2), so a denoiser starts at its skip path ``c_skip * x``.
    """

    def __init__(
        self,
        dims: int,
        in_channels: int,
        out_channels: int | None = None,
        *,
        patch_size: int | Sequence[int] = 2,
        width: int = 384,
        depth: int = 12,
        heads: int = 6,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        num_classes: int = 0,
        learned_variance: bool = False,
        noise_scale: float = 1.0,
        long_skips: bool = False,
        token_dim: int = 0,
        self_condition: bool = False,
        gradient_checkpointing: bool = False,
        pooled_dim: int = 0,
        qk_norm: bool = False,
    ) -> None:
        super().__init__()
        if dims < 1:
            raise ValueError(f"dims must be at least 1 (spatial axes), got {dims}")
        if depth < 1 or width < 2 or heads < 1:
            raise ValueError(f"need depth >= 1, width >= 2 and heads >= 1, got {depth}, {width}, {heads}")
        if width % 2 or width % heads:
            raise ValueError(f"width ({width}) must be even and divisible by heads ({heads})")
        if mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio}")
        self.dims = dims
        self.patch = _per_axis(patch_size, dims, "patch_size")
        self.in_channels = in_channels
        self.out_channels = (out_channels or in_channels) * (2 if learned_variance else 1)
        self.num_classes = num_classes
        self.width = width
        self.self_condition = bool(self_condition)
        self.long_skips = bool(long_skips)
        if token_dim < 0 or pooled_dim < 0:
            raise ValueError(f"token_dim and pooled_dim must be >= 0, got {token_dim} and {pooled_dim}")
        self.token_dim = int(token_dim)
        self.pooled_dim = int(pooled_dim)
        self.gradient_checkpointing = gradient_checkpointing
        self.patch_embed = conv_nd(
            dims, in_channels * (2 if self_condition else 1), width, self.patch, stride=self.patch
        )
        self.noise_embed = NoiseEmbedding(256, width, scale=noise_scale)
        self.class_embed = nn.Embedding(num_classes + 1, width) if num_classes > 0 else None
        if self.pooled_dim:
            self.pooled_embed = nn.Linear(self.pooled_dim, width)
        half = depth // 2 if long_skips else 0
        context = self.token_dim or None
        self.blocks = nn.ModuleList(
            DiTBlock(
                width,
                heads,
                mlp_ratio=mlp_ratio,
                dropout=dropout,
                context=context,
                skip=i >= depth - half,
                qk_norm=qk_norm,
            )
            for i in range(depth)
        )
        self.half = half
        self.final = _FinalLayer(width, self.out_channels * math.prod(self.patch))
        self._init_weights()

    def _init_weights(self) -> None:
        """DiT's initialisation: Xavier-uniform linear maps (the patch embedding as one), small
        normal embeddings, and zeros for every adaLN regression, cross-attention output and the
        final linear map (adaLN-Zero)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        for lin in (self.noise_embed.mlp[0], self.noise_embed.mlp[2]):
            nn.init.normal_(lin.weight, std=0.02)
        if self.class_embed is not None:
            nn.init.normal_(self.class_embed.weight, std=0.02)
        zeros = [self.final.adaLN, self.final.linear]
        for b in self.blocks:
            zeros.append(b.adaLN)
            if b.cross is not None:
                zeros.append(b.cross.proj)
        for m in zeros:
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def _condition(
        self, c_noise: Tensor, class_labels: Tensor | None, batch: int, pooled: Tensor | None = None
    ) -> Tensor:
        c = self.noise_embed(c_noise.reshape(-1).expand(batch))
        if pooled is not None:
            c = c + self.pooled_embed(pooled.to(c.dtype))
        if self.class_embed is not None:
            if class_labels is None:
                class_labels = torch.full((batch,), self.num_classes, device=c.device, dtype=torch.long)
            c = c + self.class_embed(class_labels.reshape(-1).long())
        elif class_labels is not None:
            raise ValueError("this network is unconditional (num_classes=0) but got class_labels")
        return c

    def _block(
        self, block: DiTBlock, h: Tensor, c: Tensor, tokens: Tensor | None, skip: Tensor | None, mask: Tensor | None
    ) -> Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(block, h, c, tokens, skip, mask, use_reentrant=False)
        return block(h, c, tokens, skip, mask)

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
        pad = [(-s) % p for s, p in zip(spatial, self.patch)]
        if any(pad):
            # F.pad lists axes last-first, (left, right) each; pad at the end of every axis.
            x = F.pad(x, [v for p in reversed(pad) for v in (0, p)])
        c = self._condition(c_noise, class_labels, x.shape[0], pooled)
        h = self.patch_embed(x)
        grid = h.shape[2:]
        h = rearrange(h, "b c ... -> b (...) c")
        h = h + sincos_position_embedding(grid, self.width, device=h.device).to(h.dtype)
        skips: list[Tensor] = []
        n = len(self.blocks)
        for i, block in enumerate(self.blocks):
            skip = skips.pop() if i >= n - self.half else None
            h = self._block(block, h, c, tokens, skip, token_mask)
            if i < self.half:
                skips.append(h)
        h = self.final(h, c)  # (B, N, out * prod(patch))
        h = rearrange(h, "b n c -> b c n").reshape(h.shape[0], -1, *grid)
        h = depth_to_space(h, self.patch)
        if any(pad):
            h = h[(slice(None), slice(None), *(slice(0, s) for s in spatial))]
        return h.contiguous()
