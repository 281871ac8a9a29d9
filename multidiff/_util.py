"""Small tensor helpers shared by the whole core. Nothing here knows a rank."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor


def amp_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (``None``: plain float32).

    ``auto`` is bf16 on CUDA devices that support it, fp16 on older ones (the trainer then scales
    the loss), and float32 elsewhere: CPUs gain little from autocast and lose accuracy. An explicit
    ``bf16`` on a device without native bf16 arithmetic (a CPU without AVX512-BF16 or AMX, an older
    GPU) still works but runs emulated, slower than float32: that gets a warning.
    """
    device = torch.device(device)
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    try:
        dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    except KeyError:
        raise ValueError(f"precision must be 'auto', 'fp32', 'bf16' or 'fp16', got {precision!r}") from None
    if dtype is torch.bfloat16 and not native_bf16(device):
        warnings.warn(
            f"precision bf16 on {device}, which has no native bf16 arithmetic: autocast is emulated and "
            "slower than float32 here; set precision: fp32 (or auto)",
            stacklevel=2,
        )
    return dtype


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` does bf16 arithmetic in hardware: a CUDA device that supports it, or a CPU
    whose oneDNN has bf16 kernels (AVX512-BF16 or AMX); other devices are assumed to."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        return bool(check()) if check is not None else True
    return True


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """View a per-sample tensor ``(B,)`` as ``(B, 1, ..., 1)`` with ``ndim`` axes in all.

    >>> append_dims(torch.ones(4), 5).shape
    torch.Size([4, 1, 1, 1, 1])
    """
    if v.ndim > ndim:
        raise ValueError(f"cannot broadcast a tensor of rank {v.ndim} to rank {ndim}")
    return v.reshape(*v.shape, *([1] * (ndim - v.ndim)))


def per_sample(s: Tensor | float, x: Tensor) -> Tensor:
    """A scalar or ``(B,)`` noise level as a ``(B,)`` tensor on ``x``'s device and dtype."""
    s = torch.as_tensor(s, device=x.device, dtype=x.dtype)
    if s.ndim == 0:
        s = s.expand(x.shape[0])
    if s.shape != (x.shape[0],):
        raise ValueError(f"sigma must be a scalar or of shape ({x.shape[0]},), got {tuple(s.shape)}")
    return s


def randn_like(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Standard normal noise shaped like ``x``, drawn from ``generator`` when given.

    The generator may live on another device than ``x`` (a CPU generator for a CUDA run
    keeps results identical across devices); the draw happens on the generator's device.
    """
    device = generator.device if generator is not None else x.device
    noise = torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype)
    if noise.device.type == "cpu" and x.device.type == "cuda":
        # from pinned memory the copy is asynchronous: no host-device synchronisation per sampler step
        return noise.pin_memory().to(x.device, non_blocking=True)
    return noise.to(x.device)


def mean_flat(x: Tensor) -> Tensor:
    """Mean over every axis but the first: ``(B, ...) -> (B,)``."""
    return x.reshape(x.shape[0], -1).mean(dim=1)
