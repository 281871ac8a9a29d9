"""Conversions invert each other; the scalings table reproduces x0 from each network target;
the Denoiser wrapper around an exact network equals the exact denoiser."""

from __future__ import annotations

import math

import pytest
import torch

from multidiff import parameterization as P
from multidiff import schedules as S
from multidiff.denoiser import Denoiser
from multidiff.testing import GaussianMixture


def _batch(shape: tuple[int, ...], b: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((b, *shape), generator=g, dtype=torch.float64), torch.randn(
        (b, *shape), generator=g, dtype=torch.float64
    )


@pytest.mark.parametrize("vp", [True, False])
def test_conversions_invert_each_other(rank_shape: tuple[int, ...], vp: bool) -> None:
    x0, eps = _batch(rank_shape)
    sigma = torch.tensor([0.01, 0.5, 3.0, 80.0], dtype=torch.float64)
    a = torch.rsqrt(1 + sigma**2) if vp else torch.ones_like(sigma)
    s = sigma * a
    b = (-1,) + (1,) * len(rank_shape)
    x_t = a.view(b) * x0 + s.view(b) * eps
    v = P.x0_to_v(x_t, x0, a, s)
    assert torch.allclose(v, a.view(b) * eps - s.view(b) * x0, atol=1e-9)
    assert torch.allclose(P.v_to_x0(x_t, v, a, s), x0, atol=1e-9)
    assert torch.allclose(P.v_to_eps(x_t, v, a, s), eps, atol=1e-9)
    assert torch.allclose(P.eps_to_v(x_t, eps, a, s), v, atol=1e-9)
    assert torch.allclose(P.eps_to_x0(x_t, eps, a, s), x0, atol=1e-9)
    assert torch.allclose(P.x0_to_eps(x_t, x0, a, s), eps, atol=1e-6)
    score = P.x0_to_score(x_t, x0, a, s)
    assert torch.allclose(score, P.eps_to_score(eps, s), atol=1e-6, rtol=1e-6)
    assert torch.allclose(P.score_to_x0(x_t, score, a, s), x0, atol=1e-9)
    assert torch.allclose(P.score_to_eps(score, s), eps, atol=1e-6)


@pytest.mark.parametrize("param", P.PARAMETERIZATIONS)
@pytest.mark.parametrize("vp", [True, False])
def test_scalings_turn_the_exact_target_into_x0(rank_shape: tuple[int, ...], param: str, vp: bool) -> None:
    x0, eps = _batch(rank_shape)
    sigma = torch.tensor([0.002, 0.3, 2.0, 60.0], dtype=torch.float64)
    b = (-1,) + (1,) * len(rank_shape)
    x = x0 + sigma.view(b) * eps
    sc = P.scalings(param, sigma, vp=vp, sigma_data=0.5)
    # The target each parameterization's network learns.
    a = torch.rsqrt(1 + sigma**2) if vp else torch.ones_like(sigma)
    s = sigma * a
    target = {
        "eps": eps,
        "x0": x0,
        "v": a.view(b) * eps - s.view(b) * x0,
        "edm": (x0 - sc.c_skip.view(b) * x) / sc.c_out.view(b),  # Karras et al. 2022, eq. 8
        "flow": eps - x0,  # rectified flow's velocity
    }[param]
    d = sc.c_skip.view(b) * x + sc.c_out.view(b) * target
    assert torch.allclose(d, x0, atol=1e-8)
    expected_c_in = {"edm": torch.rsqrt(sigma**2 + 0.25), "flow": 1 / (1 + sigma)}.get(param, a)
    assert torch.allclose(sc.c_in, expected_c_in)


def test_unknown_parameterization() -> None:
    with pytest.raises(ValueError, match="parameterization must be one of"):
        P.scalings("score", torch.ones(2), vp=True)
    with pytest.raises(ValueError, match="parameterization"):
        Denoiser(torch.nn.Identity(), S.CosineSchedule(), "score")


class _ExactNet(torch.nn.Module):
    """A 'network' that knows the mixture: given its scaled input and noise condition, it
    returns the exact target of its parameterization, recovering sigma from the condition."""

    def __init__(self, gm: GaussianMixture, schedule, param: str, noise_cond: str) -> None:
        super().__init__()
        self.gm, self.schedule, self.param, self.noise_cond = gm, schedule, param, noise_cond

    def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        c = c_noise.double()
        if self.noise_cond == "timestep":
            sigma = S.sigma(self.schedule, c / (self.schedule.num_steps - 1))
        elif self.noise_cond == "t":
            sigma = S.sigma(self.schedule, c)
        elif self.noise_cond == "logsnr":
            sigma = S.logsnr_to_sigma(c)
        else:
            sigma = torch.exp(4 * c)
        b = (-1,) + (1,) * (x_in.ndim - 1)
        if self.param == "edm":
            x = x_in * torch.sqrt(sigma**2 + 1.0).view(b)
        else:
            a = torch.rsqrt(1 + sigma**2) if self.schedule.vp else torch.ones_like(sigma)
            x = x_in / a.view(b)
        x0 = self.gm.denoise(x, sigma)
        eps = self.gm.eps(x, sigma)
        if self.param == "eps":
            return eps
        if self.param == "x0":
            return x0
        a = torch.rsqrt(1 + sigma**2) if self.schedule.vp else torch.ones_like(sigma)
        if self.param == "v":
            return a.view(b) * eps - (sigma * a).view(b) * x0
        sc = P.scalings("edm", sigma, vp=False)
        return (x0 - sc.c_skip.view(b) * x) / sc.c_out.view(b)


@pytest.mark.parametrize(
    ("schedule", "param", "noise_cond"),
    [
        (S.DiscreteSchedule.linear(), "eps", "timestep"),
        (S.DiscreteSchedule.cosine(), "v", "timestep"),
        (S.CosineSchedule(), "v", "t"),
        (S.SigmoidSchedule(), "x0", "t"),
        (S.LinearBetaSchedule(), "eps", "logsnr"),
        (S.EDMSchedule(), "edm", "log_sigma"),
        (S.EDMSchedule(), "eps", "log_sigma"),
    ],
)
def test_denoiser_around_an_exact_network_is_exact(schedule, param: str, noise_cond: str, rank_shape) -> None:
    shape = rank_shape if rank_shape else (1,)
    gm = GaussianMixture.random(shape, 4, seed=2)
    den = Denoiser(_ExactNet(gm, schedule, param, noise_cond), schedule, param, noise_cond=noise_cond)
    g = torch.Generator().manual_seed(1)
    sigma = torch.tensor([0.05, 0.7, 5.0], dtype=torch.float64)
    x = gm.sample(3, generator=g)[0] + sigma.view(-1, *([1] * len(shape))) * torch.randn(
        (3, *shape), generator=g, dtype=torch.float64
    )
    assert torch.allclose(den(x, sigma), gm.denoise(x, sigma), atol=1e-7)


def test_default_noise_condition_follows_the_schedule() -> None:
    assert Denoiser(torch.nn.Identity(), S.DiscreteSchedule.linear()).noise_cond == "timestep"
    assert Denoiser(torch.nn.Identity(), S.CosineSchedule()).noise_cond == "t"
    assert Denoiser(torch.nn.Identity(), None, "edm").noise_cond == "log_sigma"
    with pytest.raises(ValueError, match="needs a schedule"):
        Denoiser(torch.nn.Identity(), None, "eps")


def test_clip_is_off_by_default() -> None:
    net = lambda x, c: torch.full_like(x, 5.0)  # noqa: E731
    den = Denoiser(net, S.EDMSchedule(), "x0")
    x = torch.zeros(2, 3)
    assert (den(x, torch.ones(2)) == 5.0).all()
    clipped = Denoiser(net, S.EDMSchedule(), "x0", clip_x0=1.0)
    assert (clipped(x, torch.ones(2)) == 1.0).all()


# Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models", Table 1
# (the EDM column), typed out here in plain floats rather than taken from the package.
def _karras_table1(sigma: float, sd: float) -> dict[str, float]:
    return {
        "c_skip": sd**2 / (sigma**2 + sd**2),
        "c_out": sigma * sd / math.sqrt(sigma**2 + sd**2),
        "c_in": 1 / math.sqrt(sigma**2 + sd**2),
        "c_noise": math.log(sigma) / 4,
    }


SIGMAS = [0.002, 0.05, 0.5, 1.0, 7.0, 80.0]


@pytest.mark.parametrize("sigma_data", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("vp", [True, False])
def test_edm_scalings_are_karras_table_1(sigma_data: float, vp: bool) -> None:
    sc = P.scalings("edm", torch.tensor(SIGMAS, dtype=torch.float64), vp=vp, sigma_data=sigma_data)
    for i, s in enumerate(SIGMAS):
        ref = _karras_table1(s, sigma_data)
        for name in ("c_skip", "c_out", "c_in"):
            assert getattr(sc, name)[i].item() == pytest.approx(ref[name], rel=1e-12), (name, s)


def test_the_edm_denoiser_feeds_the_network_as_karras_table_1_says() -> None:
    """D(x, sigma) = c_skip x + c_out F(c_in x, c_noise) (Karras eq. 7), every factor from Table 1."""
    seen = {}

    class Recorder(torch.nn.Module):
        def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
            seen["x_in"], seen["c_noise"] = x_in, c_noise
            return torch.sin(3 * x_in) + c_noise.view(-1, 1, 1)  # any F

    sd = 0.5
    den = Denoiser(Recorder(), S.EDMSchedule(), "edm", sigma_data=sd)
    sigma = torch.tensor(SIGMAS, dtype=torch.float64)
    x = torch.randn(len(SIGMAS), 2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    d = den(x, sigma)
    for i, s in enumerate(SIGMAS):
        ref = _karras_table1(s, sd)
        assert seen["c_noise"][i].item() == pytest.approx(ref["c_noise"], rel=1e-12, abs=1e-15)
        assert torch.allclose(seen["x_in"][i], ref["c_in"] * x[i], rtol=1e-12, atol=0)
        f = torch.sin(3 * ref["c_in"] * x[i]) + ref["c_noise"]
        assert torch.allclose(d[i], ref["c_skip"] * x[i] + ref["c_out"] * f, rtol=1e-12, atol=1e-15)
