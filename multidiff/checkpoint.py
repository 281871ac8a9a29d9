"""Checkpoints that a crash cannot half-write and that load without unpickling objects.

A checkpoint is a folder ``<run>/checkpoints/step_00001000/`` holding

* ``model.safetensors`` and ``ema.safetensors``: the network's weights and their EMA;
* ``meta.json``: the resolved config, step, data description, versions and git revision;
* ``state.pt``: optimizer, grad-scaler and RNG state, read back with ``torch.load(weights_only=True)``.

It is written under a temporary name and renamed into place, so a folder named ``step_*`` is
always complete; older ones beyond ``keep`` are removed only after the new one is in place. A
write that fails for any reason (a full disk, an I/O error, a permission, an error inside
safetensors) removes the temporary folder and raises :class:`CheckpointWriteError` (an
``OSError``) naming the last good checkpoint.

``meta.json``, written last, records the size and SHA-256 of every other file (``files``). Every
read checks them (hashing the bytes it reads anyway, then deserializing those same bytes), so a
file changed on disk or in a copy is refused by name instead of being trained or sampled from;
a checkpoint written before hashes existed loads with a warning.
"""

from __future__ import annotations

import errno as _errno
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "FORMAT",
    "Checkpoint",
    "CheckpointWriteError",
    "save_checkpoint",
    "find_checkpoint",
    "list_checkpoints",
    "load_state_dict_checked",
    "check_state_dict",
    "grow_class_embedding",
]

