"""A local diffusers model folder as a multidiff denoiser ``D(x, sigma, **cond) -> x0_hat``.

diffusers is optional: it is imported inside :func:`load_diffusers` only, so ``import multidiff``
never imports it. Nothing here downloads: folders are read with ``local_files_only=True``.

**Folders.** Either a pipeline folder, as ``DiffusionPipeline.save_pretrained`` writes it
(``model_index.json``, the model in ``unet/``, the scheduler in ``scheduler/scheduler_config.json``),
or a model folder (``config.json`` + weights, as ``ModelMixin.save_pretrained`` writes it) with its
scheduler config in the same folder (``scheduler_config.json``), in a ``scheduler/`` subfolder, or in
a ``scheduler/`` folder beside it (a pipeline's ``unet/`` folder given directly). Models:
:data:`MODELS`; schedulers: :data:`VP_SCHEDULERS` (every scheduler over an ``alphas_cumprod``
table) and :data:`FLOW_SCHEDULERS`. Anything else is refused with a :class:`DiffusersError`, one
line naming the file and what is supported.

**VP models** (DDPM-style schedulers). The scheduler config gives the betas (``linear``,
``scaled_linear``, ``squaredcos_cap_v2`` or ``trained_betas``; ``rescale_betas_zero_snr``), from
which ``alphas_cumprod`` is computed here in float64 (diffusers computes it in float32) and held as
a :class:`~multidiff.schedules.DiscreteSchedule`. Entry ``i`` has VE noise
``sigma_i = sqrt((1 - abar_i) / abar_i)``; the network saw ``x_t = sqrt(abar) x0 + sqrt(1 - abar) eps``,
which is the VE sample ``x = x0 + sigma eps`` times ``sqrt(abar) = 1 / sqrt(1 + sigma^2)``. So
``D(x, sigma) = c_skip x + c_out F(x / sqrt(1 + sigma^2), timestep(sigma))`` with the scalings of
:func:`multidiff.parameterization.scalings` (``epsilon`` -> ``eps``: ``D = x - sigma eps_hat``;
``v_prediction`` -> ``v``: ``D = a x_t - s v_hat`` with ``a = 1/sqrt(1+sigma^2)``, ``s = sigma a``;
``sample`` -> ``x0``: ``D = F``). The timestep of a sigma between table entries is interpolated
linearly in log-sigma (the table's log-SNR is ``-2 log sigma``), as k-diffusion's ``external.py``
does, and clamped to the table: a sigma outside the trained range gets the nearest trained
timestep (the input scaling and ``c_out`` still use the sigma asked for). ``clip_sample`` is
ignored (multidiff's ``clip_denoised`` sample option does it in data units when wanted).
Learned-variance models (``out_channels == 2 * in_channels``) have the second half split off:
with ``variance_type: learned_range`` it is kept as the improved-DDPM interpolation weight
(``Denoiser.with_variance``, the ``ddpm_learned_variance`` sampler), otherwise dropped.

**Flow-matching models** (``FlowMatchEulerDiscreteScheduler``). The model predicts the velocity
``v = eps - x0`` of ``x_t = (1 - t) x0 + t eps`` at ``timestep = T t``, ``T = num_train_timesteps``
(1000): diffusers' pipelines pass ``timesteps = sigmas * num_train_timesteps``, its ``sigmas`` being
``t``. The ``t`` of a sigma is clamped below at the table's least, ``1/T`` shifted. In the VE view divide by ``1 - t``:
``y = x_t / (1 - t) = x0 + sigma eps`` with ``sigma = t / (1 - t)``, so ``t = sigma / (1 + sigma)``,
``1 - t = 1 / (1 + sigma)`` and ``x_t = y / (1 + sigma)``. From ``x_t = x0 + t (eps - x0) = x0 + t v``:
``D(y, sigma) = x0_hat = x_t - t v_hat = y / (1 + sigma) - sigma / (1 + sigma) v_hat``, i.e.
``c_in = c_skip = 1 / (1 + sigma)``, ``c_out = -sigma / (1 + sigma)`` (:func:`flow_scalings`).
The scheduler's ``shift`` maps ``t -> shift t / (1 + (shift - 1) t)``, which is
``sigma -> shift * sigma``: a log-SNR shift by ``-2 log shift`` that changes where the grid puts its
steps, not what the network computes, so it enters :class:`DiffusersFlowSchedule` (the grids' range) only.
The table's noisiest entry is ``t = 1`` (``sigma = inf``); the VE view stops at the one before,
``sigma_max = shift (T - 1)``: its prior sample ``sigma_max z`` is ``x_t = t_max z`` with
``t_max = sigma_max / (1 + sigma_max)`` (0.9997 for shift 3), where diffusers starts from ``z``.
An Euler step in ``sigma`` on ``y`` is exactly diffusers' Euler step in ``t`` on ``x_t``:
``x_t + (t' - t) v`` with ``v = (x_t - D) / t`` is ``D + (t'/t)(x_t - D)``, and
``(1 - t') (D + (sigma'/sigma)(y - D))`` is the same (``tests/test_diffusers_interop.py``).

Conditions: ``class_labels`` and ``encoder_hidden_states`` are passed through to the network;
:attr:`DiffusersNet.condition` holds defaults (text embeddings for a whole sampling run) used when
a call does not pass them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import schedules as S
from .._util import append_dims, per_sample
from ..denoiser import Denoiser
from ..modality import DataInfo
from ..parameterization import Scalings, scalings

__all__ = [
    "DiffusersError",
    "DiffusersModel",
    "DiffusersNet",
    "FlowDenoiser",
    "DiffusersFlowSchedule",
    "FLOW_SCHEDULERS",
    "MODELS",
    "PREDICTION_TYPES",
    "VP_SCHEDULERS",
    "discrete_schedule",
    "flow_scalings",
    "is_diffusers_folder",
    "load_diffusers",
    "locate",
]

MODELS: tuple[str, ...] = ("UNet2DModel", "UNet1DModel", "UNet2DConditionModel")
# schedulers whose model convention is the alphas_cumprod table of the beta config: which one a
# folder names decides only how diffusers would sample, not what the network computes
VP_SCHEDULERS: tuple[str, ...] = (
    "DDPMScheduler",
    "DDIMScheduler",
    "PNDMScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler",
    "LMSDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "UniPCMultistepScheduler",
    "DEISMultistepScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
)
FLOW_SCHEDULERS: tuple[str, ...] = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")
PREDICTION_TYPES: dict[str, str] = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
BETA_SCHEDULES: tuple[str, ...] = ("linear", "scaled_linear", "squaredcos_cap_v2")


class DiffusersError(ValueError):
    """A folder multidiff cannot read as a diffusers model; the message is one line naming the file."""


def _one_line(text: object) -> str:
    lines = [s.strip() for s in str(text).strip().splitlines() if s.strip()]
    return lines[0] if lines else type(text).__name__


def _read_json(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DiffusersError(f"{path}: cannot read it as JSON: {_one_line(e)}") from None
    if not isinstance(d, dict):
        raise DiffusersError(f"{path}: expected a JSON object, got {type(d).__name__}")
    return d


def is_diffusers_folder(path: str | Path) -> bool:
    """Whether ``path`` looks like a diffusers folder: a ``model_index.json``, or a ``config.json``
    with diffusers' ``_class_name`` (cheap; reads one small file, imports nothing)."""
    p = Path(path)
    if (p / "model_index.json").is_file():
        return True
    cfg = p / "config.json"
    if not cfg.is_file():
        return False
    try:
        d = json.loads(cfg.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(d, dict) and "_class_name" in d


def _supported() -> str:
    return f"supported models: {', '.join(MODELS)}; schedulers: {', '.join(VP_SCHEDULERS + FLOW_SCHEDULERS)}"


def locate(path: str | Path) -> tuple[Path, Path]:
    """``(model folder, scheduler config file)`` of a diffusers folder (see the module docstring)."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise DiffusersError(
            f"{p}: not a folder; expected a diffusers pipeline folder (model_index.json) or model folder (config.json)"
        )
    index = p / "model_index.json"
    if index.is_file():
        meta = _read_json(index)
        comps = {k: v[1] for k, v in meta.items() if not k.startswith("_") and isinstance(v, list) and len(v) == 2}
        models = [k for k, cls in comps.items() if cls in MODELS]
        if not models:
            have = ", ".join(f"{k}: {v}" for k, v in comps.items()) or "none"
            raise DiffusersError(f"{index}: no supported model among its components ({have}); {_supported()}")
        name = "unet" if "unet" in models else models[0]
        sched = p / "scheduler" / "scheduler_config.json"
        if not sched.is_file():
            raise DiffusersError(f"{sched}: missing; a pipeline folder needs its scheduler's config there")
        return p / name, sched
    cfg = p / "config.json"
    if not cfg.is_file():
        raise DiffusersError(
            f"{p}: not a diffusers model folder (no model_index.json or config.json); "
            "expected a pipeline folder (model_index.json, unet/, scheduler/) or a model folder (config.json)"
        )
    candidates = (p / "scheduler_config.json", p / "scheduler" / "scheduler_config.json")
    candidates += (p.parent / "scheduler" / "scheduler_config.json",)
    for c in candidates:
        if c.is_file():
            return p, c
    raise DiffusersError(
        f"{cfg}: no scheduler config beside the model; looked for {', '.join(str(c) for c in candidates)}"
    )


# ---------------------------------------------------------------------------------------------
# Schedules


def discrete_schedule(cfg: Mapping[str, Any], source: str = "scheduler_config.json") -> S.DiscreteSchedule:
    """The ``alphas_cumprod`` table of a DDPM-style scheduler config, computed in float64.

    ``linear``: betas ``linspace(beta_start, beta_end, T)``; ``scaled_linear``: ``linspace`` of their
    square roots, squared; ``squaredcos_cap_v2``: Nichol & Dhariwal's cosine betas (``s = 0.008``,
    capped at 0.999); ``trained_betas``, when given, wins. ``rescale_betas_zero_snr``: Lin et al.
    2024, alg. 1, the last entry kept finite (:func:`multidiff.schedules.zero_terminal_snr`).
    """
    T = int(cfg.get("num_train_timesteps", 1000))
    b0, b1 = float(cfg.get("beta_start", 1e-4)), float(cfg.get("beta_end", 0.02))
    trained = cfg.get("trained_betas")
    kind = cfg.get("beta_schedule", "linear")
    try:
        if trained is not None:
            betas = torch.as_tensor(trained, dtype=torch.float64).reshape(-1)
        elif kind == "linear":
            betas = S.linear_betas(T, b0, b1)
        elif kind == "scaled_linear":
            betas = S.scaled_linear_betas(T, b0, b1)
        elif kind == "squaredcos_cap_v2":
            betas = S.cosine_betas(T)
        else:
            raise DiffusersError(
                f"{source}: beta_schedule {kind!r} is not supported; supported: {', '.join(BETA_SCHEDULES)}"
            )
        schedule = S.DiscreteSchedule.from_betas(betas)
        if cfg.get("rescale_betas_zero_snr"):
            schedule = S.zero_terminal_snr(schedule)
    except DiffusersError:
        raise
    except ValueError as e:
        raise DiffusersError(f"{source}: {_one_line(e)}") from None
    assert isinstance(schedule, S.DiscreteSchedule)
    return schedule


@dataclass(frozen=True)
class DiffusersFlowSchedule:
    """A flow-matching model's noise levels in the VE view, ``sigma = t / (1 - t)``, for grids.

    Schedule time ``tau`` in [0, 1] runs over diffusers' training table ``u = 1/T .. 1 - 1/T``
    (``u = 1/T + tau (1 - 2/T)``, before the shift), and ``sigma = shift * u / (1 - u)``, which is
    the shifted ``t = shift u / (1 + (shift - 1) u)`` seen as ``t / (1 - t)``. The network's own
    time comes from the sigma directly (:meth:`timestep`), not from ``tau``.
    """

    shift: float = 1.0
    num_train_timesteps: int = 1000
    vp: bool = False

    def __post_init__(self) -> None:
        if not self.shift > 0 or self.num_train_timesteps < 3:
            raise ValueError(f"need shift > 0 and at least 3 timesteps, got {self.shift}, {self.num_train_timesteps}")

    def _u(self) -> tuple[float, float]:
        T = self.num_train_timesteps
        return 1.0 / T, 1.0 - 1.0 / T

    def logsnr(self, t: Tensor) -> Tensor:
        t = t if isinstance(t, Tensor) else torch.tensor(t, dtype=torch.float64)
        lo, hi = self._u()
        u = lo + t.clamp(0, 1) * (hi - lo)
        return -2 * (math.log(self.shift) + torch.log(u) - torch.log1p(-u))

    def t_from_logsnr(self, lam: Tensor) -> Tensor:
        lam = lam if isinstance(lam, Tensor) else torch.tensor(lam, dtype=torch.float64)
        lo, hi = self._u()
        r = torch.exp(-0.5 * lam) / self.shift  # u / (1 - u)
        return ((r / (1 + r) - lo) / (hi - lo)).clamp(0, 1)

    @property
    def t_min(self) -> float:
        """The least flow time diffusers' table holds: ``1/T`` shifted."""
        u = 1.0 / self.num_train_timesteps
        return self.shift * u / (1 + (self.shift - 1) * u)

    def flow_time(self, sigma: Tensor) -> Tensor:
        """``t = sigma / (1 + sigma)`` clamped to the table's ``[t_min, 1]``."""
        return (sigma / (1 + sigma)).clamp(self.t_min, 1.0)

    def timestep(self, sigma: Tensor) -> Tensor:
        """The network's timestep at VE ``sigma``: ``T t`` (diffusers' ``sigmas * num_train_timesteps``)."""
        return self.num_train_timesteps * self.flow_time(sigma)


