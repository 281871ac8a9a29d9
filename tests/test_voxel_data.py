"""Voxel data and I/O: the built-in primitives against their analytic geometry, voxelizing real mesh
files and marching cubes back, every mesh format in and out, folders and their cache, every bad
input failing with the file's name, and the preview picture."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from modalities.voxel import data as D
from modalities.voxel import io as vio
from modalities.voxel.io import (
    export_mesh,
    grid_to_mesh,
    load_mesh,
    normalize_to_unit_cube,
    occupancy_to_sdf,
    read_grid,
    save_voxel_preview,
    voxelize,
    voxelize_file,
)


def voxel_centres(r: int) -> torch.Tensor:
    t = (torch.arange(r, dtype=torch.float64) + 0.5) / r - 0.5
    return torch.stack(torch.meshgrid(t, t, t, indexing="ij"), -1)


def outer_layer(x: torch.Tensor) -> torch.Tensor:
    """Values of the outermost voxels of grids ``(..., R, R, R)``, flattened."""
    return torch.cat([x[..., [0, -1], :, :].flatten(), x[..., [0, -1], :].flatten(), x[..., [0, -1]].flatten()])


# Axis-aligned primitives with their closed-form volumes and a trimesh model of the same solid
# (revolved solids around y, as primitive_sdf's canonical frame; trimesh builds them around z).
_TO_Y = trimesh.transformations.rotation_matrix(-math.pi / 2, [1, 0, 0])  # z -> y
PRIMITIVES = {
    "sphere": ({"radius": 0.35}, 4 / 3 * math.pi * 0.35**3, lambda: trimesh.creation.icosphere(5, radius=0.35)),
    "box": (
        {"half_extents": torch.tensor([0.4, 0.25, 0.15])},
        0.8 * 0.5 * 0.3,
        lambda: trimesh.creation.box((0.8, 0.5, 0.3)),
    ),
    "torus": (
        {"major_radius": 0.3, "minor_radius": 0.1},
        2 * math.pi**2 * 0.3 * 0.1**2,
        lambda: trimesh.creation.torus(0.3, 0.1, 128, 64, transform=_TO_Y),
    ),
    "cylinder": (
        {"radius": 0.3, "height": 0.5},
        math.pi * 0.3**2 * 0.5,
        lambda: trimesh.creation.cylinder(0.3, 0.5, sections=256, transform=_TO_Y),
    ),
    "cone": (
        {"radius": 0.35, "height": 0.6},
        math.pi * 0.35**2 * 0.6 / 3,
        lambda: trimesh.creation.cone(0.35, 0.6, sections=256).apply_translation([0, 0, -0.3]).apply_transform(_TO_Y),
    ),
    "capsule": (
        {"radius": 0.15, "height": 0.8},
        math.pi * 0.15**2 * 0.5 + 4 / 3 * math.pi * 0.15**3,
        lambda: trimesh.creation.capsule(0.5, 0.15, transform=_TO_Y),
    ),
}


# ---------------------------------------------------------------- primitives


@pytest.mark.parametrize("kind", D.SHAPES)
def test_primitive_voxel_volume_matches_the_closed_form(kind: str) -> None:
    params, volume, _ = PRIMITIVES[kind]
    inside = D.primitive_sdf(kind, voxel_centres(32).float(), **params) < 0
    # Counting voxel centres is off by up to a voxel per axis: 5.8% for this box, under 3% for the others.
    assert float(inside.sum()) / 32**3 == pytest.approx(volume, rel=0.1)


@pytest.mark.parametrize("kind", D.SHAPES)
def test_primitive_sdf_is_the_distance_to_the_surface(kind: str) -> None:
    """|sdf| equals the distance to a dense sampling of a trimesh model of the same solid, and the
    sign says inside: two ways of computing one distance."""
    params, _, make = PRIMITIVES[kind]
    mesh = make()
    surface = torch.from_numpy(mesh.sample(60000, seed=0)).float()
    g = torch.Generator().manual_seed(1)
    queries = torch.rand(400, 3, generator=g) - 0.5
    d = D.primitive_sdf(kind, queries, **params)
    nearest = torch.cdist(queries, surface).amin(1)
    # sampling spacing of ~0.005 and the tessellation of curved models bound the difference
    assert (d.abs() - nearest).abs().max() < 0.012
    assert (D.primitive_sdf(kind, surface, **params).abs() < 0.006).all()  # the surface is the zero set
    inside = torch.tensor([[0.3 if kind == "torus" else 0.0, 0.0, 0.0]])  # the torus's tube, the others' centre
    assert D.primitive_sdf(kind, inside, **params).item() < 0


def test_primitive_sdf_validates_its_arguments() -> None:
    with pytest.raises(ValueError, match="unknown primitive 'pyramid'.*sphere"):
        D.primitive_sdf("pyramid", torch.zeros(1, 3))
    with pytest.raises(ValueError, match="'torus' takes major_radius, minor_radius; missing minor_radius"):
        D.primitive_sdf("torus", torch.zeros(1, 3), major_radius=0.3)
    with pytest.raises(ValueError, match="unexpected size"):
        D.primitive_sdf("sphere", torch.zeros(1, 3), radius=0.3, size=2)


# ---------------------------------------------------------------- shapes()


def test_shapes_layout_labels_and_determinism() -> None:
    ds, info = D.shapes(16, per_class=4)
    assert ds.x.shape == (24, 1, 16, 16, 16) and ds.x.dtype == torch.float32
    assert torch.equal(ds.labels, torch.arange(24) % 6) and ds.labels.dtype == torch.long
    assert info.shape == (1, 16, 16, 16) and info.num_classes == 6 and info.class_names == D.SHAPES
    assert info.extra == {
        "resolution": 16,
        "representation": "occupancy",
        "truncation": 3.0,
        "source": "shapes",
        "max_tilt": 180.0,
    }
    assert set(ds.x.unique().tolist()) == {-1.0, 1.0}
    filled = (ds.x > 0).flatten(1).float().mean(1)
    assert filled.min() > 0.02 and filled.max() < 0.5  # every example holds a shape of a visible size
    again, _ = D.shapes(16, per_class=4)
    other, _ = D.shapes(16, per_class=4, seed=1)
    assert torch.equal(ds.x, again.x) and not torch.equal(ds.x, other.x)
    # The first examples do not depend on how many there are.
    more, _ = D.shapes(16, per_class=5)
    assert torch.equal(more.x[:6], ds.x[:6])


def test_shapes_sdf_agrees_in_sign_with_occupancy() -> None:
    occ, _ = D.shapes(16, per_class=3, seed=3)
    sdf, info = D.shapes(16, per_class=3, seed=3, representation="sdf", truncation=2.0)
    assert info.extra["representation"] == "sdf" and info.extra["truncation"] == 2.0
    assert sdf.x.min() >= -1 and sdf.x.max() <= 1
    assert torch.equal(occ.x, torch.where(sdf.x > 0, 1.0, -1.0))
    assert (sdf.x == -1).any() and (sdf.x.abs() < 1).any()  # truncated far out, graded near the surface
    # Away from the surface (more than half a voxel) the two agree in sign by construction.
    away = sdf.x.abs() > 0.5 / 2.0
    assert torch.equal(occ.x[away].sign(), sdf.x[away].sign())
    # The SDF is 1-Lipschitz in voxels: neighbours differ by at most 1 voxel / truncation.
    assert (sdf.x.diff(dim=-1).abs() <= 1 / 2.0 + 1e-5).all()


@pytest.mark.parametrize("r", [8, 16, 32])
def test_shapes_keep_a_one_voxel_margin(r: int) -> None:
    ds, _ = D.shapes(r, per_class=2 if r == 32 else 10, representation="sdf")
    # The outer layer is outside, by at least half a voxel (its centres are half a voxel from the faces).
    assert outer_layer(ds.x).max() <= -0.5 / 3 + 1e-5
    for i in range(6):  # so marching cubes closes every surface
        mesh = grid_to_mesh(ds.x[i])
        assert mesh.is_watertight and mesh.volume > 0
        assert mesh.bounds.min() >= -0.5 + 0.5 / r and mesh.bounds.max() <= 0.5 - 0.5 / r


@pytest.mark.parametrize("max_tilt", [0.0, 30.0, 90.0, 180.0])
def test_rotations_tilt_the_shape_axis_at_most_max_tilt(max_tilt: float) -> None:
    u = torch.rand(4000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rot = D._rotations(u, max_tilt)
    eye = torch.eye(3, dtype=torch.float64).expand(len(u), 3, 3)
    assert torch.allclose(rot @ rot.transpose(1, 2), eye, atol=1e-9)  # orthonormal
    assert torch.allclose(torch.linalg.det(rot), torch.ones(len(u), dtype=torch.float64))  # no mirror
    up = rot[:, :, 1]  # where the shape's own y axis points in the world
    tilt = torch.rad2deg(torch.arccos(up[:, 1].clamp(-1, 1)))
    assert tilt.max() <= max_tilt + 1e-4
    assert tilt.max() >= max_tilt - 3  # the whole cap is reached
    # The axis is uniform on its cap: cos(tilt) uniform on [cos(max_tilt), 1], so its mean is halfway.
    lo = math.cos(math.radians(max_tilt))
    assert abs(up[:, 1].mean().item() - (1 + lo) / 2) < 0.03
    # ... and every turn about the vertical is as likely (the horizontal part has mean zero).
    if max_tilt > 0:
        assert up[:, [0, 2]].mean(0).abs().max() < 0.03 * math.sin(math.radians(min(max_tilt, 90)))


def test_upright_shapes_stand_up() -> None:
    flat, _ = D.shapes(16, per_class=6, max_tilt=0.0)
    any_way, _ = D.shapes(16, per_class=6)
    tori = slice(2, None, 6)  # class 2: a torus lies flat when upright, its ring around the vertical

    def extent(x: torch.Tensor, dim: int) -> torch.Tensor:  # occupied layers along a grid axis
        others = [d for d in (2, 3, 4) if d != dim]
        return (x > 0).any(others[0], keepdim=True).any(others[1], keepdim=True).flatten(1).sum(1).float()

    height = extent(flat.x[tori], 3)  # grid axis 1 of (D, H, W) is y, the up axis
    width = torch.maximum(extent(flat.x[tori], 2), extent(flat.x[tori], 4))
    assert (height < 0.6 * width).all()
    tilted = extent(any_way.x[tori], 3) / torch.maximum(extent(any_way.x[tori], 2), extent(any_way.x[tori], 4))
    assert (tilted >= 0.6).any()  # any orientation: some tori stand on edge


def test_same_seed_same_shapes_at_every_resolution() -> None:
    a, _ = D.shapes(16, per_class=1)
    b, _ = D.shapes(32, per_class=1)
    va, vb = (a.x > 0).flatten(1).float().mean(1), (b.x > 0).flatten(1).float().mean(1)
    assert torch.allclose(va, vb, rtol=0.25)


@pytest.mark.parametrize(
    "kwargs,bad",
    [
        ({"resolution": 4}, "4"),
        ({"resolution": 16.0}, "16.0"),
        ({"per_class": 0}, "0"),
        ({"representation": "mesh"}, "'mesh'"),
        ({"truncation": 0.0}, "0.0"),
        ({"truncation": float("nan")}, "nan"),
        ({"max_tilt": -1.0}, "-1.0"),
        ({"max_tilt": 200.0}, "200.0"),
    ],
)
def test_shapes_validate_their_arguments(kwargs: dict, bad: str) -> None:
    with pytest.raises(ValueError) as e:
        D.shapes(**kwargs)
    assert bad in str(e.value)


# ---------------------------------------------------------------- voxelize and marching cubes


@pytest.mark.parametrize("kind", ["box", "sphere"])
def test_voxelize_then_marching_cubes_keeps_the_volume(kind: str) -> None:
    mesh = trimesh.creation.box((0.8, 0.6, 0.4)) if kind == "box" else trimesh.creation.icosphere(4, radius=0.4)
    for rep in ("occupancy", "sdf"):
        grid = voxelize(mesh, 32, rep)
        assert grid.shape == (1, 32, 32, 32) and grid.dtype == torch.float32
        assert grid.min() >= -1 and grid.max() <= 1
        back = grid_to_mesh(grid)
        assert back.is_watertight and back.volume > 0
        assert back.volume == pytest.approx(mesh.volume, rel=0.04)  # measured: within 1.7%
        assert np.all(back.bounds >= -0.5) and np.all(back.bounds <= 0.5)
        assert np.allclose(back.bounds, mesh.bounds, atol=1.5 / 32)


def test_voxelize_agrees_with_the_analytic_sdf() -> None:
    """A fine mesh of a sphere voxelized, against the exact SDF of the sphere: two ways to one grid."""
    centres = voxel_centres(32).float()
    d = D.primitive_sdf("sphere", centres, radius=0.4) * 32
    exact = (-d / 3).clamp(-1, 1)
    mesh = trimesh.creation.icosphere(5, radius=0.4)
    occ = voxelize(mesh, 32)[0]
    assert torch.equal(occ > 0, d < 0)
    sdf = voxelize(mesh, 32, "sdf")[0]
    band = exact.abs() < 1
    assert (sdf - exact)[band].abs().max() * 3 < 0.35  # voxels; measured 0.18
    # The coarser occupancy_to_sdf: within about half a voxel, and the same sign as the occupancy.
    coarse = occupancy_to_sdf(torch.where(d < 0, 1.0, -1.0))
    assert (coarse - exact)[band].abs().max() * 3 < 0.6
    assert torch.equal(coarse > 0, d < 0)


def test_voxelize_needs_a_normalized_mesh_and_fills_open_seams() -> None:
    with pytest.raises(ValueError, match="normalize_to_unit_cube"):
        voxelize(trimesh.creation.box((2, 2, 2)), 16)
    box = trimesh.creation.box((0.7, 0.7, 0.7))
    # The same box with its faces torn apart (unshared vertices, one face slightly shifted): not
    # watertight, but it still encloses its inside.
    corners = box.triangles.reshape(-1, 3).copy()
    corners[:3] += 0.003
    torn = trimesh.Trimesh(corners, np.arange(36).reshape(12, 3), process=False)
    assert not torn.is_watertight
    assert torch.equal(voxelize(torn, 16), voxelize(box, 16))


def test_normalize_to_unit_cube() -> None:
    mesh = trimesh.creation.box((4.0, 2.0, 1.0)).apply_translation([10, -3, 7])
    out = normalize_to_unit_cube(mesh, margin=1 / 16)
    assert np.allclose(out.bounds, [[-0.4375, -0.21875, -0.109375], [0.4375, 0.21875, 0.109375]])
    assert np.allclose(mesh.bounds[0], [8, -4, 6.5])  # the input is untouched


def test_huge_mesh_below_the_limit_voxelizes(tmp_path: Path) -> None:
    big = trimesh.creation.icosphere(7, radius=0.45)  # 327,680 faces
    assert len(big.faces) >= 300_000
    path = export_mesh(big, tmp_path / "big.ply")
    grid = voxelize_file(path, 32, max_faces=400_000)  # ~1 s: samples in fixed-size chunks
    scaled = big.volume * ((1 - 2 / 32) / np.ptp(big.bounds, axis=0).max()) ** 3  # normalized, 1-voxel margin
    assert (grid > 0).float().mean().item() == pytest.approx(scaled, rel=0.03)
    with pytest.raises(ValueError, match=r"big\.ply' has 327,680 faces, more than the limit of 300,000.*decimate"):
        load_mesh(path, max_faces=300_000)  # refused from the PLY header, before parsing


def test_grid_to_mesh_details() -> None:
    assert len(grid_to_mesh(torch.full((1, 8, 8, 8), -1.0)).faces) == 0  # nothing inside: empty, no error
    x = torch.full((16, 16, 16), -1.0)
    x[2:9, 2:9, 2:9] = 1.0  # a big cube
    x[12:14, 12:14, 12:14] = 1.0  # a small one
    both = grid_to_mesh(x, largest_component=False)
    one = grid_to_mesh(x)
    assert len(both.split(only_watertight=False)) == 2 and len(one.split(only_watertight=False)) == 1
    assert one.volume == pytest.approx((7 / 16) ** 3, rel=0.1) and one.volume > 0
    smooth = grid_to_mesh(x[None], smooth=10)
    assert smooth.is_watertight and len(smooth.faces) == len(one.faces)
    # The surface sits where the values cross `level`.
    full = torch.ones(8, 8, 8)
    assert grid_to_mesh(full).is_watertight  # a grid full to the border is closed by the padding
    with pytest.raises(ValueError, match="got shape"):
        grid_to_mesh(torch.zeros(2, 8, 8, 8))


@pytest.mark.parametrize("fmt", ["obj", "ply", "stl", "glb"])
def test_export_and_reload(tmp_path: Path, fmt: str) -> None:
    ds, _ = D.shapes(16, per_class=1, representation="sdf")
    mesh = grid_to_mesh(ds.x[2])  # a torus
    path = export_mesh(mesh, tmp_path / "out" / f"torus.{fmt}")
    assert path.is_file() and path.parent.name == "out"
    back = load_mesh(path)
    assert len(back.faces) == len(mesh.faces) and len(back.vertices) == len(mesh.vertices)
    assert back.volume == pytest.approx(mesh.volume, rel=1e-4)
    same = export_mesh(mesh, tmp_path / "named.bin", file_format=fmt.upper())
    assert len(trimesh.load(same, file_type=fmt, force="mesh").faces) == len(mesh.faces)


def test_export_refuses_unknown_formats(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'fbx' is not one of obj, ply, stl, glb"):
        export_mesh(trimesh.creation.box(), tmp_path / "a.fbx")


# ---------------------------------------------------------------- bad mesh files


def empty_glb() -> bytes:
    """A valid GLB 2.0 file whose only scene has no nodes (trimesh refuses to write one)."""
    body = json.dumps({"asset": {"version": "2.0"}, "scenes": [{"nodes": []}], "scene": 0}).encode()
    body += b" " * (-len(body) % 4)
    return struct.pack("<4sII", b"glTF", 2, 20 + len(body)) + struct.pack("<I4s", len(body), b"JSON") + body


NOISE = np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes()


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("noise.ply", NOISE, r"cannot read mesh '.*noise\.ply'"),
        ("noise.glb", NOISE, r"cannot read mesh '.*noise\.glb'"),
        ("noise.off", NOISE, r"cannot read mesh '.*noise\.off'"),
        ("noise.stl", NOISE, r"'.*noise\.stl' holds no mesh geometry"),
        ("cut.ply", b"ply\nformat ascii 1.0\nelement vertex 3\n", r"'.*cut\.ply'"),
        ("zero.obj", b"", r"'.*zero\.obj' is empty \(0 bytes\)"),
        ("comments.obj", b"# exported by nothing\n# no geometry\n", r"'.*comments\.obj' holds no mesh geometry"),
        ("scene.glb", empty_glb(), r"'.*scene\.glb' holds no mesh geometry"),
        ("triangle.obj", b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n", r"'.*triangle\.obj' is flat"),
        ("quad.obj", b"v 0 0 0\nv 1 0 1\nv 0 1 0\nv 1 1 1\nf 1 2 4 3\n", r"'.*quad\.obj' is flat"),
        (
            "points.ply",
            b"ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
            b"end_header\n0 0 0\n1 0 0\n0 1 0\n",
            r"'.*points\.ply' holds a PointCloud with 3 points and no faces",
        ),
    ],
)
def test_bad_mesh_files_name_the_file(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        load_mesh(p)


def test_missing_file_open_surface_and_face_limit(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'.*absent\.stl' does not exist"):
        load_mesh(tmp_path / "absent.stl")
    # Two triangles at an angle: not flat, but they enclose nothing.
    bent = tmp_path / "bent.obj"
    bent.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 1 2 3\nf 1 2 4\n")
    with pytest.raises(ValueError, match=r"'.*bent\.obj' encloses no voxel at 16\^3: it is an open surface"):
        voxelize_file(bent, 16)
    sphere = trimesh.creation.icosphere(3)  # 1280 faces
    for fmt in ("glb", "obj", "stl", "off"):  # after loading (GLB), or from the file before parsing
        p = tmp_path / f"s.{fmt}"
        sphere.export(p)
        with pytest.raises(ValueError, match=rf"'.*s\.{fmt}' has (at least )?1,280 faces.*limit of 1,000.*max_faces"):
            load_mesh(p, max_faces=1000)
        assert len(load_mesh(p, max_faces=1280).faces) == 1280


def test_a_scene_is_flattened_with_its_transforms(tmp_path: Path) -> None:
    scene = trimesh.Scene()
    scene.add_geometry(trimesh.creation.box((1, 1, 1)), transform=trimesh.transformations.translation_matrix([3, 0, 0]))
    scene.add_geometry(trimesh.creation.icosphere(2), transform=trimesh.transformations.translation_matrix([-3, 0, 0]))
    scene.export(tmp_path / "two.glb")
    mesh = load_mesh(tmp_path / "two.glb")
    assert len(mesh.faces) == 12 + 320
    assert np.allclose(mesh.bounds[:, 0], [-4, 3.5], atol=1e-6)


# ---------------------------------------------------------------- folders


def write_meshes(folder: Path) -> list[Path]:
    """Boxes and balls in five formats, in two class folders."""
    box, ball = trimesh.creation.box((1.0, 0.7, 0.5)), trimesh.creation.icosphere(3)
    plan = {"boxes": [("a.obj", box), ("b.stl", box), ("c.glb", box)], "balls": [("a.ply", ball), ("b.off", ball)]}
    paths = []
    for cls, items in plan.items():
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for name, mesh in items:
            mesh.export(folder / cls / name)
            paths.append(folder / cls / name)
    return paths


def test_mesh_folder_labels_and_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_meshes(tmp_path / "d")
    (tmp_path / "d" / "balls" / "notes.txt").write_text("not a mesh")
    calls = []
    real = vio.voxelize
    monkeypatch.setattr(vio, "voxelize", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setenv("MULTIDIFF_CACHE", str(tmp_path / "home_cache"))
    before = sorted(p.relative_to(tmp_path / "d") for p in (tmp_path / "d").rglob("*"))
    ds, info = D.mesh_folder(tmp_path / "d", 16)
    assert len(calls) == 5
    assert sorted(p.relative_to(tmp_path / "d") for p in (tmp_path / "d").rglob("*")) == before  # only read
    assert info.class_names == ("balls", "boxes") and info.num_classes == 2 and info.shape == (1, 16, 16, 16)
    assert info.extra["source"] == "folder" and info.extra["resolution"] == 16
    assert info.extra["representation"] == "occupancy" and info.extra["truncation"] == 3.0
    assert ds.labels.tolist() == [0, 0, 1, 1, 1] and ds.x.shape == (5, 1, 16, 16, 16)
    assert torch.equal(ds.x[0], ds.x[1]) and torch.equal(ds.x[2], ds.x[3]) and torch.equal(ds.x[3], ds.x[4])
    assert outer_layer(ds.x).max() == -1  # the one-voxel margin
    cache = tmp_path / "home_cache" / "voxels"
    assert len(list(cache.glob("*.npz"))) == 5  # one per file content
    # A second run reads every grid from the cache.
    again, info2 = D.mesh_folder(tmp_path / "d", 16)
    assert len(calls) == 5 and torch.equal(again.x, ds.x) and info2 == info
    # Another representation, or an edited file, is voxelized again; limit keeps the first files.
    sdf, _ = D.mesh_folder(tmp_path / "d", 16, representation="sdf", limit=2)
    assert len(calls) == 7 and len(sdf) == 2 and torch.equal(sdf.x > 0, ds.x[:2] > 0)
    trimesh.creation.icosphere(1).export(tmp_path / "d" / "balls" / "a.ply")
    D.mesh_folder(tmp_path / "d", 16)
    assert len(calls) == 8
    # An explicit cache folder, and a corrupt cache file is voxelized again.
    D.mesh_folder(tmp_path / "d", 16, cache_dir=tmp_path / "c", limit=1)
    (entry,) = (tmp_path / "c").glob("*.npz")
    entry.write_bytes(b"garbage")
    D.mesh_folder(tmp_path / "d", 16, cache_dir=tmp_path / "c", limit=1)
    assert len(calls) == 10


def test_unlabelled_folder(tmp_path: Path) -> None:
    trimesh.creation.box((1, 1, 1)).export(tmp_path / "cube.stl")
    ds, info = D.mesh_folder(tmp_path, 16, representation="sdf")
    assert info.num_classes == 0 and ds.labels.tolist() == [-1] and info.extra["representation"] == "sdf"
    assert ds.x.max() == 1 and outer_layer(ds.x).max() < 0  # a cube 14 voxels wide: deeper than 3 voxels inside


def test_folder_errors_name_the_folder_or_file(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no meshes here")
    with pytest.raises(ValueError, match=r"'.*empty' holds no meshes"):
        D.mesh_folder(tmp_path / "empty", 16)
    with pytest.raises(ValueError, match=r"'.*nowhere' does not exist"):
        D.mesh_folder(tmp_path / "nowhere", 16)
    write_meshes(tmp_path / "d")
    (tmp_path / "d" / "boxes" / "broken.ply").write_bytes(NOISE)
    with pytest.raises(ValueError, match=r"broken\.ply"):
        D.mesh_folder(tmp_path / "d", 16)
    with pytest.raises(ValueError, match="resolution must be a whole number >= 8, got 4"):
        D.mesh_folder(tmp_path / "d", 4)
    with pytest.raises(ValueError, match="limit must be a whole number >= 1, got 0"):
        D.mesh_folder(tmp_path / "d", 16, limit=0)


# ---------------------------------------------------------------- reading grids


def test_read_grid(tmp_path: Path) -> None:
    ds, _ = D.shapes(16, per_class=1, representation="sdf")
    np.save(tmp_path / "g.npy", ds.x[0].numpy())
    assert torch.equal(read_grid(tmp_path / "g.npy"), ds.x[0])
    np.savez(tmp_path / "g.npz", grid=ds.x[1, 0].numpy())
    assert torch.equal(read_grid(tmp_path / "g.npz", resolution=16), ds.x[1])
    np.save(tmp_path / "b.npy", ds.x[2, 0].numpy() > 0)  # boolean: occupancy
    assert torch.equal(read_grid(tmp_path / "b.npy"), torch.where(ds.x[2] > 0, 1.0, -1.0))
    trimesh.creation.box((1, 1, 1)).export(tmp_path / "cube.obj")
    cube = read_grid(tmp_path / "cube.obj", resolution=16)
    assert cube.shape == (1, 16, 16, 16) and (cube[0, 1:-1, 1:-1, 1:-1] == 1).all()
    np.save(tmp_path / "flat.npy", np.zeros((16, 16)))
    np.save(tmp_path / "raw.npy", np.full((8, 8, 8), 5.0))
    for name, message in [
        ("flat.npy", r"'.*flat\.npy' holds shape \(16, 16\)"),
        ("raw.npy", r"'.*raw\.npy' has values outside \[-1, 1\]"),
        ("absent.npy", r"'.*absent\.npy' does not exist"),
    ]:
        with pytest.raises(ValueError, match=message):
            read_grid(tmp_path / name)
    with pytest.raises(ValueError, match=r"'.*g\.npy' is 16\^3, expected 32\^3"):
        read_grid(tmp_path / "g.npy", resolution=32)
    with pytest.raises(ValueError, match=r"'.*cube\.obj' as a grid needs a resolution"):
        read_grid(tmp_path / "cube.obj")


# ---------------------------------------------------------------- pictures


def test_preview_png(tmp_path: Path) -> None:
    ds, _ = D.shapes(16, per_class=1)
    path = save_voxel_preview(ds.x, tmp_path / "p" / "preview.png", titles=list(D.SHAPES), ncol=4)
    with Image.open(path) as im:
        assert im.size == (4 * 128, 2 * (128 + 16)) and im.mode == "RGB"
        px = np.asarray(im)
    for i in range(6):  # every tile shows a shape (non-white pixels), the two empty slots are white
        r, c = divmod(i, 4)
        tile = px[r * 144 : r * 144 + 128, c * 128 : (c + 1) * 128]
        assert (tile.min(-1) < 200).mean() > 0.03
    assert (px[144 : 144 + 128, 2 * 128 :] == 255).all()
    # No titles: no bands; the default layout is about square.
    with Image.open(save_voxel_preview(ds.x[:3], tmp_path / "q.png")) as im:
        assert im.size == (2 * 128, 2 * 128)
    with pytest.raises(ValueError, match="2 titles for 6 grids"):
        save_voxel_preview(ds.x, tmp_path / "r.png", titles=["a", "b"])


def test_preview_shows_a_sphere_as_a_disc(tmp_path: Path) -> None:
    """Whatever the view, a sphere's picture is a round disc: its pixel area is pi r^2."""
    centres = voxel_centres(32).float()
    sphere = (-D.primitive_sdf("sphere", centres, radius=0.3) * 32 / 3).clamp(-1, 1)
    img = vio.render_grid(sphere, 124)
    covered = (img.min(-1) < 250).sum()
    scale = 124 / 1.24  # pixels per unit length: the view spans 1.24 cube widths
    assert covered == pytest.approx(math.pi * (0.3 * scale) ** 2, rel=0.05)
