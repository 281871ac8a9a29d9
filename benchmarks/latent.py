"""Latent against pixel diffusion on the same data and judge, at equal total training time.

A latent model's training time is its autoencoder's plus its own (Rombach et al. 2022 count the
first stage once and reuse it; here it is charged in full to the one latent model). The pixel
model of the same data at the same resolution gets that much training time: its steps are set
from a probe of its seconds per step, so its learning-rate schedule still completes. Both are
judged by the modality's own judge (``multidiff eval``: class accuracy for digits, pitch accuracy
for tones, kind accuracy for shapes) on decoded samples, and timed per sample with the same
sampler, steps and guidance.

    python -m benchmarks.latent --suite digits --ae runs/image_digits_ae     # reuse a trained autoencoder
    python -m benchmarks.latent --suite digits                               # train it too
    python -m benchmarks.latent --suite digits --skip-train --root runs/bench_latent  # score the runs again

Training times are the training loops' own clocks (``elapsed_s`` of each run's last
``metrics.csv`` row): process start, data building and the latent run's one encoding pass are
left out of all three (the encoding is printed apart). Periodic samples are off in the pixel run,
which gives it the whole budget. One process at a time, ``train.threads`` as given.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import ROOT, markdown_table, median_time, train_run

SUITES: dict[str, dict[str, Any]] = {
    "digits": {
        "ae": "configs/image_digits_ae.yaml",
        "latent": "configs/image_digits_latent.yaml",
        "pixel": "configs/image_digits.yaml",
        "pixel_set": ["data.size=32"],
        "accuracy": "class_accuracy",
    },
    "tones": {
        "ae": "configs/audio_tones_ae.yaml",
        "latent": "configs/audio_tones_latent.yaml",
        "pixel": "configs/audio_tones.yaml",
        "pixel_set": [],
        "accuracy": "pitch_accuracy",
    },
    "shapes": {
        "ae": "configs/voxel_shapes_ae.yaml",
        "latent": "configs/voxel_shapes_latent.yaml",
        "pixel": "configs/voxel_shapes.yaml",
        "pixel_set": ["data.resolution=32", "data.truncation=3.0"],
        "accuracy": "class_accuracy",
    },
}


def loop_seconds(run: Path) -> tuple[float, int]:
    """``(elapsed_s, step)`` of a run's last metrics row: its training loop's wall clock."""
    with open(Path(run) / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{run}/metrics.csv has no rows")
    return float(rows[-1]["elapsed_s"]), int(rows[-1]["step"])


def has_checkpoint(run: Path) -> bool:
    return (Path(run) / "checkpoints").is_dir() and any((Path(run) / "checkpoints").iterdir())


def pixel_steps(config: str, sets: list[str], probe: Path, budget: float, threads: int, probe_steps: int) -> int:
    """Steps of the pixel config that fill ``budget`` seconds, from a probe run's seconds per step
    (its first ``probe_steps // 4`` steps, the warm-up of allocators and caches, left out)."""
    if not has_checkpoint(probe):
        train_run(
            config,
            probe,
            [
                *sets,
                f"train.steps={probe_steps}",
                f"train.log_every={max(1, probe_steps // 4)}",
                "train.sample_every=0",
                f"train.checkpoint_every={probe_steps}",
                f"train.threads={threads}",
            ],
            log=probe / "train.log",
        )
    with open(probe / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    (s0, t0), (s1, t1) = (
        (int(rows[0]["step"]), float(rows[0]["elapsed_s"])),
        (
            int(rows[-1]["step"]),
            float(rows[-1]["elapsed_s"]),
        ),
    )
    per_step = (t1 - t0) / (s1 - s0)
    return max(1, int(budget / per_step))


def judge(run: Path, per_class: int, accuracy: str, n_timed: int, repeats: int) -> dict[str, Any]:
    """The run's judged figures (decoded samples for a latent run) and its sampling seconds per sample."""
    from multidiff.pipeline import load_pipeline

    pipe = load_pipeline(run, device="cpu")
    t0 = time.perf_counter()
    report = pipe.evaluate(num_per_class=per_class)
    eval_s = time.perf_counter() - t0
    s = pipe.options()
    per_sample = median_time(lambda: pipe.sample(n_timed), repeats=repeats, warmup=1) / n_timed
    fig = report["figures"]
    return {
        "accuracy": fig.get(accuracy, float("nan")),
        "frechet": fig.get("frechet", float("nan")),
        "frechet_floor": fig.get("frechet_floor", float("nan")),
        "figures": fig,
        "s_per_sample": per_sample,
        "eval_s": eval_s,
        "params": sum(p.numel() for p in pipe.denoiser.net.parameters()),
        "grid": tuple(pipe.space.model_shape(pipe.info.shape)),
        "data": tuple(pipe.info.shape),
        "sampler": f"{s.sampler} {s.steps} steps, guidance {s.guidance_scale}",
        "step": pipe.checkpoint.step if pipe.checkpoint is not None else 0,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=sorted(SUITES), default="digits")
    p.add_argument("--ae", help="a trained autoencoder run of the suite's config (default: train one in --root)")
    p.add_argument("--root", help="folder of the runs (default runs/bench_latent_<suite>)")
    p.add_argument("--latent-set", action="append", default=[], help="overrides of the latent run")
    p.add_argument("--skip-train", action="store_true", help="score the runs already in --root")
    p.add_argument("--per-class", type=int, default=50, help="judged samples per class (multidiff eval's -n)")
    p.add_argument("--timed", type=int, default=32, help="samples per timed sampling call")
    p.add_argument("--repeats", type=int, default=3, help="timed sampling calls (the median is kept)")
    p.add_argument("--probe-steps", type=int, default=40, help="steps of the pixel model's timing probe")
    p.add_argument("--threads", type=int, default=1, help="train.threads and torch threads when judging")
    p.add_argument("--out", help="also write the table (markdown) and the figures (json) here")
    args = p.parse_args(argv)
    suite = SUITES[args.suite]
    root = Path(args.root or ROOT / "runs" / f"bench_latent_{args.suite}")
    torch.set_num_threads(args.threads)
    threads = f"train.threads={args.threads}"

    ae = Path(args.ae) if args.ae else root / "ae"
    if not args.ae and not args.skip_train and not has_checkpoint(ae):
        train_run(suite["ae"], ae, [threads], log=root / "ae.log")
    t_ae, ae_steps = loop_seconds(ae)

    latent = root / "latent"
    if not args.skip_train and not has_checkpoint(latent):
        wall = train_run(
            suite["latent"], latent, [f"latent.autoencoder={ae}", threads, *args.latent_set], log=root / "latent.log"
        )
        print(f"latent run: {wall:.0f} s wall clock", flush=True)
    t_lat, lat_steps = loop_seconds(latent)
    budget = t_ae + t_lat

    pixel = root / "pixel"
    if not args.skip_train and not has_checkpoint(pixel):
        steps = pixel_steps(
            suite["pixel"], suite["pixel_set"], root / "pixel_probe", budget, args.threads, args.probe_steps
        )
        print(f"pixel run: {steps} steps to fill {budget:.0f} s", flush=True)
        sets = [
            *suite["pixel_set"],
            f"train.steps={steps}",
            "train.sample_every=0",
            f"train.checkpoint_every={steps}",
            threads,
        ]
        train_run(suite["pixel"], pixel, sets, log=root / "pixel.log")
    t_pix, pix_steps = loop_seconds(pixel)

    res = {
        name: judge(run, args.per_class, suite["accuracy"], args.timed, args.repeats)
        for name, run in (("latent", latent), ("pixel", pixel))
    }
    speed = res["pixel"]["s_per_sample"] / res["latent"]["s_per_sample"]
    acc = suite["accuracy"].replace("_", " ")
    header = ["model", "data -> model grid", "parameters", "training", "steps", acc, "Fréchet dist.", "s / sample"]
    rows = [
        [
            "latent (autoencoder + diffusion)",
            f"{res['latent']['data']} -> {res['latent']['grid']}",
            f"{res['latent']['params']:,}",
            f"{t_ae:.0f} s + {t_lat:.0f} s = {budget:.0f} s",
            f"{ae_steps} + {lat_steps}",
            f"{res['latent']['accuracy']:.3f}",
            f"{res['latent']['frechet']:.3g}",
            f"{res['latent']['s_per_sample']:.4f}",
        ],
        [
            "pixel",
            f"{res['pixel']['data']} -> {res['pixel']['grid']}",
            f"{res['pixel']['params']:,}",
            f"{t_pix:.0f} s",
            f"{pix_steps}",
            f"{res['pixel']['accuracy']:.3f}",
            f"{res['pixel']['frechet']:.3g}",
            f"{res['pixel']['s_per_sample']:.4f}",
        ],
    ]
    table = markdown_table(header, rows, "llrrrrrr")
    lines = [
        f"{args.suite}: {args.per_class} judged samples per class, sampler {res['latent']['sampler']}; "
        f"sampling {speed:.1f}x faster per sample in the latent; torch threads {args.threads}",
        "",
        table,
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(text + "\n")
        figures = {
            k: {kk: vv for kk, vv in v.items() if kk != "figures"} | {"figures": v["figures"]} for k, v in res.items()
        }
        out.with_suffix(".json").write_text(
            json.dumps({"suite": args.suite, "budget_s": budget, "speedup": speed, **figures}, indent=2, default=str)
        )
    return 0 if all(math.isfinite(r["s_per_sample"]) for r in res.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
