"""UNet against the diffusion transformer on the three shipped CPU configs: per training step, and
in samples at equal FLOPs and at equal wall-clock training time.

For each of ``configs/image_digits.yaml``, ``audio_tones.yaml`` and ``voxel_shapes.yaml`` the script
builds the real :class:`multidiff.train.Trainer` twice, as configured (the UNet preset) and with
``model.preset=dit_tiny`` (the modality's transformer preset), everything else equal, and

- times :meth:`Trainer.train_step` (data, loss, backward, AdamW, EMA) at the config's batch size:
  the median of ``--repeats`` steps after ``--warmup``, the two backbones' steps taken in turn;
- counts the FLOPs of one more ``train_step`` with ``torch.utils.flop_counter.FlopCounterMode``
  (matmuls, convolutions and attention, forward and backward; the optimizer's and the EMA's
  elementwise work is not counted). On the CPU ``scaled_dot_product_attention`` runs as
  ``_scaled_dot_product_flash_attention_for_cpu``, which torch's counter does not know: it is
  counted here with torch's own SDPA formulas;
- derives the DiT's step count for the UNet's budget (the config's ``train.steps``): at **equal
  FLOPs**, ``steps x FLOPs_unet / FLOPs_dit``; at **equal wall clock**, ``steps x ms_unet / ms_dit``.

    python -m benchmarks.backbones [--threads 1] [--batch 8] [--device cpu]

``--quality`` then trains the DiT at both budgets (``multidiff train`` as a subprocess, exactly as
a user would, ``--jobs`` at a time), the config unchanged but for ``model.preset=dit_tiny`` and
``train.steps`` (the learning rate, its warmup and cosine decay are the config's, the decay spread
over the DiT's own steps; a warmup longer than the steps is cut to a tenth of them), and scores
every run, the UNet's too, with the modality's judge at the same settings
(:func:`benchmarks.quality.score_run`: what ``multidiff eval RUN --num N --guidance G --seed S``
prints). A UNet run is trained as configured unless ``--unet-run CONFIG=RUN`` names an existing
one. The measurement is written to ``RUNS/budgets.json`` and reused (``--remeasure`` to redo it),
each run's scores to ``RUN/backbone_scores.json``, so a second call only prints the table.

    python -m benchmarks.backbones --quality --runs runs/backbones --threads 1 --jobs 2 \\
        --unet-run image_digits=runs/digits --set 'voxel_shapes:diffusion.parameterization=flow'
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import statistics
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from benchmarks.common import ROOT, count_parameters, markdown_table, synchronize, train_run
from multidiff import config as C
from multidiff.train import Trainer

CONFIGS = ("image_digits", "audio_tones", "voxel_shapes")
# the latent configs (issue 22), measured on request (``--configs``): each needs its autoencoder run,
# ``--set image_digits_latent:latent.autoencoder=RUN``
LATENT_CONFIGS = ("image_digits_latent", "audio_tones_latent", "voxel_shapes_latent")
ALL_CONFIGS = CONFIGS + LATENT_CONFIGS
# what the DiT of a latent config changes besides ``model.preset=dit_tiny``: 64 tokens on each latent
# grid (8x8 at patch 1, 8^3 at patch 2, 128 frames at patch 2), and the UNet keys the config sets
# cleared (a UNet key under a DiT preset is a config error)
DIT_SETS = {
    "image_digits_latent": ["model.patch_size=1"],
    "audio_tones_latent": [
        "model.patch_size=2",
        "model.channels=null",
        "model.channel_mult=null",
        "model.factor=null",
        "model.attention_levels=null",
    ],
    "voxel_shapes_latent": [
        "model.patch_size=2",
        "model.channels=null",
        "model.channel_mult=null",
        "model.attention_levels=null",
    ],
}
BUDGETS = ("equal FLOPs", "equal time")
# samples per class when scoring: the sizes of benchmarks/README.md's quality tables
PER_CLASS = {"image_digits": 100, "audio_tones": 100, "voxel_shapes": 40, "voxel_shapes_latent": 40}


def _sdpa_cpu(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return sdpa_flop_count(query, key, value)


def _sdpa_cpu_backward(
    grad: Any, query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kw: Any
) -> int:
    return sdpa_backward_flop_count(grad, query, key, value)


# torch's flop registry knows the CUDA attention kernels only; these are the CPU ones
_CPU_ATTENTION = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward,
}


def step_flops(trainer: Trainer, batches: Any) -> int:
    """FLOPs of one :meth:`Trainer.train_step` (forward and backward of every micro-batch)."""
    with FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION) as counter:
        trainer.train_step(batches)
    return int(counter.get_total_flops())


def dit_steps(unet_steps: int, unet_cost: float, dit_cost: float) -> int:
    """The DiT's steps for the UNet's budget: ``unet_steps x unet_cost / dit_cost`` (cost per step in
    FLOPs or seconds), rounded, at least 1."""
    return max(1, round(unet_steps * unet_cost / dit_cost))


def _sets_for(name: str, sets: Sequence[str]) -> list[str]:
    """The ``--set CONFIG:KEY=VALUE`` overrides of one config, as ``KEY=VALUE``."""
    return [s.split(":", 1)[1] for s in sets if s.split(":", 1)[0] == name]


def _trainer(name: str, backbone: str, out: Path, args: argparse.Namespace) -> Trainer:
    sets = [f"out_dir={out}", "train.progress=false", f"train.device={args.device}", f"train.threads={args.threads}"]
    sets += ["train.sample_every=0", "train.checkpoint_every=0", *_sets_for(name, args.set)]
    if args.batch:
        sets.append(f"train.batch_size={args.batch}")
    if backbone == "dit":
        sets += ["model.preset=dit_tiny", *DIT_SETS.get(name, [])]  # the modality's transformer preset
    return Trainer(C.load_config(ROOT / "configs" / f"{name}.yaml", sets))


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Per config: batch, the UNet's steps (``train.steps``) and, per backbone, parameters, seconds
    and FLOPs per training step; and the DiT's steps at equal FLOPs and at equal time.

    Both trainers are built first and their steps timed in turn (UNet, DiT, UNet, ...), so that a
    change in the machine's load over the measurement weighs on both alike."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs.split(","):
            row: dict[str, Any] = {"config": name}
            trainers = {b: _trainer(name, b, Path(tmp) / f"{name}_{b}", args) for b in ("unet", "dit")}
            loaders = {b: tr._loader() for b, tr in trainers.items()}
            for _ in range(args.warmup):
                for b, tr in trainers.items():
                    tr.train_step(loaders[b])
            times: dict[str, list[float]] = {b: [] for b in trainers}
            for _ in range(args.repeats):
                for b, tr in trainers.items():
                    synchronize(tr.device)
                    t0 = time.perf_counter()
                    tr.train_step(loaders[b])
                    synchronize(tr.device)
                    times[b].append(time.perf_counter() - t0)
            for b, tr in trainers.items():
                row[f"{b}_s"] = statistics.median(times[b])
                row[f"{b}_flops"] = step_flops(tr, loaders[b])
                row[f"{b}_params"] = count_parameters(tr.net)
                row["batch"], row["unet_steps"] = tr.t.batch_size, trainers["unet"].t.steps
            del trainers, loaders
            row["equal FLOPs"] = dit_steps(row["unet_steps"], row["unet_flops"], row["dit_flops"])
            row["equal time"] = dit_steps(row["unet_steps"], row["unet_s"], row["dit_s"])
            rows.append(row)
    return rows


def speed_table(rows: Sequence[dict[str, Any]]) -> str:
    header = ["config", "batch", "UNet params", "UNet ms/step", "DiT params", "DiT ms/step", "DiT / UNet"]
    header += ["UNet GFLOP/step", "DiT GFLOP/step", "DiT / UNet FLOPs", "UNet steps", "DiT steps, equal FLOPs"]
    header += ["DiT steps, equal time"]
    table = [
        [
            r["config"],
            r["batch"],
            f"{r['unet_params']:,}",
            f"{r['unet_s'] * 1e3:.0f}",
            f"{r['dit_params']:,}",
            f"{r['dit_s'] * 1e3:.0f}",
            f"{r['dit_s'] / r['unet_s']:.2f}",
            f"{r['unet_flops'] / 1e9:.1f}",
            f"{r['dit_flops'] / 1e9:.1f}",
            f"{r['dit_flops'] / r['unet_flops']:.2f}",
            r["unet_steps"],
            r["equal FLOPs"],
            r["equal time"],
        ]
        for r in rows
    ]
    return markdown_table(header, table, "l" + "r" * (len(header) - 1))


# --- --quality: train the DiT at both budgets and judge every run alike -------------------------


def _final_checkpoint(run: Path, steps: int) -> bool:
    return (run / "checkpoints" / f"step_{steps:08d}").is_dir()


def _loop_seconds(run: Path) -> float:
    """The training loop's wall clock: ``elapsed_s`` of the run's last metrics row."""
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return float(rows[-1]["elapsed_s"]) if rows else math.nan


def _plan(rows: Sequence[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every run of the table: the UNet's (given or to train) and the DiT's at each budget."""
    given = dict(kv.split("=", 1) for kv in args.unet_run)
    runs_dir = Path(args.runs)
    plan = []
    for r in rows:
        name = r["config"]
        sets = _sets_for(name, args.set) + [f"train.threads={args.threads}"]
        unet = Path(given[name]) if name in given else runs_dir / f"{name}_unet"
        plan.append(
            {
                "config": name,
                "backbone": "UNet",
                "budget": "as shipped",
                "run": unet,
                "steps": r["unet_steps"],
                "overrides": sets,
                "given": name in given,
                "est_s": r["unet_steps"] * r["unet_s"],
            }
        )
        cfg = C.load_config(ROOT / "configs" / f"{name}.yaml", _sets_for(name, args.set))
        for budget in BUDGETS:
            steps = r[budget]
            o = [*sets, "model.preset=dit_tiny", *DIT_SETS.get(name, []), f"train.steps={steps}"]
            if cfg.run.train.warmup_steps >= steps:
                o.append(f"train.warmup_steps={max(1, steps // 10)}")
            run = runs_dir / f"{name}_dit_{budget.split()[1].lower()}"
            plan.append(
                {
                    "config": name,
                    "backbone": "DiT",
                    "budget": budget,
                    "run": run,
                    "steps": steps,
                    "overrides": o,
                    "given": False,
                    "est_s": steps * r["dit_s"],
                }
            )
    return plan


