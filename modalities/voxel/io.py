"""Meshes and voxel grids: reading any mesh file, voxelizing it, marching cubes back to a mesh,
exporting meshes, reading grids, and shaded pictures of grids.

Conventions shared by the whole voxel modality:

- a grid is a float tensor ``(1, R, R, R)`` (or ``(R, R, R)``) with values in [-1, 1], **positive
  inside** the shape, the surface at iso-level 0: occupancy is +1 inside / -1 outside; the SDF
  representation is ``clamp(-signed_distance_in_voxels / truncation, -1, 1)`` (signed distance
  negative inside, so the grid is positive inside);
- grid axes ``(D, H, W)`` index the coordinates ``(x, y, z)``; an ``R``-grid covers the cube
  ``[-0.5, 0.5]^3`` and the centre of voxel ``i`` lies at ``(i + 0.5) / R - 0.5``;
- pictures take ``y`` as "up" (the glTF and most OBJ convention).

Meshes go through trimesh; marching cubes through scikit-image; distances and flood fills through
scipy.ndimage.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    import trimesh

__all__ = [
    "MESH_FORMATS",
    "MAX_FACES",
    "REPRESENTATIONS",
    "load_mesh",
    "normalize_to_unit_cube",
    "voxelize",
    "voxelize_file",
    "occupancy_to_sdf",
    "grid_to_mesh",
    "export_mesh",
    "render_grid",
    "save_voxel_preview",
    "read_grid",
]

MESH_FORMATS = ("obj", "ply", "stl", "glb")  # what export_mesh writes
MAX_FACES = 2_000_000
REPRESENTATIONS = ("occupancy", "sdf")
_FLAT = 1e-6  # a mesh thinner than this fraction of its size along every direction is flat
_SAMPLE_BUDGET = 1 << 20  # surface points per chunk in voxelize: bounds its memory (~100 MB)


# ---------------------------------------------------------------- reading meshes


def _count_in_file(path: Path, needle: bytes, at_line_start: bool) -> int:
    """Occurrences of ``needle`` (at the start of a line if ``at_line_start``), read in 8 MB chunks."""
    pat = b"\n" + needle if at_line_start else needle
    count, tail = 0, b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(1 << 23):
            buf = tail + chunk
            count += buf.count(pat)
            tail = buf[-(len(pat) - 1) :] if len(pat) > 1 else b""
    return count


def _declared_faces(path: Path) -> int | None:
    """The face count a file declares, read without parsing its geometry, so a 50-million-face file is
    refused before trimesh loads it: binary STL (header count), PLY and OFF (header), ASCII STL and
    OBJ (counted ``facet``/``f`` records; an OBJ polygon counts once, so this is a lower bound).
    None for other formats or unreadable headers; the exact count is checked after loading."""
    suffix = path.suffix.lower()
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
        if suffix == ".stl":
            size = path.stat().st_size
            if len(head) >= 84:
                n = int.from_bytes(head[80:84], "little")
                if 84 + 50 * n == size:
                    return n
            return (
                _count_in_file(path, b"endfacet", at_line_start=False) if head.lstrip().startswith(b"solid") else None
            )
        if suffix == ".ply":
            m = re.search(rb"^element\s+face\s+(\d+)", head, re.MULTILINE)
            return int(m.group(1)) if m else None
        if suffix == ".off":
            lines = [ln.strip() for ln in head.splitlines() if ln.strip() and not ln.strip().startswith(b"#")]
            if lines and lines[0].upper().startswith(b"OFF"):
                nums = lines[0][3:].split() or (lines[1].split() if len(lines) > 1 else [])
                return int(nums[1]) if len(nums) >= 2 else None
            return None
        if suffix == ".obj":
            return _count_in_file(path, b"f ", at_line_start=True)
    except (OSError, ValueError):
        return None
    return None


def _too_many_faces(path: Path, n: int, max_faces: int, exact: bool) -> ValueError:
    what = f"{n:,} faces" if exact else f"at least {n:,} faces"
    return ValueError(
        f"mesh {str(path)!r} has {what}, more than the limit of {max_faces:,}; raise max_faces (data.max_faces) "
        "if you have the memory, or decimate the mesh first (e.g. trimesh's simplify_quadric_decimation, "
        "Blender's Decimate modifier, MeshLab's quadric edge collapse)"
    )


def load_mesh(path: str | Path, *, max_faces: int = MAX_FACES) -> trimesh.Trimesh:
    """One triangle mesh from any file trimesh reads (OBJ, STL, PLY, OFF, GLB/glTF, ...).

    A scene (GLB, a multi-object OBJ) is flattened into one mesh with every node's transform
    applied; non-mesh geometry in it (curves, point clouds) is dropped. Raises ``ValueError`` naming
    the file for: a missing or empty file; a file trimesh cannot parse; no mesh geometry (an empty
    scene, an OBJ of comments); vertices and no faces (a point cloud); non-finite vertices; zero
    surface area; a flat mesh (all vertices within ``1e-6`` of the mesh's size of one plane, e.g. a
    single triangle or a quad); more than ``max_faces`` faces (checked from the file header before
    parsing where the format allows, so a huge file costs no memory).

    A mesh need not be watertight: scanned and game meshes with cracks, duplicated seams or
    self-intersections are voxelized by filling what their surface encloses (see :func:`voxelize`).
    Whether a non-flat open surface encloses anything is only known after voxelizing, where
    :func:`voxelize_file` checks it.
    """
    import trimesh

    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"mesh file {str(p)!r} does not exist" + (" (it is a folder)" if p.is_dir() else ""))
    if p.stat().st_size == 0:
        raise ValueError(f"mesh file {str(p)!r} is empty (0 bytes)")
    declared = _declared_faces(p)
    if declared is not None and declared > max_faces:
        raise _too_many_faces(p, declared, max_faces, exact=p.suffix.lower() != ".obj")
    try:
        loaded = trimesh.load(p)
    except Exception as e:  # trimesh's parsers raise anything from IndexError to struct.error on bad bytes
        raise ValueError(f"cannot read mesh {str(p)!r}: {type(e).__name__}: {e}") from None
    if isinstance(loaded, trimesh.Scene):
        parts = [g for g in loaded.dump() if isinstance(g, trimesh.Trimesh) and len(g.faces)]
        if not parts:
            other = [type(g).__name__ for g in loaded.geometry.values()]
            raise ValueError(
                f"mesh file {str(p)!r} holds no mesh geometry"
                + (
                    f" (only {', '.join(sorted(set(other)))})"
                    if other
                    else " (an empty scene, or bytes trimesh did not recognise)"
                )
            )
        mesh = parts[0] if len(parts) == 1 else trimesh.util.concatenate(parts)
    elif isinstance(loaded, trimesh.Trimesh):
        mesh = loaded
    else:
        n = len(getattr(loaded, "vertices", ()))
        raise ValueError(
            f"mesh file {str(p)!r} holds a {type(loaded).__name__} with {n} points and no faces, not a mesh"
        )
    if len(mesh.faces) == 0:
        raise ValueError(f"mesh file {str(p)!r} has {len(mesh.vertices)} vertices and no faces (a point cloud?)")
    if len(mesh.faces) > max_faces:
        raise _too_many_faces(p, len(mesh.faces), max_faces, exact=True)
    v = np.asarray(mesh.vertices)
    if not np.isfinite(v).all():
        raise ValueError(f"mesh {str(p)!r} has non-finite (NaN or infinite) vertex coordinates")
    if not mesh.area > 0:
        raise ValueError(f"mesh {str(p)!r} has no surface area (every face is degenerate)")
    used = v[np.unique(mesh.faces)]
    size = float(np.ptp(used, axis=0).max())
    centred = used - used.mean(0)
    normal = np.linalg.eigh(centred.T @ centred)[1][:, 0]  # the direction of least spread
    thickness = float(np.ptp(centred @ normal))
    if thickness <= _FLAT * size:
        raise ValueError(
            f"mesh {str(p)!r} is flat (all {len(used)} vertices lie in one plane, e.g. a single triangle or a "
            "sheet): it has no volume to voxelize"
        )
    return mesh


def normalize_to_unit_cube(mesh: trimesh.Trimesh, margin: float = 0.0) -> trimesh.Trimesh:
    """A copy of ``mesh`` with its bounding box centred at the origin and its longest side scaled to
    ``1 - 2 * margin``, so it fits in ``[-0.5 + margin, 0.5 - margin]^3`` (aspect ratio kept)."""
    if not 0 <= margin < 0.5:
        raise ValueError(f"margin must be in [0, 0.5), got {margin}")
    out = mesh.copy()
    lo, hi = out.bounds
    longest = float((hi - lo).max())
    if longest <= 0:
        raise ValueError("cannot normalize a mesh whose bounding box is a point")
    out.apply_translation(-(lo + hi) / 2)
    out.apply_scale((1 - 2 * margin) / longest)
    return out


# ---------------------------------------------------------------- voxelizing


def _supersample(resolution: int) -> int:
    """Fine voxels per coarse voxel along an axis: 4 up to 32^3, fewer above, so the fine grid
    never exceeds max(128, R)^3 voxels (16 MB of flags at 256^3)."""
    return max(1, min(4, 128 // resolution))


def _mark_surface(vertices: np.ndarray, faces: np.ndarray, n: int) -> np.ndarray:
    """Flags ``(n, n, n)`` of the voxels of an ``n``-grid over [-0.5, 0.5]^3 that the triangles touch.

    Each triangle ``A, B, C`` (``A`` opposite its longest edge) is sampled on the lattice
    ``A + (i/n1) (B - A) + (j/n2) (C - A)``, ``i/n1 + j/n2 <= 1``, with ``n1, n2`` chosen so that a
    lattice cell's diagonal is below 0.45 voxel; so every point of the surface lies within 0.45
    voxel of a sample. Then any segment between two neighbouring voxel centres that crosses the
    surface crosses it within half a voxel of a sample lying in one of the two voxels: the marked
    voxels separate inside from outside for a 6-connected flood fill. Triangles are processed in
    chunks of at most ``_SAMPLE_BUDGET`` samples, so memory does not grow with the mesh.
    """
    marked = np.zeros(n**3, dtype=bool)
    step = 0.225 / n  # half the bound on a cell's diagonal (|e1|/n1 + |e2|/n2 <= 0.45 voxel)
    start = 0
    while start < len(faces):
        tri = vertices[faces[start : start + 65536]]  # (T, 3, 3)
        start += len(tri)
        lengths = np.linalg.norm(tri[:, [1, 2, 0]] - tri[:, [2, 0, 1]], axis=-1)  # edge opposite vertex k
        first = lengths.argmax(1)
        order = (first[:, None] + np.arange(3)) % 3
        tri = np.take_along_axis(tri, order[:, :, None], axis=1)
        a, e1, e2 = tri[:, 0], tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
        n1 = np.maximum(1, np.ceil(np.linalg.norm(e1, axis=1) / step)).astype(np.int64)
        n2 = np.maximum(1, np.ceil(np.linalg.norm(e2, axis=1) / step)).astype(np.int64)
        counts = (n1 + 1) * (n2 + 1)
        ends = np.cumsum(counts)
        lo = 0
        while lo < len(tri):  # sub-chunks of about _SAMPLE_BUDGET lattice points
            hi = max(lo + 1, int(np.searchsorted(ends, (ends[lo - 1] if lo else 0) + _SAMPLE_BUDGET, "right")))
            c = counts[lo:hi]
            t = np.repeat(np.arange(lo, hi), c)
            k = np.arange(int(c.sum())) - np.repeat(np.cumsum(c) - c, c)
            u, v = (k // (n2[t] + 1)) / n1[t], (k % (n2[t] + 1)) / n2[t]
            keep = u + v <= 1 + 1e-9
            t, u, v = t[keep], u[keep, None], v[keep, None]
            pts = a[t] + u * e1[t] + v * e2[t]
            idx = np.floor((pts + 0.5) * n).astype(np.int64)
            idx = np.clip(idx, 0, n - 1)  # a point exactly on the cube's far face
            marked[(idx[:, 0] * n + idx[:, 1]) * n + idx[:, 2]] = True
            lo = hi
    return marked.reshape(n, n, n)


def _fill(shell: np.ndarray, close: int) -> tuple[np.ndarray, np.ndarray]:
    """``(inside, outside)`` flags of a fine grid given its surface voxels: outside is what a
    6-connected flood from the grid's border reaches; inside is neither outside nor surface.
    ``close > 0`` first thickens the surface by ``close`` voxels, so gaps in it narrower than about
    ``2 * close`` voxels do not let the flood in, then grows the flood back by as much."""
    from scipy import ndimage

    blocked = ndimage.binary_dilation(shell, iterations=close) if close else shell
    labels, _ = ndimage.label(~blocked)
    border = np.concatenate([labels[[0, -1]].ravel(), labels[:, [0, -1]].ravel(), labels[:, :, [0, -1]].ravel()])
    outside = np.isin(labels, np.unique(border[border > 0]))
    if close:
        outside = ndimage.binary_dilation(outside, iterations=close) & ~shell
    return ~outside & ~shell, outside


def _block_mean(x: np.ndarray, s: int) -> np.ndarray:
    r = x.shape[0] // s
    return x.reshape(r, s, r, s, r, s).mean(axis=(1, 3, 5))


def occupancy_to_sdf(occupancy: Tensor, truncation: float = 3.0) -> Tensor:
    """The SDF representation of an occupancy grid ``(..., R, R, R)`` (inside where > 0): each voxel's
    Euclidean distance to the nearest voxel of the other kind, less half a voxel (the surface lies
    between the two centres), signed positive inside, divided by ``truncation`` and clamped to [-1, 1].
    Accurate to about half a voxel; :func:`voxelize` computes a finer one from the mesh itself."""
    from scipy import ndimage

    x = occupancy.detach().cpu()
    flat = x.reshape(-1, *x.shape[-3:]).numpy() > 0
    out = np.empty(flat.shape, dtype=np.float32)
    for i, inside in enumerate(flat):
        if inside.all() or not inside.any():  # no surface: everything is as far as it gets
            out[i] = np.where(inside, np.inf, -np.inf)
            continue
        out[i] = np.where(
            inside, ndimage.distance_transform_edt(inside) - 0.5, 0.5 - ndimage.distance_transform_edt(~inside)
        )
    return torch.from_numpy(np.clip(out / truncation, -1, 1)).reshape(x.shape)


def _check_representation(representation: str, truncation: float) -> None:
    if representation not in REPRESENTATIONS:
        raise ValueError(f"representation must be 'occupancy' or 'sdf', got {representation!r}")
    if not (isinstance(truncation, (int, float)) and math.isfinite(truncation) and truncation > 0):
        raise ValueError(f"truncation must be a positive number of voxels, got {truncation!r}")


def voxelize(
    mesh: trimesh.Trimesh,
    resolution: int,
    representation: str = "occupancy",
    truncation: float = 3.0,
    *,
    supersample: int | None = None,
) -> Tensor:
    """The grid ``(1, R, R, R)`` of a mesh lying in [-0.5, 0.5]^3 (see :func:`normalize_to_unit_cube`).

    Method: the surface is rasterized conservatively into a grid ``supersample`` times finer
    (default 4 up to 32^3, so at most 128^3; see :func:`_mark_surface`), everything a flood fill
    from the border cannot reach is inside (gaps in the surface up to about half a coarse voxel
    are closed first), and each coarse voxel is inside when at least half of its fine voxels are,
    counting surface voxels as half (they straddle the surface). The SDF representation comes from
    exact Euclidean distance transforms of the fine grid, averaged over each coarse voxel (within
    0.2 voxel of the exact SDF for a sphere at 32^3), in coarse voxels, truncated and scaled as in
    the module docstring; its sign can differ from the occupancy's at a voxel whose centre lies
    almost on the surface.

    Work and memory are bounded by the fine grid and a fixed number of surface samples per chunk,
    not by the face count: a 327,680-face sphere takes about 0.8 s at 32^3 (1.6 s as SDF, which
    adds two distance transforms of the 128^3 fine grid); a 12-face box 0.2 s. Faces need no
    consistent orientation and the mesh need not be watertight; a fully enclosed cavity (a hollow
    ball) is filled, as with any flood-fill voxelizer.
    """
    _check_representation(representation, truncation)
    if int(resolution) != resolution or resolution < 2:
        raise ValueError(f"resolution must be a whole number >= 2, got {resolution!r}")
    r = int(resolution)
    s = supersample or _supersample(r)
    v = np.asarray(mesh.vertices, dtype=np.float64)
    f = np.asarray(mesh.faces, dtype=np.int64)
    used = v[np.unique(f)] if len(f) else v[:0]
    if len(used) and (used.min() < -0.5 - 1e-6 or used.max() > 0.5 + 1e-6):
        lo, hi = used.min(0), used.max(0)
        raise ValueError(
            f"voxelize needs a mesh inside [-0.5, 0.5]^3 (its bounds are {np.round(lo, 3).tolist()} to "
            f"{np.round(hi, 3).tolist()}); call normalize_to_unit_cube first"
        )
    n = r * s
    shell = _mark_surface(v, f, n) if len(f) else np.zeros((n, n, n), dtype=bool)
    inside, outside = _fill(shell, s // 2)
    if representation == "occupancy":
        frac = _block_mean(inside + 0.5 * shell, s)
        grid = np.where(frac >= 0.5, 1.0, -1.0)
    elif not shell.any():  # no surface in the cube: all outside
        grid = np.full((r, r, r), -1.0)
    else:
        from scipy import ndimage

        # Fine signed distance to the surface voxels (0 on them), clipped past the truncation so the
        # block mean stays exact where it matters, then in coarse voxels.
        d_in = ndimage.distance_transform_edt(inside) if inside.any() else np.zeros(shell.shape)
        d_out = ndimage.distance_transform_edt(outside)
        cap = 2 * truncation * s
        fine = np.clip(d_in, 0, cap) - np.clip(d_out, 0, cap)
        grid = np.clip(_block_mean(fine, s) / (s * truncation), -1, 1)
    return torch.from_numpy(grid.astype(np.float32))[None]


def voxelize_file(
    path: str | Path,
    resolution: int,
    representation: str = "occupancy",
    truncation: float = 3.0,
    *,
    max_faces: int = MAX_FACES,
) -> Tensor:
    """:func:`load_mesh`, :func:`normalize_to_unit_cube` with a one-voxel margin, :func:`voxelize`.
    A mesh that encloses nothing at this resolution (an open surface, parts thinner than a voxel)
    raises ``ValueError`` naming the file."""
    _check_representation(representation, truncation)
    mesh = normalize_to_unit_cube(load_mesh(path, max_faces=max_faces), margin=1.0 / resolution)
    grid = voxelize(mesh, resolution, representation, truncation)
    if not (grid > 0).any():
        raise ValueError(
            f"mesh {str(path)!r} encloses no voxel at {resolution}^3: it is an open surface (no inside to fill) "
            "or all its parts are thinner than a voxel"
        )
    return grid


# ---------------------------------------------------------------- grids to meshes


def _as_volume(grid: Tensor | np.ndarray, what: str) -> np.ndarray:
    g = grid.detach().float().cpu().numpy() if isinstance(grid, Tensor) else np.asarray(grid, dtype=np.float32)
    if g.ndim == 4 and g.shape[0] == 1:
        g = g[0]
    if g.ndim != 3:
        raise ValueError(f"{what} needs a grid (1, R, R, R) or (R, R, R), got shape {tuple(g.shape)}")
    return g


def grid_to_mesh(
    grid: Tensor | np.ndarray, *, level: float = 0.0, largest_component: bool = True, smooth: int = 0
) -> trimesh.Trimesh:
    """The iso-surface at ``level`` of a grid ``(1, R, R, R)`` or ``(R, R, R)`` (inside: above ``level``).

    Marching cubes (Lewiner et al. 2003, scikit-image) on the grid padded with one voxel of
    "outside", so a shape touching the border is closed too; the mesh is watertight, its faces point
    outward (positive volume) and its vertices are in the grid's [-0.5, 0.5]^3 coordinates. Keeps the
    connected piece with the largest volume if ``largest_component``; ``smooth`` iterations of
    Taubin smoothing (Taubin 1995, no shrinking) take the voxel staircase off occupancy grids.
    A grid with nothing above ``level`` gives an empty mesh.
    """
    import trimesh
    from skimage.measure import marching_cubes

    g = _as_volume(grid, "grid_to_mesh")
    r = g.shape[0]
    if g.shape != (r, r, r):
        raise ValueError(f"grid_to_mesh needs a cubic grid, got shape {g.shape}")
    g = np.nan_to_num(g, nan=-1.0)
    if not (g > level).any():
        return trimesh.Trimesh()
    vol = np.pad(g, 1, constant_values=min(float(g.min()), level) - 1.0)
    verts, faces, _, _ = marching_cubes(vol, level=level, allow_degenerate=False)
    mesh = trimesh.Trimesh((verts - 1 + 0.5) / r - 0.5, faces, process=True)
    if largest_component:
        parts = mesh.split(only_watertight=False)
        if len(parts) > 1:
            mesh = max(parts, key=lambda m: abs(m.volume))
    if mesh.volume < 0:
        mesh.invert()
    if smooth:
        trimesh.smoothing.filter_taubin(mesh, iterations=int(smooth))
    return mesh


def export_mesh(mesh: trimesh.Trimesh, path: str | Path, file_format: str | None = None) -> Path:
    """Write ``mesh`` as OBJ, PLY (binary), STL (binary) or GLB, the format taken from ``file_format``
    or else the file's suffix; parent folders are created."""
    p = Path(path)
    fmt = (file_format or p.suffix.lstrip(".")).lower().lstrip(".")
    if fmt not in MESH_FORMATS:
        raise ValueError(
            f"cannot write mesh {str(p)!r}: format {fmt or '(none)'!r} is not one of {', '.join(MESH_FORMATS)}"
        )
    p.parent.mkdir(parents=True, exist_ok=True)
    mesh.export(str(p), file_type=fmt)
    return p


