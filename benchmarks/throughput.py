"""Throughput benchmark: multidiff's UNets against their peers, side by side (image, audio, voxel).

Run from the repository root::

    python -m benchmarks.throughput                      # image, audio and voxel (about 15 min on 2 cores)
    python -m benchmarks.throughput --modality image     # image only (a few minutes on 2 cores)
    python -m benchmarks.throughput --modality audio     # audio only (about 4 min on 2 cores)
    python -m benchmarks.throughput --modality voxel --threads 1   # voxel only (about 6 min)
    python -m benchmarks.throughput --quick              # smoke run (about 2 min on 2 cores)
    python -m benchmarks.throughput --device cuda --compile --out results.md

Image models (``--modality image``): multidiff against diffusers' ``UNet2DModel``
    Both are the DDPM CIFAR-10 layout (Ho et al. 2020, appendix B) at half its width, so that a run
    fits on a small CPU: four levels of width ``64 * (1, 2, 2, 2)``, two residual blocks per level
    on the way down (three up), self-attention at level 1 only (16x16 for 32x32 inputs) and in the
    middle block, heads of 64 channels, GroupNorm(32), 3x3 convolutions, strided-convolution
    downsampling and nearest-neighbour + convolution upsampling. Both condition their residual
    blocks by scale-shift (multidiff always does; diffusers' ``resnet_time_scale_shift='scale_shift'``),
    so the two networks are the same function class and their parameter counts match (printed).
    multidiff: ``UNet(2, 3, channels=64, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
    attention_levels=(1,), head_channels=64)``, called as ``net(x, t)``. diffusers:
    ``UNet2DModel(block_out_channels=(64, 128, 128, 128), layers_per_block=2,
    down_block_types=(Down, AttnDown, Down, Down), attention_head_dim=64, ...)``, called as
    ``model(x, t).sample``. Both get the same input ``x`` (3 channels) and the same timesteps ``t``,
    floats drawn from 0..999.

Audio models (``--modality audio``): three waveform UNets on mono clips of ``--length`` samples
    (default 16384, about 1 s at 16 kHz), each configured the way its library builds a waveform
    model, with parameter counts matched to within 5% of ours (8.7 M; the table prints them and
    says so when a count is off by more). Their layouts differ, as the libraries' designs do: the
    comparison is at equal size, not of one function class.
    multidiff: the audio adapter's ``small`` preset as shipped, ``build_unet1d(AudioModelConfig(
    preset='small'), DataInfo((1, 16384), 0))``: five levels of width ``32 * (1, 2, 4, 4, 8)``,
    each dividing the length by 4 (16384 down to 64 positions), two residual blocks per level (three
    up), 3-wide convolutions, scale-shift conditioning in every block, self-attention (heads of 64)
    at levels 3 and 4 (256 and 64 positions) and in the middle block. Called as ``net(x, t)``.
    diffusers: ``UNet1DModel`` in the Dance Diffusion layout (Harmonai's ``DiffusionAttnUnet1D``,
    the layout of diffusers' Dance Diffusion checkpoints) at a smaller width: eight levels of
    ``(32, 32, 32, 64, 64, 128, 128, 192)`` channels that halve the length with a fixed cubic
    filter (16384 down to 128, the middle block at 64), three residual conv blocks (5-wide
    kernels, GroupNorm(1), GELU) per level, attention (heads of 32) at the last two levels and six
    times in the middle block; the time enters once, as 16 Gaussian Fourier features concatenated
    to the input (``extra_in_channels=16, time_embedding_dim=16, use_timestep_embedding=False``,
    Dance Diffusion's conditioning). Called as ``model(x, t / 1000).sample``: Dance Diffusion
    takes times in [0, 1] (the value does not change the cost).
    denoising-diffusion-pytorch: ``Unet1D(dim=42, dim_mults=(1, 2, 2, 4, 4, 8), channels=1)``:
    six levels that halve the length with a 4-wide strided convolution (16384 down to 512), two
    ResNet blocks (RMSNorm, scale-shift from the time embedding) per level, linear attention at
    every level and full attention (4 heads of 32) in the middle block. Called as ``model(x, t)``.
    Its default ``dim_mults=(1, 2, 4, 8)`` (``dim=48`` matches the size) would stop at 2048
    positions and attend over all of them in the middle block: 47 GFLOP per sample against 24,
    so the six-level layout is the fairer one for 16384-sample clips. All three get the same ``x``
    and ``t`` (floats drawn from 0..999).

Voxel models (``--modality voxel``): multidiff's 3D UNet against MONAI's ``DiffusionModelUNet``
    One model per voxel preset (``--voxel-presets``, default ``tiny small``), on one-channel grids
    of the preset's own resolution (tiny 16^3, small 32^3, base 64^3), class-conditional on both
    sides (6 classes, the built-in shapes set; labels ``i % 6``). Both follow the preset as the
    working tree defines it; the table's configuration column prints the widths.
    multidiff: the voxel adapter's preset as shipped, ``build_unet3d(VoxelModelConfig(preset=...),
    DataInfo((1, R, R, R), 6))``: every level halves all three axes (strided 3-wide convolution
    down, nearest + 3-wide convolution up), ``num_res_blocks`` residual blocks per level (one more
    up), scale-shift conditioning, GroupNorm with the largest group count <= 32 dividing the width,
    self-attention (``max(1, width // 64)`` heads) at the preset's attention levels and in the
    middle block. Called as ``net(x, t, labels)``. ``multidiff ckpt`` is the same network, same
    weights, with ``gradient_checkpointing=True`` (each level's blocks recomputed in the backward
    pass); it is only trained, since checkpointing does nothing without gradients.
    MONAI: ``DiffusionModelUNet(spatial_dims=3, in_channels=1, out_channels=1, channels=<our
    widths>, num_res_blocks=<ours>, attention_levels=<ours, as booleans>, num_head_channels=<per
    level, so that the head counts are ours>, norm_num_groups=<largest <= 32 dividing every
    width>, num_class_embeds=7)``, called as ``model(x, t, class_labels=labels)``. The layout is
    the same (DDPM's, like ours: strided-convolution down, nearest + convolution up, one more
    residual block up than down, an attention block after each residual block of the attention
    levels, a resnet-attention-resnet middle block, zero-initialised output convolutions), so the
    convolutions and their FLOPs are the same. The designs differ in three places. MONAI adds the
    time embedding to the activations (``h + proj(emb)``) where we scale and shift the normalised
    ones (the scale half of our per-block embedding projection is about 1.5% of our parameters).
    MONAI uses one GroupNorm group count for every width, we the largest <= 32 dividing each
    width. MONAI's attention is its default (``use_flash_attention=False``: einsum, softmax,
    einsum), ours ``scaled_dot_product_attention``. Both have 7 class embeddings: we keep one for
    the null class of classifier-free guidance. The ``base`` preset keeps its dropout of 0.1 on our
    side; MONAI's residual blocks have none.
    Inputs are v-prediction training pairs: ``x0`` a +-1 grid, ``eps`` Gaussian, ``t`` integer
    timesteps (as floats) in 0..999 on the cosine schedule, the network gets
    ``x_t = a x0 + s eps`` and is regressed on ``v = a eps - s x0`` (``a = sqrt(alpha_bar_t)``,
    ``s = sqrt(1 - alpha_bar_t)``).

Metrics, per model and input size (float32)
    train/s     training samples per second: ``zero_grad``, forward, MSE loss against a fixed random
                target, backward and an ``AdamW`` step (default hyper-parameters), at the training batch.
    sample/s    sampling samples per second: one forward under ``torch.inference_mode`` at the
                sampling batch (a sampler's network evaluation; the sampler's own cost is not included).
    params      number of parameters.
    GFLOP       floating-point operations of one forward per sample, counted by
                ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions and attention,
                2 per multiply-add; normalisations and element-wise operations are not counted).
    GFLOP train (voxel tables) the same count over a forward and backward pass at batch 1, so the
                recomputed forward of gradient checkpointing shows.
    peak MiB    the most memory allocated during one training step (or one sampling forward)
                above what was allocated before it, so the model, its optimizer state and the
                inputs are excluded and the gradients included. On CUDA from
                ``torch.cuda.max_memory_allocated``; on CPU from the allocation events of
                ``torch.profiler`` (``profile_memory=True``), i.e. the bytes of live tensors as
                torch's CPU allocator reports them, not the process's RSS.

How the time is taken
    The models alternate (A B A B ... for images, A B C A B C ... for audio): each repetition times
    every model once in turn, so slow phases of a shared machine hit all of them; a repetition is as
    many calls as needed to last at least ``--min-rep-s`` (on a 2-core CPU, one call). Warm-up
    calls come first and are not counted. A throughput is the median over repetitions; a ratio
    ours/theirs is the median of the per-repetition ratios, with their range. ``--compile`` wraps
    every model in ``torch.compile``. The voxel part runs fewer repetitions by default (7; a 32^3
    training step takes seconds on a CPU), and is best run with ``--threads 1`` on a shared machine.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import count_parameters, synchronize
from multidiff.nn import UNet

CHANNELS = 64
CHANNEL_MULT = (1, 2, 2, 2)
NUM_RES_BLOCKS = 2
ATTENTION_LEVEL = 1
HEAD_CHANNELS = 64
IN_CHANNELS = 3

# Audio: mono clips; the peers' layouts (see the module docstring), sized to our ``small`` preset.
AUDIO_CHANNELS = 1
AUDIO_PRESET = "small"
DANCE_BLOCK_OUT = (32, 32, 32, 64, 64, 128, 128, 192)
DANCE_ATTENTION_LEVELS = 2  # the last levels use AttnDownBlock1D / AttnUpBlock1D
DANCE_FOURIER_FEATURES = 16
LUCID_DIM = 42
LUCID_DIM_MULTS = (1, 2, 2, 4, 4, 8)
PARAM_TOLERANCE = 0.05
AUDIO_TRAIN_BATCH = 4

# Voxel: our presets at their own resolution, against MONAI's DiffusionModelUNet of the same layout.
VOXEL_RESOLUTION = {"tiny": 16, "small": 32, "base": 64}
VOXEL_BATCHES = {"tiny": (8, 16), "small": (2, 4), "base": (1, 2)}  # (train, sample) on a CPU
VOXEL_CLASSES = 6  # the built-in shapes set
VOXEL_PARAM_TOLERANCE = 0.02
VOXEL_REPS = 7
MONAI_FLASH_ATTENTION = False  # MONAI's default

Forward = Callable[[Tensor, Tensor], Tensor]


@dataclass
class Contender:
    """One model under test: its module, how to call it and the optimizer of its training step.

    ``eager`` is the plain call (FLOPs are counted on it); ``forward`` is what gets timed, the same
    call wrapped in ``torch.compile`` when ``compile_`` is set.
    """

    name: str
    module: nn.Module
    eager: Forward
    compile_: bool = False
    config: str = ""
    sampled: bool = True  # False: trained only (its sampling is another contender's)
    forward: Forward = field(init=False)
    optimizer: torch.optim.Optimizer = field(init=False)

    def __post_init__(self) -> None:
        self.forward = torch.compile(self.eager) if self.compile_ else self.eager
        self.optimizer = torch.optim.AdamW(self.module.parameters())


@dataclass
class Result:
    """Measurements of one model at one input size."""

    params: int
    gflop: float
    config: str = ""
    train_per_s: list[float] = field(default_factory=list)
    sample_per_s: list[float] = field(default_factory=list)
    train_peak: float = math.nan
    sample_peak: float = math.nan
    train_gflop: float = math.nan


def build_ours() -> nn.Module:
    return UNet(
        2,
        IN_CHANNELS,
        channels=CHANNELS,
        channel_mult=CHANNEL_MULT,
        num_res_blocks=NUM_RES_BLOCKS,
        attention_levels=(ATTENTION_LEVEL,),
        head_channels=HEAD_CHANNELS,
        dropout=0.0,
        num_classes=0,
    )


def build_theirs(size: int) -> nn.Module:
    from diffusers import UNet2DModel

    levels = len(CHANNEL_MULT)
    down = ["AttnDownBlock2D" if lvl == ATTENTION_LEVEL else "DownBlock2D" for lvl in range(levels)]
    up = ["AttnUpBlock2D" if lvl == ATTENTION_LEVEL else "UpBlock2D" for lvl in reversed(range(levels))]
    return UNet2DModel(
        sample_size=size,
        in_channels=IN_CHANNELS,
        out_channels=IN_CHANNELS,
        block_out_channels=tuple(CHANNELS * m for m in CHANNEL_MULT),
        layers_per_block=NUM_RES_BLOCKS,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        attention_head_dim=HEAD_CHANNELS,
        resnet_time_scale_shift="scale_shift",
        dropout=0.0,
    )


def contenders(size: int, device: torch.device, compile_: bool) -> list[Contender]:
    """Both image models on ``device``, from the same seed, optionally compiled."""
    torch.manual_seed(0)
    ours = build_ours().to(device)
    theirs = build_theirs(size).to(device)
    return [
        Contender("multidiff", ours, lambda x, t: ours(x, t), compile_),
        Contender("diffusers", theirs, lambda x, t: theirs(x, t).sample, compile_),
    ]


def build_ours_audio(length: int) -> nn.Module:
    from modalities.audio.adapter import AudioModelConfig, build_unet1d
    from multidiff.modality import DataInfo

    return build_unet1d(AudioModelConfig(preset=AUDIO_PRESET), DataInfo((AUDIO_CHANNELS, length), 0))


def build_dance(length: int) -> nn.Module:
    """diffusers' ``UNet1DModel`` in the Dance Diffusion layout (see the module docstring)."""
    from diffusers import UNet1DModel

    levels, attn = len(DANCE_BLOCK_OUT), DANCE_ATTENTION_LEVELS
    down = ["DownBlock1DNoSkip"] + ["DownBlock1D"] * (levels - 1 - attn) + ["AttnDownBlock1D"] * attn
    up = ["AttnUpBlock1D"] * attn + ["UpBlock1D"] * (levels - 1 - attn) + ["UpBlock1DNoSkip"]
    return UNet1DModel(
        sample_size=length,
        in_channels=AUDIO_CHANNELS,
        out_channels=AUDIO_CHANNELS,
        extra_in_channels=DANCE_FOURIER_FEATURES,
        time_embedding_type="fourier",
        time_embedding_dim=DANCE_FOURIER_FEATURES,
        flip_sin_to_cos=True,
        use_timestep_embedding=False,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        mid_block_type="UNetMidBlock1D",
        block_out_channels=DANCE_BLOCK_OUT,
    )


