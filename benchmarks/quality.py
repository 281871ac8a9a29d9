"""Sample quality of full training runs, judged by something independent of the model.

    python benchmarks/quality.py                 # image, audio and voxel configs, end to end
    python benchmarks/quality.py image           # configs/image_digits.yaml only
    python benchmarks/quality.py audio --skip-train --run runs/quality_tones   # re-score a run

For each suite:

1. Runs ``multidiff train CONFIG`` exactly as a user would (a subprocess, timed wall clock), with
   the suite's full-length overrides (``FULL_LENGTH``: the shapes config trains 6000 steps instead
   of its 1200) unless ``--as-shipped``.
2. Builds a judge that does not depend on the model. Images: a
   :class:`~multidiff.metrics.FeatureClassifier` trained on 80% of the real data (cached), whose
   held-out accuracy is the ceiling. Tones: the fundamental frequency from the harmonic product
   spectrum, and log-mel statistics as features. Shapes: a 3D classifier trained on a separate,
   larger draw of shapes the model never sees; and on meshes (marching cubes of the samples): the watertight
   fraction, and coverage / minimum matching distance by Chamfer distance to held-out real shapes.
3. Draws ``--per-class`` samples of every class at each guidance scale and reports the fraction
   judged to be the class asked for, the worst class, and the Fréchet distance of the judge's
   features to held-out real data (beside real-train vs real-holdout, the floor).
4. Writes the samples (a PNG grid; WAVs and a spectrogram grid) and copies the picture to docs/demo/.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from multidiff.config import load_config
from multidiff.evaluate import Judge, classifier_judge, score_conditional, split_holdout
from multidiff.metrics import cached_classifier, class_accuracy, frechet_distance_features
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


SUITES = {
    "image": ("image_digits.yaml", "quality_digits", "digits_quality.png"),
    "audio": ("audio_tones.yaml", "quality_tones", "tones_quality.png"),
    "voxel": ("voxel_shapes.yaml", "quality_shapes", "shapes_quality.png"),
}
# The full-length run of a suite, where it differs from the config as shipped: the shapes config
# is sized to train in a few minutes on 2 CPU cores; its quality run trains 5x as many steps
# (36 min there; minutes on a GPU). ``--as-shipped`` trains the config itself.
FULL_LENGTH = {"voxel": ["train.steps=6000"]}


def image_judge(
    cfg, x: torch.Tensor, y: torch.Tensor, tr: torch.Tensor, ho: torch.Tensor, cache: str
) -> tuple[Judge, str]:
    """A classifier trained on 80% of the real images; its held-out accuracy is the ceiling."""
    t0 = time.perf_counter()
    clf = cached_classifier(
        x[tr], y[tr], cache_dir=cache, tag=f"quality:{cfg.adapter.name}:{cfg.adapter.describe(cfg.data)}"
    )
    acc = class_accuracy(clf, x[ho], y[ho])
    return classifier_judge(clf), (
        f"Judge: a classifier trained on 80% of the real data, {acc:.3f} accurate on the held-out 20% "
        f"({time.perf_counter() - t0:.0f} s to train or load)."
    )


JUDGE_PER_CLASS = 600  # shapes per class the voxel judge trains on


def shapes_judge_classifier(cfg, cache: str, device: str | None = None):
    """The 3D classifier that judges built-in shapes: trained on a separate, larger draw (seed 1,
    600 per class; the diffusion model never saw these) with the cube's 48 symmetries as
    augmentation; cached by content, so every script that asks gets the same network."""
    from modalities.voxel.data import shapes
    from modalities.voxel.metrics import random_cube_symmetry

    d = cfg.data
    big, _ = shapes(
        d.resolution,
        per_class=JUDGE_PER_CLASS,
        representation=d.representation,
        truncation=d.truncation,
        max_tilt=d.max_tilt,
        seed=1,
    )
    return cached_classifier(
        big.x,
        big.labels,
        cache_dir=cache,
        tag=f"quality:voxel-judge-v1:{cfg.adapter.describe(d)}",
        widths=(16, 32, 64),
        epochs=12,
        augment=random_cube_symmetry,
        device=device,
    )


def voxel_judge(cfg, x: torch.Tensor, y: torch.Tensor, tr: torch.Tensor, ho: torch.Tensor, cache: str):
    """Built-in shapes: a 3D classifier trained on a separate, larger draw of them (seed 1, 600 per
    class; the diffusion model never saw these) with the cube's 48 symmetries as augmentation,
    scored on the config's held-out 20%. A folder of meshes: as for images."""
    d = cfg.data
    if d.source != "shapes":
        return image_judge(cfg, x, y, tr, ho, cache)
    t0 = time.perf_counter()
    clf = shapes_judge_classifier(cfg, cache)
    acc = class_accuracy(clf, x[ho], y[ho])
    return classifier_judge(clf), (
        f"Judge: a 3D classifier trained on {JUDGE_PER_CLASS * clf.num_classes} other built-in shapes (seed 1), {acc:.3f} accurate on the "
        f"held-out 20% of the training shapes ({time.perf_counter() - t0:.0f} s to train or load)."
    )


def audio_judge(info, x: torch.Tensor, y: torch.Tensor, ho: torch.Tensor) -> tuple[Judge, str]:
    """Pitch from the spectrum and log-mel statistics: nothing trained, nothing shared with the model."""
    from modalities.audio.metrics import classify_pitch, mel_features

    sr, pitches = int(info.extra["sample_rate"]), list(info.extra["pitches_hz"])
    judge = Judge(lambda v: classify_pitch(v, pitches, sr), lambda v: mel_features(v, sr))
    acc = float((judge.classify(x[ho]) == y[ho]).float().mean())
    return judge, (
        f"Judge: the strongest partial in the tone set's pitch range ({acc:.3f} right on held-out real clips); "
        "Fréchet on log-mel statistics."
    )


