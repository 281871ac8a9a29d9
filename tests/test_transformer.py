"""The diffusion transformer (multidiff.transformer.DiT): one implementation at every rank,
adaLN-Zero's zero start, conditioning, cross-attention, long skips, compile, and training through
the config at every modality."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from helpers import tiny_run

from multidiff.transformer import DiT, sincos_position_embedding

SHAPES = {1: (2, 2, 37), 2: (2, 3, 15, 10), 3: (2, 1, 5, 6, 7)}  # odd and non-square: padded and cropped


def _tiny(dims: int, channels: int, **kw) -> DiT:
    kw = {"patch_size": 2, "width": 32, "depth": 2, "heads": 2, **kw}
    return DiT(dims, channels, **kw)


def _perturb(net: torch.nn.Module, std: float = 0.2, seed: int = 0) -> None:
    """Give every parameter a random offset, so zero-initialised layers become live."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("patch", [1, 2, 3, "per_axis"])
def test_output_has_the_input_shape_at_every_rank(dims: int, patch: int | str) -> None:
    shape = SHAPES[dims]
    patch_size = [1, 2, 3][:dims] if patch == "per_axis" else patch
    net = _tiny(dims, shape[1], patch_size=patch_size, learned_variance=True)
    _perturb(net)
    x = torch.randn(shape)
    y = net(x, torch.rand(shape[0]))
    assert y.shape == (shape[0], 2 * shape[1], *shape[2:])
    assert torch.isfinite(y).all() and y.abs().sum() > 0


def test_padding_does_not_mix_samples_and_crops_exactly() -> None:
    """Odd sizes are zero-padded at the end of each axis: the result equals running the padded
    input by hand and cropping, and each sample of a batch is independent of the others."""
    net = _tiny(2, 1, patch_size=4)
    _perturb(net)
    x, c = torch.randn(2, 1, 13, 6), torch.rand(2)
    y = net(x, c)
    padded = net(torch.nn.functional.pad(x, (0, 2, 0, 3)), c)
    torch.testing.assert_close(y, padded[:, :, :13, :6])
    torch.testing.assert_close(net(x[:1], c[:1]), y[:1])


def test_a_wrong_patch_size_or_rank_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="patch_size must be a positive int or a list of 2"):
        DiT(2, 1, patch_size=[2, 2, 2], width=32, depth=1, heads=2)
    with pytest.raises(ValueError, match="divisible by heads"):
        DiT(2, 1, width=30, depth=1, heads=4)
    net = _tiny(2, 1)
    with pytest.raises(ValueError, match="2 spatial axes"):
        net(torch.randn(1, 1, 8), torch.rand(1))
    with pytest.raises(ValueError, match="no cross-attention"):
        net(torch.randn(1, 1, 8, 8), torch.rand(1), tokens=torch.randn(1, 3, 4))


def test_position_embeddings_split_the_width_across_axes() -> None:
    pe = sincos_position_embedding((3, 4, 5), 26)  # 13 pairs: 5, 4, 4
    assert pe.shape == (60, 26)
    grid = pe.reshape(3, 4, 5, 26)
    # the first axis' part (10 columns) depends on the first index only
    torch.testing.assert_close(grid[:, 1:, :, :10], grid[:, :1, :1, :10].expand(3, 3, 5, 10))
    torch.testing.assert_close(grid[1:, :, 1:, 10:18], grid[:1, :, :1, 10:18].expand(2, 4, 4, 8))
    assert len({tuple(r) for r in pe.round(decimals=5).tolist()}) == 60  # every position distinct
    # 1D: the transformer's encoding of the index
    torch.testing.assert_close(
        sincos_position_embedding((7,), 2), torch.stack([torch.arange(7.0).sin(), torch.arange(7.0).cos()], 1)
    )


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_adaln_zero_starts_at_exactly_zero_output(dims: int) -> None:
    shape = SHAPES[dims]
    net = _tiny(dims, shape[1], num_classes=4, learned_variance=True, long_skips=True, token_dim=6, depth=3)
    for b in net.blocks:
        assert (b.adaLN.weight == 0).all() and (b.adaLN.bias == 0).all()
        assert (b.cross.proj.weight == 0).all()
    assert (net.final.adaLN.weight == 0).all() and (net.final.linear.weight == 0).all()
    # live embeddings and attention: only the zero gates make the output zero
    assert net.class_embed.weight.std() > 0 and net.blocks[0].attn.qkv.weight.std() > 0
    y = net(torch.randn(shape), torch.rand(shape[0]), torch.tensor([0, 4]), tokens=torch.randn(shape[0], 3, 6))
    assert torch.equal(y, torch.zeros_like(y))