def flow_scalings(sigma: Tensor) -> Scalings:
    """``D(y, sigma) = c_skip y + c_out v_hat(c_in y)`` for a velocity ``v = eps - x0`` model: the
    ``flow`` row of :func:`multidiff.parameterization.scalings` (``c_in = c_skip = 1 / (1 + sigma)``,
    ``c_out = -sigma / (1 + sigma)``; module docstring)."""
    return scalings("flow", sigma, vp=False)


class FlowDenoiser(Denoiser):
    """A flow-matching network (velocity ``v = eps - x0`` at ``timestep = T t``) as a VE denoiser.

    A :class:`~multidiff.denoiser.Denoiser` with the scalings of :func:`flow_scalings` and the noise
    condition :meth:`DiffusersFlowSchedule.timestep`; everything that takes a ``Denoiser`` (compile, CUDA
    graphs, the pipeline) takes it.
    """

    def __init__(self, net: nn.Module, schedule: DiffusersFlowSchedule) -> None:
        super().__init__(net, schedule, "x0", noise_cond="t")
        self.parameterization = "flow"

    def scalings(self, sigma: Tensor) -> Scalings:
        return flow_scalings(sigma)

    def raw(self, x: Tensor, sigma: Tensor, **cond: Any) -> tuple[Tensor, Tensor | None, Scalings]:
        sigma = per_sample(sigma, x)
        sc = self.scalings(sigma)
        schedule = self.schedule
        assert isinstance(schedule, DiffusersFlowSchedule)
        c_noise = schedule.timestep(sigma.double()).to(x.dtype)
        return self.net(append_dims(sc.c_in, x.ndim) * x, c_noise, **cond), None, sc


