"""CUDA graphs (``train.cuda_graphs``, ``sample.cuda_graphs``): what a CPU can check.

The capture itself needs a GPU (``benchmarks/gpu.py --sections small`` checks graphed against eager
training and sampling there). Here: the settings and their errors, and the graphed step's own
arithmetic run eagerly (``_GraphedStep(capture=False)``), which is what a graph replays: the same
weights as the eager step, and a non-finite step skipped on the device without a host read.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import tiny_run

from multidiff import config as C
from multidiff import train as T
from multidiff.cuda_graphs import GraphedNet, graphs_enabled
from multidiff.pipeline import generate
from multidiff.train import Trainer


def _state(tr: Trainer) -> list[torch.Tensor]:
    opt = [v for s in tr.opt.state.values() for v in s.values()]
    return [t.clone() for t in (*tr.net.state_dict().values(), *tr.ema.state_dict().values(), *opt)]


def test_settings_auto_on_cuda_only_and_true_names_the_obstacle() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert graphs_enabled("auto", cuda, {}, "k") and not graphs_enabled("auto", cpu, {}, "k")
    assert not graphs_enabled("auto", cuda, {"the run is data-parallel": True}, "k")
    assert not graphs_enabled(False, cuda, {}, "k") and graphs_enabled(True, cuda, {}, "k")
    with pytest.raises(ValueError, match=r"train.cuda_graphs=true.*the device is not CUDA.*data-parallel"):
        graphs_enabled(True, cpu, {"the run is data-parallel": True}, "train.cuda_graphs")
    with pytest.raises(ValueError, match="must be true, false or 'auto'"):
        graphs_enabled("yes", cpu, {}, "k")


def test_config_keys_validate_and_true_on_a_cpu_is_refused_before_work(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cuda_graphs"):
        C.resolve_config(tiny_run(tmp_path / "r", train={"cuda_graphs": "sometimes"}))
    cfg = C.resolve_config(tiny_run(tmp_path / "r", train={"cuda_graphs": True, "device": "cpu"}))
    with pytest.raises(
        ValueError, match="train.cuda_graphs=true, but CUDA graphs cannot run here: the device is not CUDA"
    ):
        Trainer(cfg)
    auto = Trainer(C.resolve_config(tiny_run(tmp_path / "r")))
    assert auto.graphs is False and auto.t.cuda_graphs == "auto"


@pytest.mark.parametrize("accum", [1, 2])
def test_the_graphed_steps_arithmetic_equals_the_eager_step(tmp_path: Path, accum: int) -> None:
    cfg = C.resolve_config(tiny_run(tmp_path / "r", train={"steps": 8, "grad_accum": accum, "warmup_steps": 3}))
    eager, graphed = Trainer(cfg), Trainer(cfg)
    step = T._GraphedStep(graphed, capture=False)
    a, b = eager._loader(), graphed._loader()
    for _ in range(4):
        la, na = eager.train_step(a)
        lb, nb = step(b)
        assert graphed.skipped is None and graphed.step == eager.step
        assert torch.equal(la, lb) and torch.equal(na, nb)
    for x, y in zip(_state(eager), _state(graphed)):
        assert torch.equal(x, y)
    # what a checkpoint stores is a plain float learning rate, as an eager run's
    assert isinstance(graphed.state()["optimizer"]["param_groups"][0]["lr"], float)


class _InfGradient(torch.autograd.Function):
    """Identity forward, infinite backward: a finite loss whose gradient is not."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        return g * float("inf")


def _poison(monkeypatch, steps: set[int], nan: bool = False) -> None:
    real, calls = T.diffusion_loss, {"n": 0}

    def loss(*a, **k):
        calls["n"] += 1
        out = real(*a, **k)
        if calls["n"] not in steps:
            return out
        return out * float("nan") if nan else _InfGradient.apply(out)

    monkeypatch.setattr(T, "diffusion_loss", loss)


def test_an_inf_gradient_is_skipped_on_the_device_and_reported_at_the_log_row(tmp_path: Path, monkeypatch) -> None:
    _poison(monkeypatch, {3, 4})
    tr = Trainer(C.resolve_config(tiny_run(tmp_path / "r", train={"steps": 6})))
    step = T._GraphedStep(tr, capture=False)
    batches = tr._loader()
    step(batches), step(batches)
    before = _state(tr)
    l3, n3 = step(batches)
    l4, _ = step(batches)
    assert not torch.isfinite(n3) and float(l3) == 0 and float(l4) == 0 and float(step.good) == 0  # masked
    for x, y in zip(before, _state(tr)):  # weights, EMA and AdamW's moments and step count untouched
        assert torch.equal(x, y)
    step(batches)
    assert float(step.good) == 1 and not all(torch.equal(x, y) for x, y in zip(before, _state(tr)))
    with pytest.warns(RuntimeWarning, match=r"up to step 5: 2 steps had a non-finite loss .* \(2 in a row at most\)"):
        assert step.report(tr.step) == 2
    assert step.report(tr.step) == 0  # counted once


def test_the_loop_stops_at_the_log_row_after_too_many_skipped_steps_in_a_row(tmp_path: Path, monkeypatch) -> None:
    _poison(monkeypatch, {3, 4, 5, 6, 7}, nan=True)

    class Eager(T._GraphedStep):
        def __init__(self, trainer: Trainer) -> None:
            super().__init__(trainer, capture=False)

    monkeypatch.setattr(T, "_GraphedStep", Eager)
    run = tmp_path / "r"
    tr = Trainer(C.resolve_config(tiny_run(run, train={"steps": 12, "log_every": 4, "max_nonfinite_steps": 3})))
    tr.graphs = True  # the graphed loop, its step run eagerly
    with pytest.warns(RuntimeWarning) as caught:
        with pytest.raises(FloatingPointError, match=r"5 steps in a row had a non-finite loss .*up to step 8"):
            tr.fit()
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2, messages  # one per log row, not one per step
    assert "up to step 4: 2 steps had a non-finite loss" in messages[0] and "(2 in a row at most)" in messages[0]
    assert "up to step 8: 3 steps had a non-finite loss" in messages[1] and "(5 in a row at most)" in messages[1]
    assert all(torch.isfinite(p).all() for p in tr.ema.parameters())
    assert (run / "checkpoints" / "step_00000008").is_dir()


def test_graphed_net_runs_eagerly_off_cuda_and_generate_auto_is_off_on_a_cpu(tmp_path: Path) -> None:
    net = torch.nn.Conv1d(2, 2, 3, padding=1)
    g = GraphedNet(net)
    x = torch.randn(3, 2, 8)
    with torch.no_grad():
        assert torch.equal(g(x), net(x)) and not g._graphs
    tr = Trainer(C.resolve_config(tiny_run(tmp_path / "r")))
    a, _ = generate(tr.ema_denoiser, tr.info, n=4, steps=3, cuda_graphs="auto")
    b, _ = generate(tr.ema_denoiser, tr.info, n=4, steps=3, cuda_graphs=False)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="cuda_graphs=true, but CUDA graphs cannot run here: the device is not CUDA"):
        generate(tr.ema_denoiser, tr.info, n=4, steps=3, cuda_graphs=True)
