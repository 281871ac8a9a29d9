"""The image modality's judge (``multidiff eval``): the generic held-out classifier judge
(:func:`multidiff.evaluate.held_out_judge`: a classifier trained on 80% of the run's images, class
accuracy and the Fréchet distance of its features to the other 20%), and, given local Inception-v3
weights (option ``inception_weights``; nothing is downloaded), standard FID
(:mod:`modalities.image.fid`) of the samples against the same held-out images.

For the captioned digits (``source: digits`` with ``captions: true``) it also judges a text run's
samples attribute by attribute (:func:`digit_attributes`): the digit by that classifier, and
thickness, size, slant and position by measuring the ink as the data generator
(:func:`modalities.image.data.captioned_digits`) defines them.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from multidiff.evaluate import (
    AttributeJudge,
    Judge,
    classifier_judge,
    real_examples,
    split_holdout,
    with_held_out_figures,
)

__all__ = ["InkMeasures", "digit_attributes", "image_judge", "ink_figures"]

JUDGE_COPIES = 3  # renders of each of the 1,797 digits the captioned digits' judge trains on
JUDGE_EPOCHS = 10


_ON = 0.3  # a row or column holds ink where its brightest pixel is above this (ink in [0, 1])


def ink_figures(x: Tensor) -> dict[str, Tensor]:
    """Measurements ``(B,)`` of the ink of digit images ``x (B, C, H, W)`` in [-1, 1] (ink bright),
    in the units of :func:`~modalities.image.data.captioned_digits` (the canvas is [-1, 1] across):

    * ``height``: rows holding ink, over all rows (the generator's size is the digit box's height
      over the image's, 0.5 or 0.85);
    * ``stroke``: stroke width over ``height``: twice the area of the ink above half over its
      perimeter (area over half the perimeter is a stroke's width), so the digit's size cancels;
    * ``slope``: ``dx/dy`` of the ink (its second moments; ``y`` down), which the generator's
      shear ``s`` shifts by ``-s``;
    * ``cx``: the ink's centroid across, which the generator's shift moves.
    """
    ink = ((x.float().mean(1) + 1) / 2).clamp(0, 1)  # (B, H, W)
    b, h, w = ink.shape
    ys = (torch.arange(h, dtype=ink.dtype) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, dtype=ink.dtype) + 0.5) / w * 2 - 1
    mass = ink.sum((1, 2)).clamp_min(1e-6)
    cy = (ink.sum(2) * ys).sum(1) / mass
    cx = (ink.sum(1) * xs).sum(1) / mass
    dy, dx = ys[None, :, None] - cy[:, None, None], xs[None, None, :] - cx[:, None, None]
    slope = (ink * dx * dy).sum((1, 2)) / (ink * dy * dy).sum((1, 2)).clamp_min(1e-6)
    rows = torch.arange(h, dtype=ink.dtype)
    on = ink.amax(2) > _ON
    top = torch.where(on, rows, float(h)).amin(1)
    bottom = torch.where(on, rows, -1.0).amax(1)
    height = (bottom - top + 1).clamp_min(0) / h
    solid = (ink > 0.5).to(ink.dtype)
    perimeter = (solid[:, 1:] != solid[:, :-1]).sum((1, 2)) + (solid[:, :, 1:] != solid[:, :, :-1]).sum((1, 2))
    stroke = 2 * solid.sum((1, 2)) / perimeter.clamp_min(1) / (height * h).clamp_min(1)
    return {"height": height, "stroke": stroke, "slope": slope, "cx": cx}


def _best_threshold(v: Tensor, labels: Tensor) -> float:
    """The threshold ``t`` with ``(v > t) == labels`` (0/1) most often."""
    cuts = v.sort().values
    cuts = (cuts[1:] + cuts[:-1]) / 2
    right = torch.stack([((v > t).long() == labels).float().mean() for t in cuts])
    return float(cuts[int(right.argmax())])


@dataclasses.dataclass(frozen=True)
class InkMeasures:
    """Turns :func:`ink_figures` into the captioned digits' attribute codes, with constants
    calibrated once on real captioned digits (:meth:`calibrate`):

    * size: ``height`` above ``size_cut`` is large;
    * thickness: ``stroke`` above ``stroke_cut`` is thick;
    * slant: the nearest of the generator's shears (-0.35, 0, 0.35: left, upright, right) to
      ``-(slope - upright_slope[digit])``: a digit's own slope (a 7's diagonal) taken out;
    * position: the nearest of the generator's shifts ``-room, 0, room`` to ``cx - scale *
      centre[digit]`` (a digit's own centroid offset taken out), where ``room`` is the generator's
      ``0.95 - scale * (0.68 + |shear|)`` (at least 0.1) for the measured size and slant.
    """

    size_cut: float
    stroke_cut: float
    upright_slope: tuple[float, ...]  # per digit class
    centre: tuple[float, ...]  # per digit class: the centroid across of a centred digit, over its scale

    SHEARS = (-0.35, 0.0, 0.35)  # the generator's, per slant value (left, upright, right)
    SCALES = (0.5, 0.85)  # the generator's, per size value (small, large)

    @classmethod
    def calibrate(cls, x: Tensor, codes: Mapping[str, Tensor]) -> InkMeasures:
        """The constants from real captioned digits ``x`` with their attribute ``codes``."""
        f = ink_figures(x)
        digit = codes["digit"]
        upright = codes["slant"] == 1
        centred = codes["position"] == 1
        scale = torch.tensor(cls.SCALES)[codes["size"]]
        return cls(
            size_cut=_best_threshold(f["height"], codes["size"]),
            stroke_cut=_best_threshold(f["stroke"], codes["thickness"]),
            upright_slope=tuple(float(f["slope"][(digit == d) & upright].mean()) for d in range(10)),
            centre=tuple(float((f["cx"] / scale)[(digit == d) & centred].mean()) for d in range(10)),
        )

    def codes(self, x: Tensor, digit: Tensor) -> dict[str, Tensor]:
        """Thickness, size, slant and position codes ``(B,)`` of images ``x`` of digit classes ``digit``."""
        f = ink_figures(x)
        digit = digit.cpu().long().clamp(0, 9)
        large = f["height"] > self.size_cut
        shear = -(f["slope"] - torch.tensor(self.upright_slope)[digit])
        slant = (shear[:, None] - torch.tensor(self.SHEARS)).abs().argmin(1)
        scale = torch.where(large, self.SCALES[1], self.SCALES[0])
        room = (0.95 - scale * (0.68 + torch.tensor(self.SHEARS)[slant].abs())).clamp(min=0.1)
        shift = f["cx"] - scale * torch.tensor(self.centre)[digit]
        position = (shift[:, None] - torch.stack([-room, torch.zeros_like(room), room], 1)).abs().argmin(1)
        return {
            "thickness": (f["stroke"] > self.stroke_cut).long(),
            "size": large.long(),
            "slant": slant,
            "position": position,
        }


def digit_attributes(
    classify: Callable[[Tensor], Tensor],
    seen: tuple[Tensor, Mapping[str, Tensor]],
    held_out: tuple[Tensor, Mapping[str, Tensor]],
    reference: Any,
) -> AttributeJudge:
    """The :class:`~multidiff.evaluate.AttributeJudge` of captioned digits: the digit by
    ``classify``, the rest by :class:`InkMeasures` calibrated on ``reference`` (a
    :class:`~multidiff.captions.CaptionedTensorDataset` of captioned digits the model did not train
    on); prompts in the set's words (:data:`~modalities.image.data.DIGIT_TEMPLATES`). ``seen`` and
    ``held_out``: real examples of the run's split and of the held-out combinations, with their
    attribute codes."""
    from multidiff.captions import compose_caption, factor_captions

    from .data import DIGIT_ATTRIBUTES, DIGIT_FACTORS, DIGIT_TEMPLATES

    ink = InkMeasures.calibrate(reference.x, reference.attributes)

    def measure(x: Tensor) -> dict[str, Tensor]:
        digit = classify(x).cpu().long()
        return {"digit": digit, **ink.codes(x, digit)}

    def caption(values: Mapping[str, str], rng: random.Random) -> str:
        return compose_caption(values, DIGIT_ATTRIBUTES, DIGIT_TEMPLATES, rng)

    def parts(values: Mapping[str, str], rng: random.Random) -> tuple[str, ...]:
        return factor_captions(values, DIGIT_ATTRIBUTES, DIGIT_TEMPLATES, DIGIT_FACTORS, rng)

    return AttributeJudge(
        values={k: a.values for k, a in DIGIT_ATTRIBUTES.items()},
        measure=measure,
        caption=caption,
        real={"seen": seen, "held_out": held_out},
        description=(
            "digit by the classifier; thickness, size, slant and position measured on the ink (stroke width, "
            "height, the ink's dx/dy less the digit's own, the centroid against the room the generator leaves), "
            "calibrated on the classifier's draw"
        ),
        parts=parts,
    )


def image_judge(
    adapter: Any,
    data: Any,
    info: Any,
    *,
    cache_dir: str | Path | None = None,
    device: Any = None,
    inception_weights: str | Path | None = None,
    judge_copies: int = JUDGE_COPIES,
    judge_epochs: int = JUDGE_EPOCHS,
    **options: Any,
) -> Judge:
    """The generic judge, plus ``fid`` when ``inception_weights`` names a torchvision Inception-v3
    state dict, plus, for captioned digits, the attribute judge (its classifier trained on
    ``judge_copies`` renders of every digit for ``judge_epochs``)."""
    from multidiff.modality import Modality

    if data.source == "digits" and data.captions:
        if options:
            raise ValueError(f"the captioned digits' judge takes no options {', '.join(sorted(options))}")
        judge = _captioned_digits_judge(adapter, data, cache_dir, device, judge_copies, judge_epochs)
    else:
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


def _captioned_digits_judge(
    adapter: Any, data: Any, cache_dir: str | Path | None, device: Any, copies: int, epochs: int
) -> Judge:
    """The judge of a run on captioned digits, with :func:`digit_attributes`. Its digit classifier
    (class accuracy, Fréchet features; the reference is 20% of the run's digits) trains on a
    separate draw (seed 1, ``copies`` renders of every digit with every attribute combination; the
    model never saw these renders, though both saw the same 1,797 handwritten digits), cached by
    content; the ink measures calibrate on the same draw. The ``seen`` real examples are the run's
    own split, the ``held_out`` ones the set's held-out combinations (seed 0)."""
    from multidiff.evaluate import default_cache_dir
    from multidiff.metrics import cached_classifier, predict

    from .data import captioned_digits

    t0 = time.perf_counter()
    ref, _ = captioned_digits(data.hw, data.num_channels, copies=int(copies), seed=1, split="all")
    clf = cached_classifier(
        ref.x,
        ref.labels,
        cache_dir=cache_dir or default_cache_dir(),
        tag=f"quality:captioned-digits-judge-v1:{data.hw}",
        num_classes=10,
        epochs=int(epochs),
        device=device,
    )
    ds, _ = adapter.build_dataset(data)
    other, _ = adapter.build_dataset(data.model_copy(update={"split": "held_out", "limit": None}))
    x, y = real_examples(ds)
    seen = (x, dict(ds.attributes))
    held = (real_examples(other)[0], dict(other.attributes))
    tr, ho = split_holdout(len(x), 0.2, seed=0)
    judge = with_held_out_figures(classifier_judge(clf), x, y, tr, ho)
    acc = judge.figures.get("judge_accuracy", float("nan"))
    text = (
        f"a classifier trained on {len(ref)} other renders of captioned digits (seed 1), {acc:.3f} accurate on "
        f"20% of the run's digits, which are the Fréchet reference ({time.perf_counter() - t0:.0f} s to train or load)"
    )
    return dataclasses.replace(
        judge, description=text, attributes=digit_attributes(lambda v: predict(clf, v), seen, held, ref)
    )