# ---------------------------------------------------------------------------------------------
# The network


class DiffusersNet(nn.Module):
    """A diffusers UNet as a multidiff network ``net(x, timestep, **cond) -> output``.

    Passes ``class_labels`` (``UNet2DModel``, ``UNet2DConditionModel``) and
    ``encoder_hidden_states`` (``UNet2DConditionModel``); :attr:`condition` holds defaults for
    either, used when a call does not pass it (a batch of 1 is repeated to the call's batch).
    ``keep_channels`` output channels are returned (the variance half of a learned-variance model
    beyond them is dropped).

    ``graph_capture_checked = False``: sampling's ``cuda_graphs: auto`` runs it eagerly. Its
    capture has not been tried on a GPU, and :attr:`condition` would be read outside the graph's
    inputs (a tensor replaced there later would not be seen); ``cuda_graphs: true`` refuses it.
    """

    graph_capture_checked = False

    def __init__(self, unet: nn.Module, keep_channels: int, num_classes: int = 0) -> None:
        super().__init__()
        self.unet = unet
        self.kind = type(unet).__name__
        self.keep_channels = keep_channels
        self.num_classes = num_classes
        self.condition: dict[str, Tensor] = {}

    def forward(self, x: Tensor, timestep: Tensor, **cond: Any) -> Tensor:
        cond = {**self.condition, **{k: v for k, v in cond.items() if v is not None}}
        takes = {"UNet1DModel": (), "UNet2DModel": ("class_labels",)}.get(
            self.kind, ("class_labels", "encoder_hidden_states")
        )
        extra = sorted(set(cond) - set(takes))
        if extra:
            raise ValueError(f"a {self.kind} takes {', '.join(takes) or 'no condition'}, not {', '.join(extra)}")
        for k, v in cond.items():
            if isinstance(v, Tensor) and v.shape[0] == 1 and x.shape[0] > 1:
                cond[k] = v.expand(x.shape[0], *v.shape[1:])
        labels = cond.get("class_labels")
        if (
            self.num_classes
            and isinstance(labels, Tensor)
            and labels.device.type == "cpu"  # no host sync per step on a GPU
            and labels.numel()
            and int(labels.max()) >= self.num_classes
        ):
            raise ValueError(
                f"class label {int(labels.max())} is out of range: this {self.kind} has {self.num_classes} classes "
                "and no null class, so guidance needs a negative class (--negative-class)"
            )
        if self.kind == "UNet2DConditionModel" and "encoder_hidden_states" not in cond:
            raise ValueError(
                "a UNet2DConditionModel needs encoder_hidden_states (text embeddings): pass them as a condition "
                "or set DiffusersNet.condition['encoder_hidden_states']; the command line has no text encoder"
            )
        out = self.unet(x, timestep, **cond, return_dict=False)[0]
        return out[:, : self.keep_channels] if out.shape[1] > self.keep_channels else out


