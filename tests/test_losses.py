"""Losses: weightings are one x0-space weight, the exact network scores zero, noise-level
distributions, and the improved-DDPM hybrid loss."""

from __future__ import annotations

import math

import pytest
import torch

from multidiff import losses as L
from multidiff import parameterization as P
from multidiff import schedules as S
from multidiff.denoiser import Denoiser


class _Affine(torch.nn.Module):
    """A small network of any rank: a per-channel affine map plus a noise term."""

    def __init__(self, channels: int, out_mult: int = 1) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(channels * out_mult, channels, dtype=torch.float64) * 0.3)
        self.out_mult = out_mult

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        y = torch.einsum("oc,bc...->bo...", self.w, x)
        return y + c.view(-1, *([1] * (x.ndim - 1))).to(x.dtype) * 0.01


@pytest.mark.parametrize("param", P.PARAMETERIZATIONS)
@pytest.mark.parametrize("weighting", L.WEIGHTINGS)
def test_loss_equals_weighted_x0_error(rank_shape, param: str, weighting: str) -> None:
    shape = (2, *rank_shape[1:]) if rank_shape else (2,)
    sched = S.EDMSchedule() if param == "edm" else S.CosineSchedule()
    den = Denoiser(_Affine(shape[0]), sched, param)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn((5, *shape), generator=g, dtype=torch.float64)
    noise = torch.randn((5, *shape), generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.01, 0.2, 1.0, 4.0, 30.0], dtype=torch.float64)
    loss = L.diffusion_loss(den, x0, sigma, noise=noise, weighting=weighting, gamma=5.0)
    assert loss.shape == (5,)
    # Direct: w_x0(sigma) * mean |D(x) - x0|^2.
    x = x0 + sigma.view(-1, *([1] * len(shape))) * noise
    d = den(x, sigma)
    sc = den.scalings(sigma)
    w = L.x0_weight(weighting, sigma, c_out=sc.c_out, gamma=5.0)
    direct = w * (d - x0).pow(2).flatten(1).mean(1)
    assert torch.allclose(loss, direct, rtol=1e-7)


def test_uniform_weighting_is_plain_mse_on_the_target() -> None:
    den = Denoiser(_Affine(3), S.CosineSchedule(), "eps")
    g = torch.Generator().manual_seed(1)
    x0, noise = (
        torch.randn(4, 3, 8, generator=g, dtype=torch.float64),
        torch.randn(4, 3, 8, generator=g, dtype=torch.float64),
    )
    sigma = torch.tensor([0.1, 1.0, 2.0, 9.0], dtype=torch.float64)
    out, _, _ = den.raw(x0 + sigma.view(-1, 1, 1) * noise, sigma)
    assert torch.allclose(L.diffusion_loss(den, x0, sigma, noise=noise), (out - noise).pow(2).mean((1, 2)))
    # Min-SNR-gamma for eps-prediction: min(snr, gamma) / snr times the eps-MSE (Hang et al. 2023).
    snr = sigma.pow(-2)
    ms = L.diffusion_loss(den, x0, sigma, noise=noise, weighting="min_snr", gamma=5.0)
    assert torch.allclose(ms, snr.clamp(max=5.0) / snr * (out - noise).pow(2).mean((1, 2)))


def test_exact_network_has_zero_loss_even_at_tiny_sigma() -> None:
    x0 = torch.randn(3, 2, 4, dtype=torch.float32)
    noise = torch.randn(3, 2, 4, dtype=torch.float32)
    sigma = torch.tensor([1e-4, 1e-2, 10.0])
    net = lambda x, c: noise  # noqa: E731 - predicts the true eps
    den = Denoiser(net, S.CosineSchedule(), "eps")
    # Forming D(x) - x0 in float32 at sigma = 1e-4 would leave errors near 1e-6 here.
    assert L.diffusion_loss(den, x0, sigma, noise=noise, weighting="min_snr").abs().max() < 1e-12


