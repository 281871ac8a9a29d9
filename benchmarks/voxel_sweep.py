"""Variants of configs/voxel_shapes.yaml, trained side by side on one GPU and scored by the judge
of ``python -m benchmarks.quality voxel`` (issue 5: shape class accuracy).

    python -m benchmarks.voxel_sweep --variants base,trunc4 --parallel 6
    python -m benchmarks.voxel_sweep --score-only --variants base   # re-score runs

Each variant is a list of ``--set`` overrides on the config. The runs train with
``multidiff train`` exactly as quality.py does (a subprocess; ``train.precision=fp32`` unless a
variant says otherwise, so the GPU computes what the CPU would), ``--parallel`` at a time. Each is
then scored at every sampling setting and guidance scale: ``--per-class`` samples of every class
(seed 1, as quality.py), the fraction the judge gives the class asked for; and the watertight
fraction of the meshes (marching cubes at 0, largest piece) of the first setting's samples.

The judge is quality.py's (``voxel_judge``'s arguments and cache key: a 3D classifier trained on
3,600 other shapes, seed 1, with the cube's symmetries), trained once per data representation on
the GPU; with quality.py's cache folder carried along it is the very same network as on the CPU.

Sampling settings are ``sampler/steps/grid/sigma_max[/clip]`` with ``_`` for the config's value,
e.g. ``_/_/_/_`` (the config as it is), ``dpmpp_2m/20/karras/80``, ``ddpm/100/trailing/_``;
``clip`` clamps the denoiser's x0 estimate to the data range [-1, 1] at every step.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import ROOT, train_run

CONFIG = str(ROOT / "configs" / "voxel_shapes.yaml")

# 4^3 patches: the network runs at 4^3 -> 2^3 -> 1^3
P4 = ["model.patch_size=4", "model.channel_mult=[1,2,2]", "model.attention_levels=[0,1,2]"]

# name -> config overrides (on top of configs/voxel_shapes.yaml)
VARIANTS: dict[str, list[str]] = {
    "base": [],
    "trunc3": ["data.truncation=3.0"],
    "trunc4": ["data.truncation=4.0"],
    "trunc6": ["data.truncation=6.0"],
    "flip": ["data.random_flip=true"],
    "eps": ["diffusion.parameterization=eps", "diffusion.weighting=uniform"],
    "minsnr": ["diffusion.weighting=min_snr"],
    "edm": [
        "diffusion.parameterization=edm",
        "diffusion.weighting=edm",
        "diffusion.schedule={kind: edm}",  # a whole section: the base config's num_steps is not an edm key
        "diffusion.noise_sampling=log_normal",
    ],
    "c32": ["model.channels=32"],
    "rb2": ["model.num_res_blocks=2"],
    "lr2e3": ["train.lr=2.0e-3"],
    "b48": ["train.batch_size=48"],
    "pc600": ["data.per_class=600"],
    "shift8": ["diffusion.schedule.shift_base_size=8"],
    "shift32": ["diffusion.schedule.shift_base_size=32"],
    "ema995": ["train.ema_decay=0.995"],
    "ls": ["diffusion.noise_sampling=logit_normal"],
    # second round, not run (the GPU was gone): more examples per CPU second, since batch 48
    # helped most in the first
    "b96": ["train.batch_size=96"],
    "b48_lr2e3": ["train.batch_size=48", "train.lr=2.0e-3"],
    "b48_beta99": ["train.batch_size=48", "train.adam_betas=[0.9,0.99]"],
    "b48_x0": ["train.batch_size=48", "diffusion.parameterization=x0", "diffusion.weighting=uniform"],
    "b48_ls": ["train.batch_size=48", "diffusion.noise_sampling=logit_normal"],
    "b48_shift8": ["train.batch_size=48", "diffusion.schedule.shift_base_size=8"],
    "c16_b48": ["model.channels=16", "train.batch_size=48"],
    "c16_b48_flip": ["model.channels=16", "train.batch_size=48", "data.random_flip=true"],
    "c16_b64_s2000": ["model.channels=16", "train.batch_size=64", "train.steps=2000"],
    "c12_b96": ["model.channels=12", "train.batch_size=96"],
    "p4c32_b96": [*P4, "model.channels=32", "train.batch_size=96"],
    "p4c48_b48": [*P4, "model.channels=48", "train.batch_size=48"],
    "p4c64_b48": [
        "model.patch_size=4",
        "model.channel_mult=[1,2]",
        "model.attention_levels=[0,1]",
        "model.channels=64",
        "train.batch_size=48",
    ],
}

DEFAULT_SETTINGS = (
    "_/_/_/_,dpmpp_2m/20/karras/80,dpmpp_2m/20/logsnr/80,euler_ancestral/50/karras/80,ddpm/100/trailing/_"
)


def parse_setting(s: str) -> tuple[dict, bool]:
    parts = s.split("/")
    parts += ["_"] * (4 - len(parts))
    kw: dict = {}
    if parts[0] != "_":
        kw["sampler"] = parts[0]
    if parts[1] != "_":
        kw["steps"] = int(parts[1])
    if parts[2] != "_":
        kw["grid"] = parts[2]
    if parts[3] != "_":
        kw["sigma_max"] = float(parts[3])
    return kw, "clip" in parts[4:]


def judge_for(cfg, cache: str, device: str):
    """The voxel judge's classifier (``multidiff eval``'s and quality.py's: the same function, so the
    same data, arguments and cache key), on ``device``."""
    from modalities.voxel.judge import shapes_judge_classifier
    from multidiff.evaluate import classifier_judge

    clf = shapes_judge_classifier(cfg.data, cache, device=device)
    return clf, classifier_judge(clf)


def score_run(run: Path, args: argparse.Namespace, device: str, extra: dict | None = None) -> list[dict]:
    """Rows of scores for the run's last checkpoint at every setting (earlier checkpoints, with
    ``--checkpoints all``, at the first two settings only); ``sweep_scores.json`` in the run
    folder is rewritten after each row, so a run stopped at the deadline keeps what it scored."""
    from modalities.voxel.io import grid_to_mesh
    from modalities.voxel.metrics import watertight_fraction
    from multidiff.checkpoint import list_checkpoints
    from multidiff.evaluate import split_holdout
    from multidiff.metrics import class_accuracy
    from multidiff.pipeline import load_pipeline

    rows = []
    ckpts = list_checkpoints(run)
    if args.checkpoints == "last":
        ckpts = ckpts[-1:]
    for ck in ckpts:
        pipe = load_pipeline(str(ck), device=device)
        cfg = pipe.config
        clf, judge = judge_for(cfg, args.cache, device)
        ds, _ = cfg.adapter.build_dataset(cfg.data)
        _, ho = split_holdout(len(ds.x), 0.2, seed=0)
        judge_acc = class_accuracy(clf, ds.x[ho], ds.labels[ho])
        k = pipe.info.num_classes
        labels = torch.arange(k).repeat_interleave(args.per_class)
        settings = args.settings.split(",")
        if ck != ckpts[-1]:
            settings = settings[:2]
        for si, setting in enumerate(settings):
            kw, clip = parse_setting(setting)
            pipe.denoiser.clip_x0 = float(pipe.space.encode(torch.ones(()))) if clip else None
            accs, worst, out, wts = [], [], [], []
            for scale in [float(v) for v in args.scales.split(",")]:
                x, _ = pipe.sample(len(labels), labels=labels, guidance_scale=scale, seed=1, precision="fp32", **kw)
                pred = judge.classify(x).cpu()
                per = [float((pred[labels == c] == c).float().mean()) for c in range(k)]
                accs.append(float((pred == labels).float().mean()))
                worst.append(min(per))
                out.append(float((x.abs() > 1.001).float().mean()))
                if si == 0 or args.watertight_all:
                    idx = torch.arange(0, len(x), max(1, len(x) // args.meshes))[: args.meshes]
                    wts.append(watertight_fraction([grid_to_mesh(g) for g in x[idx]]))
            pipe.denoiser.clip_x0 = None
            rows.append(
                {
                    "run": run.name,
                    "step": pipe.checkpoint.step,
                    "setting": setting,
                    "acc": accs,
                    "worst": worst,
                    "out_of_range": out,
                    "watertight": wts,
                    "per_class": per,
                    "judge": judge_acc,
                    **(extra or {}),
                }
            )
            (run / "sweep_scores.json").write_text(json.dumps(rows))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def worker(name: str, args: argparse.Namespace) -> None:
    run = Path(args.out_dir) / name
    sets = [
        "train.precision=fp32",
        "train.threads=2",
        f"train.steps={args.steps}",
        f"train.checkpoint_every={args.checkpoint_every}",
        "train.keep_checkpoints=10",
        *VARIANTS.get(name, []),
        *args.set,
    ]
    t = None
    if not args.score_only:
        t = train_run(CONFIG, run, sets, log=run / "train.log")
    score_run(run, args, "cuda" if torch.cuda.is_available() else "cpu", {"train_s": t})


def table(all_rows: list[dict], scales: str) -> str:
    sc = scales.split(",")
    head = (
        "| variant | steps | setting | "
        + " | ".join(f"acc g{s}" for s in sc)
        + " | worst (best g) | watertight | train s |"
    )
    lines = [head, "|" + "---|" * (len(sc) + 6)]
    for r in all_rows:
        b = max(range(len(sc)), key=lambda i: r["acc"][i])
        wt = "/".join(f"{w:.2f}" for w in r["watertight"]) if r["watertight"] else ""
        ts = f"{r['train_s']:.0f}" if r.get("train_s") else ""
        lines.append(
            f"| {r['run']} | {r['step']} | {r['setting']} | "
            + " | ".join(f"{a:.3f}" for a in r["acc"])
            + f" | {r['worst'][b]:.2f} | {wt} | {ts} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default="base", help=f"comma-separated, from: {', '.join(VARIANTS)}")
    p.add_argument("--extra", action="append", default=[], help="NAME=set1;set2 ... an ad-hoc variant")
    p.add_argument("--set", action="append", default=[], help="overrides for every variant")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--checkpoints", choices=["last", "all"], default="last")
    p.add_argument("--parallel", type=int, default=4)
    p.add_argument("--per-class", type=int, default=50)
    p.add_argument("--scales", default="1,2,3")
    p.add_argument("--settings", default=DEFAULT_SETTINGS)
    p.add_argument("--meshes", type=int, default=60, help="meshes per scale for the watertight fraction")
    p.add_argument("--watertight-all", action="store_true")
    p.add_argument("--out-dir", default=str(ROOT / "runs" / "voxel_sweep"))
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "multidiff" / "classifiers"))
    p.add_argument("--score-only", action="store_true")
    p.add_argument("--deadline", type=float, default=1e9, help="seconds; workers still running then are stopped")
    p.add_argument("--table", help="also write the table here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for e in args.extra:
        n, _, s = e.partition("=")
        VARIANTS[n] = [v for v in s.split(";") if v]
    if args.worker:
        torch.set_num_threads(1)
        worker(args.worker, args)
        return 0

    from multidiff.config import load_config

    names = [*args.variants.split(","), *[e.partition("=")[0] for e in args.extra]]
    names = list(dict.fromkeys(n for n in names if n))
    # one judge per data representation, before the workers start (they only load it)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    seen = set()
    for n in names:
        cfg = load_config(CONFIG, [*VARIANTS[n], *args.set])
        key = (cfg.data.representation, cfg.data.truncation, cfg.data.resolution)
        if key not in seen:
            seen.add(key)
            t0 = time.perf_counter()
            judge_for(cfg, args.cache, device)
            print(f"judge {key}: {time.perf_counter() - t0:.0f} s", flush=True)

    t_start = time.perf_counter()
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
    procs: dict[str, subprocess.Popen] = {}
    queue = list(names)
    done: list[str] = []
    while queue or procs:
        while queue and len(procs) < args.parallel:
            n = queue.pop(0)
            procs[n] = subprocess.Popen([sys.executable, __file__, *passthrough, "--worker", n])
        time.sleep(1)
        for n, pr in list(procs.items()):
            if pr.poll() is not None:
                print(f"[{time.perf_counter() - t_start:.0f} s] {n} finished (rc {pr.returncode})", flush=True)
                done.append(n)
                del procs[n]
        if time.perf_counter() - t_start > args.deadline:
            for n, pr in procs.items():
                m = Path(args.out_dir) / n / "metrics.csv"
                last = m.read_text().strip().splitlines()[-1] if m.exists() else "no metrics yet"
                print(f"deadline: stopping {n} (last metrics: {last})", flush=True)
                pr.terminate()
            for pr in procs.values():
                pr.wait()
            break
    all_rows = []
    for n in names:
        f = Path(args.out_dir) / n / "sweep_scores.json"
        if f.exists():
            all_rows += json.loads(f.read_text())
    t = table(all_rows, args.scales)
    print("\n" + t, flush=True)
    if args.table:
        Path(args.table).write_text(t + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