def _train(item: dict[str, Any]) -> None:
    run: Path = item["run"]
    print(
        f"training {item['config']} {item['backbone']} ({item['budget']}, {item['steps']} steps) -> {run}", flush=True
    )
    seconds = train_run(
        str(ROOT / "configs" / f"{item['config']}.yaml"), run, item["overrides"], log=run.with_suffix(".log")
    )
    print(f"trained {run} in {seconds:.0f} s", flush=True)


def _scores(item: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The run's judged figures per scale, from ``RUN/backbone_scores.json`` when it holds these
    settings, else scored now (and written there)."""
    from benchmarks.quality import score_run
    from multidiff.pipeline import load_pipeline

    run: Path = item["run"]
    settings = {
        "per_class": PER_CLASS.get(item["config"], 100) if args.per_class is None else args.per_class,
        "scales": [float(v) for v in args.scales.split(",")],
        "seed": args.seed,
    }
    path = run / "backbone_scores.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved["settings"] == {**settings, "step": item["steps"]}:
            return saved
    pipe = load_pipeline(str(run))
    label = f"{item['config']} {item['backbone']} {item['budget']}"
    _, reports = score_run(
        pipe, scales=settings["scales"], per_class=settings["per_class"], cache=args.cache, seed=args.seed, label=label
    )
    saved = {
        "settings": {**settings, "step": pipe.checkpoint.step},
        "figures": {f"{r['settings']['guidance_scale']:g}": r["figures"] for r in reports},
    }
    path.write_text(json.dumps(saved, indent=2) + "\n")
    return saved


def quality_table(plan: Sequence[dict[str, Any]], scores: Sequence[dict[str, Any]], scales: Sequence[str]) -> str:
    voxel = any(item["config"].startswith("voxel_shapes") for item in plan)
    header = ["config", "backbone", "budget", "steps", "train s"]
    for g in scales:
        header += [f"g{g} accuracy", f"g{g} worst", f"g{g} Fréchet"] + ([f"g{g} one piece"] if voxel else [])
    rows = []
    for item, s in zip(plan, scores, strict=True):
        row = [
            item["config"],
            item["backbone"],
            item["budget"],
            s["settings"]["step"],
            f"{_loop_seconds(item['run']):.0f}",
        ]
        for g in scales:
            f = s["figures"][g]
            acc = f.get("class_accuracy", f.get("pitch_accuracy"))
            row += [f"{acc:.3f}", f"{f['worst_class_accuracy']:.2f}", f"{f['frechet']:.2f}"]
            if voxel:
                row.append(f"{f['single_piece_fraction']:.3f}" if "single_piece_fraction" in f else "-")
        rows.append(row)
    return markdown_table(header, rows, "lll" + "r" * (len(header) - 3))


def run_quality(rows: Sequence[dict[str, Any]], args: argparse.Namespace) -> str:
    plan = _plan(rows, args)
    if args.dry_run:
        return "\n".join(
            f"{it['config']} {it['backbone']} {it['budget']}: {it['steps']} steps, {it['run']}"
            + ("" if it["given"] else f", --set {' --set '.join(it['overrides'])}")
            for it in plan
        )
    todo = [it for it in plan if not _final_checkpoint(it["run"], it["steps"])]
    for it in todo:
        if it["given"]:
            raise SystemExit(f"--unet-run {it['config']}={it['run']}: no checkpoint at step {it['steps']}")
    # longest first, so that the last job to start is a short one
    todo.sort(key=lambda it: -it["est_s"])
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(_train, todo))
    scores = [_scores(it, args) for it in plan]
    scales = [f"{float(v):g}" for v in args.scales.split(",")]
    names = {it["config"] for it in plan}
    sets = "".join(f"\n`--set {s}`" for s in args.set if s.split(":", 1)[0] in names)
    return quality_table(plan, scores, scales) + (f"\n\nOverrides of both backbones:{sets}" if sets else "")


def _saved_rows(budgets: Path, args: argparse.Namespace) -> list[dict[str, Any]] | None:
    """The rows of an earlier measurement, if ``budgets`` holds one of these configs and overrides."""
    if not budgets.is_file():
        return None
    saved = json.loads(budgets.read_text())
    rows = {r["config"]: r for r in saved["rows"]}
    names = args.configs.split(",")
    if saved["sets"] != args.set or any(n not in rows for n in names):
        print(f"# {budgets} holds other configs or --set overrides: measuring again")
        return None
    print(f"# the measurement of {saved['date']} from {budgets} ({saved['note']})")
    return [rows[n] for n in names]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=0, help="batch size (default: the config's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="CONFIG:KEY=VALUE",
        help="a config override of one config, for both backbones, measured and trained (repeatable)",
    )
    q = p.add_argument_group("--quality: train the DiT at equal FLOPs and at equal time, judge every run")
    q.add_argument("--quality", action="store_true")
    q.add_argument("--runs", default=str(ROOT / "runs" / "backbones"), help="folder of the runs and budgets.json")
    q.add_argument("--unet-run", action="append", default=[], metavar="CONFIG=RUN", help="an existing UNet run")
    q.add_argument("--remeasure", action="store_true", help="measure again instead of reading RUNS/budgets.json")
    q.add_argument("--dry-run", action="store_true", help="measure (or read budgets.json), print the runs, train none")
    q.add_argument("--jobs", type=int, default=1, help="training runs at a time")
    q.add_argument("--scales", default="1,2", help="guidance scales to score")
    q.add_argument("--per-class", type=int, help="samples per class (default: 100; 40 for the shapes)")
    q.add_argument("--seed", type=int, default=1, help="seed of the scored samples")
    q.add_argument("--cache", default=str(Path.home() / ".cache" / "multidiff" / "classifiers"))
    args = p.parse_args(argv)
    for s in args.set:
        if s.split(":", 1)[0] not in ALL_CONFIGS or ":" not in s:
            p.error(f"--set {s!r}: expected CONFIG:KEY=VALUE with CONFIG one of {', '.join(ALL_CONFIGS)}")
    for name in args.configs.split(","):
        if name not in ALL_CONFIGS:
            p.error(f"--configs {name!r}: expected names from {', '.join(ALL_CONFIGS)}")
    torch.set_num_threads(args.threads)
    budgets = Path(args.runs) / "budgets.json"
    rows = _saved_rows(budgets, args) if args.quality and not args.remeasure else None
    if rows is None:
        rows = measure(args)
        if args.quality:
            budgets.parent.mkdir(parents=True, exist_ok=True)
            note = f"device {args.device}, {args.threads} thread(s), torch {torch.__version__}"
            date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            budgets.write_text(
                json.dumps({"date": date, "note": note, "sets": args.set, "rows": rows}, indent=2) + "\n"
            )
    print(f"device {args.device}, {args.threads} thread(s), torch {torch.__version__}")
    print(speed_table(rows))
    if args.quality:
        print()
        print(run_quality(rows, args))


if __name__ == "__main__":
    main()
