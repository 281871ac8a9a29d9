"""The voxel modality's judge (``multidiff eval``): a 3D classifier that never saw the run's data,
and figures of the meshes the samples make.

Figures, and what they depend on:

* ``class_accuracy`` / ``frechet``: a :class:`~multidiff.metrics.FeatureClassifier` over 3 axes.
  For the built-in shapes it is trained on a separate, larger draw of them (seed 1,
  :data:`JUDGE_PER_CLASS` per class; the diffusion model never saw these) with the cube's 48
  symmetries as augmentation; for a folder of meshes, on 80% of the run's data (the generic judge).
  The Fréchet reference is the run's held-out 20%.
* ``single_piece_fraction``: the fraction of samples whose whole marching-cubes surface is one
  connected piece, counted BEFORE the largest piece is kept (``grid_to_mesh`` and the exported
  meshes keep only the largest, which is one piece by construction and says nothing about the
  model). ``mean_pieces`` is the mean number of pieces (0 for an empty grid).
* ``watertight_fraction``: of the whole surfaces, before keeping the largest piece. Marching cubes
  on a padded grid closes every surface, so this is near 1 by construction; it catches degenerate
  meshes only.
* ``topology_fraction`` (built-in shapes): samples whose whole surface is one piece with the genus of
  the kind asked for (:data:`SHAPE_GENUS`: a torus has one hole, every other kind none), the genus
  from the Euler characteristic of the closed marching-cubes surface (:func:`surface_genus`).
  ``strict_accuracy``: judged the kind asked for AND of that topology. The classifier alone is
  lenient on tori: it calls open arcs and broken rings tori (``benchmarks/judge_damage.py``), and
  the topology is what tells a ring from an arc. ``real_topology_fraction`` and
  ``real_strict_accuracy`` are the same figures of held-out real shapes: the ceilings (a cone's
  thin tip can part from its body at 16^3).
* ``coverage`` / ``mmd``: coverage and minimum matching distance (Achlioptas et al. 2018) by
  Chamfer distance between points on the exported meshes (the largest piece) and on held-out real
  shapes (at most ``mesh_reference`` of them).

For the captioned shapes (``source: shapes`` with ``captions: true``) the classifier trains on a
separate draw of captioned shapes instead, and a text run's samples are judged attribute by
attribute (:func:`shape_attributes`): the kind by that classifier, size, position and
orientation by the geometry of the voxels inside (:func:`shape_figures`: bounding box, principal
axis), as :func:`modalities.voxel.data.captioned_shapes` defines them.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from multidiff.evaluate import (
    AttributeJudge,
    Judge,
    classifier_judge,
    real_examples,
    split_holdout,
    with_held_out_figures,
)
from multidiff.metrics import cached_classifier, predict

__all__ = [
    "JUDGE_PER_CLASS",
    "shapes_judge_classifier",
    "piece_counts",
    "surface_topology",
    "surface_genus",
    "SHAPE_GENUS",
    "topology_figures",
    "mesh_figures",
    "shape_attributes",
    "shape_codes",
    "shape_figures",
    "voxel_judge",
]

JUDGE_PER_CLASS = 600  # shapes per class the built-in shapes' judge trains on
JUDGE_EPOCHS = 12
# the genus of each built-in kind's surface (modalities.voxel.data.SHAPES); kinds not named have none
SHAPE_GENUS = {"torus": 1}


def shapes_judge_classifier(
    data: Any,
    cache_dir: str | Path,
    device: str | torch.device | None = None,
    *,
    per_class: int = JUDGE_PER_CLASS,
    epochs: int = JUDGE_EPOCHS,
) -> Any:
    """The 3D classifier that judges built-in shapes of the data section ``data``: trained on a
    separate, larger draw (seed 1, ``per_class`` per class; the diffusion model never saw these)
    with the cube's 48 symmetries as augmentation; cached by content, so every caller that asks
    gets the same network."""
    from .data import captioned_shapes, shapes
    from .metrics import random_cube_symmetry

    d = data
    if d.captions:  # the captioned shapes: their sizes, positions and orientations
        big, _ = captioned_shapes(
            d.resolution,
            per_class=per_class,
            representation=d.representation,
            truncation=d.truncation,
            seed=1,
            split="all",
        )
    else:
        big, _ = shapes(
            d.resolution,
            per_class=per_class,
            representation=d.representation,
            truncation=d.truncation,
            max_tilt=d.max_tilt,
            seed=1,
        )
    from .adapter import VoxelModality

    return cached_classifier(
        big.x,
        big.labels,
        cache_dir=cache_dir,
        tag=f"quality:voxel-judge-v1:{VoxelModality().describe(d)}{':captioned' if d.captions else ''}",
        widths=(16, 32, 64),
        epochs=epochs,
        augment=random_cube_symmetry,
        device=device,
    )


def surface_topology(grids: Tensor, level: float = 0.0) -> tuple[Tensor, Tensor]:
    """``(pieces, genus)``, each ``(N,)``, of the whole iso-surface at ``level`` of each grid
    ``(N, 1, R, R, R)``, before any piece is dropped, from one marching-cubes surface per grid: the
    number of connected pieces, and the total genus, the sum over the pieces of ``(2 - chi) / 2``
    with ``chi = V - E + F`` the Euler characteristic of the closed surface (a sphere 0, a torus 1).
    An empty grid has 0 pieces and genus 0."""
    from .io import grid_to_mesh

    pieces, genus = [], []
    for g in grids:
        mesh = grid_to_mesh(g, level=level, largest_component=False)
        k = len(mesh.split(only_watertight=False)) if len(mesh.faces) else 0
        pieces.append(k)
        genus.append((2 * k - int(mesh.euler_number)) // 2 if k else 0)
    return torch.tensor(pieces, dtype=torch.long), torch.tensor(genus, dtype=torch.long)


def piece_counts(grids: Tensor, level: float = 0.0) -> Tensor:
    """The number of connected pieces ``(N,)`` of the whole iso-surface at ``level`` of each grid
    ``(N, 1, R, R, R)``, before any piece is dropped (0 for a grid with nothing inside)."""
    return surface_topology(grids, level)[0]


def surface_genus(grids: Tensor, level: float = 0.0) -> Tensor:
    """The total genus ``(N,)`` of the whole iso-surface of each grid (:func:`surface_topology`)."""
    return surface_topology(grids, level)[1]


def topology_figures(
    grids: Tensor, labels: Tensor, genus: Sequence[int], predicted: Tensor | None = None, level: float = 0.0
) -> dict[str, float]:
    """``topology_fraction``: the fraction of ``grids`` whose whole surface is one piece with genus
    ``genus[label]``; with the classifier's ``predicted`` labels, ``strict_accuracy``: the fraction
    judged the kind asked for AND of that topology (module docstring)."""
    labels = labels.cpu().long()
    want = torch.as_tensor(list(genus), dtype=torch.long)[labels]
    pieces, g = surface_topology(grids, level)
    right = (pieces == 1) & (g == want)
    out = {"topology_fraction": float(right.float().mean())}
    if predicted is not None:
        out["strict_accuracy"] = float((right & (predicted.cpu().long() == labels)).float().mean())
    return out


def mesh_figures(
    samples: Tensor, reference: Tensor | None, *, n_points: int = 512, n_reference: int = 120, level: float = 0.0
) -> dict[str, float]:
    """The mesh figures of sampled grids ``(N, 1, R, R, R)`` (see the module docstring):
    ``single_piece_fraction`` and ``mean_pieces`` and ``watertight_fraction`` of the whole surfaces
    (before keeping the largest piece), and, given ``reference`` grids, ``coverage`` and ``mmd``
    (mean Chamfer distance, squared units of the unit cube) of the exported meshes against the first
    ``n_reference`` of them on ``n_points`` surface points."""
    from .io import grid_to_mesh
    from .metrics import coverage_mmd, surface_points, watertight_fraction

    if len(samples) == 0:
        raise ValueError("need at least one sampled grid")
    pieces = piece_counts(samples, level)
    whole = [grid_to_mesh(g, level=level, largest_component=False) for g in samples]
    out = {
        "single_piece_fraction": float((pieces == 1).float().mean()),
        "mean_pieces": float(pieces.float().mean()),
        "watertight_fraction": watertight_fraction(whole),
    }
    if reference is not None and len(reference):
        ref = [surface_points(grid_to_mesh(g, level=level), n_points) for g in reference[:n_reference]]
        gen = [surface_points(grid_to_mesh(g, level=level), n_points) for g in samples]
        out["coverage"], out["mmd"] = coverage_mmd(gen, ref)
    return out


def shape_figures(grids: Tensor) -> dict[str, Tensor]:
    """Geometry of the voxels inside (value > 0) of grids ``(B, 1, R, R, R)``, in units of the
    cube ``[-0.5, 0.5]^3`` (the axes are the grid's: ``x`` first, ``y`` up):

    * ``side``: the largest side of the bounding box of the voxels inside (a voxel's width added
      to the span of their centres);
    * ``low``, ``high``: the box's ends along ``x``;
    * ``axis_y``: ``|cos|`` of the angle between the principal axis and ``y``, the axis being the
      eigenvector of the voxels' covariance whose eigenvalue is farthest from the other two (a
      solid of revolution's axis, long or flat; a box's long side).
    An empty grid gives side 0 and ``axis_y`` 0.
    """
    occ = (grids[:, 0] > 0).to(torch.float64).flatten(1)  # (B, R^3)
    r = grids.shape[-1]
    t = (torch.arange(r, dtype=torch.float64) + 0.5) / r - 0.5
    pts = torch.stack(torch.meshgrid(t, t, t, indexing="ij"), -1).reshape(-1, 3)
    mass = occ.sum(1).clamp_min(1)
    centre = occ @ pts / mass[:, None]
    d = pts[None] - centre[:, None]
    cov = torch.einsum("bp,bpi,bpj->bij", occ, d, d) / mass[:, None, None]
    ev, vec = torch.linalg.eigh(cov)
    long = (ev[:, 2] - ev[:, 1]) > (ev[:, 1] - ev[:, 0])
    axis = torch.where(long[:, None], vec[:, :, 2], vec[:, :, 0])
    inside = occ[:, :, None] > 0
    low = torch.where(inside, pts[None], 1.0).amin(1)
    high = torch.where(inside, pts[None], -1.0).amax(1)
    span = (high - low + 1 / r).clamp_min(0)
    empty = occ.sum(1) == 0
    return {
        "side": torch.where(empty, 0.0, span.amax(1)).float(),
        "low": low[:, 0].float(),
        "high": high[:, 0].float(),
        "axis_y": torch.where(empty, 0.0, axis[:, 1].abs()).float(),
    }


def shape_codes(grids: Tensor) -> dict[str, Tensor]:
    """The captioned shapes' size, position and orientation codes ``(B,)`` (:func:`shape_figures`),
    as the generator defines them: large when the largest side is over 0.48 of the cube's (halfway
    between small's 0.32-0.40 and large's 0.56-0.64); the position whose centre along ``x`` is
    nearest the box's (left: the box against the low side with a voxel of margin, centre: 0,
    right: against the high side); vertical when the principal axis is within 45 degrees of ``y``."""
    f = shape_figures(grids)
    r = grids.shape[-1]
    span = f["high"] - f["low"] + 1 / r
    middle = (f["high"] + f["low"]) / 2
    places = torch.stack([-0.5 + 1 / r + span / 2, torch.zeros_like(span), 0.5 - 1 / r - span / 2], 1)
    return {
        "size": (f["side"] > 0.48).long(),
        "position": (middle[:, None] - places).abs().argmin(1),
        "orientation": (f["axis_y"] < 0.5**0.5).long(),  # 0 vertical, 1 horizontal
    }


def shape_attributes(
    classify: Callable[[Tensor], Tensor],
    seen: tuple[Tensor, Mapping[str, Tensor]],
    held_out: tuple[Tensor, Mapping[str, Tensor]],
) -> AttributeJudge:
    """The :class:`~multidiff.evaluate.AttributeJudge` of captioned shapes: the kind by ``classify``,
    the rest by :func:`shape_codes`; a sphere's orientation (``any``) is not judged. Prompts in the
    set's words, the orientation said the kind's way (:data:`~modalities.voxel.data.SHAPE_ORIENTATIONS`)."""
    from multidiff.captions import compose_caption, factor_captions

    from .data import SHAPE_ATTRIBUTES, SHAPE_FACTORS, SHAPE_ORIENTATIONS, SHAPE_TEMPLATES

    def measure(x: Tensor) -> dict[str, Tensor]:
        return {"kind": classify(x).cpu().long(), **shape_codes(x)}

    def words(values: Mapping[str, str]) -> dict[str, Any]:
        return {**SHAPE_ATTRIBUTES, "orientation": SHAPE_ORIENTATIONS[values["kind"]]}

    def caption(values: Mapping[str, str], rng: random.Random) -> str:
        return compose_caption(values, words(values), SHAPE_TEMPLATES, rng)

    def parts(values: Mapping[str, str], rng: random.Random) -> tuple[str, ...]:
        return factor_captions(values, words(values), SHAPE_TEMPLATES, SHAPE_FACTORS, rng)

    return AttributeJudge(
        values={k: a.values for k, a in SHAPE_ATTRIBUTES.items()},
        measure=measure,
        caption=caption,
        real={"seen": seen, "held_out": held_out},
        unjudged={"orientation": "any"},
        description=(
            "kind by the classifier; size by the bounding box's largest side, position by its centre along x, "
            "orientation by the principal axis of the voxels inside"
        ),
        parts=parts,
    )


MESH_HELP = {
    "single_piece_fraction": "samples whose surface is one piece, before keeping the largest",
    "mean_pieces": "mean pieces per sample's surface (0: empty)",
    "watertight_fraction": "closed surfaces before keeping the largest piece (~1 by construction)",
    "coverage": "held-out real shapes nearest to some sample by Chamfer (higher is better)",
    "mmd": "mean Chamfer distance of real shapes to their nearest sample (lower is better)",
    "topology_fraction": "samples in one piece with their kind's genus (a torus's hole; higher is better)",
    "strict_accuracy": "judged the kind asked for and of its topology (higher is better)",
    "real_topology_fraction": "the topology fraction of held-out real shapes: the ceiling",
    "real_strict_accuracy": "the strict accuracy of held-out real shapes: the ceiling",
}


def voxel_judge(
    adapter: Any,
    data: Any,
    info: Any,
    *,
    cache_dir: str | Path | None = None,
    device: Any = None,
    judge_per_class: int = JUDGE_PER_CLASS,
    judge_epochs: int = JUDGE_EPOCHS,
    mesh_reference: int = 120,
    mesh_points: int = 512,
) -> Judge:
    """The voxel judge (see the module docstring); ``judge_per_class`` and ``judge_epochs`` size the
    built-in shapes' classifier, ``mesh_reference`` and ``mesh_points`` the Chamfer figures."""
    import dataclasses

    from multidiff.evaluate import default_cache_dir
    from multidiff.modality import Modality

    genus: list[int] | None = None  # the built-in shapes' genus per class: the topology figures
    classify: Callable[[Tensor], Tensor] | None = None

    def extras(x: Tensor, labels: Tensor | None, reference: Tensor | None) -> dict[str, float]:
        out = mesh_figures(x, reference, n_points=int(mesh_points), n_reference=int(mesh_reference))
        if genus is not None and labels is not None and len(labels) == len(x):
            out.update(topology_figures(x, labels, genus, classify(x) if classify is not None else None))
        return out

    if data.source != "shapes":
        judge = Modality.judge(adapter, data, info, cache_dir=cache_dir, device=device)
        text = judge.description
    else:
        t0 = time.perf_counter()
        ds, _ = adapter.build_dataset(data)
        x, y = real_examples(ds)
        tr, ho = split_holdout(len(x), 0.2, seed=0)
        clf = shapes_judge_classifier(
            data, cache_dir or default_cache_dir(), device, per_class=int(judge_per_class), epochs=int(judge_epochs)
        )
        judge = with_held_out_figures(classifier_judge(clf), x, y, tr, ho)
        if not data.captions:
            from .data import SHAPES

            genus = [SHAPE_GENUS.get(k, 0) for k in (info.class_names or SHAPES)]
            classify = judge.classify
            real = topology_figures(x[ho], y[ho], genus, classify(x[ho]) if classify is not None else None)
            judge = dataclasses.replace(judge, figures={**judge.figures, **{f"real_{k}": v for k, v in real.items()}})
        if data.captions:
            other, _ = adapter.build_dataset(data.model_copy(update={"split": "held_out", "limit": None}))
            held = (real_examples(other)[0], dict(other.attributes))
            attrs = shape_attributes(lambda v: predict(clf, v), (x, dict(ds.attributes)), held)
            judge = dataclasses.replace(judge, attributes=attrs)
        text = (
            f"a 3D classifier trained on {int(judge_per_class) * clf.num_classes} other "
            f"{'captioned ' if data.captions else ''}built-in shapes (seed 1), "
            f"{judge.figures.get('judge_accuracy', float('nan')):.3f} accurate on the held-out 20% of the run's "
            f"shapes, which are the Fréchet reference ({time.perf_counter() - t0:.0f} s to train or load)"
        )
        if genus is not None:
            text += "; topology: one piece with the kind's genus (a torus's one hole), from the surface's Euler characteristic"
    text += (
        f"; meshes by marching cubes at level 0, pieces counted before keeping the largest; Chamfer on "
        f"{mesh_points} surface points against at most {mesh_reference} held-out real shapes"
    )
    return dataclasses.replace(judge, extras=extras, description=text, help=MESH_HELP)
