"""The Gaussian-mixture truth itself, checked by equivalences between independent computations."""

from __future__ import annotations

import math

import torch

from multidiff.testing import GaussianMixture, sliced_wasserstein


def test_tweedie_denoiser_equals_x_plus_sigma2_autograd_score(rank_shape) -> None:
    shape = rank_shape if rank_shape else (1,)
    gm = GaussianMixture.random(shape, 4, seed=3)
    sigma = torch.tensor([0.1, 1.0, 5.0], dtype=torch.float64)
    x = torch.randn((3, *shape), dtype=torch.float64).requires_grad_(True)
    (score,) = torch.autograd.grad(gm.log_prob(x, sigma).sum(), x)
    b = (-1,) + (1,) * len(shape)
    xd = x.detach()
    assert torch.allclose(gm.denoise(xd, sigma), xd + sigma.view(b) ** 2 * score, atol=1e-10)
    assert torch.allclose(gm.score(xd, sigma), score, atol=1e-10)
    assert torch.allclose(gm.eps(xd, sigma), (xd - gm.denoise(xd, sigma)) / sigma.view(b), atol=1e-10)


def test_density_integrates_to_one() -> None:
    gm = GaussianMixture(
        torch.tensor([[-1.0], [0.5], [2.0]]), torch.tensor([0.3, 0.2, 0.5]), torch.tensor([1.0, 2.0, 1.0])
    )
    grid = torch.linspace(-8, 8, 20001, dtype=torch.float64).unsqueeze(1)
    for sigma in (0.0, 0.7):
        mass = torch.trapezoid(gm.log_prob(grid, sigma).exp(), grid[:, 0])
        assert abs(mass.item() - 1) < 1e-8


def test_class_posteriors_sum_to_one_and_conditionals_match() -> None:
    gm = GaussianMixture.random(3, 6, seed=0, n_classes=3)
    x = torch.randn(10, 3, dtype=torch.float64)
    lp = torch.stack([gm.class_log_prob(x, 0.5, torch.full((10,), c)) for c in range(3)], dim=1)
    assert torch.allclose(lp.logsumexp(1), torch.zeros(10, dtype=torch.float64), atol=1e-12)
    # log p(x | y) two ways: the labelled call and the conditional mixture.
    y = torch.full((10,), 2)
    assert torch.allclose(gm.log_prob(x, 0.5, y), gm.conditional(2).log_prob(x, 0.5), atol=1e-12)
    assert torch.allclose(gm.denoise(x, 0.5, y), gm.conditional(2).denoise(x, 0.5), atol=1e-12)


def test_pf_ode_maps_the_noisy_marginal_to_the_data() -> None:
    # The probability-flow ODE transports p_sigma_max onto p_0: exact noisy samples pushed through
    # the reference solver land with the right mode weights and log-likelihood.
    gm = GaussianMixture.ring(4, weights=torch.tensor([4.0, 1, 2, 1]), std=0.15)
    g = torch.Generator().manual_seed(0)
    x_t, _ = gm.sample(3000, generator=g, sigma=10.0)
    x0 = gm.ode_solution(x_t, 10.0, steps=200)
    assert (gm.mode_weights(x0) - gm.weights).abs().sum() / 2 < 0.03
    assert abs(gm.log_prob(x0).mean().item() - gm.expected_log_prob()) < 0.08
    truth, _ = gm.sample(3000, generator=g)
    assert sliced_wasserstein(x0, truth) < 0.05
    assert sliced_wasserstein(x0, truth + 0.5) > 0.3


def test_samples_have_the_mixture_moments() -> None:
    gm = GaussianMixture.random(4, 3, seed=1)
    x, k = gm.sample(40000, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(x.mean(0), gm.mean(), atol=0.03)
    assert abs(x.var(0).mean().sqrt().item() - gm.std()) < 0.02
    assert torch.allclose(torch.bincount(k, minlength=3).double() / 40000, gm.weights, atol=0.01)
    assert math.isfinite(gm.expected_log_prob())
