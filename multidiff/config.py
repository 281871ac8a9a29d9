"""Run configuration: pydantic models for every section, YAML files, ``--set`` overrides.

A run config has the modality-agnostic sections ``diffusion``, ``train`` and ``sample`` (defined
here) and the modality's own ``model`` and ``data`` sections, validated by the adapter's
``ModelConfig`` and ``DataConfig``. Every key is checked before any work starts; unknown keys are
errors, and each error names the key, the value given and what was expected.

>>> cfg = load_config("configs/image_digits.yaml", ["train.steps=100"])  # doctest: +SKIP
>>> cfg.run.train.steps, type(cfg.model).__name__                     # doctest: +SKIP
(100, 'ImageModelConfig')
"""

from __future__ import annotations

import json
import re
import types
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import Field, TypeAdapter, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from . import registry
from . import schedules as S
from .modality import Modality, PresetModelConfig, StrictModel
from .text import TextConfig

__all__ = [
    "ConfigError",
    "ScheduleConfig",
    "LinearScheduleConfig",
    "ScaledLinearScheduleConfig",
    "CosineDiscreteScheduleConfig",
    "VPLinearScheduleConfig",
    "CosineScheduleConfig",
    "SigmoidScheduleConfig",
    "EDMScheduleConfig",
    "FlowScheduleConfig",
    "SCHEDULE_KINDS",
    "schedule_config",
    "migrate_config",
    "AutoencoderConfig",
    "DiffusionConfig",
    "LatentConfig",
    "TASKS",
    "TrainConfig",
    "SampleConfig",
    "RunConfig",
    "ResolvedConfig",
    "load_config",
    "resolve_config",
    "apply_overrides",
    "build_schedule",
    "noise_scale",
]


class ConfigError(ValueError):
    """A config that cannot run; its message has one line per problem."""


class ScheduleConfig(StrictModel):
    """The training noise schedule (see :mod:`multidiff.schedules`): one model per ``kind``, each
    with only the keys that kind uses, so a key another kind takes is an error, not ignored.

    ``linear``, ``scaled_linear`` and ``cosine_discrete`` are tables of ``num_steps`` entries (DDPM,
    Stable Diffusion, improved DDPM); ``vp_linear``, ``cosine``, ``sigmoid`` and ``edm`` are
    continuous in time. Every kind takes ``shift_base_size``, which shifts log-SNR for the data size
    (simple diffusion), and ``zero_terminal_snr``, which rescales it to reach pure noise.
    :func:`schedule_config` validates a dict of any kind.
    """

    kind: str
    shift_base_size: float | None = Field(None, gt=0)
    zero_terminal_snr: bool = False


class LinearScheduleConfig(ScheduleConfig):
    """DDPM's linear betas (``beta_start``, ``beta_end``: the table's defaults when omitted)."""

    kind: Literal["linear"] = "linear"
    num_steps: int = Field(1000, ge=2)
    beta_start: float | None = Field(None, gt=0, lt=1)
    beta_end: float | None = Field(None, gt=0, lt=1)


class ScaledLinearScheduleConfig(ScheduleConfig):
    """Stable Diffusion's betas, linear in ``sqrt(beta)``."""

    kind: Literal["scaled_linear"] = "scaled_linear"
    num_steps: int = Field(1000, ge=2)
    beta_start: float | None = Field(None, gt=0, lt=1)
    beta_end: float | None = Field(None, gt=0, lt=1)


class CosineDiscreteScheduleConfig(ScheduleConfig):
    """Improved DDPM's cosine table."""

    kind: Literal["cosine_discrete"] = "cosine_discrete"
    num_steps: int = Field(1000, ge=2)


class VPLinearScheduleConfig(ScheduleConfig):
    """The continuous limit of DDPM's linear betas (the VP-SDE), with its default betas."""

    kind: Literal["vp_linear"] = "vp_linear"


class CosineScheduleConfig(ScheduleConfig):
    """The cosine schedule in continuous time, log-SNR clipped to ``[logsnr_min, logsnr_max]``."""

    kind: Literal["cosine"] = "cosine"
    logsnr_min: float = -15.0
    logsnr_max: float = 15.0


class SigmoidScheduleConfig(ScheduleConfig):
    """The sigmoid schedule, log-SNR clipped to ``[logsnr_min, logsnr_max]``."""

    kind: Literal["sigmoid"] = "sigmoid"
    logsnr_min: float = -15.0
    logsnr_max: float = 15.0


class EDMScheduleConfig(ScheduleConfig):
    """EDM's variance-exploding schedule from ``sigma_min`` to ``sigma_max``."""

    kind: Literal["edm"] = "edm"
    sigma_min: float = Field(0.002, gt=0)
    sigma_max: float = Field(80.0, gt=0)
    rho: float = Field(7.0, gt=0)


class FlowScheduleConfig(ScheduleConfig):
    """Rectified flow, ``x_t = (1 - t) x0 + t eps`` (``sigma = t / (1 - t)``), with ``t`` clamped to
    ``[t_min, t_max]`` for training draws and sampling grids; the schedule of ``parameterization: flow``."""

    kind: Literal["flow"] = "flow"
    t_min: float = Field(0.002, gt=0, lt=1)
    t_max: float = Field(0.99, gt=0, lt=1)

    @model_validator(mode="after")
    def _range(self) -> FlowScheduleConfig:
        if not self.t_min < self.t_max:
            raise PydanticCustomError(
                "t_range", f"t_max must exceed t_min={self.t_min}, got {self.t_max}", {"loc": ("t_max",)}
            )
        return self


