"""Plots that know no modality: noise schedules, forward noising, loss curves.

Every function writes one PNG (matplotlib, Agg backend) and returns its path; bad input raises
``ValueError`` with one line naming the path, which the CLI turns into exit code 2. Pictures of
the data itself come from the modality adapter (:meth:`multidiff.modality.Modality.save_noising`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import schedules as S
from .denoiser import DataSpace

__all__ = [
    "named_schedules",
    "plot_schedules",
    "noised_copies",
    "plot_noising",
    "plot_loss",
    "smooth",
]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: str | Path, dpi: int = 110) -> Path:
    p = Path(out)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=dpi)
    _pyplot().close(fig)
    return p


# --- schedules -------------------------------------------------------------------------------


def named_schedules() -> dict[str, S.Schedule]:
    """The schedules :func:`plot_schedules` compares, by their usual names."""
    return {
        "linear (DDPM)": S.DiscreteSchedule.linear(),
        "cosine": S.CosineSchedule(),
        "sigmoid": S.SigmoidSchedule(),
        "EDM": S.EDMSchedule(),
        "cosine shifted 64->256": S.ShiftedSchedule(S.CosineSchedule(), 64, 256),
        "linear, zero terminal SNR": S.zero_terminal_snr(S.DiscreteSchedule.linear()),
    }


def plot_schedules(out: str | Path, schedules: dict[str, S.Schedule] | None = None) -> Path:
    """``alpha(t)``, ``sigma(t)`` (VP view: ``x_t = alpha x0 + sigma eps``) and log-SNR against ``t``
    for each schedule (default :func:`named_schedules`), after Nichol & Dhariwal 2021, fig. 5: the
    linear schedule destroys the signal long before ``t = 1``, the cosine one spreads it out."""
    plt = _pyplot()
    t = torch.linspace(0, 1, 401, dtype=torch.float64)
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(12, 3.6))
    for i, (name, sch) in enumerate((schedules or named_schedules()).items()):
        style = {"ls": ("-", "-", "-.", "-", "-", "--")[i % 6], "lw": 1.3, "label": name}  # near-twins dashed
        a1.plot(t, S.alpha(sch, t), **style)
        a2.plot(t, S.sigma_vp(sch, t), **style)
        a3.plot(t, sch.logsnr(t), **style)
    for ax, label in ((a1, "alpha (signal scale)"), (a2, "sigma (noise scale, VP)"), (a3, "log-SNR")):
        ax.set_xlabel("t"), ax.set_ylabel(label), ax.grid(alpha=0.3)
    a3.set_ylim(-20, 15)
    a1.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out)


# --- forward noising -------------------------------------------------------------------------


def noised_copies(
    x0: Tensor, schedule: S.Schedule, t: Tensor, *, space: DataSpace | None = None, seed: int = 0
) -> Tensor:
    """``(L, *x0.shape)``: one example ``x0`` (data units) noised to each of the ``L`` times ``t`` with
    one noise draw, ``x_t = alpha(t) z + sigma_vp(t) eps`` in the model's space ``z = space.encode(x0)``,
    decoded back so every copy is in data units (the VP view also for a VE schedule, so all copies
    have about the same size)."""
    space = space or DataSpace()
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    z = space.encode(x0.float())
    t64 = torch.as_tensor(t, dtype=torch.float64)
    a, s = S.alpha(schedule, t64).float(), S.sigma_vp(schedule, t64).float()
    return torch.stack([space.decode(ai * z + si * eps) for ai, si in zip(a, s)])


def plot_noising(picture: str | Path, schedule: S.Schedule, t: Tensor, out: str | Path, *, title: str = "") -> Path:
    """The adapter's ``picture`` of the noised copies (a PNG) above the schedule's log-SNR with the
    copies' times ``t`` marked, so each copy can be read against its noise level."""
    plt = _pyplot()
    try:
        img = plt.imread(str(picture))
    except (OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"cannot read the picture {str(picture)!r}: {e}") from None
    h, w = img.shape[:2]
    width = 9.0
    top = min(8.0, max(1.5, width * h / w))
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(width, top + 2.4), height_ratios=[top, 2.0])
    a1.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
    a1.axis("off")
    a1.set_title(title or "forward noising", fontsize=10)
    grid = torch.linspace(0, 1, 401, dtype=torch.float64)
    tt = torch.as_tensor(t, dtype=torch.float64)
    lam = schedule.logsnr(tt)
    a2.plot(grid, schedule.logsnr(grid), lw=1.3, color="0.3")
    a2.scatter(tt, lam, color="C3", zorder=3, s=18)
    for ti, li in zip(tt.tolist(), lam.tolist()):
        a2.annotate(f"t={ti:.2f}", (ti, li), textcoords="offset points", xytext=(3, 4), fontsize=7)
    a2.set_xlabel("t"), a2.set_ylabel("log-SNR"), a2.grid(alpha=0.3)
    a2.set_ylim(max(-25.0, float(lam.min()) - 3), min(25.0, float(lam.max()) + 4))
    fig.tight_layout()
    return _save(fig, out)


