"""A run killed or signalled at chosen moments resumes to the weights of a run never stopped.

Each run is a real ``multidiff train`` in a subprocess, started through a small wrapper that
patches one function to signal its own process at an exact point: mid-step, inside
``save_checkpoint`` between two files, after every file is written but before the rename, or at
the start of a step (SIGINT, SIGTERM; under ``torchrun`` on one rank only). Every resumed run is
checked to start at the step of the last intact checkpoint, from its output line
(``steps N -> M``) and from the metrics file (the rows it wrote itself), and every checkpoint a
stopped-and-resumed run writes, the last included, equals the uninterrupted run's tensor by tensor.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from helpers import tiny_run
from safetensors.torch import load_file

from multidiff import config as C
from multidiff.checkpoint import list_checkpoints
from multidiff.train import Trainer, read_metrics

ROOT = Path(__file__).resolve().parents[1]
# Each test runs three to five real training processes (about a minute together): in the full suite
# and CI, not in the quick `-m "not slow"` loop.
pytestmark = pytest.mark.slow
STEPS = 8  # checkpoints every 2 steps; every kill lands strictly between step 0 and STEPS

# ``python wrapper.py PLAN HOME train CONFIG ...``. PLAN (JSON) is ``{}`` or names a signal, the rank that
# sends it to itself (all when absent), a step and where: ``step`` (as step ``step`` + 1 begins),
# ``mid_step`` (inside step ``step``, after the optimizer's update, before the EMA's), ``save`` (as
# checkpoint ``step``'s ``file`` is about to be written) or ``rename`` (as checkpoint ``step``'s
# temporary folder is about to be renamed into place). Each rank runs in HOME/rank<RANK> and says
# which checkpoints it saved and at which step it left the training loop.
WRAPPER = textwrap.dedent(
    """
    import json, os, signal, sys
    from pathlib import Path

    plan, home, argv = json.loads(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    rank = int(os.environ.get("RANK", "0"))
    (home / f"rank{rank}").mkdir(parents=True, exist_ok=True)
    (home / f"rank{rank}" / "pid").write_text(str(os.getpid()))  # torchrun's workers: killed by pid on a hang
    os.chdir(home / f"rank{rank}")
    where, at = plan.get("where"), plan.get("step")

    def say(line):  # one write a line: the ranks share a pipe, and print() writes the newline apart under -u
        os.write(1, (line + "\\n").encode())

    def fire(point):
        if plan.get("rank", rank) == rank:
            say(f"wrapper: rank {rank} sends itself {plan['signal']} {point}")
            os.kill(os.getpid(), getattr(signal, plan["signal"]))

    def temporary(path):  # checkpoint `at`'s temporary folder
        return Path(path).name.startswith(".tmp") and f"step_{at:08d}" in Path(path).name

    import safetensors.torch as S  # patched before multidiff is imported, in case it imports save_file by name

    real_save_file = S.save_file

    def save_file(tensors, filename, *a, **k):
        f = Path(filename)
        if where == "save" and f.name == plan["file"] and temporary(f.parent):
            fire(f"before writing {f.parent.name}/{f.name}")
        return real_save_file(tensors, filename, *a, **k)

    S.save_file = save_file
    for name in ("replace", "rename"):  # Path.replace and Path.rename call these

        def renamer(src, dst, *a, _real=getattr(os, name), **k):
            if where == "rename" and temporary(src):
                fire(f"before renaming {Path(src).name}")
            return _real(src, dst, *a, **k)

        setattr(os, name, renamer)

    import multidiff.train as T
    from multidiff.cli import main

    real_step, real_ema, real_fit, real_save = T.Trainer.train_step, T.Trainer._update_ema, T.Trainer.fit, T.save_checkpoint

    def train_step(self, batches):
        if where == "step" and self.step == at:
            fire(f"as step {at + 1} begins")
        return real_step(self, batches)

    def update_ema(self):
        if where == "mid_step" and self.step == at:
            fire(f"inside step {at}, between the optimizer's update and the EMA's")
        return real_ema(self)

    def save_checkpoint(run_dir, step, **k):
        out = real_save(run_dir, step, **k)
        say(f"wrapper: rank {rank} saved step {step}")
        return out

    def fit(self):
        r = real_fit(self)
        say(f"wrapper: rank {rank} left the loop at step {r.step}, interrupted {r.interrupted}")
        return r

    T.Trainer.train_step, T.Trainer._update_ema, T.Trainer.fit = train_step, update_ema, fit
    T.save_checkpoint = save_checkpoint
    sys.exit(main(argv))
    """
)


def _run(out_dir: Path) -> dict[str, Any]:
    # keep every checkpoint, so each one a stopped-and-resumed run writes is compared
    train = {"steps": STEPS, "checkpoint_every": 2, "keep_checkpoints": 20, "log_every": 1, "threads": 1}
    return tiny_run(out_dir, train=train)


def _config(tmp: Path, out_dir: Path) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "run.yaml").write_text(yaml.safe_dump(_run(out_dir)))
    return tmp / "run.yaml"


def _train(tmp: Path, plan: dict[str, Any], *extra: str, nproc: int = 1, timeout: float = 240) -> tuple[int, str]:
    """``multidiff train tmp/run.yaml`` through the wrapper (under ``torchrun`` for ``nproc`` > 1):
    its exit status and output (stdout and stderr together)."""
    (tmp / "wrapper.py").write_text(WRAPPER)
    for old in (tmp / "ranks").glob("rank*/pid"):
        old.unlink()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    cmd = [sys.executable]
    if nproc > 1:
        cmd += ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone"]
    cmd += [str(tmp / "wrapper.py"), json.dumps(plan), str(tmp / "ranks"), "train", str(tmp / "run.yaml"), *extra]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher (and a run without torchrun)
        for f in (tmp / "ranks").glob("rank*/pid") if nproc > 1 else ():
            try:  # torchrun starts each worker in a session of its own: killpg misses them, and they hold the pipe
                os.kill(int(f.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        out, _ = proc.communicate()
        raise AssertionError(f"no exit within {timeout:.0f}s: {' '.join(cmd)}\n{out}") from None
    return proc.returncode, out


def _steps(run: Path) -> list[int]:
    """The steps of a run's intact checkpoints, oldest first."""
    return [int(re.search(r"step_(\d+)", p.name).group(1)) for p in list_checkpoints(run)]


def _saved(out: str) -> list[tuple[int, int]]:
    """(rank, step) of every checkpoint a run saved, from the wrapper's lines."""
    return [(int(r), int(s)) for r, s in re.findall(r"wrapper: rank (\d+) saved step (\d+)", out)]


def _mark_rows(run: Path) -> None:
    """Mark the metrics rows written so far (elapsed_s -1), so a resumed run's own rows stand out."""
    f = run / "metrics.csv"
    header, *rows = f.read_text().splitlines()
    i = header.split(",").index("elapsed_s")
    marked = [",".join("-1" if j == i else c for j, c in enumerate(row.split(","))) for row in rows]
    f.write_text("\n".join([header, *marked]) + "\n")


def _resumed_at(run: Path, out: str) -> int:
    """The step a resumed run started at, from its first output line (``steps N -> M``); checked
    against the metrics file: the rows it kept (marked) are steps 1..N, its own start at N + 1."""
    m = re.search(r"steps (\d+) -> (\d+)", out)
    assert m, out
    start = int(m.group(1))
    rows = read_metrics(run / "metrics.csv")
    kept = [int(r["step"]) for r in rows if r["elapsed_s"] == -1]
    own = [int(r["step"]) for r in rows if r["elapsed_s"] != -1]
    assert kept == list(range(1, start + 1)), (start, kept, out)
    assert own and own == list(range(start + 1, own[-1] + 1)), (start, own, out)
    return start


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _assert_matches(run: Path, reference: Path) -> list[int]:
    """Every checkpoint of ``run`` that ``reference`` also has (the last one included) holds the same
    weights, EMA and optimizer state, bit for bit; returns their steps."""
    theirs = {p.name: p for p in list_checkpoints(reference)}
    ours = list_checkpoints(run)
    assert ours[-1].name == f"step_{STEPS:08d}" and ours[-1].name in theirs, (ours, sorted(theirs))
    compared = []
    for ck in ours:
        if ck.name not in theirs:
            continue
        ref = theirs[ck.name]
        for name in ("model.safetensors", "ema.safetensors"):
            same = _same(load_file(str(ck / name)), load_file(str(ref / name)))
            assert same, f"{ck / name} differs from {ref / name}"
        a, b = (torch.load(p / "state.pt", weights_only=True) for p in (ck, ref))
        same = a["step"] == b["step"] and _same(a["optimizer"], b["optimizer"])
        assert same, f"{ck / 'state.pt'} differs from {ref / 'state.pt'} (step or optimizer state)"
        compared.append(a["step"])
    return compared


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run never stopped (in this process; its thread count restored afterwards)."""
    run = tmp_path_factory.mktemp("reference") / "run"
    threads = torch.get_num_threads()
    try:
        Trainer(C.resolve_config(_run(run))).fit()
    finally:
        torch.set_num_threads(threads)
    return run


def test_sigkill_mid_step_between_files_and_before_the_rename_resumes_to_the_uninterrupted_weights(
    tmp_path: Path, reference: Path
) -> None:
    run = tmp_path / "run"
    _config(tmp_path, run)
    tmp = lambda step: [p for p in (run / "checkpoints").iterdir() if p.name.startswith(f".tmp_step_{step:08d}")]  # noqa: E731

    # 1. inside step 3, weights updated but not the EMA: checkpoint 2 is the last intact one
    rc, out = _train(tmp_path, {"signal": "SIGKILL", "where": "mid_step", "step": 3})
    assert rc == -signal.SIGKILL and "sends itself SIGKILL inside step 3" in out, out
    assert _steps(run) == [2] and _saved(out) == [(0, 2)]
    _mark_rows(run)

    # 2. resumed at 2, killed inside checkpoint 4's save, model.safetensors written, ema.safetensors not
    rc, out = _train(tmp_path, {"signal": "SIGKILL", "where": "save", "file": "ema.safetensors", "step": 4}, "--resume")
    assert rc == -signal.SIGKILL and "sends itself SIGKILL before writing .tmp_step_00000004" in out, out
    assert _resumed_at(run, out) == 2
    [half] = tmp(4)
    assert (half / "model.safetensors").is_file() and not (half / "ema.safetensors").exists()
    assert _steps(run) == [2]  # the half-written folder is no checkpoint
    _mark_rows(run)

    # 3. resumed at 2 again, killed with checkpoint 6 written in full but not yet renamed into place
    rc, out = _train(tmp_path, {"signal": "SIGKILL", "where": "rename", "step": 6}, "--resume")
    assert rc == -signal.SIGKILL and "sends itself SIGKILL before renaming .tmp_step_00000006" in out, out
    assert _resumed_at(run, out) == 2 and _saved(out) == [(0, 4)]
    [whole] = tmp(6)
    assert {"model.safetensors", "ema.safetensors", "state.pt", "meta.json"} <= {p.name for p in whole.iterdir()}
    assert _steps(run) == [2, 4]
    _mark_rows(run)

    # 4. resumed at 4, the last intact checkpoint, not at 6 (the unrenamed folder) nor at 0; runs to the end
    rc, out = _train(tmp_path, {}, "--resume")
    assert rc == 0 and f"done: step {STEPS}" in out, out
    assert _resumed_at(run, out) == 4 and _saved(out) == [(0, 6), (0, 8)]
    assert tmp(4) == [half] and tmp(6) == [whole]  # left where they died, never picked up
    assert _steps(run) == [2, 4, 6, 8]
    assert _assert_matches(run, reference) == [2, 4, 6, 8]


def test_sigint_and_sigterm_stop_with_a_checkpoint_and_resume_to_the_uninterrupted_weights(
    tmp_path: Path, reference: Path
) -> None:
    run = tmp_path / "run"
    _config(tmp_path, run)

    # SIGINT as step 3 begins: step 3 finishes, checkpoint 3 is written (besides the periodic 2), exit 0
    rc, out = _train(tmp_path, {"signal": "SIGINT", "where": "step", "step": 2})
    assert rc == 0 and "sends itself SIGINT as step 3 begins" in out, out
    assert "interrupted at step 3" in out and "continue with --resume" in out
    assert _saved(out) == [(0, 2), (0, 3)] and _steps(run) == [2, 3]
    _mark_rows(run)

    # resumed at 3; SIGTERM while checkpoint 6 is being written: it completes, once, and the run stops there
    rc, out = _train(
        tmp_path, {"signal": "SIGTERM", "where": "save", "file": "model.safetensors", "step": 6}, "--resume"
    )
    assert rc == 0 and "sends itself SIGTERM before writing .tmp_step_00000006" in out, out
    assert _resumed_at(run, out) == 3 and "interrupted at step 6" in out
    assert _saved(out) == [(0, 4), (0, 6)] and _steps(run) == [2, 3, 4, 6]
    _mark_rows(run)

    rc, out = _train(tmp_path, {}, "--resume")
    assert rc == 0 and f"done: step {STEPS}" in out, out
    assert _resumed_at(run, out) == 6 and _saved(out) == [(0, 8)]
    assert _assert_matches(run, reference) == [2, 4, 6, 8]


def test_sigterm_to_one_torchrun_process_stops_every_process_at_one_step_and_resumes(tmp_path: Path) -> None:
    """Two processes (gloo on the CPU); rank 1 alone receives SIGTERM. Both stop after the same
    step, rank 0 alone writes one checkpoint there, and a resumed 2-process run ends with the
    weights of a 2-process run never stopped."""
    ref, run = tmp_path / "ref" / "run", tmp_path / "run"
    _config(tmp_path / "ref", ref)
    _config(tmp_path, run)
    rc, out = _train(tmp_path / "ref", {}, nproc=2, timeout=300)
    assert rc == 0 and "cpu x 2 processes" in out, out

    rc, out = _train(tmp_path, {"signal": "SIGTERM", "where": "step", "step": 2, "rank": 1}, nproc=2, timeout=300)
    assert rc == 0, out
    assert re.findall(r"rank (\d) sends itself (\w+)", out) == [("1", "SIGTERM")], out
    left = sorted(re.findall(r"rank (\d) left the loop at step (\d+), interrupted (\w+)", out))
    assert left == [("0", "3", "True"), ("1", "3", "True")], out
    assert "interrupted at step 3" in out
    assert _saved(out) == [(0, 2), (0, 3)] and _steps(run) == [2, 3]
    _mark_rows(run)

    rc, out = _train(tmp_path, {}, "--resume", nproc=2, timeout=300)
    assert rc == 0 and f"done: step {STEPS}" in out, out
    assert _resumed_at(run, out) == 3 and _saved(out) == [(0, 4), (0, 6), (0, 8)]
    assert _assert_matches(run, ref) == [2, 4, 6, 8]
