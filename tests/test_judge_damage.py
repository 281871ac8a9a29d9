"""The damages of benchmarks/judge_damage.py do what they are named for, on hand-made spheres and
real shapes (no judge is trained: the loop runs with a stand-in classifier)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from benchmarks import judge_damage as J
from modalities.voxel.data import SHAPES, shapes
from modalities.voxel.io import grid_to_mesh
from modalities.voxel.judge import piece_counts

T = 2.0  # configs/voxel_shapes.yaml's truncation, voxels to +-1


def _sphere(radius: float, r: int = 16, centre: float = 7.5) -> torch.Tensor:
    """A ball of ``radius`` voxels at the cube's centre as the data store it, ``(1, 1, r, r, r)``."""
    t = torch.arange(r, dtype=torch.float32) - centre
    d = torch.stack(torch.meshgrid(t, t, t, indexing="ij"), -1).norm(dim=-1) - radius
    return (-d / T).clamp(-1, 1)[None, None]


def _real() -> tuple[torch.Tensor, torch.Tensor]:
    ds, _ = shapes(16, per_class=2, representation="sdf", truncation=T, seed=J.DATA_SEED)
    return ds.x, ds.labels


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _volume(x: torch.Tensor) -> torch.Tensor:
    return (x > 0).sum((1, 2, 3, 4))


CONDITIONS = [(name, kw) for name, (_, strengths) in J.DAMAGES.items() for kw in strengths]


@pytest.mark.parametrize("name,kwargs", CONDITIONS, ids=[f"{n}-{J.describe(k)}" for n, k in CONDITIONS])
def test_damage_changes_real_grids_within_range_and_is_deterministic(name: str, kwargs: dict) -> None:
    x, _ = _real()
    fn = J.DAMAGES[name][0]
    a, b = fn(x, _gen(5), **kwargs), fn(x, _gen(5), **kwargs)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert float(a.min()) >= -1 and float(a.max()) <= 1
    assert torch.equal(a, b), "the same generator must give the same damage"
    changed = (a != x).flatten(1).any(1)
    assert changed.all(), f"{name} left {int((~changed).sum())} grids of {len(x)} untouched"
    assert not torch.equal(a, fn(x, _gen(6), **kwargs)), "another seed should damage other places"
    assert torch.equal(x, _real()[0]), "the input must not be modified"


def test_noise_of_amplitude_zero_is_the_identity_and_its_scale_is_the_amplitude() -> None:
    x, _ = _real()
    assert torch.equal(J.surface_noise(x, _gen(), amplitude=0.0), x)
    flat = torch.zeros(4, 1, 16, 16, 16)
    n = J.surface_noise(flat, _gen(), amplitude=0.1)
    assert float(n.std()) == pytest.approx(0.1, rel=0.15)
    # smooth: neighbours correlate (exp(-1/4) = 0.78 for a blur of one voxel), white noise would not
    lag = torch.corrcoef(torch.stack([n[..., :-1].flatten(), n[..., 1:].flatten()]))[0, 1]
    assert float(lag) > 0.6


def test_fragments_add_separate_pieces_and_leave_the_shape_alone() -> None:
    x = _sphere(3.5)
    assert piece_counts(x).tolist() == [1]
    for count in (1, 2, 4):
        y = J.fragments(x, _gen(count), count=count)
        assert piece_counts(y).tolist() == [1 + count]
        inside = x > 0
        assert torch.equal(y[inside], x[inside])
        assert bool((y >= x).all())


def test_fragments_skip_a_grid_with_no_room() -> None:
    full = torch.ones(1, 1, 16, 16, 16)
    assert torch.equal(J.fragments(full, _gen(), count=2), full)


@pytest.mark.parametrize("width", [2.0, 4.0])
def test_cut_through_the_middle_of_a_sphere_makes_two_halves(width: float) -> None:
    x = _sphere(6.0)
    y = J.cut(x, _gen(1), width=width)
    assert piece_counts(y).tolist() == [2]
    parts = grid_to_mesh(y[0], largest_component=False).split(only_watertight=False)
    volumes = sorted(abs(p.volume) for p in parts)
    assert volumes[0] > 0.35 * sum(volumes), "a cut through the centre of mass should halve a sphere"
    assert bool((y <= x).all())


