"""Quality of a trained model under a judge that does not depend on it.

A judge (:class:`Judge`) is two functions of a batch: ``classify(x) -> labels`` and
``features(x) -> (B, D)``, plus the held-out real examples it compares samples with and, where a
modality has them, extra figures (:attr:`Judge.extras`). For images it is a
:class:`~multidiff.metrics.FeatureClassifier` trained on 80% of the real data
(:func:`classifier_judge`, :func:`held_out_judge`); for synthesized tones, a pitch estimator and
mel statistics; for voxel shapes, a 3D classifier trained on a separate draw of shapes plus mesh
figures. Each modality adapter builds its own (:meth:`multidiff.modality.Modality.judge`); the
default is the held-out classifier judge, which works for any labelled data.

The scores: the fraction of samples judged to be the class asked for, and the Fréchet distance of
their features to held-out real data. :func:`evaluate_run` draws the samples from a trained run
and returns every figure; ``multidiff eval RUN`` prints them.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .conditioning import PROMPT_AND
from .config import SampleConfig
from .metrics import cached_classifier, extract_features, frechet_distance_features, predict
from .pipeline import Pipeline

__all__ = [
    "AttributeJudge",
    "ConditionalScore",
    "Judge",
    "FIGURE_HELP",
    "classifier_judge",
    "default_cache_dir",
    "evaluate_run",
    "held_out_judge",
    "real_examples",
    "score_attributes",
    "score_conditional",
    "score_samples",
    "split_holdout",
]


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
    """``classify(x) -> (B,)`` labels and ``features(x) -> (B, D)``, both independent of the model.

    The first two fields are all :func:`score_conditional` needs; the rest make a judge
    self-contained for :func:`evaluate_run`:

    * ``reference``: held-out real examples (data units) the Fréchet distance and the extras compare
      samples with; the judge's classifier must never have been trained on them.
    * ``extras(samples, labels, reference) -> {name: value}``: a modality's own figures (meshes).
    * ``figures``: figures of the judge itself, measured once on real data: ``judge_accuracy`` (its
      accuracy on the held-out real examples: the ceiling for class accuracy) and
      ``frechet_floor`` (real training data against the held-out part: the floor for the Fréchet
      distance at this sample size).
    * ``description``: one or two sentences saying what the judge is and what its figures depend on.
    * ``accuracy_name``: the name of the accuracy figure (``pitch_accuracy`` for tones).
    * ``help``: a line per figure name of ``extras`` for the printed table.

    * ``attributes``: for a captioned data set whose captions state attributes, the
      :class:`AttributeJudge` that scores a text-conditioned run's samples against their prompts.

    ``classify`` may be ``None`` (a judge of unlabelled data): no accuracy is reported.
    """

    classify: Callable[[Tensor], Tensor] | None
    features: Callable[[Tensor], Tensor]
    reference: Tensor | None = None
    extras: Callable[[Tensor, Tensor | None, Tensor | None], dict[str, float]] | None = None
    figures: Mapping[str, float] = field(default_factory=dict)
    description: str = ""
    accuracy_name: str = "class_accuracy"
    help: Mapping[str, str] = field(default_factory=dict)
    attributes: AttributeJudge | None = None


@dataclass(frozen=True)
class AttributeJudge:
    """Which value of each attribute a caption states a sample shows, told without the model.

    * ``values``: attribute name -> its value names (code ``k`` is ``values[name][k]``), as a
      captioned set's ``attribute_values``.
    * ``measure(x) -> {name: codes (B,)}``: the value of every attribute that samples ``x`` (data
      units) show, by a classifier or a measurement independent of the model.
    * ``caption(values, rng) -> str``: a caption stating attribute ``values`` (name -> value name)
      in the captioned set's own words (its templates and synonyms, drawn from ``rng``).
    * ``real``: split name -> ``(x, codes)``, real examples and their attribute codes (name ->
      ``(N,)``): ``"seen"`` of the attribute combinations the model trained on, ``"held_out"`` of
      those its training split leaves out. Prompts are drawn from their combinations, and the
      measures' accuracy on them is the ceiling of a model's.
    * ``unjudged``: name -> a value that says nothing to judge (a sphere's orientation, ``any``):
      prompts with it are not scored on that attribute.
    * ``description``: what measures each attribute, and how well on real data.
    * ``parts(values, rng) -> tuple[str, ...]``: optional, the captions of the values' factors, each
      saying only its attributes (:func:`multidiff.captions.factor_captions`): the parts of a
      composed prompt (``score_attributes(..., composed=True)``).
    """

    values: Mapping[str, tuple[str, ...]]
    measure: Callable[[Tensor], Mapping[str, Tensor]]
    caption: Callable[[Mapping[str, str], random.Random], str]
    real: Mapping[str, tuple[Tensor, Mapping[str, Tensor]]]
    unjudged: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    parts: Callable[[Mapping[str, str], random.Random], Sequence[str]] | None = None

    def accuracy(self, measured: Mapping[str, Tensor], codes: Mapping[str, Tensor]) -> dict[str, float]:
        """Per attribute, the fraction of examples whose measured value is ``codes``' (examples with
        an ``unjudged`` value left out), and ``all``: the fraction right on every judged attribute."""
        out: dict[str, float] = {}
        every: Tensor | None = None
        for name in self.values:
            want, got = codes[name].cpu().long(), measured[name].cpu().long()
            judged = torch.ones_like(want, dtype=torch.bool)
            if name in self.unjudged:
                judged = want != self.values[name].index(self.unjudged[name])
            right = (got == want) | ~judged
            every = right if every is None else every & right
            out[name] = float(right[judged].float().mean()) if bool(judged.any()) else math.nan
        out["all"] = float(every.float().mean()) if every is not None and len(every) else math.nan
        return out

    def chance(self) -> dict[str, float]:
        """Per attribute, the accuracy of a uniform guess among its judged values."""
        return {k: 1 / (len(v) - (k in self.unjudged)) for k, v in self.values.items()}


def classifier_judge(classifier: Any, batch_size: int = 256) -> Judge:
    """A judge from a trained :class:`~multidiff.metrics.FeatureClassifier`."""
    return Judge(lambda x: predict(classifier, x, batch_size), lambda x: extract_features(classifier, x, batch_size))


def default_cache_dir() -> Path:
    """Where judges' classifiers are cached: ``$MULTIDIFF_CACHE/classifiers`` (``~/.cache/multidiff``)."""
    return Path(os.environ.get("MULTIDIFF_CACHE", Path.home() / ".cache" / "multidiff")) / "classifiers"


