"""Pictures of the diffusion process on images: forward noising and the denoising trajectory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from multidiff import schedules as S
from multidiff.modality import DataInfo
from multidiff.pipeline import generate

from .io import save_grid

__all__ = ["noising_strip", "trajectory_strip"]


def noising_strip(x0: Tensor, schedule: S.Schedule, path: str | Path, *, levels: int = 8, seed: int = 0) -> Path:
    """Rows are examples, columns ``t = 0, 1/(levels-1), ..., 1``: ``alpha(t) x0 + sigma(t) eps`` in the
    VP view (for a VE schedule, ``x / sqrt(1 + sigma^2)``), so every column has the same scale."""
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(x0.shape, generator=g)
    t = torch.linspace(0, 1, levels, dtype=torch.float64)
    sig = S.sigma(schedule, t).float()
    cols = [(x0 + s * eps) / (1 + s**2).sqrt() for s in sig]
    strip = torch.stack(cols, dim=1).flatten(0, 1)  # (n * levels, C, H, W), row-major per example
    return save_grid(strip, path, nrow=levels)


def trajectory_strip(
    denoiser: Any,
    info: DataInfo,
    path: str | Path,
    *,
    n: int = 4,
    sampler: str = "dpmpp_2m",
    steps: int = 20,
    guidance_scale: float = 1.0,
    columns: int = 8,
    seed: int = 0,
) -> Path:
    """Rows are samples; the columns show the sampler's x0 estimate at evenly spaced steps, ending at
    the final sample, so one sees coarse structure appear first and detail last."""
    frames: list[Tensor] = []
    x, _ = generate(
        denoiser,
        info,
        n=n,
        sampler=sampler,
        steps=steps,
        guidance_scale=guidance_scale,
        seed=seed,
        callback=lambda d: frames.append(d["denoised"].float().cpu()),
    )
    pick = torch.linspace(0, len(frames) - 1, columns - 1).round().long().tolist()
    cols = [frames[i] for i in pick] + [x]
    strip = torch.stack(cols, dim=1).flatten(0, 1)
    return save_grid(strip, path, nrow=columns)
