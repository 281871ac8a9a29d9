"""Check the core's samplers on an accelerator: same answers as on the CPU, no host-device
synchronization inside sampler loops, and the sampler's own time per step.

Run on a machine with CUDA: ``python -m benchmarks.device_check``. Prints a table; exits 1 if a
check fails. (The test suite runs on CPUs only; this script is how the GPU path is checked.)
"""

from __future__ import annotations

import sys
import time

import torch

from multidiff import grids as G
from multidiff import samplers as SM
from multidiff.testing import GaussianMixture


class _Var:
    def __init__(self, d):
        self.d = d

    def __call__(self, x, s, **c):
        return self.d(x, s, **c)

    def with_variance(self, x, s, **c):
        return self.d(x, s, **c), torch.full_like(x, 0.3)


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 0
    dev = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    gm_cpu = GaussianMixture.random((3, 4, 4), 6, seed=0)
    gm_gpu = gm_cpu.to(dev)
    sig = G.karras_sigmas(12, 0.01, 20.0)
    x_cpu = 20.0 * torch.randn(64, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    failures = 0
    print(f"{'sampler':<24}{'max |gpu - cpu| (f64)':>22}{'syncs in loop':>15}{'us/step (16x3x64x64 f32)':>26}")
    for name in SM.available_samplers():
        spec = SM.get_sampler(name)
        wrap = _Var if name == "ddpm_learned_variance" else (lambda d: d)
        a = spec.fn(wrap(gm_cpu.denoiser()), x_cpu, sig, generator=torch.Generator().manual_seed(1))
        # A CPU generator drives a CUDA run: identical random numbers on both devices.
        b = spec.fn(wrap(gm_gpu.denoiser()), x_cpu.to(dev), sig, generator=torch.Generator().manual_seed(1))
        diff = (a - b.cpu()).abs().max().item()
        ok_diff = diff < 1e-8
        sync = "n/a (adaptive)"
        if name != "adaptive":
            x = x_cpu.to(dev)
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                spec.fn(wrap(gm_gpu.denoiser()), x, sig, generator=torch.Generator(device=dev).manual_seed(1))
                sync = "none"
            except RuntimeError as e:
                sync = f"SYNC: {str(e)[:40]}"
            finally:
                torch.cuda.set_sync_debug_mode(0)
        # The sampler's own cost: a trivial denoiser on an image-sized batch.
        xb = torch.randn(16, 3, 64, 64, device=dev)
        triv = wrap(lambda x, s, **c: x * 0.5)
        n = 50
        grid = G.karras_sigmas(n, 0.01, 20.0)
        kw = {"rtol": 1e-2, "atol": 1e-2} if name == "adaptive" else {}
        for _ in range(2):
            spec.fn(triv, xb, grid, generator=torch.Generator(device=dev).manual_seed(0), **kw)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        reps = 5
        for _ in range(reps):
            spec.fn(triv, xb, grid, generator=torch.Generator(device=dev).manual_seed(0), **kw)
        torch.cuda.synchronize()
        us = (time.perf_counter() - t0) / (reps * n) * 1e6
        failures += (not ok_diff) + sync.startswith("SYNC")
        print(f"{name:<24}{diff:>22.1e}{sync:>15}{us:>26.1f}")

    # The Denoiser wrapper under bf16 autocast and torch.compile, on a small conv net.
    from multidiff import Denoiser
    from multidiff.schedules import DiscreteSchedule

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = torch.nn.Conv2d(3, 64, 3, padding=1)
            self.c2 = torch.nn.Conv2d(64, 3, 3, padding=1)

        def forward(self, x, t):
            return self.c2(torch.nn.functional.silu(self.c1(x) + t.view(-1, 1, 1, 1) / 1000))

    net = Net().to(dev)
    den = Denoiser(net, DiscreteSchedule.linear(), "eps")
    x = 10 * torch.randn(8, 3, 32, 32, device=dev)
    grid = G.karras_sigmas(10, 0.02, 10.0)
    with torch.no_grad():
        ref = SM.sample_dpmpp_2m(den, x, grid)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf = SM.sample_dpmpp_2m(den, x, grid)
        den_c = Denoiser(torch.compile(net), DiscreteSchedule.linear(), "eps")
        comp = SM.sample_dpmpp_2m(den_c, x, grid)
    rel_bf = ((bf.float() - ref).norm() / ref.norm()).item()
    rel_c = ((comp - ref).norm() / ref.norm()).item()
    print(
        f"Denoiser + dpmpp_2m: bf16 autocast rel. diff {rel_bf:.1e} (dtype {bf.dtype}), torch.compile rel. diff {rel_c:.1e}"
    )
    # compile picks other convolution kernels (TF32 allowed): agreement to 1e-3 is what float32 gives.
    failures += not (torch.isfinite(bf).all() and rel_bf < 5e-2 and rel_c < 1e-3)
    failures += _check_cuda_graphs()
    print("all checks passed" if failures == 0 else f"{failures} check(s) failed")
    return 1 if failures else 0


def _check_cuda_graphs() -> int:
    """``train.cuda_graphs`` against eager training on the digits config at 16x16 (bf16 auto),
    for what the small-config benchmark does not cover: gradient accumulation, self-conditioning,
    dropout (random draws inside the graph), flips, compile; and graphed against eager sampling
    of the self-conditioned model. Same seed and batches: the weights must agree to float rounding."""
    import tempfile

    from multidiff import config as C
    from multidiff.pipeline import generate
    from multidiff.train import Trainer

    base = {
        "modality": "image",
        "data": {"source": "digits", "size": 16, "random_flip": True},
        "model": {"preset": "tiny"},
        "diffusion": {"schedule": {"kind": "cosine_discrete", "num_steps": 1000}, "parameterization": "v"},
        "train": {"steps": 100, "batch_size": 32, "lr": 1e-3, "warmup_steps": 3, "progress": False},
    }
    variants = {
        "grad_accum 2": {"train": {"grad_accum": 2}},
        "self_condition": {"model": {"preset": "tiny", "self_condition": True}},
        "dropout 0.1": {"model": {"preset": "tiny", "dropout": 0.1}},
        "compile": {"train": {"compile": True}},
    }
    failures = 0
    print(f"{'train.cuda_graphs vs eager, 8 steps':<40}{'max rel. weight diff':>22}")
    trained = None
    for name, change in variants.items():
        weights = []
        for graphs in (False, True):
            d = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
            for k, v in change.items():
                d[k] = {**d[k], **v}
            d["train"]["cuda_graphs"] = graphs
            d["out_dir"] = tempfile.mkdtemp()
            try:
                tr = Trainer(C.resolve_config(d))
                batches = tr._loader()
                for _ in range(8):
                    tr.train_step(batches)
                torch.cuda.synchronize()
            except Exception as e:  # report and go on
                print(f"{name + f' graphs={graphs}':<40}{'FAILED: ' + type(e).__name__ + ': ' + str(e)[:200]:>22}")
                failures += 1
                break
            weights.append([p.detach().float() for p in (*tr.net.parameters(), *tr.ema.parameters())])
            if name == "self_condition" and graphs:
                trained = tr
        if len(weights) == 2:
            diff = max(float((a - b).abs().max() / a.abs().max().clamp(min=1e-12)) for a, b in zip(*weights))
            failures += not diff < 1e-5
            print(f"{name:<40}{diff:>22.1e}")
    if trained is not None:
        trained.ema_denoiser.eval()
        kw = dict(n=300, steps=20, guidance_scale=2.0, batch_size=128)
        a, _ = generate(trained.ema_denoiser, trained.info, cuda_graphs=False, **kw)
        b, _ = generate(trained.ema_denoiser, trained.info, cuda_graphs=True, **kw)
        diff = float((a - b).abs().max())
        failures += not diff < 1e-3
        print(f"{'generate, self-conditioned, guided':<40}{diff:>22.1e}  (max abs, graphed vs eager)")
    return failures


if __name__ == "__main__":
    sys.exit(main())
