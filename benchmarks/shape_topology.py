"""Per-kind figures of a trained shapes run, over several sampler seeds (issue 24).

    python -m benchmarks.shape_topology RUN [--num 40] [--seeds 0 1 2] [--classes torus box]
        [--guidance 2] [--option sampler=heun --option steps=20]

``multidiff eval`` reports a shapes run's kind accuracy per class but its topology figures only
overall, from one draw of ``--num`` samples per class. This script draws ``--num`` samples of each
kind asked for with each sampler seed (``Pipeline.sample(num, labels=<kind>, seed=s)``, the run's
``sample`` section otherwise, ``--option`` overriding a key), and prints per kind and seed, and over
all seeds: the judge's kind accuracy (the classifier ``multidiff eval`` uses, trained on a separate
draw of shapes and cached), the fraction of grids whose whole marching-cubes surface is one piece,
the topology fraction (one piece with the kind's genus: a torus has one hole) and the strict
accuracy (right kind and topology). ``"tori with their hole"`` in benchmarks/README.md is the
torus row's topology over seeds 0, 1, 2 (120 tori).
"""

from __future__ import annotations

import argparse
import ast
import sys

import torch


def kind_figures(pipe, classify, label: int, n: int, seed: int, options: dict) -> dict[str, float]:
    """Kind accuracy, one piece, topology and strict accuracy of ``n`` samples of class ``label``."""
    from modalities.voxel.data import SHAPES
    from modalities.voxel.judge import SHAPE_GENUS, surface_topology

    x, _ = pipe.sample(n, labels=torch.full((n,), label), seed=seed, **options)
    names = list(pipe.info.class_names) or list(SHAPES)
    kind = classify(x).cpu() == label
    pieces, genus = surface_topology(x)
    topology = (pieces == 1) & (genus == SHAPE_GENUS.get(names[label], 0))
    return {
        "kind": float(kind.float().mean()),
        "one_piece": float((pieces == 1).float().mean()),
        "topology": float(topology.float().mean()),
        "strict": float((kind & topology).float().mean()),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a run folder or checkpoint of a built-in shapes config")
    p.add_argument("--num", type=int, default=40, help="samples per kind and seed")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--classes", nargs="+", default=None, help="kinds to draw (default: all)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the run's)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="a sample option")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)

    from multidiff.pipeline import load_pipeline

    pipe = load_pipeline(a.run, device=a.device)
    if pipe.adapter.name != "voxel" or pipe.config.data.source != "shapes" or pipe.config.data.captions:
        raise SystemExit(f"shape_topology: {a.run} is not a class-conditional run on the built-in shapes")
    names = list(pipe.info.class_names)
    unknown = [c for c in (a.classes or []) if c not in names]
    if unknown:
        raise SystemExit(f"shape_topology: unknown kind(s) {unknown}; the run's kinds are {names}")
    options = {k: ast.literal_eval(v) for k, v in (o.split("=", 1) for o in a.option)}
    if a.guidance is not None:
        options["guidance_scale"] = a.guidance
    judge = pipe.adapter.judge(pipe.config.data, pipe.info, device=pipe.device)
    print(f"{a.run}: {a.num} samples per kind and seed, seeds {a.seeds}, options {options or 'the run sample section'}")
    print(f"{'kind':<10} {'seed':>4} {'kind acc':>9} {'one piece':>9} {'topology':>9} {'strict':>7}")
    for c in a.classes or names:
        rows = [kind_figures(pipe, judge.classify, names.index(c), a.num, s, options) for s in a.seeds]
        for s, r in zip(a.seeds, rows):
            print(f"{c:<10} {s:>4} {r['kind']:>9.3f} {r['one_piece']:>9.3f} {r['topology']:>9.3f} {r['strict']:>7.3f}")
        mean = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
        print(
            f"{c:<10} {'all':>4} {mean['kind']:>9.3f} {mean['one_piece']:>9.3f} {mean['topology']:>9.3f} {mean['strict']:>7.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
