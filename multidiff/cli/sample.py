"""``multidiff sample RUN [--class C] [-n N] [any sampling option]``: new examples as the modality's files."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from .options import add_sample_flags, sampling_options


def run(args: argparse.Namespace) -> int:
    from ..pipeline import load_pipeline

    pipe = load_pipeline(args.checkpoint, device=args.device)
    s = sampling_options(pipe, args)
    t0 = time.perf_counter()
    x, labels = pipe.sample(s.num_samples, labels=pipe.label(args.class_label, "--class"), sample=s)
    out = Path(args.out) if args.out else pipe.checkpoint.path.parent.parent / "samples" / f"sample_seed{s.seed}"
    paths = pipe.save(x, out, labels)
    print(
        f"sampled {s.num_samples} in {time.perf_counter() - t0:.1f}s from {pipe.checkpoint.path} "
        f"(step {pipe.checkpoint.step})"
    )
    for p in paths:
        print(f"wrote {p}")
    return 0


def add_parser(sub: Any) -> None:
    sa = sub.add_parser("sample", help="sample a trained model")
    sa.add_argument("checkpoint", help="a checkpoint folder, or a run folder (its newest checkpoint)")
    sa.add_argument("--class", dest="class_label", help="class index or name (default: every class in turn)")
    sa.add_argument("--device", default="auto")
    sa.add_argument("--out", help="output path (default: <run>/samples/sample_seed<seed>)")
    add_sample_flags(sa)
    sa.set_defaults(func=run)
