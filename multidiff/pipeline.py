"""The library's front door: a trained model and everything it does, for any modality.

``load_pipeline(run)`` rebuilds a checkpoint's model as a :class:`Pipeline`; its methods sample,
edit (inpaint, SDEdit, inversion, interpolation, DiffEdit), guide and evaluate. The command line,
the demo and the example scripts call only these methods.

Every method takes and returns examples in **data units** (what the data set holds and the
modality's ``save_samples`` writes); the denoiser's own space is reached through its
:class:`~multidiff.denoiser.DataSpace` inside. Every sampling option comes from one typed
:class:`~multidiff.config.SampleConfig`: the run's ``sample`` section, or one given, with keyword
overrides (``pipe.sample(16, steps=10, guidance_scale=3)``), validated once in
:meth:`SampleConfig.with_overrides <multidiff.config.SampleConfig.with_overrides>`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import config as C
from . import editing as E
from ._util import amp_dtype
from .checkpoint import Checkpoint, find_checkpoint, load_state_dict_checked
from .cuda_graphs import GraphedNet, graphs_enabled
from .denoiser import DataSpace, Denoiser, default_noise_cond, self_conditioned
from .grids import make_grid
from .guidance import classifier_free_guidance, composable_guidance, x0_classifier_guidance
from .modality import DataInfo, TensorDataset
from .samplers import get_sampler
from .screening import OutputScreen, Screening, build_screen

__all__ = [
    "Pipeline",
    "Generated",
    "Inversion",
    "build_denoiser",
    "class_guidance",
    "data_classifier",
    "default_labels",
    "generate",
    "load_pipeline",
    "resolve_device",
    "resolve_label",
    "write_record",
]

Classifier = Callable[[Tensor, Tensor], Tensor]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` is the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for, but CUDA is not available on this machine")
    return dev


def build_denoiser(cfg: C.ResolvedConfig, info: DataInfo, *, text: Any = None, space: Any = None) -> Denoiser:
    """The network of ``cfg`` for data ``info`` wrapped in its parameterization (on the CPU).

    A run with a ``text`` section needs its text encoder (``text``, a
    :class:`~multidiff.text.TextEncoder`): the network is built for its widths and held beside it
    in a :class:`~multidiff.conditioning.TextConditionedNet`. A run with a ``latent`` section needs
    its :class:`~multidiff.latent.LatentSpace` (``space``): the network is built for the latent's
    shape and the denoiser maps data to it through the space."""
    d = cfg.run.diffusion
    if (cfg.run.latent is None) != (space is None):
        raise ValueError(
            "this run is a latent diffusion run (its latent section): build its denoiser with its latent space"
            if space is None
            else "a latent space was given, but the run has no latent section"
        )
    if space is not None:  # the network sees the latent grid; the data's description is kept otherwise
        info = DataInfo(space.model_shape(info.shape), info.num_classes, info.class_names, info.extra)
    schedule = C.build_schedule(d.schedule, size=max(info.shape[1:], default=1))
    noise_cond = d.noise_cond or default_noise_cond(d.parameterization, schedule)
    model = cfg.model
    if (cfg.run.text is None) != (text is None):
        raise ValueError(
            "this run conditions on text (its text section): build its denoiser with its text encoder"
            if text is None
            else "a text encoder was given, but the run has no text section"
        )
    if text is not None:
        from .conditioning import with_text_dims

        model = with_text_dims(model, text, cfg.adapter.name)
    net = cfg.adapter.build_network(model, info, noise_scale=C.noise_scale(noise_cond, schedule))
    if text is not None:
        from .conditioning import TextConditionedNet

        net = TextConditionedNet(net, text)
    return Denoiser(
        net,
        schedule,
        d.parameterization,
        sigma_data=d.sigma_data,
        noise_cond=noise_cond,
        data_scale=d.data_scale,
        space=space,
    )


def resolve_label(value: int | str | None, info: DataInfo, what: str = "class") -> int | None:
    """A class given by name (``"torus"``) or index (``3``, ``"3"``) as its index; ``None`` stays
    ``None`` (unconditional). ``ValueError`` names ``what`` and the valid classes otherwise, or
    says the model is unconditional."""
    if value is None:
        return None
    k = info.num_classes
    if not k:
        raise ValueError(f"{what} given ({value!r}), but this model is unconditional")
    names = list(info.class_names) or [str(i) for i in range(k)]
    if isinstance(value, str) and value in names:
        return names.index(value)
    text = str(value).strip()
    if text.lstrip("-").isdigit() and 0 <= int(text) < k:
        return int(text)
    raise ValueError(f"{what} must be one of {names} or an index below {k}, got {value!r}")


def default_labels(n: int, num_classes: int) -> Tensor | None:
    """Labels ``0, 1, ..., K-1, 0, 1, ...``: a grid with K columns shows one class per column."""
    return torch.arange(n) % num_classes if num_classes > 0 else None


def _labels(n: int, labels: Tensor | Sequence[int] | int | str | None, info: DataInfo) -> Tensor | None:
    """``n`` checked class labels on the CPU: one class for all, one per sample, or
    :func:`default_labels` for ``None``; ``None`` for an unconditional model."""
    k = info.num_classes
    if isinstance(labels, str | int):
        labels = torch.full((n,), resolve_label(labels, info), dtype=torch.long)
    if labels is None:
        return default_labels(n, k)
    if k == 0:
        raise ValueError("this model is unconditional; it takes no class labels")
    out = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if out.shape != (n,):
        raise ValueError(f"need {n} labels, got {out.numel()}")
    if out.min() < 0 or out.max() >= k:
        raise ValueError(f"class labels must lie in [0, {k - 1}], got {out.tolist()}")
    return out


def negative_condition(
    num_classes: int, negative_label: int | None = None, text_negative: Any = None
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Guidance's negative branch of a call's conditions: class labels replaced by the null class
    (label ``num_classes``) or ``negative_label``; text (``tokens``, ``token_mask``, ``pooled``) by
    ``text_negative``, one row of a :class:`~multidiff.text.TextEncoding` repeated for the batch."""
    k = num_classes
    neg = k if negative_label is None else negative_label

    def negative(c: dict[str, Any]) -> dict[str, Any]:
        out = dict(c)
        if k and "class_labels" in c:
            out["class_labels"] = torch.full_like(c["class_labels"], neg)
        if text_negative is not None and c.get("tokens") is not None:
            from .conditioning import negative_rows

            out.update(negative_rows(text_negative, c))
        return out

    return negative


