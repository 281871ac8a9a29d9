"""What the voxel judge accepts: real shapes, deliberately damaged (issue 24).

    python -m benchmarks.judge_damage [--per-class 40] [--seed 3] [--out judge_damage.csv]

``multidiff eval`` judges a shapes run by two figures (:mod:`modalities.voxel.judge`): the kind
accuracy of a 3D classifier trained on a separate draw of shapes (seed 1, the judge's own draw), and
the fraction of grids whose whole marching-cubes surface is one piece. This script asks how lenient
they are: it draws REAL shapes as ``configs/voxel_shapes.yaml`` makes them (16^3, truncated SDF,
positive inside, 2 voxels to +-1, any rotation) from seed 3 by default, which neither the judge
(seed 1) nor the diffusion training set (seed 0, the adapter's default) uses; damages them at
three strengths (:data:`DAMAGES`, mild to severe; "none" is the control); and reports, for each,
the judge's kind accuracy (overall and the worst kind), the fraction of grids in one piece
(:func:`~modalities.voxel.judge.piece_counts` at level 0) and the mean number of pieces. The
classifier is the judge's own (:func:`~modalities.voxel.judge.shapes_judge_classifier`, cached by
content under :func:`multidiff.evaluate.default_cache_dir`, as ``multidiff eval`` caches it; the
first call trains it, a minute or two on one CPU thread).

Every damage is a small pure function ``f(grids, generator, **strength) -> grids`` on grids
``(B, 1, D, H, W)`` in [-1, 1], positive inside, whose values are ``clamp(-d / truncation, -1, 1)``
for the signed distance ``d`` in voxels (negative inside). Lengths are in voxels; the shapes span
10-14 of the 16 voxels. Shapes are added with ``max`` (union) and carved with ``min``
(difference), each as a truncated SDF scaled like the data, so a damaged grid is what an SDF
sampler could have produced. Each condition draws its positions from a generator seeded with
``--seed``, so the three strengths of a damage hit the same places.
"""

from __future__ import annotations

import argparse
import csv
import functools
import inspect
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks.common import ROOT, markdown_table

__all__ = [
    "DATA_SEED",
    "DAMAGES",
    "surface_noise",
    "dents",
    "holes",
    "fragments",
    "lumps",
    "cut",
    "describe",
    "with_truncation",
    "judge_figures",
    "table",
    "write_csv",
    "run",
    "main",
]

DATA_SEED = 3  # the diffusion training set draws seed 0, the judge's classifier seed 1
TRUNCATION = 2.0  # configs/voxel_shapes.yaml: voxels from the surface to +-1


# ---------------------------------------------------------------- helpers


def _voxel_centres(shape: Sequence[int], device: torch.device | None = None) -> Tensor:
    """Index coordinates ``(D, H, W, 3)`` of the voxel centres of a grid whose last three axes are ``shape``."""
    d, h, w = shape[-3:]
    axes = [torch.arange(n, dtype=torch.float32, device=device) for n in (d, h, w)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)


def _truncated(distance: Tensor, truncation: float) -> Tensor:
    """A signed distance in voxels (negative inside) as the data store it: ``clamp(-d / t, -1, 1)``."""
    return (-distance / truncation).clamp(-1, 1)


def _balls(grids: Tensor, centres: Tensor, radius: float | Tensor) -> Tensor:
    """Signed distance ``(B, 1, D, H, W)`` in voxels (negative inside) to one ball per grid,
    centred at ``centres (B, 3)`` (index coordinates) with ``radius`` voxels (a float or ``(B,)``)."""
    p = _voxel_centres(grids.shape, grids.device)
    r = torch.as_tensor(radius, dtype=torch.float32, device=grids.device).reshape(-1, 1, 1, 1)
    d = (p[None] - centres[:, None, None, None, :].float()).norm(dim=-1) - r
    return d[:, None]