# ---------------------------------------------------------------- reading grids


def read_grid(path: str | Path, resolution: int | None = None, representation: str = "occupancy") -> Tensor:
    """A grid ``(1, R, R, R)`` float32 from a file.

    ``.npy`` / ``.npz`` (a single array, or the first of ``grid``/``grids``/``x``; a leading batch of
    one is dropped): shape ``(R, R, R)`` or ``(1, R, R, R)``, values in [-1, 1] positive inside (a
    boolean array is occupancy: True inside); no unpickling. Any mesh file: :func:`voxelize_file` at
    ``resolution`` in ``representation``. ``resolution``, when given, must match a stored grid.
    Every error names the file.
    """
    p = Path(path).expanduser()
    if p.suffix.lower() not in (".npy", ".npz"):
        if resolution is None:
            raise ValueError(f"reading mesh {str(p)!r} as a grid needs a resolution")
        return voxelize_file(p, resolution, representation)
    if not p.is_file():
        raise ValueError(f"grid file {str(p)!r} does not exist")
    try:
        loaded = np.load(p, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                keys = list(loaded.keys())
                key = next((k for k in ("grid", "grids", "x") if k in keys), keys[0] if len(keys) == 1 else None)
                if key is None:
                    raise ValueError(f"it holds {keys}, expected one array or one named 'grid'")
                arr = loaded[key]
        else:
            arr = loaded
    except ValueError as e:
        raise ValueError(f"cannot read grid {str(p)!r}: {e}") from None
    except Exception as e:  # a corrupt zip or header
        raise ValueError(f"cannot read grid {str(p)!r}: {type(e).__name__}: {e}") from None
    if arr.ndim == 5 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3 or len(set(arr.shape)) != 1:
        raise ValueError(f"grid file {str(p)!r} holds shape {arr.shape}; expected (R, R, R) or (1, R, R, R)")
    if resolution is not None and arr.shape[0] != resolution:
        raise ValueError(f"grid file {str(p)!r} is {arr.shape[0]}^3, expected {resolution}^3")
    if arr.dtype == bool:
        arr = np.where(arr, 1.0, -1.0)
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"grid file {str(p)!r} holds {arr.dtype} values, expected numbers")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all() or arr.min() < -1.001 or arr.max() > 1.001:
        raise ValueError(
            f"grid file {str(p)!r} has values outside [-1, 1] (range {np.nanmin(arr):g} to {np.nanmax(arr):g}); "
            "expected occupancy (+1 inside, -1 outside) or a truncated SDF scaled to [-1, 1], positive inside"
        )
    return torch.from_numpy(np.clip(arr, -1, 1))[None]


