"""Sample quality of a full training run, measured by a classifier trained independently of it.

    python benchmarks/quality.py                                  # configs/image_digits.yaml, end to end
    python benchmarks/quality.py --skip-train --run runs/quality_digits   # re-score an existing run

1. Runs ``multidiff train CONFIG`` exactly as a user would (a subprocess, timed wall clock).
2. Trains a :class:`~multidiff.metrics.FeatureClassifier` on 80% of the same real data (cached),
   and reports its accuracy on the held-out 20%: the ceiling for what samples can score.
3. Draws ``--per-class`` samples of every class at each guidance scale and reports the fraction
   recognised as the class asked for, the worst class, and the Fréchet distance of the
   classifier's features to the held-out real data (beside real-train vs real-holdout, the floor).
4. Writes the sample grid (one digit per column) for the README.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from multidiff.config import load_config
from multidiff.evaluate import score_conditional, split_holdout
from multidiff.metrics import cached_classifier, class_accuracy, extract_features, frechet_distance_features
from multidiff.pipeline import load_pipeline

ROOT = Path(__file__).resolve().parent.parent


def train(config: str, run: Path, overrides: list[str]) -> float:
    cmd = [
        sys.executable,
        "-m",
        "multidiff.cli",
        "train",
        config,
        "--out-dir",
        str(run),
        "--set",
        "train.progress=false",
    ]
    for o in overrides:
        cmd += ["--set", o]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "image_digits.yaml"))
    p.add_argument("--set", action="append", default=[], help="config overrides for the training run")
    p.add_argument("--run", default=str(ROOT / "runs" / "quality_digits"), help="run folder")
    p.add_argument("--skip-train", action="store_true", help="score the newest checkpoint in --run")
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--scales", default="1,2,3", help="guidance scales to score")
    p.add_argument("--steps", type=int, help="sampler steps (default: the config's)")
    p.add_argument("--grid", default=str(ROOT / "docs" / "demo" / "digits_quality.png"))
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "multidiff" / "classifiers"))
    p.add_argument("--out", help="also write the markdown table here")
    p.add_argument("--inception-weights", help="torchvision inception_v3 state dict: also report standard FID")
    args = p.parse_args(argv)
    run = Path(args.run)

    train_s = None if args.skip_train else train(args.config, run, args.set)
    cfg = load_config(args.config, args.set)
    ds, info = cfg.adapter.build_dataset(cfg.data)
    x, y = ds.x, ds.labels
    tr, ho = split_holdout(len(x), 0.2, seed=0)
    t0 = time.perf_counter()
    clf = cached_classifier(
        x[tr], y[tr], cache_dir=args.cache, tag=f"quality:{cfg.adapter.name}:{cfg.adapter.describe(cfg.data)}"
    )
    clf_s = time.perf_counter() - t0
    clf_acc = class_accuracy(clf, x[ho], y[ho])
    floor = frechet_distance_features(extract_features(clf, x[tr]), extract_features(clf, x[ho]))

    pipe = load_pipeline(str(run))
    rows = []
    for scale in [float(s) for s in args.scales.split(",")]:
        sc = score_conditional(
            pipe, clf, x[ho], per_class=args.per_class, guidance_scale=scale, seed=1, steps=args.steps
        )
        rows.append(sc)
        print(
            f"guidance {scale:g}: accuracy {sc.accuracy:.3f}, worst class {min(sc.per_class):.3f}, "
            f"Fréchet {sc.frechet:.2f} ({sc.seconds:.1f}s for {sc.n} samples)",
            flush=True,
        )

    s = pipe.config.run.sample
    grid_x, labels = pipe.generate(100, guidance_scale=s.guidance_scale, seed=0)
    grid = pipe.adapter.save_samples(grid_x, Path(args.grid), pipe.info, labels=labels)[0]

    lines = [
        f"Run: `{Path(args.config).name}` ({pipe.checkpoint.step} steps, "
        f"{pipe.checkpoint.meta['parameters']:,} parameters), sampler {s.sampler} with {args.steps or s.steps} steps.",
        f"Training wall clock: {train_s:.0f} s." if train_s is not None else "Training: existing run.",
        f"Independent classifier: {clf_acc:.3f} accuracy on held-out real digits ({clf_s:.0f} s to train or load); "
        f"Fréchet distance real-train vs real-holdout (the floor): {floor:.2f}.",
        "",
        "| guidance scale | class accuracy | worst class | Fréchet (classifier features) | samples |",
        "|---:|---:|---:|---:|---:|",
        *[
            f"| {r.guidance_scale:g} | {r.accuracy:.3f} | {min(r.per_class):.3f} | {r.frechet:.2f} | {r.n} |"
            for r in rows
        ],
    ]
    if args.inception_weights:
        from modalities.image.fid import fid, inception_network

        net = inception_network(args.inception_weights)
        x_fid, _ = pipe.generate(len(ho), guidance_scale=s.guidance_scale, seed=2)
        lines.append(
            f"\nFID (Inception-v3 pool features, {len(ho)} samples vs held-out real): {fid(x_fid, x[ho], net):.2f}"
        )
    table = "\n".join(lines)
    print("\n" + table)
    print(f"\nwrote {grid}")
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
