"""Sampler accuracy against NFE, log-log, from the CSV ``python -m benchmarks.samplers --csv FILE`` writes.

    python -m benchmarks.samplers --quick --csv samplers.csv
    python -m benchmarks.plot_samplers samplers.csv --out samplers.png

Benchmark plots live with the benchmarks: the core (``multidiff.plots``) names no peer library.
Bad input raises ``ValueError`` with one line naming the path (exit code 2 from the command line).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path
from typing import Any

from multidiff.plots import _pyplot, _save

__all__ = ["SAMPLER_CSV_FIELDS", "FLOOR_IMPL", "read_sampler_csv", "plot_samplers", "main"]

# The columns ``python -m benchmarks.samplers --csv FILE`` writes, one row per (problem, method, NFE).
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


def _float(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def read_sampler_csv(path: str | Path) -> list[dict[str, Any]]:
    """The rows of ``python -m benchmarks.samplers --csv``, numbers parsed (``nan`` where a metric does not apply)."""
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
                    "write one with python -m benchmarks.samplers --csv FILE"
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
    """Sampler accuracy against NFE, log-log, from ``python -m benchmarks.samplers --csv``: per problem,
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", metavar="BENCH_CSV", help="the CSV that python -m benchmarks.samplers --csv FILE wrote")
    p.add_argument("--out", default="samplers.png", help="the PNG (default: samplers.png)")
    args = p.parse_args(argv)
    try:
        print(f"wrote {plot_samplers(args.csv, args.out)}")
    except ValueError as e:
        print(f"plot_samplers: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
