"""The image modality's judge (``multidiff eval``): the generic held-out classifier judge
(:func:`multidiff.evaluate.held_out_judge`: a classifier trained on 80% of the run's images, class
accuracy and the Fréchet distance of its features to the other 20%), and, given local Inception-v3
weights (option ``inception_weights``; nothing is downloaded), standard FID
(:mod:`modalities.image.fid`) of the samples against the same held-out images.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from torch import Tensor

from multidiff.evaluate import Judge

__all__ = ["image_judge"]


def image_judge(
    adapter: Any,
    data: Any,
    info: Any,
    *,
    cache_dir: str | Path | None = None,
    device: Any = None,
    inception_weights: str | Path | None = None,
    **options: Any,
) -> Judge:
    """The generic judge, plus ``fid`` when ``inception_weights`` names a torchvision Inception-v3 state dict."""
    from multidiff.modality import Modality

    judge = Modality.judge(adapter, data, info, cache_dir=cache_dir, device=device, **options)
    if not inception_weights:
        return judge
    from .fid import fid, inception_network

    net = inception_network(inception_weights)
    if device is not None:
        net = net.to(device)

    def extras(x: Tensor, labels: Tensor | None, reference: Tensor | None) -> dict[str, float]:
        return {} if reference is None else {"fid": fid(x, reference, net)}

    return dataclasses.replace(
        judge,
        extras=extras,
        description=judge.description + "; FID on Inception-v3 pool features (torchvision's weights) against them",
        help={"fid": "FID, Inception-v3 features, samples vs held-out real (lower is better)"},
    )
