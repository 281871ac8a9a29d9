"""The ``multidiff`` command line.

``multidiff demo``        samples a Gaussian mixture with every sampler against the exact answer
                          and writes pictures (no training, no download, a few seconds on a CPU)
``multidiff samplers``    lists the registered samplers
``multidiff modalities``  lists the installed modality adapters
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from . import grids, registry
from . import samplers as SM
from . import schedules as S
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


def _plot_schedules(out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = torch.linspace(0, 1, 401, dtype=torch.float64)
    named = {
        "linear (DDPM)": S.DiscreteSchedule.linear(),
        "cosine": S.CosineSchedule(),
        "sigmoid": S.SigmoidSchedule(),
        "EDM": S.EDMSchedule(),
        "cosine shifted 64->256": S.ShiftedSchedule(S.CosineSchedule(), 64, 256),
        "linear, zero terminal SNR": S.zero_terminal_snr(S.DiscreteSchedule.linear()),
    }
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.4))
    for name, sch in named.items():
        a1.plot(t, sch.logsnr(t), label=name)
        a2.plot(t, S.alpha(sch, t), label=name)
    a1.set_xlabel("t"), a1.set_ylabel("log-SNR"), a1.set_ylim(-20, 15)
    a2.set_xlabel("t"), a2.set_ylabel("alpha (VP signal scale)")
    a1.legend(fontsize=7)
    fig.tight_layout()
    path = out / "schedules.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _cmd_demo(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n = 400 if args.quick else 2000
    gm = GaussianMixture.ring(8)
    denoiser = gm.denoiser()
    sigma_min, sigma_max = 0.002, 80.0
    g = torch.Generator().manual_seed(args.seed)
    x_t = sigma_max * torch.randn(n, 2, generator=g, dtype=torch.float64)
    truth, _ = gm.sample(n, generator=g)
    t0 = time.perf_counter()
    exact = gm.ode_solution(x_t, sigma_max, steps=400 if args.quick else 1000)
    print(f"multidiff demo: 8-mode ring, {n} samples, exact PF-ODE solution in {time.perf_counter() - t0:.1f}s")
    print(f"{'sampler':<16}{'grid':<8}{'NFE':>5}{'ODE error':>12}{'mode-weight err':>17}{'sliced W1':>11}")
    results: dict[str, torch.Tensor] = {}
    for name in ("ddpm", "euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc", "dpmpp_2m_sde"):
        spec = SM.get_sampler(name)
        steps = (args.nfe + 1) // 2 if name == "heun" else args.nfe
        # Exponential integrators take large steps in log-SNR well; Heun's trapezoid in sigma and the
        # stochastic samplers do better on Karras' grid (see benchmarks/README.md).
        grid_kind = "logsnr" if name in ("euler", "dpmpp_2m", "dpmpp_3m", "unipc") else "karras"
        sigmas = grids.make_grid(grid_kind, steps, sigma_min=sigma_min, sigma_max=sigma_max)
        counter = SM.NFECounter(denoiser)
        x0 = spec.fn(counter, x_t, sigmas, generator=torch.Generator().manual_seed(args.seed))
        err = "" if spec.stochastic else f"{(x0 - exact).norm(dim=1).mean():.2e}"
        mw = (gm.mode_weights(x0) - gm.weights).abs().sum() / 2
        print(f"{name:<16}{grid_kind:<8}{counter.nfe:>5}{err:>12}{mw:>17.3f}{sliced_wasserstein(x0, truth):>11.3f}")
        results[name] = x0
    paths = [_plot_demo(out, gm, truth, {k: results[k] for k in ("ddpm", "euler", "dpmpp_2m", "unipc")}, args.nfe)]
    paths.append(_plot_schedules(out))
    for p in paths:
        print(f"wrote {p}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="multidiff", description="Diffusion models over any kind of data.")
    p.add_argument("--version", action="version", version=f"multidiff {__import__('multidiff').__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="sample a Gaussian mixture with every sampler against the exact answer")
    d.add_argument("--out", default="demo_out", help="folder for the pictures (default: demo_out)")
    d.add_argument("--nfe", type=int, default=10, help="network evaluations per sampler (default: 10)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--quick", action="store_true", help="fewer samples, a few seconds")
    d.set_defaults(func=_cmd_demo)
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


if __name__ == "__main__":
    sys.exit(main())
