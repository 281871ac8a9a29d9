"""``multidiff demo``: a small model of every installed modality on built-in data, and every
sampler on an exact Gaussian mixture; one HTML page shows what was made.

The core names no modality here: each installed adapter offers its run through
:meth:`Modality.demo <multidiff.modality.Modality.demo>` (a :class:`~multidiff.modality.DemoRun`:
config, title, captions), so a third-party modality takes part by being installed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from .. import grids
from .. import samplers as SM
from ..testing import GaussianMixture, sliced_wasserstein


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

    from ..plots import plot_schedules

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


def demo_runs(quick: bool, only: list[str] | None = None) -> list[tuple[Any, Any]]:
    """``(adapter, DemoRun)`` of every installed modality that offers one (or of ``only``), by name."""
    from ..registry import available_modalities, load_modality

    names = available_modalities()
    for name in only or []:
        if name not in names:
            raise ValueError(f"--modality {name!r} is not installed; installed: {', '.join(names)}")
    runs = []
    for name in only or names:
        adapter = load_modality(name)()
        run = adapter.demo(quick)
        if run is not None:
            runs.append((adapter, run))
    return runs


def _demo_samples(trainer: Any, tag: str, progress: bool) -> list[Path]:
    """:meth:`Trainer.sample_files` with a progress bar over the sampler's steps."""
    from tqdm.auto import tqdm

    steps = trainer.cfg.run.sample.steps
    with tqdm(total=steps, desc=f"sample {tag}", unit="step", disable=not progress, leave=False) as bar:
        return trainer.sample_files(tag, callback=lambda _: bar.update(1))


_CAPTIONS = {
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


def _demo_index_section(
    out: Path, title: str, text: str, paths: list[Path], captions: dict[str, str] | None = None
) -> list[str]:
    """One run's part of ``index.html``: pictures inline, audio players, links to the other files."""
    from html import escape
    from urllib.parse import quote

    def rel(p: Path) -> str:
        return quote(Path(p).resolve().relative_to(out.resolve()).as_posix())

    html = [f"<section><h2>{escape(title)}</h2>"] + ([f"<p>{escape(text)}</p>"] if text else [])
    for p in (p for p in paths if p.suffix == ".png"):
        what = (
            "training loss" if p.name.startswith("loss_") else {**_CAPTIONS, **(captions or {})}.get(p.name, "samples")
        )
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
    out: Path,
    sections: list[tuple[str, str, list[Path], dict[str, str]]],
    table: list[list[str]],
    pictures: list[Path],
) -> Path:
    """``out/index.html``: every run's files (``sections``: title, one line, paths under ``out``, captions by file name),
    then the sampler ``table`` (header row first) with its ``pictures``; relative links only, no
    scripts, nothing fetched."""
    from html import escape

    html = [
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>multidiff demo</title>',
        f"<style>{_PAGE_STYLE}</style></head><body><h1>multidiff demo</h1>",
        "<p>Small diffusion models trained on built-in data, and samplers checked against exact answers.</p>",
    ]
    for title, text, paths, captions in sections:
        html += _demo_index_section(out, title, text, paths, captions)
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


def run(args: argparse.Namespace) -> int:
    from ..config import apply_overrides, resolve_config
    from ..plots import plot_loss
    from ..train import Trainer

    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    sections: list[tuple[str, str, list[Path], dict[str, str]]] = []
    for adapter, demo in demo_runs(args.quick, args.modality):
        d = {**demo.config, "out_dir": str(out / f"{demo.name}_run")}
        if args.steps is not None:
            apply_overrides(d, [f"train.steps={args.steps}"])
        cfg = resolve_config(d, source=f"multidiff demo ({adapter.name})")
        trainer = Trainer(cfg)
        print(
            f"multidiff demo: training a {sum(p.numel() for p in trainer.net.parameters()):,}-parameter "
            f"{trainer.net.dims}D UNet on built-in {demo.title} for {cfg.run.train.steps} steps on {trainer.device}"
        )
        result = trainer.fit()
        summary = f"trained in {result.seconds:.0f}s, final loss {result.losses[-1][1]:.4f}"
        print(summary)
        made = _demo_samples(trainer, demo.name, progress=not args.quick)
        made += cfg.adapter.save_pictures(
            trainer.ema_denoiser, trainer.dataset, trainer.info, out, guidance_scale=cfg.run.sample.guidance_scale
        )
        made.append(plot_loss(result.run_dir / "metrics.csv", out / f"loss_{demo.name}.png"))
        names = trainer.info.class_names
        more = f"multidiff sample {cfg.run.out_dir}" + (f" --class {names[-1]} --guidance 3" if names else "")
        print(f"sample more: {more}")
        sections.append(
            (demo.title, f"{cfg.run.train.steps} steps, {summary}; sample more: {more}", made, demo.captions)
        )
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


def add_parser(sub: Any) -> None:
    d = sub.add_parser(
        "demo", help="train a small model of each installed modality on built-in data, compare samplers on exact data"
    )
    d.add_argument("--out", default="demo_out", help="folder for the pictures (default: demo_out)")
    d.add_argument("--nfe", type=int, default=10, help="network evaluations per sampler (default: 10)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--steps", type=int, help="training steps of every run (default: each modality's own)")
    d.add_argument(
        "--modality", action="append", metavar="NAME", help="run only this modality's demo (repeatable; default: all)"
    )
    d.add_argument("--quick", action="store_true", help="a few seconds: smaller models, few steps (a smoke test)")
    d.set_defaults(func=run)
