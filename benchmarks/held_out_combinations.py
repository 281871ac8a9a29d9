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

``--reference RUN2``: the same held-out prompts scored on a second run of the same config trained on
every combination (``--set data.split=all``), side by side. A held-out split can be harder than
the seen one whatever the model composes (its combinations are not drawn to be as hard as the seen
ones: a small lying cone is a few voxels across); the reference's accuracy on the same prompts is
what the run would score had it seen them, so ``run - reference`` is what not having seen them costs.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
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


def breakdown(
    pipe: Any, judge: Any, out: dict[str, Any], split: str, num: int, seed: int, by: list[str]
) -> dict[str, tuple[list[int], list[float], collections.Counter[str]]]:
    """Per group of ``split``'s prompts (a held-out combination, or the seen prompts' values of
    ``by``): the prompts' indices, each attribute's accuracy, and what was drawn of the first attribute."""
    names = list(judge.values)
    held = pipe.info.extra.get("held_out", [])
    values = prompt_values(pipe, judge, split, num, seed)
    got = judge.measure(out["x"][split])
    groups: dict[str, list[int]] = collections.defaultdict(list)
    for i, v in enumerate(values):
        if split == "held_out":
            key = next((", ".join(f"{k}={h[k]}" for k in h) for h in held if all(v[k] == x for k, x in h.items())), "?")
        else:
            key = ", ".join(v[a] for a in by)
        groups[key].append(i)
    return {
        key: (
            idx,
            [sum(judge.values[a][int(got[a][i])] == values[i][a] for i in idx) / len(idx) for a in names],
            collections.Counter(judge.values[names[0]][int(got[names[0]][i])] for i in idx),
        )
        for key, idx in sorted(groups.items())
    }


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
    ap.add_argument(
        "--reference",
        default=None,
        help="a run of the same config trained on every combination (data.split=all): the held-out prompts scored on it too",
    )
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
    ref = None
    if args.reference is not None:
        ref = load_pipeline(args.reference, device=args.device)
        if ref.info.extra.get("held_out", []) != held:
            sys.exit(f"--reference {args.reference}: its data keeps out other combinations than {args.run}'s")
        if ref.info.extra.get("split") != "all":
            print(f"note: --reference {args.reference} was trained on split {ref.info.extra.get('split')!r}, not 'all'")
    out = score_attributes(pipe, judge, args.num, guidance_scale=args.guidance, composed=args.composed)
    seed = pipe.options(None, guidance_scale=args.guidance).seed
    tables = {}
    for split in ("seen", "held_out"):
        acc = out["samples"][split]
        print(f"{split}: " + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()))
        print(f"| {split} combination | n | " + " | ".join(names) + f" | drawn {first} |")
        print("|---|---:|" + "---:|" * len(names) + "---|")
        tables[split] = breakdown(pipe, judge, out, split, args.num, seed, by)
        for key, (idx, ok, drawn) in tables[split].items():
            print(
                f"| {key} | {len(idx)} | "
                + " | ".join(f"{v:.2f}" for v in ok)
                + " | "
                + ", ".join(f"{k} {c}" for k, c in drawn.most_common())
                + " |"
            )
    if ref is not None:
        # the reference's own judge on the held-out split alone (its seen split is every combination):
        # the run's held-out prompts, the same real examples drawn with the same seed
        ref_judge = ref.adapter.judge(ref.config.data, ref.info, device=ref.device).attributes
        ref_judge = dataclasses.replace(ref_judge, real={"held_out": ref_judge.real["held_out"]})
        theirs = score_attributes(
            ref, ref_judge, args.num, guidance_scale=args.guidance, composed=args.composed, seed=seed
        )
        if theirs["prompts"]["held_out"] != out["prompts"]["held_out"]:
            sys.exit("--reference: its held-out prompts differ from the run's (another data set?)")
        mine = tables["held_out"]
        other = breakdown(ref, ref_judge, theirs, "held_out", args.num, seed, by)
        print(f"held_out, this run / the reference {args.reference} (the same prompts):")
        print("| held-out combination | n | " + " | ".join(names) + f" | reference drawn {first} |")
        print("|---|---:|" + "---:|" * len(names) + "---|")
        rows = [("all", out["samples"]["held_out"], theirs["samples"]["held_out"], None)]
        rows += [(k, dict(zip(names, mine[k][1])), dict(zip(names, other[k][1])), other[k]) for k in mine]
        for key, a, b, o in rows:
            n = args.num if o is None else len(o[0])
            drawn = "" if o is None else ", ".join(f"{k} {c}" for k, c in o[2].most_common())
            print(f"| {key} | {n} | " + " | ".join(f"{a[x]:.2f} / {b[x]:.2f}" for x in names) + f" | {drawn} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
