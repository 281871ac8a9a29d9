"""Data-parallel training under a real ``torchrun`` (gloo on the CPU): two processes train the
weights one process trains with the same global batch, only rank 0 writes files, and a checkpoint
resumes under another process count."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from helpers import tiny_run
from safetensors.torch import load_file

from multidiff import config as C
from multidiff.checkpoint import list_checkpoints
from multidiff.distributed import Rows, World, current_rows, global_rows
from multidiff.modality import coin_flips, example_rand
from multidiff.train import Trainer, _EpochBatches, _MetricsLog, drop_labels

ROOT = Path(__file__).resolve().parents[1]

# Each worker runs the real command line from its own empty folder, so a file written by any rank
# but 0 (with the run folder given relative) would land where the test can see it.
WORKER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    home = Path(sys.argv[1]) / f"rank{os.environ['RANK']}"
    home.mkdir(parents=True, exist_ok=True)
    os.chdir(home)
    from multidiff.cli import main
    sys.exit(main(sys.argv[2:]))
    """
)


def _config(out_dir: str, steps: int) -> dict:
    # flips, label dropout, 2 micro-steps per optimizer step: every per-example draw and DDP's
    # no_sync path are exercised; no dropout (its masks are drawn per process)
    d = tiny_run(Path(out_dir), data={"source": "digits", "size": 8, "limit": 256, "random_flip": True})
    d["train"].update(steps=steps, batch_size=16, grad_accum=2, checkpoint_every=2, sample_every=2, label_dropout=0.2)
    d["out_dir"] = out_dir
    return d


