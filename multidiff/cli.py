"""The ``multidiff`` command line.

``multidiff train CONFIG``       trains the model a YAML config describes (``--set``, ``--resume``)
``multidiff sample CHECKPOINT``  samples a trained model with any sampler, guidance scale and class
``multidiff edit EDIT CHECKPOINT`` edits a file: inpaint, sdedit, invert, interpolate, diffedit
``multidiff demo``               trains a small model on built-in data on a CPU and writes what it made
``multidiff plot WHAT``          plots schedules, forward noising or loss curves (a PNG)
``multidiff samplers``           lists the registered samplers
``multidiff modalities``         lists the installed modality adapters

Exit codes: 0 success, 1 a failure while running, 2 bad input (config, paths, arguments).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from . import grids, registry
from . import samplers as SM
from .testing import GaussianMixture, sliced_wasserstein


def _cmd_samplers(_: argparse.Namespace) -> int:
    print(f"{'name':<24}{'order':>6}  {'stochastic':<11}{'NFE for n steps':<17}summary")
    for name in SM.available_samplers():
        spec = SM.get_sampler(name)
        nfe = "adaptive" if spec.nfe is None else ("n" if spec.nfe(7) == 7 else f"{spec.nfe(7)} for n=7")
        print(f"{name:<24}{spec.order:>6}  {str(spec.stochastic):<11}{nfe:<17}{spec.summary}")
    return 0


def _cmd_modalities(_: argparse.Namespace) -> int:
    eps = registry.modality_entry_points()
    if not eps:
        print(f"no modality adapters installed (entry-point group {registry.GROUP!r})")
    for name, ep in sorted(eps.items()):
        print(f"{name:<12}{ep.value}")
    return 0


def _plot_demo(out: Path, gm: GaussianMixture, truth: torch.Tensor, results: dict[str, torch.Tensor], nfe: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["truth", *results]
    fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names), 2.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        pts = truth if name == "truth" else results[name]
        ax.scatter(pts[:, 0], pts[:, 1], s=1.5, alpha=0.5)
        ax.set_title(name if name == "truth" else f"{name}\n{nfe} NFE", fontsize=9)
        ax.set_xlim(-3, 3), ax.set_ylim(-3, 3), ax.set_aspect("equal"), ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    path = out / "ring_samples.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _mixture_demo(out: Path, nfe: int, seed: int, quick: bool) -> tuple[list[Path], list[list[str]]]:
    """Every sampler on the exact 8-mode ring against the exact probability-flow ODE solution;
    returns the pictures and the table's rows (header first)."""
    from tqdm.auto import tqdm

    from .plots import plot_schedules

    n = 400 if quick else 2000
    names = ("ddpm", "euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc", "dpmpp_2m_sde")
    gm = GaussianMixture.ring(8)
    denoiser = gm.denoiser()
    sigma_min, sigma_max = 0.002, 80.0
    g = torch.Generator().manual_seed(seed)
    x_t = sigma_max * torch.randn(n, 2, generator=g, dtype=torch.float64)
    truth, _ = gm.sample(n, generator=g)
    bar = tqdm(total=len(names) + 1, desc="samplers on the ring", disable=quick, dynamic_ncols=True, leave=False)
    exact = gm.ode_solution(x_t, sigma_max, steps=400 if quick else 1000)
    bar.update(1)
    rows = [["sampler", "grid", "NFE", "ODE error", "mode-weight err", "sliced W1"]]
    results: dict[str, torch.Tensor] = {}
    for name in names:
        spec = SM.get_sampler(name)
        steps = (nfe + 1) // 2 if name == "heun" else nfe
        # Exponential integrators take large steps in log-SNR well; Heun's trapezoid in sigma and the
        # stochastic samplers do better on Karras' grid (see benchmarks/README.md).
        grid_kind = "logsnr" if name in ("euler", "dpmpp_2m", "dpmpp_3m", "unipc") else "karras"
        sigmas = grids.make_grid(grid_kind, steps, sigma_min=sigma_min, sigma_max=sigma_max)
        counter = SM.NFECounter(denoiser)
        x0 = spec.fn(counter, x_t, sigmas, generator=torch.Generator().manual_seed(seed))
        err = "" if spec.stochastic else f"{(x0 - exact).norm(dim=1).mean():.2e}"
        mw = (gm.mode_weights(x0) - gm.weights).abs().sum() / 2
        rows.append([name, grid_kind, str(counter.nfe), err, f"{mw:.3f}", f"{sliced_wasserstein(x0, truth):.3f}"])
        results[name] = x0
        bar.update(1)
    bar.close()
    print(f"\nsamplers on an 8-mode Gaussian ring, {n} samples, against the exact PF-ODE solution:")
    widths = (16, 8, 5, 12, 17, 11)
    for r in rows:
        print("".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    pictures = [
        _plot_demo(out, gm, truth, {k: results[k] for k in ("ddpm", "euler", "dpmpp_2m", "unipc")}, nfe),
        plot_schedules(out / "schedules.png"),
    ]
    return pictures, rows


DEMO_AUDIO_STEPS = 600
DEMO_VOXEL_STEPS = 400


def _demo_train(steps: int, batch: int, quick: bool) -> dict:
    return {
        "steps": steps,
        "batch_size": batch,
        "lr": 1e-3,
        "warmup_steps": min(100, steps // 10),
        "lr_schedule": "cosine",
        "ema_decay": 0.999,
        "log_every": max(1, min(50, steps // 10)),
        "checkpoint_every": 0,
        "progress": not quick,
    }


def demo_configs(
    out: Path, image_steps: int, audio_steps: int, quick: bool, voxel_steps: int = DEMO_VOXEL_STEPS
) -> list[tuple[str, dict]]:
    """The demo's runs, shorter versions of configs/image_digits.yaml, configs/audio_tones.yaml
    and configs/voxel_shapes.yaml: class-conditional digits at 16x16, tones (the class is the
    pitch) and primitive shapes at 16^3 (the class is the kind of shape)."""
    v_pred = {"schedule": {"kind": "cosine_discrete"}, "parameterization": "v", "weighting": "snr_plus_one"}
    sample = {"sampler": "dpmpp_2m", "steps": 5 if quick else 20, "guidance_scale": 2.0}
    digits = {
        "modality": "image",
        "out_dir": str(out / "digits_run"),
        "data": {"source": "digits", "size": 16},
        "model": {"preset": "tiny", **({"channels": 16} if quick else {})},
        "diffusion": v_pred,
        "train": _demo_train(image_steps, 64, quick),
        "sample": {**sample, "num_samples": 100},
    }
    tones = {
        "modality": "audio",
        "out_dir": str(out / "tones_run"),
        "data": {"source": "tones", "sample_rate": 8000, "length": 2048, "random_polarity": True},
        "model": {"preset": "tiny", **({"channels": 4, "channel_mult": [1, 2, 2, 2]} if quick else {})},
        "diffusion": {**v_pred, "data_scale": 5.0},
        "train": _demo_train(audio_steps, 32, quick),
        "sample": {**sample, "num_samples": 16},
    }
    shapes = {
        "modality": "voxel",
        "out_dir": str(out / "shapes_run"),
        "data": {"source": "shapes", "resolution": 16, "representation": "sdf", "truncation": 2.0},
        "model": {
            "preset": "tiny",
            **({"channels": 4, "channel_mult": [1, 2], "attention_levels": [1]} if quick else {}),
        },
        "diffusion": v_pred,
        "train": _demo_train(voxel_steps, 16, quick),
        "sample": {**sample, "num_samples": 12},
    }
    return [
        ("handwritten digits (16x16, 10 classes)", digits),
        ("synthesized tones (0.26 s at 8 kHz, 8 pitches)", tones),
        ("primitive shapes (16^3 SDF grids, 6 kinds)", shapes),
    ]


def _demo_samples(trainer: Any, tag: str, progress: bool) -> list[Path]:
    """:meth:`Trainer.sample_files` with a progress bar over the sampler's steps."""
    from tqdm.auto import tqdm

    steps = trainer.cfg.run.sample.steps
    with tqdm(total=steps, desc=f"sample {tag}", unit="step", disable=not progress, leave=False) as bar:
        return trainer.sample_files(tag, callback=lambda _: bar.update(1))


_CAPTIONS = {
    "noising.png": "forward noising of training examples, t from 0 (left) to 1",
    "trajectory.png": "the sampler's x0 estimate along a denoising trajectory (last column: the sample)",
    "spectrograms.png": "spectrograms of the sampled clips",
    "audio_real_spectrograms.png": "spectrograms of training clips, to compare",
    "preview.png": "the sampled shapes (meshes below)",
    "voxel_real_preview.png": "training shapes, to compare",
    "ring_samples.png": "samples of the ring by four samplers, beside true samples",
    "schedules.png": "noise schedules compared: alpha, sigma and log-SNR against t",
}
_PAGE_STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    "figure{display:inline-block;vertical-align:top;margin:0 1em 1em 0}"
    "figure img{max-width:100%;image-rendering:pixelated;border:1px solid #ddd}"
    "figcaption{font-size:.85em;color:#555;max-width:520px}"
    ".clips{display:flex;flex-wrap:wrap;gap:.5em 1.5em}.clip{font-size:.85em}"
    "table{border-collapse:collapse;font-size:.9em}td,th{padding:.2em .8em;border-bottom:1px solid #ddd}"
    "td:nth-child(n+3),th:nth-child(n+3){text-align:right}"
)


def _demo_index_section(out: Path, title: str, text: str, paths: list[Path]) -> list[str]:
    """One run's part of ``index.html``: pictures inline, audio players, links to the other files."""
    from html import escape
    from urllib.parse import quote

    def rel(p: Path) -> str:
        return quote(Path(p).resolve().relative_to(out.resolve()).as_posix())

    html = [f"<section><h2>{escape(title)}</h2>"] + ([f"<p>{escape(text)}</p>"] if text else [])
    for p in (p for p in paths if p.suffix == ".png"):
        what = "training loss" if p.name.startswith("loss_") else _CAPTIONS.get(p.name, "samples")
        html.append(
            f'<figure><a href="{rel(p)}"><img src="{rel(p)}" alt="{escape(what)}" loading="lazy"></a>'
            f"<figcaption>{escape(what)}<br><code>{escape(rel(p))}</code></figcaption></figure>"
        )
    wavs = [p for p in paths if p.suffix == ".wav"]
    if wavs:
        html.append('<div class="clips">')
        html += [
            f'<div class="clip"><audio controls preload="none" src="{rel(p)}"></audio><br>{escape(p.stem)}</div>'
            for p in wavs
        ]
        html.append("</div>")
    others = [p for p in paths if p.suffix not in (".png", ".wav")]
    if others:
        links = " ".join(f'<a href="{rel(p)}">{escape(p.name)}</a>' for p in others)
        html.append(f"<p>Files (meshes open in any 3D viewer): {links}</p>")
    return [*html, "</section>"]


def write_demo_index(
    out: Path, sections: list[tuple[str, str, list[Path]]], table: list[list[str]], pictures: list[Path]
) -> Path:
    """``out/index.html``: every run's files (``sections``: title, one line, paths under ``out``),
    then the sampler ``table`` (header row first) with its ``pictures``; relative links only, no
    scripts, nothing fetched."""
    from html import escape

    html = [
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>multidiff demo</title>',
        f"<style>{_PAGE_STYLE}</style></head><body><h1>multidiff demo</h1>",
        "<p>Small diffusion models trained on built-in data, and samplers checked against exact answers.</p>",
    ]
    for title, text, paths in sections:
        html += _demo_index_section(out, title, text, paths)
    head, *rows = table or [[]]
    samplers = _demo_index_section(out, "Samplers on an 8-mode Gaussian ring", "", pictures)
    samplers[1:1] = [
        "<p>Every sampler from the same noise, against the exact probability-flow ODE solution:</p><table>",
        "<tr>" + "".join(f"<th>{escape(c)}</th>" for c in head) + "</tr>",
        *("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in rows),
        "</table>",
    ]
    html += [*samplers, "</body></html>"]
    path = out / "index.html"
    path.write_text("\n".join(html) + "\n", encoding="utf-8")
    return path


def _cmd_demo(args: argparse.Namespace) -> int:
    from .config import resolve_config
    from .plots import plot_loss
    from .registry import available_modalities
    from .train import Trainer

    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    image_steps = args.steps if args.steps is not None else (30 if args.quick else 600)
    audio_steps = args.audio_steps if args.audio_steps is not None else (20 if args.quick else DEMO_AUDIO_STEPS)
    voxel_steps = args.voxel_steps if args.voxel_steps is not None else (10 if args.quick else DEMO_VOXEL_STEPS)
    paths: list[Path] = []
    sections: list[tuple[str, str, list[Path]]] = []
    for what, d in demo_configs(out, image_steps, audio_steps, args.quick, voxel_steps):
        if d["modality"] not in available_modalities():
            print(f"skipping {what}: the {d['modality']!r} modality is not installed")
            continue
        cfg = resolve_config(d, source="multidiff demo")
        trainer = Trainer(cfg)
        print(
            f"multidiff demo: training a {sum(p.numel() for p in trainer.net.parameters()):,}-parameter "
            f"{trainer.net.dims}D UNet on built-in {what} for {cfg.run.train.steps} steps on {trainer.device}"
        )
        result = trainer.fit()
        summary = f"trained in {result.seconds:.0f}s, final loss {result.losses[-1][1]:.4f}"
        print(summary)
        run = Path(cfg.run.out_dir)
        tag = run.name.removesuffix("_run")
        made = _demo_samples(trainer, tag, progress=not args.quick)
        made += cfg.adapter.save_pictures(
            trainer.ema_denoiser, trainer.dataset, trainer.info, out, guidance_scale=cfg.run.sample.guidance_scale
        )
        made.append(plot_loss(result.run_dir / "metrics.csv", out / f"loss_{tag}.png"))
        names = trainer.info.class_names
        more = f"multidiff sample {run}" + (f" --class {names[-1]} --guidance 3" if names else "")
        print(f"sample more: {more}")
        sections.append((what, f"{cfg.run.train.steps} steps, {summary}; sample more: {more}", made))
        paths += made
    pictures, table = _mixture_demo(out, args.nfe, args.seed, args.quick)
    paths += pictures
    print()
    for p in paths:
        if p.suffix != ".wav":
            print(f"wrote {p}")
    wavs = [p for p in paths if p.suffix == ".wav"]
    if wavs:
        print(f"wrote {len(wavs)} WAV files in {wavs[0].parent}")
    print(f"open {write_demo_index(out, sections, table, pictures)} to see everything together")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .train import Trainer

    cfg = load_config(args.config, args.set)
    if args.out_dir:
        cfg.run.out_dir = args.out_dir
    trainer = Trainer(cfg, resume=args.resume if args.resume else False)
    try:
        w = trainer.world
        say = print if w.is_main else (lambda *a, **k: None)  # under torchrun, rank 0 speaks
        procs = f" x {w.size} processes (global batch {cfg.run.train.batch_size})" if w.distributed else ""
        say(
            f"multidiff train: {cfg.adapter.describe(cfg.data)}, {sum(p.numel() for p in trainer.net.parameters()):,} "
            f"parameters, {trainer.device}{procs}, steps {trainer.step} -> {cfg.run.train.steps}, "
            f"run folder {trainer.run_dir}"
            + (f"; skipped {n} unreadable data files" if (n := trainer.info.extra.get("skipped_files")) else "")
        )
        result = trainer.fit()
        last = result.losses[-1][1] if result.losses else float("nan")
        if result.interrupted:
            say(f"interrupted at step {result.step}; checkpoint {result.checkpoint}; continue with --resume")
        else:
            say(
                f"done: step {result.step}, last loss {last:.4f}, {result.seconds:.0f}s; checkpoint {result.checkpoint}"
            )
    finally:
        trainer.close()
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from .modality import class_index
    from .pipeline import load_pipeline

    pipe = load_pipeline(args.checkpoint, device=args.device)
    if args.class_label is not None and pipe.info.num_classes == 0:
        raise ValueError("--class given, but this model is unconditional")
    names = pipe.info.class_names or [str(i) for i in range(pipe.info.num_classes)]
    label = class_index(args.class_label, names)
    if args.negative_class is not None and pipe.info.num_classes == 0:
        raise ValueError("--negative-class given, but this model is unconditional")
    negative = class_index(args.negative_class, names)
    classifier = None
    if args.classifier_scale:
        from .cli_edit import run_classifier

        classifier = run_classifier(pipe)
    t0 = time.perf_counter()
    x, labels = pipe.generate(
        args.num,
        sampler=args.sampler,
        steps=args.steps,
        grid=args.grid,
        guidance_scale=args.guidance,
        guidance_interval=args.guidance_interval,
        labels=label,
        seed=args.seed,
        batch_size=args.batch_size,
        precision=args.precision,
        compile=args.compile or None,
        cuda_graphs={"on": True, "off": False, "auto": "auto", None: None}[args.cuda_graphs],
        negative_label=negative,
        classifier=classifier,
        classifier_scale=args.classifier_scale,
    )
    out = Path(args.out) if args.out else pipe.checkpoint.path.parent.parent / "samples" / f"sample_seed{args.seed}"
    paths = pipe.adapter.save_samples(x, out, pipe.info, labels=labels)
    print(
        f"sampled {args.num} in {time.perf_counter() - t0:.1f}s from {pipe.checkpoint.path} (step {pipe.checkpoint.step})"
    )
    for p in paths:
        print(f"wrote {p}")
    return 0


def _plot_out(args: argparse.Namespace, default: str) -> Path:
    return Path(args.out or default)


def _cmd_plot_schedules(args: argparse.Namespace) -> int:
    from .plots import plot_schedules

    print(f"wrote {plot_schedules(_plot_out(args, 'schedules.png'))}")
    return 0


def _noising_source(path: str) -> tuple[Any, Any, Any]:
    """The resolved config, data description and (for a YAML config, whose data set is built to
    learn the example shape; else ``None``) training set of a checkpoint, run folder or config."""
    from .checkpoint import find_checkpoint
    from .config import load_config, resolve_config
    from .modality import DataInfo

    p = Path(path)
    if p.is_file() and p.suffix.lower() in (".yaml", ".yml"):
        cfg = load_config(p)
        dataset, info = cfg.adapter.build_dataset(cfg.data)
        return cfg, info, dataset
    ckpt = find_checkpoint(p)
    cfg = resolve_config(ckpt.config, source=str(ckpt.path / "meta.json"))
    return cfg, DataInfo.from_json(ckpt.meta["data_info"]), None


def _cmd_plot_noising(args: argparse.Namespace) -> int:
    from .config import build_schedule
    from .plots import noised_copies, plot_noising

    if args.levels < 2:
        raise ValueError(f"--levels must be at least 2, got {args.levels}")
    cfg, info, dataset = _noising_source(args.source)
    adapter = cfg.adapter
    if args.input is not None:
        if not Path(args.input).exists():
            raise ValueError(f"input file {args.input!r} does not exist")
        read = getattr(adapter, "read_input", None)
        if read is None:
            raise ValueError(f"the {adapter.name!r} modality cannot read input files; leave out --input")
        x0, what = read(Path(args.input), info, cfg.data), Path(args.input).name
    else:
        dataset = dataset if dataset is not None else adapter.build_dataset(cfg.data)[0]
        x0, what = dataset[0][0], "the first training example"
    if tuple(x0.shape) != tuple(info.shape):
        raise ValueError(f"{what} gives an example of shape {tuple(x0.shape)}, the model takes {info.shape}")
    d = cfg.run.diffusion
    schedule = build_schedule(d.schedule, size=max(info.shape[1:], default=1))
    t = torch.linspace(0, 1, args.levels, dtype=torch.float64)
    copies = noised_copies(x0, schedule, t, data_scale=d.data_scale, seed=args.seed)
    out = _plot_out(args, "noising.png")
    files = adapter.save_noising(
        copies, out.with_name(f"{out.stem}_{adapter.name}"), info, levels=[f"t={v:.2f}" for v in t.tolist()]
    )
    pngs = [f for f in files if Path(f).suffix.lower() == ".png"]
    if not pngs:
        raise ValueError(f"the {adapter.name!r} adapter wrote no PNG picture of the noised copies")
    title = f"forward noising of {what} ({d.schedule.kind} schedule, {adapter.name})"
    for f in files:
        print(f"wrote {f}")
    print(f"wrote {plot_noising(pngs[0], schedule, t, out, title=title)}")
    return 0


def _cmd_plot_loss(args: argparse.Namespace) -> int:
    from .plots import plot_loss

    print(f"wrote {plot_loss(args.runs, _plot_out(args, 'loss.png'))}")
    return 0


def _add_plot_parser(sub: Any) -> None:
    """``multidiff plot schedules | noising | loss``, each writing one PNG."""
    pl = sub.add_parser("plot", help="plot schedules, forward noising or loss curves (PNG)")
    what = pl.add_subparsers(dest="what", required=True)
    ps = what.add_parser("schedules", help="alpha, sigma and log-SNR against t for the usual noise schedules")
    ps.add_argument("--out", help="the PNG (default: schedules.png)")
    ps.set_defaults(func=_cmd_plot_schedules)
    pn = what.add_parser("noising", help="an input noised at several levels of a model's schedule")
    pn.add_argument("source", metavar="CHECKPOINT_OR_CONFIG", help="a checkpoint, a run folder or a YAML config")
    pn.add_argument("--input", help="a file of the model's modality (default: the first training example)")
    pn.add_argument("--levels", type=int, default=8, help="noise levels, t evenly spaced in [0, 1] (default 8)")
    pn.add_argument("--seed", type=int, default=0)
    pn.add_argument("--out", help="the PNG (default: noising.png; the adapter's files go beside it)")
    pn.set_defaults(func=_cmd_plot_noising)
    pc = what.add_parser("loss", help="training loss curves of one or more runs, overlaid")
    pc.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (or their metrics.csv / metrics.jsonl)")
    pc.add_argument("--out", help="the PNG (default: loss.png)")
    pc.set_defaults(func=_cmd_plot_loss)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="multidiff", description="Diffusion models over any kind of data.")
    p.add_argument("--version", action="version", version=f"multidiff {__import__('multidiff').__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser(
        "demo", help="train a small digits model on the CPU, sample it, and compare samplers on exact data"
    )
    d.add_argument("--out", default="demo_out", help="folder for the pictures (default: demo_out)")
    d.add_argument("--nfe", type=int, default=10, help="network evaluations per sampler (default: 10)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--steps", type=int, help="image training steps (default 600; 30 with --quick)")
    d.add_argument(
        "--audio-steps", type=int, help=f"audio training steps (default {DEMO_AUDIO_STEPS}; 20 with --quick)"
    )
    d.add_argument(
        "--voxel-steps", type=int, help=f"voxel training steps (default {DEMO_VOXEL_STEPS}; 10 with --quick)"
    )
    d.add_argument("--quick", action="store_true", help="a few seconds: a smaller model, few steps (a smoke test)")
    d.set_defaults(func=_cmd_demo)
    _add_plot_parser(sub)
    t = sub.add_parser("train", help="train the model a YAML config describes")
    t.add_argument("config", help="a YAML run config (see configs/)")
    t.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value, e.g. train.steps=500"
    )
    t.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="CHECKPOINT",
        help="continue from the newest checkpoint of the run folder (or from CHECKPOINT)",
    )
    t.add_argument("--out-dir", help="the run folder (overrides out_dir)")
    t.set_defaults(func=_cmd_train)
    sa = sub.add_parser("sample", help="sample a trained model")
    sa.add_argument("checkpoint", help="a checkpoint folder, or a run folder (its newest checkpoint)")
    sa.add_argument("--sampler", help="any of `multidiff samplers` (default: the run's sample.sampler)")
    sa.add_argument("--steps", type=int, help="sampler steps")
    sa.add_argument("--grid", choices=grids.GRIDS, help="sigma grid")
    sa.add_argument("--guidance", type=float, help="classifier-free guidance scale (1 = none)")
    sa.add_argument(
        "--guidance-interval",
        nargs=2,
        type=float,
        metavar=("SIGMA_LO", "SIGMA_HI"),
        help="guide only for SIGMA_LO < sigma <= SIGMA_HI (default: the run's sample.guidance_interval)",
    )
    sa.add_argument("--class", dest="class_label", help="class index or name (default: every class in turn)")
    sa.add_argument("-n", "--num", type=int, default=64, help="number of samples (default 64)")
    sa.add_argument("--seed", type=int, default=0)
    sa.add_argument("--device", default="auto")
    sa.add_argument("--batch-size", type=int, help="samples per network call (default: the run's sample.batch_size)")
    sa.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="network autocast dtype (default: the run's sample.precision; auto = bf16 on GPUs, fp32 on CPUs)",
    )
    sa.add_argument("--compile", action="store_true", help="torch.compile the network (pays off for many samples)")
    sa.add_argument(
        "--cuda-graphs",
        choices=("auto", "on", "off"),
        help="replay the network from CUDA graphs (default: the run's sample.cuda_graphs; auto = on CUDA)",
    )
    sa.add_argument("--out", help="output path (default: <run>/samples/sample_seed<seed>)")
    sa.add_argument(
        "--negative-class", help="class to steer away from: the negative condition of guidance (with --guidance)"
    )
    sa.add_argument(
        "--classifier-scale",
        type=float,
        default=0.0,
        help="classifier guidance by a classifier of the run's training data (trained once, cached; 0 = off)",
    )
    sa.set_defaults(func=_cmd_sample)
    from .cli_edit import add_edit_parser
    from .cli_eval import add_eval_parser

    add_edit_parser(sub)
    add_eval_parser(sub)
    s = sub.add_parser("samplers", help="list the registered samplers")
    s.set_defaults(func=_cmd_samplers)
    m = sub.add_parser("modalities", help="list the installed modality adapters")
    m.set_defaults(func=_cmd_modalities)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ValueError as e:
        print(f"multidiff: error: {e}", file=sys.stderr)
        return 2
    except (FloatingPointError, MemoryError, OSError) as e:  # diverged, out of memory, disk full...
        print(f"multidiff: error: {e.strerror if isinstance(e, OSError) and e.strerror else e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
