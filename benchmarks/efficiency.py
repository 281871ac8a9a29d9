"""Efficiency benchmark: how much of this CPU's matmul peak each modality's UNet reaches, and where the time goes.

Run from the repository root::

    python -m benchmarks.efficiency                    # all six networks, 1 thread (about 4 min)
    python -m benchmarks.efficiency --quick            # smoke run (about 1.5 min)
    python -m benchmarks.efficiency --modality audio --threads 2 --out audio.md

Networks (float32, CPU), built exactly as a user gets them from the adapters' presets
    image tiny   ``build_unet(ImageModelConfig(preset='tiny'), DataInfo((1, 16, 16), 10))``: the built-in
                 digits of ``configs/image_digits.yaml`` (16x16, one channel, 10 classes).
    image small  ``build_unet(ImageModelConfig(preset='small'), DataInfo((3, 32, 32), 0))``: 32x32 RGB,
                 unconditional (CIFAR-10's shape); dropout 0.1 as in the preset.
    audio tiny   ``build_unet1d(AudioModelConfig(preset='tiny'), DataInfo((1, 2048), 8))``: the tones of
                 ``configs/audio_tones.yaml`` (2048 samples, 8 classes).
    audio small  ``build_unet1d(AudioModelConfig(preset='small'), DataInfo((1, 16384), 10))``: SC09's shape
                 (``configs/audio_sc09.yaml``: 16384 samples, 10 classes).
    voxel tiny   ``build_unet3d(VoxelModelConfig(preset='tiny'), DataInfo((1, 16, 16, 16), 6))``: the shapes
                 of ``configs/voxel_shapes.yaml`` (16^3, 6 classes, 2^3 patches folded into channels).
    voxel small  ``build_unet3d(VoxelModelConfig(preset='small'), DataInfo((1, 32, 32, 32), 6))`` (32^3,
                 6 classes, ``checkpoint_norms`` on as in the preset).
    Class-conditional networks are called ``net(x, t, labels)`` (labels ``i % classes``), the others
    ``net(x, t)``; ``t`` are timesteps drawn from 0..999.

Metrics
    matmul peak  the median GFLOP/s of float32 square matrix products (``2 n^3`` FLOPs each) of the sizes
                 ``--mm-sizes`` on the same number of threads: ``torch.mm`` (MKL in PyTorch's wheels),
                 before and after the networks, and NumPy's ``matmul`` (its own BLAS, OpenBLAS in
                 NumPy's wheels) in a subprocess with ``OPENBLAS_NUM_THREADS`` etc. set to the thread
                 count. "peak" is the best of all of them; "% peak" columns are of that, "% mm" of
                 ``torch.mm``'s best alone (on AMD Zen 2, MKL's sgemm reaches only about 75% of
                 OpenBLAS's, so "% mm" flatters).
    GFLOP/sample ``torch.utils.flop_counter.FlopCounterMode`` at batch 1: ``fwd`` one forward, ``train``
                 one forward and backward (convolutions, matmuls and attention, 2 FLOPs per
                 multiply-add; normalisation, element-wise work and the optimizer are not counted,
                 so the fractions below are of useful arithmetic).
    train        ``zero_grad``, forward, MSE loss against a fixed random target, backward and an ``AdamW``
                 step (default hyper-parameters) at the training batch; GFLOP/s = train GFLOP/sample *
                 samples/s, and "% peak" = GFLOP/s / matmul peak.
    sample       one forward under ``torch.no_grad`` in eval mode at the sampling batch, through the
                 :class:`multidiff.denoiser.Denoiser` wrapper (v-parameterization, cosine schedule) that a
                 sampler calls, i.e. one network evaluation as sampling pays it.
    conv+mm GFLOP/s  (time breakdown table) the step's counted FLOPs over the time the profiler puts in
                 convolution and matmul/attention ops: how fast the arithmetic runs while it runs.
    FLOP counts include the zero taps of padded convolutions (as every FLOP counter does); oneDNN
    skips most of them, so on small grids (voxel tiny: 8^3 to 2^3) a rate can pass the peak.
    Throughputs are medians over ``--reps`` repetitions, each at least ``--min-rep-s`` long, after
    ``--warmup`` calls.

Time breakdown (``torch.profiler``, CPU activity, one training step and one sampling step per network)
    Each op's self CPU time goes to a category: the op's own if it has one, else that of its nearest
    enclosing op that has one (so a view inside a convolution counts as convolution), and everything
    under ``Optimizer.step`` to "optimizer". convolution: ``conv*`` (``mkldnn_convolution``,
    ``convolution_backward``, ``slow_conv*``); matmul/attention: ``mm``, ``bmm``, ``addmm``, ``linear``,
    ``scaled_dot_product_*``, ``softmax``; normalization: ``group_norm``, ``native_group_norm(_backward)``,
    ``layer_norm``; elementwise: activations, arithmetic, ``cat``, ``copy_``, ``upsample_nearest*``,
    padding, reductions, the loss; other: views, allocation and autograd bookkeeping not inside any of
    those. "outside ops" is the step's wall time not covered by any op (Python, dispatch). Percentages
    are of the profiled step's wall time (the profiler itself adds a few per cent of small-op overhead).

Sampler overhead
    For each network, each sampler (``--samplers``) runs 20 steps on the Karras grid of the cosine
    schedule with the trivial denoiser ``x * 0.5`` on a tensor of the network's sampling batch and
    shape; its own cost is the run's wall time minus the trivial denoiser's calls (timed alone), the
    fastest of several runs. "us/step" is that cost per step; "%" is the cost of a whole run over the
    network evaluations it makes (``NFE * eval ms``; Heun makes two per step but the last), i.e. how
    much the sampler adds to a real sampling run. Target: under 1%.
"""