def _torchrun(tmp: Path, nproc: int, cfg: dict, *extra: str) -> subprocess.CompletedProcess:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "worker.py").write_text(WORKER)
    (tmp / "run.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone"]
    cmd += [str(tmp / "worker.py"), str(tmp / "ranks"), "train", str(tmp / "run.yaml"), *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def _weights(run: Path) -> tuple[dict, dict]:
    ck = list_checkpoints(run)[-1]
    return load_file(str(ck / "model.safetensors")), load_file(str(ck / "ema.safetensors"))


def _mean_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return float(sum((a[k] - b[k]).abs().sum() for k in a) / sum(a[k].numel() for k in a))


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: 4 steps in this process."""
    run = tmp_path_factory.mktemp("one") / "run"
    Trainer(C.resolve_config(_config(str(run), 4))).fit()
    return run


@pytest.mark.slow  # real torchrun processes
def test_two_processes_train_the_weights_of_one_and_only_rank0_writes(tmp_path: Path, one_process: Path) -> None:
    out = _torchrun(tmp_path, 2, _config("run", 4))
    assert "cpu x 2 processes (global batch 16)" in out.stdout
    rank0, rank1 = tmp_path / "ranks" / "rank0", tmp_path / "ranks" / "rank1"
    assert sorted(p.name for p in (rank0 / "run").iterdir()) == ["checkpoints", "config.json", "metrics.csv", "samples"]
    assert [p.name for p in list_checkpoints(rank0 / "run")] == ["step_00000002", "step_00000004"]
    assert sorted(p.name for p in (rank0 / "run" / "samples").iterdir()) == ["step_00000002.png", "step_00000004.png"]
    assert list(rank1.iterdir()) == []  # rank 1 wrote nothing

    ddp_model, ddp_ema = _weights(rank0 / "run")
    ref_model, ref_ema = _weights(one_process)
    init = Trainer(C.resolve_config(_config(str(tmp_path / "init"), 4))).net.state_dict()
    moved = _max_diff(ref_model, {k: v.float() for k, v in init.items()})
    # Adam turns float-rounding differences of near-zero gradients into differences of a fraction
    # of one update (lr 1e-3); training itself moved the weights by about 4 updates
    assert moved > 2e-3
    assert _max_diff(ddp_model, ref_model) < 2e-4 and _max_diff(ddp_ema, ref_ema) < 2e-4
    loss = [r["loss"] for r in _MetricsLog.read(rank0 / "run" / "metrics.csv")]
    ref_loss = [r["loss"] for r in _MetricsLog.read(one_process / "metrics.csv")]
    assert loss == pytest.approx(ref_loss, rel=1e-5)  # the logged loss is the mean over processes
    gn = [r["grad_norm"] for r in _MetricsLog.read(rank0 / "run" / "metrics.csv")]
    ref_gn = [r["grad_norm"] for r in _MetricsLog.read(one_process / "metrics.csv")]
    mean_diff = _mean_diff(ddp_model, ref_model)
    mean_moved = _mean_diff(ref_model, {k: v.float() for k, v in init.items()})
    # the global gradient norm, logged after the all-reduce: a gradient averaged wrongly (summed over
    # processes, or one process's only) changes it, although Adam's scale invariance hides it in the weights
    assert len(gn) == 4 and gn == pytest.approx(ref_gn, rel=1e-5)
    # on average the weights agree to a ten-thousandth of how far training moved them (seen: 6e-6)
    assert mean_diff < 1e-4 * mean_moved


@pytest.mark.slow  # real torchrun processes
def test_a_checkpoint_resumes_under_another_process_count(tmp_path: Path, one_process: Path) -> None:
    run = tmp_path / "run"
    Trainer(C.resolve_config(_config(str(run), 2))).fit()  # 2 steps on one process
    _torchrun(tmp_path, 2, _config(str(run), 4), "--resume")  # 2 more on two processes
    model, ema = _weights(run)
    ref_model, ref_ema = _weights(one_process)
    assert _max_diff(model, ref_model) < 2e-4 and _max_diff(ema, ref_ema) < 2e-4
    first = Trainer(C.resolve_config(_config(str(tmp_path / "init"), 4))).net.state_dict()
    assert _mean_diff(model, ref_model) < 1e-4 * _mean_diff(ref_model, {k: v.float() for k, v in first.items()})
    gn = [r["grad_norm"] for r in _MetricsLog.read(run / "metrics.csv")]
    ref_gn = [r["grad_norm"] for r in _MetricsLog.read(one_process / "metrics.csv")]
    assert gn == pytest.approx(ref_gn, rel=1e-5)
    assert [r["step"] for r in _MetricsLog.read(run / "metrics.csv")] == [1, 2, 3, 4]


@pytest.mark.slow  # real torchrun processes
def test_two_processes_train_the_autoencoder_and_discriminator_of_one(tmp_path: Path) -> None:
    """task: autoencoder under DDP: the autoencoder (posterior noise drawn for the global batch) and
    its discriminator (a second DDP module and optimizer, from step 1 on) match one process."""
    d = {
        "modality": "image",
        "task": "autoencoder",
        "out_dir": "run",
        "data": {"source": "digits", "size": 8, "limit": 64, "random_flip": True},
        "autoencoder": {
            "channels": 4,
            "channel_mult": [1, 2],
            "head_channels": 8,
            "disc_weight": 0.5,
            "disc_start": 1,
            "disc_channels": 4,
            "disc_layers": 2,
        },
        "train": {"steps": 3, "batch_size": 8, "grad_accum": 2, "lr": 1e-3, "log_every": 1, "checkpoint_every": 3},
    }
    d["train"].update(progress=False, device="cpu")
    one = tmp_path / "one"
    init = Trainer(C.resolve_config({**d, "out_dir": str(tmp_path / "init")})).net.state_dict()
    Trainer(C.resolve_config({**d, "out_dir": str(one)})).fit()
    _torchrun(tmp_path / "ddp", 2, d)
    run = tmp_path / "ddp" / "ranks" / "rank0" / "run"
    rows, ref = _MetricsLog.read(run / "metrics.csv"), _MetricsLog.read(one / "metrics.csv")
    for key in ("loss", "grad_norm", "l1", "kl", "adv", "disc"):  # seen: 1e-6 relative at most
        assert [r[key] for r in rows] == pytest.approx([r[key] for r in ref], rel=1e-5, abs=1e-7), key
    (model, ema), (ref_model, ref_ema) = _weights(run), _weights(one)
    disc = torch.load(list_checkpoints(run)[-1] / "state.pt", weights_only=True)["aux"]
    ref_disc = torch.load(list_checkpoints(one)[-1] / "state.pt", weights_only=True)["aux"]
    moved = _mean_diff(ref_model, {k: v.float() for k, v in init.items()})
    for a, b in ((model, ref_model), (ema, ref_ema)):
        # Adam moves a parameter by at most lr per step; one whose true gradient is 0 (a conv bias
        # that a GroupNorm of one channel per group removes) moves on float rounding alone, up to
        # lr per step either way (seen: 9.8e-4 after 3 steps at lr 1e-3). On average the weights
        # agree to a thousandth of how far training moved them (seen: 1.6e-6 against 1.5e-3).
        assert _max_diff(a, b) <= 2 * 3 * 1e-3 and _mean_diff(a, b) < 1e-2 * moved, (_max_diff(a, b), moved)
    assert _max_diff(disc, ref_disc) < 1e-5  # no such parameter in the discriminator (seen: 5e-8)
    assert ref[-1]["disc"] > 0


# --- the pieces, on one process -------------------------------------------------------------


def test_the_global_batch_is_split_evenly_and_must_divide() -> None:
    rows = [Rows.of(12, World(rank=r, size=3)) for r in range(3)]
    assert [(r.start, r.stop, r.total) for r in rows] == [(0, 4, 12), (4, 8, 12), (8, 12, 12)]
    with pytest.raises(ValueError, match=r"train.batch_size=10 must be divisible by the number of processes \(4\)"):
        Rows.of(10, World(rank=0, size=4))


def test_batches_of_the_processes_make_up_the_global_batch() -> None:
    whole = iter(_EpochBatches(50, 12, seed=3, start=5))
    parts = [iter(_EpochBatches(50, 12, seed=3, start=5, rows=Rows.of(12, World(r, 3)))) for r in range(3)]
    for _ in range(9):  # across an epoch boundary (4 batches per epoch)
        assert next(whole) == sum((next(p) for p in parts), [])


def test_per_example_draws_are_those_of_the_global_batch() -> None:
    x = torch.zeros(12, 2, 3)
    g = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    whole = example_rand(x, g(), 2)
    flips = coin_flips(x, g())
    labels = torch.arange(12) % 5
    dropped = drop_labels(labels, 0.5, 5, g())
    assert current_rows(12) == Rows(0, 12, 12)
    for r in range(3):
        rows = Rows.of(12, World(r, 3))
        sl = slice(rows.start, rows.stop)
        with global_rows(rows):
            assert torch.equal(example_rand(x[sl], g(), 2), whole[sl])
            assert torch.equal(coin_flips(x[sl], g()), flips[sl])
            assert torch.equal(drop_labels(labels[sl], 0.5, 5, g()), dropped[sl])
        assert current_rows(4) == Rows(0, 4, 4)  # outside the block: the tensor is the whole batch
    assert 0 < int(flips.sum()) < 12 and (dropped == 5).any()