FORMAT = "multidiff-checkpoint/1"
_STEP_DIR = re.compile(r"^step_(\d+)$")
_FILES = ("model.safetensors", "ema.safetensors", "state.pt")  # hashed in meta.json["files"]


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the temporary folder is gone and ``strerror`` is one
    line naming the last good checkpoint (the command line prints it and exits 1)."""


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

    def read_bytes(self, name: str) -> bytes:
        """The bytes of one of the checkpoint's files, checked against the size and SHA-256 that
        ``meta.json`` recorded when it was written (``ValueError`` naming the file if they differ);
        a checkpoint without hashes (an older multidiff) is read unchecked, with a warning."""
        f = self.path / name
        try:
            data = f.read_bytes()
        except OSError as e:
            raise ValueError(f"cannot read {f}: {e.strerror or e}{self._earlier()}") from None
        files = self.meta.get("files")
        if not isinstance(files, dict):
            warnings.warn(
                f"checkpoint {self.path} records no content hashes (written by an older multidiff); "
                "its files are loaded unverified",
                UserWarning,
                stacklevel=3,
            )
            return data
        want = files.get(name)
        if not isinstance(want, dict) or "sha256" not in want:
            raise ValueError(f"cannot read {f}: meta.json records no hash for it{self._earlier()}")
        if "bytes" in want and len(data) != want["bytes"]:
            raise ValueError(
                f"cannot read {f}: it holds {len(data)} bytes, {want['bytes']} were written "
                f"(truncated or changed){self._earlier()}"
            )
        if hashlib.sha256(data).hexdigest() != want["sha256"]:
            raise ValueError(
                f"cannot read {f}: its content does not match the SHA-256 recorded when it was written "
                f"(corrupted on disk or in a copy){self._earlier()}"
            )
        return data

    def weights(self, which: str = "ema") -> dict[str, Tensor]:
        """``model`` or ``ema`` weights as a state dict (CPU tensors), verified against ``meta.json``."""
        from safetensors.torch import load

        if which not in ("model", "ema"):
            raise ValueError(f"weights must be 'model' or 'ema', got {which!r}")
        name = f"{which}.safetensors"
        data = self.read_bytes(name)
        try:
            return load(data)
        except Exception as e:  # safetensors raises its own error types
            raise ValueError(f"cannot read {self.path / name}: {e}{self._earlier()}") from None

    def _earlier(self) -> str:
        """A pointer to the newest checkpoint before this one in its run, for error messages."""
        older = [p for p in list_checkpoints(self.path.parent.parent) if p.name < self.path.name]
        if not older:
            return ""
        return f". An earlier checkpoint: {older[-1]} (multidiff sample {older[-1]}, or train --resume {older[-1]})"

    def training_state(self, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        """Optimizer, scaler and RNG state; loaded with ``weights_only=True`` (no arbitrary objects)."""
        data = self.read_bytes("state.pt")
        try:
            return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
        except Exception as e:
            raise ValueError(f"cannot read {self.path / 'state.pt'}: {e}{self._earlier()}") from None


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
    """Write ``<run_dir>/checkpoints/step_<step>`` atomically; keep the newest ``keep`` checkpoints.

    Any failure while writing (``OSError``, a safetensors or pickling error) removes the temporary
    folder and raises :class:`CheckpointWriteError` naming the last good checkpoint."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}_{os.getpid()}"
    full_meta = {
        "format": FORMAT,
        "step": step,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {"multidiff": __import__("multidiff").__version__, "torch": torch.__version__},
        "git_revision": _git_revision(),
        **meta,
    }
    try:
        _write_folder(tmp, model=model, ema=ema, meta=full_meta, state=state)
        _move_into_place(tmp, final)
    except BaseException as e:  # a full disk, a quota, a vanished mount, safetensors' own errors...
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(e, Exception):  # KeyboardInterrupt, SystemExit: cleaned up, passed on
            raise
        kept = list_checkpoints(run_dir)
        code = _errno_of(e)
        raise CheckpointWriteError(
            code,
            f"cannot write checkpoint {final} ({_reason(e, code)}); "
            + (f"the last good checkpoint {kept[-1]} is intact" if kept else "no earlier checkpoint exists"),
        ) from e
    _fsync_dir(root)
    for stale in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def _write_folder(tmp: Path, *, model: nn.Module, ema: nn.Module, meta: dict[str, Any], state: dict[str, Any]) -> None:
    """Every file of a checkpoint into ``tmp``, each synced; ``meta.json`` last, with the others' hashes."""
    from safetensors.torch import save_file

    tmp.parent.mkdir(parents=True, exist_ok=True)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(_state_for_safetensors(model), str(tmp / "model.safetensors"), metadata={"format": FORMAT})
    save_file(_state_for_safetensors(ema), str(tmp / "ema.safetensors"), metadata={"format": FORMAT})
    torch.save(state, tmp / "state.pt")
    files = {}
    for name in _FILES:  # read back once: synced to disk and hashed as written
        with open(tmp / name, "rb") as fh:
            data = fh.read()
            os.fsync(fh.fileno())
        files[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    _write_meta(tmp / "meta.json", {**meta, "files": files})
    _fsync_dir(tmp)


def _write_meta(path: Path, meta: dict[str, Any]) -> None:
    with open(path, "w") as fh:
        fh.write(json.dumps(meta, indent=2, sort_keys=True))
        fh.flush()
        os.fsync(fh.fileno())


def _move_into_place(tmp: Path, final: Path) -> None:
    if not final.exists():
        os.replace(tmp, final)
        return
    # the same step saved again (a resumed run): swap, then drop the old one
    old = final.parent / f".old_{final.name}_{os.getpid()}"
    os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        os.replace(old, final)  # put the old one back
        raise
    shutil.rmtree(old, ignore_errors=True)


def _errno_of(e: BaseException) -> int | None:
    """The errno of an ``OSError``, or of the I/O error safetensors reports in its message."""
    if isinstance(e, OSError) and e.errno is not None:
        return e.errno
    m = re.search(r"\(os error (\d+)\)|\bcode: (\d+)", str(e))  # "I/O error: ... (os error 28)"
    return int(m.group(1) or m.group(2)) if m else None


def _reason(e: BaseException, code: int | None) -> str:
    """One line: the OS's words for ``code`` when known, else the error's own text."""
    if isinstance(e, OSError) and e.strerror:
        text = e.strerror
    elif code is not None and code in _errno.errorcode:
        text = os.strerror(code)
    else:
        text = f"{type(e).__name__}: {e}"
    return " ".join(text.split())


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
    """Load ``state`` into ``module`` exactly, or fail with one line saying how they differ
    (``module`` is left untouched then)."""
    check_state_dict(module, state, source)
    module.load_state_dict(state)


def check_state_dict(module: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """``ValueError`` with one line saying how ``state`` does not fit ``module``; nothing is loaded."""
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


def save_tensors_atomic(tensors: dict[str, Tensor], meta: dict[str, str], file: Path) -> None:
    """``tensors`` to the safetensors ``file`` with ``meta``: written beside it, then moved over it
    (``os.replace``), so a reader sees the old file or the new one, never half of one (the latent
    and text-embedding caches)."""
    from safetensors.torch import save_file

    file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=file.parent)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=meta)
        os.replace(tmp, file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
