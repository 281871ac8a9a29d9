"""Image files: reading any PNG/JPEG into a tensor, writing tensors as PNG grids."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

__all__ = ["IMAGE_SUFFIXES", "read_image", "resize_center_crop", "to_uint8", "make_grid", "save_png", "save_grid"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def read_image(path: str | Path, channels: int = 3) -> Tensor:
    """A file as a float tensor ``(channels, H, W)`` in [-1, 1]; a clear error naming the file if unreadable."""
    from PIL import Image, UnidentifiedImageError

    mode = {1: "L", 3: "RGB"}[channels]
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert(mode), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"cannot read image {str(path)!r}: {e}") from None
    t = torch.from_numpy(arr.copy())
    t = t[None] if t.ndim == 2 else rearrange(t, "h w c -> c h w")
    return t.float() / 127.5 - 1


def resize_center_crop(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize ``(..., C, H, W)`` so it covers ``size`` keeping its aspect ratio, then crop the centre."""
    h, w = x.shape[-2:]
    th, tw = size
    scale = max(th / h, tw / w)
    nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    if (nh, nw) != (h, w):
        batched = x if x.ndim == 4 else x[None]
        batched = F.interpolate(batched, size=(nh, nw), mode="bilinear", antialias=scale < 1, align_corners=False)
        x = batched if x.ndim == 4 else batched[0]
    top, left = (nh - th) // 2, (nw - tw) // 2
    return x[..., top : top + th, left : left + tw]


def to_uint8(x: Tensor) -> Tensor:
    """[-1, 1] floats to uint8 pixels."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def make_grid(x: Tensor, nrow: int | None = None, pad: int = 1, value: float = -1.0) -> Tensor:
    """Tile ``(B, C, H, W)`` into one ``(C, H', W')`` image with ``nrow`` images per row."""
    b, c, h, w = x.shape
    nrow = nrow or math.ceil(math.sqrt(b))
    rows = math.ceil(b / nrow)
    fill = torch.full((rows * nrow - b, c, h, w), value, dtype=x.dtype)
    x = torch.cat([x.cpu(), fill])
    x = F.pad(x, (pad, pad, pad, pad), value=value)
    return rearrange(x, "(r n) c h w -> c (r h) (n w)", n=nrow)


def save_png(img: Tensor, path: str | Path, scale: int = 1) -> Path:
    """Write ``(C, H, W)`` in [-1, 1] as a PNG (nearest-neighbour upscaled by ``scale``)."""
    from PIL import Image

    if scale > 1:
        img = img.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    arr = to_uint8(img).permute(1, 2, 0).numpy()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(p)
    return p


def save_grid(x: Tensor, path: str | Path, nrow: int | None = None, scale: int | None = None) -> Path:
    """Write a batch as one PNG grid; small images are upscaled so the grid is at least ~384 pixels wide."""
    grid = make_grid(x, nrow)
    if scale is None:
        scale = max(1, 384 // grid.shape[-1])
    return save_png(grid, path, scale)