SCHEDULE_CONFIGS: dict[str, type[ScheduleConfig]] = {
    c.model_fields["kind"].default: c
    for c in (
        LinearScheduleConfig,
        ScaledLinearScheduleConfig,
        CosineDiscreteScheduleConfig,
        VPLinearScheduleConfig,
        CosineScheduleConfig,
        SigmoidScheduleConfig,
        EDMScheduleConfig,
        FlowScheduleConfig,
    )
}
SCHEDULE_KINDS = tuple(SCHEDULE_CONFIGS)
DEFAULT_SCHEDULE_KIND = "linear"

# any kind's model, chosen by ``kind``
AnyScheduleConfig = Annotated[
    LinearScheduleConfig
    | ScaledLinearScheduleConfig
    | CosineDiscreteScheduleConfig
    | VPLinearScheduleConfig
    | CosineScheduleConfig
    | SigmoidScheduleConfig
    | EDMScheduleConfig
    | FlowScheduleConfig,
    Field(discriminator="kind"),
]


def _default_kind(v: Any) -> Any:
    """A schedule section without ``kind`` is the default kind's."""
    return {"kind": DEFAULT_SCHEDULE_KIND, **v} if isinstance(v, dict) and "kind" not in v else v


def schedule_config(d: dict[str, Any] | None = None, **kw: Any) -> ScheduleConfig:
    """The validated schedule model for a dict (or keywords) of any kind (``linear`` when ``kind`` is omitted)."""
    return _SCHEDULE_ADAPTER.validate_python(_default_kind({**(d or {}), **kw}))


_SCHEDULE_ADAPTER: TypeAdapter[ScheduleConfig] = TypeAdapter(AnyScheduleConfig)


