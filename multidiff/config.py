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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from . import registry
from . import schedules as S
from .modality import Modality, StrictModel

__all__ = [
    "ConfigError",
    "ScheduleConfig",
    "DiffusionConfig",
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


SCHEDULE_KINDS = ("linear", "scaled_linear", "cosine_discrete", "vp_linear", "cosine", "sigmoid", "edm")


class ScheduleConfig(StrictModel):
    """The training noise schedule (see :mod:`multidiff.schedules`).

    ``linear``, ``scaled_linear`` and ``cosine_discrete`` are tables of ``num_steps`` entries (DDPM,
    Stable Diffusion, improved DDPM); ``vp_linear``, ``cosine``, ``sigmoid`` and ``edm`` are
    continuous in time. ``shift_base_size`` shifts log-SNR for the data size (simple diffusion);
    ``zero_terminal_snr`` rescales it to reach pure noise.
    """

    kind: Literal["linear", "scaled_linear", "cosine_discrete", "vp_linear", "cosine", "sigmoid", "edm"] = "linear"
    num_steps: int = Field(1000, ge=2)
    beta_start: float | None = Field(None, gt=0, lt=1)
    beta_end: float | None = Field(None, gt=0, lt=1)
    logsnr_min: float = -15.0
    logsnr_max: float = 15.0
    sigma_min: float = Field(0.002, gt=0)
    sigma_max: float = Field(80.0, gt=0)
    rho: float = Field(7.0, gt=0)
    shift_base_size: float | None = Field(None, gt=0)
    zero_terminal_snr: bool = False


class DiffusionConfig(StrictModel):
    """How the model is trained: schedule, what the network predicts, loss weighting, noise levels."""

    schedule: ScheduleConfig = ScheduleConfig()
    parameterization: Literal["eps", "x0", "v", "edm"] = "eps"
    weighting: Literal["uniform", "min_snr", "snr_plus_one", "edm", "sigmoid"] = "uniform"
    noise_sampling: Literal["uniform_t", "log_normal", "logit_normal"] = "uniform_t"
    p_mean: float = -1.2
    p_std: float = Field(1.2, gt=0)
    min_snr_gamma: float = Field(5.0, gt=0)
    sigmoid_bias: float = 0.0
    sigma_data: float = Field(0.5, gt=0)
    # The network sees data_scale * x: the data's scale is part of the noise schedule (Chen 2023,
    # "On the importance of noise scheduling", input scaling; LDM's scale_factor). Samples are
    # divided by it again. Audio at -20 dBFS RMS (std 0.1) wants about 5 to look like images' 0.5.
    data_scale: float = Field(1.0, gt=0)
    noise_cond: Literal["t", "timestep", "logsnr", "log_sigma"] | None = None


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
    """Sampling for periodic grids and ``multidiff sample`` (command-line flags override it)."""

    sampler: str = "dpmpp_2m"
    steps: int = Field(25, ge=1)
    grid: Literal["karras", "logsnr", "leading", "trailing", "linspace"] = "karras"
    sigma_min: float | None = Field(None, gt=0)
    sigma_max: float | None = Field(None, gt=0)
    guidance_scale: float = Field(1.0, ge=0)
    # [sigma_lo, sigma_hi]: guide only for sigma_lo < sigma <= sigma_hi, the conditional model
    # alone elsewhere (Kynkäänniemi et al. 2024, "Applying guidance in a limited interval")
    guidance_interval: tuple[float, float] | None = None
    num_samples: int = Field(64, ge=1)
    batch_size: int = Field(256, ge=1)
    seed: int = 0
    # the network's autocast dtype while sampling (the sampler's own arithmetic stays float32/64)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    compile: bool = False
    # the network's calls replayed from CUDA graphs (one per batch shape): auto = on CUDA
    cuda_graphs: bool | Literal["auto"] = "auto"
    options: dict[str, float | int | str | bool] = {}

    @field_validator("sampler")
    @classmethod
    def _sampler(cls, v: str) -> str:
        from .samplers import available_samplers

        if v not in available_samplers():
            raise ValueError(f"unknown sampler {v!r}; expected one of {', '.join(available_samplers())}")
        return v

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


class RunConfig(StrictModel):
    """A whole run. ``model`` and ``data`` are validated by the modality's adapter."""

    modality: str
    out_dir: str = "runs/run"
    model: dict[str, Any] = {}
    data: dict[str, Any] = {}
    diffusion: DiffusionConfig = DiffusionConfig()
    train: TrainConfig = TrainConfig()
    sample: SampleConfig = SampleConfig()

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        d = self.diffusion
        if d.noise_cond == "timestep" and d.schedule.kind not in ("linear", "scaled_linear", "cosine_discrete"):
            raise ValueError(
                "diffusion.noise_cond: 'timestep' needs a discrete schedule (linear, scaled_linear, cosine_discrete)"
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

    def to_json(self) -> dict[str, Any]:
        """The fully resolved config (defaults filled in), as saved beside every checkpoint."""
        d = self.run.model_dump(mode="json")
        d["model"] = self.model.model_dump(mode="json")
        d["data"] = self.data.model_dump(mode="json")
        return d


def _format_errors(err: ValidationError, prefix: str, model: type[StrictModel] | None, source: str) -> ConfigError:
    lines = []
    for e in err.errors():
        # a model validator's error may name the key it is about (ctx["loc"], below the model's own loc)
        loc = ".".join(str(p) for p in (prefix, *e["loc"], *e.get("ctx", {}).get("loc", ())) if p != "")
        if e["type"] == "extra_forbidden":
            expected = _fields_at(model, e["loc"][:-1]) if model is not None else []
            hint = f"; expected one of: {', '.join(expected)}" if expected else ""
            lines.append(f"{loc}: unknown key (value {e['input']!r}){hint}")
        elif e["type"] == "missing":
            lines.append(f"{loc}: missing required key")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(
                f"{loc}: {msg} (got {e['input']!r})" if not isinstance(e["input"], dict) else f"{loc or '<top>'}: {msg}"
            )
    if len(lines) == 1:
        return ConfigError(f"invalid config {source}: {lines[0]}")
    return ConfigError(f"invalid config {source}, {len(lines)} problems:\n  " + "\n  ".join(lines))


def _fields_at(model: type[StrictModel], path: tuple[Any, ...]) -> list[str]:
    """The keys a (nested) pydantic model accepts at ``path``."""
    cur: Any = model
    for p in path:
        f = getattr(cur, "model_fields", {}).get(p)
        if f is None:
            return []
        cur = f.annotation
    return sorted(getattr(cur, "model_fields", {}))


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
    return ResolvedConfig(run, sections["model"], sections["data"], adapter, source)


def load_config(path: str | Path, overrides: list[str] | None = None) -> ResolvedConfig:
    """Read a YAML run config, apply ``--set`` overrides and validate everything."""
    d = apply_overrides(read_yaml(path), list(overrides or []))
    return resolve_config(d, source=str(path))


def config_from_json(text: str) -> ResolvedConfig:
    return resolve_config(json.loads(text), source="<checkpoint>")


# --- config -> objects ------------------------------------------------------------------


def build_schedule(cfg: ScheduleConfig, size: float | None = None) -> S.Schedule:
    """The schedule a :class:`ScheduleConfig` describes; ``size`` is the data's side for shifting."""
    k = cfg.kind
    betas = {k2: v for k2, v in (("beta_start", cfg.beta_start), ("beta_end", cfg.beta_end)) if v is not None}
    sched: S.Schedule
    if k == "linear":
        sched = S.DiscreteSchedule.linear(cfg.num_steps, **betas)
    elif k == "scaled_linear":
        sched = S.DiscreteSchedule.scaled_linear(cfg.num_steps, **betas)
    elif k == "cosine_discrete":
        sched = S.DiscreteSchedule.cosine(cfg.num_steps)
    elif k == "vp_linear":
        sched = S.LinearBetaSchedule()
    elif k == "cosine":
        sched = S.CosineSchedule(cfg.logsnr_min, cfg.logsnr_max)
    elif k == "sigmoid":
        sched = S.SigmoidSchedule(logsnr_min=cfg.logsnr_min, logsnr_max=cfg.logsnr_max)
    else:
        sched = S.EDMSchedule(cfg.sigma_min, cfg.sigma_max, cfg.rho)
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
