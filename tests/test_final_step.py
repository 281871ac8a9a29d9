"""The last step to sigma = 0, against the exact probability-flow ODE of a Gaussian mixture.

Two noise ranges: Stable Diffusion's scaled-linear schedule (sigma_min about 0.029, comparable to
the ring's component std 0.1, where a jump or a two-point extrapolation leaves a floor) and EDM's
(sigma_min 0.002, where it hides). Every deterministic sampler must converge at its order on both.
"""

from __future__ import annotations

import pytest
import torch

from multidiff import grids as G
from multidiff import samplers as SM
from multidiff.schedules import DiscreteSchedule
from multidiff.testing import GaussianMixture

RANGES = {
    "sd-scaled-linear": G.schedule_sigma_range(DiscreteSchedule.scaled_linear()),  # (0.0292, 14.6)
    "edm": (0.002, 80.0),
}
DETERMINISTIC = ["euler", "ddim", "heun", "dpmpp_2m", "dpmpp_3m", "unipc"]


def _make_case(label: str) -> tuple[str, GaussianMixture, torch.Tensor, torch.Tensor]:
    """32 starting points at the range's sigma_max on the 8-mode ring, and their exact ODE endpoints."""
    smin, smax = RANGES[label]
    gm = GaussianMixture.ring(8)
    x = smax * torch.randn(32, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return label, gm, x, gm.ode_solution(x, smax, steps=1000)


@pytest.fixture(scope="module", params=list(RANGES))
def case(request) -> tuple[str, GaussianMixture, torch.Tensor, torch.Tensor]:
    return _make_case(request.param)


@pytest.fixture(scope="module")
def sd_case() -> tuple[str, GaussianMixture, torch.Tensor, torch.Tensor]:
    """Stable Diffusion's range only: its sigma_min is where a jump's floor shows."""
    return _make_case("sd-scaled-linear")


def _error(case, name: str, steps: int, dtype: torch.dtype = torch.float64, **kw) -> float:
    label, gm, x, ref = case
    smin, smax = RANGES[label]
    out = SM.sample(gm.denoiser(), x.to(dtype), G.logsnr_uniform_sigmas(steps, smin, smax), name, **kw)
    return (out.double() - ref).norm(dim=1).mean().item()


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_error_falls_at_the_samplers_order_to_sigma_zero(case, name: str) -> None:
    # From 50 to 100 steps the error must fall by 2^order (order as registered; UniPC's default
    # UniP-2 with its corrector is third order), with slack 0.65. Measured factor / 2^order on
    # these two ranges: 0.89 to 1.06, lowest for unipc on the EDM range (0.74), where the plain jump
    # does the same: the bulk of the trajectory is not yet asymptotic there, not the final step.
    order = SM.get_sampler(name).order
    e50, e100 = _error(case, name, 50), _error(case, name, 100)
    assert e100 <= e50 / (2**order * 0.65), f"{case[0]} {name}: {e50:.2e} -> {e100:.2e}, order {order}"


@pytest.mark.parametrize("name", ["heun", "dpmpp_2m", "dpmpp_3m", "unipc"])
def test_the_jump_floor_is_gone_where_sigma_min_is_large(sd_case, name: str) -> None:
    case = sd_case
    jump50, jump100 = _error(case, name, 50, final_step="jump"), _error(case, name, 100, final_step="jump")
    assert jump100 > jump50 / 1.5, "the jump should have hit its floor (about 5e-3 on the ring)"
    integrate100 = _error(case, name, 100)  # "auto" integrates here
    assert integrate100 < jump100 / 10
    if SM.get_sampler(name).order >= 3:
        # The two-point extrapolation of D has a floor too, about 3e-4, above what third-order
        # samplers reach at 100 steps (about 5e-5); the integral has none that shows.
        assert integrate100 < _error(case, name, 100, final_step="extrapolate") / 4


def test_adaptive_has_no_floor(case) -> None:
    label, gm, x, ref = case
    smin, smax = RANGES[label]
    grid = torch.tensor([smax, smin, 0.0], dtype=torch.float64)
    errs = {}
    for final_step in ("auto", "jump"):
        out = SM.sample_adaptive(gm.denoiser(), x, grid, rtol=1e-6, atol=1e-6, final_step=final_step)
        errs[final_step] = (out - ref).norm(dim=1).mean().item()
    # Measured on the ring: 1.0e-6 (SD range; the jump 5.0e-3) and 4e-7 (EDM range).
    assert errs["auto"] < 1e-5, errs
    if label == "sd-scaled-linear":
        assert errs["auto"] < errs["jump"] / 100, errs


def test_dense_float32_grids_do_not_amplify_rounding(sd_case) -> None:
    # 1000 steps put consecutive sigmas 0.6% apart; a polynomial through them would amplify float32
    # rounding (to 2e-3 with 4 consecutive nodes); FINAL_NODE_RATIO spreads the nodes. Measured
    # 1.0e-5, against 3.0e-4 for the two-point extrapolation and 5.0e-3 for the jump.
    assert _error(sd_case, "dpmpp_3m", 1000, torch.float32) < 5e-5


def test_final_step_weights_integrate_polynomial_scores_exactly() -> None:
    # With score P(u) = 1 + 2u - 3u^2 along the trajectory (u = sigma^2), D - x = u P(u), and the
    # step must return x(s) + 1/2 int_0^{s^2} P(u) du from three nodes (closed form below).
    sig = [0.05, 0.08, 0.12]
    p = lambda u: 1 + 2 * u - 3 * u * u  # noqa: E731
    c = SM.final_step_weights(sig)
    approx = sum(cj * s * s * p(s * s) for cj, s in zip(c, sig))
    u0 = sig[0] ** 2
    assert approx == pytest.approx(0.5 * (u0 + u0**2 - u0**3), rel=1e-12)
    # One node: the trapezoid in u, (x + D) / 2.
    assert SM.final_step_weights([0.3]) == pytest.approx([0.5])
