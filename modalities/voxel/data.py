"""Voxel data sets: built-in parametric primitives, and any folder of mesh files.

Both return a :class:`~multidiff.modality.TensorDataset` of grids ``(N, 1, R, R, R)`` float32 in
[-1, 1], positive inside the shape (occupancy +1 / -1, or a truncated SDF; see
:mod:`modalities.voxel.io` for the conventions), plus the :class:`~multidiff.modality.DataInfo`,
whose ``extra`` records ``resolution``, ``representation`` and ``truncation``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from multidiff.captions import (
    Attribute,
    CaptionedTensorDataset,
    compose_caption,
    held_out_mask,
    read_captions,
    variants_of_examples,
)
from multidiff.modality import DataInfo, TensorDataset, read_each, scan_labelled_folder

from . import io as vio

__all__ = [
    "SHAPES",
    "MESH_SUFFIXES",
    "CACHE_VERSION",
    "primitive_sdf",
    "shapes",
    "captioned_shapes",
    "SHAPE_ATTRIBUTES",
    "SHAPE_ORIENTATIONS",
    "SHAPE_TEMPLATES",
    "SHAPES_HELD_OUT",
    "SHAPE_FACTORS",
    "mesh_folder",
    "mesh_cache_key",
]

SHAPES = ("sphere", "box", "torus", "cylinder", "cone", "capsule")
MESH_SUFFIXES = (".obj", ".stl", ".ply", ".off", ".glb", ".gltf")
CACHE_VERSION = 1  # bump when voxelize's output changes, so old cache files are not used

# Parameters of each primitive in its canonical frame: centred on its bounding box, solids of
# revolution around the y axis (the cone's apex at +y), heights measured tip to tip along y.
_PARAMS = {
    "sphere": ("radius",),
    "box": ("half_extents",),
    "torus": ("major_radius", "minor_radius"),
    "cylinder": ("radius", "height"),
    "cone": ("radius", "height"),
    "capsule": ("radius", "height"),
}


# ---------------------------------------------------------------- primitives


def _segment_distance(
    qx: Tensor, qy: Tensor, ax: float | Tensor, ay: float | Tensor, bx: float | Tensor, by: float | Tensor
) -> Tensor:
    """Distance from 2D points ``(qx, qy)`` to the segments ``a``-``b`` (all broadcast)."""
    px, py, ex, ey = qx - ax, qy - ay, bx - ax, by - ay
    t = ((px * ex + py * ey) / (ex * ex + ey * ey)).clamp(0, 1)
    return torch.hypot(px - t * ex, py - t * ey)


def primitive_sdf(kind: str, points: Tensor, **params: float | Tensor) -> Tensor:
    """Signed distance ``(...)`` from ``points (..., 3)`` to a primitive in its canonical frame,
    negative inside; exact for every kind.

    Parameters (floats or tensors broadcasting against ``points[..., 0]``; ``half_extents`` against
    ``points``): ``sphere(radius)``, ``box(half_extents)``, ``torus(major_radius, minor_radius)``
    around y, ``cylinder(radius, height)``, ``cone(radius, height)`` (base of ``radius`` at
    ``y = -height/2``, apex at ``+height/2``), ``capsule(radius, height)`` (tip to tip along y,
    ``height >= 2 * radius``). The formulas follow Inigo Quilez's catalogue of distance functions
    (iquilezles.org/articles/distfunctions); the solids of revolution are the exact 2D distance to
    their profile in ``(sqrt(x^2 + z^2), y)``: a rectangle for the cylinder, a right triangle for
    the cone (nearest of its base and slanted edges, sign from the two half-planes).
    """
    if kind not in _PARAMS:
        raise ValueError(f"unknown primitive {kind!r}; expected one of {', '.join(SHAPES)}")
    missing = [k for k in _PARAMS[kind] if k not in params]
    extra = [k for k in params if k not in _PARAMS[kind]]
    if missing or extra:
        raise ValueError(
            f"primitive {kind!r} takes {', '.join(_PARAMS[kind])}; "
            + (f"missing {', '.join(missing)}" if missing else f"unexpected {', '.join(extra)}")
        )
    if points.shape[-1] != 3:
        raise ValueError(f"points must have shape (..., 3), got {tuple(points.shape)}")
    p = {k: torch.as_tensor(v, dtype=points.dtype, device=points.device) for k, v in params.items()}
    x, y, z = points.unbind(-1)
    rho = torch.hypot(x, z)  # distance from the y axis
    if kind == "sphere":
        return points.norm(dim=-1) - p["radius"]
    if kind == "box":
        q = points.abs() - p["half_extents"]
        return q.clamp(min=0).norm(dim=-1) + q.amax(-1).clamp(max=0)
    if kind == "torus":
        return torch.hypot(rho - p["major_radius"], y) - p["minor_radius"]
    r, h = p["radius"], p["height"] / 2
    if kind == "capsule":
        core = (h - r).clamp(min=0)  # half-length of the segment between the cap centres
        return torch.hypot(rho, y - torch.minimum(torch.maximum(y, -core), core)) - r
    if kind == "cylinder":
        dx, dy = rho - r, y.abs() - h
        return torch.maximum(dx, dy).clamp(max=0) + torch.hypot(dx.clamp(min=0), dy.clamp(min=0))
    # cone: profile triangle (0, -h), (r, -h), (0, h)
    base = _segment_distance(rho, y, 0.0, -h, r, -h)
    slant = _segment_distance(rho, y, r, -h, 0.0, h)
    inside = (y > -h) & (rho * 2 * h + (y + h) * r < r * 2 * h)
    d = torch.minimum(base, slant)
    return torch.where(inside, -d, d)


def _support(kind: str, u: Tensor, p: dict[str, Tensor]) -> Tensor:
    """Support function ``max_{x in shape} <x, u>`` of each primitive (canonical frame) for unit
    directions ``u (..., 3)``; parameters broadcast against ``u[..., 0]``."""
    radial = torch.hypot(u[..., 0], u[..., 2])
    if kind == "sphere":
        return p["radius"].expand(u.shape[:-1])
    if kind == "box":
        return (p["half_extents"] * u.abs()).sum(-1)
    if kind == "torus":
        return p["major_radius"] * radial + p["minor_radius"]
    r, h = p["radius"], p["height"] / 2
    if kind == "cylinder":
        return r * radial + h * u[..., 1].abs()
    if kind == "capsule":
        return (h - r) * u[..., 1].abs() + r
    return torch.maximum(h * u[..., 1], -h * u[..., 1] + r * radial)  # cone: apex or base rim


def _rotations(u: Tensor, max_tilt: float = 180.0) -> Tensor:
    """Rotations ``(n, 3, 3)`` from uniforms ``u (n, 3)``.

    ``max_tilt >= 180``: uniform on SO(3), Shoemake's uniform random quaternion (Graphics Gems III,
    1992). Below: ``R_y(turn) R_x(tilt) R_y(spin)`` (Euler angles y-x-y) with the shape's own ``y``
    axis uniform on the spherical cap within ``max_tilt`` degrees of the world's ``y`` (up), since
    ``cos(tilt)`` is uniform on ``[cos(max_tilt), 1]``, and turn and spin uniform: ``0`` keeps every
    shape upright, turned about the vertical only, as aligned mesh collections are.
    """
    if max_tilt < 180:
        turn, spin = 2 * math.pi * u[:, 0], 2 * math.pi * u[:, 2]
        cos_t = 1 - u[:, 1] * (1 - math.cos(math.radians(max_tilt)))
        return _rot_y(turn) @ _rot_x(cos_t, (1 - cos_t * cos_t).clamp(min=0).sqrt()) @ _rot_y(spin)
    a, b = (1 - u[:, 0]).sqrt(), u[:, 0].sqrt()
    w, x = a * torch.sin(2 * math.pi * u[:, 1]), a * torch.cos(2 * math.pi * u[:, 1])
    y, z = b * torch.sin(2 * math.pi * u[:, 2]), b * torch.cos(2 * math.pi * u[:, 2])
    return torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        1,
    )


def _rot_y(angle: Tensor) -> Tensor:
    c, s, o, i = angle.cos(), angle.sin(), torch.zeros_like(angle), torch.ones_like(angle)
    return torch.stack([torch.stack([c, o, s], -1), torch.stack([o, i, o], -1), torch.stack([-s, o, c], -1)], 1)


def _rot_x(c: Tensor, s: Tensor) -> Tensor:
    o, i = torch.zeros_like(c), torch.ones_like(c)
    return torch.stack([torch.stack([i, o, o], -1), torch.stack([o, c, -s], -1), torch.stack([o, s, c], -1)], 1)


def _unit_params(kind: str, a: Tensor) -> dict[str, Tensor]:
    """Canonical parameters (before scaling) from two uniforms ``a (n, 2)``, chosen so the six
    classes stay apart at 16^3: tori with a tube thick enough to voxelize and a hole at least as
    wide as it; cylinders squat to square (height 0.6-1.4 diameters, flat caps); capsules clearly
    elongated (2-3 diameters tip to tip, round caps); cones 0.75-1.25 base diameters tall; boxes
    with sides in ratios up to 2:1; spheres round."""
    one = torch.ones(len(a), dtype=a.dtype)
    if kind == "sphere":
        return {"radius": one}
    if kind == "box":
        return {"half_extents": torch.stack([one, 0.5 + 0.5 * a[:, 0], 0.5 + 0.5 * a[:, 1]], -1)}
    if kind == "torus":
        return {"major_radius": one, "minor_radius": 0.3 + 0.15 * a[:, 0]}
    if kind == "cylinder":
        return {"radius": one, "height": 1.2 + 1.6 * a[:, 0]}
    if kind == "cone":
        return {"radius": one, "height": 1.5 + 1.0 * a[:, 0]}
    return {"radius": one, "height": 4.0 + 2.0 * a[:, 0]}  # capsule


def _scale_params(p: dict[str, Tensor], k: Tensor) -> dict[str, Tensor]:
    return {n: v * (k[:, None] if v.ndim == 2 else k) for n, v in p.items()}


def _draw_posed(
    kind: str,
    rot: Tensor,
    params: dict[str, Tensor],
    centre: Tensor,
    r: int,
    representation: str,
    truncation: float,
) -> Tensor:
    """Grids ``(m, 1, r, r, r)`` of ``m`` primitives of one ``kind``: parameters ``params`` (``(m,)``
    or ``(m, 3)`` each) in the canonical frame, rotated by ``rot (m, 3, 3)`` (local -> world) and
    centred at ``centre (m, 3)`` in the cube ``[-0.5, 0.5]^3``; the exact signed distance at the
    voxel centres, as occupancy (+1 inside) or ``clamp(-d * r / truncation, -1, 1)``."""
    ticks = (torch.arange(r, dtype=torch.float32) + 0.5) / r - 0.5
    centres = torch.stack(torch.meshgrid(ticks, ticks, ticks, indexing="ij"), -1).reshape(1, -1, 3)
    chunk = max(1, (1 << 21) // r**3)  # examples per batch: ~2M points, ~100 MB of temporaries
    out = torch.empty(len(rot), 1, r, r, r)
    for s in range(0, len(rot), chunk):
        b = slice(s, s + chunk)
        local = torch.bmm(centres - centre[b, None, :].float(), rot[b].float())  # Q^T (p - c) as rows
        pb = {m: (v[b, None] if v.ndim == 1 else v[b, None, :]).float() for m, v in params.items()}
        d = primitive_sdf(kind, local, **pb) * r  # in voxels, negative inside
        grid = torch.where(d < 0, 1.0, -1.0) if representation == "occupancy" else (-d / truncation).clamp(-1, 1)
        out[b] = grid.reshape(-1, 1, r, r, r)
    return out


def shapes(
    resolution: int = 16,
    *,
    per_class: int = 200,
    representation: str = "occupancy",
    truncation: float = 3.0,
    max_tilt: float = 180.0,
    seed: int = 0,
) -> tuple[TensorDataset, DataInfo]:
    """Parametric primitives, one class per kind of :data:`SHAPES`; needs no files and no download.

    Example ``i`` is class ``i % 6``. Each draws, from ``seed`` alone: a rotation, uniform on SO(3)
    (``max_tilt`` 180, the default) or with the shape's own axis (a solid of revolution's, the box's
    ``y``) within ``max_tilt`` degrees of the vertical and any turn about it (see :func:`_rotations`);
    aspect parameters (see :func:`_unit_params`); a size making the largest side of its rotated
    bounding box 65-85% of the cube (smaller ones are hard to tell apart at 16^3) (capped so a one-voxel margin remains at small resolutions);
    a position uniform over the places where the whole shape keeps at least one voxel of margin to
    every face of the cube, so the outer layer of voxels is always outside and marching cubes gives
    closed surfaces. The grid holds the exact signed distance at the voxel centres: occupancy is
    +1 where it is negative (inside), the SDF representation is ``clamp(-d * R / truncation, -1, 1)``.
    The draws depend on neither ``resolution`` nor ``per_class``: one seed gives the same shapes (up
    to the margin) at every resolution, and example ``i`` is the same in a larger set.
    """
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 8:
        raise ValueError(f"shapes: resolution must be a whole number >= 8, got {resolution!r}")
    if not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f"shapes: per_class must be a whole number >= 1, got {per_class!r}")
    vio._check_representation(representation, truncation)
    if not 0 <= max_tilt <= 180:
        raise ValueError(f"shapes: max_tilt must lie in [0, 180] degrees, got {max_tilt!r}")
    r, k_classes = resolution, len(SHAPES)
    n = k_classes * per_class
    # One row of uniforms per example, so example i is the same whatever per_class is.
    u = torch.rand(n, 9, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    rot, size_u, place_u, aspect_u = _rotations(u[:, :3], max_tilt), u[:, 3], u[:, 4:7], u[:, 7:9]
    labels = torch.arange(n) % k_classes

    margin = 1.0 / r + 1e-4  # one voxel, and a hair, so no surface passes through an outer voxel centre
    room = 1.0 - 2 * margin
    lo_size, hi_size = min(0.65, room), min(0.85, room)
    x = torch.empty(n, 1, r, r, r)
    for c, kind in enumerate(SHAPES):
        idx = torch.nonzero(labels == c).squeeze(1)
        unit = _unit_params(kind, aspect_u[idx])
        # World bounding box of the rotated unit shape: along world axis k the support in the
        # direction of row k of the rotation (local -> world), and its opposite.
        axes = rot[idx]  # (m, 3, 3); row k = world axis k in local coordinates
        per_axis = {m: v[:, None] if v.ndim == 1 else v[:, None, :] for m, v in unit.items()}
        hi, lo = _support(kind, axes, per_axis), -_support(kind, -axes, per_axis)  # (m, 3) each
        scale = (lo_size + (hi_size - lo_size) * size_u[idx]) / (hi - lo).amax(1)
        lo, hi = lo * scale[:, None], hi * scale[:, None]
        centre = (-0.5 + margin - lo) + place_u[idx] * ((0.5 - margin - hi) - (-0.5 + margin - lo)).clamp(min=0)
        x[idx] = _draw_posed(kind, rot[idx], _scale_params(unit, scale), centre, r, representation, truncation)
    extra = {
        "resolution": r,
        "representation": representation,
        "truncation": float(truncation),
        "source": "shapes",
        "max_tilt": float(max_tilt),
    }
    return TensorDataset(x, labels), DataInfo((1, r, r, r), k_classes, SHAPES, extra)


# ---------------------------------------------------------------- captioned shapes

SHAPE_ATTRIBUTES: dict[str, Attribute] = {
    a.name: a
    for a in (
        Attribute(
            "kind",
            SHAPES,
            {
                "sphere": ("sphere", "ball", "round ball"),
                "box": ("box", "block", "cuboid", "rectangular block"),
                "torus": ("torus", "ring", "donut"),
                "cylinder": ("cylinder", "tube", "round pillar"),
                "cone": ("cone", "pointed cone"),
                "capsule": ("capsule", "pill", "rounded rod"),
            },
            unsaid=("shape", "object", "solid"),
        ),
        Attribute(
            "size", ("small", "large"), {"small": ("small", "little", "tiny"), "large": ("large", "big", "huge")}
        ),
        Attribute(
            "position",
            ("left", "center", "right"),
            {
                "left": ("on the left", "at the left", "to the left"),
                "center": ("in the middle", "in the center", "centered"),
                "right": ("on the right", "at the right", "to the right"),
            },
        ),
        Attribute(
            "orientation",
            ("vertical", "horizontal", "any"),
            {"vertical": ("standing upright",), "horizontal": ("lying down",), "any": ("",)},
        ),
    )
}

# How each kind's orientation (its axis of revolution, the box's long side: vertical or horizontal)
# is said; a sphere has none ("any", left unsaid).
SHAPE_ORIENTATIONS: dict[str, Attribute] = {
    kind: Attribute("orientation", ("vertical", "horizontal", "any"), {**phrases, "any": ("",)})
    for kind, phrases in {
        "sphere": {"vertical": ("",), "horizontal": ("",)},
        "box": {
            "vertical": ("standing tall", "standing on its end", "upright"),
            "horizontal": ("lying flat", "lying down", "on its side"),
        },
        "torus": {
            "vertical": ("lying flat", "lying down flat", "flat like a ring on a table"),
            "horizontal": ("standing on its edge", "standing up like a wheel", "upright like a wheel"),
        },
        "cylinder": {
            "vertical": ("standing upright", "standing on its end", "upright"),
            "horizontal": ("lying on its side", "lying down", "on its side"),
        },
        "cone": {
            "vertical": ("pointing up", "standing upright", "tip up"),
            "horizontal": ("lying on its side", "pointing sideways", "on its side"),
        },
        "capsule": {
            "vertical": ("standing upright", "upright", "vertical"),
            "horizontal": ("lying down", "lying horizontally", "on its side"),
        },
    }.items()
}

SHAPE_TEMPLATES = (
    "a {size} {kind} {orientation} {position}",
    "a {size} {kind}, {orientation}, {position}",
    "{position}, a {size} {kind} {orientation}",
    "{kind}: {size}, {orientation}, {position}",
    "a {kind} {position}, {size}, {orientation}",
    "{orientation} {position}: a {size} {kind}",
    "a {size} {kind} {position}, {orientation}",
)

# Attribute combinations no training shape has (the "train" split leaves them out).
SHAPES_HELD_OUT: tuple[dict[str, str], ...] = (
    {"kind": "torus", "size": "large", "position": "left"},
    {"kind": "cone", "size": "small", "orientation": "horizontal"},
    {"kind": "box", "position": "right", "orientation": "vertical"},
)

# The factors a shape's caption is composed of (``data.caption_factors``): a kind's orientation is
# said in the kind's words ("lying flat" is a box's side but a torus's axis), so kind and
# orientation are one factor.
SHAPE_FACTORS: tuple[tuple[str, ...], ...] = (("kind", "orientation"), ("size",), ("position",))

_SHAPE_SIZE = {"small": (0.32, 0.40), "large": (0.56, 0.64)}  # the largest side over the cube's


def _captioned_unit(kind: str, a: Tensor) -> dict[str, Tensor]:
    """Canonical parameters from uniforms ``a (n, 2)``, elongated along y where the orientation
    must show: boxes 2:1 (long side y), cylinders 1.4-1.8 diameters tall; the rest as in :func:`shapes`."""
    one = torch.ones(len(a), dtype=a.dtype)
    if kind == "box":
        return {"half_extents": torch.stack([0.5 + 0.05 * a[:, 0], one, 0.5 + 0.05 * a[:, 1]], -1)}
    if kind == "cylinder":
        return {"radius": one, "height": 2.8 + 0.8 * a[:, 0]}
    return _unit_params(kind, a)


def captioned_shapes(
    resolution: int = 16,
    *,
    per_class: int = 200,
    representation: str = "occupancy",
    truncation: float = 3.0,
    seed: int = 0,
    split: str = "train",
    held_out: tuple[dict[str, str], ...] = SHAPES_HELD_OUT,
    caption_variants: int = 0,
    caption_drop: float = 0.0,
    caption_factors: bool = False,
) -> tuple[CaptionedTensorDataset, DataInfo]:
    """Parametric primitives whose attributes a caption states; needs no files and no download.

    Class ``i % 6`` is the kind (:data:`SHAPES`). Drawn uniformly from ``seed``, each example has:

    - size: the largest side of its bounding box 32-40% of the cube (``small``) or 56-64% (``large``);
    - position along x, the grid's first axis (``left`` is low x): as far left as the shape fits
      with a voxel of margin, centred, or as far right; centred in y and z (up to 15% of the room);
    - orientation: its axis (a solid of revolution's, the box's long side) ``vertical`` (y, up) or
      ``horizontal``, turned at random about the vertical; ``any`` for spheres;

    and aspect parameters as in :func:`shapes` (boxes 2:1 and cylinders taller than wide, so their
    orientation shows). Captions from :data:`SHAPE_TEMPLATES`, the orientation said the kind's way
    (:data:`SHAPE_ORIENTATIONS`: a torus with a vertical axis is "lying flat"): "a large torus
    lying flat on the left". ``split``: ``"train"`` leaves out the ``held_out`` combinations
    (:data:`SHAPES_HELD_OUT`), ``"held_out"`` keeps only them, ``"all"`` keeps everything.
    ``caption_variants``: that many more captions of each shape (``variants``), the size, position
    and orientation each left unsaid with probability ``caption_drop``
    (:func:`multidiff.captions.caption_variants`); the kind is always said. ``caption_factors``: one
    more caption per factor of :data:`SHAPE_FACTORS` ("a small shape", :func:`multidiff.captions.factor_captions`).
    """
    if split not in ("train", "held_out", "all"):
        raise ValueError(f"split must be 'train', 'held_out' or 'all', got {split!r}")
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 8:
        raise ValueError(f"captioned_shapes: resolution must be a whole number >= 8, got {resolution!r}")
    if not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f"captioned_shapes: per_class must be a whole number >= 1, got {per_class!r}")
    vio._check_representation(representation, truncation)
    attrs = SHAPE_ATTRIBUTES
    r, k_classes = resolution, len(SHAPES)
    n = k_classes * per_class
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, 8, generator=g, dtype=torch.float64)
    labels = torch.arange(n) % k_classes
    codes = {"kind": labels}
    for name, count in (("size", 2), ("position", 3), ("orientation", 2)):
        codes[name] = torch.randint(count, (n,), generator=g)
    codes["orientation"] = torch.where(labels == SHAPES.index("sphere"), 2, codes["orientation"])
    turn = _rot_y(2 * math.pi * u[:, 0])
    lying = _rot_x(torch.zeros(n, dtype=torch.float64), torch.ones(n, dtype=torch.float64))  # own y -> world z
    rot = torch.where((codes["orientation"] == 1)[:, None, None], turn @ lying, turn)
    margin = 1.0 / r + 1e-4
    x = torch.empty(n, 1, r, r, r)
    for c, kind in enumerate(SHAPES):
        idx = torch.nonzero(labels == c).squeeze(1)
        unit = _captioned_unit(kind, u[idx, 1:3])
        per_axis = {m: v[:, None] if v.ndim == 1 else v[:, None, :] for m, v in unit.items()}
        hi, lo = _support(kind, rot[idx], per_axis), -_support(kind, -rot[idx], per_axis)
        bounds = torch.tensor([_SHAPE_SIZE[v] for v in attrs["size"].values], dtype=torch.float64)[codes["size"][idx]]
        side = bounds[:, 0] + (bounds[:, 1] - bounds[:, 0]) * u[idx, 3]
        scale = side / (hi - lo).amax(1)
        lo, hi = lo * scale[:, None], hi * scale[:, None]
        first, last = -0.5 + margin - lo, 0.5 - margin - hi  # the feasible centres, per axis
        mid = (first + last) / 2
        centre = mid + 0.15 * (last - first).clamp(min=0) * (u[idx, 4:7] * 2 - 1)  # y, z near the middle
        where = codes["position"][idx]
        centre[:, 0] = torch.where(where == 0, first[:, 0], torch.where(where == 2, last[:, 0], mid[:, 0]))
        x[idx] = _draw_posed(kind, rot[idx], _scale_params(unit, scale), centre, r, representation, truncation)
    held = held_out_mask(codes, attrs, held_out)
    keep = ~held if split == "train" else held if split == "held_out" else torch.ones(n, dtype=torch.bool)
    rng = random.Random(seed)
    names = {k: attrs[k].values for k in codes}
    values = [{k: names[k][int(codes[k][j])] for k in codes} for j in range(n)]

    def per_kind(v: Mapping[str, str]) -> dict[str, Attribute]:
        return {**attrs, "orientation": SHAPE_ORIENTATIONS[v["kind"]]}

    captions = [compose_caption(v, per_kind(v), SHAPE_TEMPLATES, rng) for v in values]
    variants = variants_of_examples(
        values,
        per_kind,
        SHAPE_TEMPLATES,
        count=caption_variants,
        drop=caption_drop,
        keep=("kind",),
        seed=seed,
        factors=SHAPE_FACTORS if caption_factors else (),
    )
    extra = {
        "resolution": r,
        "representation": representation,
        "truncation": float(truncation),
        "source": "captioned_shapes",
        "split": split,
        "held_out": [dict(h) for h in held_out],
        "captions": True,
        "caption_variants": caption_variants,
        "caption_drop": caption_drop,
        "caption_factors": bool(caption_factors),
    }
    ds = CaptionedTensorDataset(x, labels, captions, codes, names, variants)
    return ds.subset(keep.nonzero().squeeze(1)), DataInfo((1, r, r, r), k_classes, SHAPES, extra)


# ---------------------------------------------------------------- mesh folders


def _file_digest(path: Path) -> str:
    """SHA-256 of a mesh file's bytes; for a ``.gltf``, also of the external buffers it names."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    if path.suffix.lower() == ".gltf":
        try:
            uris = [b.get("uri", "") for b in json.loads(path.read_text("utf-8")).get("buffers", [])]
        except (ValueError, OSError, AttributeError):
            uris = []
        for uri in uris:
            side = path.parent / uri
            if uri and not uri.startswith("data:") and side.is_file():
                h.update(_file_digest(side).encode())
    return h.hexdigest()