def real_examples(dataset: Any) -> tuple[Tensor, Tensor]:
    """``(x, labels)`` of a whole dataset of ``(x, label)`` items (label -1: unlabelled), stacked."""
    from .modality import TensorDataset

    if isinstance(dataset, TensorDataset):
        return dataset.x.float(), dataset.labels.long()
    items = [dataset[i] for i in range(len(dataset))]
    if not items:
        raise ValueError("the data set is empty: there is nothing to judge samples against")
    x = torch.stack([torch.as_tensor(a).float() for a, _ in items])
    return x, torch.as_tensor([int(b) for _, b in items], dtype=torch.long)


def with_held_out_figures(judge: Judge, x: Tensor, y: Tensor, train: Tensor, holdout: Tensor) -> Judge:
    """``judge`` with ``reference = x[holdout]`` and its own figures measured on the real data:
    ``judge_accuracy`` on the held-out labelled examples (when it classifies) and ``frechet_floor``,
    the Fréchet distance of its features between ``x[train]`` and ``x[holdout]``."""
    import dataclasses

    figures = dict(judge.figures)
    ho_lab = holdout[y[holdout] >= 0]
    if judge.classify is not None and len(ho_lab):
        figures["judge_accuracy"] = float((judge.classify(x[ho_lab]).cpu() == y[ho_lab]).float().mean())
    if len(train) > 1 and len(holdout) > 1:
        figures["frechet_floor"] = frechet_distance_features(judge.features(x[train]), judge.features(x[holdout]))
    return dataclasses.replace(judge, reference=x[holdout], figures=figures)


