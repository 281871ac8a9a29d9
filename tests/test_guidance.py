"""Guidance as composition, checked against the exact Gaussian mixture."""

from __future__ import annotations

import pytest
import torch

from multidiff import grids as G
from multidiff import samplers as SM
from multidiff.guidance import classifier_free_guidance, classifier_guidance
from multidiff.testing import GaussianMixture

NULL = -1


@pytest.fixture()
def case(rank_shape):
    shape = rank_shape if rank_shape else (1,)
    gm = GaussianMixture.random(shape, 6, seed=1, n_classes=3)
    g = torch.Generator().manual_seed(0)
    b = 5
    sigma = torch.tensor([0.05, 0.3, 1.0, 3.0, 20.0], dtype=torch.float64)
    x = gm.sample(b, generator=g)[0] + sigma.view(-1, *([1] * len(shape))) * torch.randn(
        (b, *shape), generator=g, dtype=torch.float64
    )
    y = torch.tensor([0, 1, 2, 0, 1])
    return gm, x, sigma, y


def test_scale_one_is_the_conditional_denoiser(case) -> None:
    gm, x, sigma, y = case
    d = gm.denoiser()
    cfg = classifier_free_guidance(d, 1.0, negative={"class_labels": torch.full_like(y, NULL)})
    assert torch.allclose(cfg(x, sigma, class_labels=y), d(x, sigma, class_labels=y), atol=1e-12)


def test_scale_zero_is_the_negative_and_scale_w_extrapolates(case) -> None:
    gm, x, sigma, y = case
    d = gm.denoiser()
    neg = {"class_labels": torch.full_like(y, NULL)}
    uncond = d(x, sigma, class_labels=neg["class_labels"])
    cond = d(x, sigma, class_labels=y)
    assert torch.allclose(classifier_free_guidance(d, 0.0, negative=neg)(x, sigma, class_labels=y), uncond, atol=1e-12)
    got = classifier_free_guidance(d, 3.0, negative=neg)(x, sigma, class_labels=y)
    assert torch.allclose(got, uncond + 3.0 * (cond - uncond), atol=1e-10)


def test_negative_condition_equal_to_the_condition_changes_nothing(case) -> None:
    gm, x, sigma, y = case
    d = gm.denoiser()
    cfg = classifier_free_guidance(d, 7.5, negative=lambda cond: cond)
    assert torch.allclose(cfg(x, sigma, class_labels=y), d(x, sigma, class_labels=y), atol=1e-12)


def test_batched_and_separate_calls_agree(case) -> None:
    gm, x, sigma, y = case
    calls: list[int] = []

    def d(x, s, class_labels):
        calls.append(x.shape[0])
        return gm.denoise(x, s, class_labels)

    neg_t = {"class_labels": torch.full_like(y, NULL)}
    batched = classifier_free_guidance(d, 2.0, negative=neg_t)(x, sigma, class_labels=y)
    assert calls == [2 * x.shape[0]]  # one network call on the doubled batch
    calls.clear()
    separate = classifier_free_guidance(d, 2.0, negative={"class_labels": None})(x, sigma, class_labels=y)
    assert calls == [x.shape[0], x.shape[0]]
    assert torch.allclose(batched, separate, atol=1e-12)


def test_guidance_interval(case) -> None:
    gm, x, sigma, y = case
    d = gm.denoiser()
    neg = {"class_labels": torch.full_like(y, NULL)}
    full = classifier_free_guidance(d, 4.0, negative=neg)(x, sigma, class_labels=y)
    windowed = classifier_free_guidance(d, 4.0, negative=neg, interval=(0.2, 2.0))(x, sigma, class_labels=y)
    cond = d(x, sigma, class_labels=y)
    inside = (sigma > 0.2) & (sigma <= 2.0)
    assert torch.allclose(windowed[inside], full[inside]) and torch.allclose(windowed[~inside], cond[~inside])


