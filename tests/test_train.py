"""The training engine: exact resume, checkpoints that load safely, fine-tuning, clear failures."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from helpers import checkpoint_weights as _weights
from helpers import tiny_run
from helpers import train as _train

from multidiff import config as C
from multidiff.checkpoint import find_checkpoint, grow_class_embedding, list_checkpoints
from multidiff.pipeline import load_pipeline
from multidiff.train import Trainer, _EpochBatches, _MetricsLog, drop_labels, ema_decay, lr_factor


def test_resume_is_bit_exact(tmp_path: Path) -> None:
    """N steps, stop, resume for M: the same losses and weights as N + M steps in one run, with
    dropout, label dropout, random flips, gradient accumulation and warmup all drawing randomness."""
    extra = {
        "model": {"dropout": 0.1},
        "data": {"random_flip": True},
        "train": {"grad_accum": 2, "warmup_steps": 3, "ema_decay": 0.9},
    }
    whole = tiny_run(tmp_path / "whole", **extra)
    whole["train"]["steps"] = 7
    _train(whole)
    part = tiny_run(tmp_path / "part", **extra)
    part["train"]["steps"] = 4
    _train(part)
    part["train"]["steps"] = 7
    _train(part, resume=True)

    rows_whole = _MetricsLog.read(tmp_path / "whole" / "metrics.csv")
    rows_part = _MetricsLog.read(tmp_path / "part" / "metrics.csv")
    assert [(r["step"], r["loss"], r["grad_norm"]) for r in rows_part] == [
        (r["step"], r["loss"], r["grad_norm"]) for r in rows_whole
    ]
    (m1, e1), (m2, e2) = _weights(tmp_path / "whole"), _weights(tmp_path / "part")
    assert all(torch.equal(m1[k], m2[k]) for k in m1)
    assert all(torch.equal(e1[k], e2[k]) for k in e1)
    # A run that did not resume but used another seed differs, so the equality above means something.
    other = tiny_run(tmp_path / "other", **extra)
    other["train"].update(steps=7, seed=1)
    _train(other)
    m3, _ = _weights(tmp_path / "other")
    assert not all(torch.equal(m1[k], m3[k]) for k in m1)


def test_checkpoint_contents_and_safe_loading(tmp_path: Path, capsys) -> None:
    d = tiny_run(tmp_path / "run")
    d["train"].update(steps=4, checkpoint_every=2, keep_checkpoints=1)
    _train(d)
    cks = list_checkpoints(tmp_path / "run")
    assert [c.name for c in cks] == ["step_00000004"]  # older ones pruned
    ck = find_checkpoint(tmp_path / "run")
    assert ck.step == 4 and ck.meta["format"] == "multidiff-checkpoint/1"
    assert ck.meta["config"]["train"]["steps"] == 4 and ck.meta["data_info"]["num_classes"] == 10
    assert {p.name for p in cks[0].iterdir()} == {"model.safetensors", "ema.safetensors", "meta.json", "state.pt"}
    state = ck.training_state()  # weights_only=True inside
    assert state["step"] == 4 and "optimizer" in state
    # A state file holding an arbitrary object is refused, not unpickled.
    torch.save({"step": 4, "evil": _Evil()}, cks[0] / "state.pt")
    with pytest.raises(ValueError, match="cannot read"):
        ck.training_state()
    # The same with meta.json's hash rewritten to match (a hostile checkpoint, not a damaged one):
    # only weights_only=True stands in the way now.
    data = (cks[0] / "state.pt").read_bytes()
    meta = json.loads((cks[0] / "meta.json").read_text())
    meta["files"]["state.pt"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (cks[0] / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"cannot read .*state\.pt: .*[Ww]eights.only"):
        find_checkpoint(tmp_path / "run").training_state()
    assert "unpickled!" not in capsys.readouterr().out


class _Evil:
    def __reduce__(self):  # would run on unpickling
        return (print, ("unpickled!",))


def test_interrupted_save_leaves_the_last_good_checkpoint(tmp_path: Path) -> None:
    d = tiny_run(tmp_path / "run")
    d["train"]["steps"] = 2
    _train(d)
    # A crash mid-save leaves a temporary folder; it is never taken for a checkpoint.
    junk = tmp_path / "run" / "checkpoints" / ".tmp_step_00000009_123"
    junk.mkdir()
    (junk / "meta.json").write_text("{}")
    assert find_checkpoint(tmp_path / "run").step == 2
    d["train"]["steps"] = 3
    assert _train(d, resume=True).step == 3


def test_sampling_from_a_checkpoint_writes_a_png(tmp_path: Path) -> None:
    d = tiny_run(tmp_path / "run")
    d["train"].update(steps=2, sample_every=2)
    _train(d)
    assert (tmp_path / "run" / "samples" / "step_00000002.png").is_file()
    pipe = load_pipeline(str(tmp_path / "run"), device="cpu")
    x, labels = pipe.sample(12, steps=2, guidance_scale=3.0, labels=3)
    assert x.shape == (12, 1, 8, 8) and torch.isfinite(x).all() and (labels == 3).all()


def test_checkpoint_from_another_model_is_refused_by_name(tmp_path: Path) -> None:
    d = tiny_run(tmp_path / "a")
    d["train"]["steps"] = 1
    _train(d)
    other = tiny_run(tmp_path / "b", model={"channels": 16})
    other["train"]["init_from"] = str(tmp_path / "a")
    with pytest.raises(
        ValueError,
        match=r"made for another model: \d+ tensors differ in shape \(e.g. .*in the checkpoint.*in this model\)",
    ):
        Trainer(C.resolve_config(other))
    # Nothing of run a was touched.
    assert [c.name for c in list_checkpoints(tmp_path / "a")] == ["step_00000001"]


def test_resume_without_checkpoint_fails_before_work(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no checkpoint"):
        Trainer(C.resolve_config(tiny_run(tmp_path / "empty")), resume=True)


def test_init_from_grows_the_class_embedding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tiny_run(tmp_path / "base", data={"source": "digits", "size": 8, "limit": 256})
    d["train"]["steps"] = 2
    base = _train(d)
    old = base.ema.class_embed.weight.detach().clone()  # 10 digits + null
    # Fine-tune on a data set with 12 classes.
    from modalities.image import adapter as A

    real = A.ImageModality.build_dataset

    def twelve(self, data):
        ds, info = real(self, data)
        ds.labels = torch.arange(len(ds.labels)) % 12
        return ds, type(info)(info.shape, 12, tuple(str(i) for i in range(12)))

    monkeypatch.setattr(A.ImageModality, "build_dataset", twelve)
    ft = tiny_run(tmp_path / "ft")
    ft["train"].update(steps=1, init_from=str(tmp_path / "base"))
    tr = Trainer(C.resolve_config(ft))
    new = tr.net.class_embed.weight.detach()
    assert new.shape == (13, old.shape[1])
    assert torch.equal(new[:10], old[:10]) and torch.equal(new[12], old[10])
    assert torch.equal(new[10], old[10]) and torch.equal(new[11], old[10])  # new classes start as null
    tr.fit()


def test_grow_class_embedding_refuses_to_shrink() -> None:
    with pytest.raises(ValueError, match="shrink"):
        grow_class_embedding({"e": torch.zeros(11, 4)}, "e", 5)


def test_batches_cover_each_epoch_once_and_restart_anywhere() -> None:
    s = _EpochBatches(10, 3, seed=0, start=0)
    it = iter(s)
    epoch0 = [next(it) for _ in range(3)]
    assert len({i for b in epoch0 for i in b}) == 9  # 3 full batches, no repeats
    later = list(iter(_EpochBatches(10, 3, seed=0, start=2)).__next__() for _ in range(1))
    assert later[0] == epoch0[2]


def test_schedules_of_the_loop() -> None:
    assert [lr_factor(s, 4, 10) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert lr_factor(10, 0, 10, "cosine") == pytest.approx(0.0)
    assert lr_factor(5, 0, 10, "cosine") == pytest.approx(0.5)
    assert ema_decay(0, 0.999) == pytest.approx(0.1) and ema_decay(10**6, 0.999) == 0.999
    g = torch.Generator().manual_seed(0)
    labels = torch.zeros(10_000, dtype=torch.long)
    dropped = drop_labels(labels, 0.2, 10, g)
    assert set(dropped.unique().tolist()) == {0, 10}
    assert abs((dropped == 10).float().mean().item() - 0.2) < 0.02


def test_batch_larger_than_data_fails_clearly(tmp_path: Path) -> None:
    d = tiny_run(tmp_path / "r", data={"source": "digits", "size": 8, "limit": 8})
    with pytest.raises(ValueError, match="batch_size=16 is larger than the data set"):
        Trainer(C.resolve_config(d))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_paths_train(tmp_path: Path, precision: str) -> None:
    """The autocast (and, for fp16, grad-scaler) path runs wherever it is asked for; on a GPU it is
    the fast path, on a CPU it at least trains to finite weights in float32 master copies."""
    d = tiny_run(tmp_path / "r", train={"precision": precision, "steps": 3})
    tr = _train(d)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in tr.net.parameters())
    rows = _MetricsLog.read(tmp_path / "r" / "metrics.csv")
    assert len(rows) == 3 and all(r["loss"] == r["loss"] for r in rows)
    assert tr.scaler.is_enabled() == (precision == "fp16")


def test_jsonl_metrics_and_resolved_config_beside_the_run(tmp_path: Path) -> None:
    d = tiny_run(tmp_path / "r", train={"metrics_format": "jsonl", "steps": 2})
    _train(d)
    rows = _MetricsLog.read(tmp_path / "r" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and all(r["samples_per_s"] > 0 for r in rows)
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved == find_checkpoint(tmp_path / "r").config
    assert saved["model"]["preset"] == "tiny" and saved["diffusion"]["weighting"] == "uniform"  # defaults filled in


def test_data_scale_is_applied_in_training_and_undone_in_sampling(tmp_path: Path, monkeypatch) -> None:
    """``diffusion.data_scale`` multiplies the training data and divides the samples: the exact
    denoiser of the scaled mixture, declared with that scale, samples the unscaled mixture."""
    from multidiff import train as T
    from multidiff.denoiser import DataSpace
    from multidiff.modality import DataInfo
    from multidiff.pipeline import generate
    from multidiff.testing import GaussianMixture

    seen = []
    real_loss = T.diffusion_loss

    def spy(den, x0, sigma, **kw):
        seen.append(x0.detach().clone())
        return real_loss(den, x0, sigma, **kw)

    monkeypatch.setattr(T, "diffusion_loss", spy)
    d = tiny_run(tmp_path / "scaled", diffusion={"data_scale": 3.0})
    d["train"]["steps"] = 1
    tr = _train(d)
    assert float(tr.dataset.x.abs().max()) <= 1.0 and seen  # digits lie in [-1, 1]
    assert 1.5 < float(seen[0].abs().max()) <= 3.0 + 1e-5
    assert load_pipeline(str(tmp_path / "scaled")).denoiser.data_scale == 3.0

    b = 5.0
    gm = GaussianMixture(torch.tensor([[-0.2], [0.2]]), 0.02)
    scaled = GaussianMixture(b * gm.means, b * 0.02).denoiser()
    scaled.space = DataSpace(b)
    x, _ = generate(
        scaled, DataInfo((1,), 0), n=2000, sampler="heun", steps=30, grid="karras", sigma_min=0.002, sigma_max=80.0
    )
    x = x.double().flatten()
    assert set(torch.sign(x).unique().tolist()) == {-1.0, 1.0}
    assert (x.abs() - 0.2).abs().mean() < 0.03  # without the division the modes would sit at +-1
    assert x.abs().std() == pytest.approx(0.02, rel=0.15)