def held_out_judge(
    x: Tensor,
    labels: Tensor,
    *,
    tag: str,
    cache_dir: str | Path | None = None,
    device: torch.device | str | None = None,
    holdout: float = 0.2,
    seed: int = 0,
    **train_kwargs: Any,
) -> Judge:
    """The generic judge of labelled real data ``x (N, C, *spatial)``: a
    :class:`~multidiff.metrics.FeatureClassifier` over the data's rank trained on a seeded 80%
    (``1 - holdout``) of it and cached by content under ``cache_dir`` with ``tag`` (see
    :func:`~multidiff.metrics.cached_classifier`); its reference is the other 20%, which the
    classifier never saw.

    What the figures depend on: the classifier (its architecture, ``train_kwargs`` and the 80%);
    its held-out accuracy (``judge_accuracy``) is the ceiling for class accuracy. The diffusion
    model usually trained on all of the data, the held-out 20% included, so a model that copies its
    training set scores well here: these figures measure fidelity and class control, not novelty.
    """
    y = torch.as_tensor(labels).long()
    tr, ho = split_holdout(len(x), holdout, seed=seed)
    tr_lab = tr[y[tr] >= 0]
    if len(tr_lab) == 0 or int(y.max()) < 0:
        raise ValueError("the held-out classifier judge needs class-labelled data; this data set is unlabelled")
    if "num_classes" not in train_kwargs and int(y[tr_lab].max()) < int(y.max()):
        train_kwargs["num_classes"] = int(y.max()) + 1  # a class with no example in the 80%
    t0 = time.perf_counter()
    clf = cached_classifier(
        x[tr_lab], y[tr_lab], cache_dir=cache_dir or default_cache_dir(), tag=tag, device=device, **train_kwargs
    )
    judge = with_held_out_figures(classifier_judge(clf), x, y, tr, ho)
    acc = judge.figures.get("judge_accuracy", math.nan)
    return _describe(
        judge,
        f"a classifier trained on {len(tr_lab)} real examples ({100 * (1 - holdout):.0f}%), {acc:.3f} accurate on "
        f"the other {len(ho)}, which are the Fréchet reference ({time.perf_counter() - t0:.0f} s to train or load)",
    )


def _describe(judge: Judge, text: str) -> Judge:
    import dataclasses

    return dataclasses.replace(judge, description=text)


FIGURE_HELP = {
    "samples": "samples drawn (per class times classes)",
    "seconds": "wall clock of sampling",
    "class_accuracy": "fraction the judge assigns to the class asked for (higher is better)",
    "pitch_accuracy": "fraction whose pitch is the class asked for (higher is better)",
    "worst_class_accuracy": "accuracy of the worst class",
    "judge_accuracy": "the judge's accuracy on held-out real data: the ceiling",
    "frechet": "Fréchet distance of judge features, samples vs held-out real (lower is better)",
    "frechet_floor": "the same between real training and held-out real data: the floor",
}


def score_samples(judge: Judge, x: Tensor, labels: Tensor | None, reference: Tensor | None = None) -> dict[str, Any]:
    """Figures of samples ``x`` (data units) drawn for ``labels`` (``None``: unconditional), and
    ``per_class`` accuracies: accuracy (``judge.accuracy_name``) and worst class when the judge
    classifies and the samples are labelled, ``frechet`` against ``reference`` (default
    ``judge.reference``), the judge's own figures and its extras."""
    reference = judge.reference if reference is None else reference
    figures: dict[str, float] = {}
    per_class: list[float] = []
    if judge.classify is not None and labels is not None:
        labels = labels.cpu()
        pred = judge.classify(x).cpu()
        k = int(labels.max()) + 1 if len(labels) else 0
        per_class = [float((pred[labels == c] == c).float().mean()) for c in range(k) if (labels == c).any()]
        figures[judge.accuracy_name] = float((pred == labels).float().mean())
        figures["worst_class_accuracy"] = min(per_class) if per_class else math.nan
    if reference is not None:
        figures["frechet"] = frechet_distance_features(judge.features(x), judge.features(reference))
    figures.update(judge.figures)
    if judge.extras is not None:
        figures.update(judge.extras(x, labels, reference))
    return {"figures": figures, "per_class": per_class}


def _draw(pipe: Pipeline, per_class: int, **sample: Any) -> tuple[Tensor, Tensor | None, float]:
    k = pipe.info.num_classes
    labels = torch.arange(k).repeat_interleave(per_class) if k else None
    n = len(labels) if labels is not None else per_class
    t0 = time.perf_counter()
    x, kept = pipe.sample(n, labels=labels, **sample)  # kept: the labels of the samples a checker did not drop
    return x, kept if labels is not None else None, time.perf_counter() - t0


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
    if pipe.info.num_classes == 0:
        raise ValueError("score_conditional needs a class-conditional model")
    x, labels, seconds = _draw(pipe, per_class, seed=seed, guidance_scale=guidance_scale, **sample_kwargs)
    assert labels is not None and judge.classify is not None
    pred = judge.classify(x).cpu()
    per = [float((pred[labels == c] == c).float().mean()) for c in range(pipe.info.num_classes)]
    fd = frechet_distance_features(judge.features(x), judge.features(reference))
    acc = float((pred == labels).float().mean())
    return ConditionalScore(guidance_scale, acc, per, fd, len(labels), seconds)


