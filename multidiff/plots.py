"""Plots that know no modality: noise schedules, forward noising, loss curves, sampler accuracy.

Every function writes one PNG (matplotlib, Agg backend) and returns its path; bad input raises
``ValueError`` with one line naming the path, which the CLI turns into exit code 2. Pictures of
the data itself come from the modality adapter (:meth:`multidiff.modality.Modality.save_noising`).
"""

from __future__ import annotations

import csv
import math
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
    "plot_samplers",
    "smooth",
    "read_sampler_csv",
    "SAMPLER_CSV_FIELDS",
]

# The columns ``python benchmarks/samplers.py --csv FILE`` writes, one row per (problem, method, NFE).
SAMPLER_CSV_FIELDS = (
    "problem",
    "impl",
    "sampler",
    "config",
    "family",
    "stochastic",
    "nfe",
    "nfe_used",
    "ode",
    "ode_med",
    "ll",
    "tv",
    "sw",
)


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


# --- sampler accuracy ------------------------------------------------------------------------


def _float(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def read_sampler_csv(path: str | Path) -> list[dict[str, Any]]:
    """The rows of ``benchmarks/samplers.py --csv``, numbers parsed (``nan`` where a metric does not apply)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"sampler benchmark CSV {str(p)!r} does not exist")
    try:
        with open(p, newline="") as f:
            reader = csv.DictReader(f)
            missing = [
                k for k in ("problem", "impl", "sampler", "nfe", "ode", "sw") if k not in (reader.fieldnames or [])
            ]
            if missing:
                raise ValueError(
                    f"{str(p)!r} is not a sampler benchmark CSV (no column {missing[0]!r}); "
                    "write one with python benchmarks/samplers.py --csv FILE"
                )
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{str(p)!r} is not a sampler benchmark CSV ({e})") from None
    out = []
    for r in rows:
        row: dict[str, Any] = dict(r)
        for k in ("nfe", "nfe_used", "ode", "ode_med", "ll", "tv", "sw"):
            row[k] = _float(r.get(k, ""))
        row["stochastic"] = str(r.get("stochastic", "")).lower() in ("1", "true")
        row["family"] = r.get("family") or r["sampler"]
        out.append(row)
    if not out:
        raise ValueError(f"{str(p)!r} holds no benchmark rows")
    return out


_STYLES = {"multidiff": "-", "k-diffusion": "--", "diffusers": ":"}
FLOOR_IMPL = "true samples"  # the noise-floor rows' impl


def _best_per_nfe(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """The lowest finite ``key`` over a method's configurations at each NFE budget."""
    best: dict[float, float] = {}
    for r in rows:
        v = r[key]
        if math.isfinite(v) and v > 0 and math.isfinite(r["nfe"]):
            best[r["nfe"]] = min(v, best.get(r["nfe"], math.inf))
    xs = sorted(best)
    return xs, [best[x] for x in xs]


def plot_samplers(path: str | Path, out: str | Path) -> Path:
    """Sampler accuracy against NFE, log-log, from ``benchmarks/samplers.py --csv``: per problem,
    the ODE error of the deterministic samplers and the sliced Wasserstein distance of the
    stochastic ones, one line per sampler (its best grid or configuration at each NFE). Colours are
    sampler families, line styles implementations (multidiff solid, k-diffusion dashed, diffusers
    dotted); the grey line is the noise floor of true samples."""
    rows = read_sampler_csv(path)
    problems = list(dict.fromkeys(r["problem"] for r in rows))
    families = list(dict.fromkeys(r["family"] for r in rows if r["impl"] != FLOOR_IMPL))
    colors = {f: f"C{i % 10}" for i, f in enumerate(families)}
    nfes = sorted({r["nfe"] for r in rows if math.isfinite(r["nfe"])})
    panels = (("ode", False, "ODE error (deterministic)"), ("sw", True, "sliced W1 (stochastic)"))
    plt = _pyplot()
    fig, axes = plt.subplots(len(problems), 2, figsize=(11, 3.4 * len(problems)), squeeze=False)
    for axrow, problem in zip(axes, problems):
        mine = [r for r in rows if r["problem"] == problem]
        for ax, (key, stochastic, label) in zip(axrow, panels):
            methods = dict.fromkeys(
                (r["impl"], r["sampler"]) for r in mine if r["stochastic"] == stochastic and r["impl"] != FLOOR_IMPL
            )
            for impl, sampler in methods:
                sel = [r for r in mine if (r["impl"], r["sampler"]) == (impl, sampler)]
                xs, ys = _best_per_nfe(sel, key)
                if xs:
                    style = _STYLES.get(impl, "-.")
                    ax.plot(xs, ys, style, marker="o", ms=3, lw=1.2, color=colors[sel[0]["family"]])
            floor = [r[key] for r in mine if r["impl"] == FLOOR_IMPL and math.isfinite(r[key])]
            if floor:
                ax.axhline(floor[0], color="0.6", lw=1, label="true samples")
            ax.set_xscale("log"), ax.set_yscale("log"), ax.grid(alpha=0.3, which="both")
            ax.set_xticks(nfes, [f"{n:g}" for n in nfes], minor=False), ax.set_xticks([], minor=True)
            ax.set_xlabel("NFE"), ax.set_ylabel(label), ax.set_title(problem, fontsize=9)
    handles = [plt.Line2D([], [], color=colors[f], lw=2, label=f) for f in families]
    impls = list(dict.fromkeys(r["impl"] for r in rows if r["impl"] != FLOOR_IMPL))
    handles += [plt.Line2D([], [], color="k", ls=_STYLES.get(i, "-."), label=i) for i in impls]
    fig.legend(handles=handles, loc="center right", fontsize=7)
    fig.tight_layout(rect=(0, 0, 0.87, 1))
    return _save(fig, out)
