"""Multichannel time series as a multidiff modality, in one file.

A series is a tensor ``(C, L)``: ``C`` channels (sensors) over ``L`` time steps. The adapter
gives multidiff four things: the config sections it accepts, the data set, the network (the core's
rank-generic UNet over one axis) and how to write samples (CSV files and a PNG plot).
Everything else (schedules, losses, samplers, guidance, training, checkpoints, the CLI) is the
core's and works unchanged.

Data: ``source: synthetic`` (built in: three classes of 3-channel signals, sine, square and
sawtooth waves with random frequency, phase and amplitude, the channels lagging each other) or
``source: folder`` (``path`` to CSV files, one series per file, one column per channel, a header
row optional; classes from sub-folders). Each series is cropped or zero-padded to ``length`` and
scaled into [-1, 1] by its largest absolute value.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

from multidiff.modality import (
    DataConfig,
    DataInfo,
    DemoRun,
    Modality,
    PresetModelConfig,
    TensorDataset,
    demo_config,
    finish_dataset,
    read_each,
    sample_names,
    scan_labelled_folder,
)

__all__ = ["TimeSeriesModality", "synthetic", "read_csv", "write_csv"]

KINDS = ("sine", "square", "sawtooth")


class TimeSeriesModelConfig(PresetModelConfig):
    """The ``model:`` section: a 1-D UNet preset, any value overridable."""

    PRESETS = {
        "tiny": {"channels": 32, "channel_mult": [1, 2, 2], "num_res_blocks": 1, "attention_levels": [2]},
        "small": {"channels": 64, "channel_mult": [1, 2, 2, 4], "num_res_blocks": 2, "attention_levels": [2, 3]},
    }
    preset: Literal["tiny", "small"] = "tiny"
    attention_levels: list[int] | None = None


class TimeSeriesDataConfig(DataConfig):
    """The ``data:`` section."""

    folder_files = "CSV files"

    source: Literal["synthetic", "folder"] = "synthetic"
    channels: int = Field(3, ge=1)
    length: int = Field(128, ge=8)
    per_class: int = Field(300, ge=1)
    limit: int | None = Field(None, ge=1)


def synthetic(channels: int, length: int, per_class: int, seed: int = 0) -> tuple[TensorDataset, DataInfo]:
    """Sine, square and sawtooth waves (one class each): random frequency (2 to 6 cycles), phase and
    amplitude (0.5 to 0.9); channel ``c`` lags channel 0 by ``c / channels`` of a cycle."""
    g = np.random.default_rng(seed)
    t = np.arange(length) / length
    xs, ys = [], []
    for k, kind in enumerate(KINDS):
        for _ in range(per_class):
            f, ph, a = g.uniform(2, 6), g.uniform(0, 1), g.uniform(0.5, 0.9)
            u = f * t[None, :] + ph + np.arange(channels)[:, None] / channels  # (C, L) in cycles
            if kind == "sine":
                x = np.sin(2 * math.pi * u)
            elif kind == "square":
                x = np.sign(np.sin(2 * math.pi * u))
            else:
                x = 2 * (u - np.floor(u + 0.5))
            xs.append(a * x)
            ys.append(k)
    x = torch.tensor(np.stack(xs), dtype=torch.float32)
    info = DataInfo((channels, length), len(KINDS), KINDS, {"source": "synthetic"})
    return TensorDataset(x, torch.tensor(ys)), info


def read_csv(path: Path, channels: int, length: int) -> Tensor:
    """One series from a CSV file (a column per channel, an optional header), as ``(channels, length)``
    scaled into [-1, 1]; a ``ValueError`` naming the file if it cannot be read."""
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r]
        if rows and not _numeric(rows[0]):
            rows = rows[1:]  # a header
        arr = np.asarray([[float(v) for v in r] for r in rows], dtype=np.float64)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"cannot read series {str(path)!r}: {e}") from None
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] != channels or not np.isfinite(arr).all():
        raise ValueError(f"series {str(path)!r} must hold {channels} finite columns and at least one row")
    x = torch.zeros(channels, length)
    n = min(length, arr.shape[0])
    x[:, :n] = torch.from_numpy(arr[:n].T).float()
    peak = float(x.abs().max())
    return x / peak if peak > 0 else x


def _numeric(row: list[str]) -> bool:
    try:
        [float(v) for v in row]
    except ValueError:
        return False
    return True


def write_csv(path: Path, x: Tensor) -> Path:
    """A series ``(C, L)`` as a CSV file with a header ``ch0, ch1, ...``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([f"ch{c}" for c in range(x.shape[0])])
        w.writerows(x.T.tolist())
    return path


