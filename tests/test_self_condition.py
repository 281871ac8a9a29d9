"""Self-conditioning (Chen et al. 2023, "Analog Bits"): the network, the training step and sampling."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import tiny_run

from multidiff import config as C
from multidiff.denoiser import self_conditioned
from multidiff.modality import DataInfo
from multidiff.nn import UNet
from multidiff.pipeline import generate, load_pipeline
from multidiff.testing import GaussianMixture
from multidiff.train import Trainer


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_unet_takes_its_estimate_as_extra_channels_on_every_rank(dims: int) -> None:
    torch.manual_seed(0)
    kw = dict(channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), head_channels=8, groups=4)
    net = UNet(dims, 2, self_condition=True, patch_size=2 if dims == 3 else 1, **kw)
    torch.nn.init.normal_(net.out[-1].weight, std=0.1)  # the output layer starts at zero
    assert net.stem.in_channels == 2 * 2 * (8 if dims == 3 else 1)
    x, t = torch.randn(2, 2, *([8] * dims)), torch.tensor([0.3, 0.7])
    est = torch.randn_like(x)
    none, zeros, given = net(x, t), net(x, t, self_cond=torch.zeros_like(x)), net(x, t, self_cond=est)
    assert none.shape == x.shape
    torch.testing.assert_close(none, zeros)  # no estimate is the zeros it is trained on
    assert (given - none).abs().max() > 1e-3  # the estimate reaches the output
    with pytest.raises(ValueError, match="self_cond must have the shape of x"):
        net(x, t, self_cond=est[:1])
    with pytest.raises(ValueError, match="without self_condition"):
        UNet(dims, 2, **kw)(x, t, self_cond=est)


def test_self_conditioned_feeds_each_call_the_previous_estimate() -> None:
    seen: list[torch.Tensor | None] = []

    def den(x: torch.Tensor, sigma: torch.Tensor, self_cond: torch.Tensor | None = None) -> torch.Tensor:
        seen.append(self_cond)
        return x * 0.5 + sigma.reshape(-1, 1)

    fn = self_conditioned(den)
    x = torch.ones(3, 1)
    a = fn(x, torch.full((3,), 1.0))
    b = fn(x, torch.full((3,), 2.0))
    fn(torch.ones(6, 1), torch.ones(6))  # another batch shape: no estimate of its own yet
    assert seen[0] is None and torch.equal(seen[1], a) and seen[2] is None
    given = torch.full((3, 1), 7.0)
    fn(x, torch.ones(3), self_cond=given)  # a caller's own estimate is kept
    assert seen[3] is given
    assert not torch.equal(a, b)


class _SelfConditionedMixture(torch.nn.Module):
    """The exact denoiser of a Gaussian mixture, declared self-conditioned, recording what it gets."""

    self_condition = True

    def __init__(self, gm: GaussianMixture) -> None:
        super().__init__()
        self.inner = gm.denoiser()
        self.schedule = None
        self.calls: list[tuple[torch.Tensor | None, torch.Tensor]] = []

    def forward(
        self, x: torch.Tensor, sigma: torch.Tensor, self_cond: torch.Tensor | None = None, **cond
    ) -> torch.Tensor:
        out = self.inner(x, sigma, **cond)
        self.calls.append((self_cond, out))
        return out


def test_generate_passes_the_previous_step_estimate_and_keeps_exact_samples() -> None:
    """An exact denoiser that ignores the estimate samples what it does without self-conditioning
    (the closed-form mixture); each network call gets the previous call's output, per batch."""
    gm = GaussianMixture(torch.tensor([[-1.0, 0.5], [1.0, -0.5]]), 0.1)
    den = _SelfConditionedMixture(gm)
    info = DataInfo((2,), 0)
    kw = dict(n=64, sampler="heun", steps=8, grid="karras", sigma_min=0.01, sigma_max=20.0, batch_size=32)
    x, _ = generate(den, info, **kw)
    plain, _ = generate(gm.denoiser(), info, **kw)
    torch.testing.assert_close(x, plain)
    calls = den.calls
    assert len(calls) == 2 * 15  # two batches, 15 evaluations each (heun: 2 per step, 1 for the last)
    for batch in (calls[:15], calls[15:]):
        assert batch[0][0] is None  # a fresh state per batch
        for (_, prev), (got, _) in zip(batch, batch[1:]):
            assert torch.equal(got, prev)


def test_guided_branches_each_keep_their_own_estimate() -> None:
    """Under classifier-free guidance the conditional and the null branch go through one batched
    call, so each branch is fed back its own estimate, not the guided one."""
    means = torch.tensor([[-1.0], [1.0]])
    gm = GaussianMixture(means, 0.1)
    exact = gm.denoiser()

    class Cond(_SelfConditionedMixture):
        def forward(self, x, sigma, self_cond=None, class_labels=None):
            out = exact(x, sigma) + 0.1 * (class_labels.to(x.dtype).reshape(-1, 1) - 1)
            self.calls.append((self_cond, out))
            return out

    den = Cond(gm)
    generate(
        den,
        DataInfo((1,), 2),
        n=4,
        labels=torch.tensor([0, 1, 0, 1]),
        guidance_scale=3.0,
        steps=4,
        sampler="euler",
        sigma_min=0.01,
        sigma_max=10.0,
    )
    (first, _), (second, _) = den.calls[0], den.calls[1]
    assert first is None and second.shape == (8, 1)  # conditional rows, then the null class's
    torch.testing.assert_close(second, den.calls[0][1])
    assert not torch.equal(second[:4], second[4:])


def test_training_feeds_half_the_batch_its_own_estimate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from multidiff import train as T

    seen = []
    real_loss = T.diffusion_loss

    def spy(den, x0, sigma, **kw):
        seen.append(kw["self_cond"].detach().clone())
        return real_loss(den, x0, sigma, **kw)

    monkeypatch.setattr(T, "diffusion_loss", spy)
    d = tiny_run(tmp_path / "r", model={**tiny_run(tmp_path)["model"], "self_condition": True})
    d["train"].update(steps=3, checkpoint_every=3)
    tr = Trainer(C.resolve_config(d))
    tr.fit()
    assert len(seen) == 3
    for est in seen:
        half = est.shape[0] // 2
        assert est[half:].abs().max() == 0  # the other half learns to start from nothing
        assert est[:half].flatten(1).abs().amax(1).min() > 0  # every estimated row is one
        assert torch.isfinite(est).all()
    pipe = load_pipeline(str(tmp_path / "r"))
    assert pipe.denoiser.self_condition and pipe.denoiser.net.stem.in_channels == 2
    x, _ = pipe.sample(3, steps=3)
    assert torch.isfinite(x).all() and x.shape == (3, 1, 8, 8)


def test_image_model_uses_groups_and_self_condition() -> None:
    from modalities.image.adapter import ImageModelConfig, build_unet

    info = DataInfo((3, 8, 8), 0)
    net = build_unet(ImageModelConfig(preset="tiny", channels=16, groups=4, self_condition=True), info)
    assert {m.num_groups for m in net.modules() if isinstance(m, torch.nn.GroupNorm)} == {4}
    assert net.self_condition and net.stem.in_channels == 6
