"""Checkpoint integrity: a write that fails anywhere (a full disk included) leaves no half-written
folder and names the last good checkpoint; every file's SHA-256 is checked on every load; a load
that fails leaves the trainer exactly as it was."""

from __future__ import annotations

import copy
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch
import yaml
from helpers import tiny_run

from multidiff import checkpoint as CK
from multidiff import config as C
from multidiff.checkpoint import find_checkpoint, list_checkpoints
from multidiff.cli import main
from multidiff.pipeline import load_pipeline
from multidiff.train import Trainer

ROOT = Path(__file__).resolve().parents[1]


def _two_checkpoints(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """A 2-step run checkpointed at steps 1 and 2: (run folder, its config file, step 1, step 2)."""
    run = tmp_path / "r"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_run(run, train={"steps": 2, "checkpoint_every": 1, "threads": 1})))
    assert main(["train", str(cfg)]) == 0
    old, new = list_checkpoints(run)
    return run, cfg, old, new


def _flip_tensor_bytes(f: Path, n: int = 64) -> None:
    """Flip ``n`` bytes in the middle of a safetensors file's tensor data, header left intact
    (as bit rot or a bad copy would): the file still parses, only its numbers changed."""
    data = bytearray(f.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")  # 8-byte header length, then the JSON header
    at = start + (len(data) - start - n) // 2
    data[at : at + n] = bytes(b ^ 0xFF for b in data[at : at + n])
    f.write_bytes(bytes(data))
    safetensors.torch.load(bytes(data))  # still a well-formed file: only a hash can tell


def _rehash(ckpt: Path) -> None:
    """Record the files' current hashes in meta.json: a checkpoint consistent in itself."""
    meta = json.loads((ckpt / "meta.json").read_text())
    for name in meta["files"]:
        data = (ckpt / name).read_bytes()
        meta["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (ckpt / "meta.json").write_text(json.dumps(meta))


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("multidiff: error: "), err
    return lines[0]


# --- a write that fails in any writer ------------------------------------------------------


def _safetensors_full(path: str) -> None:
    Path(path).write_bytes(b"\0" * 100)  # part of it got out
    # safetensors' own words for a full disk (0.8), not an OSError
    raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


WRITERS = {  # writer: (what to patch, the call that fails: the second checkpoint's, the words expected)
    "model.safetensors": ("save_file", 3, "No space left on device"),
    "ema.safetensors": ("save_file", 4, "No space left on device"),
    "state.pt": ("torch.save", 2, "Input/output error"),
    "meta.json": ("_write_meta", 2, "Permission denied"),
    "rename": ("os.replace", 2, "Input/output error"),
}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_write_failing_in_any_writer_leaves_no_temporary_folder_and_names_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch, capsys, writer: str
) -> None:
    target, fail_at, words = WRITERS[writer]
    calls = {"n": 0}

    def failing(real, fail):
        def wrapper(*a, **k):
            calls["n"] += 1
            return fail(*a, **k) if calls["n"] == fail_at else real(*a, **k)

        return wrapper

    def partly(code: int, arg: int):  # writes a little to its ``arg``-th argument, then fails
        def fail(*a, **k):
            Path(a[arg]).write_bytes(b"\0" * 10)  # part of it got out
            raise OSError(code, os.strerror(code))

        return fail

    if target == "save_file":
        real = safetensors.torch.save_file
        monkeypatch.setattr(safetensors.torch, "save_file", failing(real, lambda t, f, **k: _safetensors_full(f)))
    elif target == "torch.save":
        monkeypatch.setattr(CK.torch, "save", failing(CK.torch.save, partly(errno.EIO, 1)))
    elif target == "_write_meta":
        monkeypatch.setattr(CK, "_write_meta", failing(CK._write_meta, partly(errno.EACCES, 0)))
    else:
        real_replace = os.replace

        def replace(src, dst, *a, **k):  # only the checkpoint's own rename fails
            if Path(src).name.startswith(".tmp_step_"):
                calls["n"] += 1
                if calls["n"] == fail_at:
                    raise OSError(errno.EIO, os.strerror(errno.EIO))
            return real_replace(src, dst, *a, **k)

        monkeypatch.setattr(CK.os, "replace", replace)
    run = tmp_path / "r"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_run(run, train={"steps": 2, "checkpoint_every": 1, "threads": 1})))
    assert main(["train", str(cfg)]) == 1
    line = _one_error_line(capsys.readouterr().err)
    good = run / "checkpoints" / "step_00000001"
    assert f"cannot write checkpoint {run / 'checkpoints' / 'step_00000002'} ({words})" in line, line
    assert line.endswith(f"the last good checkpoint {good} is intact")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000001"]  # no .tmp_* left
    monkeypatch.undo()
    ck = find_checkpoint(run)  # the previous checkpoint loads, verified
    assert ck.path == good and ck.weights("model") and ck.weights("ema") and ck.training_state()["step"] == 1
    assert main(["train", str(cfg), "--resume"]) == 0
    assert [p.name for p in list_checkpoints(run)] == ["step_00000001", "step_00000002"]


