"""Samplers against closed-form truth: a contract test over every registered sampler and rank,
convergence orders on the exact Gaussian-mixture denoiser, the right distribution for the
stochastic ones, and clear errors for bad grids and names."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from multidiff import grids as G
from multidiff import samplers as SM
from multidiff.testing import GaussianMixture


class _VarianceDenoiser:
    """The exact denoiser plus a constant learned-variance output ``v``."""

    def __init__(self, gm: GaussianMixture, v: float) -> None:
        self.d, self.v = gm.denoiser(), v

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **cond: Any) -> torch.Tensor:
        return self.d(x, sigma, **cond)

    def with_variance(self, x: torch.Tensor, sigma: torch.Tensor, **cond: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self.d(x, sigma, **cond), torch.full_like(x, self.v)


def _denoiser_for(name: str, gm: GaussianMixture):
    return _VarianceDenoiser(gm, 0.3) if name == "ddpm_learned_variance" else gm.denoiser()


ALL = SM.available_samplers()


def test_registry_lists_every_sampler_the_issue_names() -> None:
    expected = {
        "ddpm",
        "ddim",
        "euler",
        "euler_ancestral",
        "heun",
        "dpmpp_2m",
        "dpmpp_3m",
        "dpmpp_2m_sde",
        "unipc",
        "adaptive",
        "ddpm_learned_variance",
    }
    assert expected <= set(ALL)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_contract(name: str, rank_shape: tuple[int, ...], dtype: torch.dtype) -> None:
    spec = SM.get_sampler(name)
    gm = GaussianMixture.random(rank_shape if rank_shape else (1,), 3, seed=0)
    shape = (4, *rank_shape) if rank_shape else (4,)
    if not rank_shape:  # rank 1: one scalar per sample
        gm = GaussianMixture(torch.tensor([-1.0, 1.0]), 0.3)
    den = SM.NFECounter(_denoiser_for(name, gm))
    x = 10.0 * torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    x_copy = x.clone()
    sigmas = G.karras_sigmas(6, 0.01, 10.0)
    calls: list[dict] = []
    g = torch.Generator().manual_seed(1)
    out = spec.fn(den, x, sigmas, generator=g, callback=calls.append)
    assert out.shape == x.shape and out.dtype == dtype and torch.isfinite(out).all()
    assert torch.equal(x, x_copy), "the caller's tensor was modified"
    if spec.nfe is not None:
        assert den.nfe == spec.nfe(6)
        assert len(calls) == 6 and calls[-1]["sigma_next"] == 0
    else:
        assert den.nfe > 0 and len(calls) >= 1
    # Deterministic given a generator; a deterministic sampler draws nothing from it.
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    state = g1.get_state()
    a = spec.fn(_denoiser_for(name, gm), x, sigmas, generator=g1)
    b = spec.fn(_denoiser_for(name, gm), x, sigmas, generator=g2)
    assert torch.equal(a, b)
    if spec.stochastic:
        c = spec.fn(_denoiser_for(name, gm), x, sigmas, generator=torch.Generator().manual_seed(8))
        assert not torch.equal(a, c)
    else:
        assert torch.equal(g1.get_state(), state), "a deterministic sampler drew random numbers"


@pytest.mark.parametrize("name", ALL)
def test_float64_runs_stay_float64(name: str) -> None:
    seen: set[torch.dtype] = set()
    gm = GaussianMixture.random(3, 2)
    base = _denoiser_for(name, gm)

    class Spy(_VarianceDenoiser):
        def __init__(self) -> None:
            self.d, self.v = base, 0.3

        def __call__(self, x, sigma, **cond):
            seen.update({x.dtype, sigma.dtype})
            return super().__call__(x, sigma, **cond)

        def with_variance(self, x, sigma, **cond):
            seen.update({x.dtype, sigma.dtype})
            return super().with_variance(x, sigma, **cond)

    out = SM.sample(Spy(), 5 * torch.randn(2, 3, dtype=torch.float64), G.karras_sigmas(4, 0.05, 5.0), name)
    assert seen == {torch.float64} and out.dtype == torch.float64


# --- accuracy on the exact denoiser --------------------------------------------------------

SIGMA_MAX, SIGMA_MIN = 20.0, 0.002


@pytest.fixture(scope="module")
def ode_case() -> tuple[GaussianMixture, torch.Tensor, torch.Tensor]:
    gm = GaussianMixture.random((2, 3), 5, seed=3)  # rank-3 tensors (B, 2, 3)
    x = SIGMA_MAX * torch.randn(32, 2, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return gm, x, gm.ode_solution(x, SIGMA_MAX, steps=1000)


def _error(gm, x, ref, name: str, nfe: int, **kw) -> float:
    steps = (nfe + 1) // 2 if name == "heun" else nfe
    out = SM.sample(gm.denoiser(), x, G.karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX), name, **kw)
    return (out - ref).flatten(1).norm(dim=1).mean().item()


@pytest.mark.parametrize(
    ("name", "kw", "lo", "hi"),
    [
        ("euler", {}, 0.8, 1.4),
        ("ddim", {}, 0.8, 1.4),
        ("heun", {}, 1.7, 2.7),
        ("dpmpp_2m", {}, 1.7, 2.7),
        ("dpmpp_2m_sde", {"eta": 0.0}, 1.7, 2.7),
        ("dpmpp_3m", {}, 2.5, 4.0),
        ("unipc", {}, 2.5, 4.0),
    ],
)
def test_error_falls_at_the_expected_order(ode_case, name: str, kw: dict, lo: float, hi: float) -> None:
    gm, x, ref = ode_case
    e40, e80 = _error(gm, x, ref, name, 40, **kw), _error(gm, x, ref, name, 80, **kw)
    order = math.log(e40 / e80) / math.log(2)
    assert lo <= order <= hi, f"{name}: observed order {order:.2f} (errors {e40:.2e}, {e80:.2e})"


def test_exponential_integrators_beat_euler_at_low_nfe(ode_case) -> None:
    gm, x, ref = ode_case
    euler = _error(gm, x, ref, "euler", 20)
    for name in ("dpmpp_2m", "dpmpp_3m", "unipc"):
        assert _error(gm, x, ref, name, 20) < euler / 2.5, name


def test_reference_ode_solution_has_converged(ode_case) -> None:
    gm, x, ref = ode_case
    assert (gm.ode_solution(x[:8], SIGMA_MAX, steps=500) - ref[:8]).abs().max() < 1e-6


def test_adaptive_meets_tolerance(ode_case) -> None:
    gm, x, ref = ode_case
    errs, nfes = [], []
    for tol in (1e-2, 1e-3, 1e-4):
        c = SM.NFECounter(gm.denoiser())
        out = SM.sample_adaptive(c, x, G.karras_sigmas(2, SIGMA_MIN, SIGMA_MAX), rtol=tol, atol=tol)
        errs.append((out - ref).flatten(1).norm(dim=1).mean().item())
        nfes.append(c.nfe)
    assert errs[0] > errs[1] > errs[2] and nfes[0] <= nfes[1] < nfes[2]
    assert errs[2] < 2e-3
    with pytest.raises(RuntimeError, match="max_nfe"):
        SM.sample_adaptive(gm.denoiser(), x, G.karras_sigmas(2, SIGMA_MIN, SIGMA_MAX), rtol=1e-8, atol=1e-8, max_nfe=30)


def test_final_extrapolation_removes_the_error_floor() -> None:
    # A large sigma_min makes the plain jump D(x, sigma_min) visibly wrong, by an amount that
    # more steps do not shrink; the extrapolation to sigma = 0 keeps converging.
    gm = GaussianMixture.random(4, 3, seed=5, std_range=(0.1, 0.2))
    x = 10.0 * torch.randn(32, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = gm.ode_solution(x, 10.0)

    def err(final_step: str, n: int) -> float:
        out = SM.sample_dpmpp_2m(gm.denoiser(), x, G.karras_sigmas(n, 0.02, 10.0), final_step=final_step)
        return (out - ref).norm(dim=1).mean().item()

    jump50, jump200 = err("jump", 50), err("jump", 200)
    extra50, extra200 = err("extrapolate", 50), err("extrapolate", 200)
    assert jump200 > jump50 / 1.5, "the jump's error should have hit its floor"
    assert extra200 < extra50 / 5
    assert extra200 < jump200 / 10


# --- stochastic samplers reach the right distribution --------------------------------------


@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("ddpm", {}),
        ("ddim", {"eta": 1.0}),
        ("euler_ancestral", {}),
        ("dpmpp_2m_sde", {}),
        ("heun", {"s_churn": 20.0}),
        ("ddpm_learned_variance", {}),
    ],
)
def test_stochastic_samplers_reach_the_data_distribution(name: str, kw: dict) -> None:
    gm = GaussianMixture.ring(8, weights=torch.tensor([3.0, 1, 1, 1, 2, 1, 1, 1]))
    n = 4000
    g = torch.Generator().manual_seed(0)
    x = 40.0 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    # 250 steps: ancestral samplers are first order and visibly narrow the modes at 100.
    out = SM.sample(_denoiser_for(name, gm), x, G.karras_sigmas(250, 0.002, 40.0), name, generator=g, **kw)
    ll_gap = gm.expected_log_prob() - gm.log_prob(out).mean().item()
    mode_tv = (gm.mode_weights(out) - gm.weights).abs().sum().item() / 2
    # Tolerances: 4000 samples give a standard error near 0.03 in mean log-likelihood and
    # near 0.01 in total variation of 8 mode weights.
    assert abs(ll_gap) < 0.1, f"{name}: log-likelihood gap {ll_gap:.3f}"
    assert mode_tv < 0.04, f"{name}: mode-weight total variation {mode_tv:.3f}"


def test_learned_variance_sampler_with_posterior_variance_is_ddpm() -> None:
    gm = GaussianMixture.random((2, 2), 3, seed=1)
    x = 10 * torch.randn(8, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sig = G.karras_sigmas(12, 0.01, 10.0)
    a = SM.sample_ddpm(gm.denoiser(), x, sig, generator=torch.Generator().manual_seed(3))
    b = SM.sample_ddpm_learned_variance(_VarianceDenoiser(gm, 0.0), x, sig, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(a, b, atol=1e-12)
    c = SM.sample_ddpm_learned_variance(_VarianceDenoiser(gm, 1.0), x, sig, generator=torch.Generator().manual_seed(3))
    assert not torch.allclose(a, c, atol=1e-3)


def test_ddim_with_eta_one_is_ddpm() -> None:
    gm = GaussianMixture.random(5, 3, seed=2)
    x = 10 * torch.randn(8, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sig = G.karras_sigmas(10, 0.01, 10.0)
    a = SM.sample_ddpm(gm.denoiser(), x, sig, generator=torch.Generator().manual_seed(3))
    b = SM.sample_ddim(gm.denoiser(), x, sig, eta=1.0, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(a, b, atol=1e-10)


def test_euler_is_ddim_in_the_ve_view() -> None:
    # Both are the same first-order step x0 + (s_next / s)(x - x0) (Karras et al. 2022, sec. 3).
    gm = GaussianMixture.random(3, 2, seed=4)
    x = 5 * torch.randn(4, 3, dtype=torch.float64)
    sig = G.karras_sigmas(7, 0.01, 5.0)
    assert torch.allclose(SM.sample_euler(gm.denoiser(), x, sig), SM.sample_ddim(gm.denoiser(), x, sig), atol=1e-12)


def test_learned_variance_needs_with_variance() -> None:
    with pytest.raises(ValueError, match="with_variance"):
        SM.sample_ddpm_learned_variance(lambda x, s: x, torch.zeros(2, 3), G.karras_sigmas(3, 0.1, 1.0))


# --- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sigmas", "message"),
    [
        ([1.0, 2.0, 0.0], "strictly decreasing"),
        ([3.0, 2.0, 1.0], "end in 0"),
        ([0.0], "at least 2"),
        ([3.0, float("nan"), 0.0], "finite"),
        ([3.0, -1.0, 0.0], "strictly decreasing|positive"),
    ],
)
def test_bad_grids_are_refused(sigmas: list[float], message: str) -> None:
    for name in ALL:
        with pytest.raises(ValueError, match=f"sigmas.*({message})|({message}).*sigmas"):
            SM.sample(lambda x, s: x, torch.zeros(2, 3), torch.tensor(sigmas), name)


def test_unknown_sampler_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown sampler 'plms'; known samplers: .*dpmpp_2m.*euler"):
        SM.get_sampler("plms")


def test_exp_integrator_weights_integrate_polynomials_exactly() -> None:
    # int_0^h e^{-(h-u)} P(u) du for P(u) = 1 + 2u - u^2, from three nodes, against the closed form.
    h, nodes = 0.7, [0.0, -0.4, -0.9]
    p = lambda u: 1 + 2 * u - u * u  # noqa: E731
    w = SM.exp_integrator_weights(nodes, h)
    approx = sum(wi * p(u) for wi, u in zip(w, nodes))
    # Closed form: with I_m = int_0^h e^{-(h-u)} u^m du: I0 = 1 - e^-h, I1 = h - I0, I2 = h^2 - 2 I1.
    i0 = 1 - math.exp(-h)
    i1 = h - i0
    i2 = h * h - 2 * i1
    assert approx == pytest.approx(i0 + 2 * i1 - i2, rel=1e-12)


def test_moment_matched_start_removes_the_terminal_snr_bias() -> None:
    # A schedule that stops at sigma_max = 3 leaves signal in x_T. Data centred away from 0:
    # pure noise at sigma_max skews the mode weights; matching the data's mean and std does not.
    gm = GaussianMixture(torch.tensor([[2.0, 2.0], [3.5, 2.0], [2.0, 3.5]]), 0.2, torch.tensor([1.0, 2.0, 1.0]))
    like = torch.zeros(4000, 2, dtype=torch.float64)
    sig = G.karras_sigmas(40, 0.002, 3.0)

    def tv(x: torch.Tensor) -> float:
        out = SM.sample_dpmpp_2m(gm.denoiser(), x, sig)
        return (gm.mode_weights(out) - gm.weights).abs().sum().item() / 2

    g = torch.Generator().manual_seed(0)
    pure = tv(SM.prior_sample(like, 3.0, generator=g))
    matched = tv(SM.prior_sample(like, 3.0, generator=g, data_mean=gm.mean(), data_std=gm.std()))
    exact = tv(gm.sample(4000, generator=g, sigma=3.0)[0])
    assert pure > 0.2 and matched < 0.03 and exact < 0.03


def test_auto_final_step_integrates_only_where_the_expansion_holds() -> None:
    gm = GaussianMixture.random(3, 3, seed=1)
    x = 10 * torch.randn(8, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def run(sig, **kw):
        return SM.sample_dpmpp_2m(gm.denoiser(), x, sig, **kw)

    small, large = G.karras_sigmas(12, 0.02, 10.0), G.karras_sigmas(12, 0.34, 10.0)
    assert torch.equal(run(small), run(small, final_step="integrate"))
    assert not torch.equal(run(small), run(small, final_step="jump"))
    assert not torch.equal(run(small), run(small, final_step="extrapolate"))
    assert torch.equal(run(large), run(large, final_step="jump"))
    # Stochastic samplers end with the plain denoised estimate.
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    sde = SM.sample_dpmpp_2m_sde(gm.denoiser(), x, small, generator=g())
    calls: list[dict] = []
    SM.sample_dpmpp_2m_sde(gm.denoiser(), x, small, generator=g(), callback=calls.append)
    assert torch.equal(sde, calls[-1]["denoised"])
    with pytest.raises(ValueError, match="final_step must be one of"):
        run(small, final_step="teleport")