class DiffusionConfig(StrictModel):
    """How the model is trained: schedule, what the network predicts, loss weighting, noise levels.

    ``parameterization: flow`` is rectified flow (the network predicts the velocity ``eps - x0``
    from ``(1 - t) x0 + t eps``); its schedule is ``kind: flow``, filled in when ``schedule`` (or
    its ``kind``) is omitted. SD3's recipe (Esser et al. 2024) adds ``noise_sampling:
    logit_normal`` with ``logit_mean``, ``logit_std`` and ``time_shift``; the ``uniform``
    weighting is then the velocity MSE.
    """

    schedule: AnyScheduleConfig = LinearScheduleConfig()
    parameterization: Literal["eps", "x0", "v", "edm", "flow"] = "eps"
    weighting: Literal["uniform", "min_snr", "snr_plus_one", "edm", "sigmoid", "flow"] = "uniform"
    noise_sampling: Literal["uniform_t", "log_normal", "logit_normal"] = "uniform_t"
    p_mean: float = -1.2
    p_std: float = Field(1.2, gt=0)
    # logit_normal: t = sigmoid(N(logit_mean, logit_std^2)) shifted by time_shift (Esser et al. 2024, eqs. 19, 23)
    logit_mean: float = 0.0
    logit_std: float = Field(1.0, gt=0)
    time_shift: float = Field(1.0, gt=0)
    min_snr_gamma: float = Field(5.0, gt=0)
    sigmoid_bias: float = 0.0
    sigma_data: float = Field(0.5, gt=0)
    # The network sees data_scale * x: the data's scale is part of the noise schedule (Chen 2023,
    # "On the importance of noise scheduling", input scaling; LDM's scale_factor). Samples are
    # divided by it again. Audio at -20 dBFS RMS (std 0.1) wants about 5 to look like images' 0.5.
    data_scale: float = Field(1.0, gt=0)
    noise_cond: Literal["t", "timestep", "logsnr", "log_sigma"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _flow_schedule(cls, data: Any) -> Any:
        """``parameterization: flow`` without a schedule kind gets the flow schedule."""
        if isinstance(data, dict) and data.get("parameterization") == "flow":
            sched = data.get("schedule")
            if sched is None:
                data = {**data, "schedule": {"kind": "flow"}}
            elif isinstance(sched, dict) and "kind" not in sched:
                data = {**data, "schedule": {"kind": "flow", **sched}}
        return data

    @field_validator("schedule", mode="before")
    @classmethod
    def _schedule_kind(cls, v: Any) -> Any:
        return _default_kind(v)


class TrainConfig(StrictModel):
    """The optimisation loop (see :class:`multidiff.train.Trainer`)."""

    steps: int = Field(10_000, ge=1)
    batch_size: int = Field(64, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(0, ge=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    grad_clip: float | None = Field(1.0, gt=0)
    # a step whose loss or gradient is NaN/Inf is skipped (weights, optimizer and EMA untouched);
    # this many in a row stop the run with a checkpoint of the last good state
    max_nonfinite_steps: int = Field(5, ge=1)
    ema_decay: float = Field(0.9999, ge=0, lt=1)
    ema_warmup: bool = True
    label_dropout: float = Field(0.1, ge=0, le=1)
    # auto: bf16 autocast on GPUs that support it, fp16 + loss scaling on older GPUs, fp32 on CPUs
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    compile: bool = False
    # the whole optimizer step as CUDA graphs: auto = on CUDA without DDP or fp16 (multidiff.cuda_graphs)
    cuda_graphs: bool | Literal["auto"] = "auto"
    device: str = "auto"
    threads: int | None = Field(None, ge=1)
    # torch.use_deterministic_algorithms: bit-identical reruns on GPUs too, at some speed
    deterministic: bool = False
    seed: int = 0
    num_workers: int = Field(0, ge=0)
    log_every: int = Field(50, ge=1)
    sample_every: int = Field(0, ge=0)
    checkpoint_every: int = Field(1000, ge=0)
    keep_checkpoints: int = Field(2, ge=1)
    metrics_format: Literal["csv", "jsonl"] = "csv"
    init_from: str | None = None
    progress: bool = True

    @field_validator("adam_betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError(f"both betas must lie in [0, 1), got {list(v)}")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v != "auto" and v.split(":")[0] not in ("cpu", "cuda", "mps", "xpu"):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N', 'mps' or 'xpu', got {v!r}")
        return v


class SampleConfig(StrictModel):
    """Sampling for periodic grids, ``multidiff sample``/``edit``/``eval`` and the library's
    :class:`~multidiff.pipeline.Pipeline` (each field is also a command-line flag)."""

    sampler: str = Field("dpmpp_2m", description="any of `multidiff samplers`")
    steps: int = Field(25, ge=1, description="sampler steps")
    grid: Literal["karras", "logsnr", "leading", "trailing", "linspace"] = Field("karras", description="sigma grid")
    sigma_min: float | None = Field(None, gt=0, description="smallest nonzero sigma (default: the schedule's)")
    sigma_max: float | None = Field(None, gt=0, description="largest sigma (default: the schedule's)")
    guidance_scale: float = Field(1.0, ge=0, description="classifier-free guidance scale (1 = none)")
    guidance_interval: tuple[float, float] | None = Field(
        None,
        description="guide only for SIGMA_LO < sigma <= SIGMA_HI, the conditional model alone elsewhere "
        "(Kynkäänniemi et al. 2024, 'Applying guidance in a limited interval')",
    )
    negative_class: int | str | None = Field(
        None, description="class to steer away from: guidance's negative condition instead of the null class"
    )
    prompt: str | list[str] | None = Field(
        None,
        description="text prompt of a text-conditioned model: one for all samples, or one per sample "
        "(default: the run's example captions in turn for sampling, the null text for edits); parts joined by "
        "' AND ' are composed (composable guidance: 'a small shape AND a cone lying on its side')",
    )
    negative_prompt: str | None = Field(
        None, description="text to steer away from: guidance's negative condition instead of the null text"
    )
    checker: str | None = Field(
        None,
        description="screen every generated batch before it is written: 'module:function' (fn(x, prompts=, "
        "labels=) -> flags) or 'classifier:CLASS[,CLASS]' (the run's data classifier); see multidiff.screening",
    )
    checker_action: Literal["replace", "drop"] = Field(
        "replace", description="what happens to a flagged output: replaced by zeros (data units) or dropped"
    )
    classifier_scale: float = Field(
        0.0,
        ge=0,
        description="classifier guidance on the denoiser's estimate by a classifier of the run's training data "
        "(trained once, cached; 0 = off)",
    )
    clip_denoised: float | None = Field(
        None,
        gt=0,
        description="clamp the denoiser's estimate to [-V, V] in data units at every step "
        "(DDPM's clip_denoised; for data that lies in a known range)",
    )
    num_samples: int = Field(64, ge=1, description="number of samples")
    batch_size: int = Field(256, ge=1, description="samples per network call")
    seed: int = Field(0, description="seed of the prior noise and of stochastic samplers")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="the network's autocast dtype (auto = bf16 on GPUs, fp32 on CPUs); the sampler's arithmetic stays fp32/64",
    )
    compile: bool = Field(False, description="torch.compile the network (pays off for many samples)")
    cuda_graphs: bool | Literal["auto"] = Field(
        "auto", description="replay the network's calls from CUDA graphs, one per batch shape (auto = on CUDA)"
    )
    options: dict[str, float | int | str | bool] = Field(
        {}, description="the sampler's own options, e.g. eta=0.5 (see the sampler's docstring)"
    )

    @field_validator("sampler")
    @classmethod
    def _sampler(cls, v: str) -> str:
        from .samplers import available_samplers

        if v not in available_samplers():
            raise ValueError(f"unknown sampler {v!r}; expected one of {', '.join(available_samplers())}")
        return v

    def with_overrides(self, **overrides: Any) -> SampleConfig:
        """A validated copy with the given fields replaced; ``None`` values leave a field as it is
        (how command-line flags that were not given arrive). An unknown name or a bad value raises
        :class:`ConfigError` naming ``sample.<key>`` and what is expected."""
        update = {k: v for k, v in overrides.items() if v is not None}
        unknown = sorted(set(update) - set(type(self).model_fields))
        if unknown:
            raise ConfigError(
                f"unknown sample option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                f"expected one of: {', '.join(sorted(type(self).model_fields))}"
            )
        if not update:
            return self
        try:
            return type(self).model_validate({**self.model_dump(), **update})
        except ValidationError as e:
            raise _format_errors(e, "sample", type(self), "(sample options)") from None

    @field_validator("guidance_interval")
    @classmethod
    def _interval(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not 0 <= v[0] < v[1]:
            raise ValueError(f"expected [sigma_lo, sigma_hi] with 0 <= sigma_lo < sigma_hi, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _options(self) -> SampleConfig:
        # options are keyword arguments of the sampler: a misspelt one fails here, not at the first sample
        from .samplers import SamplerOptionError, check_options

        try:
            check_options(self.sampler, self.options)
        except SamplerOptionError as e:
            raise PydanticCustomError("sampler_option", str(e), {"loc": ("options", e.key)}) from None
        return self


class AutoencoderConfig(StrictModel):
    """``task: autoencoder``: the :class:`~multidiff.autoencoder.AutoencoderKL` and its losses.

    A key a run does not give takes the modality's default
    (:meth:`~multidiff.modality.Modality.autoencoder_defaults`: which reconstruction losses its
    data wants, the downsampling that suits it), then the default here. Loss weights: ``l1``,
    ``l2`` (waveform / pixel / voxel error), ``stft`` (multi-resolution STFT over the last axis,
    FFT sizes ``stft_sizes``), ``surface`` (the error where ``|target| < surface_band`` or its sign
    changes: SDF and occupancy grids), ``kl_weight`` (KL per data element: LDM's unit, see
    :mod:`multidiff.autoencoder`), and a patch discriminator's hinge loss (``disc_weight``; 0 is
    none) from step ``disc_start`` on, adaptively weighted as LDM's with ``disc_adaptive``.
    ``holdout``: the seeded fraction of the data never trained on, which ``multidiff eval`` judges.
    """

    latent_channels: int = Field(4, ge=1)
    channels: int = Field(32, ge=1)
    channel_mult: list[int] = [1, 2, 4]
    num_res_blocks: int = Field(1, ge=1)
    # the downsampling factor: one int for every downsampling and axis, or a list with one entry per
    # downsampling (len(channel_mult) - 1 of them), each an int for every axis or one per axis
    factors: int | list[int | list[int]] = 2
    # space-to-depth before the first level (an int for every axis, or one per axis): part of the total factor
    patch_size: int | list[int] = 1
    mid_attention: bool = True
    head_channels: int = Field(64, ge=1)
    groups: int = Field(32, ge=1)
    odd_sizes: Literal["pad", "error"] = "pad"
    kl_weight: float = Field(1e-6, ge=0)
    l1: float = Field(1.0, ge=0)
    l2: float = Field(0.0, ge=0)
    stft: float = Field(0.0, ge=0)
    stft_sizes: list[int] = [2048, 1024, 512, 256, 128, 64, 32]
    surface: float = Field(0.0, ge=0)
    surface_band: float = Field(0.25, gt=0)
    disc_weight: float = Field(0.0, ge=0)
    disc_start: int = Field(0, ge=0)
    disc_adaptive: bool = False
    disc_channels: int = Field(32, ge=1)
    disc_layers: int = Field(3, ge=1)
    disc_lr: float | None = Field(None, gt=0)
    holdout: float = Field(0.1, ge=0, lt=1)

    @field_validator("channel_mult")
    @classmethod
    def _mult(cls, v: list[int]) -> list[int]:
        if not v or any(m < 1 for m in v):
            raise ValueError(f"channel_mult must be a non-empty list of positive ints, got {v}")
        return v

    @field_validator("factors")
    @classmethod
    def _factors(cls, v: int | list[int | list[int]]) -> int | list[int | list[int]]:
        for f in [v] if isinstance(v, int) else v:
            if (f < 1) if isinstance(f, int) else (not f or any(a < 1 for a in f)):
                raise ValueError(
                    f"each factor must be a positive int or a list of positive ints (one per axis), got {f}"
                )
        return v

    @field_validator("patch_size")
    @classmethod
    def _patch(cls, v: int | list[int]) -> int | list[int]:
        if (v < 1) if isinstance(v, int) else (not v or any(p < 1 for p in v)):
            raise ValueError(f"patch_size must be a positive int or a list of positive ints, one per axis, got {v}")
        return v

    @field_validator("stft_sizes")
    @classmethod
    def _sizes(cls, v: list[int]) -> list[int]:
        if not v or any(n < 2 for n in v):
            raise ValueError(f"stft_sizes must be a non-empty list of FFT sizes of at least 2, got {v}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> AutoencoderConfig:
        if isinstance(self.factors, list) and len(self.factors) != len(self.channel_mult) - 1:
            raise PydanticCustomError(
                "factors_levels",
                f"one factor per downsampling: len(channel_mult) - 1 = {len(self.channel_mult) - 1} of them "
                f"(channel_mult {self.channel_mult}), got {len(self.factors)}",
                {"loc": ("factors",)},
            )
        if not (self.l1 or self.l2 or self.stft or self.surface):
            raise PydanticCustomError(
                "no_reconstruction",
                "every reconstruction weight (l1, l2, stft, surface) is 0; give at least one",
                {"loc": ("l1",)},
            )
        return self


TASKS = ("diffusion", "autoencoder")


class LatentConfig(StrictModel):
    """``latent:``: a diffusion run on the latent grid of a trained autoencoder run (latent
    diffusion, Rombach et al. 2022; see :mod:`multidiff.latent`).

    ``autoencoder``: the autoencoder run folder (``task: autoencoder``; its newest checkpoint) or a
    checkpoint folder, relative to the working directory. ``scale``: ``auto`` fits LDM's
    ``scale_by_std`` (1 / std of the training latents, sec. 4.3.2), or a number. ``shift``: 0
    (LDM), ``auto`` (the latents' mean) or a number. ``posterior``: train on the posterior
    ``mean`` or on a fresh posterior ``sample`` per step (LDM). ``encode_batch_size``: examples per
    encoder call when the data set is encoded (once; cached under ``$MULTIDIFF_CACHE/latents``).
    """

    autoencoder: str = Field(min_length=1)
    scale: float | Literal["auto"] = "auto"
    shift: float | Literal["auto"] = 0.0
    posterior: Literal["mean", "sample"] = "mean"
    encode_batch_size: int = Field(64, ge=1)

    @field_validator("scale")
    @classmethod
    def _positive(cls, v: float | str) -> float | str:
        if v != "auto" and not v > 0:  # type: ignore[operator]
            raise ValueError(f"scale must be 'auto' or a positive number, got {v}")
        return v


class RunConfig(StrictModel):
    """A whole run. ``model`` and ``data`` are validated by the modality's adapter.

    ``task``: what the run trains: a ``diffusion`` model (``model`` is its network, ``diffusion`` how
    it is trained; the default) or an ``autoencoder`` for latent diffusion (``autoencoder`` is its
    network and losses, validated over the modality's defaults; no ``model`` or ``diffusion``).
    """

    modality: str
    task: Literal["diffusion", "autoencoder"] = "diffusion"
    out_dir: str = "runs/run"
    autoencoder: dict[str, Any] = {}
    model: dict[str, Any] = {}
    data: dict[str, Any] = {}
    diffusion: DiffusionConfig = DiffusionConfig()
    train: TrainConfig = TrainConfig()
    sample: SampleConfig = SampleConfig()
    # text conditioning (multidiff.text, multidiff.conditioning): the encoder of the captions
    # (kind learned | minilm | hf, default learned) and the caption dropout; needs data.captions
    text: TextConfig | None = None
    # latent diffusion (multidiff.latent): the autoencoder run whose latent grid the model is trained on
    latent: LatentConfig | None = None

    @field_validator("text", mode="before")
    @classmethod
    def _text_kind(cls, v: Any) -> Any:
        """A ``text`` section without ``kind`` is a learned encoder's (``text: {}`` too)."""
        return {"kind": "learned", **v} if isinstance(v, dict) and "kind" not in v else v

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        if self.task == "autoencoder":
            for key in ("model", "diffusion"):
                if key in self.model_fields_set and getattr(self, key) not in ({}, DiffusionConfig()):
                    raise PydanticCustomError(
                        "task_section",
                        f"an autoencoder run (task: autoencoder) has no {key} section; its network and losses "
                        "are the autoencoder section",
                        {"loc": (key,)},
                    )
        elif self.autoencoder:
            raise PydanticCustomError(
                "task_section",
                "the autoencoder section belongs to autoencoder runs; set task: autoencoder (this run's task is diffusion)",
                {"loc": ("autoencoder",)},
            )
        if self.latent is not None and self.task != "diffusion":
            raise PydanticCustomError(
                "task_section",
                f"a latent section belongs to diffusion runs (it names their autoencoder), not to task: {self.task}",
                {"loc": ("latent",)},
            )
        if self.latent is not None and self.diffusion.data_scale != 1.0:
            raise PydanticCustomError(
                "latent_scale",
                "a latent run's scale is latent.scale (auto: 1 / std of the latents); leave diffusion.data_scale at 1",
                {"loc": ("diffusion", "data_scale")},
            )
        d = self.diffusion
        if d.noise_cond == "timestep" and d.schedule.kind not in ("linear", "scaled_linear", "cosine_discrete"):
            raise PydanticCustomError(
                "noise_cond",
                f"'timestep' needs a discrete schedule (linear, scaled_linear, cosine_discrete), not {d.schedule.kind!r}",
                {"loc": ("diffusion", "noise_cond")},
            )
        if d.parameterization == "flow" and d.schedule.kind != "flow":
            # the network is conditioned on the flow time t = sigma / (1 + sigma), which is the time of
            # the flow schedule only
            raise PydanticCustomError(
                "flow_schedule",
                f"parameterization 'flow' needs schedule kind 'flow' (rectified flow's time), not {d.schedule.kind!r}",
                {"loc": ("diffusion", "schedule", "kind")},
            )
        if d.schedule.kind == "flow" and d.schedule.zero_terminal_snr:
            raise PydanticCustomError(
                "flow_terminal",
                "the flow schedule reaches pure noise at t = 1 already; raise its t_max instead",
                {"loc": ("diffusion", "schedule", "zero_terminal_snr")},
            )
        if d.time_shift != 1.0 and d.noise_sampling != "logit_normal":
            raise PydanticCustomError(
                "time_shift",
                f"time_shift shifts the logit-normal draws; it needs noise_sampling 'logit_normal', not {d.noise_sampling!r}",
                {"loc": ("diffusion", "time_shift")},
            )
        return self


@dataclass
class ResolvedConfig:
    """A validated run config with the adapter and its typed ``model`` and ``data`` sections."""

    run: RunConfig
    model: StrictModel
    data: StrictModel
    adapter: Modality
    source: str = "<dict>"
    # the resolved ``autoencoder`` section (the modality's defaults filled in) of task autoencoder
    autoencoder: AutoencoderConfig | None = None

    def to_json(self) -> dict[str, Any]:
        """The fully resolved config (defaults filled in), as saved beside every checkpoint; a
        run's sections of the other task are left out."""
        d = self.run.model_dump(mode="json")
        d["data"] = self.data.model_dump(mode="json")
        if self.autoencoder is not None:
            d["autoencoder"] = self.autoencoder.model_dump(mode="json")
            del d["model"], d["diffusion"]
        else:
            d["model"] = self.model.model_dump(mode="json")
            del d["autoencoder"]
        if d.get("latent") is None:  # a pixel run's saved config stays as it was
            d.pop("latent", None)
        return d


def _key(p: Any) -> str:
    """One key of a dotted path as shown: plain names and list positions as they are, any other
    key (empty, with a dot, a space, a colon or a control character) quoted, so the path is unambiguous."""
    return str(p) if isinstance(p, int) or re.fullmatch(r"[A-Za-z0-9_-]+", str(p)) else repr(p)


def _format_errors(err: ValidationError, prefix: str, model: type[StrictModel] | None, source: str) -> ConfigError:
    lines: list[str] = []
    merged: dict[tuple[str, str], int] = {}  # (path, value) -> line of a plain union's first failing member
    for e in err.errors():
        # a model validator's error may name the key it is about (ctx["loc"], below the model's own loc)
        raw = (*e["loc"], *e.get("ctx", {}).get("loc", ()))
        # a tagged union (diffusion.schedule) puts its tag in the loc: left out, named as "for kind ...";
        # a plain union (bool | 'auto') puts the member tried there: left out, its messages joined
        shown, tags, member = _untag(model, raw) if model is not None else (raw, [], False)
        loc = ".".join([prefix] * bool(prefix) + [_key(p) for p in shown])
        kind = f" for kind {tags[-1]!r}" if tags else ""
        if e["type"] == "extra_forbidden":
            expected = _fields_at(model, raw[:-1]) if model is not None else []
            hint = f"; expected one of: {', '.join(expected)}" if expected else ""
            line = f"{loc}: unknown key{kind} (value {e['input']!r}){hint}"
        elif e["type"] == "missing" and shown and isinstance(shown[-1], int):  # a tuple given too few items
            line = f"{loc.rpartition('.')[0]}: too few items (got {e['input']!r})"
        elif e["type"] == "missing":
            line = f"{loc}: missing required key"
        elif e["type"] == "union_tag_invalid":
            field, tag = str(e["ctx"]["discriminator"]).strip("'"), e["ctx"]["tag"]
            line = f"{loc}.{field}: unknown {field} {tag!r}; expected one of: {e['ctx']['expected_tags']}"
        else:
            msg = e["msg"].removeprefix("Value error, ")
            got = f" (got {e['input']!r})" if not isinstance(e["input"], dict) else ""
            if member and (loc, got) in merged:  # "Input should be a valid boolean or 'auto' (got [1])"
                i = merged[(loc, got)]
                lines[i] = f"{lines[i].removesuffix(got)} or {msg.removeprefix('Input should be ')}{got}"
                continue
            if member:
                merged[(loc, got)] = len(lines)
            line = f"{loc or '<top>'}: {msg}{got}"
        if line not in lines:
            lines.append(line)
    if len(lines) == 1:
        return ConfigError(f"invalid config {source}: {lines[0]}")
    return ConfigError(f"invalid config {source}, {len(lines)} problems:\n  " + "\n  ".join(lines))


def _unwrap(t: Any) -> Any:
    while get_origin(t) is Annotated:
        t = get_args(t)[0]
    return t


def _step(cur: Any, p: Any) -> tuple[Any, str]:
    """The annotation below ``cur`` at loc item ``p``, and what ``p`` is there: ``"tag"`` (a tagged
    union's tag), ``"member"`` (the member of a plain union pydantic tried, not a key) or ``"key"``."""
    cur = _unwrap(cur)
    if get_origin(cur) in (Union, types.UnionType):
        members = [_unwrap(m) for m in get_args(cur) if m is not type(None)]
        kinds = {
            m.model_fields["kind"].default: m
            for m in members
            if isinstance(m, type) and issubclass(m, StrictModel) and "kind" in m.model_fields
        }
        if p in kinds:
            return kinds[p], "tag"
        if len(members) == 1:  # X | None: pydantic names no member
            return _step(members[0], p)
        if isinstance(p, str) and not kinds:
            named = [m for m in members if _member_name(m) == p.split("[")[0]]
            return (named[0] if named else None), "member"
        return None, "key"
    if isinstance(cur, type) and issubclass(cur, StrictModel):
        f = cur.model_fields.get(p)
        return (f.annotation if f is not None else None), "key"
    args = get_args(cur)
    if get_origin(cur) is dict and len(args) == 2:
        return args[1], "key"
    if get_origin(cur) in (list, tuple) and args and isinstance(p, int):
        return (args[p] if get_origin(cur) is tuple and args[-1] is not Ellipsis and p < len(args) else args[0]), "key"
    return None, "key"


def _member_name(m: Any) -> str:
    """How pydantic names a union member in an error's loc, up to any ``[``: ``bool``, ``literal``, ``tuple``."""
    origin = get_origin(m)
    if origin is Literal:
        return "literal"
    return getattr(origin or m, "__name__", "")


def _untag(model: type[StrictModel], path: tuple[Any, ...]) -> tuple[tuple[Any, ...], list[str], bool]:
    """``path`` without the tags of tagged unions and the members of plain unions, the tags, and
    whether a plain union's member was left out."""
    cur: Any = model
    shown: list[Any] = []
    tags: list[str] = []
    member = False
    for p in path:
        cur, role = _step(cur, p)
        if role == "tag":
            tags.append(p)
        elif role == "member":
            member = True
        else:
            shown.append(p)
    return tuple(shown), tags, member


def _fields_at(model: type[StrictModel], path: tuple[Any, ...]) -> list[str]:
    """The keys a (nested) pydantic model accepts at ``path`` (whose tags pick a tagged union's member)."""
    cur: Any = model
    for p in path:
        cur, _ = _step(cur, p)
        if cur is None:
            return []
    cur = _unwrap(cur)
    return sorted(cur.model_fields) if isinstance(cur, type) and issubclass(cur, StrictModel) else []


def _parse_value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(d: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key.sub=value, got {item!r}")
        parts = key.strip().split(".")
        cur = d
        for i, p in enumerate(parts[:-1]):
            nxt = cur.setdefault(p, {})
            if nxt is None:
                nxt = cur[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {item}: {'.'.join(parts[: i + 1])} is {nxt!r}, not a section")
            cur = nxt
        cur[parts[-1]] = _parse_value(value)
    return d


def read_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        d = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of sections, got {type(d).__name__}")
    return d


def resolve_config(d: dict[str, Any], source: str = "<dict>") -> ResolvedConfig:
    """Validate a config dict: the core sections, then the adapter's ``model`` and ``data``."""
    try:
        run = RunConfig.model_validate(d)
    except ValidationError as e:
        raise _format_errors(e, "", RunConfig, source) from None
    try:
        adapter_cls = registry.load_modality(run.modality)
    except ValueError as e:
        raise ConfigError(f"invalid config {source}: modality: {e}") from None
    adapter = adapter_cls()
    sections = {}
    for name, cls in (("model", adapter.ModelConfig), ("data", adapter.DataConfig)):
        try:
            sections[name] = cls.model_validate(getattr(run, name))
        except ValidationError as e:
            raise _format_errors(e, name, cls, source) from None
    _check_text(run, sections["model"], sections["data"], adapter, source)
    if run.latent is not None:
        _check_latent_data(sections["data"], source)
    ae = None
    if run.task == "autoencoder":
        defaults = adapter.autoencoder_defaults(sections["data"]) if hasattr(adapter, "autoencoder_defaults") else {}
        try:
            ae = AutoencoderConfig.model_validate({**defaults, **run.autoencoder})
        except ValidationError as e:
            raise _format_errors(e, "autoencoder", AutoencoderConfig, source) from None
    return ResolvedConfig(run, sections["model"], sections["data"], adapter, source, ae)


def _check_latent_data(data: StrictModel, source: str) -> None:
    """A latent run trains on latents encoded once (cached); augmentations of the data (a data
    section's ``random_*`` keys: flips, polarity) happen in data space and would need every epoch
    encoded again, and a flipped latent is not the latent of the flipped data: refused by key."""
    on = [k for k, v in data.model_dump().items() if k.startswith("random_") and v]
    if on:
        raise ConfigError(
            f"invalid config {source}: data.{on[0]}: a latent run trains on the data set encoded once "
            "(cached latents), so data-space augmentation cannot be applied; set "
            + ", ".join(f"data.{k}: false" for k in on)
            + " (or train the autoencoder and the latent model on augmented data sets)"
        )


def _check_text(run: RunConfig, model: StrictModel, data: StrictModel, adapter: Modality, source: str) -> None:
    """A ``text`` section, the captions it reads and the model keys of cross-attention agree."""
    problems = []
    cross = [
        k for k in ("cross_attention_levels", "cross_attention_resolutions") if getattr(model, k, None) is not None
    ]
    if run.text is None:
        problems += [
            f"model.{k}: cross-attention needs a text section (text.kind: learned, minilm or hf)" for k in cross
        ]
    else:
        if run.task != "diffusion":
            problems.append(f"text: text conditioning is for diffusion runs, not task: {run.task}")
        if not getattr(data, "captions", False):
            has = "captions" in type(data).model_fields
            problems.append(
                f"text: a text section needs captioned data: set data.captions: true (got {getattr(data, 'captions', None)!r})"
                if has
                else f"text: the {adapter.name!r} modality's data section has no captions key, so it cannot condition on text"
            )
        if not isinstance(model, PresetModelConfig):
            problems.append(
                f"text: the {adapter.name!r} modality's model section ({type(model).__name__}) builds no cross-attention"
            )
    if problems:
        lines = "\n  ".join(problems)
        raise ConfigError(
            f"invalid config {source}: {problems[0]}"
            if len(problems) == 1
            else f"invalid config {source}, {len(problems)} problems:\n  {lines}"
        )


def load_config(path: str | Path, overrides: list[str] | None = None) -> ResolvedConfig:
    """Read a YAML run config, apply ``--set`` overrides and validate everything."""
    d = apply_overrides(read_yaml(path), list(overrides or []))
    return resolve_config(d, source=str(path))


def config_from_json(text: str) -> ResolvedConfig:
    """A config saved beside a checkpoint (any version: see :func:`migrate_config`), validated."""
    return resolve_config(migrate_config(json.loads(text)), source="<checkpoint>")


# Before the schedule section was one model per kind, checkpoints saved every kind's keys with these
# defaults (``diffusion.schedule`` of meta.json); the kind's own model ignored the others.
LEGACY_SCHEDULE_DEFAULTS: dict[str, Any] = {
    "num_steps": 1000,
    "beta_start": None,
    "beta_end": None,
    "logsnr_min": -15.0,
    "logsnr_max": 15.0,
    "sigma_min": 0.002,
    "sigma_max": 80.0,
    "rho": 7.0,
}


def migrate_config(d: dict[str, Any]) -> dict[str, Any]:
    """A config saved beside a checkpoint by an earlier version, in today's form (a copy; ``d`` is
    not changed). Only for saved configs: a user's YAML is never migrated.

    Earlier versions saved ``diffusion.schedule`` flat, with every kind's keys. The keys the saved
    ``kind`` does not take are dropped: those holding the old defaults silently, any other with a
    warning. Such a value was never used (the schedule was built from the kind's own keys only), so
    the model loads as it was trained.
    """
    sched = (d.get("diffusion") or {}).get("schedule")
    if not isinstance(sched, dict) or sched.get("kind", DEFAULT_SCHEDULE_KIND) not in SCHEDULE_CONFIGS:
        return d
    kind = sched.get("kind", DEFAULT_SCHEDULE_KIND)
    taken = SCHEDULE_CONFIGS[kind].model_fields
    stale = [k for k in sched if k not in taken and k in LEGACY_SCHEDULE_DEFAULTS]
    if not stale:
        return d
    changed = [k for k in stale if sched[k] != LEGACY_SCHEDULE_DEFAULTS[k]]
    if changed:
        warnings.warn(
            f"saved config: diffusion.schedule of kind {kind!r} held "
            f"{', '.join(f'{k}={sched[k]!r}' for k in changed)}, which that kind does not use; dropped",
            stacklevel=2,
        )
    schedule = {k: v for k, v in sched.items() if k not in stale}
    return {**d, "diffusion": {**d["diffusion"], "schedule": schedule}}


# --- config -> objects ------------------------------------------------------------------


def build_schedule(cfg: ScheduleConfig, size: float | None = None) -> S.Schedule:
    """The schedule a :class:`ScheduleConfig` describes; ``size`` is the data's side for shifting."""
    sched: S.Schedule
    if isinstance(cfg, (LinearScheduleConfig, ScaledLinearScheduleConfig)):
        betas = {k: v for k, v in (("beta_start", cfg.beta_start), ("beta_end", cfg.beta_end)) if v is not None}
        table = S.DiscreteSchedule.linear if cfg.kind == "linear" else S.DiscreteSchedule.scaled_linear
        sched = table(cfg.num_steps, **betas)
    elif isinstance(cfg, CosineDiscreteScheduleConfig):
        sched = S.DiscreteSchedule.cosine(cfg.num_steps)
    elif isinstance(cfg, VPLinearScheduleConfig):
        sched = S.LinearBetaSchedule()
    elif isinstance(cfg, CosineScheduleConfig):
        sched = S.CosineSchedule(cfg.logsnr_min, cfg.logsnr_max)
    elif isinstance(cfg, SigmoidScheduleConfig):
        sched = S.SigmoidSchedule(logsnr_min=cfg.logsnr_min, logsnr_max=cfg.logsnr_max)
    elif isinstance(cfg, EDMScheduleConfig):
        sched = S.EDMSchedule(cfg.sigma_min, cfg.sigma_max, cfg.rho)
    elif isinstance(cfg, FlowScheduleConfig):
        sched = S.FlowSchedule(cfg.t_min, cfg.t_max)
    else:
        raise ConfigError(
            f"diffusion.schedule: unknown kind {cfg.kind!r}; expected one of: {', '.join(SCHEDULE_KINDS)}"
        )
    if cfg.shift_base_size is not None:
        if size is None:
            raise ConfigError("diffusion.schedule.shift_base_size needs the data size")
        sched = S.ShiftedSchedule(sched, cfg.shift_base_size, size)
    if cfg.zero_terminal_snr:
        sched = S.zero_terminal_snr(sched)
    return sched


def noise_scale(noise_cond: str, schedule: S.Schedule | None = None) -> float:
    """Multiplier on the noise condition so its sinusoidal embedding spans about [0, 1000].

    A timestep of a T-step table is rescaled to DDPM's 1000 steps; time in [0, 1] by 1000;
    EDM's ``ln(sigma) / 4`` (about [-1.6, 1.1]) by 250; log-SNR (about [-20, 20]) by 25.
    """
    if noise_cond == "timestep":
        steps = schedule.num_steps if isinstance(schedule, S.DiscreteSchedule) else 1000
        return 999.0 / (steps - 1)
    return {"t": 1000.0, "log_sigma": 250.0, "logsnr": 25.0}[noise_cond]