class TimeSeriesModality(Modality[TimeSeriesModelConfig, TimeSeriesDataConfig]):
    name = "timeseries"
    ModelConfig = TimeSeriesModelConfig
    DataConfig = TimeSeriesDataConfig

    def build_dataset(self, data: TimeSeriesDataConfig) -> tuple[TensorDataset, DataInfo]:
        if data.source == "synthetic":
            ds, info = synthetic(data.channels, data.length, data.per_class)
        else:
            if data.path is None:
                raise ValueError("data.path is required with source: folder")
            files, labels, classes = scan_labelled_folder(data.path, (".csv",), "CSV series")
            read = lambda f: read_csv(f, data.channels, data.length)  # noqa: E731
            xs, labels, bad = read_each(files, labels, read, on_bad=data.on_bad_file, what="CSV series")
            ds = TensorDataset(torch.stack(xs), torch.tensor(labels))
            info = DataInfo((data.channels, data.length), len(classes), tuple(classes), {"skipped_files": len(bad)})
        return finish_dataset(ds, info, limit=data.limit, class_conditional=data.class_conditional)

    def build_network(
        self, model: TimeSeriesModelConfig, info: DataInfo, *, noise_scale: float, learned_variance: bool = False
    ) -> nn.Module:
        return model.build_network(1, info, noise_scale=noise_scale, learned_variance=learned_variance)

    def save_samples(self, x: Tensor, path: Path, info: DataInfo, *, labels: Tensor | None = None) -> list[Path]:
        """One CSV per series and ``plot.png`` with every series (a panel each, channels overlaid)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        folder = Path(path).with_suffix("") if Path(path).suffix else Path(path)
        names = sample_names(x.shape[0], info, labels)
        paths = [write_csv(folder / f"{n}.csv", s) for n, s in zip(names, x)]
        cols = min(4, len(names))
        rows = math.ceil(len(names) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 1.8 * rows), squeeze=False)
        for ax, n, s in zip(axes.flat, names, x):
            ax.plot(s.T.numpy(), linewidth=1)
            ax.set_title(n, fontsize=8)
            ax.set_ylim(-1.1, 1.1)
            ax.set_xticks([])
        for ax in list(axes.flat)[len(names) :]:
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(folder / "plot.png", dpi=80)
        plt.close(fig)
        return [*paths, folder / "plot.png"]

    def describe(self, data: TimeSeriesDataConfig) -> str:
        return f"{data.channels}-channel series of {data.length} steps from {data.source}"

    def demo(self, quick: bool) -> DemoRun:
        """This modality's part of ``multidiff demo``: the three wave kinds, a short run of config.yaml."""
        return DemoRun(
            "waves",
            "synthetic waves (3 channels of 128 steps, 3 kinds)",
            demo_config(
                "timeseries",
                data={"source": "synthetic", "channels": 3, "length": 128, "per_class": 40 if quick else 300},
                model={
                    "preset": "tiny",
                    **({"channels": 8, "channel_mult": [1, 2], "attention_levels": [1]} if quick else {}),
                },
                steps=10 if quick else 400,
                batch_size=32,
                num_samples=6 if quick else 12,
                quick=quick,
            ),
            {"plot.png": "sampled series, one panel each"},
        )
