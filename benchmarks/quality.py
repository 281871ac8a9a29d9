"""Sample quality of full training runs, judged by something independent of the model.

    python -m benchmarks.quality                 # image, audio and voxel configs, end to end
    python -m benchmarks.quality image           # configs/image_digits.yaml only
    python -m benchmarks.quality audio --skip-train --run runs/quality_tones   # re-score a run

For each suite:

1. Runs ``multidiff train CONFIG`` exactly as a user would (a subprocess, timed wall clock), with
   the suite's full-length overrides (``FULL_LENGTH``: the shapes config trains 6000 steps instead
   of its 1200) unless ``--as-shipped``.
2. Judges the run with the library's evaluation, what ``multidiff eval RUN`` prints
   (:func:`multidiff.evaluate.evaluate_run` with the modality's judge,
   :meth:`multidiff.modality.Modality.judge`). Images: a classifier trained on 80% of the real data
   (cached), whose held-out accuracy is the ceiling. Tones: the fundamental frequency from the
   spectrum, and log-mel statistics as features. Shapes: a 3D classifier trained on a separate,
   larger draw of shapes the model never sees; and on meshes (marching cubes of the samples): the
   fraction in one piece before the largest is kept, the watertight fraction, and coverage /
   minimum matching distance by Chamfer distance to held-out real shapes.
3. Draws ``--per-class`` samples of every class (seed 1) at each guidance scale and reports the
   fraction judged to be the class asked for, the worst class, and the Fréchet distance of the
   judge's features to held-out real data (beside real-train vs real-holdout, the floor).
4. Writes the samples (a PNG grid; WAVs and a spectrogram grid) and copies the picture to
   docs/demo/ (not with ``--no-pictures``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import ROOT, train_run
from multidiff.evaluate import Judge, evaluate_run
from multidiff.pipeline import Pipeline, load_pipeline

SUITES = {
    "image": ("image_digits.yaml", "quality_digits", "digits_quality.png"),
    "audio": ("audio_tones.yaml", "quality_tones", "tones_quality.png"),
    "voxel": ("voxel_shapes.yaml", "quality_shapes", "shapes_quality.png"),
}
# The full-length run of a suite, where it differs from the config as shipped: the shapes config
# is sized to train in a few minutes on 2 CPU cores; its quality run trains 5x as many steps
# (36 min there; minutes on a GPU). ``--as-shipped`` trains the config itself.
FULL_LENGTH = {"voxel": ["train.steps=6000"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "suite", nargs="?", choices=[*SUITES, "all"], default="all", help="which modality's config (default: all)"
    )
    p.add_argument("--config", help="another config of the suite's modality")
    p.add_argument("--set", action="append", default=[], help="config overrides for the training run")
    p.add_argument(
        "--as-shipped",
        action="store_true",
        help="train the config as shipped, without the suite's full-length overrides (voxel: train.steps=6000)",
    )
    p.add_argument("--run", help="run folder (default runs/quality_<data>)")
    p.add_argument("--skip-train", action="store_true", help="score the newest checkpoint in --run")
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--scales", default="1,2,3", help="guidance scales to score")
    p.add_argument("--steps", type=int, help="sampler steps (default: the config's)")
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "multidiff" / "classifiers"))
    p.add_argument("--out", help="also write the markdown tables here")
    p.add_argument("--threads", type=int, help="torch threads for scoring (and train.threads); 1 on a busy machine")
    p.add_argument("--inception-weights", help="torchvision inception_v3 state dict: also report standard FID (images)")
    p.add_argument("--no-pictures", action="store_true", help="write no samples and leave docs/demo/ alone")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        args.set = [*args.set, f"train.threads={args.threads}"]
    tables = []
    for suite in SUITES if args.suite == "all" else [args.suite]:
        tables.append(run_suite(suite, args))
    if args.out:
        Path(args.out).write_text("\n\n".join(tables) + "\n")
    return 0


def score_run(
    pipe: Pipeline,
    *,
    scales: Sequence[float],
    per_class: int,
    cache: str | Path,
    steps: int | None = None,
    seed: int = 1,
    judge_options: Mapping[str, Any] | None = None,
    label: str = "",
) -> tuple[Judge, list[dict[str, Any]]]:
    """The judge of ``pipe``'s modality (built once: classifiers trained or loaded from ``cache``)
    and one :func:`multidiff.evaluate.evaluate_run` report per guidance scale: ``per_class``
    samples of every class, drawn with ``seed``, as ``multidiff eval`` draws them. Prints a line per
    scale (prefixed by ``label``)."""
    judge = pipe.adapter.judge(
        pipe.config.data, pipe.info, cache_dir=cache, device=pipe.device, **(judge_options or {})
    )
    reports = []
    for scale in scales:
        r = evaluate_run(pipe, judge=judge, num_per_class=per_class, guidance_scale=scale, seed=seed, steps=steps)
        reports.append(r)
        f = r["figures"]
        acc = f.get("class_accuracy", f.get("pitch_accuracy"))
        print(
            f"{label} guidance {scale:g}: accuracy {acc:.3f}, worst class {f['worst_class_accuracy']:.3f}, "
            f"Fréchet {f['frechet']:.2f} ({f['seconds']:.1f}s for {int(f['samples'])} samples)",
            flush=True,
        )
    return judge, reports


def run_suite(suite: str, args: argparse.Namespace) -> str:
    config_name, run_name, picture = SUITES[suite]
    config = args.config or str(ROOT / "configs" / config_name)
    run = Path(args.run or ROOT / "runs" / run_name)
    overrides = ([] if args.as_shipped or args.config else FULL_LENGTH.get(suite, [])) + args.set
    train_s = None if args.skip_train else train_run(config, run, overrides)
    pipe = load_pipeline(str(run))
    options = {"inception_weights": args.inception_weights} if suite == "image" and args.inception_weights else {}
    judge, reports = score_run(
        pipe,
        scales=[float(v) for v in args.scales.split(",")],
        per_class=args.per_class,
        cache=args.cache,
        steps=args.steps,
        judge_options=options,
        label=suite,
    )

    s = pipe.config.run.sample
    pic = None
    if not args.no_pictures:
        n_show = 100 if suite == "image" else 2 * pipe.info.num_classes
        shown, labels = pipe.sample(n_show, guidance_scale=s.guidance_scale, seed=0)
        written = pipe.adapter.save_samples(shown, ROOT / "runs" / f"{run_name}_samples", pipe.info, labels=labels)
        pic = next(p for p in written if p.suffix == ".png")
        (ROOT / "docs" / "demo").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pic, ROOT / "docs" / "demo" / picture)

    floor = judge.figures.get("frechet_floor", float("nan"))
    lines = [
        f"### {suite}: `{Path(config).name}`",
        "",
        f"{pipe.checkpoint.step} steps, {pipe.checkpoint.meta['parameters']:,} parameters, sampler {s.sampler} "
        f"with {args.steps or s.steps} steps. "
        + (f"`multidiff train` wall clock: {train_s:.0f} s." if train_s is not None else "Existing run."),
        f"Judge: {judge.description}. Fréchet real-train vs real-holdout (the floor): {floor:.2f}.",
        "",
        "| guidance scale | class accuracy | worst class | Fréchet | samples |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in reports:
        f = r["figures"]
        acc = f.get("class_accuracy", f.get("pitch_accuracy"))
        lines.append(
            f"| {r['settings']['guidance_scale']:g} | {acc:.3f} | {f['worst_class_accuracy']:.3f} | "
            f"{f['frechet']:.2f} | {int(f['samples'])} |"
        )
    if suite == "voxel":
        lines += [
            "",
            "Meshes of the same samples: marching cubes at level 0; one piece and watertight counted before the "
            "largest piece is kept, Chamfer (on the largest piece, as exported) against held-out real shapes.",
            "",
            "| guidance scale | one piece | watertight | COV | MMD (x1e3) | samples |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for r in reports:
            f = r["figures"]
            lines.append(
                f"| {r['settings']['guidance_scale']:g} | {f['single_piece_fraction']:.3f} | "
                f"{f['watertight_fraction']:.3f} | {f['coverage']:.3f} | {1e3 * f['mmd']:.2f} | {int(f['samples'])} |"
            )
    if "fid" in reports[0]["figures"]:
        lines.append(
            "\nFID (Inception-v3 pool features, samples vs held-out real): "
            + ", ".join(f"{r['figures']['fid']:.2f} at guidance {r['settings']['guidance_scale']:g}" for r in reports)
        )
    table = "\n".join(lines)
    print("\n" + table + (f"\n\nwrote {pic} (copied to docs/demo/{picture})" if pic else "") + "\n", flush=True)
    return table


if __name__ == "__main__":
    sys.exit(main())
