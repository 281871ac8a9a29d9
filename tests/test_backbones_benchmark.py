"""benchmarks/backbones.py: FLOPs per training step, the DiT's budgets and the runs it plans."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import backbones


def test_cpu_attention_is_counted() -> None:
    """torch's counter misses the CPU attention kernels; the script's mapping counts them with
    torch's SDPA formulas: forward 2 matmuls (4 b h s^2 d), backward 2.5x that."""
    b, h, s, d = 2, 4, 16, 8
    q = torch.randn(b, h, s, d, requires_grad=True)
    with FlopCounterMode(display=False, custom_mapping=backbones._CPU_ATTENTION) as counter:
        out = F.scaled_dot_product_attention(q, q, q)
    assert counter.get_total_flops() == 4 * b * h * s * s * d
    with FlopCounterMode(display=False, custom_mapping=backbones._CPU_ATTENTION) as counter:
        out.sum().backward()
    assert counter.get_total_flops() == 10 * b * h * s * s * d


def test_dit_steps_at_equal_budget() -> None:
    assert backbones.dit_steps(1000, 25.0, 32.0) == 781
    assert backbones.dit_steps(1200, 0.35, 2.73) == 154
    assert backbones.dit_steps(10, 1.0, 1000.0) == 1


def test_speed_table_with_flops_and_budgets(capsys: pytest.CaptureFixture[str]) -> None:
    backbones.main(["--configs", "image_digits", "--batch", "2", "--repeats", "1", "--warmup", "1"])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("| image_digits")]
    assert len(lines) == 1
    cells = [c.strip() for c in lines[0].strip("|").split("|")]
    unet_gflop, dit_gflop, flop_ratio = float(cells[7]), float(cells[8]), float(cells[9])
    assert unet_gflop > 0 and dit_gflop > 0 and flop_ratio == pytest.approx(dit_gflop / unet_gflop, rel=0.1)
    unet_steps, equal_flops = int(cells[10]), int(cells[11])
    assert unet_steps == 1000 and equal_flops == pytest.approx(unet_steps / flop_ratio, rel=0.05)


def test_plan_trains_the_dit_at_both_budgets_with_the_configs_settings(tmp_path: Path) -> None:
    args = argparse.Namespace(unet_run=[], runs=str(tmp_path), threads=1, set=["voxel_shapes:train.lr=1e-3"])
    rows = [
        {
            "config": "image_digits",
            "unet_steps": 1000,
            "unet_s": 0.4,
            "dit_s": 0.6,
            "equal FLOPs": 790,
            "equal time": 667,
        },
        {
            "config": "voxel_shapes",
            "unet_steps": 1200,
            "unet_s": 0.3,
            "dit_s": 2.7,
            "equal FLOPs": 208,
            "equal time": 90,
        },
    ]
    plan = {(p["config"], p["budget"]): p for p in backbones._plan(rows, args)}
    assert len(plan) == 6
    digits = plan[("image_digits", "equal FLOPs")]
    assert digits["backbone"] == "DiT" and digits["steps"] == 790
    assert "model.preset=dit_tiny" in digits["overrides"] and "train.steps=790" in digits["overrides"]
    assert not any(o.startswith("train.warmup_steps") for o in digits["overrides"])
    unet = plan[("image_digits", "as shipped")]
    assert unet["run"] == tmp_path / "image_digits_unet" and not any("preset" in o for o in unet["overrides"])
    # the config's 100 warmup steps do not fit in 90: cut to a tenth of the run
    short = plan[("voxel_shapes", "equal time")]["overrides"]
    assert "train.lr=1e-3" in short and "train.warmup_steps=9" in short


@pytest.mark.parametrize("name", backbones.LATENT_CONFIGS)
def test_latent_configs_dit_has_64_tokens(name: str) -> None:
    """The DiT of each latent config is a valid config (the UNet keys it sets are cleared) and
    sees 64 tokens on its latent grid, the count the latent comparison states."""
    from multidiff import config as C

    sets = ["model.preset=dit_tiny", *backbones.DIT_SETS[name]]
    cfg = C.load_config(backbones.ROOT / "configs" / f"{name}.yaml", sets)
    model = cfg.model
    assert model.network_backbone == "dit"
    latent_grid = {"image_digits_latent": (8, 8), "audio_tones_latent": (128,), "voxel_shapes_latent": (8, 8, 8)}[name]
    patch = model.resolved()["patch_size"]
    patch = [patch] * len(latent_grid) if isinstance(patch, int) else patch
    tokens = 1
    for size, p in zip(latent_grid, patch, strict=True):
        tokens *= size // p
    assert tokens == 64
