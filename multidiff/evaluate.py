"""Quality of a trained model under a feature classifier: class accuracy and Fréchet distance.

Works for any modality: the classifier (:class:`~multidiff.metrics.FeatureClassifier`) is
trained on the same kind of data, independently of the diffusion model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .metrics import extract_features, frechet_distance_features, predict
from .pipeline import Pipeline

__all__ = ["ConditionalScore", "score_conditional", "split_holdout"]


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


def score_conditional(
    pipe: Pipeline,
    classifier: Any,
    reference: Tensor,
    *,
    per_class: int = 50,
    guidance_scale: float = 1.0,
    seed: int = 0,
    **sample_kwargs: Any,
) -> ConditionalScore:
    """Draw ``per_class`` samples of every class and score them.

    ``accuracy`` is the fraction the classifier assigns to the requested class; ``frechet`` the
    Fréchet distance between the classifier's features of the samples and of ``reference``
    (real data).
    """
    import time

    k = pipe.info.num_classes
    if k == 0:
        raise ValueError("score_conditional needs a class-conditional model")
    labels = torch.arange(k).repeat_interleave(per_class)
    t0 = time.perf_counter()
    x, _ = pipe.generate(len(labels), labels=labels, guidance_scale=guidance_scale, seed=seed, **sample_kwargs)
    seconds = time.perf_counter() - t0
    pred = predict(classifier, x)
    per = [float((pred[labels == c] == c).float().mean()) for c in range(k)]
    fd = frechet_distance_features(extract_features(classifier, x), extract_features(classifier, reference))
    acc = float((pred == labels).float().mean())
    return ConditionalScore(guidance_scale, acc, per, fd, len(labels), seconds)
