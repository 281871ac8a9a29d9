"""The voxel modality: the plugin, the 3D UNet presets, training through the engine, meshes out."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from modalities.voxel import VoxelDataConfig, VoxelModality, VoxelModelConfig
from modalities.voxel.adapter import PRESETS, build_unet3d
from multidiff import config as C
from multidiff.checkpoint import find_checkpoint
from multidiff.modality import DataInfo
from multidiff.nn import count_parameters
from multidiff.registry import available_modalities, load_modality
from multidiff.train import Trainer

ROOT = Path(__file__).resolve().parent.parent


def test_registered_through_the_entry_point() -> None:
    assert "voxel" in available_modalities()
    assert load_modality("voxel") is VoxelModality


@pytest.mark.parametrize(("preset", "size"), [("tiny", (16, 16, 16)), ("tiny", (12, 20, 9)), ("small", (32, 32, 32))])
def test_presets_build_and_run_on_grids(preset: str, size: tuple[int, int, int]) -> None:
    net = build_unet3d(VoxelModelConfig(preset=preset), DataInfo((1, *size), 6))
    x = torch.randn(2, 1, *size)
    out = net(x, torch.tensor([3.0, 700.0]), torch.tensor([0, 6]))  # 6 = the null class
    assert out.shape == x.shape
    r = VoxelModelConfig(preset=preset).resolved()
    # every level halves all three axes (after folding patches); attention only where at most 8^3 positions remain
    assert all((max(size) / (r["patch_size"] * 2**lvl)) ** 3 <= 512 for lvl in r["attention_levels"])


def test_preset_sizes_grow_and_base_checkpoints() -> None:
    UNET_PRESETS = [p for p in PRESETS if VoxelModelConfig.preset_backbone(p) == "unet"]  # the DiT ones aside
    sizes = [
        count_parameters(build_unet3d(VoxelModelConfig(preset=p), DataInfo((1, 16, 16, 16), 0))) for p in UNET_PRESETS
    ]
    assert sizes == sorted(sizes) and sizes[0] < 5e6
    assert build_unet3d(VoxelModelConfig(preset="base"), DataInfo((1, 16, 16, 16), 0)).gradient_checkpointing
    tiny = VoxelModelConfig(preset="tiny", gradient_checkpointing=True)
    assert build_unet3d(tiny, DataInfo((1, 16, 16, 16), 0)).gradient_checkpointing


def test_groups_and_max_tilt_are_used() -> None:
    norms = lambda net: {m.num_groups for m in net.modules() if isinstance(m, torch.nn.GroupNorm)}  # noqa: E731
    info = DataInfo((1, 16, 16, 16), 6)
    assert norms(build_unet3d(VoxelModelConfig(preset="tiny"), info)) == {24, 32}  # widths 24, 48, 96; at most 32
    assert norms(build_unet3d(VoxelModelConfig(preset="tiny", groups=8), info)) == {8}
    upright = VoxelDataConfig(source="shapes", per_class=2, max_tilt=0)
    ds, info = VoxelModality().build_dataset(upright)
    assert info.extra["max_tilt"] == 0.0
    assert "tilted at most 0 degrees" in VoxelModality().describe(upright)
    assert "tilted" not in VoxelModality().describe(VoxelDataConfig(source="shapes"))


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match="model.attention_levels"):
        VoxelModelConfig(preset="tiny", attention_levels=[5]).resolved()
    with pytest.raises(ValueError, match="data.path"):
        VoxelDataConfig(source="folder")
    with pytest.raises(C.ConfigError, match="data.representation"):
        C.resolve_config({"modality": "voxel", "data": {"representation": "pointcloud"}})
    with pytest.raises(C.ConfigError, match="data.max_tilt"):
        C.resolve_config({"modality": "voxel", "data": {"max_tilt": 270}})
    with pytest.raises(C.ConfigError, match="model.groups"):
        C.resolve_config({"modality": "voxel", "model": {"groups": 0}})


def test_flip_augmentation_mirrors_the_last_axis() -> None:
    ad = VoxelModality()
    x = torch.randn(300, 1, 4, 4, 4)
    y = ad.augment(x, VoxelDataConfig(random_flip=True), torch.Generator().manual_seed(0))
    flipped = (y != x).flatten(1).any(1)
    assert torch.equal(y[flipped], x[flipped].flip(-1)) and 100 < int(flipped.sum()) < 200
    assert torch.equal(ad.augment(x, VoxelDataConfig(), torch.Generator()), x)


def test_cube_symmetry_augmentation_draws_each_of_the_48_symmetries() -> None:
    from modalities.voxel.adapter import cube_symmetries

    ad = VoxelModality()
    x = torch.arange(27.0).reshape(1, 1, 3, 3, 3).expand(4800, 1, 3, 3, 3)  # every voxel distinct
    y = ad.augment(x, VoxelDataConfig(random_symmetry=True), torch.Generator().manual_seed(0))
    seen = {tuple(g.flatten().tolist()) for g in y}
    assert len(seen) == 48  # the cube's symmetry group, no other arrangement
    counts = torch.unique(y.flatten(1), dim=0, return_counts=True)[1]
    assert counts.min() > 50 and counts.max() < 150  # about 100 each
    # each is a symmetry: the centre stays, the corners go to corners, the multiset of values is kept
    assert bool((y[:, 0, 1, 1, 1] == 13).all()) and torch.equal(
        y.flatten(1).sort(1).values, x.flatten(1).sort(1).values
    )
    corners = {0, 2, 6, 8, 18, 20, 24, 26}
    assert all({int(v) for v in g[0, ::2, ::2, ::2].flatten()} == corners for g in y[:200])
    # a chosen symmetry: the second permutation (0, 2, 1) swaps H and W, and u < 0.5 mirrors D
    u = torch.tensor([[1.5 / 6, 0.2, 0.9, 0.9]])
    assert torch.equal(cube_symmetries(x[:1], u), x[:1].transpose(3, 4).flip(2))
    with pytest.raises(ValueError, match="cubic grids"):
        cube_symmetries(torch.zeros(1, 1, 2, 3, 3), torch.zeros(1, 4))


def test_augmentation_is_refused_with_captions_naming_the_key() -> None:
    for key in ("random_flip", "random_symmetry"):
        with pytest.raises(C.ConfigError, match=f"data.{key}: {key} moves and turns shapes"):
            C.resolve_config({"modality": "voxel", "data": {"captions": True, key: True}})


def test_save_samples_writes_meshes_that_load_back(tmp_path: Path) -> None:
    from modalities.voxel.data import shapes

    ds, info = shapes(16, per_class=1, representation="sdf", truncation=2.0)
    empty = -torch.ones(1, 1, 16, 16, 16)  # no surface: no mesh, but still in grids.npz
    x = torch.cat([ds.x, empty])
    labels = torch.cat([ds.labels, torch.tensor([0])])
    paths = VoxelModality().save_samples(x, tmp_path / "out", info, labels=labels, file_format="ply")
    meshes = sorted(p for p in paths if p.suffix == ".ply")
    assert [p.name for p in meshes] == [f"{i:03d}_{n}.ply" for i, n in enumerate(info.class_names)]
    for p in meshes:
        m = trimesh.load(p, force="mesh")
        assert len(m.faces) > 0 and m.is_watertight and m.volume > 0
        assert np.all(np.abs(m.bounds) <= 0.5 + 1e-6)
    saved = np.load(tmp_path / "out" / "grids.npz")
    assert saved["grids"].shape == (7, 1, 16, 16, 16) and saved["labels"].tolist() == labels.tolist()
    with Image.open(tmp_path / "out" / "preview.png") as im:
        assert im.format == "PNG" and min(im.size) >= 64


def _voxel_run(out: Path, **train: object) -> dict:
    return {
        "modality": "voxel",
        "out_dir": str(out),
        "data": {"source": "shapes", "resolution": 8, "per_class": 6, "representation": "sdf"},
        "model": {"preset": "tiny", "channels": 4, "channel_mult": [1, 2], "attention_levels": [1], "head_channels": 8},
        "diffusion": {"schedule": {"kind": "cosine_discrete", "num_steps": 100}, "parameterization": "v"},
        "train": {"steps": 3, "batch_size": 8, "log_every": 1, "checkpoint_every": 0, "progress": False, **train},
        "sample": {"steps": 2, "num_samples": 6},
    }


def test_trains_resumes_and_generates_meshes_from_the_example(tmp_path: Path) -> None:
    d = _voxel_run(tmp_path / "run")
    Trainer(C.resolve_config(d)).fit()
    d["train"]["steps"] = 5
    assert Trainer(C.resolve_config(d), resume=True).fit().step == 5
    assert find_checkpoint(tmp_path / "run").step == 5
    out = tmp_path / "gen"
    r = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "generate_meshes.py"), str(tmp_path / "run"), "-n", "3"]
        + ["--class", "torus", "--steps", "2", "--format", "stl", "--out", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr
    assert (out / "preview.png").is_file() and np.load(out / "grids.npz")["grids"].shape == (3, 1, 8, 8, 8)
    for p in out.glob("*.stl"):  # an untrained model may give no surface; any mesh written must load
        assert "torus" in p.name and len(trimesh.load(p, force="mesh").faces) > 0
    bad = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "generate_meshes.py"), str(tmp_path / "run"), "--class", "teapot"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "teapot" in bad.stderr and "torus" in bad.stderr