def _pick(mask: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """One voxel per grid drawn uniformly from ``mask (B, 1, D, H, W)``: its index coordinates
    ``(B, 3)`` and whether the mask had any voxel ``(B,)`` (where it had none, the coordinates are
    the grid's first voxel and must not be used)."""
    flat = mask.reshape(len(mask), -1).float().cpu()
    ok = flat.sum(1) > 0
    flat[~ok, 0] = 1.0  # a placeholder draw for grids with nothing to pick
    idx = torch.multinomial(flat, 1, generator=generator).squeeze(1)
    d, h, w = mask.shape[-3:]
    coords = torch.stack([idx // (h * w), (idx // w) % h, idx % w], 1).float()
    return coords.to(mask.device), ok.to(mask.device)


def _surface(grids: Tensor, truncation: float) -> Tensor:
    """The voxels within one voxel of the surface (``|value| * truncation < 1``), ``(B, 1, D, H, W)``."""
    return grids.abs() * truncation < 1


def _random_directions(n: int, generator: torch.Generator) -> Tensor:
    """``n`` unit vectors ``(n, 3)``, uniform on the sphere (normalised Gaussians)."""
    v = torch.randn(n, 3, generator=generator)
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)


# ---------------------------------------------------------------- damages


def surface_noise(grids: Tensor, generator: torch.Generator, *, amplitude: float, blur: float = 1.0) -> Tensor:
    """Smooth noise on the whole grid: white Gaussian noise blurred by a Gaussian of ``blur``
    voxels (periodic at the border, so its statistics are the same everywhere), scaled to standard
    deviation ``amplitude`` (grid units), added, then clamped to [-1, 1]. Near the surface the grid's
    slope is ``1 / truncation`` per voxel, so the surface moves by about ``amplitude * truncation``
    voxels (standard deviation) in blobs about ``2 * blur`` voxels across: a rough, wavy surface, as
    a sampler's unresolved noise leaves it. Where the noise is large it also lifts the far field
    (-1) above 0, making specks. Amplitude 0 is the identity."""
    noise = torch.randn(grids.shape, generator=generator).to(grids.device)
    if blur > 0:
        half = max(1, math.ceil(3 * blur))
        t = torch.arange(-half, half + 1, dtype=torch.float32, device=grids.device)
        k = torch.exp(-0.5 * (t / blur) ** 2)
        k = k / k.sum()
        b, c = noise.shape[:2]
        n = noise.reshape(b * c, 1, *noise.shape[2:])
        for axis in range(3):
            shape = [1, 1, 1, 1, 1]
            shape[2 + axis] = len(k)
            pad = [0, 0, 0, 0, 0, 0]
            pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = half
            n = F.conv3d(F.pad(n, pad, mode="circular"), k.reshape(shape))
        # separable: the 3D kernel is the product, whose squares sum to the product of the sums
        noise = n.reshape(noise.shape) / float(k.square().sum()) ** 1.5
    return (grids + amplitude * noise).clamp(-1, 1)


def dents(
    grids: Tensor, generator: torch.Generator, *, count: int, radius: float, truncation: float = TRUNCATION
) -> Tensor:
    """``count`` dents: balls of ``radius`` voxels centred at random surface voxels (within one
    voxel of the surface), carved out (``min`` of the grid and each ball's outside-positive distance,
    truncated like the data). A dent is up to ``radius`` deep and ``2 * radius`` wide: the pits and
    bites a sampler can leave."""
    out = grids
    surface = _surface(grids, truncation)
    for _ in range(count):
        centres, ok = _pick(surface, generator)
        carve = -_truncated(_balls(grids, centres, radius), truncation)
        out = torch.where(ok[:, None, None, None, None], torch.minimum(out, carve), out)
    return out


def lumps(
    grids: Tensor, generator: torch.Generator, *, count: int, radius: float, truncation: float = TRUNCATION
) -> Tensor:
    """``count`` lumps: balls of ``radius`` voxels centred at random surface voxels, added
    (``max``). A lump stands up to ``radius`` voxels proud of the surface: the bumps of the
    "lumpy" guided samples (benchmarks/README.md, "Broken tori are lumpy, not thin")."""
    out = grids
    surface = _surface(grids, truncation)
    for _ in range(count):
        centres, ok = _pick(surface, generator)
        ball = _truncated(_balls(grids, centres, radius), truncation)
        out = torch.where(ok[:, None, None, None, None], torch.maximum(out, ball), out)
    return out


def holes(grids: Tensor, generator: torch.Generator, *, radius: float, truncation: float = TRUNCATION) -> Tensor:
    """A tunnel: a straight infinite cylinder of ``radius`` voxels along a direction uniform on the
    sphere, through a random voxel inside the shape (value > 0), carved out (``min``). It bores
    through the shape (or through one side of it, or parts a thin one)."""
    centres, ok = _pick(grids > 0, generator)
    axis = _random_directions(len(grids), generator).to(grids.device)
    p = _voxel_centres(grids.shape, grids.device)[None] - centres[:, None, None, None, :]
    along = (p * axis[:, None, None, None, :]).sum(-1, keepdim=True)
    d = (p - along * axis[:, None, None, None, :]).norm(dim=-1)[:, None] - radius
    return torch.where(ok[:, None, None, None, None], torch.minimum(grids, -_truncated(d, truncation)), grids)


def cut(grids: Tensor, generator: torch.Generator, *, width: float, truncation: float = TRUNCATION) -> Tensor:
    """A cut: a slab ``width`` voxels thick, through the centre of mass of the voxels inside and
    normal to a direction uniform on the sphere, carved out (``min``). A slab at least a voxel and a
    half wide parts a convex shape into two pieces; a thinner one may leave a film."""
    inside = (grids > 0).float()
    mass = inside.sum((1, 2, 3, 4))
    ok = mass > 0
    p = _voxel_centres(grids.shape, grids.device)
    centre = torch.einsum("bdhw,dhwk->bk", inside[:, 0], p) / mass.clamp_min(1)[:, None]
    normal = _random_directions(len(grids), generator).to(grids.device)
    t = ((p[None] - centre[:, None, None, None, :]) * normal[:, None, None, None, :]).sum(-1)
    d = t.abs()[:, None] - width / 2  # negative within the slab
    return torch.where(ok[:, None, None, None, None], torch.minimum(grids, -_truncated(d, truncation)), grids)


def fragments(
    grids: Tensor,
    generator: torch.Generator,
    *,
    count: int,
    radius: float = 1.5,
    clearance: float = 2.5,
    truncation: float = TRUNCATION,
) -> Tensor:
    """``count`` stray fragments: balls of ``radius`` voxels added (``max``), one at a time, each
    centred at a random voxel at least one voxel in from the border whose distance to every voxel
    inside (the shape's and earlier fragments') exceeds ``radius + clearance``, so each is a piece
    of its own: the specks and blobs a sampler leaves in empty space. Where no voxel is that far
    (a shape filling the cube), that fragment is left out."""
    out = grids
    reach = radius + clearance
    half = math.floor(reach)
    o = torch.arange(-half, half + 1, dtype=torch.float32, device=grids.device)
    kernel = (torch.stack(torch.meshgrid(o, o, o, indexing="ij"), -1).norm(dim=-1) <= reach).float()[None, None]
    border = torch.zeros(grids.shape[-3:], dtype=torch.bool, device=grids.device)
    border[1:-1, 1:-1, 1:-1] = True
    for _ in range(count):
        inside = (out > 0).float().reshape(-1, 1, *out.shape[-3:])
        near = F.conv3d(inside, kernel, padding=half).reshape(out.shape) > 0.5
        centres, ok = _pick(~near & border, generator)
        ball = _truncated(_balls(out, centres, radius), truncation)
        out = torch.where(ok[:, None, None, None, None], torch.maximum(out, ball), out)
    return out


Damage = Callable[..., Tensor]

# name -> (function, strengths mild to severe, each as keyword arguments)
DAMAGES: dict[str, tuple[Damage, tuple[dict[str, Any], ...]]] = {
    "noise": (surface_noise, ({"amplitude": 0.125}, {"amplitude": 0.25}, {"amplitude": 0.5})),
    "dents": (dents, ({"count": 2, "radius": 1.5}, {"count": 4, "radius": 2.0}, {"count": 6, "radius": 3.0})),
    "holes": (holes, ({"radius": 1.0}, {"radius": 2.0}, {"radius": 3.0})),
    "fragments": (fragments, ({"count": 1}, {"count": 2}, {"count": 4})),
    "lumps": (lumps, ({"count": 2, "radius": 1.5}, {"count": 4, "radius": 2.0}, {"count": 6, "radius": 3.0})),
    "cut": (cut, ({"width": 1.0}, {"width": 2.0}, {"width": 4.0})),
}

# each strength in words, voxel units (the table's second column)
_WORDS = {
    "amplitude": lambda v: f"sd {v:g} (surface ~{v * TRUNCATION:g} vox)",
    "count": lambda v: f"{v:g} x",
    "radius": lambda v: f"r {v:g} vox",
    "width": lambda v: f"{v:g} vox wide",
}


def describe(kwargs: Mapping[str, Any]) -> str:
    """A strength in words: ``4 x r 2 vox``."""
    return " ".join(_WORDS[k](v) for k, v in kwargs.items()) or "-"


def with_truncation(
    damages: Mapping[str, tuple[Damage, Sequence[Mapping[str, Any]]]], truncation: float
) -> dict[str, tuple[Damage, Sequence[Mapping[str, Any]]]]:
    """``damages`` with ``truncation`` (voxels to +-1) given to each function that takes one."""
    return {
        name: (
            functools.partial(fn, truncation=truncation) if "truncation" in inspect.signature(fn).parameters else fn,
            s,
        )
        for name, (fn, s) in damages.items()
    }


# ---------------------------------------------------------------- judging


def judge_figures(
    x: Tensor, labels: Tensor, classify: Callable[[Tensor], Tensor], kinds: Sequence[str]
) -> dict[str, Any]:
    """The judge's figures of grids ``x (N, 1, R, R, R)`` of true kinds ``labels (N,)``: kind
    ``accuracy`` by ``classify`` (grids -> predicted labels), per kind (``per_kind``), the
    ``worst_kind`` and its accuracy, the commonest mistake (``"true->judged (n)"``), and from
    :func:`~modalities.voxel.judge.piece_counts` at level 0 ``one_piece`` (the fraction in one piece)
    and ``mean_pieces`` (0 for an empty grid), and from :func:`~modalities.voxel.judge.topology_figures`
    ``topology`` (one piece with the kind's genus) and ``strict`` (the right kind and that topology)."""
    from modalities.voxel.judge import SHAPE_GENUS, piece_counts, topology_figures

    pred = classify(x).cpu().long()
    labels = labels.cpu().long()
    right = pred == labels
    per_kind = {k: float(right[labels == c].float().mean()) for c, k in enumerate(kinds) if (labels == c).any()}
    worst = min(per_kind, key=per_kind.__getitem__)
    wrong = Counter(sorted((int(a), int(b)) for a, b in zip(labels[~right], pred[~right], strict=True)))
    mistake = "-"
    if wrong:
        (a, b), n = wrong.most_common(1)[0]
        mistake = f"{kinds[a]}->{kinds[b]} ({n})"
    pieces = piece_counts(x, 0.0)
    topo = topology_figures(x, labels, [SHAPE_GENUS.get(k, 0) for k in kinds], pred)
    return {
        "accuracy": float(right.float().mean()),
        "per_kind": per_kind,
        "worst_kind": worst,
        "worst_accuracy": per_kind[worst],
        "mistake": mistake,
        "one_piece": float((pieces == 1).float().mean()),
        "mean_pieces": float(pieces.float().mean()),
        "topology": topo["topology_fraction"],
        "strict": topo["strict_accuracy"],
    }


def run(
    x: Tensor,
    labels: Tensor,
    classify: Callable[[Tensor], Tensor],
    kinds: Sequence[str],
    *,
    seed: int = DATA_SEED,
    damages: Mapping[str, tuple[Damage, Sequence[Mapping[str, Any]]]] = DAMAGES,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """One row of :func:`judge_figures` per condition: ``none`` (the real grids), then every damage
    at each strength, each drawn from a generator seeded with ``seed``."""
    rows = [{"damage": "none", "strength": "-", "level": 0, **judge_figures(x, labels, classify, kinds)}]
    for name, (fn, strengths) in damages.items():
        for level, kwargs in enumerate(strengths, 1):
            t0 = time.perf_counter()
            damaged = fn(x, torch.Generator().manual_seed(seed), **kwargs)
            row = {"damage": name, "strength": describe(kwargs), "level": level}
            rows.append({**row, **judge_figures(damaged, labels, classify, kinds)})
            if log:
                log(f"# {name} {describe(kwargs)}: {time.perf_counter() - t0:.1f} s")
    return rows


def table(rows: Sequence[Mapping[str, Any]], kinds: Sequence[str]) -> str:
    """The markdown table of :func:`run`'s rows."""
    header = ["damage", "strength", "kind accuracy", "worst kind", "commonest mistake", "one piece", "mean pieces"]
    header += ["topology", "strict accuracy"]
    header += list(kinds)
    body = [
        [
            r["damage"],
            r["strength"],
            f"{r['accuracy']:.3f}",
            f"{r['worst_kind']} {r['worst_accuracy']:.2f}",
            r["mistake"],
            f"{r['one_piece']:.3f}",
            f"{r['mean_pieces']:.2f}",
            f"{r['topology']:.3f}",
            f"{r['strict']:.3f}",
            *(f"{r['per_kind'][k]:.2f}" for k in kinds),
        ]
        for r in rows
    ]
    return markdown_table(header, body, "lllllrrrr" + "r" * len(kinds))


def write_csv(rows: Sequence[Mapping[str, Any]], kinds: Sequence[str], path: str | Path) -> None:
    """The rows as CSV, one column per kind's accuracy."""
    cols = ["damage", "level", "strength", "accuracy", "worst_kind", "worst_accuracy", "mistake", "one_piece"]
    cols += ["mean_pieces", "topology", "strict", *(f"accuracy_{k}" for k in kinds)]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in rows:
            flat = {**r, **{f"accuracy_{k}": v for k, v in r["per_kind"].items()}}
            w.writerow([f"{flat[c]:.4f}" if isinstance(flat[c], float) else flat[c] for c in cols])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--per-class", type=int, default=40, help="real shapes per kind (default 40)")
    p.add_argument(
        "--seed", type=int, default=DATA_SEED, help=f"the shapes' seed and the damages' (default {DATA_SEED})"
    )
    p.add_argument("--out", help="also write the table as CSV here")
    p.add_argument("--config", default=str(ROOT / "configs" / "voxel_shapes.yaml"), help="the shapes config")
    p.add_argument("--cache", help="the judge's cache (default: multidiff eval's, $MULTIDIFF_CACHE/classifiers)")
    a = p.parse_args(argv)
    if a.seed in (0, 1):
        print(f"# warning: seed {a.seed} is the training set's (0) or the judge's (1)", file=sys.stderr)

    from modalities.voxel.data import shapes
    from modalities.voxel.judge import shapes_judge_classifier
    from multidiff.config import read_yaml, resolve_config
    from multidiff.evaluate import default_cache_dir
    from multidiff.metrics import predict

    cfg = resolve_config(read_yaml(a.config), a.config)
    d = cfg.data
    if d.source != "shapes" or d.captions:
        raise SystemExit(f"{a.config}: needs data.source 'shapes' without captions")
    t0 = time.perf_counter()
    clf = shapes_judge_classifier(d, a.cache or default_cache_dir())
    print(f"# judge: {time.perf_counter() - t0:.1f} s to train or load", file=sys.stderr)
    ds, info = shapes(
        d.resolution,
        per_class=a.per_class,
        representation=d.representation,
        truncation=d.truncation,
        max_tilt=d.max_tilt,
        seed=a.seed,
    )
    if d.representation != "sdf":
        raise SystemExit("the damages assume a truncated SDF (data.representation: sdf)")
    damages = with_truncation(DAMAGES, d.truncation)
    t0 = time.perf_counter()
    rows = run(
        ds.x,
        ds.labels,
        lambda v: predict(clf, v),
        info.class_names,
        seed=a.seed,
        damages=damages,
        log=lambda s: print(s, file=sys.stderr, flush=True),
    )
    print(
        f"{len(ds.x)} real shapes ({a.per_class} per kind, seed {a.seed}; {d.resolution}^3 {d.representation}, "
        f"truncation {d.truncation:g}); judged in {time.perf_counter() - t0:.0f} s\n"
    )
    print(table(rows, info.class_names))
    if a.out:
        write_csv(rows, info.class_names, a.out)
        print(f"\n# wrote {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
