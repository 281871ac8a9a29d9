"""UNet against the diffusion transformer, per training step, on the three shipped CPU configs.

For each of ``configs/image_digits.yaml``, ``audio_tones.yaml`` and ``voxel_shapes.yaml`` the script
builds the real :class:`multidiff.train.Trainer` twice, as configured (the UNet preset) and with
``model.preset=dit_tiny`` (the modality's transformer preset), everything else equal, and times
:meth:`Trainer.train_step` (data, loss, backward, AdamW, EMA) at the config's batch size: the median
of ``--repeats`` steps after ``--warmup``. It prints parameters, milliseconds per step and the ratio
DiT / UNet. This is speed only; which backbone gives better samples at equal time needs full runs
judged by ``multidiff eval`` (``benchmarks/quality.py --set model.preset=dit_tiny``).

    python -m benchmarks.backbones [--threads 1] [--batch 8] [--device cpu]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from benchmarks.common import ROOT, count_parameters, markdown_table, median_time
from multidiff import config as C
from multidiff.train import Trainer

CONFIGS = ("image_digits", "audio_tones", "voxel_shapes")


def _trainer(name: str, backbone: str, out: Path, args: argparse.Namespace) -> Trainer:
    sets = [f"out_dir={out}", "train.progress=false", f"train.device={args.device}", f"train.threads={args.threads}"]
    sets += ["train.sample_every=0", "train.checkpoint_every=0"]
    if args.batch:
        sets.append(f"train.batch_size={args.batch}")
    if backbone == "dit":
        sets.append("model.preset=dit_tiny")  # the modality's transformer preset
    return Trainer(C.load_config(ROOT / "configs" / f"{name}.yaml", sets))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=0, help="batch size (default: the config's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--configs", default=",".join(CONFIGS))
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs.split(","):
            times, sizes, batch = {}, {}, 0
            for backbone in ("unet", "dit"):
                tr = _trainer(name, backbone, Path(tmp) / f"{name}_{backbone}", args)
                batches = tr._loader()
                times[backbone] = median_time(
                    lambda tr=tr, b=batches: tr.train_step(b),
                    repeats=args.repeats,
                    warmup=args.warmup,
                    device=tr.device,
                )
                sizes[backbone] = count_parameters(tr.net)
                batch = tr.t.batch_size
                del tr
            rows.append(
                [
                    name,
                    batch,
                    f"{sizes['unet']:,}",
                    f"{times['unet'] * 1e3:.0f}",
                    f"{sizes['dit']:,}",
                    f"{times['dit'] * 1e3:.0f}",
                    f"{times['dit'] / times['unet']:.2f}",
                ]
            )
    print(f"device {args.device}, {args.threads} thread(s), torch {torch.__version__}")
    header = ["config", "batch", "UNet params", "UNet ms/step", "DiT params", "DiT ms/step", "DiT / UNet"]
    print(markdown_table(header, rows, "lrrrrrr"))


if __name__ == "__main__":
    main()