def build_lucid() -> nn.Module:
    from denoising_diffusion_pytorch import Unet1D

    return Unet1D(dim=LUCID_DIM, dim_mults=LUCID_DIM_MULTS, channels=AUDIO_CHANNELS)


def audio_contenders(length: int, device: torch.device, compile_: bool) -> tuple[list[Contender], list[str]]:
    """The three audio models on ``device`` (each from seed 0), and notes on any peer left out.

    A peer that cannot be imported, built or run on a ``(1, 1, length)`` clip is not timed; the
    note says why, and it appears in the table's notes.
    """
    blocks = "-".join(str(c) for c in DANCE_BLOCK_OUT)
    mults = ",".join(str(m) for m in LUCID_DIM_MULTS)
    dance_levels = len(DANCE_BLOCK_OUT)
    dance_attn = ", ".join(str(length >> lvl) for lvl in range(dance_levels - DANCE_ATTENTION_LEVELS, dance_levels))
    from modalities.audio.adapter import PRESETS

    preset = PRESETS[AUDIO_PRESET]
    ours_mult = ",".join(str(m) for m in preset["channel_mult"])
    ours_attn = ", ".join(str(length // preset["factor"] ** lvl) for lvl in preset["attention_levels"])
    specs: list[tuple[str, str, Callable[[], nn.Module], Callable[[nn.Module], Forward]]] = [
        (
            "multidiff",
            f"preset {AUDIO_PRESET}: {preset['channels']}x({ours_mult}), /{preset['factor']} per level, attention at {ours_attn} and mid",
            lambda: build_ours_audio(length),
            lambda m: lambda x, t: m(x, t),
        ),
        (
            "diffusers",
            f"UNet1DModel, Dance Diffusion layout: {blocks}, /2 per level, attention at {dance_attn} and mid ({length >> dance_levels})",
            lambda: build_dance(length),
            lambda m: lambda x, t: m(x, t / 1000).sample,
        ),
        (
            "denoising-diffusion-pytorch",
            f"Unet1D(dim={LUCID_DIM}, dim_mults=({mults})), /2 per level, linear attention, full attention in mid ({length >> (len(LUCID_DIM_MULTS) - 1)})",
            build_lucid,
            lambda m: lambda x, t: m(x, t),
        ),
    ]
    out: list[Contender] = []
    notes: list[str] = []
    probe_x = torch.randn(1, AUDIO_CHANNELS, length, device=device)
    probe_t = torch.full((1,), 500.0, device=device)
    for name, config, build, call in specs:
        torch.manual_seed(0)
        try:
            module = build().to(device)
            forward = call(module)
            with torch.no_grad():
                y = forward(probe_x, probe_t)
            if y.shape != probe_x.shape:
                raise ValueError(f"output shape {tuple(y.shape)} for input {tuple(probe_x.shape)}")
        except Exception as e:  # noqa: BLE001 - any failure is reported, not raised
            if name == "multidiff":
                raise
            notes.append(f"{name} not run at {length} samples: {type(e).__name__}: {e}")
            continue
        out.append(Contender(name, module, forward, compile_, config))
    return out, notes


def voxel_layout(preset: str) -> dict:
    """Our preset's network arguments and MONAI's ``DiffusionModelUNet`` arguments of the same layout."""
    from modalities.voxel.adapter import VoxelModelConfig

    r = VoxelModelConfig(preset=preset).resolved()
    if r["patch_size"] != 1:
        raise SystemExit(f"voxel preset {preset!r} folds patches into channels; MONAI has no such layout to match")
    widths = tuple(r["channels"] * m for m in r["channel_mult"])
    groups = max(g for g in range(1, 33) if all(w % g == 0 for w in widths))
    monai = {
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 1,
        "channels": widths,
        "num_res_blocks": r["num_res_blocks"],
        "attention_levels": tuple(lvl in r["attention_levels"] for lvl in range(len(widths))),
        # Our Attention uses max(1, width // head_channels) heads; MONAI takes channels per head.
        "num_head_channels": tuple(w // max(1, w // r.get("head_channels", 64)) for w in widths),
        "norm_num_groups": groups,
        "num_class_embeds": VOXEL_CLASSES + 1,
        "use_flash_attention": MONAI_FLASH_ATTENTION,
    }
    return {"ours": r, "widths": widths, "monai": monai}


CHECKPOINT_NORMS: bool | None = None  # --checkpoint-norms on|off overrides the voxel preset's value


def build_ours_voxel(preset: str, checkpointing: bool) -> nn.Module:
    from modalities.voxel.adapter import VoxelModelConfig, build_unet3d
    from multidiff.modality import DataInfo

    res = VOXEL_RESOLUTION[preset]
    extra = {} if CHECKPOINT_NORMS is None else {"checkpoint_norms": CHECKPOINT_NORMS}
    config = VoxelModelConfig(preset=preset, gradient_checkpointing=checkpointing, **extra)
    return build_unet3d(config, DataInfo((1, res, res, res), VOXEL_CLASSES))


def build_monai_voxel(preset: str) -> nn.Module:
    from monai.networks.nets import DiffusionModelUNet

    return DiffusionModelUNet(**voxel_layout(preset)["monai"])


def voxel_labels(batch: int, device: torch.device) -> Tensor:
    return (torch.arange(batch) % VOXEL_CLASSES).to(device)


def voxel_contenders(
    preset: str, max_batch: int, device: torch.device, compile_: bool
) -> tuple[list[Contender], list[str]]:
    """multidiff, multidiff with gradient checkpointing (same weights) and MONAI, for ``preset``."""
    lay = voxel_layout(preset)
    res = VOXEL_RESOLUTION[preset]
    labels = voxel_labels(max_batch, device)
    widths = "-".join(str(w) for w in lay["widths"])
    levels = len(lay["widths"])
    attn = ", ".join(f"{res >> lvl}^3" for lvl in lay["ours"]["attention_levels"])
    mid = f"{res >> (levels - 1)}^3"
    shared = f"{widths}, {lay['ours']['num_res_blocks']} res blocks/level (+1 up), attention at {attn} and mid ({mid})"
    torch.manual_seed(0)
    ours = build_ours_voxel(preset, False).to(device)
    ckpt = build_ours_voxel(preset, True).to(device)
    ckpt.load_state_dict(ours.state_dict())
    out = [
        Contender(
            "multidiff",
            ours,
            lambda x, t: ours(x, t, labels[: x.shape[0]]),
            compile_,
            f"preset {preset}: {shared}, scale-shift, GroupNorm(<=32), SDPA",
        ),
        Contender(
            "multidiff ckpt",
            ckpt,
            lambda x, t: ckpt(x, t, labels[: x.shape[0]]),
            compile_,
            "the same with gradient_checkpointing=True",
            sampled=False,
        ),
    ]
    notes: list[str] = []
    try:
        torch.manual_seed(0)
        theirs = build_monai_voxel(preset).to(device)
        call = lambda x, t: theirs(x, t, class_labels=labels[: x.shape[0]])  # noqa: E731
        probe = torch.randn(1, 1, res, res, res, device=device)
        with torch.no_grad():
            y = call(probe, torch.full((1,), 500.0, device=device))
        if y.shape != probe.shape:
            raise ValueError(f"output shape {tuple(y.shape)} for input {tuple(probe.shape)}")
    except Exception as e:  # noqa: BLE001 - reported in the notes, the rest still runs
        notes.append(f"monai not run for preset {preset}: {type(e).__name__}: {e}")
        return out, notes
    m = lay["monai"]
    out.append(
        Contender(
            "monai",
            theirs,
            call,
            compile_,
            f"DiffusionModelUNet: {shared}, additive time embedding, GroupNorm({m['norm_num_groups']}), "
            f"{'SDPA' if m['use_flash_attention'] else 'einsum attention'}",
        )
    )
    return out, notes


def make_voxel_inputs(
    batch: int, shape: tuple[int, ...], device: torch.device, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """``(x_t, t, v)``: v-prediction training pairs on the cosine schedule (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(batch, *shape, generator=g).sign()
    eps = torch.randn(batch, *shape, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g).float()
    f = torch.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2
    alpha_bar = (f / math.cos(0.008 / 1.008 * math.pi / 2) ** 2).clamp(1e-5, 1.0)
    a = alpha_bar.sqrt().view(-1, *([1] * len(shape)))
    s = (1 - alpha_bar).sqrt().view(-1, *([1] * len(shape)))
    return (a * x0 + s * eps).to(device), t.to(device), (a * eps - s * x0).to(device)


def make_inputs(
    batch: int, shape: tuple[int, ...], device: torch.device, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """``(x, timesteps, target)`` for samples of ``shape`` (channels first): the same for every model."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *shape, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g).float()
    target = torch.randn(batch, *shape, generator=g)
    return x.to(device), t.to(device), target.to(device)


AMP: torch.dtype | None = None  # --amp: autocast dtype of every model's forward (float32 when None)


def _autocast(x: Tensor):
    return torch.autocast(x.device.type, dtype=AMP) if AMP is not None else contextlib.nullcontext()


def train_step(c: Contender, x: Tensor, t: Tensor, target: Tensor) -> None:
    c.optimizer.zero_grad(set_to_none=True)
    with _autocast(x):
        loss = F.mse_loss(c.forward(x, t).float(), target)
    loss.backward()
    c.optimizer.step()


def sample_step(c: Contender, x: Tensor, t: Tensor) -> None:
    with torch.inference_mode(), _autocast(x):
        c.forward(x, t)


def flops_per_sample(c: Contender, x: Tensor, t: Tensor) -> float:
    """FLOPs of one forward, per sample (eager call, not the compiled wrapper)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = c.eager(x, t)
        del out
    return counter.get_total_flops() / x.shape[0]


def train_flops_per_sample(c: Contender, x: Tensor, t: Tensor, target: Tensor) -> float:
    """FLOPs of one forward and backward pass (no optimizer step), per sample."""
    with FlopCounterMode(display=False) as counter:
        F.mse_loss(c.eager(x, t), target).backward()
    c.module.zero_grad(set_to_none=True)
    return counter.get_total_flops() / x.shape[0]


def peak_bytes(fn: Callable[[], None], device: torch.device) -> float:
    """Most bytes allocated during ``fn()`` above what was allocated when it started."""
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return float(torch.cuda.max_memory_allocated(device) - base)
    if device.type != "cpu":
        return math.nan
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        if e.device_type() == torch.autograd.DeviceType.CPU:
            live += e.nbytes()
            peak = max(peak, live)
    return float(peak)


def interleaved_rates(
    fns: list[Callable[[], None]],
    batch: int,
    device: torch.device,
    *,
    warmup: int,
    reps: int,
    min_rep_s: float,
) -> list[list[float]]:
    """Samples/s of each ``fn`` (one call processes ``batch`` samples) per repetition, A B A B ..."""

    def timed(fn: Callable[[], None], calls: int) -> float:
        synchronize(device)
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        synchronize(device)
        return time.perf_counter() - start

    per_call = [math.inf] * len(fns)
    for _ in range(warmup):
        for i, fn in enumerate(fns):
            per_call[i] = timed(fn, 1)
    calls = [max(1, math.ceil(min_rep_s / s)) for s in per_call]
    rates: list[list[float]] = [[] for _ in fns]
    for _ in range(reps):
        for i, fn in enumerate(fns):
            rates[i].append(calls[i] * batch / timed(fn, calls[i]))
    return rates


def batches(size: int, args: argparse.Namespace) -> tuple[int, int]:
    """(training batch, sampling batch): 32 and 64 at 16x16, 16 and 32 at 32x32, ``512 / size`` in general."""
    train = args.train_batch or max(1, 512 // size)
    return train, args.sample_batch or 2 * train


def audio_batches(args: argparse.Namespace) -> tuple[int, int]:
    """(training batch, sampling batch) for audio clips: 4 and 8 unless given."""
    train = args.train_batch or AUDIO_TRAIN_BATCH
    return train, args.sample_batch or 2 * train


def measure(
    models: list[Contender],
    shape: tuple[int, ...],
    train_b: int,
    sample_b: int,
    args: argparse.Namespace,
    device: torch.device,
    *,
    inputs: Callable[..., tuple[Tensor, Tensor, Tensor]] = make_inputs,
    reps: int | None = None,
    train_flops: bool = False,
) -> dict[str, Result]:
    """Every measurement of ``models`` on samples of ``shape``, the timings interleaved across them.

    Models with ``sampled=False`` are only trained. ``train_flops`` also counts a forward and
    backward pass; ``reps`` overrides ``args.reps``.
    """
    xt, tt, target = inputs(train_b, shape, device)
    xs, ts, _ = inputs(sample_b, shape, device, seed=1)
    results = {
        c.name: Result(
            params=count_parameters(c.module), gflop=flops_per_sample(c, xs[:1], ts[:1]) / 1e9, config=c.config
        )
        for c in models
    }
    if train_flops:
        for c in models:
            results[c.name].train_gflop = train_flops_per_sample(c, xt[:1], tt[:1], target[:1]) / 1e9
    timing = {"warmup": args.warmup, "reps": reps or args.reps, "min_rep_s": args.min_rep_s}
    sampled = [c for c in models if c.sampled]
    train = interleaved_rates([lambda c=c: train_step(c, xt, tt, target) for c in models], train_b, device, **timing)
    sample = interleaved_rates([lambda c=c: sample_step(c, xs, ts) for c in sampled], sample_b, device, **timing)
    for c, tr in zip(models, train):
        r = results[c.name]
        r.train_per_s = tr
        c.optimizer.zero_grad(set_to_none=True)
        r.train_peak = peak_bytes(lambda c=c: train_step(c, xt, tt, target), device) / 2**20
    for c, sa in zip(sampled, sample):
        r = results[c.name]
        r.sample_per_s = sa
        r.sample_peak = peak_bytes(lambda c=c: sample_step(c, xs, ts), device) / 2**20
    return results


def measure_size(size: int, args: argparse.Namespace, device: torch.device) -> dict[str, Result]:
    models = contenders(size, device, args.compile)
    return measure(models, (IN_CHANNELS, size, size), *batches(size, args), args, device)


def measure_audio(args: argparse.Namespace, device: torch.device) -> tuple[dict[str, Result], list[str]]:
    models, notes = audio_contenders(args.length, device, args.compile)
    return measure(models, (AUDIO_CHANNELS, args.length), *audio_batches(args), args, device), notes


def voxel_batches(preset: str, args: argparse.Namespace) -> tuple[int, int]:
    """(training batch, sampling batch) for a voxel preset: tiny 8 / 16, small 2 / 4, base 1 / 2 unless given."""
    train = args.train_batch or VOXEL_BATCHES[preset][0]
    return train, args.sample_batch or (VOXEL_BATCHES[preset][1] if not args.train_batch else 2 * train)


def measure_voxel(preset: str, args: argparse.Namespace, device: torch.device) -> tuple[dict[str, Result], list[str]]:
    train_b, sample_b = voxel_batches(preset, args)
    models, notes = voxel_contenders(preset, max(train_b, sample_b), device, args.compile)
    res = VOXEL_RESOLUTION[preset]
    results = measure(
        models,
        (1, res, res, res),
        train_b,
        sample_b,
        args,
        device,
        inputs=make_voxel_inputs,
        reps=args.voxel_reps,
        train_flops=True,
    )
    return results, notes


def ratio_cell(ours: list[float], theirs: list[float]) -> str:
    """Median of the per-repetition ratios, with their range."""
    ratios = [a / b for a, b in zip(ours, theirs)]
    return f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"


def peak_kind(device: torch.device) -> str:
    return "CUDA max_memory_allocated" if device.type == "cuda" else "torch CPU allocations (profiler)"


def tables(results: dict[int, dict[str, Result]], args: argparse.Namespace, device: torch.device) -> str:
    lines = [
        "| model | size | batch (train / sample) | params | GFLOP/sample (fwd) | train samples/s | sample samples/s "
        "| train peak MiB | sample peak MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for size, by_model in results.items():
        train_b, sample_b = batches(size, args)
        for name, r in by_model.items():
            lines.append(
                f"| {name} | {size}x{size} | {train_b} / {sample_b} | {r.params:,} | {r.gflop:.3f} "
                f"| {statistics.median(r.train_per_s):.1f} | {statistics.median(r.sample_per_s):.1f} "
                f"| {r.train_peak:.0f} | {r.sample_peak:.0f} |"
            )
    lines += ["", "| size | train ours/theirs | sample ours/theirs |", "|---|---|---|"]
    for size, by_model in results.items():
        ours, theirs = by_model["multidiff"], by_model["diffusers"]
        lines.append(
            f"| {size}x{size} | {ratio_cell(ours.train_per_s, theirs.train_per_s)} "
            f"| {ratio_cell(ours.sample_per_s, theirs.sample_per_s)} |"
        )
    lines += [
        "",
        f"Batch column: training / sampling batch. Peak memory: {peak_kind(device)}, above what was allocated "
        f"before the step. Ratios: median of {args.reps} interleaved repetitions (range in brackets).",
    ]
    return "\n".join(lines)


def audio_tables(results: dict[str, Result], notes: list[str], args: argparse.Namespace, device: torch.device) -> str:
    train_b, sample_b = audio_batches(args)
    lines = [
        "| model | configuration | batch (train / sample) | params | GFLOP/sample (fwd) | train samples/s "
        "| sample samples/s | train peak MiB | sample peak MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r.config} | {train_b} / {sample_b} | {r.params:,} | {r.gflop:.2f} "
            f"| {statistics.median(r.train_per_s):.2f} | {statistics.median(r.sample_per_s):.2f} "
            f"| {r.train_peak:.0f} | {r.sample_peak:.0f} |"
        )
    ours = results["multidiff"]
    lines += ["", "| peer | params theirs/ours | train ours/theirs | sample ours/theirs |", "|---|---|---|---|"]
    for name, r in results.items():
        if name == "multidiff":
            continue
        size = r.params / ours.params
        lines.append(
            f"| {name} | {size:.3f} | {ratio_cell(ours.train_per_s, r.train_per_s)} "
            f"| {ratio_cell(ours.sample_per_s, r.sample_per_s)} |"
        )
        if abs(size - 1) > PARAM_TOLERANCE:
            notes.append(f"{name}'s parameter count is {size:.3f} times ours, outside the {PARAM_TOLERANCE:.0%} match.")
    lines += [
        "",
        f"Mono clips of {args.length} samples, float32. Batch column: training / sampling batch. Peak memory: "
        f"{peak_kind(device)}, above what was allocated before the step. Ratios: median of {args.reps} "
        f"interleaved repetitions (range in brackets).",
    ]
    lines += [f"Note: {n}" for n in notes]
    return "\n".join(lines)


def voxel_tables(
    results: dict[str, dict[str, Result]], notes: list[str], args: argparse.Namespace, device: torch.device
) -> str:
    def median_cell(values: list[float]) -> str:
        return f"{statistics.median(values):.2f}" if values else "(as multidiff)"

    def mib(v: float) -> str:
        return "-" if math.isnan(v) else f"{v:.0f}"

    lines = [
        "| preset | model | configuration | batch (train / sample) | params | GFLOP/sample fwd | GFLOP/sample train "
        "| train samples/s | sample samples/s | train peak MiB | sample peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for preset, by_model in results.items():
        res = VOXEL_RESOLUTION[preset]
        train_b, sample_b = voxel_batches(preset, args)
        for name, r in by_model.items():
            lines.append(
                f"| {preset} ({res}^3) | {name} | {r.config} | {train_b} / {sample_b} | {r.params:,} | {r.gflop:.2f} "
                f"| {r.train_gflop:.2f} | {median_cell(r.train_per_s)} | {median_cell(r.sample_per_s)} "
                f"| {mib(r.train_peak)} | {mib(r.sample_peak)} |"
            )
    lines += [
        "",
        "| preset | params monai/ours | train ours/monai | sample ours/monai | train peak ours/monai "
        "| sample peak ours/monai | train ckpt/monai | train ckpt/ours | train peak ckpt/monai |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for preset, by_model in results.items():
        ours, ckpt = by_model["multidiff"], by_model["multidiff ckpt"]
        theirs = by_model.get("monai")
        if theirs is None:
            lines.append(f"| {preset} | - | - | - | - | - | - | {ratio_cell(ckpt.train_per_s, ours.train_per_s)} | - |")
            continue
        size = theirs.params / ours.params
        lines.append(
            f"| {preset} | {size:.3f} | {ratio_cell(ours.train_per_s, theirs.train_per_s)} "
            f"| {ratio_cell(ours.sample_per_s, theirs.sample_per_s)} | {ours.train_peak / theirs.train_peak:.2f} "
            f"| {ours.sample_peak / theirs.sample_peak:.2f} | {ratio_cell(ckpt.train_per_s, theirs.train_per_s)} "
            f"| {ratio_cell(ckpt.train_per_s, ours.train_per_s)} | {ckpt.train_peak / theirs.train_peak:.2f} |"
        )
        if abs(size - 1) > VOXEL_PARAM_TOLERANCE:
            notes.append(
                f"monai's parameter count for {preset} is {size:.3f} times ours, outside the "
                f"{VOXEL_PARAM_TOLERANCE:.0%} match."
            )
    lines += [
        "",
        f"One-channel grids, float32, 6 classes on both sides. Batch column: training / sampling batch. Peak "
        f"memory: {peak_kind(device)}, above what was allocated before the step. Ratios: median of "
        f"{args.voxel_reps} interleaved repetitions (range in brackets); throughput ratios > 1 and memory "
        f"ratios < 1 favour the first-named.",
    ]
    lines += [f"Note: {n}" for n in notes]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--modality", choices=["image", "audio", "voxel", "all"], default="all", help="which part to run (default all)"
    )
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default cpu)")
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 32], help="square image sizes (default 16 32)")
    p.add_argument("--length", type=int, default=16384, help="audio clip length in samples (default 16384)")
    p.add_argument(
        "--voxel-presets",
        nargs="+",
        choices=list(VOXEL_RESOLUTION),
        default=["small"],
        help="voxel presets, each at its own resolution: small 32^3, base 64^3 (default small); tiny folds "
        "2^3 patches into channels, which MONAI cannot, so it has no FLOP-matched peer",
    )
    p.add_argument("--quick", action="store_true", help="1 warm-up call and 3 repetitions")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per model (default 15, voxel 7, quick 3)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up calls per model (default 2, quick 1)")
    p.add_argument("--min-rep-s", type=float, default=None, help="least seconds per repetition (default 0.5)")
    p.add_argument(
        "--train-batch",
        type=int,
        default=None,
        help="training batch (default 512 / size for images, 4 for audio, 8 / 2 / 1 for voxel tiny / small / base)",
    )
    p.add_argument("--sample-batch", type=int, default=None, help="sampling batch (default twice the training one)")
    p.add_argument("--threads", type=int, default=None, help="torch threads on CPU (default 2)")
    p.add_argument("--compile", action="store_true", help="torch.compile every model")
    p.add_argument(
        "--checkpoint-norms",
        choices=("preset", "on", "off"),
        default="preset",
        help="voxel models: recompute GroupNorm+SiLU in backward (default: as the preset says)",
    )
    p.add_argument("--amp", choices=("bf16",), default=None, help="run every model under bf16 autocast (GPU)")
    p.add_argument("--out", default=None, help="also write the markdown tables to this file")
    args = p.parse_args(argv)
    args.voxel_reps = args.reps or (3 if args.quick else VOXEL_REPS)
    args.reps = args.reps or (3 if args.quick else 15)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    args.min_rep_s = args.min_rep_s if args.min_rep_s is not None else (0.2 if args.quick else 0.5)
    return args


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    global AMP, CHECKPOINT_NORMS
    AMP = torch.bfloat16 if args.amp == "bf16" else None
    CHECKPOINT_NORMS = {"preset": None, "on": True, "off": False}[args.checkpoint_norms]
    if device.type == "cpu":
        torch.set_num_threads(args.threads or 2)
    peers = (
        (["diffusers"] if args.modality != "voxel" else [])
        + (["denoising-diffusion-pytorch"] if args.modality in ("audio", "all") else [])
        + (["monai"] if args.modality in ("voxel", "all") else [])
    )
    print(
        f"torch {torch.__version__}, "
        + ", ".join(f"{p} {package_version(p)}" for p in peers)
        + f", Python {platform.python_version()}, device {device}, threads {torch.get_num_threads()}, "
        f"compile {args.compile}, autocast {args.amp or 'none'}",
        file=sys.stderr,
    )
    start = time.perf_counter()
    parts: list[str] = []
    if args.modality in ("image", "all"):
        results: dict[int, dict[str, Result]] = {}
        for size in args.sizes:
            results[size] = measure_size(size, args, device)
            params = {name: r.params for name, r in results[size].items()}
            print(f"{size}x{size} done ({time.perf_counter() - start:.0f} s); parameters {params}", file=sys.stderr)
        parts.append(tables(results, args, device))
    if args.modality in ("audio", "all"):
        audio, notes = measure_audio(args, device)
        params = {name: r.params for name, r in audio.items()}
        print(f"audio done ({time.perf_counter() - start:.0f} s); parameters {params}", file=sys.stderr)
        parts.append(audio_tables(audio, notes, args, device))
    if args.modality in ("voxel", "all"):
        voxel: dict[str, dict[str, Result]] = {}
        voxel_notes: list[str] = []
        for preset in args.voxel_presets:
            voxel[preset], more = measure_voxel(preset, args, device)
            voxel_notes += more
            params = {name: r.params for name, r in voxel[preset].items()}
            print(f"voxel {preset} done ({time.perf_counter() - start:.0f} s); parameters {params}", file=sys.stderr)
        parts.append(voxel_tables(voxel, voxel_notes, args, device))
    report("\n\n".join(parts), start, args.out)


def report(text: str, start: float, out: str | None) -> None:
    """Print the tables (and the run's time to stderr); also write them to ``out`` when given."""
    print(text)
    print(f"\nTotal time: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