from __future__ import annotations

import argparse
import math
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date

import torch
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

from benchmarks.throughput import (
    Contender,
    count_parameters,
    flops_per_sample,
    interleaved_rates,
    make_inputs,
    report,
    train_flops_per_sample,
    train_step,
)

SAMPLERS = ("dpmpp_2m", "euler", "ddim", "heun", "unipc", "euler_ancestral", "dpmpp_2m_sde")
SAMPLER_STEPS = 20
CATEGORIES = ("convolution", "matmul/attention", "normalization", "elementwise", "optimizer", "other")


@dataclass(frozen=True)
class Spec:
    """One network: modality, preset, example shape, classes and the (train, sample) batches."""

    modality: str
    preset: str
    shape: tuple[int, ...]
    num_classes: int
    train_batch: int
    sample_batch: int

    @property
    def name(self) -> str:
        return f"{self.modality} {self.preset}"

    @property
    def input_text(self) -> str:
        c, *sp = self.shape
        return f"{c}x" + "x".join(str(s) for s in sp)

    def build(self) -> nn.Module:
        from multidiff.modality import DataInfo

        info = DataInfo(self.shape, self.num_classes)
        if self.modality == "image":
            from modalities.image.adapter import ImageModelConfig, build_unet

            return build_unet(ImageModelConfig(preset=self.preset), info)
        if self.modality == "audio":
            from modalities.audio.adapter import AudioModelConfig, build_unet1d

            return build_unet1d(AudioModelConfig(preset=self.preset), info)
        from modalities.voxel.adapter import VoxelModelConfig, build_unet3d

        return build_unet3d(VoxelModelConfig(preset=self.preset), info)


# Batches chosen so that one training step takes about 0.3-2 s on one thread of a 2-core AMD EPYC; the
# tiny ones are their configs' batch sizes. voxel small trains at batch 2 (about 5 s a step): at batch 1
# PyTorch's CPU convolution heuristic sends its 16^3 and 8^3 convolutions (N*C*D*H <= 20480) to the
# unfold + GEMM fallback ``slow_conv3d``, which made a step 20% slower per sample in our test.
SPECS: tuple[Spec, ...] = (
    Spec("image", "tiny", (1, 16, 16), 10, 64, 128),
    Spec("image", "small", (3, 32, 32), 0, 8, 16),
    Spec("audio", "tiny", (1, 2048), 8, 32, 64),
    Spec("audio", "small", (1, 16384), 10, 4, 8),
    Spec("voxel", "tiny", (1, 16, 16, 16), 6, 24, 48),
    Spec("voxel", "small", (1, 32, 32, 32), 6, 2, 4),
)