def mesh_rows(pipe, real: torch.Tensor, scales: list[float], n_ref: int = 120, n_points: int = 512) -> list[str]:
    """Marching cubes on samples and on held-out real grids: watertight fraction, and coverage /
    minimum matching distance (Achlioptas et al. 2018) by Chamfer distance on surface points."""
    from modalities.voxel.io import grid_to_mesh
    from modalities.voxel.metrics import coverage_mmd, surface_points, watertight_fraction

    k = pipe.info.num_classes
    ref = [surface_points(grid_to_mesh(g), n_points) for g in real[:n_ref]]
    rows = [
        f"Meshes: marching cubes at level 0 (largest component); Chamfer on {n_points} surface points, "
        f"against {len(ref)} held-out real shapes.",
        "",
        "| guidance scale | watertight | COV | MMD (x1e3) | samples |",
        "|---:|---:|---:|---:|---:|",
    ]
    for scale in scales:
        labels = torch.arange(k).repeat_interleave(max(1, len(ref) // k))
        x, _ = pipe.generate(len(labels), labels=labels, guidance_scale=scale, seed=3)
        meshes = [grid_to_mesh(g) for g in x]
        cov, mmd = coverage_mmd([surface_points(m, n_points) for m in meshes], ref)
        wt = watertight_fraction(meshes)
        print(f"voxel guidance {scale:g}: watertight {wt:.3f}, COV {cov:.3f}, MMD {mmd:.2e}", flush=True)
        rows.append(f"| {scale:g} | {wt:.3f} | {cov:.3f} | {1e3 * mmd:.2f} | {len(meshes)} |")
    return rows


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


def run_suite(suite: str, args: argparse.Namespace) -> str:
    config_name, run_name, picture = SUITES[suite]
    config = args.config or str(ROOT / "configs" / config_name)
    run = Path(args.run or ROOT / "runs" / run_name)
    overrides = ([] if args.as_shipped or args.config else FULL_LENGTH.get(suite, [])) + args.set
    train_s = None if args.skip_train else train(config, run, overrides)
    cfg = load_config(config, overrides)
    ds, info = cfg.adapter.build_dataset(cfg.data)
    x, y = ds.x, ds.labels
    tr, ho = split_holdout(len(x), 0.2, seed=0)
    if suite == "image":
        judge, judge_line = image_judge(cfg, x, y, tr, ho, args.cache)
    elif suite == "voxel":
        judge, judge_line = voxel_judge(cfg, x, y, tr, ho, args.cache)
    else:
        judge, judge_line = audio_judge(info, x, y, ho)
    floor = frechet_distance_features(judge.features(x[tr]), judge.features(x[ho]))

    pipe = load_pipeline(str(run))
    rows = []
    for scale in [float(s) for s in args.scales.split(",")]:
        sc = score_conditional(
            pipe, judge, x[ho], per_class=args.per_class, guidance_scale=scale, seed=1, steps=args.steps
        )
        rows.append(sc)
        print(
            f"{suite} guidance {scale:g}: accuracy {sc.accuracy:.3f}, worst class {min(sc.per_class):.3f}, "
            f"Fréchet {sc.frechet:.2f} ({sc.seconds:.1f}s for {sc.n} samples)",
            flush=True,
        )

    s = pipe.config.run.sample
    n_show = 100 if suite == "image" else 2 * pipe.info.num_classes
    shown, labels = pipe.generate(n_show, guidance_scale=s.guidance_scale, seed=0)
    written = pipe.adapter.save_samples(shown, ROOT / "runs" / f"{run_name}_samples", pipe.info, labels=labels)
    pic = next(p for p in written if p.suffix == ".png")
    (ROOT / "docs" / "demo").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(pic, ROOT / "docs" / "demo" / picture)

    lines = [
        f"### {suite}: `{Path(config).name}`",
        "",
        f"{pipe.checkpoint.step} steps, {pipe.checkpoint.meta['parameters']:,} parameters, sampler {s.sampler} "
        f"with {args.steps or s.steps} steps. "
        + (f"`multidiff train` wall clock: {train_s:.0f} s." if train_s is not None else "Existing run."),
        f"{judge_line} Fréchet real-train vs real-holdout (the floor): {floor:.2f}.",
        "",
        "| guidance scale | class accuracy | worst class | Fréchet | samples |",
        "|---:|---:|---:|---:|---:|",
        *[
            f"| {r.guidance_scale:g} | {r.accuracy:.3f} | {min(r.per_class):.3f} | {r.frechet:.2f} | {r.n} |"
            for r in rows
        ],
    ]
    if suite == "voxel":
        lines += ["", *mesh_rows(pipe, x[ho], scales=[float(v) for v in args.scales.split(",")])]
    if suite == "image" and args.inception_weights:
        from modalities.image.fid import fid, inception_network

        net = inception_network(args.inception_weights)
        x_fid, _ = pipe.generate(len(ho), guidance_scale=s.guidance_scale, seed=2)
        lines.append(
            f"\nFID (Inception-v3 pool features, {len(ho)} samples vs held-out real): {fid(x_fid, x[ho], net):.2f}"
        )
    table = "\n".join(lines)
    print("\n" + table + f"\n\nwrote {pic} (copied to docs/demo/{picture})\n", flush=True)
    return table


if __name__ == "__main__":
    sys.exit(main())