def test_a_denoiser_over_a_fresh_dit_returns_its_skip_path() -> None:
    from multidiff.denoiser import Denoiser

    den = Denoiser(_tiny(2, 1), parameterization="edm")
    x, sigma = torch.randn(3, 1, 8, 8), torch.tensor([0.1, 1.0, 10.0])
    sc = den.scalings(sigma)
    torch.testing.assert_close(den(x, sigma), sc.c_skip[:, None, None, None] * x)


def test_noise_level_class_and_null_class_all_matter() -> None:
    net = _tiny(2, 1, num_classes=3)
    _perturb(net)
    x = torch.randn(1, 1, 8, 8).expand(4, -1, -1, -1)
    c = torch.full((4,), 0.5)
    y = net(x, c, torch.tensor([0, 1, 2, 3]))
    for i in range(4):
        for j in range(i):
            assert not torch.allclose(y[i], y[j]), (i, j)
    torch.testing.assert_close(net(x, c), net(x, c, torch.full((4,), 3)))  # None is the null class
    y_noise = net(x[:2], torch.tensor([0.1, 0.9]), torch.tensor([1, 1]))
    assert not torch.allclose(y_noise[0], y_noise[1])
    with pytest.raises(ValueError, match="unconditional"):
        _tiny(2, 1)(x, c, torch.zeros(4, dtype=torch.long))


