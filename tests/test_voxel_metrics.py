"""Voxel shape metrics against closed forms: Chamfer distance, COV/MMD, 1-NN, surface sampling,
watertightness and grid statistics."""

from __future__ import annotations

import math

import pytest
import torch
import trimesh

from modalities.voxel.metrics import (
    chamfer_distance,
    chamfer_matrix,
    coverage_mmd,
    grid_features,
    one_nn_accuracy,
    surface_points,
    watertight_fraction,
)
from multidiff.metrics import frechet_distance_features


def _points(n: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.rand(n, 3, generator=torch.Generator().manual_seed(seed), dtype=dtype) - 0.5


def _brute_chamfer(a: torch.Tensor, b: torch.Tensor) -> float:
    d = (a.double()[:, None] - b.double()[None]).square().sum(-1)
    return float(d.amin(1).mean() + d.amin(0).mean())


# --- Chamfer distance -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chamfer_of_a_set_with_itself_is_zero(dtype: torch.dtype) -> None:
    a = _points(500, 0, dtype)
    assert chamfer_distance(a, a) == pytest.approx(0.0, abs=1e-6 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("d", [(0.3, 0.0, 0.0), (0.0, -0.05, 0.0), (0.0, 0.0, 1.7)])
def test_chamfer_of_a_translate_is_twice_the_squared_shift(d: tuple[float, float, float]) -> None:
    # Two clusters far apart, each flat in the plane orthogonal to the shift: every point's nearest
    # neighbour in the translate is its own image, so CD = |d|^2 + |d|^2 exactly.
    shift = torch.tensor(d, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    basis = torch.linalg.qr(torch.cat([shift[:, None], torch.randn(3, 2, generator=g, dtype=torch.float64)], 1))[0]
    flat = (torch.rand(40, 2, generator=g, dtype=torch.float64) - 0.5) * 0.01 @ basis[:, 1:].T
    a = torch.cat([flat + torch.tensor([-5.0, 2.0, 0.0]), flat + torch.tensor([5.0, -3.0, 4.0])])
    assert chamfer_distance(a, a + shift) == pytest.approx(2 * shift.square().sum().item(), rel=1e-9)


def test_chamfer_averages_over_points() -> None:
    # a = {0}, b = {0, e_x}: 0 for a's point; (0 + 1) / 2 for b's points. A summed convention would give 1.
    a = torch.zeros(1, 3)
    b = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    assert chamfer_distance(a, b) == pytest.approx(0.5, abs=1e-7)


def test_chamfer_is_symmetric_and_matches_brute_force_for_any_chunk() -> None:
    a, b = _points(300, 2), _points(170, 3)
    ref = _brute_chamfer(a, b)
    assert chamfer_distance(a, b) == pytest.approx(ref, rel=1e-10)
    assert chamfer_distance(b, a) == pytest.approx(ref, rel=1e-10)
    assert chamfer_distance(a, b, chunk=7) == pytest.approx(ref, rel=1e-10)
    assert chamfer_distance(a.float(), b.float()) == pytest.approx(ref, rel=1e-4)


def test_chamfer_of_an_empty_set_is_inf_and_shapes_are_checked() -> None:
    a = _points(10, 0)
    assert chamfer_distance(a, torch.empty(0, 3)) == math.inf
    assert chamfer_distance(torch.empty(0, 3), a) == math.inf
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        chamfer_distance(a[:, :2], a)


def test_chamfer_matrix_is_the_pairwise_distance() -> None:
    A = [_points(n, s) for s, n in enumerate([30, 50, 40])]
    B = [_points(n, 10 + s) for s, n in enumerate([20, 60])] + [torch.empty(0, 3)]
    m = chamfer_matrix(A, B)
    assert m.shape == (3, 3) and m.dtype == torch.float64
    for i, a in enumerate(A):
        for j, b in enumerate(B):
            assert m[i, j].item() == pytest.approx(chamfer_distance(a, b), rel=1e-12)
    assert torch.isinf(m[:, 2]).all()
    # Against itself: only the upper triangle is computed, the rest mirrored; the diagonal is 0.
    self_m = chamfer_matrix(A)
    assert torch.equal(self_m, self_m.T) and (self_m.diagonal() == 0).all()
    assert torch.allclose(self_m, chamfer_matrix(A, A), atol=1e-12)
    assert chamfer_matrix([torch.empty(0, 3)])[0, 0] == math.inf


# --- COV, MMD, 1-NN -------------------------------------------------------------------------


def test_coverage_mmd_of_the_reference_itself() -> None:
    ref = [_points(64, s) for s in range(5)]
    cov, mmd = coverage_mmd(ref, ref)
    assert cov == 1.0 and mmd == pytest.approx(0.0, abs=1e-12)


def test_coverage_mmd_of_a_collapsed_set() -> None:
    ref = [_points(64, s) for s in range(4)]
    cov, mmd = coverage_mmd([ref[2]] * 3, ref)
    assert cov == 1 / 4
    assert mmd == pytest.approx(sum(chamfer_distance(r, ref[2]) for r in ref) / 4, rel=1e-12)


def test_coverage_mmd_from_a_hand_matrix() -> None:
    # Both generated shapes are nearest to reference 0; the column minima are 0.1, 0.3, 0.8.
    d = torch.tensor([[0.1, 0.5, 0.9], [0.2, 0.3, 0.8]])
    gen, ref = [torch.zeros(1, 3)] * 2, [torch.zeros(1, 3)] * 3
    cov, mmd = coverage_mmd(gen, ref, distances=d)
    assert cov == pytest.approx(1 / 3) and mmd == pytest.approx(0.4)
    # An empty generated shape (a row of inf) covers nothing.
    cov, _ = coverage_mmd(gen, ref, distances=torch.tensor([[math.inf] * 3, [0.2, 0.3, 0.8]]))
    assert cov == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="distances must be"):
        coverage_mmd(gen, ref, distances=d.T)
    with pytest.raises(ValueError, match="non-empty"):
        coverage_mmd([], ref)


def test_one_nn_accuracy_extremes() -> None:
    ref = [_points(48, s) for s in range(4)]
    far = [p + 3.0 for p in ref]
    assert one_nn_accuracy(far, ref) == 1.0  # each set's nearest others are in the same set
    assert one_nn_accuracy(ref, ref) == 0.0  # each shape's nearest other is its copy in the other set


# --- surfaces and meshes --------------------------------------------------------------------


def test_surface_points_of_a_unit_sphere() -> None:
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
    p = surface_points(sphere, 4096, seed=0)
    assert p.shape == (4096, 3) and p.dtype == torch.float32
    r = p.norm(dim=1)
    assert r.max() <= 1 + 1e-5 and r.min() > 0.99  # on flat faces inscribed in the sphere
    assert p.mean(0).abs().max() < 0.05  # the mean has standard error 1/sqrt(3 * 4096) = 0.009 per axis
    assert torch.equal(p, surface_points(sphere, 4096, seed=0))
    assert not torch.equal(p, surface_points(sphere, 4096, seed=1))


def test_surface_points_are_uniform_by_area() -> None:
    # A 1 x 1 x 0.1 slab: top and bottom have 2 / (2 + 4 * 0.1) = 5/6 of the area.
    p = surface_points(trimesh.creation.box(extents=(1.0, 1.0, 0.1)), 6000, seed=0)
    on_caps = (p[:, 2].abs() > 0.05 - 1e-6).double().mean().item()
    assert on_caps == pytest.approx(5 / 6, abs=0.02)  # binomial standard error 0.005


def test_surface_points_of_an_empty_mesh() -> None:
    assert surface_points(trimesh.Trimesh()).shape == (0, 3)


def test_watertight_fraction() -> None:
    box = trimesh.creation.box()
    open_box = box.copy()
    open_box.update_faces(torch.arange(1, len(box.faces)).numpy())
    assert watertight_fraction([box]) == 1.0
    assert watertight_fraction([open_box]) == 0.0
    assert watertight_fraction([box, open_box, trimesh.Trimesh(), box]) == 0.5
    with pytest.raises(ValueError):
        watertight_fraction([])


# --- grid statistics ------------------------------------------------------------------------

R = 32


def _coords() -> torch.Tensor:
    axis = (torch.arange(R, dtype=torch.float64) + 0.5) / R - 0.5
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"))  # (3, R, R, R)


def _ball(center: tuple[float, float, float], radius: float) -> torch.Tensor:
    d = (_coords() - torch.tensor(center, dtype=torch.float64)[:, None, None, None]).norm(dim=0)
    return (8 * (radius - d)).clamp(-1, 1)[None].float()


def _box(center: tuple[float, float, float], half: tuple[float, float, float]) -> torch.Tensor:
    c = torch.tensor(center, dtype=torch.float64)[:, None, None, None]
    h = torch.tensor(half, dtype=torch.float64)[:, None, None, None]
    return (8 * (h - (_coords() - c).abs()).amin(0)).clamp(-1, 1)[None].float()


def test_grid_features_of_a_box_in_closed_form() -> None:
    h = 1 / R
    half = (2 * h, 6 * h, 12 * h)  # on voxel boundaries: the voxelization is exact
    f = grid_features(_box((0.0, 0.0, 0.0), half)[None])
    a = torch.tensor(half, dtype=torch.float64)
    assert f.shape == (1, 15)
    assert f[0, 0].item() == pytest.approx(8 * a.prod().item(), rel=1e-12)  # volume
    # The centres of 2k voxels of width h have variance (a^2 - h^2/4) / 3 along an axis of half-extent a = k h.
    assert torch.allclose(f[0, 1:4], ((a.square() - h**2 / 4) / 3).sqrt(), rtol=1e-9)
    area = 8 * (a[0] * a[1] + a[1] * a[2] + a[2] * a[0]).item()
    assert f[0, 4].item() == pytest.approx(area / 6, rel=1e-12)
    assert f[0, 5].item() == pytest.approx(36 * math.pi * (8 * a.prod().item()) ** 2 / area**3, rel=1e-9)
    assert f[0, 6].item() == pytest.approx(0.0, abs=1e-12)  # centred
    assert f[0, 7:].sum().item() == pytest.approx(1.0)


def test_grid_features_of_a_ball() -> None:
    r = 0.3
    f = grid_features(_ball((0.0, 0.0, 0.0), r)[None])[0]
    assert f[0].item() == pytest.approx(4 / 3 * math.pi * r**3, rel=0.03)
    assert torch.allclose(f[1:4], torch.full((3,), r / math.sqrt(5), dtype=torch.float64), rtol=0.02)
    # Face counts overestimate a sphere's area by 3/2, so the quotient is about (2/3)^3.
    assert f[5].item() == pytest.approx((2 / 3) ** 3, rel=0.1)


def test_grid_features_are_invariant_to_quarter_turns() -> None:
    # An asymmetric shape (an off-centre ball and a slab), so every turn changes the grid.
    g = torch.maximum(_ball((0.1, -0.05, 0.15), 0.2), _box((-0.1, 0.1, -0.2), (0.25, 0.05, 0.1)))
    turned = [
        g,
        g.rot90(1, (1, 2)),
        g.rot90(1, (2, 3)),
        g.rot90(2, (1, 3)),
        g.rot90(1, (1, 2)).rot90(3, (2, 3)),
        g.flip(1),
    ]
    assert not torch.equal(turned[0], turned[1])
    f = grid_features(torch.stack(turned), batch_size=4)
    assert torch.allclose(f, f[:1].expand_as(f), rtol=1e-9, atol=1e-12)


def test_grid_features_tell_a_ball_from_a_thin_box() -> None:
    ball = _ball((0.0, 0.0, 0.0), 0.3)
    slab = _box((0.0, 0.0, 0.0), (0.35, 0.35, 0.05))
    f = grid_features(torch.stack([ball, slab]))
    radii = f[:, 1:4]
    assert radii[0, 0] / radii[0, 2] > 0.99 and radii[1, 0] / radii[1, 2] < 0.2
    # Less compact: 0.14 against 1 in the continuum; face counts lower the ball's to ~0.30, the slab's is ~0.18.
    assert f[1, 5] < 0.7 * f[0, 5]
    # Fréchet distance of feature sets: small within jittered copies of one shape, large across shapes.
    gen = torch.Generator().manual_seed(0)
    balls = [_ball(tuple((torch.rand(3, generator=gen) * 0.1 - 0.05).tolist()), 0.3) for _ in range(6)]
    slabs = [_box(tuple((torch.rand(3, generator=gen) * 0.1 - 0.05).tolist()), (0.35, 0.35, 0.05)) for _ in range(6)]
    fb, fs = grid_features(torch.stack(balls)), grid_features(torch.stack(slabs))
    assert frechet_distance_features(fb, fs) > 10 * frechet_distance_features(fb[:3], fb[3:])


def test_grid_features_of_an_empty_grid_and_bad_shapes() -> None:
    f = grid_features(-torch.ones(2, 1, 8, 8, 8), bins=4)
    assert f.shape == (2, 11) and (f == 0).all()
    assert grid_features(torch.empty(0, 1, 8, 8, 8)).shape == (0, 15)
    with pytest.raises(ValueError, match=r"\(N, 1, R, R, R\)"):
        grid_features(torch.zeros(2, 8, 8, 8))


def test_random_cube_symmetry_permutes_and_flips_axes_only() -> None:
    from modalities.voxel.metrics import random_cube_symmetry

    torch.manual_seed(0)
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(1, 2, 3, 4, 5)
    seen = set()
    for _ in range(200):
        y = random_cube_symmetry(x)
        assert sorted(y.shape[2:]) == [3, 4, 5] and y.shape[:2] == (1, 2)
        assert torch.equal(y.flatten().sort().values, x.flatten())  # the same values, rearranged
        assert torch.equal(y[:, 1] - y[:, 0], torch.full_like(y[:, 0], 60.0))  # channels untouched
        seen.add((tuple(y.shape), float(y[0, 0].flatten()[0])))
    assert len(seen) >= 24  # many distinct symmetries drawn (48 exist)
