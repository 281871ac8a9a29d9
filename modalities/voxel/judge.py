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
* ``coverage`` / ``mmd``: coverage and minimum matching distance (Achlioptas et al. 2018) by
  Chamfer distance between points on the exported meshes (the largest piece) and on held-out real
  shapes (at most ``mesh_reference`` of them).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from multidiff.evaluate import Judge, classifier_judge, real_examples, split_holdout, with_held_out_figures
from multidiff.metrics import cached_classifier

__all__ = ["JUDGE_PER_CLASS", "shapes_judge_classifier", "piece_counts", "mesh_figures", "voxel_judge"]

JUDGE_PER_CLASS = 600  # shapes per class the built-in shapes' judge trains on
JUDGE_EPOCHS = 12


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
    from .data import shapes
    from .metrics import random_cube_symmetry

    d = data
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
        tag=f"quality:voxel-judge-v1:{VoxelModality().describe(d)}",
        widths=(16, 32, 64),
        epochs=epochs,
        augment=random_cube_symmetry,
        device=device,
    )


def piece_counts(grids: Tensor, level: float = 0.0) -> Tensor:
    """The number of connected pieces ``(N,)`` of the whole iso-surface at ``level`` of each grid
    ``(N, 1, R, R, R)``, before any piece is dropped (0 for a grid with nothing inside)."""
    from .io import grid_to_mesh

    counts = []
    for g in grids:
        mesh = grid_to_mesh(g, level=level, largest_component=False)
        counts.append(len(mesh.split(only_watertight=False)) if len(mesh.faces) else 0)
    return torch.tensor(counts, dtype=torch.long)


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


MESH_HELP = {
    "single_piece_fraction": "samples whose surface is one piece, before keeping the largest",
    "mean_pieces": "mean pieces per sample's surface (0: empty)",
    "watertight_fraction": "closed surfaces before keeping the largest piece (~1 by construction)",
    "coverage": "held-out real shapes nearest to some sample by Chamfer (higher is better)",
    "mmd": "mean Chamfer distance of real shapes to their nearest sample (lower is better)",
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

    def extras(x: Tensor, labels: Tensor | None, reference: Tensor | None) -> dict[str, float]:
        return mesh_figures(x, reference, n_points=int(mesh_points), n_reference=int(mesh_reference))

    if data.source != "shapes":
        judge = Modality.judge(adapter, data, info, cache_dir=cache_dir, device=device)
        text = judge.description
    else:
        t0 = time.perf_counter()
        x, y = real_examples(adapter.build_dataset(data)[0])
        tr, ho = split_holdout(len(x), 0.2, seed=0)
        clf = shapes_judge_classifier(
            data, cache_dir or default_cache_dir(), device, per_class=int(judge_per_class), epochs=int(judge_epochs)
        )
        judge = with_held_out_figures(classifier_judge(clf), x, y, tr, ho)
        text = (
            f"a 3D classifier trained on {int(judge_per_class) * clf.num_classes} other built-in shapes (seed 1), "
            f"{judge.figures.get('judge_accuracy', float('nan')):.3f} accurate on the held-out 20% of the run's "
            f"shapes, which are the Fréchet reference ({time.perf_counter() - t0:.0f} s to train or load)"
        )
    text += (
        f"; meshes by marching cubes at level 0, pieces counted before keeping the largest; Chamfer on "
        f"{mesh_points} surface points against at most {mesh_reference} held-out real shapes"
    )
    return dataclasses.replace(judge, extras=extras, description=text, help=MESH_HELP)