# ---------------------------------------------------------------------------------------------
# Loading


@dataclass
class DiffusersModel:
    """What :func:`load_diffusers` returns: the denoiser, the data it makes and where it came from.

    ``modality`` is the installed modality whose adapter lists the model's class in
    ``diffusers_classes`` (the image adapter a 2D UNet, the audio adapter a 1D one).
    """

    denoiser: Denoiser
    info: DataInfo
    modality: str
    model_dir: Path
    scheduler_config: Path
    config: dict[str, Any] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=dict)


def _model_config(model_dir: Path) -> tuple[Path, dict[str, Any]]:
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise DiffusersError(f"{cfg_path}: missing; a diffusers model folder holds config.json and its weights")
    cfg = _read_json(cfg_path)
    name = cfg.get("_class_name")
    if name is None:
        raise DiffusersError(f"{cfg_path}: not a diffusers model config (no _class_name); {_supported()}")
    if name not in MODELS:
        raise DiffusersError(f"{cfg_path}: model class {name!r} is not supported; {_supported()}")
    return cfg_path, cfg


def _check_scheduler(path: Path) -> dict[str, Any]:
    cfg = _read_json(path)
    name = cfg.get("_class_name")
    if name not in VP_SCHEDULERS + FLOW_SCHEDULERS:
        what = f"scheduler {name!r}" if name else "no _class_name"
        raise DiffusersError(f"{path}: {what} is not supported; {_supported()}")
    if name in VP_SCHEDULERS:
        pt = cfg.get("prediction_type", "epsilon")
        if pt not in PREDICTION_TYPES:
            raise DiffusersError(
                f"{path}: prediction_type {pt!r} is not supported; supported: {', '.join(PREDICTION_TYPES)}"
            )
        if cfg.get("timestep_type", "discrete") != "discrete":
            raise DiffusersError(
                f"{path}: timestep_type {cfg['timestep_type']!r} is not supported; supported: discrete"
            )
        if cfg.get("trained_betas") is None and cfg.get("beta_schedule", "linear") not in BETA_SCHEDULES:
            raise DiffusersError(
                f"{path}: beta_schedule {cfg.get('beta_schedule')!r} is not supported; "
                f"supported: {', '.join(BETA_SCHEDULES)} or trained_betas"
            )
    return cfg