def test_noise_level_distributions() -> None:
    g = torch.Generator().manual_seed(0)
    ln = L.sample_sigma_log_normal(20000, p_mean=-1.2, p_std=1.2, generator=g).log()
    assert ln.mean().item() == pytest.approx(-1.2, abs=0.05) and ln.std().item() == pytest.approx(1.2, abs=0.05)
    sch = S.DiscreteSchedule.linear()
    s = L.sample_sigma_uniform_t(sch, 5000, generator=g)
    # Discrete training draws trained timesteps only, all of them.
    idx = (sch.sigmas().unsqueeze(0) - s.unsqueeze(1)).abs().argmin(dim=1)
    assert torch.allclose(sch.sigmas()[idx], s, rtol=1e-10)
    assert idx.min() < 10 and idx.max() > 990
    cs = S.CosineSchedule()
    t = S.t_from_sigma(cs, L.sample_sigma_logit_normal(cs, 20000, generator=g))
    assert torch.logit(t).mean().item() == pytest.approx(0.0, abs=0.05)
    tc = S.t_from_sigma(cs, L.sample_sigma_uniform_t(cs, 20000, generator=g, t_min=0.2, t_max=0.6))
    assert tc.min() >= 0.2 - 1e-9 and tc.max() <= 0.6 + 1e-9 and tc.mean().item() == pytest.approx(0.4, abs=0.01)


def test_unknown_weighting() -> None:
    with pytest.raises(ValueError, match="weighting must be one of"):
        L.x0_weight("p2", torch.ones(2))


class _OracleLearnedVariance(torch.nn.Module):
    """Returns the exact eps and a fixed variance channel value."""

    def __init__(self, noise: torch.Tensor, var_value: float) -> None:
        super().__init__()
        self.noise, self.var_value = noise, var_value
        self.p = torch.nn.Parameter(torch.zeros((), dtype=noise.dtype))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.noise, torch.full_like(self.noise, self.var_value) + self.p], dim=1)


def test_hybrid_loss_vanishes_for_the_exact_model_with_posterior_variance() -> None:
    sch = S.DiscreteSchedule.linear()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 2, 5, generator=g, dtype=torch.float64)
    noise = torch.randn(6, 2, 5, generator=g, dtype=torch.float64)
    steps = torch.tensor([1, 10, 100, 500, 900, 999])
    exact = Denoiser(_OracleLearnedVariance(noise, -1.0), sch, "eps", learned_variance=True)  # v = 0: posterior
    loss = L.hybrid_loss(exact, x0, noise=noise, steps=steps)
    assert loss.abs().max() < 1e-9
    upper = Denoiser(_OracleLearnedVariance(noise, 1.0), sch, "eps", learned_variance=True)  # v = 1: beta
    worse = L.hybrid_loss(upper, x0, noise=noise, steps=steps)
    assert (worse > 0).all()
    worse.sum().backward()
    assert upper.net.p.grad is not None and upper.net.p.grad.abs() > 0


def test_hybrid_loss_first_step_is_a_gaussian_nll() -> None:
    sch = S.DiscreteSchedule.linear()
    x0 = torch.zeros(1, 1, 4, dtype=torch.float64)
    noise = torch.zeros(1, 1, 4, dtype=torch.float64)
    den = Denoiser(_OracleLearnedVariance(noise, -1.0), sch, "eps", learned_variance=True)
    loss = L.hybrid_loss(den, x0, noise=noise, steps=torch.tensor([0]), lambda_vlb=1.0)
    s0, s1 = sch.sigmas()[0].item(), sch.sigmas()[1].item()
    var = s0**2 * (s1**2 - s0**2) / s1**2  # beta_tilde clipped from step 1
    assert loss.item() == pytest.approx(0.5 * (math.log(2 * math.pi) + math.log(var)) / math.log(2.0), rel=1e-9)


def test_hybrid_loss_needs_learned_variance() -> None:
    with pytest.raises(ValueError, match="learned_variance"):
        L.hybrid_loss(Denoiser(_Affine(1), S.DiscreteSchedule.linear()), torch.zeros(2, 1, 3))


# --- the weightings against the papers' closed forms, computed here from the network's output ---

SIGMAS = torch.tensor([0.01, 0.2, 1.0, 4.0, 30.0], dtype=torch.float64)


def _draws(shape: tuple[int, ...] = (2, 3, 4)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return (
        torch.randn((len(SIGMAS), *shape), generator=g, dtype=torch.float64),
        torch.randn((len(SIGMAS), *shape), generator=g, dtype=torch.float64),
    )


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).pow(2).flatten(1).mean(1)


