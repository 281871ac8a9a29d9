"""Schedules: the DDPM table is the definition, round trips, monotonicity, transforms, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from multidiff import schedules as S

T = torch.linspace(0, 1, 501, dtype=torch.float64)

CONTINUOUS = {
    "linear_beta": S.LinearBetaSchedule(),
    "cosine": S.CosineSchedule(),
    "sigmoid": S.SigmoidSchedule(),
    "edm": S.EDMSchedule(),
    "flow": S.FlowSchedule(),
    "shifted": S.ShiftedSchedule(S.CosineSchedule(), base_size=64, size=256),
    "ztsnr_cosine": S.ZeroTerminalSNR(S.CosineSchedule()),
}
DISCRETE = {
    "ddpm_linear": S.DiscreteSchedule.linear(),
    "scaled_linear": S.DiscreteSchedule.scaled_linear(),
    "ddpm_cosine": S.DiscreteSchedule.cosine(),
    "ztsnr_linear": S.zero_terminal_snr(S.DiscreteSchedule.linear()),
}
ALL = {**CONTINUOUS, **DISCRETE}


def test_ddpm_linear_table_is_the_definition() -> None:
    # Ho et al. 2020: beta_i linear from 1e-4 to 0.02 over 1000 steps, alpha_bar_i = prod_{s<=i}(1 - beta_s).
    betas = [1e-4 + (0.02 - 1e-4) * i / 999 for i in range(1000)]
    prod, expected = 1.0, []
    for b in betas:
        prod *= 1.0 - b
        expected.append(prod)
    table = S.DiscreteSchedule.linear().alphas_cumprod
    assert table.dtype == torch.float64
    rel = (table - torch.tensor(expected, dtype=torch.float64)).abs() / torch.tensor(expected, dtype=torch.float64)
    assert rel.max() < 1e-12


def test_scaled_linear_table_is_the_definition() -> None:
    b0, b1 = 0.00085**0.5, 0.012**0.5
    prod, expected = 1.0, []
    for i in range(1000):
        prod *= 1.0 - (b0 + (b1 - b0) * i / 999) ** 2
        expected.append(prod)
    table = S.DiscreteSchedule.scaled_linear().alphas_cumprod
    assert torch.allclose(table, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)


def test_discrete_schedule_hits_its_table_exactly() -> None:
    sch = DISCRETE["ddpm_linear"]
    i = torch.arange(1000, dtype=torch.float64)
    ab = torch.sigmoid(sch.logsnr(i / 999))
    assert torch.allclose(ab, sch.alphas_cumprod, rtol=1e-12, atol=0)
    # ... and the inverse gives back the integer timesteps, so a sampler on table sigmas
    # conditions the network on exactly the trained timestep.
    ts = sch.timestep(S.t_from_sigma(sch, sch.sigmas()))
    assert (ts - i).abs().max() < 1e-8


@pytest.mark.parametrize("name", sorted(ALL))
def test_logsnr_strictly_decreasing(name: str) -> None:
    lam = ALL[name].logsnr(T)
    assert torch.isfinite(lam).all()
    # Sigmoid and ZTSNR schedules are clamped flat at their extreme ends; everything else is strict.
    inner = lam[5:-5]
    assert (inner[1:] < inner[:-1]).all(), name


@pytest.mark.parametrize("name", sorted(ALL))
def test_round_trip_t_logsnr_t(name: str) -> None:
    sch = ALL[name]
    t = T[5:-5]
    back = sch.t_from_logsnr(sch.logsnr(t))
    assert (back - t).abs().max() < 1e-7, name
    lam = sch.logsnr(t)
    assert (sch.logsnr(sch.t_from_logsnr(lam)) - lam).abs().max() < 1e-6, name


@pytest.mark.parametrize("name", sorted(ALL))
def test_alpha_sigma_identities(name: str) -> None:
    sch = ALL[name]
    a, s_vp, s = S.alpha(sch, T), S.sigma_vp(sch, T), S.sigma(sch, T)
    assert torch.allclose(a**2 + s_vp**2, torch.ones_like(a), atol=1e-12)
    assert torch.allclose(s, s_vp / a, rtol=1e-9)
    assert torch.allclose(S.t_from_sigma(sch, s[5:-5]), T[5:-5], atol=1e-7)


def test_linear_beta_continuous_limit_matches_ddpm_table() -> None:
    # beta(t) = 1000 * beta_discrete: the VP-SDE is the T -> infinity limit of DDPM's table.
    cont, disc = S.LinearBetaSchedule(), S.DiscreteSchedule.linear()
    t = torch.linspace(0.05, 1, 50, dtype=torch.float64)
    # Within 0.1 of log-SNR: the table puts entry i at t = i / 999 (an offset of one step) and its
    # product of (1 - beta) carries the second-order sum of beta^2 / 2 that the integral lacks.
    gap = (cont.logsnr(t) - disc.logsnr(t)).abs()
    assert gap.max() < 0.1
    assert gap.max() > 1e-3  # they are different schedules, not one aliased to the other


def test_shifted_schedule_adds_a_constant() -> None:
    base = S.CosineSchedule()
    sh = S.ShiftedSchedule(base, base_size=32, size=128)
    assert torch.allclose(sh.logsnr(T) - base.logsnr(T), torch.full_like(T, 2 * math.log(32 / 128)))


def test_zero_terminal_snr_discrete() -> None:
    base = S.DiscreteSchedule.linear()
    z = S.zero_terminal_snr(base)
    a, a0 = base.alphas_cumprod.sqrt(), z.alphas_cumprod.sqrt()
    # Lin et al. 2024, alg. 1: sqrt(alpha_bar) shifted to 0 at the end and scaled to keep the start.
    expected = (a - a[-1]) * a[0] / (a[0] - a[-1])
    assert torch.allclose(a0[:-1], expected[:-1], rtol=1e-12)
    assert a0[0] == pytest.approx(a[0].item(), rel=1e-12)
    assert z.alphas_cumprod[-1] <= S.TERMINAL_ALPHA_BAR
    assert z.alphas_cumprod[-1] < base.alphas_cumprod[-1] / 100


def test_zero_terminal_snr_continuous_reaches_the_floor() -> None:
    z = S.ZeroTerminalSNR(S.CosineSchedule())
    one = torch.ones((), dtype=torch.float64)
    assert torch.sigmoid(z.logsnr(one)).item() == pytest.approx(S.TERMINAL_ALPHA_BAR, rel=1e-6)
    assert z.logsnr(torch.zeros((), dtype=torch.float64)).item() == pytest.approx(15.0, abs=1e-6)


def test_zero_terminal_snr_refuses_ve() -> None:
    with pytest.raises(ValueError, match="VP"):
        S.zero_terminal_snr(S.EDMSchedule())


@pytest.mark.parametrize(
    ("call", "param"),
    [
        (lambda: S.linear_betas(1000, -1e-4, 0.02), "beta_start"),
        (lambda: S.linear_betas(1000, 1e-4, -0.02), "beta_end"),
        (lambda: S.scaled_linear_betas(1000, 0.0, 0.012), "beta_start"),
        (lambda: S.DiscreteSchedule.from_betas(torch.tensor([0.1, -0.2, 0.3])), "betas"),
        (lambda: S.linear_betas(1, 1e-4, 0.02), "num_steps"),
        (lambda: S.EDMSchedule(sigma_min=-1.0), "sigma_min"),
        (lambda: S.CosineSchedule(logsnr_min=5, logsnr_max=-5), "logsnr_min"),
    ],
)
def test_bad_schedule_parameters_name_the_parameter(call, param: str) -> None:
    with pytest.raises(ValueError, match=param):
        call()
