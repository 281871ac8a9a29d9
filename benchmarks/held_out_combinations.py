"""Attribute accuracy of a text-conditioned run per held-out combination (issue 23).

    python -m benchmarks.held_out_combinations runs/voxel_shapes_text [--num 120] [--guidance 2] [--composed]

``multidiff eval`` reports each attribute's accuracy over all prompts of a split; this breaks the
held-out split down by the combination kept out of training (``info.extra["held_out"]``), and the
seen split by the values of the ``--by`` attributes, and says what was drawn instead of the
first attribute (a shape's kind, a tone's pitch). The prompts, the samples and the judge are those
of :func:`multidiff.evaluate.score_attributes` (the same seed, so the same prompts as ``multidiff
eval`` with the same ``--num`` and ``--guidance``). Works for every captioned built-in set.
``--composed``: the prompts are the combinations' factor captions joined by AND, sampled by
composable guidance (``multidiff eval --composed``).
"""

from __future__ import annotations

import argparse
import collections
import sys
from typing import Any

import torch

from multidiff.evaluate import score_attributes
from multidiff.pipeline import load_pipeline


def prompt_values(pipe: Any, judge: Any, split: str, num: int, seed: int) -> list[dict[str, str]]:
    """The attribute values behind each prompt of ``split``, drawn as ``score_attributes`` draws them."""
    xr, codes = judge.real[split]
    n = len(xr)
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(n, generator=g)[:num] if n >= num else torch.randint(n, (num,), generator=g)
    return [{a: judge.values[a][int(codes[a][i])] for a in judge.values} for i in pick.tolist()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a text-conditioned run folder or checkpoint")
    ap.add_argument("--num", type=int, default=120, help="prompts per split")
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument(
        "--by",
        default=None,
        help="attributes the seen prompts are grouped by, comma-separated (default: the first three)",
    )
    ap.add_argument("--composed", action="store_true", help="prompts composed of their factors' captions (AND)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    pipe = load_pipeline(args.run, device=args.device)
    judge = pipe.adapter.judge(pipe.config.data, pipe.info, device=pipe.device).attributes
    if judge is None:
        sys.exit(f"{args.run}: not a text-conditioned run on a captioned built-in set (no attribute judge)")
    names = list(judge.values)
    first = names[0]
    by = names[:3] if args.by is None else args.by.split(",")
    if unknown := [a for a in by if a not in names]:
        sys.exit(f"--by: unknown attributes {unknown}; this run's: {', '.join(names)}")
    held = pipe.info.extra.get("held_out", [])
    out = score_attributes(pipe, judge, args.num, guidance_scale=args.guidance, composed=args.composed)
    seed = pipe.options(None, guidance_scale=args.guidance).seed
    for split in ("seen", "held_out"):
        acc = out["samples"][split]
        print(f"{split}: " + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()))
        values = prompt_values(pipe, judge, split, args.num, seed)
        got = judge.measure(out["x"][split])
        groups: dict[str, list[int]] = collections.defaultdict(list)
        for i, v in enumerate(values):
            if split == "held_out":
                key = next(
                    (", ".join(f"{k}={h[k]}" for k in h) for h in held if all(v[k] == x for k, x in h.items())), "?"
                )
            else:
                key = ", ".join(v[a] for a in by)
            groups[key].append(i)
        print(f"| {split} combination | n | " + " | ".join(names) + f" | drawn {first} |")
        print("|---|---:|" + "---:|" * len(names) + "---|")
        for key, idx in sorted(groups.items()):
            ok = [sum(judge.values[a][int(got[a][i])] == values[i][a] for i in idx) / len(idx) for a in names]
            drawn = collections.Counter(judge.values[first][int(got[first][i])] for i in idx)
            print(
                f"| {key} | {len(idx)} | "
                + " | ".join(f"{v:.2f}" for v in ok)
                + " | "
                + ", ".join(f"{k} {c}" for k, c in drawn.most_common())
                + " |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
