"""Quality of a trained class-conditional model under a judge that does not depend on it.

A judge is two functions of a batch: ``classify(x) -> labels`` and ``features(x) -> (B, D)``.
For images it is a :class:`~multidiff.metrics.FeatureClassifier` trained on real data
(:func:`classifier_judge`); for synthesized tones, a pitch estimator and mel statistics. The
scores: the fraction of samples judged to be the class asked for, and the Fréchet distance of
their features to real data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .metrics import extract_features, frechet_distance_features, predict
from .pipeline import Pipeline

__all__ = ["ConditionalScore", "Judge", "classifier_judge", "score_conditional", "split_holdout"]


@dataclass(frozen=True)
class ConditionalScore:
    """What :func:`score_conditional` measured at one guidance scale."""

    guidance_scale: float
    accuracy: float
    per_class: list[float]
    frechet: float
    n: int
    seconds: float


def split_holdout(n: int, fraction: float = 0.2, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Indices ``(train, holdout)`` of a seeded random split."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = int(round(n * fraction))
    return perm[k:], perm[:k]


@dataclass(frozen=True)
class Judge:
    """``classify(x) -> (B,)`` labels and ``features(x) -> (B, D)``, both independent of the model."""

    classify: Callable[[Tensor], Tensor]
    features: Callable[[Tensor], Tensor]


def classifier_judge(classifier: Any, batch_size: int = 256) -> Judge:
    """A judge from a trained :class:`~multidiff.metrics.FeatureClassifier`."""
    return Judge(lambda x: predict(classifier, x, batch_size), lambda x: extract_features(classifier, x, batch_size))


def score_conditional(
    pipe: Pipeline,
    judge: Judge,
    reference: Tensor,
    *,
    per_class: int = 50,
    guidance_scale: float = 1.0,
    seed: int = 0,
    **sample_kwargs: Any,
) -> ConditionalScore:
    """Draw ``per_class`` samples of every class and score them.

    ``accuracy`` is the fraction the judge assigns to the requested class; ``frechet`` the
    Fréchet distance between the judge's features of the samples and of ``reference`` (real data).
    """
    import time

    k = pipe.info.num_classes
    if k == 0:
        raise ValueError("score_conditional needs a class-conditional model")
    labels = torch.arange(k).repeat_interleave(per_class)
    t0 = time.perf_counter()
    x, _ = pipe.generate(len(labels), labels=labels, guidance_scale=guidance_scale, seed=seed, **sample_kwargs)
    seconds = time.perf_counter() - t0
    pred = judge.classify(x).cpu()
    per = [float((pred[labels == c] == c).float().mean()) for c in range(k)]
    fd = frechet_distance_features(judge.features(x), judge.features(reference))
    acc = float((pred == labels).float().mean())
    return ConditionalScore(guidance_scale, acc, per, fd, len(labels), seconds)