def mesh_cache_key(path: str | Path, resolution: int, representation: str, truncation: float) -> str:
    """The cache file name of one mesh's grid: its content hash (so renaming or copying a folder
    keeps the cache, and editing a file invalidates it), the resolution, the representation, the
    truncation (SDF only) and :data:`CACHE_VERSION`."""
    t = f"-t{truncation:g}" if representation == "sdf" else ""
    return f"{_file_digest(Path(path))[:24]}-r{resolution}-{representation}{t}-v{CACHE_VERSION}.npz"


def _read_cached(file: Path, resolution: int) -> Tensor | None:
    try:
        with np.load(file, allow_pickle=False) as z:
            grid = z["grid"]
    except Exception:  # missing, half-written by a killed run, or corrupt: voxelize again
        return None
    if grid.shape != (1, resolution, resolution, resolution) or not np.isfinite(grid).all():
        return None
    return torch.from_numpy(grid.astype(np.float32))


def _write_cached(file: Path, grid: Tensor, source: Path) -> None:
    """Write to a temporary file in the same folder and rename, so a crash leaves no half file."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=file.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, grid=grid.numpy(), source=np.array(source.name))
        os.replace(tmp, file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def default_cache_dir() -> Path:
    """Where voxelized meshes are cached by default: ``$MULTIDIFF_CACHE/voxels``, else
    ``~/.cache/multidiff/voxels``. Entries are keyed by content, so one cache serves every folder."""
    base = os.environ.get("MULTIDIFF_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "multidiff").expanduser() / "voxels"


def mesh_folder(
    path: str | Path,
    resolution: int = 32,
    *,
    representation: str = "occupancy",
    truncation: float = 3.0,
    cache_dir: str | Path | None = None,
    limit: int | None = None,
    max_faces: int = vio.MAX_FACES,
    on_bad: str = "error",
    captions: bool = False,
) -> tuple[TensorDataset, DataInfo]:
    """Any folder of meshes (:data:`MESH_SUFFIXES`), as grids ``(N, 1, R, R, R)``. A file that
    cannot be read stops the run with its name; ``on_bad="skip"`` leaves it out and counts it
    (``info.extra["skipped_files"]``).

    Files are found by :func:`~multidiff.modality.scan_labelled_folder` (classes from first-level
    sub-folders in sorted order, or unlabelled files at the top level; hidden files skipped).
    ``limit`` keeps the first files in sorted order. Each file is read by
    :func:`~.io.load_mesh` (a scene flattened to one mesh; more than ``max_faces`` faces refused),
    its bounding box centred and its longest side scaled to the cube less one voxel on each side,
    then voxelized by :func:`~.io.voxelize`. Every file is read before training starts, so a bad one
    fails the run at once, with its name.

    Grids are cached, one ``.npz`` per file, resolution, representation (and truncation for SDF)
    under ``cache_dir`` (default :func:`default_cache_dir`: ``$MULTIDIFF_CACHE/voxels``, else
    ``~/.cache/multidiff/voxels``; the data folder is only read), keyed by the file's content hash
    (see :func:`mesh_cache_key`), so the second run voxelizes nothing, wherever the folder moves.
    An unwritable cache folder only costs the caching (with a warning).

    With ``captions`` each mesh takes its caption from the folder's ``metadata.jsonl`` or its
    sidecar ``.txt`` (:func:`multidiff.captions.read_captions`; one without a usable caption is a
    bad file), and the data set has ``captions``.
    """
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 8:
        raise ValueError(f"mesh_folder: resolution must be a whole number >= 8, got {resolution!r}")
    vio._check_representation(representation, truncation)
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"mesh_folder: limit must be a whole number >= 1, got {limit!r}")
    root = Path(path).expanduser()
    files, labs, classes = scan_labelled_folder(root, MESH_SUFFIXES, "meshes")
    texts: list[str] | None = None
    uncaptioned = 0
    if captions:
        kept, texts = read_captions(root, files, on_bad=on_bad, what="meshes")
        uncaptioned = len(files) - len(kept)
        files, labs = [files[i] for i in kept], [labs[i] for i in kept]
    if limit is not None:
        files, labs = files[:limit], labs[:limit]
    cache: Path | None = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        warnings.warn(f"cannot create the voxel cache {str(cache)!r} ({e}); voxelizing without a cache", stacklevel=2)
        cache = None
    from tqdm.auto import tqdm

    bar = tqdm(total=len(files), desc="voxelizing meshes", unit="mesh", disable=None, leave=False)

    def read(f: Path) -> Tensor:
        bar.update(1)
        entry = cache / mesh_cache_key(f, resolution, representation, truncation) if cache else None
        grid = _read_cached(entry, resolution) if entry is not None else None
        if grid is None:
            grid = vio.voxelize_file(f, resolution, representation, truncation, max_faces=max_faces)
            if entry is not None:
                try:
                    _write_cached(entry, grid, f)
                except OSError as e:
                    warnings.warn(f"cannot write the voxel cache {str(entry)!r}: {e}", stacklevel=2)
        return grid

    try:
        grids, kept, bad = read_each(files, list(range(len(files))), read, on_bad=on_bad, what="meshes")
    finally:
        bar.close()
    x = torch.stack(grids)
    labs = [labs[i] for i in kept]
    extra = {
        "skipped_files": len(bad) + uncaptioned,
        "resolution": resolution,
        "representation": representation,
        "truncation": float(truncation),
        "source": "folder",
        "path": str(root),
    }
    if captions:
        extra["captions"] = True
    info = DataInfo((1, resolution, resolution, resolution), len(classes), tuple(classes), extra)
    if texts is not None:
        return CaptionedTensorDataset(x, torch.tensor(labs, dtype=torch.long), [texts[i] for i in kept]), info
    return TensorDataset(x, torch.tensor(labs, dtype=torch.long)), info
