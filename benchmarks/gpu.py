"""The GPU run: the image config on one CUDA device, with and without its fast paths.

Run on a machine with CUDA, from the repository root::

    python -m benchmarks.gpu                       # every section (about 8 min on an H100)
    python -m benchmarks.gpu --sections train cli  # some of them

Sections (each prints a markdown table, and ``--out FILE`` collects them):

``train``  The engine's own training step (:class:`multidiff.train.Trainer`, AdamW, EMA, clipping)
           on ``configs/image_cifar10.yaml``: DDPM's 38M-parameter CIFAR-10 UNet, batch 128 of
           3x32x32. The data is the built-in digits at 3x32x32 (CIFAR-10's shape, no download: the
           speed does not depend on the pixels). fp32, bf16 autocast, channels-last, compile.
``cli``    ``multidiff train configs/image_cifar10.yaml`` exactly as a user runs it (bf16 + compile,
           as the config says), samples/s read from its metrics file, then ``multidiff sample``
           eager and ``--compile``.
``small``  The shipped CPU configs (digits, tones, shapes) eager against CUDA graphs (``train.cuda_graphs``):
           ms per step and weight drift, exact resume under graphs through the CLI, the digits config
           end to end, and sampling 1,000 digits graphed and eager.
``sampler`` The sampler's own cost per step against one network evaluation, and whether a sampler
           loop synchronises host and device (``torch.cuda.set_sync_debug_mode('error')``), with
           the CPU generator ``generate`` uses.
``ddp``    ``torchrun --nproc_per_node=1`` on the digits config: NCCL, DDP and compile together.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CIFAR = str(ROOT / "configs" / "image_cifar10.yaml")
DATA = ["data.source=digits", "data.channels=3", "data.size=32"]  # CIFAR-10's shape, built in
MULTIDIFF = [sys.executable, "-m", "multidiff"]  # the command line, in this interpreter


def _sync() -> None:
    torch.cuda.synchronize()


def section_train(out: Path, steps: int) -> str:
    from multidiff import config as C
    from multidiff.train import Trainer

    rows = []
    for precision, compile_, nhwc in [
        ("fp32", False, False),
        ("bf16", False, False),
        ("bf16", False, True),
        ("bf16", True, False),
        ("bf16", True, True),
    ]:
        torch._dynamo.reset()
        sets = DATA + [
            f"train.precision={precision}",
            f"train.compile={str(compile_).lower()}",
            "train.progress=false",
            "train.checkpoint_every=0",
        ]
        cfg = C.load_config(CIFAR, sets)
        cfg.run.out_dir = str(out / "train_section")
        tr = Trainer(cfg)
        tr.net.channels_last = nhwc
        batches = tr._loader()
        tr.net.train()
        t0 = time.perf_counter()
        for _ in range(3):  # warm-up (and compilation)
            tr.train_step(batches)
        _sync()
        warm = time.perf_counter() - t0
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(steps):
            tr.train_step(batches)
        _sync()
        dt = time.perf_counter() - t0
        sps = steps * cfg.run.train.batch_size / dt
        peak = torch.cuda.max_memory_allocated() / 2**20
        rows.append((precision, compile_, nhwc, sps, peak, warm))
        print(f"train {precision} compile={compile_} nhwc={nhwc}: {sps:.0f} samples/s", file=sys.stderr, flush=True)
        del tr, batches
        torch.cuda.empty_cache()
    base = rows[0][3]
    lines = [
        "| precision | compile | channels-last | train samples/s | vs fp32 eager | peak MiB | warm-up s |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for p, c, n, sps, peak, warm in rows:
        lines.append(f"| {p} | {c} | {n} | {sps:,.0f} | {sps / base:.2f} | {peak:,.0f} | {warm:.0f} |")
    return "\n".join(lines)


SMALL = {"digits": "image_digits", "tones": "audio_tones", "shapes": "voxel_shapes"}


def _small_trainer(out: Path, config: str, graphs: bool, extra: list[str] | None = None):
    from multidiff import config as C
    from multidiff.train import Trainer

    sets = [f"train.cuda_graphs={str(graphs).lower()}", "train.progress=false", "train.checkpoint_every=0"]
    cfg = C.load_config(str(ROOT / "configs" / f"{config}.yaml"), sets + (extra or []))
    cfg.run.out_dir = str(out / f"small_{config}_{graphs}")
    return Trainer(cfg)


def _weights(tr) -> list[torch.Tensor]:
    return [p.detach().float().clone() for p in (*tr.net.parameters(), *tr.ema.parameters())]


def _rel_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max() / x.abs().max().clamp(min=1e-12)) for x, y in zip(a, b))


def _resume_check(out: Path) -> str:
    from safetensors.torch import load_file

    digits = str(ROOT / "configs" / "image_digits.yaml")
    base = ["train.checkpoint_every=20", "train.sample_every=0", "train.cuda_graphs=true", "train.progress=false"]
    texts = []
    for det in ("false", "true"):
        sets = [f"--set={s}" for s in [*base, f"train.deterministic={det}"]]
        one, two = out / f"resume_one_{det}", out / f"resume_two_{det}"
        train = [*MULTIDIFF, "train", digits, *sets]
        try:
            _run([*train, "--set=train.steps=40", "--out-dir", str(one)])
            _run([*train, "--set=train.steps=20", "--out-dir", str(two)])
            _run([*train, "--set=train.steps=40", "--out-dir", str(two), "--resume"])
        except Exception as e:  # report, do not hide the rest
            texts.append(f"deterministic={det}: FAILED {type(e).__name__}: {str(e)[-800:]}")
            continue
        diffs = []
        for f in ("model.safetensors", "ema.safetensors"):
            a = load_file(str(one / "checkpoints" / "step_00000040" / f))
            b = load_file(str(two / "checkpoints" / "step_00000040" / f))
            diffs.append(_rel_diff([a[k].float() for k in a], [b[k].float() for k in a]))
            same = all(torch.equal(a[k], b[k]) for k in a)
            diffs.append(f"{'bit-identical' if same else 'not bit-identical'}")
        texts.append(
            f"train.deterministic={det}: model max rel. diff {diffs[0]:.1e} ({diffs[1]}), EMA {diffs[2]:.1e} ({diffs[3]})"
        )
    return "Exact resume under CUDA graphs (digits, 40 steps in one run against 20 + `--resume` to 40): " + "; ".join(
        texts
    )


def section_small(out: Path, steps: int) -> str:
    """The shipped small configs: the engine's step eager against CUDA graphs (same seed, same
    batches: steps per second and how far the weights drift apart), exact resume under graphs,
    `multidiff train configs/image_digits.yaml` end to end, and sampling 1,000 digits."""
    from multidiff.pipeline import generate, load_pipeline

    lines = [
        "| config | params | batch | eager ms/step | graphed ms/step | speed-up | weights after "
        f"{steps + 5} steps, max rel. diff | graphed warm-up s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, config in SMALL.items():
        res: dict[bool, tuple[float, float, list[torch.Tensor]]] = {}
        for graphs in (False, True):
            tr = _small_trainer(out, config, graphs)
            batches = tr._loader()
            tr.net.train()
            t0 = time.perf_counter()
            for _ in range(5):  # warm-up: the first graphed step is eager, the second captures
                tr.train_step(batches)
            _sync()
            warm = time.perf_counter() - t0
            t0 = time.perf_counter()
            for _ in range(steps):
                tr.train_step(batches)
            _sync()
            res[graphs] = ((time.perf_counter() - t0) / steps * 1e3, warm, _weights(tr))
            n_params = sum(p.numel() for p in tr.net.parameters())
            batch = tr.t.batch_size
            print(f"small {name} graphs={graphs}: {res[graphs][0]:.2f} ms/step", file=sys.stderr, flush=True)
            del tr, batches
        (e_ms, _, e_w), (g_ms, g_warm, g_w) = res[False], res[True]
        lines.append(
            f"| {name} (`configs/{config}.yaml`) | {n_params / 1e6:.2f}M | {batch} | {e_ms:.2f} | {g_ms:.2f} | "
            f"**{e_ms / g_ms:.1f}x** | {_rel_diff(e_w, g_w):.1e} | {g_warm:.1f} |"
        )

    # exact resume under graphs, as a user runs it: 40 steps in one go against 20, then --resume to 40
    lines += ["", _resume_check(out)]

    # the command a user runs, end to end, with its defaults (cuda_graphs auto)
    run = out / "digits_e2e"
    log, wall = _run([*MULTIDIFF, "train", str(ROOT / "configs" / "image_digits.yaml"), "--out-dir", str(run)])
    done = [ln for ln in log.splitlines() if ln.startswith("done")]
    lines += [
        "",
        f"`multidiff train configs/image_digits.yaml` (1000 steps, two sample grids, two checkpoints): "
        f"**{wall:.1f} s** wall, process start included; {done[-1] if done else log[-300:]}",
    ]

    # sampling 1,000 digits, 20 steps, guidance 3 (the config's), one batch: graphed and eager
    pipe = load_pipeline(str(run))
    rows = [
        "",
        "| sampling 1,000 digits (dpmpp_2m, 20 steps, guidance 3, batch 1000) | first call s | steady s |",
        "|---|---:|---:|",
    ]
    outs = {}
    for graphs in (False, True):
        times = []
        for _ in range(3):
            _sync()
            t0 = time.perf_counter()
            x, _ = generate(
                pipe.denoiser, pipe.info, n=1000, steps=20, guidance_scale=3.0, batch_size=1000, cuda_graphs=graphs
            )
            _sync()
            times.append(time.perf_counter() - t0)
        outs[graphs] = x
        rows.append(f"| cuda_graphs={graphs} | {times[0]:.2f} | {min(times[1:]):.2f} |")
    diff = float((outs[True] - outs[False]).abs().max())
    rows.append(f"\nGraphed against eager samples: max abs diff {diff:.1e} (bf16 autocast).")
    _, cli_wall = _run(
        [
            *MULTIDIFF,
            "sample",
            str(run),
            "-n",
            "1000",
            "--steps",
            "20",
            "--batch-size",
            "1000",
            "--out",
            str(out / "d.png"),
        ]
    )
    rows.append(
        f"`multidiff sample RUN -n 1000 --steps 20 --batch-size 1000`: {cli_wall:.1f} s wall, process start and model load included."
    )
    return "\n".join(lines + rows)


def _run(cmd: list[str], env: dict | None = None, timeout: int = 900) -> tuple[str, float]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p.stdout + p.stderr, dt


def section_cli(out: Path, steps: int) -> str:
    run = out / "cli_run"
    sets = [f"--set={s}" for s in DATA + [f"train.steps={steps}", "train.log_every=100", "train.progress=false"]]
    sets += ["--set=train.checkpoint_every=0", "--set=train.sample_every=0"]
    log, wall = _run([*MULTIDIFF, "train", CIFAR, *sets, "--out-dir", str(run)])
    print(log[-600:], file=sys.stderr)
    with open(run / "metrics.csv") as f:
        metrics = list(csv.DictReader(f))
    steady = [float(r["samples_per_s"]) for r in metrics[1:]]  # the first window holds the compilation
    lines = [
        f"`multidiff train configs/image_cifar10.yaml` ({', '.join(DATA)}, train.steps={steps}): "
        f"wall clock {wall:.0f} s for {steps} steps of batch 128, compilation included; "
        f"first 100 steps {float(metrics[0]['samples_per_s']):,.0f} samples/s (with compilation), "
        f"then median **{statistics.median(steady):,.0f} samples/s** (min {min(steady):,.0f}, max {max(steady):,.0f}).",
        "",
        "| `multidiff sample` (1024 samples, dpmpp_2m, 20 steps, batch 512, bf16 auto) | wall s | samples/s (after load) |",
        "|---|---:|---:|",
    ]
    for flags in ([], ["--compile"]):
        o, w = _run(
            [
                *MULTIDIFF,
                "sample",
                str(run),
                "-n",
                "1024",
                "--steps",
                "20",
                "--batch-size",
                "512",
                "--out",
                str(out / "s.png"),
                *flags,
            ]
        )
        took = float(o.split("sampled 1024 in ")[1].split("s")[0])
        lines.append(f"| {' '.join(flags) or 'eager'} | {w:.0f} | {1024 / took:,.0f} |")
    return "\n".join(lines)


def section_sampler() -> str:
    from multidiff import config as C
    from multidiff import grids as G
    from multidiff import samplers as SM
    from multidiff.pipeline import build_denoiser

    dev = torch.device("cuda")
    cfg = C.load_config(CIFAR, DATA)
    from multidiff.modality import DataInfo

    den = build_denoiser(cfg, DataInfo((3, 32, 32), 0)).to(dev).eval().requires_grad_(False)
    b = 512
    x = torch.randn(b, 3, 32, 32, device=dev)
    s = torch.full((b,), 3.0, device=dev)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(3):
            den(x, s)
        _sync()
        t0 = time.perf_counter()
        for _ in range(10):
            den(x, s)
        _sync()
    net_ms = (time.perf_counter() - t0) / 10 * 1e3
    lines = [
        f"One network evaluation (38M UNet, batch {b}, bf16, eager): {net_ms:.2f} ms.",
        "",
        "| sampler | generator | us/step (trivial denoiser) | overhead / network eval | syncs in loop |",
        "|---|---|---:|---:|---|",
    ]
    triv = lambda x, s, **c: x * 0.5  # noqa: E731
    n = 50
    grid = G.karras_sigmas(n, 0.002, 80.0)
    for name in ["euler", "ddim", "dpmpp_2m", "dpmpp_3m", "unipc", "heun", "euler_ancestral", "dpmpp_2m_sde", "ddpm"]:
        spec = SM.get_sampler(name)
        for gen in ("cpu", "cuda"):
            mk = lambda gen=gen: torch.Generator(device=gen).manual_seed(0)  # noqa: E731
            with torch.no_grad():
                spec.fn(triv, x, grid, generator=mk())
                _sync()
                t0 = time.perf_counter()
                reps = 3
                for _ in range(reps):
                    spec.fn(triv, x, grid, generator=mk())
                _sync()
                calls = n * (2 if name == "heun" else 1)
                us = ((time.perf_counter() - t0) / (reps * calls)) * 1e6
                # the trivial denoiser's own cost is included: an upper bound on the sampler's
                torch.cuda.set_sync_debug_mode("error")
                try:
                    spec.fn(triv, x, grid, generator=mk())
                    sync = "none"
                except RuntimeError as e:
                    sync = f"SYNC: {str(e)[:50]}"
                finally:
                    torch.cuda.set_sync_debug_mode(0)
            lines.append(f"| {name} | {gen} | {us:.0f} | {us / 1e3 / net_ms:.2%} | {sync} |")
    return "\n".join(lines)


def section_generate() -> str:
    """Steady-state sampling throughput of ``generate`` (compilation excluded), eager against compiled."""
    from multidiff import config as C
    from multidiff.modality import DataInfo
    from multidiff.pipeline import build_denoiser, generate

    cfg = C.load_config(CIFAR, DATA)
    info = DataInfo((3, 32, 32), 0)
    den = build_denoiser(cfg, info).to("cuda").eval().requires_grad_(False)
    lines = [
        "| generate (dpmpp_2m, 20 steps, batch 512, bf16) | samples/s, steady state | first call s |",
        "|---|---:|---:|",
    ]
    for compile_ in (False, True):
        torch._dynamo.reset()
        t0 = time.perf_counter()
        generate(den, info, n=512, steps=20, batch_size=512, compile=compile_)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        generate(den, info, n=2048, steps=20, batch_size=512, compile=compile_)
        rate = 2048 / (time.perf_counter() - t0)
        lines.append(f"| {'compile' if compile_ else 'eager'} | {rate:,.0f} | {first:.0f} |")
    return "\n".join(lines)


def section_ddp(out: Path) -> str:
    cfg = str(ROOT / "configs" / "image_digits.yaml")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=1",
        "-m",
        "multidiff",
        "train",
        cfg,
        "--set=train.steps=300",
        "--set=train.compile=true",
        "--set=train.progress=false",
        "--set=train.log_every=100",
        "--out-dir",
        str(out / "ddp_run"),
    ]
    log, wall = _run(cmd, env=env)
    head = [line for line in log.splitlines() if line.startswith(("multidiff train", "done"))]
    with open(out / "ddp_run" / "metrics.csv") as f:
        metrics = list(csv.DictReader(f))
    return (
        "`torchrun --standalone --nproc_per_node=1 -m multidiff train configs/image_digits.yaml "
        f"--set train.steps=300 --set train.compile=true`: exit 0 in {wall:.0f} s (NCCL process group, "
        f"DistributedDataParallel, compile). " + " / ".join(head) + f"; losses {[r['loss'][:6] for r in metrics]}"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sections", nargs="+", default=["train", "cli", "sampler", "ddp"])
    p.add_argument("--steps", type=int, default=30, help="timed steps per training variant")
    p.add_argument("--cli-steps", type=int, default=1000)
    p.add_argument("--small-steps", type=int, default=100, help="timed steps per small config and mode")
    p.add_argument("--work", default="/tmp/multidiff_gpu")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to run")
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    head = (
        f"Device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
        f"bf16 {torch.cuda.is_bf16_supported()}, date {time.strftime('%Y-%m-%d')}."
    )
    parts = [head]
    print(head, flush=True)
    for name in args.sections:
        t0 = time.perf_counter()
        try:
            if name == "train":
                text = section_train(work, args.steps)
            elif name == "cli":
                text = section_cli(work, args.cli_steps)
            elif name == "sampler":
                text = section_sampler()
            elif name == "generate":
                text = section_generate()
            elif name == "small":
                text = section_small(work, args.small_steps)
            elif name == "ddp":
                text = section_ddp(work)
            else:
                raise ValueError(f"unknown section {name!r}")
        except Exception as e:  # one failing section must not hide the others
            text = f"FAILED: {type(e).__name__}: {e}"
        text = f"### {name} ({time.perf_counter() - t0:.0f} s)\n\n{text}"
        print(text + "\n", flush=True)
        parts.append(text)
        if args.out:
            Path(args.out).write_text("\n\n".join(parts) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