def _size(value: Any, dims: int, source: Path) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * dims
    if isinstance(value, list | tuple) and len(value) == dims and all(isinstance(v, int) for v in value):
        return tuple(value)
    raise DiffusersError(f"{source}: sample_size {value!r} is not {dims} whole number(s)")


def modality_for(class_name: str, source: str = "") -> str:
    """The installed modality whose adapter lists ``class_name`` in ``diffusers_classes`` (the first
    by name if several do); :class:`DiffusersError` naming ``source`` if none does."""
    from ..registry import available_modalities, load_modality

    for name in available_modalities():
        if class_name in getattr(load_modality(name), "diffusers_classes", ()):
            return name
    raise DiffusersError(
        f"{source}: no installed modality takes a {class_name}'s samples (an adapter lists it in diffusers_classes)"
    )


def load_diffusers(
    path: str | Path, *, device: str | torch.device = "cpu", modality: str | None = None
) -> DiffusersModel:
    """Read a local diffusers folder as a multidiff denoiser (see the module docstring).

    Raises :class:`DiffusersError` (a ``ValueError``; exit 2 from the command line) with one line
    naming the file for a folder that is not a diffusers model, a model class or a scheduler that
    is not supported, or weights that cannot be read.
    """
    model_dir, sched_path = locate(path)
    cfg_path, cfg = _model_config(model_dir)
    sched = _check_scheduler(sched_path)
    try:
        import diffusers
    except ImportError:
        raise DiffusersError(
            f"{cfg_path}: reading diffusers models needs the diffusers package (pip install 'diffusers>=0.30')"
        ) from None
    cls_name = cfg["_class_name"]
    from diffusers.utils import is_accelerate_available

    try:
        # safetensors only: weights are never unpickled (a .bin-only folder is refused, named);
        # low_cpu_mem_usage only with accelerate, else diffusers warns on stderr
        unet = getattr(diffusers, cls_name).from_pretrained(
            str(model_dir),
            local_files_only=True,
            use_safetensors=True,
            low_cpu_mem_usage=is_accelerate_available(),
        )
    except Exception as e:  # diffusers raises OSError, ValueError, EnvironmentError, RuntimeError...
        raise DiffusersError(f"{model_dir}: cannot load the {cls_name}: {_one_line(e)}") from None
    unet = unet.float().eval().requires_grad_(False)

    c_in = int(cfg.get("in_channels", 0))
    c_out = int(cfg.get("out_channels") or c_in)
    if c_out not in (c_in, 2 * c_in):
        raise DiffusersError(
            f"{cfg_path}: out_channels {c_out} is neither in_channels ({c_in}) nor twice it (learned variance)"
        )
    learned_range = c_out == 2 * c_in and sched.get("variance_type") == "learned_range"
    flow = sched["_class_name"] in FLOW_SCHEDULERS
    num_classes = 0
    if cfg.get("num_class_embeds") and cfg.get("class_embed_type") is None:
        num_classes = int(cfg["num_class_embeds"])
    net = DiffusersNet(unet, c_out if learned_range and not flow else c_in, num_classes)

    den: Denoiser
    if flow:
        shift = float(sched.get("shift", 1.0))
        den = FlowDenoiser(net, DiffusersFlowSchedule(shift, int(sched.get("num_train_timesteps", 1000))))
    else:
        schedule = discrete_schedule(sched, str(sched_path))
        param = PREDICTION_TYPES[sched.get("prediction_type", "epsilon")]
        den = Denoiser(net, schedule, param, noise_cond="timestep", learned_variance=learned_range)

    dims = 1 if cls_name == "UNet1DModel" else 2
    extra: dict[str, Any] = {"diffusers": str(model_dir)}
    if dims == 1:
        extra["sample_rate"] = int(cfg.get("sample_rate") or 16000)
    info = DataInfo((c_in, *_size(cfg.get("sample_size"), dims, cfg_path)), num_classes, (), extra)
    den = den.to(torch.device(device)).eval().requires_grad_(False)
    return DiffusersModel(
        den, info, modality or modality_for(cls_name, str(cfg_path)), model_dir, sched_path, dict(cfg), sched
    )
