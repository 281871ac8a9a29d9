"""Faults injected into training: non-finite losses, signals, a process killed outright."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import tiny_run
from safetensors.torch import load_file

from multidiff import config as C
from multidiff import train as T
from multidiff.checkpoint import list_checkpoints
from multidiff.cli import main
from multidiff.train import Trainer

ROOT = Path(__file__).resolve().parents[1]


def _poison(monkeypatch, bad_steps: set[int]) -> None:
    """Make the loss NaN on the given (1-based) optimizer steps."""
    real = T.diffusion_loss
    calls = {"n": 0}

    def loss(*a, **k):
        calls["n"] += 1
        out = real(*a, **k)
        return out * float("nan") if calls["n"] in bad_steps else out

    monkeypatch.setattr(T, "diffusion_loss", loss)


def _state(tr: Trainer) -> tuple[dict, dict]:
    return (
        {k: v.clone() for k, v in tr.net.state_dict().items()},
        {k: v.clone() for k, v in tr.ema.state_dict().items()},
    )


def test_a_nonfinite_step_is_skipped_and_leaves_weights_and_ema_alone(tmp_path: Path, monkeypatch) -> None:
    _poison(monkeypatch, {3})
    tr = Trainer(C.resolve_config(tiny_run(tmp_path / "r", train={"steps": 5})))
    batches = tr._loader()
    for _ in range(2):
        tr.train_step(batches)
    before = _state(tr)
    tr.train_step(batches)  # the NaN step (the loop around it warns; see the next test)
    assert tr.skipped
    after = _state(tr)
    assert tr.step == 3
    for b, a in zip(before, after):
        assert all(torch.equal(b[k], a[k]) for k in b)
    tr.train_step(batches)
    assert not tr.skipped and not all(torch.equal(before[0][k], tr.net.state_dict()[k]) for k in before[0])
    assert all(torch.isfinite(p).all() for p in tr.net.parameters())


def test_the_loop_warns_logs_good_steps_only_and_finishes(tmp_path: Path, monkeypatch) -> None:
    _poison(monkeypatch, {2, 3})
    tr = Trainer(C.resolve_config(tiny_run(tmp_path / "r", train={"steps": 5, "log_every": 5})))
    with pytest.warns(RuntimeWarning) as caught:
        result = tr.fit()
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2 and "step 2: non-finite loss" in messages[0] and "(2 in a row)" in messages[1]
    assert result.step == 5 and len(result.losses) == 1 and result.losses[0][1] == result.losses[0][1]
    assert all(torch.isfinite(p).all() for p in tr.ema.parameters())


def test_too_many_nonfinite_steps_stop_with_the_last_good_weights_saved(tmp_path: Path, monkeypatch, capsys) -> None:
    _poison(monkeypatch, {3, 4, 5})
    run = tmp_path / "r"
    d = tiny_run(run, train={"steps": 10, "max_nonfinite_steps": 3})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(d))
    good = {}

    real_step = Trainer.train_step

    def spy(self, batches):
        if self.step == 2:
            good.update({k: v.clone() for k, v in self.net.state_dict().items()})
        return real_step(self, batches)

    monkeypatch.setattr(Trainer, "train_step", spy)
    with pytest.warns(RuntimeWarning):
        code = main(["train", str(tmp_path / "c.yaml")])
    assert code == 1
    err = capsys.readouterr().err
    assert "3 steps in a row had a non-finite loss or gradient" in err and "step_00000005" in err
    ck = list_checkpoints(run)[-1]
    assert ck.name == "step_00000005"
    saved = load_file(str(ck / "model.safetensors"))
    assert all(torch.equal(saved[k], good[k]) for k in good)


def _write_config(tmp_path: Path, steps: int, every: int) -> Path:
    d = tiny_run(tmp_path / "run", train={"steps": steps, "checkpoint_every": every, "log_every": 1})
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def _launch(cfg: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "multidiff", "train", str(cfg), "--set", "train.threads=1", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_checkpoint(run: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.time()
    while not list_checkpoints(run):
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout, "no checkpoint appeared"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sigint_and_sigterm_write_a_checkpoint_and_exit_0(tmp_path: Path, sig: int) -> None:
    cfg = _write_config(tmp_path, steps=100_000, every=2)
    proc = _launch(cfg)
    _wait_for_checkpoint(tmp_path / "run", proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "interrupted at step" in out and "continue with --resume" in out
    step = int(out.split("interrupted at step ")[1].split(";")[0])
    assert list_checkpoints(tmp_path / "run")[-1].name == f"step_{step:08d}"


def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path: Path) -> None:
    """SIGKILL at a random moment after the first checkpoint; --resume finishes the run; the weights
    equal a run that was never stopped."""
    steps = 12
    cfg = _write_config(tmp_path, steps=steps, every=2)
    proc = _launch(cfg)
    _wait_for_checkpoint(tmp_path / "run", proc)
    time.sleep(float(torch.rand(()) * 0.5))
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = list_checkpoints(tmp_path / "run")[-1].name
    resumed = _launch(cfg, "--resume")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    ref = tmp_path / "ref"
    Trainer(C.resolve_config(tiny_run(ref, train={"steps": steps, "checkpoint_every": 2, "log_every": 1}))).fit()
    for name in ("model", "ema"):
        a = load_file(str(list_checkpoints(tmp_path / "run")[-1] / f"{name}.safetensors"))
        b = load_file(str(list_checkpoints(ref)[-1] / f"{name}.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), (name, killed_at)