def score_attributes(
    pipe: Pipeline,
    judge: AttributeJudge,
    per_split: int = 50,
    *,
    sample: SampleConfig | None = None,
    real_limit: int = 1000,
    composed: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """Prompt a text-conditioned model with captions of attribute combinations and judge whether its
    samples show them.

    ``composed``: each prompt is the combination's factor captions joined by ``" AND "``
    (``judge.parts``: "a small shape AND a cone lying on its side AND a shape on the left"),
    sampled by composable guidance (:func:`multidiff.guidance.composable_guidance`) for both
    splits alike.

    For every split of ``judge.real`` (``"seen"``, ``"held_out"``): ``per_split`` of its real
    examples are drawn (seeded by the sampling seed; with replacement when there are fewer), a
    caption of each one's attribute values composed (``judge.caption``), one sample drawn per
    caption (``sample`` with ``overrides``: ``guidance_scale=2``), and each attribute measured
    (``judge.measure``). Returns ``{"samples": {split: per-attribute accuracy}, "real": {split:
    the same of the measures on at most ``real_limit`` real examples: the ceiling}, "chance":
    per-attribute chance, "x": {split: samples}, "prompts": {split: prompts}, "seconds": wall
    clock of sampling}``; accuracies as :meth:`AttributeJudge.accuracy` (with ``all``).
    """
    if per_split < 1:
        raise ValueError(f"the number of prompts per split must be at least 1, got {per_split}")
    if composed and judge.parts is None:
        raise ValueError(
            "composed prompts need the judge's factor captions (AttributeJudge.parts); this judge has none"
        )
    s = pipe.options(sample, **overrides)
    out: dict[str, Any] = {"samples": {}, "real": {}, "chance": judge.chance(), "x": {}, "prompts": {}, "seconds": 0.0}
    for split, (xr, codes) in judge.real.items():
        n = len(xr)
        g = torch.Generator().manual_seed(s.seed)
        pick = (
            torch.randperm(n, generator=g)[:per_split]
            if n >= per_split
            else torch.randint(n, (per_split,), generator=g)
        )
        rng = random.Random(s.seed)
        values = [{a: judge.values[a][int(codes[a][i])] for a in judge.values} for i in pick.tolist()]
        if composed:
            assert judge.parts is not None
            prompts = [PROMPT_AND.join(judge.parts(v, rng)) for v in values]
        else:
            prompts = [judge.caption(v, rng) for v in values]
        by_prompt = dict(zip(prompts, values))  # a caption states every value: one caption, one combination
        t0 = time.perf_counter()
        made = pipe.sample(len(prompts), sample=s.model_copy(update={"prompt": prompts}))
        out["seconds"] += time.perf_counter() - t0
        kept = made.prompts if made.prompts is not None else prompts  # a checker may have dropped some
        want = {a: torch.tensor([judge.values[a].index(by_prompt[p][a]) for p in kept]) for a in judge.values}
        out["samples"][split] = judge.accuracy(judge.measure(made.x), want)
        out["x"][split], out["prompts"][split] = made.x, list(kept)
        k = min(n, real_limit)
        ref = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:k]
        out["real"][split] = judge.accuracy(judge.measure(xr[ref]), {a: c[ref] for a, c in codes.items()})
    return out


ATTRIBUTE_HELP = {
    "seen": "samples with the prompt's {name}; prompts of combinations the model trained on",
    "held_out": "samples with the prompt's {name}; prompts of combinations kept out of its training",
}


def _evaluate_attributes(
    pipe: Pipeline, judge: Judge, per_split: int, s: SampleConfig, composed: bool = False
) -> tuple[dict[str, float], dict[str, Any]]:
    """The figures and the ``attributes`` table of a text-conditioned run (see :func:`evaluate_run`)."""
    assert judge.attributes is not None
    scored = score_attributes(pipe, judge.attributes, per_split, sample=s, composed=composed)
    x = torch.cat(list(scored["x"].values()))
    figures: dict[str, float] = {"samples": float(x.shape[0]), "seconds": scored["seconds"]}
    for split, acc in scored["samples"].items():
        figures.update({f"{name}_{split}": v for name, v in acc.items()})
    figures.update(score_samples(judge, x, None)["figures"])
    table = {
        **scored["samples"],
        **{f"real_{split}": acc for split, acc in scored["real"].items()},
        "chance": scored["chance"],
    }
    return figures, table