# --- loss curves -----------------------------------------------------------------------------


def smooth(values: Sequence[float], weight: float = 0.9) -> list[float]:
    """An exponential moving average with bias correction (TensorBoard's smoothing): the first
    points are not pulled towards zero."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight**i))
    return out


def _metrics_file(path: Path) -> Path:
    """A run folder's ``metrics.csv`` / ``metrics.jsonl``, or such a file given directly."""
    if path.is_file():
        if path.suffix not in (".csv", ".jsonl"):
            raise ValueError(f"{str(path)!r} is neither a run folder nor a metrics.csv / metrics.jsonl file")
        return path
    if not path.is_dir():
        raise ValueError(f"run folder {str(path)!r} does not exist")
    for name in ("metrics.csv", "metrics.jsonl"):
        if (path / name).is_file():
            return path / name
    raise ValueError(f"run folder {str(path)!r} holds no metrics.csv or metrics.jsonl")


def _read_losses(path: Path) -> tuple[list[int], list[float]]:
    from .train import read_metrics

    try:
        rows = read_metrics(path)
        steps, losses = [int(r["step"]) for r in rows], [float(r["loss"]) for r in rows]
    except (KeyError, TypeError, ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{str(path)!r} is not a training metrics file ({type(e).__name__}: {e})") from None
    if not rows:
        raise ValueError(f"{str(path)!r} has no logged steps yet")
    return steps, losses


def plot_loss(runs: str | Path | Sequence[str | Path], out: str | Path, *, weight: float = 0.9) -> Path:
    """Training loss against step (log scale) for one or several runs, overlaid: each run's logged
    windows as faint points and their smoothed curve (:func:`smooth`) over them. ``runs`` are run
    folders or their ``metrics.csv`` / ``metrics.jsonl`` files."""
    items = [runs] if isinstance(runs, (str, Path)) else list(runs)
    if not items:
        raise ValueError("no run folders given")
    files = [_metrics_file(Path(r)) for r in items]
    curves = [(f, *_read_losses(f)) for f in files]
    names = [f.parent.name for f in files]
    if len(set(names)) < len(names):
        names = [str(f.parent) for f in files]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6) if len(files) > 1 else (5, 3.2))
    for i, ((_, steps, losses), name) in enumerate(zip(curves, names)):
        color = f"C{i % 10}"
        ax.plot(steps, losses, ".", ms=3, alpha=0.35, color=color)
        ax.plot(steps, smooth(losses, weight), lw=1.5, color=color, label=name)
    ax.set_xlabel("step"), ax.set_ylabel("loss"), ax.set_yscale("log"), ax.grid(alpha=0.3, which="both")
    if len(files) > 1:
        ax.legend(fontsize=8)
    else:
        ax.set_title(names[0], fontsize=9)
    fig.tight_layout()
    return _save(fig, out)