def class_guidance(
    denoiser: Callable[..., Tensor],
    num_classes: int,
    scale: float,
    negative_label: int | None = None,
    interval: tuple[float, float] | None = None,
    *,
    text_negative: Any = None,
) -> Callable[..., Tensor]:
    """Classifier-free guidance of a conditional model at ``scale``, only for ``interval[0] <
    sigma <= interval[1]`` if given; the denoiser itself when ``scale`` is 1 or the model has no
    condition.

    The negative branch replaces each condition the call has by its negative: class labels by the
    null class (label ``num_classes``) or ``negative_label``; text (``tokens``, ``token_mask``,
    ``pooled``) by ``text_negative``, one row of a :class:`~multidiff.text.TextEncoding` (the null
    embedding or a negative prompt's encoding, :func:`multidiff.conditioning.text_negative`)
    repeated for the batch at the prompts' length, so both branches run as one doubled batch."""
    k = num_classes
    if negative_label is not None and not (k and 0 <= negative_label < k):
        raise ValueError(
            f"the negative class must lie in [0, {k - 1}], got {negative_label}"
            if k
            else "this model is unconditional; it takes no negative class"
        )
    if (not k and text_negative is None) or scale == 1.0:
        return denoiser
    negative = negative_condition(num_classes, negative_label, text_negative)
    return classifier_free_guidance(
        denoiser,
        scale,
        negative=negative,
        interval=None if interval is None else (float(interval[0]), float(interval[1])),
    )


def _guided(
    denoiser: Callable[..., Tensor], info: DataInfo, s: C.SampleConfig, text: Any = None
) -> Callable[..., Tensor]:
    """The denoiser under the classifier-free guidance ``s`` asks for (scale, negative class,
    negative prompt, interval), its estimate clamped to ``s.clip_denoised`` (data units) if given.
    ``text``: the model's text encoder (default: the one beside ``denoiser``'s network)."""
    from .conditioning import composed_parts, text_encoder_of, text_negative

    negative = resolve_label(s.negative_class, info, "negative class")
    text = text if text is not None else text_encoder_of(denoiser)
    if text is None and s.negative_prompt is not None:
        raise ValueError("this model was trained without text; it takes no negative prompt")
    neg_text = text_negative(text, s.negative_prompt) if text is not None else None
    guided = class_guidance(
        denoiser, info.num_classes, s.guidance_scale, negative, s.guidance_interval, text_negative=neg_text
    )
    if text is not None:  # prompts of parts joined by AND: composable guidance
        guided = _with_composed_prompts(
            guided,
            composable_guidance(
                denoiser,
                s.guidance_scale,
                parts=composed_parts,
                negative=negative_condition(info.num_classes, negative, neg_text),
                interval=None if s.guidance_interval is None else tuple(map(float, s.guidance_interval)),
            ),
        )
    if s.clip_denoised is None:
        return guided
    space = getattr(denoiser, "space", DataSpace())
    if isinstance(space, nn.Module):  # a latent space: the estimate is a latent, not data
        raise ValueError(
            "sample.clip_denoised clamps the denoiser's estimate in data units; a latent model's estimate is a "
            "latent (its samples are decoded at the end): leave clip_denoised unset"
        )
    lo, hi = (float(space.encode(torch.tensor(v))) for v in (-s.clip_denoised, s.clip_denoised))
    return lambda x, sigma, **cond: guided(x, sigma, **cond).clamp(lo, hi)