@pytest.mark.parametrize("shape", [(3,), (2, 5), (2, 3, 3), (1, 2, 2, 3)], ids=["rank2", "rank3", "rank4", "rank5"])
def test_guidance_rescale_matches_the_conditional_std(shape) -> None:
    # Rank 1 has one value per sample, which has no standard deviation: ranks 2 to 5 here.
    gm = GaussianMixture.random(shape, 6, seed=1, n_classes=3)
    sigma = torch.tensor([0.05, 0.3, 1.0, 3.0, 20.0], dtype=torch.float64)
    x = gm.sample(5, generator=torch.Generator().manual_seed(0))[0] + sigma.view(-1, *([1] * len(shape)))
    y = torch.tensor([0, 1, 2, 0, 1])
    d = gm.denoiser()
    neg = {"class_labels": torch.full_like(y, NULL)}
    plain = classifier_free_guidance(d, 5.0, negative=neg)(x, sigma, class_labels=y)
    full = classifier_free_guidance(d, 5.0, negative=neg, rescale=1.0)(x, sigma, class_labels=y)
    half = classifier_free_guidance(d, 5.0, negative=neg, rescale=0.5)(x, sigma, class_labels=y)
    cond = d(x, sigma, class_labels=y)
    std = lambda t: t.flatten(1).std(dim=1)  # noqa: E731
    assert torch.allclose(std(full), std(cond), rtol=1e-9)
    assert torch.allclose(half, 0.5 * full + 0.5 * plain, atol=1e-12)


def test_exact_classifier_guidance_is_the_exact_conditional_denoiser(case) -> None:
    # Bayes: grad log p(x|y) = grad log p(x) + grad log p(y|x), so with the exact noisy
    # classifier and scale 1, D + sigma^2 grad log p(y|x) = E[x0 | x, y].
    gm, x, sigma, y = case
    unconditional = lambda x, s, class_labels: gm.denoise(x, s).to(x.dtype)  # noqa: E731 - ignores the label
    guided = classifier_guidance(unconditional, lambda x, s, class_labels: gm.class_log_prob(x, s, class_labels), 1.0)
    assert torch.allclose(guided(x, sigma, class_labels=y), gm.denoise(x, sigma, y), atol=1e-8)
    assert not torch.allclose(unconditional(x, sigma, y), gm.denoise(x, sigma, y), atol=1e-3)


def test_guided_denoisers_work_in_every_sampler() -> None:
    gm = GaussianMixture.ring(8)
    y = torch.arange(8).repeat(4)
    x = 20 * torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sig = G.karras_sigmas(30, 0.002, 20.0)
    cfg = classifier_free_guidance(gm.denoiser(), 1.0, negative={"class_labels": torch.full_like(y, NULL)})
    for name in ("euler", "dpmpp_2m", "unipc"):
        a = SM.sample(cfg, x, sig, name, cond={"class_labels": y})
        b = SM.sample(gm.denoiser(), x, sig, name, cond={"class_labels": y})
        assert torch.allclose(a, b, atol=1e-10)
        # Each sample lands on the mode of its class.
        assert (gm.posterior(a, 0.0).argmax(1) == y).all()


def test_bad_guidance_arguments() -> None:
    d = GaussianMixture.ring().denoiser()
    with pytest.raises(ValueError, match="rescale"):
        classifier_free_guidance(d, 2.0, negative={}, rescale=1.5)
    with pytest.raises(ValueError, match="interval"):
        classifier_free_guidance(d, 2.0, negative={}, interval=(3.0, 1.0))


