"""``multidiff sample RUN|--diffusers PATH [--class C] [--prompt TEXT] [-n N] [any sampling option]``: new
examples as the modality's files (PNG grids for a 2D model, WAVs for a 1D one...). A text model's
prompts (``--prompt``, repeatable: one for all or one per sample; ``--negative-prompt``) and an output
checker's counts (``--checker``) are written beside them as ``<out>.json``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from .options import add_model_args, add_sample_flags, load_model, sampling_options


def run(args: argparse.Namespace) -> int:
    pipe = load_model(args)
    s = sampling_options(pipe, args)
    t0 = time.perf_counter()
    made = pipe.sample(s.num_samples, labels=pipe.label(args.class_label, "--class"), sample=s)
    out = Path(args.out) if args.out else pipe.output_root / "samples" / f"sample_seed{s.seed}"
    paths = pipe.save(made, out)  # with a text model's prompts and the checker's counts: <out>.json
    print(f"sampled {s.num_samples} in {time.perf_counter() - t0:.1f}s from {pipe.source}")
    if made.screening is not None:
        print(made.screening.summary())
    for p in paths:
        print(f"wrote {p}")
    return 0


def add_parser(sub: Any) -> None:
    sa = sub.add_parser("sample", help="sample a trained model")
    add_model_args(sa)
    sa.add_argument("--class", dest="class_label", help="class index or name (default: every class in turn)")
    sa.add_argument("--device", default="auto")
    sa.add_argument("--out", help="output path (default: <run or diffusers folder>/samples/sample_seed<seed>)")
    add_sample_flags(sa)
    sa.set_defaults(func=run)
