"""Checkpoints that a crash cannot half-write and that load without unpickling objects.

A checkpoint is a folder ``<run>/checkpoints/step_00001000/`` holding

* ``model.safetensors`` and ``ema.safetensors``: the network's weights and their EMA;
* ``meta.json``: the resolved config, step, data description, versions and git revision;
* ``state.pt``: optimizer, grad-scaler and RNG state, read back with ``torch.load(weights_only=True)``.

It is written under a temporary name and renamed into place, so a folder named ``step_*`` is
always complete; older ones beyond ``keep`` are removed only after the new one is in place.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "FORMAT",
    "Checkpoint",
    "save_checkpoint",
    "find_checkpoint",
    "list_checkpoints",
    "load_state_dict_checked",
    "grow_class_embedding",
]

FORMAT = "multidiff-checkpoint/1"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def _git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _state_for_safetensors(module: nn.Module) -> dict[str, Tensor]:
    # safetensors refuses shared or non-contiguous storage; clone to be safe.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint folder and its metadata."""

    path: Path
    meta: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    @property
    def config(self) -> dict[str, Any]:
        """The run's resolved config, one saved by an earlier version brought up to date
        (:func:`multidiff.config.migrate_config`)."""
        from .config import migrate_config

        return migrate_config(self.meta["config"])

    def weights(self, which: str = "ema") -> dict[str, Tensor]:
        """``model`` or ``ema`` weights as a state dict (CPU tensors)."""
        from safetensors.torch import load_file

        if which not in ("model", "ema"):
            raise ValueError(f"weights must be 'model' or 'ema', got {which!r}")
        f = self.path / f"{which}.safetensors"
        try:
            return load_file(str(f))
        except Exception as e:  # safetensors raises its own error types
            raise ValueError(f"cannot read {f}: {e}{self._earlier()}") from None

    def _earlier(self) -> str:
        """A pointer to the newest checkpoint before this one in its run, for error messages."""
        older = [p for p in list_checkpoints(self.path.parent.parent) if p.name < self.path.name]
        if not older:
            return ""
        return f". An earlier checkpoint: {older[-1]} (multidiff sample {older[-1]}, or train --resume {older[-1]})"

    def training_state(self, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        """Optimizer, scaler and RNG state; loaded with ``weights_only=True`` (no arbitrary objects)."""
        f = self.path / "state.pt"
        try:
            return torch.load(f, map_location=map_location, weights_only=True)
        except Exception as e:
            raise ValueError(f"cannot read {f}: {e}{self._earlier()}") from None


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model: nn.Module,
    ema: nn.Module,
    meta: dict[str, Any],
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write ``<run_dir>/checkpoints/step_<step>`` atomically; keep the newest ``keep`` checkpoints."""
    from safetensors.torch import save_file

    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}_{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    full_meta = {
        "format": FORMAT,
        "step": step,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {"multidiff": __import__("multidiff").__version__, "torch": torch.__version__},
        "git_revision": _git_revision(),
        **meta,
    }
    try:
        save_file(_state_for_safetensors(model), str(tmp / "model.safetensors"), metadata={"format": FORMAT})
        save_file(_state_for_safetensors(ema), str(tmp / "ema.safetensors"), metadata={"format": FORMAT})
        torch.save(state, tmp / "state.pt")
        (tmp / "meta.json").write_text(json.dumps(full_meta, indent=2, sort_keys=True))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
    except OSError as e:  # a full disk, a quota, a vanished mount: the last good checkpoint stays
        shutil.rmtree(tmp, ignore_errors=True)
        kept = list_checkpoints(run_dir)
        raise OSError(
            e.errno,
            f"cannot write checkpoint {final} ({e.strerror or e}); "
            + (f"the last good checkpoint {kept[-1]} is intact" if kept else "no earlier checkpoint exists"),
        ) from None
    if final.exists():  # the same step saved again (a resumed run): swap, then drop the old one
        old = root / f".old_step_{step:08d}_{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(root)
    for stale in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and (p / "meta.json").is_file()
    ]
    return [p for _, p in sorted(found)]


def find_checkpoint(path: str | Path) -> Checkpoint:
    """A checkpoint folder, or the newest checkpoint of a run folder."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"checkpoint {str(p)!r} does not exist")
    if not (p / "meta.json").is_file():
        found = list_checkpoints(p)
        if not found:
            raise ValueError(
                f"{str(p)!r} is neither a checkpoint folder (no meta.json) nor a run folder with checkpoints"
            )
        p = found[-1]
    try:
        meta = json.loads((p / "meta.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {p / 'meta.json'}: {e}") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{p / 'meta.json'} is not a {FORMAT} checkpoint (format {meta.get('format')!r})")
    return Checkpoint(p, meta)


def load_state_dict_checked(module: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Load ``state`` into ``module`` exactly, or fail with one line saying how they differ."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        (k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items() if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            k, a, b = shapes[0]
            parts.append(
                f"{len(shapes)} tensors differ in shape (e.g. {k!r}: {a} in the checkpoint, {b} in this model)"
            )
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]!r})")
        raise ValueError(f"checkpoint {source} was made for another model: " + "; ".join(parts))
    module.load_state_dict(state)


def grow_class_embedding(state: dict[str, Tensor], key: str, num_classes: int) -> dict[str, Tensor]:
    """Fit a class-embedding table with a trailing null row to ``num_classes + 1`` rows.

    Known classes keep their rows, the null class (the last row, used for classifier-free
    guidance) moves to the new last index, and new classes start from the null row's embedding,
    so before fine-tuning a new class generates like the unconditional model.
    """
    if key not in state:
        return state
    old = state[key]
    old_classes = old.shape[0] - 1
    if old_classes > num_classes:
        raise ValueError(f"cannot shrink {key!r} from {old_classes} classes to {num_classes}")
    if old_classes == num_classes:
        return state
    null = old[-1:]
    new = torch.cat([old[:-1], null.expand(num_classes - old_classes, -1), null], dim=0)
    return {**state, key: new.contiguous()}