# ---------------------------------------------------------------- pictures


def _view_axes(azimuth: float, elevation: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors (view direction, screen right, screen up) of a camera orbiting the origin with
    ``y`` up: azimuth around ``y`` from ``+z`` towards ``+x``, elevation above the ``xz`` plane (degrees)."""
    az, el = math.radians(azimuth), math.radians(elevation)
    eye = np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
    d = -eye
    right = np.cross(d, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    return d, right, np.cross(right, d)


def render_grid(
    grid: Tensor | np.ndarray,
    size: int = 128,
    *,
    level: float = 0.0,
    azimuth: float = 35.0,
    elevation: float = 25.0,
    color: tuple[float, float, float] = (0.55, 0.7, 0.95),
) -> np.ndarray:
    """A shaded picture ``(size, size, 3)`` uint8 of the iso-surface of one grid.

    Orthographic rays from an oblique camera (``y`` up) march through the trilinearly interpolated
    grid in half-voxel steps; the first crossing of ``level`` is refined linearly and shaded by
    Lambert's law with the normal from the gradient of the grid smoothed by a 0.75-voxel Gaussian,
    plus an ambient term and a depth cue. A binary (occupancy) grid is first smoothed by a
    0.5-voxel Gaussian, so it shows as the surface it samples rather than as stairs (as a mesh
    viewer would after smoothing). The view spans 1.24 cube widths, the same for every grid, so
    sizes compare across pictures (a shape filling the cube's corners may be cut at the edges).
    """
    from scipy import ndimage

    g = _as_volume(grid, "render_grid")
    r = g.shape[0]
    g = np.nan_to_num(g, nan=-1.0)
    out_value = min(float(g.min()), level) - 1.0
    if np.mean(np.abs(g - level) > 0.99 * np.abs(g - level).max()) > 0.95:  # a binary (occupancy) grid
        g = ndimage.gaussian_filter(np.pad(g, 1, constant_values=out_value), 0.5, mode="nearest")[1:-1, 1:-1, 1:-1]
    d, right, up = _view_axes(azimuth, elevation)
    half = 0.62
    ticks = (np.arange(size) + 0.5) / size * 2 * half - half
    sx, sy = np.meshgrid(ticks, ticks[::-1])  # row 0 at the top
    plane = sx.reshape(-1, 1) * right + sy.reshape(-1, 1) * up  # (P, 3)
    dt = 0.5 / r
    ts = np.arange(-0.9, 0.9 + dt, dt)
    vol = torch.from_numpy(np.pad(g, 1, constant_values=out_value).astype(np.float32))[None, None]
    scale = 1.0 / (0.5 + 1.0 / r)  # world -> grid_sample coordinates of the padded volume

    def sample(v: Tensor, pts: np.ndarray) -> np.ndarray:
        # grid_sample's last axis is (W, H, D) = our (z, y, x)
        q = torch.from_numpy((pts[..., ::-1] * scale).astype(np.float32).copy())
        q = q.reshape(1, -1, 1, 1, 3)
        s = F.grid_sample(v, q, mode="bilinear", padding_mode="border", align_corners=False)
        return s.reshape(v.shape[1], *pts.shape[:-1]).numpy()

    img = np.ones((size * size, 3))
    hit_rows, hit_t = [], []
    for lo in range(0, len(plane), 4096):  # ray chunks bound the memory at large sizes
        pts = plane[lo : lo + 4096, None, :] + ts[None, :, None] * d  # (P, S, 3)
        vals = sample(vol, pts)[0]
        above = vals > level
        hit = above.any(1)
        first = above.argmax(1)
        rows = np.nonzero(hit)[0]
        k = first[rows]
        v1 = vals[rows, k]
        v0 = np.where(k > 0, vals[rows, np.maximum(k - 1, 0)], out_value)
        frac = np.clip((v1 - level) / np.maximum(v1 - v0, 1e-6), 0, 1)
        hit_rows.append(rows + lo)
        hit_t.append(ts[k] - frac * dt)
    rows, t = np.concatenate(hit_rows), np.concatenate(hit_t)
    if len(rows):
        smooth = ndimage.gaussian_filter(np.pad(g, 1, constant_values=out_value), 0.75, mode="nearest")
        grads = np.stack(np.gradient(smooth), 0)  # d/dx, d/dy, d/dz in voxels
        pts = plane[rows] + t[:, None] * d
        normal = -sample(torch.from_numpy(grads.astype(np.float32))[None], pts).T  # outward: values fall
        normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-8)
        light = 0.55 * -d + 0.6 * up - 0.45 * right
        light /= np.linalg.norm(light)
        lambert = np.clip(normal @ light, 0, 1)
        facing = np.clip(normal @ -d, 0, 1)
        depth = 1 - 0.25 * (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        shade = (0.22 + 0.63 * lambert + 0.15 * facing) * depth
        img[rows] = np.clip(shade[:, None] * np.asarray(color), 0, 1)
    return (img.reshape(size, size, 3) * 255).round().astype(np.uint8)


def save_voxel_preview(
    grids: Tensor | np.ndarray,
    path: str | Path,
    *,
    titles: list[str] | None = None,
    ncol: int | None = None,
    level: float = 0.0,
    tile: int = 128,
) -> Path:
    """One PNG with a shaded view of each grid of ``(N, 1, R, R, R)`` (see :func:`render_grid`),
    ``ncol`` tiles per row (default: about square), each ``tile`` pixels square with its title in
    a 16-pixel band under it when ``titles`` are given. The image is exactly
    ``(ncol * tile) x (rows * (tile + band))`` pixels."""
    from PIL import Image, ImageDraw, ImageFont

    x = (
        grids.detach().float().cpu()
        if isinstance(grids, Tensor)
        else torch.as_tensor(np.asarray(grids), dtype=torch.float32)
    )
    if x.ndim == 4:
        x = x[:, None]
    if x.ndim != 5 or x.shape[1] != 1 or len(set(x.shape[2:])) != 1:
        raise ValueError(f"cannot draw {str(path)!r}: expected grids (N, 1, R, R, R), got shape {tuple(x.shape)}")
    n = x.shape[0]
    if n == 0:
        raise ValueError(f"cannot draw {str(path)!r}: no grids")
    if titles is not None and len(titles) != n:
        raise ValueError(f"cannot draw {str(path)!r}: {len(titles)} titles for {n} grids")
    ncol = max(1, min(ncol or math.ceil(math.sqrt(n)), n))
    rows = math.ceil(n / ncol)
    band = 16 if titles is not None else 0
    canvas = Image.new("RGB", (ncol * tile, rows * (tile + band)), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=11)
    for i in range(n):
        r, c = divmod(i, ncol)
        canvas.paste(Image.fromarray(render_grid(x[i], tile, level=level)), (c * tile, r * (tile + band)))
        if titles is not None:
            text = str(titles[i])
            w = draw.textlength(text, font=font)
            draw.text((c * tile + (tile - w) / 2, r * (tile + band) + tile + 1), text, fill="black", font=font)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(p)
    return p
