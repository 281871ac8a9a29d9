"""Plots that know no modality: loss curves from a run's metrics file."""

from __future__ import annotations

from pathlib import Path

__all__ = ["plot_loss"]


def plot_loss(metrics: str | Path, out: str | Path) -> Path:
    """The training loss (per logged window, log scale) from ``metrics.csv`` or ``metrics.jsonl``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .train import read_metrics

    rows = read_metrics(Path(metrics))
    if not rows:
        raise ValueError(f"{metrics} has no logged steps yet")
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1.2)
    ax.set_xlabel("step"), ax.set_ylabel("loss"), ax.set_yscale("log"), ax.grid(alpha=0.3)
    ax.set_title(Path(metrics).parent.name, fontsize=9)
    fig.tight_layout()
    p = Path(out)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p