def test_dents_carve_near_the_surface_only() -> None:
    x = _sphere(7.0)
    t = torch.arange(16, dtype=torch.float32) - 7.5
    rho = torch.stack(torch.meshgrid(t, t, t, indexing="ij"), -1).norm(dim=-1)[None, None]
    for count, radius in ((2, 1.5), (6, 3.0)):
        y = J.dents(x, _gen(), count=count, radius=radius)
        assert bool((y <= x).all())
        assert int(_volume(y)) < int(_volume(x))
        # a dent's centre is within a voxel of the surface (7 - 1 from the middle at least) and its
        # carving reaches radius + truncation voxels from it, no further
        core = rho <= (7.0 - 1) - (radius + T)
        assert bool(core.any()) and torch.equal(y[core], x[core])


def test_lumps_add_volume_and_stay_one_piece() -> None:
    x = _sphere(5.0)
    prev = int(_volume(x))
    for count, radius in ((2, 1.5), (4, 2.0), (6, 3.0)):
        y = J.lumps(x, _gen(), count=count, radius=radius)
        assert bool((y >= x).all())
        assert int(_volume(y)) > prev
        assert piece_counts(y).tolist() == [1]


def test_holes_bore_a_long_straight_tunnel() -> None:
    x = _sphere(6.5)
    for seed in range(4):
        y = J.holes(x, _gen(seed), radius=1.5)
        assert bool((y <= x).all())
        carved = ((x > 0) & (y <= 0))[0, 0].nonzero().float()
        assert len(carved) > 0 and int(_volume(y)) < int(_volume(x))
        # the carved voxels lie along a line (within the radius and half a voxel's diagonal of it)
        # and run far along it: a tunnel, not a pit
        c = carved - carved.mean(0)
        axis = torch.linalg.eigh(c.T @ c).eigenvectors[:, -1]
        along = c @ axis
        off = (c - along[:, None] * axis).norm(dim=1)
        assert float(off.max()) <= 1.5 + 0.9 + 0.5
        assert float(along.max() - along.min()) >= 6


def test_with_truncation_reaches_the_damages_that_take_it() -> None:
    d = J.with_truncation(J.DAMAGES, 3.0)
    assert d["noise"][0] is J.surface_noise
    assert d["dents"][0].keywords == {"truncation": 3.0}
    x = _sphere(5.0, centre=7.0)
    wide = d["lumps"][0](x, _gen(), count=1, radius=2.0)
    narrow = J.lumps(x, _gen(), count=1, radius=2.0)
    assert not torch.equal(wide, narrow)


def test_the_loop_reports_every_condition(tmp_path: Path) -> None:
    """With a stand-in classifier (the truth for the real grids, 'torus' for every damaged one,
    told apart by the inside volume), the rows, the table and the CSV carry the figures."""
    ds, _ = shapes(16, per_class=1, representation="sdf", truncation=T, seed=J.DATA_SEED)
    x, labels = ds.x, ds.labels
    volumes = _volume(x)

    def classify(v: torch.Tensor) -> torch.Tensor:
        same = _volume(v) == volumes
        return torch.where(same, labels, SHAPES.index("torus"))

    rows = J.run(x, labels, classify, SHAPES, seed=J.DATA_SEED)
    assert len(rows) == 1 + sum(len(s) for _, s in J.DAMAGES.values())
    none = rows[0]
    assert none["damage"] == "none" and none["accuracy"] == 1.0 and none["mistake"] == "-"
    assert none["one_piece"] == 1.0 and none["mean_pieces"] == 1.0
    frag = next(r for r in rows if r["damage"] == "fragments" and r["level"] == 3)
    assert frag["one_piece"] == 0.0 and frag["mean_pieces"] == 5.0
    assert frag["accuracy"] == pytest.approx(1 / 6) and frag["per_kind"]["torus"] == 1.0
    assert frag["worst_accuracy"] == 0.0 and frag["mistake"].endswith("->torus (1)")
    assert none["topology"] == 1.0 and none["strict"] == 1.0  # one real shape per kind: all whole
    assert frag["topology"] == 0.0 and frag["strict"] == 0.0  # the torus judged right is in pieces
    text = J.table(rows, SHAPES)
    assert text.count("\n") == len(rows) + 1 and "| fragments | 4 x |" in text
    J.write_csv(rows, SHAPES, tmp_path / "out.csv")
    with open(tmp_path / "out.csv") as f:
        read = list(csv.DictReader(f))
    assert len(read) == len(rows) and float(read[0]["accuracy_torus"]) == 1.0