def evaluate_run(
    pipe: Pipeline | str | Path,
    *,
    num_per_class: int = 50,
    sample: SampleConfig | None = None,
    judge: Judge | None = None,
    judge_options: Mapping[str, Any] | None = None,
    cache_dir: str | Path | None = None,
    device: str = "auto",
    composed: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """Judge a trained run: draw ``num_per_class`` samples of every class (an unconditional model:
    ``num_per_class`` in all) and score them with the run's modality judge.

    ``pipe`` is a loaded :class:`~multidiff.pipeline.Pipeline` or a checkpoint / run folder
    (loaded on ``device``). The samples are drawn as ``sample`` (default: the run's ``sample``
    section) with ``overrides`` (``steps=10, guidance_scale=2, seed=1``) says. ``judge`` defaults
    to ``pipe.adapter.judge(data, info, cache_dir=..., device=..., **judge_options)``
    (:meth:`multidiff.modality.Modality.judge`), built from the run's own data section; its
    classifiers are cached under ``cache_dir`` (default :func:`default_cache_dir`).

    A text-conditioned run whose judge has an :class:`AttributeJudge` (a captioned built-in set) is
    prompted instead (:func:`score_attributes`): ``num_per_class`` captions of attribute
    combinations it trained on (``seen``) and as many of combinations its training split left out
    (``held_out``); the figures are ``<attribute>_<split>`` (and ``all_<split>``: every attribute
    right), the Fréchet distance of all those samples and the judge's own figures, and the report
    gains ``attributes``: split -> attribute -> accuracy, with ``real_<split>`` (the measures on real
    examples: the ceiling) and ``chance``. ``composed``: the prompts are composed of their factors'
    captions (:func:`score_attributes`); ``settings["composed"]`` says so.

    Returns a JSON-ready dict: ``figures`` (name -> number; see :data:`FIGURE_HELP` and
    ``help``), ``per_class`` (class name -> accuracy), ``judge`` (what the judge is and what the
    figures depend on), ``help`` (a line per figure) and ``settings`` (checkpoint, step, sampler,
    steps, guidance scale, seed, samples per class). Raises ``ValueError`` for bad input (a
    modality without a judge, ``num_per_class < 1``).
    """
    if isinstance(pipe, (str, Path)):
        from .pipeline import load_pipeline

        pipe = load_pipeline(str(pipe), device=device)
    if judge is None and pipe.checkpoint is None:
        raise ValueError(f"evaluating needs the model's training data (the judge's reference); {pipe.source} has none")
    if num_per_class < 1:
        raise ValueError(f"the number of samples per class must be at least 1, got {num_per_class}")
    if composed and pipe.text is None:
        raise ValueError("--composed: prompts of parts are for a text-conditioned run; this one takes no prompt")
    if judge is None:
        make = getattr(pipe.adapter, "judge", None)
        if make is None:
            raise ValueError(f"the {pipe.adapter.name!r} modality provides no judge (its adapter has no judge method)")
        judge = make(pipe.config.data, pipe.info, cache_dir=cache_dir, device=pipe.device, **dict(judge_options or {}))
    s = pipe.options(sample, **overrides)
    attributes: dict[str, Any] | None = None
    per_class: list[float] = []
    if pipe.text is not None and judge.attributes is not None:
        figures, attributes = _evaluate_attributes(pipe, judge, num_per_class, s, composed)
    else:
        if composed:
            raise ValueError("--composed: prompts of parts need a run on a captioned built-in set (an attribute judge)")
        x, labels, seconds = _draw(pipe, num_per_class, sample=s)
        scored = score_samples(judge, x, labels)
        figures = {"samples": float(x.shape[0]), "seconds": seconds, **scored["figures"]}
        per_class = scored["per_class"]
    names = list(pipe.info.class_names) or [str(i) for i in range(pipe.info.num_classes)]
    settings = {
        "checkpoint": str(pipe.checkpoint.path if pipe.checkpoint is not None else pipe.origin),
        "step": int(pipe.checkpoint.step) if pipe.checkpoint is not None else None,
        "modality": pipe.adapter.name,
        "sampler": s.sampler,
        "steps": s.steps,
        "guidance_scale": s.guidance_scale,
        "seed": s.seed,
        "num_per_class": int(num_per_class),
        "num_classes": int(pipe.info.num_classes),
        **({"composed": True} if composed else {}),
    }
    report = {
        "figures": figures,
        "per_class": dict(zip(names, per_class)),
        "judge": judge.description,
        "help": {k: v for k, v in {**FIGURE_HELP, **judge.help}.items() if k in figures},
        "settings": settings,
    }
    if attributes is not None:
        assert judge.attributes is not None
        report["attributes"] = attributes
        report["judge"] = f"{judge.description}; {judge.attributes.description}"
        for split in attributes:
            if split in ATTRIBUTE_HELP:
                report["help"].update(
                    {f"{a}_{split}": ATTRIBUTE_HELP[split].format(name=a) for a in judge.attributes.values}
                )
                report["help"][f"all_{split}"] = ATTRIBUTE_HELP[split].format(name="every judged attribute")
    return report