def _vp(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha, sigma_vp of x_t = alpha x0 + sigma_vp eps, alpha^2 + sigma_vp^2 = 1, for VE noise sigma."""
    alpha = 1 / torch.sqrt(1 + sigma**2)
    return alpha, sigma * alpha


def _b(t: torch.Tensor) -> torch.Tensor:
    return t.view(-1, 1, 1, 1)


@pytest.mark.parametrize("param", ["v", "eps", "x0"])
def test_snr_plus_one_is_the_v_prediction_mse_under_vp(param: str) -> None:
    """Salimans & Ho 2022, sec. 4: with x_t = alpha x0 + sigma eps (VP), v = alpha eps - sigma x0;
    the snr_plus_one loss is |v_hat - v|^2, whatever the network predicts."""
    x0, eps = _draws()
    den = Denoiser(_Affine(2), S.CosineSchedule(), param)
    loss = L.diffusion_loss(den, x0, SIGMAS, noise=eps, weighting="snr_plus_one")
    alpha, s = _vp(SIGMAS)
    x_t = _b(alpha) * x0 + _b(s) * eps
    out, _, _ = den.raw(x0 + _b(SIGMAS) * eps, SIGMAS)  # the network's raw output F
    if param == "v":
        v_hat = out
    elif param == "eps":  # x0_hat = (x_t - sigma eps_hat) / alpha
        v_hat = _b(alpha) * out - _b(s) * (x_t - _b(s) * out) / _b(alpha)
    else:  # eps_hat = (x_t - alpha x0_hat) / sigma
        v_hat = _b(alpha) * (x_t - _b(alpha) * out) / _b(s) - _b(s) * out
    v = _b(alpha) * eps - _b(s) * x0
    assert torch.allclose(loss, _mse(v_hat, v), rtol=1e-9)


@pytest.mark.parametrize("sigma_data", [0.5, 1.3])
def test_the_edm_weighting_is_the_plain_loss_on_karras_effective_target(sigma_data: float) -> None:
    """Karras et al. 2022, eq. 8 with Table 1: lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 = 1 / c_out^2,
    so the weighted x0 loss is the plain MSE of F against (x0 - c_skip x) / c_out."""
    x0, eps = _draws()
    den = Denoiser(_Affine(2), S.EDMSchedule(), "edm", sigma_data=sigma_data)
    loss = L.diffusion_loss(den, x0, SIGMAS, noise=eps, weighting="edm")
    sd2 = sigma_data**2
    c_skip = sd2 / (SIGMAS**2 + sd2)
    c_out = SIGMAS * sigma_data / torch.sqrt(SIGMAS**2 + sd2)
    x = x0 + _b(SIGMAS) * eps
    out, _, _ = den.raw(x, SIGMAS)
    assert torch.allclose(loss, _mse(out, (x0 - _b(c_skip) * x) / _b(c_out)), rtol=1e-9)
    # and for a network of another parameterization: lambda(sigma) times the x0 error
    eps_den = Denoiser(_Affine(2), S.EDMSchedule(), "eps", sigma_data=sigma_data)
    lam = (SIGMAS**2 + sd2) / (SIGMAS * sigma_data) ** 2
    loss = L.diffusion_loss(eps_den, x0, SIGMAS, noise=eps, weighting="edm")
    eps_hat, _, _ = eps_den.raw(x, SIGMAS)
    assert torch.allclose(loss, lam * _mse(x - _b(SIGMAS) * eps_hat, x0), rtol=1e-7)


@pytest.mark.parametrize("bias", [0.0, 2.0, -3.0])
@pytest.mark.parametrize("param", ["eps", "v"])
def test_the_sigmoid_weighting_is_the_eps_mse_times_sigmoid_of_bias_minus_logsnr(param: str, bias: float) -> None:
    """Kingma & Gao 2023, sec. 5.2 (and simple diffusion): the eps-prediction MSE weighted by
    sigmoid(b - lambda), lambda = log SNR = log(alpha^2 / sigma^2) under VP."""
    x0, eps = _draws()
    den = Denoiser(_Affine(2), S.CosineSchedule(), param)
    loss = L.diffusion_loss(den, x0, SIGMAS, noise=eps, weighting="sigmoid", bias=bias)
    alpha, s = _vp(SIGMAS)
    x_t = _b(alpha) * x0 + _b(s) * eps
    out, _, _ = den.raw(x0 + _b(SIGMAS) * eps, SIGMAS)
    eps_hat = out if param == "eps" else _b(s) * x_t + _b(alpha) * out  # from v = alpha eps - sigma x0
    logsnr = torch.log(alpha**2 / s**2)
    w = 1 / (1 + torch.exp(-(bias - logsnr)))
    assert torch.allclose(loss, w * _mse(eps_hat, eps), rtol=1e-9)