def test_x0_classifier_guidance_steers_towards_the_class() -> None:
    from multidiff.guidance import x0_classifier_guidance

    gm = GaussianMixture.ring(8)
    d = lambda x, sigma, **_: gm.denoise(x, sigma)  # noqa: E731  the unconditional denoiser
    clf = lambda x0, class_labels: gm.class_log_prob(x0, 1e-3, class_labels)  # noqa: E731  a clean classifier
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s = torch.full((6,), 0.8, dtype=torch.float64)
    y = torch.full((6,), 2)
    assert torch.allclose(x0_classifier_guidance(d, clf, 0.0)(x, s, class_labels=y), d(x, s))
    # through a sampler: the fraction of samples in class 2's mode grows with the scale
    sig = G.make_grid("karras", 20, sigma_min=0.01, sigma_max=20.0)
    x_t = 20.0 * torch.randn(400, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.full((400,), 2)
    frac = []
    for scale in (0.0, 4.0):
        out = SM.sample(x0_classifier_guidance(d, clf, scale), x_t, sig, "dpmpp_2m", cond={"class_labels": y})
        frac.append((gm.posterior(out, 0.0).argmax(1) == 2).double().mean().item())
    assert frac[0] < 0.25 and frac[1] > 0.8, frac


def test_class_guidance_negative_equal_to_the_null_class_and_scale_one_change_nothing(case) -> None:
    from multidiff.pipeline import class_guidance

    gm, x, sigma, y = case
    k = 3  # the mixture's classes; label k is the null class of a trained model, here "unconditional"
    d = lambda x, s, class_labels: gm.denoiser()(x, s, class_labels=torch.where(class_labels >= k, NULL, class_labels))  # noqa: E731
    plain = classifier_free_guidance(d, 3.0, negative={"class_labels": torch.full_like(y, k)})
    assert torch.allclose(
        class_guidance(d, k, 3.0)(x, sigma, class_labels=y), plain(x, sigma, class_labels=y), atol=1e-12
    )
    # at scale 1 a negative class changes nothing: the conditional denoiser itself
    assert torch.allclose(
        class_guidance(d, k, 1.0, negative_label=2)(x, sigma, class_labels=y), d(x, sigma, class_labels=y), atol=1e-12
    )
    # and a negative class does change a guided prediction
    assert not torch.allclose(
        class_guidance(d, k, 3.0, negative_label=2)(x, sigma, class_labels=y), plain(x, sigma, class_labels=y)
    )
    with pytest.raises(ValueError, match="negative class must lie in"):
        class_guidance(d, k, 3.0, negative_label=k)


def test_generate_guidance_interval_on_the_mixture(rank_shape) -> None:
    """``generate(guidance_interval=...)``: an interval holding every sigma of the grid is full
    guidance, one holding none is the conditional model (scale 1), and one in between is neither."""
    from multidiff.modality import DataInfo
    from multidiff.pipeline import generate

    shape = rank_shape if rank_shape else (1,)
    gm = GaussianMixture.random(shape, 6, seed=1, n_classes=3)
    k = 3
    d = lambda x, s, class_labels: gm.denoiser()(x, s, class_labels=torch.where(class_labels >= k, NULL, class_labels))  # noqa: E731
    kw = dict(n=6, labels=torch.tensor([0, 1, 2, 0, 1, 2]), sampler="euler", steps=8, sigma_min=0.02, sigma_max=40.0)
    info = DataInfo(shape, k)
    full, _ = generate(d, info, guidance_scale=3.0, **kw)
    plain, _ = generate(d, info, guidance_scale=1.0, **kw)
    everywhere, _ = generate(d, info, guidance_scale=3.0, guidance_interval=(0.0, 40.0), **kw)
    nowhere, _ = generate(d, info, guidance_scale=3.0, guidance_interval=(50.0, 100.0), **kw)
    middle, _ = generate(d, info, guidance_scale=3.0, guidance_interval=(0.3, 5.0), **kw)
    torch.testing.assert_close(everywhere, full)
    torch.testing.assert_close(nowhere, plain)
    assert not torch.allclose(middle, full) and not torch.allclose(middle, plain)


def test_sample_config_guidance_interval_reaches_generate() -> None:
    """The ``sample`` section's interval is what :func:`generate` applies: an interval above the
    grid is the conditional model, one covering it is guided."""
    from pydantic import ValidationError

    from multidiff.config import SampleConfig
    from multidiff.modality import DataInfo
    from multidiff.pipeline import generate

    gm, k = GaussianMixture.random((2,), 6, seed=1, n_classes=3), 3
    d = lambda x, s, class_labels: gm.denoiser()(x, s, class_labels=torch.where(class_labels >= k, NULL, class_labels))  # noqa: E731
    s = SampleConfig(
        sampler="euler", steps=6, sigma_min=0.02, sigma_max=40.0, guidance_scale=3.0, guidance_interval=(50.0, 100.0)
    )
    info, y = DataInfo((2,), k), torch.tensor([0, 1, 2])
    outside, _ = generate(d, info, n=3, sample=s, labels=y)
    plain, _ = generate(d, info, n=3, sample=s.with_overrides(guidance_scale=1.0), labels=y)
    inside, _ = generate(d, info, n=3, sample=s.with_overrides(guidance_interval=(0.0, 40.0)), labels=y)
    torch.testing.assert_close(outside, plain)
    assert not torch.allclose(inside, plain)
    with pytest.raises(ValidationError, match="guidance_interval[\\s\\S]*sigma_lo < sigma_hi"):
        SampleConfig(guidance_interval=(5.0, 0.3))
