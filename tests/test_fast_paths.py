"""The GPU fast paths, exercised on the CPU so they do not rot: sampler loops that never read a
device value (no host-device synchronisation), autocast, ``torch.compile``, ``--batch-size``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import tiny_run

from multidiff import config as C
from multidiff import grids as G
from multidiff import samplers as SM
from multidiff._util import amp_dtype
from multidiff.cli import main
from multidiff.denoiser import Denoiser
from multidiff.guidance import classifier_free_guidance
from multidiff.modality import DataInfo
from multidiff.nn import UNet
from multidiff.pipeline import generate
from multidiff.schedules import DiscreteSchedule
from multidiff.train import Trainer

# The adaptive solver decides each step from the error it measures: it must read one number per step.
FIXED_STEP = [s for s in SM.available_samplers() if s != "adaptive"]


def _denoiser(dims: int = 2, learned_variance: bool = False) -> Denoiser:
    torch.manual_seed(0)
    out = 2 if learned_variance else 1
    net = UNet(
        dims,
        1,
        out,
        channels=8,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_levels=(1,),
        head_channels=8,
        num_classes=3,
    )
    for p in net.parameters():  # the output layer starts at zero; give the network something to say
        torch.nn.init.normal_(p, std=0.05)
    return Denoiser(net, DiscreteSchedule.linear(), "v", learned_variance=learned_variance)


@pytest.mark.parametrize("name", FIXED_STEP)
def test_sampler_loops_never_read_a_device_value(name: str) -> None:
    """On the meta device every read of a tensor's value (``.item()``, ``bool()``, ``float()``,
    ``nonzero``) raises: a sampler that passes runs without host-device synchronisation, with a real
    network, its parameterization and classifier-free guidance in the loop."""
    den = _denoiser(learned_variance=name == "ddpm_learned_variance").to("meta")
    fn = (
        den
        if name == "ddpm_learned_variance"
        else classifier_free_guidance(
            den, 2.0, negative=lambda c: {"class_labels": torch.full_like(c["class_labels"], 3)}
        )
    )
    x = torch.empty(2, 1, 8, 8, device="meta")
    cond = {"class_labels": torch.tensor([0, 2], device="meta")}
    nfe = []
    out = SM.get_sampler(name).fn(
        fn,
        x,
        G.karras_sigmas(5, 0.02, 80.0),
        cond=cond,
        generator=torch.Generator().manual_seed(0),
        callback=lambda info: nfe.append(info),
    )
    assert out.device.type == "meta" and out.shape == x.shape and len(nfe) >= 4


def test_the_meta_check_catches_a_host_read() -> None:
    """The test above is not vacuous: a denoiser that branches on a value fails it."""

    def peeking(x, sigma, **c):
        return x * 0.5 if float(sigma[0]) > 1 else x

    with pytest.raises(RuntimeError, match="meta"):
        SM.get_sampler("euler").fn(peeking, torch.empty(2, 1, 4, 4, device="meta"), G.karras_sigmas(3, 0.1, 10.0))


def test_precision_auto_is_bf16_on_capable_gpus_fp16_on_older_ones_fp32_on_cpus(monkeypatch) -> None:
    assert amp_dtype("auto", "cpu") is None and amp_dtype("bf16", "cpu") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert amp_dtype("auto", "cuda") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert amp_dtype("auto", "cuda:1") == torch.float16 and amp_dtype("fp32", "cuda") is None
    with pytest.raises(ValueError, match="precision must be"):
        amp_dtype("fp8", "cpu")


def test_explicit_bf16_without_native_bf16_warns(monkeypatch) -> None:
    import warnings

    import multidiff._util as U

    native = U.native_bf16
    monkeypatch.setattr(U, "native_bf16", lambda device: False)
    with pytest.warns(UserWarning, match="no native bf16 arithmetic: autocast is emulated"):
        assert amp_dtype("bf16", "cpu") == torch.bfloat16
    monkeypatch.setattr(U, "native_bf16", lambda device: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert amp_dtype("bf16", "cpu") == torch.bfloat16 and amp_dtype("fp32", "cpu") is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert not native("cuda") and isinstance(native("cpu"), bool)


def _conv_dtypes(den: Denoiser) -> list[torch.dtype]:
    seen: list[torch.dtype] = []
    for m in den.net.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    return seen


def test_sampling_under_bf16_autocast_runs_the_network_in_bf16_and_returns_float32() -> None:
    info = DataInfo((1, 8, 8), 3)
    den = _denoiser()
    ref, _ = generate(den, info, n=4, sampler="dpmpp_2m", steps=6, precision="fp32")
    seen = _conv_dtypes(den)
    x, _ = generate(den, info, n=4, sampler="dpmpp_2m", steps=6, precision="bf16", batch_size=3)
    assert seen and set(seen) == {torch.bfloat16}
    assert x.dtype == torch.float32 and torch.isfinite(x).all()
    rel = float((x - ref).norm() / ref.norm())
    assert 1e-6 < rel < 0.05  # bf16 changed the numbers, a little


def test_trainer_precision_auto_on_cpu_is_float32(tmp_path: Path) -> None:
    tr = Trainer(C.resolve_config(tiny_run(tmp_path / "r")))
    assert tr.amp is None and not tr.scaler.is_enabled()


def test_bf16_autocast_training_on_cpu_runs_convolutions_in_bf16(tmp_path: Path) -> None:
    tr = Trainer(C.resolve_config(tiny_run(tmp_path / "r", train={"precision": "bf16", "steps": 2})))
    seen = _conv_dtypes(tr.denoiser)
    tr.fit()
    assert seen and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in tr.net.parameters())


def test_batch_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="sample.batch_size: Input should be greater than or equal to 1"):
        generate(_denoiser(), DataInfo((1, 8, 8), 3), n=2, steps=2, batch_size=0)


def test_cli_sample_batch_size_precision_and_bad_batch(tmp_path: Path, capsys) -> None:
    run = tmp_path / "r"
    Trainer(C.resolve_config(tiny_run(run, train={"steps": 1}))).fit()
    assert (
        main(
            [
                "sample",
                str(run),
                "-n",
                "5",
                "--steps",
                "2",
                "--batch-size",
                "2",
                "--precision",
                "bf16",
                "--out",
                str(tmp_path / "s.png"),
            ]
        )
        == 0
    )
    assert (tmp_path / "s.png").exists()
    assert main(["sample", str(run), "-n", "5", "--batch-size", "0", "--out", str(tmp_path / "t.png")]) == 2
    assert (
        "sample.batch_size: Input should be greater than or equal to 1" in capsys.readouterr().err
        and not (tmp_path / "t.png").exists()
    )


def test_compiled_training_and_sampling_match_eager_on_cpu(tmp_path: Path, monkeypatch) -> None:
    """``train.compile`` and ``generate(compile=True)`` trace the whole network as one graph (no graph
    breaks: ``fullgraph=True``) and give the eager numbers. Dynamo and AOT autograd run for real; the
    code generator is ``aot_eager`` because inductor's C++ build takes minutes on a 2-core CPU and
    is not the GPU's code generator anyway (the GPU run in benchmarks/README.md uses inductor)."""
    real = torch.compile
    compiled = []

    def strict(model, **kw):
        compiled.append(model)
        return real(model, backend="aot_eager", fullgraph=True)

    monkeypatch.setattr(torch, "compile", strict)
    eager = Trainer(C.resolve_config(tiny_run(tmp_path / "e", train={"steps": 2})))
    eager.fit()
    comp = Trainer(C.resolve_config(tiny_run(tmp_path / "c", train={"steps": 2, "compile": True})))
    assert comp.forward_net is not comp.net and compiled == [comp.net]
    comp.fit()
    for (k, a), b in zip(eager.net.state_dict().items(), comp.net.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), k
    x, _ = generate(comp.ema_denoiser, comp.info, n=4, steps=3, sampler="ddim")
    y, _ = generate(comp.ema_denoiser, comp.info, n=4, steps=3, sampler="ddim", compile=True)
    assert compiled[-1] is comp.ema and torch.allclose(x, y, atol=1e-5)


def test_worker_processes_load_the_same_batches(tmp_path: Path) -> None:
    """``train.num_workers`` moves loading into worker processes without changing a single batch."""
    runs = {}
    for workers in (0, 2):
        d = tiny_run(tmp_path / f"w{workers}", train={"steps": 3, "num_workers": workers})
        d["data"]["random_flip"] = True
        tr = Trainer(C.resolve_config(d))
        tr.fit()
        runs[workers] = tr.net.state_dict()
    assert all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])