FULL_DISK = r"""
import contextlib, io, json, os, resource, signal, subprocess, sys
from pathlib import Path

mode, cfg, run = sys.argv[1], sys.argv[2], Path(sys.argv[3])
if mode == "tmpfs" and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(run)]).returncode:
    sys.exit(3)  # no mount here: the caller uses the file-size limit instead

import safetensors.torch
from multidiff import train as T
from multidiff.checkpoint import find_checkpoint, list_checkpoints
from multidiff.cli import main

out = {"mode": mode, "raised_in": []}
real_save, real_save_file = T.save_checkpoint, safetensors.torch.save_file
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)


def save_file(*a, **k):  # passes through; notes which writer the real failure came out of
    try:
        return real_save_file(*a, **k)
    except BaseException as e:
        out["raised_in"].append(f"save_file: {type(e).__name__}")
        raise


def save_then_fill(*a, **k):  # after the first checkpoint, leave room for half a model file
    done = real_save(*a, **k)
    if "model_bytes" not in out:
        room = (done / "model.safetensors").stat().st_size // 2
        out["model_bytes"] = room * 2
        if mode == "tmpfs":
            st = os.statvfs(run)
            with open(run / "filler", "wb") as fh:
                fh.write(b"\0" * (st.f_bavail * st.f_frsize - room))
        else:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
            resource.setrlimit(resource.RLIMIT_FSIZE, (room, hard))
    return done


safetensors.torch.save_file, T.save_checkpoint = save_file, save_then_fill
err = io.StringIO()
with contextlib.redirect_stderr(err):
    out["rc"] = main(["train", cfg])
out["err"] = err.getvalue()
out["left"] = sorted(p.name for p in (run / "checkpoints").iterdir())
ck = find_checkpoint(run)
ck.weights("model"), ck.weights("ema"), ck.training_state()  # the last good one loads, verified
if mode == "tmpfs":
    (run / "filler").unlink()  # room again
else:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
with contextlib.redirect_stderr(io.StringIO()):
    out["resume_rc"] = main(["train", cfg, "--resume"])
out["after"] = [p.name for p in list_checkpoints(run)]
print(json.dumps(out))
"""


