"""What the benchmark scripts share: timing, markdown tables, peer imports and training runs.

Run any script as a module from the repository root (``python -m benchmarks.NAME``), so that
``benchmarks``, ``multidiff`` and ``modalities`` import without touching ``sys.path``.
"""

from __future__ import annotations

import importlib
import importlib.util
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "ROOT",
    "synchronize",
    "median_time",
    "markdown_table",
    "load_kdiffusion_sampling",
    "optional_import",
    "train_run",
    "count_parameters",
]

ROOT = Path(__file__).resolve().parent.parent


def synchronize(device: torch.device | str | None) -> None:
    """Wait for the device's queued work (CUDA and other accelerators); nothing on the CPU."""
    if device is None:
        return
    device = torch.device(device)
    backend = getattr(torch, device.type, None)
    if device.type != "cpu" and backend is not None and hasattr(backend, "synchronize"):
        backend.synchronize()


def median_time(
    fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1, device: torch.device | str | None = None
) -> float:
    """Seconds per call of ``fn()``: the median of ``repeats`` timed calls after ``warmup`` untimed
    ones, the device synchronised before and after each timed call (so GPU work is counted)."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A markdown table; ``align`` is one letter per column (``l`` left, ``r`` right), default all left."""
    align = align or "l" * len(header)
    if len(align) != len(header):
        raise ValueError(f"align has {len(align)} letters for {len(header)} columns")
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    lines = ["| " + " | ".join(str(h) for h in header) + " |", rule]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def optional_import(name: str) -> types.ModuleType | None:
    """A peer library's module, or ``None`` (with one line on stderr) when it is missing or broken."""
    if importlib.util.find_spec(name.split(".")[0]) is None:
        return None
    try:
        return importlib.import_module(name)
    except Exception as exc:  # pragma: no cover - depends on the environment
        print(f"# {name} not usable: {exc!r}", file=sys.stderr)
        return None


def load_kdiffusion_sampling() -> types.ModuleType | None:
    """``k_diffusion.sampling`` without the package ``__init__`` (which imports models, CLIP, ...);
    the full import as a fallback; ``None`` if k-diffusion is not installed or fails to import."""
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None:
        return None
    if "k_diffusion" not in sys.modules and spec.submodule_search_locations:
        pkg = types.ModuleType("k_diffusion")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["k_diffusion"] = pkg
        try:
            return importlib.import_module("k_diffusion.sampling")
        except Exception:
            for mod in [m for m in sys.modules if m == "k_diffusion" or m.startswith("k_diffusion.")]:
                del sys.modules[mod]
    return optional_import("k_diffusion.sampling")


def train_run(config: str, run: Path, overrides: Sequence[str], *, log: Path | None = None) -> float:
    """``multidiff train CONFIG --out-dir RUN --set train.progress=false --set ...`` in a subprocess,
    exactly as a user runs it; its output to ``log`` (else to this process's); the wall clock in seconds."""
    cmd = [sys.executable, "-m", "multidiff.cli", "train", config, "--out-dir", str(run)]
    for o in ["train.progress=false", *overrides]:
        cmd += ["--set", o]
    t0 = time.perf_counter()
    if log is None:
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    else:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as f:
            subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT)
    return time.perf_counter() - t0


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
