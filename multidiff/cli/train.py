"""``multidiff train CONFIG [--set KEY=VALUE ...] [--resume [CHECKPOINT]] [--out-dir DIR]``."""

from __future__ import annotations

import argparse
from typing import Any


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..train import Trainer

    cfg = load_config(args.config, args.set)
    if args.out_dir:
        cfg.run.out_dir = args.out_dir
    trainer = Trainer(cfg, resume=args.resume if args.resume else False)
    try:
        w = trainer.world
        say = print if w.is_main else (lambda *a, **k: None)  # under torchrun, rank 0 speaks
        procs = f" x {w.size} processes (global batch {cfg.run.train.batch_size})" if w.distributed else ""
        what = cfg.adapter.describe(cfg.data)
        if cfg.run.task == "autoencoder":
            what = f"autoencoder of {what} -> latent {tuple(trainer.objective.meta()['latent_shape'])}"
        elif cfg.run.latent is not None:
            rec = trainer.objective.meta()["latent"]
            what = (
                f"latent {tuple(rec['latent_shape'])} of {what} {tuple(rec['data_shape'])} through the autoencoder "
                f"{rec['checkpoint']} (scale {rec['scale']:.4g}, shift {rec['shift']:.4g})"
            )
        say(
            f"multidiff train: {what}, {sum(p.numel() for p in trainer.net.parameters()):,} "
            f"parameters, {trainer.device}{procs}, steps {trainer.step} -> {cfg.run.train.steps}, "
            f"run folder {trainer.run_dir}"
            + (f"; skipped {n} unreadable data files" if (n := trainer.info.extra.get("skipped_files")) else "")
        )
        result = trainer.fit()
        last = result.losses[-1][1] if result.losses else float("nan")
        if result.interrupted:
            say(f"interrupted at step {result.step}; checkpoint {result.checkpoint}; continue with --resume")
        else:
            say(
                f"done: step {result.step}, last loss {last:.4f}, {result.seconds:.0f}s; checkpoint {result.checkpoint}"
            )
    finally:
        trainer.close()
    return 0


def add_parser(sub: Any) -> None:
    t = sub.add_parser("train", help="train the model a YAML config describes")
    t.add_argument("config", help="a YAML run config (see configs/)")
    t.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value, e.g. train.steps=500"
    )
    t.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="CHECKPOINT",
        help="continue from the newest checkpoint of the run folder (or from CHECKPOINT)",
    )
    t.add_argument("--out-dir", help="the run folder (overrides out_dir)")
    t.set_defaults(func=run)