def test_a_real_full_file_system_while_checkpointing(tmp_path: Path) -> None:
    """Real writes failing for real: a small tmpfs filled up (in a private mount namespace, where
    this machine allows one), else a file-size limit (RLIMIT_FSIZE, EFBIG) on the process. Either
    way the first checkpoint writer, safetensors, is the one that fails."""
    script = tmp_path / "full_disk.py"
    script.write_text(FULL_DISK)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    attempts = [(["unshare", "-rm"], "tmpfs")] if sys.platform == "linux" and shutil.which("unshare") else []
    for prefix, mode in [*attempts, ([], "fsize")]:
        run = tmp_path / mode
        run.mkdir()
        cfg = tmp_path / f"{mode}.yaml"
        cfg.write_text(yaml.safe_dump(tiny_run(run, train={"steps": 2, "checkpoint_every": 1, "threads": 1})))
        r = subprocess.run(
            [*prefix, sys.executable, str(script), mode, str(cfg), str(run)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if r.returncode == 0 or mode == "fsize":
            break
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"full disk made with: {out['mode']}")
    words = "No space left on device" if out["mode"] == "tmpfs" else "File too large"
    assert out["rc"] == 1 and out["raised_in"] == ["save_file: SafetensorError"]
    line = _one_error_line(out["err"])
    assert f"cannot write checkpoint {run / 'checkpoints' / 'step_00000002'} ({words})" in line, line
    assert line.endswith(f"the last good checkpoint {run / 'checkpoints' / 'step_00000001'} is intact")
    assert out["left"] == ["step_00000001"]  # no .tmp_* folder
    assert out["resume_rc"] == 0 and out["after"] == ["step_00000001", "step_00000002"]


# --- content hashes ------------------------------------------------------------------------


def test_every_checkpoint_records_the_sha256_of_every_file(tmp_path: Path) -> None:
    _, _, old, new = _two_checkpoints(tmp_path)
    for ck in (old, new):
        files = json.loads((ck / "meta.json").read_text())["files"]
        assert sorted(files) == ["ema.safetensors", "model.safetensors", "state.pt"]
        for name, rec in files.items():
            data = (ck / name).read_bytes()
            assert rec == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@pytest.mark.parametrize("which", ["model", "ema"])
def test_flipped_tensor_bytes_are_refused_on_resume_with_the_file_and_the_earlier_checkpoint(
    tmp_path: Path, capsys, which: str
) -> None:
    run, cfg, old, new = _two_checkpoints(tmp_path)
    capsys.readouterr()
    f = new / f"{which}.safetensors"
    _flip_tensor_bytes(f)
    cfg.write_text(yaml.safe_dump(tiny_run(run, train={"steps": 3, "checkpoint_every": 1, "threads": 1})))
    assert main(["train", str(cfg), "--resume"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"cannot read {f}: its content does not match the SHA-256" in line and f"--resume {old}" in line
    assert list_checkpoints(run)[-1] == new  # nothing trained on it
    assert main(["train", str(cfg), "--resume", str(old)]) == 0


def test_flipped_tensor_bytes_are_refused_on_sample_and_init_from(tmp_path: Path, capsys) -> None:
    run, _, old, new = _two_checkpoints(tmp_path)
    capsys.readouterr()
    ema, model = new / "ema.safetensors", new / "model.safetensors"
    _flip_tensor_bytes(ema)
    _flip_tensor_bytes(model)
    out = tmp_path / "s.png"
    assert main(["sample", str(run), "-n", "2", "--steps", "2", "--out", str(out)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"cannot read {ema}: its content does not match" in line and f"earlier checkpoint: {old}" in line
    assert not out.exists()
    with pytest.raises(ValueError, match=f"cannot read {model}: its content does not match"):
        load_pipeline(new, weights="model")
    with pytest.raises(ValueError, match=f"cannot read {ema}: its content does not match"):
        Trainer(C.resolve_config(tiny_run(tmp_path / "ft", train={"init_from": str(run), "threads": 1})))
    assert main(["sample", str(old), "-n", "2", "--steps", "2", "--out", str(out)]) == 0


def test_a_checkpoint_without_hashes_still_loads_with_a_warning(tmp_path: Path) -> None:
    run, cfg, _, new = _two_checkpoints(tmp_path)
    meta = json.loads((new / "meta.json").read_text())
    del meta["files"]  # as an older multidiff wrote it
    (new / "meta.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match=f"checkpoint {new} records no content hashes"):
        load_pipeline(run)
    cfg.write_text(yaml.safe_dump(tiny_run(run, train={"steps": 3, "checkpoint_every": 1, "threads": 1})))
    with pytest.warns(UserWarning, match="records no content hashes"):
        assert main(["train", str(cfg), "--resume"]) == 0
    assert "files" in json.loads((list_checkpoints(run)[-1] / "meta.json").read_text())


# --- nothing is half-loaded ----------------------------------------------------------------


def _everything(tr: Trainer) -> dict:
    """All the state a resume changes, copied."""
    return {
        "net": {k: v.clone() for k, v in tr.net.state_dict().items()},
        "ema": {k: v.clone() for k, v in tr.ema.state_dict().items()},
        "opt": copy.deepcopy(tr.opt.state_dict()),
        "rng": torch.get_rng_state(),
        "step": tr.step,
    }


def _assert_identical(a, b, where: str = "") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_identical(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    else:
        assert a == b, where


def test_a_failed_resume_leaves_the_trainer_exactly_as_it_was(tmp_path: Path) -> None:
    cfg = C.resolve_config(tiny_run(tmp_path / "r", train={"steps": 2, "checkpoint_every": 1, "threads": 1}))
    tr = Trainer(cfg)
    tr.fit()
    old, new = list_checkpoints(tmp_path / "r")
    corrupt = tmp_path / "corrupt"  # step 2 with bit rot in its EMA
    shutil.copytree(new, corrupt)
    _flip_tensor_bytes(corrupt / "ema.safetensors")
    other_ema = tmp_path / "other_ema"  # step 1 whose EMA holds one tensor too few (hashes consistent)
    shutil.copytree(old, other_ema)
    ema = safetensors.torch.load_file(other_ema / "ema.safetensors")
    ema.pop(sorted(ema)[-1])
    safetensors.torch.save_file(ema, other_ema / "ema.safetensors")
    _rehash(other_ema)
    bad_rng = tmp_path / "bad_rng"  # step 1 whose state.pt fits everything but the RNG, applied last
    shutil.copytree(old, bad_rng)
    st = torch.load(bad_rng / "state.pt", weights_only=True)
    st["rng_cpu"] = torch.zeros(3)
    torch.save(st, bad_rng / "state.pt")
    _rehash(bad_rng)
    other_opt = tmp_path / "other_opt"  # step 1 whose optimizer state has a parameter too few
    shutil.copytree(old, other_opt)
    st = torch.load(other_opt / "state.pt", weights_only=True)
    st["optimizer"]["param_groups"][0]["params"].pop()
    torch.save(st, other_opt / "state.pt")
    _rehash(other_opt)
    before = _everything(tr)
    for bad, words in [
        (corrupt, "ema.safetensors: its content does not match"),
        (other_ema, "ema.safetensors was made for another model"),
        (bad_rng, "cannot load .*state.pt into this run"),
        (other_opt, "cannot load .*state.pt into this run"),
    ]:
        with pytest.raises(ValueError, match=words):
            tr._resume(str(bad))  # what Trainer(cfg, resume=...) and the CLI's --resume call
        _assert_identical(before, _everything(tr), bad.name)
    tr._resume(str(old))  # a good one still loads into the same trainer
    assert tr.step == 1