def _with_composed_prompts(plain: Callable[..., Tensor], composed: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """``composed`` for calls whose prompts are composed (a :class:`~multidiff.conditioning.ComposedEncoding`'s
    keys), ``plain`` for the rest."""

    def guided(x: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
        return (composed if "composed_tokens" in cond else plain)(x, sigma, **cond)

    return guided


def _grid(s: C.SampleConfig, schedule: Any) -> Tensor:
    return make_grid(s.grid, s.steps, schedule=schedule, sigma_min=s.sigma_min, sigma_max=s.sigma_max)


@torch.no_grad()
def generate(
    denoiser: Denoiser | Callable[..., Tensor],
    info: DataInfo,
    *,
    n: int,
    sample: C.SampleConfig | None = None,
    labels: Tensor | Sequence[int] | int | str | None = None,
    classifier: Classifier | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    checker: OutputScreen | None = None,
    **overrides: Any,
) -> Generated:
    """Draw ``n`` samples of shape ``info.shape`` as ``sample`` says (default
    :class:`~multidiff.config.SampleConfig`'s defaults) with ``overrides`` applied; returns
    ``(x, labels)`` in data units, float32 on the CPU (a :class:`Generated`, which also holds the
    prompts and the screening's counts).

    A text-conditioned model (a :class:`~multidiff.conditioning.TextConditionedNet`) takes
    ``prompt``: one for all samples or one per sample; without one, the run's example prompts
    (``info.extra["example_prompts"]``) in turn. Each distinct prompt is encoded once, padded to
    the encoder's ``max_tokens``; guidance's negative branch is the null embedding or the
    encoding of ``negative_prompt``, the same length, so both run as one doubled batch.

    Screening: ``checker`` (default: the one ``sample.checker`` names, :mod:`multidiff.screening`)
    sees every batch in data units with its prompts and labels before it is returned; flagged
    samples are replaced by zeros or dropped (with their labels and prompts), and counted.

    The prior noise comes from a CPU generator seeded with ``seed``, so a seed gives the same
    prior, and with a deterministic sampler the same samples, on every device. Stochastic samplers
    draw their per-step noise on the model's device, from a generator seeded by the CPU one:
    reproducible on each kind of device (drawing it on the CPU cost 12-16% of a 38M-parameter
    UNet's evaluation per step on an H100). For a class-conditional model, ``labels`` (a class
    name or index for all, ``n`` labels, or ``None`` for :func:`default_labels`) picks the classes.

    Guidance: ``guidance_scale != 1`` is classifier-free guidance against the null class, or
    against ``negative_class`` (``D_neg + w (D_cond - D_neg)``), only within ``guidance_interval =
    (sigma_lo, sigma_hi)`` if given (Kynkäänniemi et al. 2024). ``classifier(x, labels) -> log p(labels
    | x)`` (``(B,)``, differentiable, on data in data units) with ``classifier_scale > 0`` adds
    classifier guidance on the denoiser's estimate (:func:`multidiff.guidance.x0_classifier_guidance`);
    it costs a backward pass per step.

    GPU fast paths: ``precision`` runs the network under autocast (``auto``: bf16 on GPUs that
    support it, fp16 on older ones, float32 on CPUs; the sampler's own arithmetic and the returned
    samples stay float32 or float64), ``compile`` wraps the network in ``torch.compile``,
    ``batch_size`` bounds how many samples go through the network at once, and ``cuda_graphs``
    (``auto``: on CUDA) replays each network call from a CUDA graph captured once per batch shape
    (:class:`multidiff.cuda_graphs.GraphedNet`): a small model is otherwise launch-bound.
    """
    s = (sample or C.SampleConfig()).with_overrides(**overrides)
    if n < 1:
        raise ValueError(f"need at least one sample, got n={n}")
    spec = get_sampler(s.sampler)
    sigmas = _grid(s, getattr(denoiser, "schedule", None))
    param = next(iter(denoiser.parameters()), None) if isinstance(denoiser, nn.Module) else None
    device = param.device if param is not None else torch.device("cpu")
    labels = _labels(n, labels, info)
    space = getattr(denoiser, "space", DataSpace())
    # text: the prompts' encoding, found before the network is wrapped (compiled, graphed)
    from .conditioning import prompt_encoding, prompts_for, text_encoder_of

    text = text_encoder_of(denoiser)
    if text is None and (s.prompt is not None or s.negative_prompt is not None):
        raise ValueError("this model was trained without text; it takes no prompt or negative prompt")
    prompts = prompts_for(n, s.prompt, info) if text is not None else None
    encoded = prompt_encoding(text, prompts, n) if text is not None else None
    screen = checker if checker is not None else build_screen(s)
    if s.classifier_scale and classifier is None:
        raise ValueError("sample.classifier_scale needs a classifier (Pipeline.sample trains one on the run's data)")
    if s.classifier_scale and labels is None:
        raise ValueError("classifier guidance needs class labels: this model is unconditional")
    if s.compile and isinstance(denoiser, Denoiser):
        denoiser = denoiser.with_net(torch.compile(denoiser.net))
    graphs = graphs_enabled(
        s.cuda_graphs,
        device,
        {
            "the denoiser is not a multidiff Denoiser": not isinstance(denoiser, Denoiser),
            # a network from elsewhere (a diffusers UNet) says so: its capture was never checked
            "the network was not checked under CUDA graph capture": getattr(
                getattr(denoiser, "net", None), "graph_capture_checked", True
            )
            is False,
        },
        "cuda_graphs",
    )
    if graphs:
        denoiser = denoiser.with_net(GraphedNet(denoiser.net))  # type: ignore[union-attr]
    amp = amp_dtype(s.precision, device)

    def guided(base: Callable[..., Tensor]) -> Callable[..., Tensor]:
        fn = _guided(base, info, s, text)
        if classifier is not None and s.classifier_scale:
            clf = classifier
            fn = x0_classifier_guidance(
                fn, lambda d, class_labels, **_: clf(space.decode(d), class_labels), s.classifier_scale
            )
        return fn

    # a self-conditioned model gets each step the previous estimate, a fresh state per batch
    self_cond = bool(getattr(denoiser, "self_condition", False))
    g = torch.Generator().manual_seed(s.seed)
    step_g = (
        g if device.type == "cpu" else torch.Generator(device).manual_seed(int(torch.randint(2**62, (1,), generator=g)))
    )
    out, keep = [], []
    for start in range(0, n, s.batch_size):
        b = min(s.batch_size, n - start)
        rows = slice(start, start + b)
        x = float(sigmas[0]) * torch.randn((b, *space.model_shape(info.shape)), generator=g).to(device)
        cond = {"class_labels": labels[rows].to(device)} if labels is not None else {}
        if encoded is not None:
            cond.update(encoded.select(rows).to(device).as_cond())
        fn = guided(self_conditioned(denoiser) if self_cond else denoiser)
        # autocast's cast cache must be off under CUDA graphs
        with torch.autocast(device.type, dtype=amp, cache_enabled=not graphs) if amp is not None else nullcontext():
            x0 = spec.fn(fn, x, sigmas, cond=cond or None, generator=step_g, callback=callback, **s.options)
        x0 = space.decode(x0).float().cpu()
        if screen is not None:  # before anything leaves this function
            x0, kept = screen(x0, None if prompts is None else prompts[rows], None if labels is None else labels[rows])
            keep.append(kept)
        out.append(x0)
    x_all = torch.cat(out)
    if keep and not bool(torch.cat(keep).all()):
        k = torch.cat(keep)
        x_all, labels = x_all[k], None if labels is None else labels[k]
        prompts = None if prompts is None else [p for p, kk in zip(prompts, k.tolist()) if kk]
    return Generated(x_all, labels, prompts, None if screen is None else screen.report)


class Generated(tuple):  # type: ignore[type-arg]
    """What :func:`generate` returns: unpacks as ``(x, labels)``; :attr:`prompts` (one per sample,
    for a text-conditioned model) and :attr:`screening` (the checker's counts, when one ran) say more."""

    prompts: list[str] | None
    screening: Screening | None

    def __new__(
        cls, x: Tensor, labels: Tensor | None, prompts: list[str] | None = None, screening: Screening | None = None
    ) -> Generated:
        self = super().__new__(cls, (x, labels))
        self.prompts, self.screening = prompts, screening
        return self

    @property
    def x(self) -> Tensor:
        return self[0]

    @property
    def labels(self) -> Tensor | None:
        return self[1]


def write_record(path: str | Path, generated: Generated, settings: dict[str, Any] | None = None) -> list[Path]:
    """``<path>.json`` beside samples written to ``path``: each sample's prompt and the checker's
    counts, with ``settings``; nothing (``[]``) when the samples have neither prompts nor a screening."""
    import json

    if generated.prompts is None and generated.screening is None:
        return []
    p = Path(path)
    file = p.with_name(p.stem + ".json") if p.suffix else p.with_name(p.name + ".json")
    record = {
        **(settings or {}),
        "samples": len(generated.x),
        "prompts": generated.prompts,
        "screening": None if generated.screening is None else generated.screening.to_json(),
    }
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(record, indent=2) + "\n")
    return [file]


def data_classifier(
    config: C.ResolvedConfig, info: DataInfo, device: torch.device | str = "cpu", *, cache_dir: Path | None = None
) -> Classifier:
    """``log p(y | x)`` (on data units) from a classifier of the run's own training data, trained
    once and cached by content under ``$MULTIDIFF_CACHE/classifiers`` (``~/.cache/multidiff``).

    A :class:`~multidiff.metrics.FeatureClassifier` over the data's rank, trained on the training
    set ``config`` describes. It sees clean data only; classifier guidance applies it to the
    denoiser's estimate (:func:`multidiff.guidance.x0_classifier_guidance`).
    """
    from .metrics import cached_classifier

    if not info.num_classes:
        raise ValueError("classifier guidance needs a class-conditional model; this one is unconditional")
    cache = cache_dir or Path(os.environ.get("MULTIDIFF_CACHE", Path.home() / ".cache" / "multidiff")) / "classifiers"
    ds, _ = config.adapter.build_dataset(config.data)
    if isinstance(ds, TensorDataset):
        x, y = ds.x, ds.labels
    else:
        items = [ds[i] for i in range(len(ds))]
        x, y = torch.stack([torch.as_tensor(a) for a, _ in items]), torch.as_tensor([int(b) for _, b in items])
    keep = y >= 0
    if not keep.any():
        raise ValueError("classifier guidance needs labelled training data")
    print(f"classifier for guidance: {int(keep.sum())} training examples (cached in {cache})")
    clf = cached_classifier(
        x[keep].float(),
        y[keep],
        cache_dir=cache,
        tag=f"guidance:{config.adapter.describe(config.data)}",
        num_classes=info.num_classes,
        epochs=10,
        progress=True,
    ).to(device)
    clf.requires_grad_(False)
    k = info.num_classes

    def log_prob(x: Tensor, labels: Tensor) -> Tensor:
        logp = torch.log_softmax(clf(x.float()), dim=1)
        return logp.gather(1, labels.clamp(0, k - 1).long().unsqueeze(1)).squeeze(1)

    return log_prob


@dataclass
class Inversion:
    """An input mapped to noise along the probability-flow ODE (:meth:`Pipeline.invert`).

    Attributes:
        noise: ``(1, *shape)`` in the denoiser's space at ``sigmas[0]``, on the CPU.
        sigmas: the grid it was inverted on (decreasing, ending in 0).
        reconstruction: the noise sampled back to data, in data units.
        error: RMS of ``reconstruction - input`` in data units.
    """

    noise: Tensor
    sigmas: Tensor
    reconstruction: Tensor
    error: float


@dataclass
class Pipeline:
    """A trained model ready to use: the EMA denoiser, its config, data description and checkpoint.

    Inputs and outputs are in data units; ``sample``/``**overrides`` arguments are the run's
    ``sample`` section (or the :class:`~multidiff.config.SampleConfig` given) with fields replaced.

    A model trained elsewhere (:meth:`from_diffusers`) has no ``checkpoint``; ``origin`` is then
    the folder it was read from, and ``config`` is its modality's defaults (no training data).
    """

    denoiser: Denoiser
    config: C.ResolvedConfig
    info: DataInfo
    checkpoint: Checkpoint | None
    origin: Path | None = None

    @classmethod
    def from_diffusers(cls, path: str | Path, *, device: str = "auto", modality: str | None = None) -> Pipeline:
        """A local diffusers folder (a ``UNet2DModel``, ``UNet1DModel`` or ``UNet2DConditionModel``
        with its scheduler config) as a pipeline of the modality whose files fit it (``image`` for
        a 2D UNet, ``audio`` for a 1D one, or ``modality``); see :mod:`multidiff.interop.diffusers`.
        ``ValueError`` (:class:`~multidiff.interop.diffusers.DiffusersError`) naming the file otherwise."""
        from .interop.diffusers import load_diffusers

        m = load_diffusers(path, device=resolve_device(device), modality=modality)
        cfg = C.resolve_config({"modality": m.modality}, source=str(m.model_dir))
        return cls(m.denoiser, cfg, m.info, None, Path(path))

    @property
    def source(self) -> str:
        """Where the model came from, for messages: the checkpoint, or the folder read."""
        if self.checkpoint is not None:
            return f"{self.checkpoint.path} (step {self.checkpoint.step})"
        return str(self.origin)

    @property
    def output_root(self) -> Path:
        """Where outputs go by default: the run folder of the checkpoint, or the folder read."""
        if self.checkpoint is not None:
            return self.checkpoint.path.parent.parent
        return Path(self.origin or ".")

    def _training_data(self, what: str) -> None:
        if self.checkpoint is None:
            raise ValueError(f"{what} needs the model's training data; a model read from {self.origin} has none here")

    @property
    def adapter(self) -> Any:
        return self.config.adapter

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def space(self) -> Any:
        """Data units to the denoiser's space and back: a :class:`~multidiff.denoiser.DataSpace`,
        or a latent model's :class:`~multidiff.latent.LatentSpace`."""
        return self.denoiser.space

    @property
    def text(self) -> Any:
        """The model's text encoder (a :class:`~multidiff.text.TextEncoder`), or ``None`` for a
        model trained without text."""
        from .conditioning import text_encoder_of

        return text_encoder_of(self.denoiser)

    # --- options, labels, inputs ------------------------------------------------------------

    def options(self, sample: C.SampleConfig | None = None, **overrides: Any) -> C.SampleConfig:
        """The sampling options: ``sample`` (default: the run's ``sample`` section) with ``overrides``;
        the one place every default is resolved."""
        return (sample or self.config.run.sample).with_overrides(**overrides)

    def label(self, value: int | str | None, what: str = "class") -> int | None:
        """A class name or index as an index (see :func:`resolve_label`)."""
        return resolve_label(value, self.info, what)

    def read(self, path: str | Path) -> Tensor:
        """A user's file as one example ``(1, *info.shape)`` in data units, read by the modality
        (:meth:`~multidiff.modality.Modality.read_input`); ``ValueError`` naming the file otherwise."""
        x = self.adapter.read_input(Path(path), self.info, self.config.data)
        if tuple(x.shape) != tuple(self.info.shape):
            raise ValueError(f"{path}: read as shape {tuple(x.shape)}, the model takes {tuple(self.info.shape)}")
        return x.float().unsqueeze(0)

    def mask(self, mask: Tensor | str | Path | None = None, region: str | None = None) -> Tensor:
        """A boolean mask ``(1, *spatial)`` or ``(1, *info.shape)``, true where content is generated:
        a tensor, a mask file the modality reads (:meth:`~multidiff.modality.Modality.read_mask`),
        or a box given as fractions per axis (:func:`multidiff.editing.region_mask`); exactly one."""
        if (mask is None) == (region is None):
            raise ValueError("give the region to generate with exactly one of a mask or a region")
        if region is not None:
            return E.region_mask(region, self.info.shape)
        if isinstance(mask, str | Path):
            m = self.adapter.read_mask(Path(mask), self.info)
        else:
            m = torch.as_tensor(mask)
        return m.unsqueeze(0) if m.ndim == len(self.info.shape) else m

    def training_examples(self, n: int = 1, label: int | str | None = None, seed: int = 0) -> Tensor:
        """``n`` examples of the run's training data (of class ``label`` when given), in data units:
        inputs for edits when the user gives no file."""
        self._training_data("training_examples")
        want = self.label(label)
        ds, _ = self.adapter.build_dataset(self.config.data)
        idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))
        items = []
        for i in idx.tolist():
            x, y = ds[i]
            if want is None or int(y) == want:
                items.append(torch.as_tensor(x).float())
                if len(items) == n:
                    break
        if len(items) < n:
            raise ValueError(f"the training data holds {len(items)} examples of class {label}, {n} were asked for")
        return torch.stack(items)

    def save(self, x: Tensor, folder: str | Path, labels: Tensor | None = None) -> list[Path]:
        """Write examples in data units as the modality's files (PNG, WAV, meshes); return them.
        Given a :class:`Generated` (``pipe.save(pipe.sample(n), folder)``), its labels are used and
        its prompts and screening counts go to ``<folder>.json`` (:func:`write_record`)."""
        if isinstance(x, Generated):
            gen, x, labels = x, x.x, x.labels if labels is None else labels
            paths = self.adapter.save_samples(x.float().cpu(), Path(folder), self.info, labels=labels)
            return paths + write_record(folder, gen, {"checkpoint": self.source})
        return self.adapter.save_samples(x.float().cpu(), Path(folder), self.info, labels=labels)

    # --- the denoiser's space -----------------------------------------------------------------

    def _in(self, x: Tensor) -> Tensor:
        x = torch.as_tensor(x)
        x = x.unsqueeze(0) if x.ndim == len(self.info.shape) else x
        if tuple(x.shape[1:]) != tuple(self.info.shape):
            raise ValueError(f"examples of shape {tuple(x.shape[1:])} given, the model takes {tuple(self.info.shape)}")
        return self.space.encode(x.to(self.device))

    def _out(self, z: Tensor) -> Tensor:
        return self.space.decode(z).float().cpu()

    def _cond(
        self, label: int | str | Tensor | Sequence[int] | None, n: int, prompt: str | Sequence[str] | None = None
    ) -> dict[str, Tensor]:
        """The condition of ``n`` rows: ``class_labels`` for one class (name or index) for all, one
        label per row, or the null class (unconditional) for ``None``; and for a text-conditioned
        model the encoding of ``prompt`` (one for all or one per row; ``None``: the null text).
        Empty for an unconditional model without text."""
        from .conditioning import prompt_encoding, prompts_for

        cond: dict[str, Tensor] = {}
        text = self.text
        if text is None and prompt is not None:
            raise ValueError("this model was trained without text; it takes no prompt")
        if text is not None:
            prompts = None if prompt is None else prompts_for(n, prompt, self.info)
            cond.update(prompt_encoding(text, prompts, n).to(self.device).as_cond())
        k = self.info.num_classes
        if not k:
            if label is not None:
                self.label(label if isinstance(label, int | str) else 0)  # raises: unconditional
            return cond
        if label is None or isinstance(label, int | str):
            y = self.label(label)
            labels = torch.full((n,), k if y is None else y, dtype=torch.long, device=self.device)
            return {"class_labels": labels, **cond}
        out = _labels(n, label, self.info)
        assert out is not None
        return {"class_labels": out.to(self.device), **cond}

    def _batch(
        self, x: Tensor, n: int, label: Any, prompt: str | Sequence[str] | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Examples ``x`` (one or a batch, data units) in the denoiser's space, each repeated ``n``
        times (rows ``b * n + j``), with their condition: ``label`` and ``prompt`` each one for all
        or one per example."""
        z = self._in(x)
        if label is not None and not isinstance(label, int | str):
            label = torch.as_tensor(label, dtype=torch.long).reshape(-1).repeat_interleave(n)
        if prompt is not None and not isinstance(prompt, str):
            prompt = [q for q in prompt for _ in range(n)]
        return z.repeat_interleave(n, dim=0), self._cond(label, z.shape[0] * n, prompt)

    def _generator(self, s: C.SampleConfig) -> torch.Generator:
        return torch.Generator().manual_seed(s.seed)

    # --- sampling -------------------------------------------------------------------------------

    def sample(
        self,
        n: int,
        *,
        labels: Tensor | Sequence[int] | int | str | None = None,
        sample: C.SampleConfig | None = None,
        callback: Callable[[dict[str, Any]], None] | None = None,
        **overrides: Any,
    ) -> Generated:
        """``n`` new examples (data units, CPU) and their labels; see :func:`generate`. With
        ``classifier_scale > 0`` the classifier is :meth:`classifier` (trained once, cached).
        A text-conditioned model takes ``prompt=`` (one for all or one per sample) and
        ``negative_prompt=``, like every sampling option."""
        s = self.options(sample, **overrides)
        clf = self.classifier() if s.classifier_scale else None
        return generate(
            self.denoiser,
            self.info,
            n=n,
            sample=s,
            labels=labels,
            classifier=clf,
            callback=callback,
            checker=self.screen(s),
        )

    def screen(self, sample: C.SampleConfig | None = None) -> OutputScreen | None:
        """The output screen ``sample.checker`` names (:mod:`multidiff.screening`), or ``None``."""
        s = sample or self.options()
        if s.checker is not None and s.checker.startswith("classifier:"):
            self._training_data("sample.checker 'classifier:'")
        return build_screen(s, self.config, self.info, self.device)

    def screened(self, x: Tensor, sample: C.SampleConfig | None = None, *, labels: Tensor | None = None) -> Generated:
        """Outputs of an edit (data units) through the checker ``sample.checker`` names, with the
        prompt ``sample.prompt`` (one for all or one per output), as :func:`generate` screens its
        samples; unchanged (no screening) when no checker is named."""
        from .conditioning import prompts_for

        s = sample or self.options()
        given = s.prompt
        if isinstance(given, list) and len(given) not in (1, len(x)) and len(x) % len(given) == 0:
            given = [q for q in given for _ in range(len(x) // len(given))]  # one per input, n outputs each
        prompts = prompts_for(len(x), given, self.info) if given is not None else None
        screen = self.screen(s)
        if screen is None:
            return Generated(x, labels, prompts)
        out, keep = screen(x.float().cpu(), prompts, labels)
        if not bool(keep.all()):
            out, labels = out[keep], None if labels is None else labels[keep]
            prompts = None if prompts is None else [q for q, k in zip(prompts, keep.tolist()) if k]
        return Generated(out, labels, prompts, screen.report)

    def classifier(self, *, cache_dir: Path | None = None) -> Classifier:
        """``log p(y | x)`` from a classifier of the run's training data (:func:`data_classifier`)."""
        self._training_data("classifier guidance")
        return data_classifier(self.config, self.info, self.device, cache_dir=cache_dir)

    # --- editing ----------------------------------------------------------------------------------

    @torch.no_grad()
    def inpaint(
        self,
        x: Tensor,
        mask: Tensor,
        *,
        n: int = 1,
        label: int | str | Tensor | Sequence[int] | None = None,
        method: str = "repaint",
        jump_length: int = 10,
        resample: int = 10,
        particles: int = 16,
        sample: C.SampleConfig | None = None,
        **overrides: Any,
    ) -> Tensor:
        """``n`` completions of each example ``x`` (one ``info.shape`` or a batch): keep it where
        ``mask`` (:meth:`mask`) is false, generate where true (:func:`multidiff.editing.inpaint`:
        ``replace``, ``repaint``, ``smc``); ``label`` is one class or one per example. Rows
        ``b * n + j``; the known values are returned exactly as given."""
        s = self.options(sample, **overrides)
        known, cond = self._batch(x, n, label, s.prompt)
        # the known values exactly as given, in data units (decoding them could round)
        given = torch.as_tensor(x).float().cpu().reshape(-1, *self.info.shape).repeat_interleave(n, dim=0)
        m = E.check_mask(torch.as_tensor(mask).cpu(), given)
        out = E.inpaint(
            _guided(self.denoiser, self.info, s),
            known,
            # on the denoiser's grid: a latent cell is generated where any data element it covers is
            self.space.encode_mask(m.to(self.device)),
            _grid(s, self.denoiser.schedule),
            method=method,
            sampler=s.sampler,
            jump_length=jump_length,
            resample=resample,
            particles=particles,
            cond=cond,
            generator=self._generator(s),
            options=s.options,
        )
        return torch.where(m, self._out(out), given)

    @torch.no_grad()
    def sdedit(
        self,
        x: Tensor,
        strength: float,
        *,
        n: int = 1,
        label: int | str | None = None,
        sample: C.SampleConfig | None = None,
        **overrides: Any,
    ) -> Tensor:
        """``n`` SDEdits of each example ``x`` (one or a batch): noised to ``strength`` in [0, 1] and
        denoised, towards ``label`` (one class or one per example) if given
        (:func:`multidiff.editing.sdedit`). Rows ``b * n + j``."""
        s = self.options(sample, **overrides)
        z, cond = self._batch(x, n, label, s.prompt)
        out = E.sdedit(
            _guided(self.denoiser, self.info, s),
            z,
            strength,
            steps=s.steps,
            sampler=s.sampler,
            grid=s.grid,
            schedule=self.denoiser.schedule,
            cond=cond,
            generator=self._generator(s),
            options=s.options,
        )
        return self._out(out)

    @torch.no_grad()
    def invert(
        self,
        x: Tensor,
        *,
        label: int | str | None = None,
        solver: str = "dpmpp_2m",
        sample: C.SampleConfig | None = None,
        **overrides: Any,
    ) -> Inversion:
        """One example to its noise along the probability-flow ODE, and back (:func:`multidiff.editing.invert`).

        Unguided unless ``guidance_scale`` is given: an unguided ODE inverts best."""
        s = self.options(sample, **_unguided(overrides))
        z = self._in(x)[:1]
        sigmas = _grid(s, self.denoiser.schedule)
        den, cond = _guided(self.denoiser, self.info, s), self._cond(label, 1, s.prompt)
        noise = E.invert(den, z, sigmas, solver=solver, cond=cond)
        back = self._out(get_sampler(solver).fn(den, noise, sigmas, cond=cond))
        given = torch.as_tensor(x).float().cpu().reshape(-1, *self.info.shape)[:1]
        err = float((back - given).pow(2).mean().sqrt())
        return Inversion(noise.float().cpu(), sigmas, back, err)

    @torch.no_grad()
    def interpolate(
        self,
        x_a: Tensor,
        x_b: Tensor,
        frames: int = 8,
        *,
        label: int | str | None = None,
        label_b: int | str | None = None,
        prompt_b: str | None = None,
        solver: str = "dpmpp_2m",
        sample: C.SampleConfig | None = None,
        **overrides: Any,
    ) -> Tensor:
        """``frames`` examples along the spherical path between two inputs' inverted noises, the
        condition moving linearly from ``label`` to ``label_b`` and from the prompt (``prompt=``,
        a sampling option) to ``prompt_b`` (:func:`multidiff.editing.interpolate`); a condition
        not given for the second input is the first's. Unguided unless ``guidance_scale`` is given."""
        s = self.options(sample, **_unguided(overrides))
        den = _guided(self.denoiser, self.info, s)
        out = E.interpolate(
            den,
            self._in(x_a)[:1],
            self._in(x_b)[:1],
            _grid(s, self.denoiser.schedule),
            frames,
            cond_a=self._cond(label, 1, s.prompt),
            cond_b=self._cond(
                label_b if label_b is not None else label, 1, prompt_b if prompt_b is not None else s.prompt
            ),
            solver=solver,
            sampler=solver,
        )
        return self._out(out)

    @torch.no_grad()
    def diffedit(
        self,
        x: Tensor,
        label: int | str | None = None,
        *,
        reference: int | str | None = None,
        reference_prompt: str | None = None,
        strength: float = 0.5,
        threshold: float = 0.5,
        sample: C.SampleConfig | None = None,
        **overrides: Any,
    ) -> tuple[Tensor, Tensor]:
        """DiffEdit of one example towards class ``label`` and/or the prompt (``prompt=``, a
        sampling option) only where the model's estimates under that query and under the reference
        (``reference`` class, ``reference_prompt``; default: unconditional, the null text) disagree;
        returns ``(edited, mask)`` (:func:`multidiff.editing.diffedit`)."""
        s = self.options(sample, **overrides)
        if label is None and s.prompt is None:
            raise ValueError("diffedit needs what to edit towards: a class or a prompt")
        z = self._in(x)[:1]
        out, mask = E.diffedit(
            _guided(self.denoiser, self.info, s.model_copy(update={"negative_class": None, "negative_prompt": None})),
            z,
            cond_query=self._cond(label, 1, s.prompt),
            cond_ref=self._cond(reference, 1, reference_prompt),
            strength=strength,
            steps=s.steps,
            grid=s.grid,
            threshold=threshold,
            schedule=self.denoiser.schedule,
            generator=self._generator(s),
        )
        if self.space.identity:
            return self._out(out), mask.cpu()
        # a latent model: the mask on the data grid, the unedited region exactly as given
        m = self.space.decode_mask(mask).cpu()
        given = torch.as_tensor(x).float().cpu().reshape(-1, *self.info.shape)[:1]
        return torch.where(m, self._out(out), given), m

    # --- judging --------------------------------------------------------------------------------------

    def evaluate(
        self, num_per_class: int = 50, *, sample: C.SampleConfig | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """Score this model with its modality's judge (:func:`multidiff.evaluate.evaluate_run`):
        ``num_per_class`` samples of every class, class accuracy by an independent classifier,
        Fréchet distance to held-out real data and the modality's own figures."""
        from .evaluate import evaluate_run

        return evaluate_run(self, num_per_class=num_per_class, sample=sample, **kwargs)


def _unguided(overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` with ``guidance_scale`` 1 unless one was given: ODE inversion is best unguided."""
    return {
        **overrides,
        "guidance_scale": 1.0 if overrides.get("guidance_scale") is None else overrides["guidance_scale"],
    }


def load_pipeline(
    path: str | Path,
    *,
    device: str = "auto",
    weights: str = "ema",
    modality: str | None = None,
    autoencoder: str | Path | None = None,
) -> Pipeline:
    """Rebuild the model a checkpoint (or the newest checkpoint of a run folder) was trained as;
    ``modality``: refuse (``ValueError``) a model of another modality. A diffusers folder (a
    ``model_index.json``, or a ``config.json`` with ``_class_name``) is read by
    :meth:`Pipeline.from_diffusers` (``weights`` does not apply).

    A latent model (:mod:`multidiff.latent`) rebuilds its autoencoder from the run its checkpoint
    names (or from ``autoencoder``, a run or checkpoint folder, when it has moved): the checkpoint
    whose EMA weights have the recorded SHA-256, or ``ValueError`` naming the path."""
    from .interop.diffusers import is_diffusers_folder

    if is_diffusers_folder(path):
        pipe = Pipeline.from_diffusers(path, device=device)
        if modality is not None and pipe.adapter.name != modality:
            raise ValueError(f"{path} holds a {pipe.adapter.name} model, not a {modality} one")
        return pipe
    ckpt = find_checkpoint(str(path))
    task = ckpt.meta.get("task", ckpt.meta.get("config", {}).get("task", "diffusion"))
    if task != "diffusion":
        raise ValueError(
            f"{ckpt.path} is a checkpoint of an {task} run (task: {task}): it encodes and decodes, it does not "
            "sample or edit; multidiff eval reports its reconstructions (multidiff.autoencoder.load_autoencoder loads it)"
        )
    cfg = C.resolve_config(ckpt.config, source=str(ckpt.path / "meta.json"))
    if modality is not None and cfg.adapter.name != modality:
        raise ValueError(f"{path} holds a {cfg.adapter.name} model, not a {modality} one")
    info = DataInfo.from_json(ckpt.meta["data_info"])
    state = ckpt.weights(weights)
    from .conditioning import load_text_encoder

    space = _latent_space(ckpt, cfg, info, autoencoder) if cfg.run.latent is not None else None
    den = build_denoiser(cfg, info, text=load_text_encoder(cfg, state), space=space)
    load_state_dict_checked(den.net, state, str(ckpt.path))
    den = den.to(resolve_device(device)).eval().requires_grad_(False)
    return Pipeline(den, cfg, info, ckpt)


def _latent_space(ckpt: Checkpoint, cfg: C.ResolvedConfig, info: DataInfo, autoencoder: str | Path | None) -> Any:
    """A latent checkpoint's :class:`~multidiff.latent.LatentSpace`: its autoencoder found again by
    the recorded weights hash (at ``autoencoder`` if given, else where the run named it), with the
    recorded scale and shift."""
    from .latent import AutoencoderRecord, LatentSpace, open_autoencoder

    if not isinstance(ckpt.meta.get("latent"), dict):
        raise ValueError(f"{ckpt.path / 'meta.json'}: a latent run's checkpoint without its latent record")
    rec = AutoencoderRecord.from_json(ckpt.meta["latent"])
    if autoencoder is not None:
        where = [Path(autoencoder)]
    else:  # where it was when the run started, then as the config names it (relative to here)
        where = list(dict.fromkeys([Path(rec.checkpoint), Path(rec.run), Path(rec.autoencoder)]))
    what = f"the latent model {ckpt.path} needs its autoencoder"
    found = next((p for p in where if p.exists()), None)
    if found is None:
        raise ValueError(
            f"{what}: the autoencoder run {rec.autoencoder!r} ({rec.run}) does not exist"
            if autoencoder is None
            else f"{what}: the autoencoder {str(autoencoder)!r} does not exist"
        )
    net, _, _ = open_autoencoder(
        found,
        modality=cfg.adapter.name,
        data_shape=info.shape,
        sha256=rec.sha256,
        what=what,
    )
    space = LatentSpace(net, info.shape, rec.scale, rec.shift, batch_size=cfg.run.latent.encode_batch_size)
    if space.shape != rec.latent_shape:
        raise ValueError(f"{what}: its latent shape is {space.shape}, the model was trained on {rec.latent_shape}")
    return space
