"""Fréchet distance against closed forms; the rank-generic classifier learns, and its disk cache hits."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import pytest
import torch

import multidiff.metrics as metrics
from multidiff.metrics import (
    FeatureClassifier,
    cached_classifier,
    class_accuracy,
    extract_features,
    feature_frechet,
    frechet_distance,
    frechet_distance_features,
    gaussian_stats,
    predict,
    train_classifier,
)

# --- Fréchet distance -----------------------------------------------------------------------


def _random_spd(d: int, g: torch.Generator) -> torch.Tensor:
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def _rotation(d: int, g: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def test_gaussian_stats_is_mean_and_unbiased_covariance() -> None:
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    mu, cov = gaussian_stats(x)
    assert mu.dtype == cov.dtype == torch.float64
    torch.testing.assert_close(mu, x.double().mean(0))
    torch.testing.assert_close(cov, torch.cov(x.double().T))
    with pytest.raises(ValueError):
        gaussian_stats(torch.randn(1, 4))


def test_frechet_diagonal_closed_form() -> None:
    g = torch.Generator().manual_seed(1)
    mu1, mu2 = (torch.randn(5, generator=g, dtype=torch.float64) for _ in range(2))
    s1, s2 = (torch.rand(5, generator=g, dtype=torch.float64) + 0.1 for _ in range(2))
    expected = ((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * (s1 * s2).sqrt()).sum()
    assert frechet_distance(mu1, torch.diag(s1), mu2, torch.diag(s2)) == pytest.approx(expected.item(), rel=1e-10)


def test_frechet_one_dimension_is_mean_and_std_gap() -> None:
    # d^2 = (m1 - m2)^2 + (s1 - s2)^2 for two 1-D Gaussians with standard deviations s1, s2.
    fd = frechet_distance(torch.tensor([1.0]), torch.tensor([[4.0]]), torch.tensor([-0.5]), torch.tensor([[0.25]]))
    assert fd == pytest.approx(1.5**2 + (2.0 - 0.5) ** 2, rel=1e-12)


def test_frechet_2x2_closed_form() -> None:
    # For a 2x2 SPD matrix A, tr(A^1/2) = sqrt(tr A + 2 sqrt(det A)); with A = C1^1/2 C2 C1^1/2,
    # tr A = tr(C1 C2) and det A = det C1 det C2.
    c1 = torch.tensor([[2.0, 0.9], [0.9, 1.0]], dtype=torch.float64)
    c2 = torch.tensor([[0.5, -0.3], [-0.3, 1.5]], dtype=torch.float64)
    mu1, mu2 = torch.tensor([0.3, -1.0], dtype=torch.float64), torch.tensor([1.0, 0.5], dtype=torch.float64)
    cross = math.sqrt(torch.trace(c1 @ c2).item() + 2 * math.sqrt(torch.det(c1).item() * torch.det(c2).item()))
    expected = ((mu1 - mu2) ** 2).sum().item() + torch.trace(c1 + c2).item() - 2 * cross
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(expected, rel=1e-12)


def test_frechet_is_symmetric_zero_on_itself_and_rotation_invariant() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(300, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g, dtype=torch.float64)
    y = 0.5 * torch.randn(200, 6, generator=g, dtype=torch.float64) + 0.3
    fd = frechet_distance_features(x, y)
    assert fd > 0.5
    assert frechet_distance_features(y, x) == pytest.approx(fd, rel=1e-9)
    assert frechet_distance_features(x, x) == pytest.approx(0.0, abs=1e-9)
    r, t = _rotation(6, g), torch.randn(6, generator=g, dtype=torch.float64)
    assert frechet_distance_features(x @ r.T + t, y @ r.T + t) == pytest.approx(fd, rel=1e-9)


def test_frechet_is_stable_for_singular_covariances() -> None:
    # Fewer samples than features: both covariances are singular, the distance stays finite and >= 0.
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(10, 64, generator=g), torch.randn(12, 64, generator=g)
    assert frechet_distance_features(x, x) == pytest.approx(0.0, abs=1e-6)
    fd = frechet_distance_features(x, y)
    assert math.isfinite(fd) and fd > 1.0
    assert frechet_distance_features(y, x) == pytest.approx(fd, rel=1e-6)


def test_frechet_from_samples_approaches_the_analytic_value() -> None:
    g = torch.Generator().manual_seed(4)
    d = 4
    mu1, mu2 = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    c1, c2 = _random_spd(d, g), _random_spd(d, g)
    exact = frechet_distance(mu1, c1, mu2, c2)
    l1, l2 = torch.linalg.cholesky(c1), torch.linalg.cholesky(c2)

    def mean_error(n: int) -> float:
        errs = []
        for _ in range(8):
            a = mu1 + torch.randn(n, d, generator=g, dtype=torch.float64) @ l1.T
            b = mu2 + torch.randn(n, d, generator=g, dtype=torch.float64) @ l2.T
            errs.append(abs(frechet_distance_features(a, b) - exact))
        return sum(errs) / len(errs)

    small, large = mean_error(50), mean_error(20_000)
    assert large < 0.02 * exact
    assert large < small / 5


def test_frechet_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError):
        frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(2), torch.eye(2))


# --- the classifier -------------------------------------------------------------------------

# dims -> per-sample spatial shape of the synthetic problem
SPATIAL = {1: (32,), 2: (12, 12), 3: (6, 6, 6)}
SMALL = {"widths": (16, 32), "batch_size": 32}


def bright_region_data(dims: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes of noise that differ in the mean of one region (the first half of the first
    spatial axis): ``-1``, ``0`` or ``+1`` for class 0, 1, 2."""
    g = torch.Generator().manual_seed(seed)
    spatial = SPATIAL[dims]
    labels = torch.randint(0, 3, (n,), generator=g)
    x = 0.5 * torch.randn(n, 1, *spatial, generator=g)
    x[:, :, : spatial[0] // 2] += (labels.float() - 1).reshape(n, *([1] * (dims + 1)))
    return x, labels


@pytest.mark.parametrize(
    "shape", [(3, 2, 7), (3, 1, 1), (2, 3, 9, 5), (2, 1, 1, 1), (2, 2, 5, 3, 4), (2, 1, 1, 3, 2)], ids=str
)
def test_classifier_shapes_at_every_rank_and_size(shape: tuple[int, ...]) -> None:
    b, c, *spatial = shape
    net = FeatureClassifier(len(spatial), c, num_classes=5, widths=(8, 16, 12))
    x = torch.randn(shape)
    assert net(x).shape == (b, 5)
    assert net.features(x).shape == (b, 12)
    with pytest.raises(ValueError):
        net(torch.randn(b, c, *spatial, 1))


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_classifier_learns_a_separable_problem_at_every_rank(dims: int) -> None:
    x, y = bright_region_data(dims, 240, seed=dims)
    x_test, y_test = bright_region_data(dims, 300, seed=100 + dims)
    net = train_classifier(x, y, epochs=6, **SMALL)
    assert net.dims == dims and not net.training
    assert class_accuracy(net, x_test, y_test, batch_size=64) > 0.9
    preds = predict(net, x_test, batch_size=7)
    assert preds.shape == (300,) and preds.dtype == torch.long
    # Feature distances: 0 for a set against itself; a fresh draw of the same distribution sets
    # the noise floor, which another class and a global brightness shift clearly exceed.
    x_again, _ = bright_region_data(dims, 300, seed=200 + dims)
    floor = feature_frechet(net, x_test, x_again)
    assert feature_frechet(net, x_test, x_test) == pytest.approx(0.0, abs=1e-6)
    assert feature_frechet(net, x_test[y_test == 0], x_test[y_test == 1]) > 20 * floor
    assert feature_frechet(net, x_test, x_test + 0.5) > 3 * floor


def test_training_is_deterministic_and_leaves_the_callers_rng_alone() -> None:
    x, y = bright_region_data(1, 64, seed=0)
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = train_classifier(x, y, epochs=1, seed=7, **SMALL)
    assert torch.equal(torch.rand(3), before)
    b = train_classifier(x, y, epochs=1, seed=7, **SMALL)
    c = train_classifier(x, y, epochs=1, seed=8, **SMALL)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    assert not all(torch.equal(va, vc) for va, vc in zip(a.state_dict().values(), c.state_dict().values()))


def test_augment_is_applied_to_training_batches() -> None:
    x, y = bright_region_data(1, 64, seed=0)
    seen: list[tuple[int, ...]] = []

    def flip(xb: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(xb.shape))
        return xb.flip(-1)

    train_classifier(x, y, epochs=1, augment=flip, **SMALL)
    assert seen == [(32, 1, *SPATIAL[1])] * 2


def test_train_classifier_rejects_bad_labels() -> None:
    x, y = bright_region_data(1, 16, seed=0)
    with pytest.raises(ValueError):
        train_classifier(x, y[:-1], epochs=1)
    with pytest.raises(ValueError):
        train_classifier(x, y, num_classes=2, epochs=1)
    with pytest.raises(ValueError):
        train_classifier(x, y, dims=2, epochs=1)


# --- the disk cache -------------------------------------------------------------------------


def test_cached_classifier_trains_once_then_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = bright_region_data(2, 64, seed=0)
    kw = {"epochs": 1, **SMALL}
    first = cached_classifier(x, y, cache_dir=tmp_path, tag="toy", **kw)
    weights = list(tmp_path.glob("*.safetensors"))
    assert len(weights) == 1 and len(list(tmp_path.glob("*.json"))) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([weights[0].name, weights[0].stem + ".json"])
    mtime = weights[0].stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("the cache should have been hit")

    monkeypatch.setattr(metrics, "train_classifier", no_training)
    second = cached_classifier(x, y, cache_dir=tmp_path, tag="toy", progress=False, **kw)
    assert weights[0].stat().st_mtime_ns == mtime
    assert isinstance(second, FeatureClassifier) and second.widths == SMALL["widths"] and not second.training
    x_eval, _ = bright_region_data(2, 50, seed=1)
    assert torch.equal(extract_features(first, x_eval), extract_features(second, x_eval))
    assert torch.equal(predict(first, x_eval), predict(second, x_eval))

    # Changed data, labels, tag or training arguments: a new key, so training runs again.
    for args, tag, extra in [
        ((x + 1e-3, y), "toy", {}),
        ((x, y.roll(1)), "toy", {}),
        ((x, y), "other", {}),
        ((x, y), "toy", {"seed": 1}),
    ]:
        with pytest.raises(AssertionError, match="cache should have been hit"):
            cached_classifier(*args, cache_dir=tmp_path, tag=tag, **kw, **extra)


def test_cache_key_fills_in_defaults() -> None:
    x, y = bright_region_data(1, 8, seed=0)
    key = metrics.cache_key(x, y, tag="t")
    epochs = inspect.signature(train_classifier).parameters["epochs"].default
    assert metrics.cache_key(x, y, tag="t", epochs=epochs, seed=0, device="cpu", progress=True) == key
    assert metrics.cache_key(x, y, tag="t", epochs=epochs + 1) != key
    assert metrics.cache_key(x.double(), y, tag="t") != key