def test_a_few_training_steps_make_the_output_depend_on_noise_level_and_class() -> None:
    """From the zero start, gradients reach the zero-initialised gates: after some steps of
    Adam the output is no longer zero and varies with the noise level and the class."""
    torch.manual_seed(0)
    net = _tiny(2, 1, num_classes=2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x = torch.randn(8, 1, 8, 8)
    labels = torch.arange(8) % 2
    c = torch.rand(8)
    target = x * (1 + labels.view(-1, 1, 1, 1)) * c.view(-1, 1, 1, 1)  # depends on both
    for _ in range(5):
        loss = (net(x, c, labels) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    x1 = x[:1].expand(2, -1, -1, -1)
    by_class = net(x1, torch.full((2,), 0.5), torch.tensor([0, 1]))
    by_noise = net(x1, torch.tensor([0.1, 0.9]), torch.tensor([1, 1]))
    assert by_class.abs().sum() > 0
    assert not torch.allclose(by_class[0], by_class[1]) and not torch.allclose(by_noise[0], by_noise[1])


def test_cross_attention_tokens_change_the_output() -> None:
    net = _tiny(1, 2, token_dim=5)
    _perturb(net)
    x, c = torch.randn(2, 2, 16), torch.rand(2)
    t1, t2 = torch.randn(2, 3, 5), torch.randn(2, 7, 5)
    y0, y1, y2 = net(x, c), net(x, c, tokens=t1), net(x, c, tokens=t2)
    assert not torch.allclose(y0, y1) and not torch.allclose(y1, y2)
    with pytest.raises(ValueError, match=r"tokens must have shape \(2, T, 5\)"):
        net(x, c, tokens=torch.randn(2, 3, 4))


@pytest.mark.parametrize("depth", [1, 4, 5])
def test_long_skips_on_and_off_both_run(depth: int) -> None:
    off, on = _tiny(3, 1, depth=depth), _tiny(3, 1, depth=depth, long_skips=True)
    assert sum(b.skip is not None for b in on.blocks) == depth // 2
    assert all(b.skip is None for b in off.blocks)
    x = torch.randn(2, 1, 4, 4, 6)
    for net in (off, on):
        _perturb(net)
        y = net(x, torch.rand(2))
        y.square().mean().backward()
        assert y.shape == x.shape and all(p.grad is not None for p in net.parameters())


def test_self_conditioning_and_gradient_checkpointing() -> None:
    net = _tiny(2, 1, self_condition=True)
    _perturb(net)
    x, c = torch.randn(2, 1, 6, 6), torch.rand(2)
    torch.testing.assert_close(net(x, c), net(x, c, self_cond=torch.zeros_like(x)))
    assert not torch.allclose(net(x, c), net(x, c, self_cond=torch.randn_like(x)))
    ckpt = _tiny(2, 1, gradient_checkpointing=True, long_skips=True, depth=3)
    plain = _tiny(2, 1, long_skips=True, depth=3)
    _perturb(ckpt)
    plain.load_state_dict(ckpt.state_dict())
    for net in (ckpt, plain):
        net(x, c).square().sum().backward()
    for (name, a), b in zip(ckpt.named_parameters(), plain.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_torch_compile_fullgraph_matches_eager() -> None:
    net = _tiny(2, 1, depth=1, width=16, num_classes=2, long_skips=True).eval()
    _perturb(net)
    x, c, y = torch.randn(2, 1, 7, 8), torch.rand(2), torch.tensor([0, 2])
    start = time.perf_counter()
    compiled = torch.compile(net, fullgraph=True)
    with torch.no_grad():
        out = compiled(x, c, y)
    elapsed = time.perf_counter() - start
    torch.testing.assert_close(out, net(x, c, y), atol=1e-5, rtol=1e-4)
    assert elapsed < 300


SMALL_DIT = {"backbone": "dit", "width": 32, "depth": 2, "heads": 2}


def _run(modality: str, out: Path, **model: object) -> dict:
    """A few-step run of ``modality`` on its built-in data with a small ``model.backbone: dit``."""
    if modality == "image":
        d = tiny_run(out)
        d["model"] = {**SMALL_DIT, **model}  # in place of the UNet's keys, which a DiT refuses
        return d
    data = {
        "audio": {"source": "tones", "length": 256, "per_class": 4},
        "voxel": {"source": "shapes", "resolution": 8, "per_class": 4, "representation": "sdf"},
    }[modality]
    return {
        "modality": modality,
        "out_dir": str(out),
        "data": data,
        "model": {**SMALL_DIT, **model},
        "diffusion": {"schedule": {"kind": "cosine_discrete", "num_steps": 100}, "parameterization": "v"},
        "train": {"steps": 3, "batch_size": 8, "log_every": 1, "checkpoint_every": 0, "progress": False},
        "sample": {"steps": 2, "num_samples": 4},
    }


@pytest.mark.parametrize(
    ("modality", "model"),
    [
        ("image", {}),
        ("image", {"long_skips": True, "self_condition": True, "patch_size": 3}),
        ("audio", {"patch_size": 16}),
        ("voxel", {"patch_size": [2, 2, 4], "long_skips": True}),
    ],
)
def test_a_dit_config_trains_with_the_trainer_and_samples(tmp_path: Path, modality: str, model: dict) -> None:
    from multidiff import config as C
    from multidiff.pipeline import load_pipeline
    from multidiff.train import Trainer

    d = _run(modality, tmp_path / "run", **model)
    d["train"]["checkpoint_every"] = d["train"]["steps"]
    trainer = Trainer(C.resolve_config(d))
    assert isinstance(trainer.net, DiT)
    trainer.fit()
    assert trainer.step == d["train"]["steps"]
    pipe = load_pipeline(str(tmp_path / "run"), device="cpu")
    assert isinstance(pipe.denoiser.net, DiT)
    x, labels = pipe.sample(3, steps=2, guidance_scale=2.0, labels=1)
    assert x.shape == (3, *pipe.info.shape) and torch.isfinite(x).all() and (labels == 1).all()
