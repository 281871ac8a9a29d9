"""How exact are the editing methods? Measured on Gaussian mixtures, where the answers are closed-form.

    python -m benchmarks.editing            # about a minute on one CPU core

Tables:

1. Masked generation on an 8-mode ring with unequal weights whose x coordinate is given
   (2 cos 45 deg, so the exact conditional of y has two modes with weights 3:1): the total
   variation between the generated component weights and the exact conditional's, the mean
   conditional log-likelihood of the samples against the exact conditional's expectation, and
   network evaluations per sample, for replacement, RePaint and SMC at several step counts.
2. The same on rank-3 examples (2, 3, 3) with two overlapping components, SMC by particle count.
3. Inversion then generation: the round-trip error against the number of steps per solver.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from multidiff import editing as E
from multidiff import grids as G
from multidiff import samplers as SM
from multidiff.testing import GaussianMixture


def masked_table(n: int) -> None:
    gm = GaussianMixture.ring(8, std=0.15, weights=torch.tensor([1, 3, 1, 1, 1, 1, 1, 1.0]))
    known = torch.tensor([2 * math.cos(math.pi / 4), 0.0], dtype=torch.float64)
    mask = torch.tensor([False, True])
    cond = gm.given(known, mask)
    exact = cond.expected_log_prob(50000)
    print(f"\n1. masked generation on the ring, {n} samples; exact conditional log-likelihood {exact:.3f}")
    print(f"{'method':<34}{'steps':>6}{'NFE/sample':>12}{'weights TV':>12}{'log-lik':>9}{'seconds':>9}")
    methods = [
        ("replace (ddpm)", dict(method="replace", sampler="ddpm")),
        ("replace (dpmpp_2m)", dict(method="replace", sampler="dpmpp_2m")),
        ("repaint j=5 r=5", dict(method="repaint", jump_length=5, resample=5)),
        ("repaint j=10 r=10", dict(method="repaint", jump_length=10, resample=10)),
        ("smc 8 particles", dict(method="smc", particles=8)),
        ("smc 32 particles", dict(method="smc", particles=32)),
    ]
    for steps in (25, 50, 100):
        sigmas = G.make_grid("karras", steps, sigma_min=0.002, sigma_max=80.0)
        for name, kw in methods:
            d = SM.NFECounter(gm.denoiser())
            t0 = time.perf_counter()
            x = E.inpaint(d, known.expand(n, 2), mask, sigmas, generator=torch.Generator().manual_seed(1), **kw)
            dt = time.perf_counter() - t0
            tv = 0.5 * (cond.mode_weights(x[:, 1:]) - cond.weights).abs().sum().item()
            per = d.nfe * kw.get("particles", 1)  # SMC evaluates all particles in one batch per step
            print(f"{name:<34}{steps:>6}{per:>12}{tv:>12.3f}{cond.log_prob(x[:, 1:]).mean().item():>9.3f}{dt:>9.1f}")


def rank3_table(n: int) -> None:
    means = torch.stack([torch.full((2, 3, 3), 0.5), torch.full((2, 3, 3), -0.5)]).double()
    gm = GaussianMixture(means, 0.35)
    mask = torch.zeros(2, 3, 3, dtype=torch.bool)
    mask[:, :, 1:] = True
    known = torch.full((2, 3, 3), 0.05, dtype=torch.float64)
    cond = gm.given(known, mask)
    print(
        f"\n2. rank-3 examples (2, 3, 3), 6 of 18 coordinates given, {n} samples; exact weights {cond.weights.numpy().round(3)}"
    )
    print(f"{'method':<34}{'steps':>6}{'weights':>18}{'weights TV':>12}")
    runs = [("replace (ddpm)", dict(method="replace", sampler="ddpm")), ("repaint j=10 r=10", dict(method="repaint"))]
    runs += [(f"smc {p} particles", dict(method="smc", particles=p)) for p in (8, 32, 128)]
    for steps in (60, 200):
        sigmas = G.make_grid("karras", steps, sigma_min=0.002, sigma_max=80.0)
        for name, kw in runs:
            x = E.inpaint(
                gm.denoiser(), known.expand(n, 2, 3, 3), mask, sigmas, generator=torch.Generator().manual_seed(2), **kw
            )
            w = cond.mode_weights(x[:, mask])
            tv = 0.5 * (w - cond.weights).abs().sum().item()
            print(f"{name:<34}{steps:>6}{str(w.numpy().round(3)):>18}{tv:>12.3f}")


def inversion_table() -> None:
    gm = GaussianMixture.random((3,), 5, seed=3, std_range=(0.3, 0.6))
    x0, _ = gm.sample(256, generator=torch.Generator().manual_seed(6))
    d = gm.denoiser()
    print("\n3. inversion then generation on the same grid (log-SNR, sigma 0.01 to 50): mean |x - x'|")
    print(f"{'solver':<12}" + "".join(f"{s:>10}" for s in (5, 10, 20, 40, 80)))
    for solver in E.INVERSION_SOLVERS:
        row = []
        for steps in (5, 10, 20, 40, 80):
            sigmas = G.make_grid("logsnr", steps, sigma_min=0.01, sigma_max=50.0)
            z = E.invert(d, x0, sigmas, solver=solver)
            back = SM.sample(d, z, sigmas, solver, final_step="jump")
            row.append((back - x0).norm(dim=1).mean().item())
        print(f"{solver:<12}" + "".join(f"{e:>10.1e}" for e in row))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=2000, help="samples per method")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    masked_table(args.n)
    rank3_table(args.n // 5)
    inversion_table()


if __name__ == "__main__":
    main()
