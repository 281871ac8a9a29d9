"""``multidiff eval RUN``: judge a trained run by something independent of the model.

Draws ``--num`` samples of every class (:func:`multidiff.evaluate.evaluate_run`), scores them with
the run's modality judge (:meth:`multidiff.modality.Modality.judge`) and prints the figures as a
table; ``--json OUT`` also writes them. Exit codes as for every command: 0 success, 1 a failure
while running, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from .options import add_sample_flags, sample_overrides, sampling_options

__all__ = ["add_parser", "attribute_table", "format_report"]


def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        parsed: Any = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip(), parsed


def format_report(report: dict[str, Any]) -> str:
    """The text ``multidiff eval`` prints for :func:`~multidiff.evaluate.evaluate_run`'s report (or
    :func:`~multidiff.autoencoder.evaluate_reconstructions`' for an autoencoder run)."""
    s = report["settings"]
    table = report.get("attributes")
    in_table = {f"{a}_{split}" for a in [*table["chance"], "all"] for split in table} if table else set()
    if s.get("task") == "autoencoder":
        head = (
            f"multidiff eval: {s['checkpoint']} (step {s['step']}, {s['modality']} autoencoder, latent "
            f"{tuple(s['latent_shape'])}), {s['examples']} {'held-out' if s['holdout'] else 'training'} examples "
            "reconstructed"
        )
    else:
        per = " prompts per split" if table else " samples per class" if s["num_classes"] else " samples"
        head = (
            f"multidiff eval: {s['checkpoint']} (step {s['step']}, {s['modality']}), {s['num_per_class']}{per}, "
            f"sampler {s['sampler']} with {s['steps']} steps, guidance {s['guidance_scale']:g}, seed {s['seed']}"
            + (", prompts composed of their factors (AND)" if s.get("composed") else "")
        )
    lines = [head, f"judge: {report['judge']}", "", f"{'figure':<24}{'value':>12}  meaning"]
    for name, value in report["figures"].items():
        if name in in_table:
            continue  # in the attribute table below
        if name in ("samples", "examples"):
            text = f"{int(value)}"
        elif isinstance(value, float) and math.isfinite(value) and value != 0 and abs(value) < 1e-2:
            text = f"{value:.3e}"
        else:
            text = f"{value:.3f}"
        lines.append(f"{name:<24}{text:>12}  {report['help'].get(name, '')}".rstrip())
    if table:
        lines += ["", attribute_table(table)]
    if report["per_class"]:
        lines += ["", "per class: " + ", ".join(f"{k} {v:.3f}" for k, v in report["per_class"].items())]
    return "\n".join(lines)


def _task(run: str) -> str:
    """The ``task`` of a run or checkpoint folder (``diffusion`` for anything else: a diffusers folder)."""
    from ..checkpoint import find_checkpoint

    try:
        return str(find_checkpoint(run).meta.get("task", "diffusion"))
    except ValueError:
        return "diffusion"  # not a checkpoint: load_pipeline says what it is


def attribute_table(table: dict[str, dict[str, float]]) -> str:
    """The per-attribute accuracies of a text run's report (``report["attributes"]``) as a table:
    a row per attribute, a column per split (samples, then real data: the ceiling, then chance)."""
    names = [*table["chance"], "all"]
    columns = [c for c in ("seen", "held_out", "real_seen", "real_held_out", "chance") if c in table]
    heads = {"seen": "seen", "held_out": "held-out", "real_seen": "real seen", "real_held_out": "real held-out"}
    lines = [f"{'attribute':<14}" + "".join(f"{heads.get(c, c):>15}" for c in columns)]
    for name in names:
        cells = [table[c].get(name, math.nan) for c in columns]
        lines.append(f"{name:<14}" + "".join(f"{v:>15.3f}" if math.isfinite(v) else f"{'-':>15}" for v in cells))
    lines.append("(fraction of samples whose attribute is the prompt's; real: the judge on real examples, its ceiling)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..pipeline import load_pipeline

    if args.num is not None and args.num < 1:
        raise ValueError(f"--num must be at least 1, got {args.num}")
    if _task(args.run) == "autoencoder":
        from ..autoencoder import evaluate_reconstructions

        given = [f"--{f.replace('_', '-')}" for f in ("judge_option", "cache", "composed") if getattr(args, f)]
        given += [f"sampling option {k}" for k in sample_overrides(args)]
        if given:
            raise ValueError(f"{given[0]} is for diffusion runs; {args.run} is an autoencoder run")
        report = evaluate_reconstructions(args.run, num=args.num, device=args.device)
    else:
        pipe = load_pipeline(args.run, device=args.device)
        report = pipe.evaluate(
            50 if args.num is None else args.num,
            sample=sampling_options(pipe, args),
            judge_options=dict(args.judge_option),
            cache_dir=args.cache,
            composed=args.composed,
        )
    print(format_report(report))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``eval`` to the ``multidiff`` subcommands ``sub`` (an argparse subparsers object)."""
    e = sub.add_parser(
        "eval",
        help="judge a trained run: class accuracy, Fréchet distance and the modality's figures "
        "(an autoencoder run: its reconstructions of held-out data)",
    )
    e.add_argument("run", metavar="RUN", help="a run folder (its newest checkpoint) or a checkpoint folder")
    e.add_argument(
        "-n",
        "--num",
        type=int,
        default=None,
        help="samples per class (an unconditional model: in all; a text run: prompts of seen and of held-out "
        "attribute combinations each; default 50); for an autoencoder run, held-out examples to reconstruct "
        "(default: all)",
    )
    e.add_argument("--device", default="auto")
    e.add_argument("--json", metavar="OUT", help="also write the figures, settings and judge as JSON")
    e.add_argument(
        "--judge-option",
        type=_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the modality's judge (voxel: judge_per_class=600, judge_epochs=12; "
        "image: inception_weights=FILE; any: epochs=10 for the generic classifier)",
    )
    e.add_argument(
        "--composed",
        action="store_true",
        help="a text run on a captioned built-in set: prompt with each combination's factor captions joined by "
        "AND (composable guidance: 'a small shape AND a cone lying on its side AND a shape on the left')",
    )
    e.add_argument("--cache", help="folder of the judges' cached classifiers (default: $MULTIDIFF_CACHE/classifiers)")
    add_sample_flags(e, exclude=("num_samples",))
    e.set_defaults(func=run)
    return e