@dataclass
class Result:
    spec: Spec
    params: int = 0
    gflop_fwd: float = math.nan
    gflop_train: float = math.nan
    train_per_s: list[float] = field(default_factory=list)
    sample_per_s: list[float] = field(default_factory=list)
    breakdown: dict[str, dict[str, float]] = field(default_factory=dict)  # step -> category -> share
    eval_ms: float = math.nan
    sampler_us: dict[str, float] = field(default_factory=dict)
    sampler_pct: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Matmul peak


def matmul_peak(sizes: list[int], reps: int, min_rep_s: float) -> dict[int, float]:
    """Median GFLOP/s of float32 ``torch.mm`` per square size."""
    out = {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        c = torch.empty(n, n)
        flop = 2.0 * n**3
        rates = interleaved_rates(
            [lambda a=a, b=b, c=c: torch.mm(a, b, out=c)],
            1,
            torch.device("cpu"),
            warmup=1,
            reps=reps,
            min_rep_s=min_rep_s,
        )[0]
        out[n] = statistics.median(rates) * flop / 1e9
    return out


_NUMPY_MM = """
import json, statistics, sys, time
import numpy as np
sizes, reps, min_rep_s = json.loads(sys.argv[1])
out = {}
for n in sizes:
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    c = np.empty((n, n), dtype=np.float32)
    t0 = time.perf_counter(); np.matmul(a, b, out=c); per = time.perf_counter() - t0
    calls = max(1, int(min_rep_s / per) + 1)
    rates = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(calls):
            np.matmul(a, b, out=c)
        rates.append(calls * 2.0 * n**3 / (time.perf_counter() - t0) / 1e9)
    out[n] = statistics.median(rates)
print(json.dumps(out))
"""


def numpy_matmul_peak(sizes: list[int], reps: int, min_rep_s: float, threads: int) -> dict[int, float]:
    """Median GFLOP/s of NumPy's float32 ``matmul`` per size, in a subprocess limited to ``threads``
    BLAS threads; empty if NumPy cannot run."""
    import json
    import os

    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
        env[var] = str(threads)
    try:
        out = subprocess.run(
            [sys.executable, "-c", _NUMPY_MM, json.dumps([sizes, reps, min_rep_s])],
            capture_output=True,
            text=True,
            check=True,
            env=env,
            timeout=600,
        ).stdout
        return {int(k): v for k, v in json.loads(out.strip().splitlines()[-1]).items()}
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as e:
        print(f"numpy matmul not measured: {type(e).__name__}: {e}", file=sys.stderr)
        return {}


def numpy_blas() -> str:
    try:
        import numpy as np

        cfg = np.show_config(mode="dicts")
        return str(cfg["Build Dependencies"]["blas"]["name"])
    except Exception:  # noqa: BLE001 - only a label
        return "its BLAS"


# ---------------------------------------------------------------------------------------------
# Profiler breakdown


_PREFIXES = ("autograd::engine::evaluate_function: ", "aten::", "torch::autograd::")
_MATMUL = {"mm", "bmm", "addmm", "baddbmm", "matmul", "linear", "einsum", "softmax", "logsoftmax"}
_ELEMENTWISE = re.compile(
    r"^(silu|gelu|relu|sigmoid|tanh|mul|add|sub|rsub|div|addcmul|addcdiv|lerp|cat|copy|clone|contiguous|"
    r"upsample|mseloss|pow|sum|mean|fill|zero|where|neg|exp|cos|sin|sqrt|rsqrt|sign|constantpadnd|pad|"
    r"reflectionpad|replicationpad|tocopy|to|index|embedding|dropout|nativedropout|bernoulli|masked|clamp|"
    r"abs|square|maximum|minimum)"
)


def _base(name: str) -> str:
    for p in _PREFIXES:
        if name.startswith(p):
            name = name[len(p) :]
    name = name.lower().replace("_", "")
    name = re.sub(r"backward\d*$", "", name)
    return re.sub(r"\d+$", "", name)


def op_category(name: str) -> str | None:
    """The category of one profiler event by its name, or ``None`` (views, allocation, bookkeeping)."""
    if name.startswith("Optimizer.step"):
        return "optimizer"
    b = _base(name)
    if "conv" in b:
        return "convolution"
    if b in _MATMUL or "scaleddotproduct" in b or "attention" in b:
        return "matmul/attention"
    if b.endswith("groupnorm") or b.endswith("layernorm") or b.endswith("batchnorm"):
        return "normalization"
    if _ELEMENTWISE.match(b):
        return "elementwise"
    return None


def breakdown(fn: Callable[[], None]) -> dict[str, float]:
    """Shares of one call of ``fn``'s wall time per category (see the module docstring)."""
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    wall_us = (time.perf_counter() - start) * 1e6
    totals = dict.fromkeys(CATEGORIES, 0.0)
    cache: dict[int, str] = {}

    def category(e) -> str:  # noqa: ANN001 - torch.autograd.profiler_util.FunctionEvent
        key = id(e)
        if key not in cache:
            chain, p = [], e
            while p is not None:
                chain.append(p)
                p = p.cpu_parent
            if any(q.name.startswith("Optimizer.step") for q in chain):
                cache[key] = "optimizer"
            else:
                cache[key] = next((c for c in (op_category(q.name) for q in chain) if c), "other")
        return cache[key]

    events = list(prof.events())
    for e in events:
        totals[category(e)] += e.self_cpu_time_total
    covered = sum(totals.values())
    wall_us = max(wall_us, covered)
    shares = {k: v / wall_us for k, v in totals.items()}
    shares["outside ops"] = 1 - covered / wall_us
    shares["wall ms"] = wall_us / 1e3
    return shares


# ---------------------------------------------------------------------------------------------
# Sampler overhead


def trivial_denoiser(x: Tensor, sigma: Tensor, **_: object) -> Tensor:
    return x * 0.5


def trivial_us(shape: tuple[int, ...], calls: int = 200) -> float:
    """Microseconds per call of the trivial denoiser on ``shape`` (fastest of 5 rounds)."""
    x, s = torch.randn(shape), torch.ones(shape[0])
    for _ in range(10):
        trivial_denoiser(x, s)
    best = math.inf
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls // 5):
            trivial_denoiser(x, s)
        best = min(best, (time.perf_counter() - t0) / (calls // 5))
    return best * 1e6


def sampler_us_per_step(
    name: str, sigmas: Tensor, shape: tuple[int, ...], repeats: int, denoise_us: float
) -> tuple[float, int]:
    """The sampler's own microseconds per step (fastest run with the trivial denoiser, minus its calls) and its NFE."""
    from multidiff.samplers import NFECounter, get_sampler

    spec = get_sampler(name)
    x = float(sigmas[0]) * torch.randn(shape, generator=torch.Generator().manual_seed(0))
    best, nfe = math.inf, 0
    for _ in range(repeats + 1):  # the first is a warm-up
        counter = NFECounter(trivial_denoiser)
        gen = torch.Generator().manual_seed(0) if spec.stochastic else None
        t0 = time.perf_counter()
        spec.fn(counter, x, sigmas, generator=gen)
        best = min(best, time.perf_counter() - t0)
        nfe = counter.nfe
    steps = len(sigmas) - 1
    return max(0.0, best * 1e6 - nfe * denoise_us) / steps, nfe


# ---------------------------------------------------------------------------------------------
# Measurement


def measure(spec: Spec, args: argparse.Namespace) -> Result:
    from multidiff.denoiser import Denoiser
    from multidiff.grids import make_grid
    from multidiff.schedules import DiscreteSchedule

    device = torch.device("cpu")
    torch.manual_seed(0)
    net = spec.build()
    res = Result(spec, params=count_parameters(net))
    k = spec.num_classes
    max_b = max(spec.train_batch, spec.sample_batch)
    labels = (torch.arange(max_b) % k) if k else None

    def call(m: nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
        if k:
            return lambda x, t: m(x, t, labels[: x.shape[0]])
        return lambda x, t: m(x, t)

    c = Contender(spec.name, net, call(net))
    xt, tt, target = make_inputs(spec.train_batch, spec.shape, device)
    net.train()
    res.gflop_fwd = flops_per_sample(c, xt[:1], tt[:1]) / 1e9
    res.gflop_train = train_flops_per_sample(c, xt[:1], tt[:1], target[:1]) / 1e9

    timing = {"warmup": args.warmup, "reps": args.reps, "min_rep_s": args.min_rep_s}
    res.train_per_s = interleaved_rates([lambda: train_step(c, xt, tt, target)], spec.train_batch, device, **timing)[0]
    res.breakdown["train"] = breakdown(lambda: train_step(c, xt, tt, target))

    schedule = DiscreteSchedule.cosine(1000)
    den = Denoiser(net, schedule, "v").eval()
    xs = torch.randn(spec.sample_batch, *spec.shape, generator=torch.Generator().manual_seed(1))
    sig = torch.full((spec.sample_batch,), 2.0)
    cond = {"class_labels": labels[: spec.sample_batch]} if k else {}

    def sample_step() -> None:
        with torch.no_grad():
            den(xs, sig, **cond)

    res.sample_per_s = interleaved_rates([sample_step], spec.sample_batch, device, **timing)[0]
    res.breakdown["sample"] = breakdown(sample_step)
    res.eval_ms = 1e3 * spec.sample_batch / statistics.median(res.sample_per_s)

    sigmas = make_grid("karras", SAMPLER_STEPS, schedule=schedule)
    shape = (spec.sample_batch, *spec.shape)
    d_us = trivial_us(shape)
    for name in args.samplers:
        us, nfe = sampler_us_per_step(name, sigmas, shape, args.sampler_repeats, d_us)
        res.sampler_us[name] = us
        res.sampler_pct[name] = 100 * us * SAMPLER_STEPS / (nfe * res.eval_ms * 1e3)
    return res


# ---------------------------------------------------------------------------------------------
# Tables


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown CPU"


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def pct(v: float) -> str:
    return f"{100 * v:.0f}%" if v >= 0.005 else "<1%"


def tables(
    results: list[Result],
    mm_before: dict[int, float],
    mm_after: dict[int, float],
    mm_numpy: dict[int, float],
    args: argparse.Namespace,
) -> str:
    mm_peak = max(*mm_before.values(), *mm_after.values())
    peak = max(mm_peak, *mm_numpy.values()) if mm_numpy else mm_peak
    threads = torch.get_num_threads()
    th = f"{threads} thread{'s' if threads > 1 else ''}"
    lines = [
        f"CPU: {cpu_model()}, {th}; torch {torch.__version__}, Python {platform.python_version()}; "
        f"multidiff at {git_commit()}; {date.today().isoformat()}.",
        "",
        f"### Matmul peak ({th}, float32, median GFLOP/s)",
        "",
        f"| n | torch.mm before | torch.mm after | numpy ({numpy_blas()}) |",
        "|---|---:|---:|---:|",
    ]
    for n in mm_before:
        np_cell = f"{mm_numpy[n]:.1f}" if n in mm_numpy else "-"
        lines.append(f"| {n} | {mm_before[n]:.1f} | {mm_after[n]:.1f} | {np_cell} |")
    lines += [
        "",
        f'Peak used below: **{peak:.1f} GFLOP/s** ("% peak"); torch.mm\'s best: {mm_peak:.1f} ("% mm").',
        "",
        f"### Training and sampling steps ({th})",
        "",
        "| network | input | params | batch train / sample | GFLOP/sample fwd | GFLOP/sample train "
        "| train samples/s | train GFLOP/s | train % peak | train % mm | sample samples/s | sample GFLOP/s "
        "| sample % peak | sample % mm |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        s = r.spec
        tr, sa = statistics.median(r.train_per_s), statistics.median(r.sample_per_s)
        tg, sg = tr * r.gflop_train, sa * r.gflop_fwd
        lines.append(
            f"| {s.name} | {s.input_text} | {r.params:,} | {s.train_batch} / {s.sample_batch} | {r.gflop_fwd:.3f} "
            f"| {r.gflop_train:.3f} | {tr:.2f} | {tg:.1f} | **{100 * tg / peak:.0f}%** | {100 * tg / mm_peak:.0f}% "
            f"| {sa:.2f} | {sg:.1f} | **{100 * sg / peak:.0f}%** | {100 * sg / mm_peak:.0f}% |"
        )
    lines += [
        "",
        f"Medians of {args.reps} repetitions (at least {args.min_rep_s} s each) after {args.warmup} warm-up "
        "call(s). Train GFLOP/s: forward + backward FLOPs over the whole step's time, AdamW included.",
        "",
        "### Where the time goes (`torch.profiler`, share of one step's wall time)",
        "",
        "| network | step | wall ms | conv+mm GFLOP/s | convolution | matmul/attention | normalization "
        "| elementwise | optimizer | other | outside ops |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for step, sh in r.breakdown.items():
            flop = r.gflop_train * r.spec.train_batch if step == "train" else r.gflop_fwd * r.spec.sample_batch
            kernel_s = (sh["convolution"] + sh["matmul/attention"]) * sh["wall ms"] / 1e3
            cells = " | ".join(pct(sh[c]) for c in (*CATEGORIES, "outside ops"))
            lines.append(f"| {r.spec.name} | {step} | {sh['wall ms']:.0f} | {flop / kernel_s:.0f} | {cells} |")
    lines += [
        "",
        f"### Sampler overhead ({SAMPLER_STEPS} steps, Karras grid, trivial denoiser `x * 0.5`)",
        "",
        "| network | sample batch | eval ms | " + " | ".join(args.samplers) + " |",
        "|---|---:|---:|" + "---:|" * len(args.samplers),
    ]
    for r in results:
        cells = " | ".join(f"{r.sampler_us[n]:.0f} us ({r.sampler_pct[n]:.2f}%)" for n in args.samplers)
        lines.append(f"| {r.spec.name} | {r.spec.sample_batch} | {r.eval_ms:.1f} | {cells} |")
    worst = max((r.sampler_pct[n], r.spec.name, n) for r in results for n in args.samplers)
    lines += [
        "",
        "Cells: the sampler's own microseconds per step (the fastest of "
        f"{args.sampler_repeats} runs, trivial denoiser calls subtracted) and, in brackets, its cost over the "
        f"network evaluations of a {SAMPLER_STEPS}-step run. Largest: {worst[0]:.2f}% ({worst[2]} on {worst[1]}); "
        "target under 1%.",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modality", choices=["image", "audio", "voxel", "all"], default="all")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--quick", action="store_true", help="fewer repetitions and matmul sizes (about 1.5 min)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per step (default 7, quick 2)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up calls per step (default 2, quick 1)")
    p.add_argument("--min-rep-s", type=float, default=None, help="least seconds per repetition (default 0.5)")
    p.add_argument("--mm-sizes", type=int, nargs="+", default=None, help="matmul sizes (default 1024 2048 3072)")
    p.add_argument(
        "--samplers", nargs="+", default=list(SAMPLERS), help=f"samplers timed (default {' '.join(SAMPLERS)})"
    )
    p.add_argument("--out", default=None, help="also write the markdown tables to this file")
    args = p.parse_args(argv)
    args.reps = args.reps or (2 if args.quick else 7)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    args.min_rep_s = args.min_rep_s if args.min_rep_s is not None else (0.2 if args.quick else 0.5)
    args.mm_sizes = args.mm_sizes or ([1024, 2048] if args.quick else [1024, 2048, 3072])
    args.sampler_repeats = 3 if args.quick else 5
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    mm_reps = 3 if args.quick else 5
    mm_before = matmul_peak(args.mm_sizes, mm_reps, args.min_rep_s)
    mm_numpy = numpy_matmul_peak(args.mm_sizes, mm_reps, args.min_rep_s, args.threads)
    print(
        f"matmul: torch.mm {max(mm_before.values()):.1f}, numpy {max(mm_numpy.values(), default=math.nan):.1f} "
        f"GFLOP/s ({time.perf_counter() - start:.0f} s)",
        file=sys.stderr,
    )
    results = []
    for spec in SPECS:
        if args.modality not in ("all", spec.modality):
            continue
        results.append(measure(spec, args))
        r = results[-1]
        print(
            f"{spec.name} done ({time.perf_counter() - start:.0f} s): "
            f"train {statistics.median(r.train_per_s):.2f}/s, sample {statistics.median(r.sample_per_s):.2f}/s",
            file=sys.stderr,
        )
    mm_after = matmul_peak(args.mm_sizes, mm_reps, args.min_rep_s)
    report(tables(results, mm_before, mm_after, mm_numpy, args), start, args.out)


if __name__ == "__main__":
    main()
