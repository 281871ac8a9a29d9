"""Sampler benchmark: multidiff's samplers against k-diffusion and diffusers on exact denoisers.

Run from the repository root::

    python -m benchmarks.samplers            # full run (24 min on 2 busy cores, 2026-12-04)
    python -m benchmarks.samplers --quick    # smoke run (NFE 10 and 20, few samples)
    python -m benchmarks.samplers --out results.md
    python -m benchmarks.samplers --quick --csv samplers.csv   # then: python -m benchmarks.plot_samplers samplers.csv

Problems
    Two Gaussian mixtures from :mod:`multidiff.testing` whose denoiser is known in closed form, so
    every error below is the sampler's own (no network error): a 2-D ring of 8 modes and a 64-D
    mixture of 10 diagonal components. Each is run on two noise ranges (``CASES``), those of the
    two 1000-step schedules all three libraries share: DDPM's linear betas 1e-4..0.02
    (:meth:`multidiff.schedules.DiscreteSchedule.linear`; VE sigma from about 0.01 to 157) and
    Stable Diffusion's scaled-linear betas 0.00085..0.012
    (:meth:`~multidiff.schedules.DiscreteSchedule.scaled_linear`; sigma from about 0.029 to 14.6).
    The second's smallest sigma is comparable to the ring's component std (0.1), so the last step
    to sigma 0 matters there. Every sampler starts from the same ``x_T = sigma_max * z`` (VE view,
    fixed seed) of its case.

Metrics (at NFE 5, 10, 20, 50, 100, i.e. network evaluations, counted by wrapping the denoiser)
    ODE error    deterministic samplers only: mean over samples of the L2 distance between the
                 sampler's output and the exact endpoint of the probability-flow ODE from the same
                 ``x_T`` (:meth:`GaussianMixture.ode_solution`, RK4 with 2000 steps, float64).
                 Its median is reported too: a sample near the boundary between two components'
                 basins can end in the other component (an error of about 9 in 64-D), and a
                 single such sample in 1000 moves the mean by 0.01.
    LL gap       ``E_true[log p] - mean log p(samples)`` with the exact density; 0 for a perfect
                 sampler (up to Monte-Carlo noise), positive when samples lie off the data,
                 negative when they collapse onto the modes' centres.
    mode TV      total variation ``0.5 * sum_k |w_hat_k - w_k|`` between the fraction of samples
                 whose most likely component is ``k`` (:meth:`GaussianMixture.mode_weights`) and
                 the true weights.
    SW           sliced 1-Wasserstein distance to an equally large set of true samples.
    us/step      the sampler's own cost: wall time per step (a step is one grid interval; Heun
                 makes 2 evaluations per step) on a (16, 3, 64, 64) float32 tensor with the trivial
                 denoiser ``x * 0.5``, at 20 NFE, minus the time of the trivial denoiser calls
                 themselves; fastest of several runs (the least disturbed by other load), grid
                 construction or ``set_timesteps`` included (not the construction of a diffusers
                 scheduler, which a pipeline does once).
    The stochastic metrics of a perfect sampler are not 0: each table has a "true samples" row,
    the mean metrics of 8 further independent sets of true samples, which is their noise floor
    (one set's SW varies by about +-30% from seed to seed).

How the peers are run
    k-diffusion (``k_diffusion.sampling``): called with the exact denoiser as its model (the same
        ``D(x, sigma)`` contract), on ``get_sigmas_karras`` over the same sigma range, in float64.
        ``sample_dpmpp_3m_sde`` with ``eta=0`` is its DPM-Solver++(3M) ODE solver; ``sample_lms``
        (linear multistep of order 4 in sigma, whose last step integrates to sigma 0 with the same
        polynomial) is matched with our third-order samplers. Stochastic
        samplers get a plain Gaussian ``noise_sampler`` from a seeded generator.
        ``sample_dpm_adaptive`` stops at ``sigma_min``; one extra denoiser call (counted) takes its
        result to sigma 0.
    diffusers (schedulers only; the case's betas: ``beta_schedule='linear'``, 1e-4..0.02 or
        ``'scaled_linear'``, 0.00085..0.012; 1000 training steps, ``prediction_type='epsilon'``): the documented loop ``for t in scheduler.timesteps:
        inp = scale_model_input(x, t); eps = model(inp, t); x = step(eps, t, x).prev_sample``. The
        eps model is built from the exact mixture at the call: ``t`` -> VE ``sigma_t`` (the table's
        sigma at integer ``t``, log-sigma interpolated in between), ``alpha_t = 1/sqrt(1 + sigma_t^2)``,
        ``eps = gm.eps(inp / alpha_t, sigma_t)``. The starting sample is the same ``x_T`` in the
        scheduler's own space: ``alpha_T * x_T`` for the VP schedulers (``init_noise_sigma == 1``)
        and ``x_T`` itself for those that scale their input (Euler, Euler ancestral, Heun). The
        final sample is used as is. Samples are float64; several schedulers compute their update in
        float32 internally (``sample.to(torch.float32)``), which we leave alone.
        Each scheduler runs in its default configuration and in one or two tuned ones made of
        documented options (Karras sigmas, uniform log-SNR via ``use_lu_lambdas`` or
        ``use_exponential_sigmas``, ``clip_sample=False``, ``timestep_spacing='trailing'``), the
        strongest of a wider set screened on these problems; see ``DIFFUSERS`` below.
    multidiff: every registered sampler with its default options on three grids (``OUR_GRIDS``):
        Karras (rho = 7) and uniform log-SNR over the case's sigma range, and the table's integer
        timesteps spaced 'trailing'; for a budget of N evaluations the largest number of steps with
        ``nfe(steps) <= N`` (the same rule for the peers: Heun gets 2 * steps - 1).
        ``adaptive`` (tolerance-driven) and k-diffusion's adaptive solver are reported separately
        at a few tolerances, with the evaluations they used. ``ddpm_learned_variance`` needs a
        network that predicts a variance and is skipped.

Ratios
    Each multidiff sampler is matched with its peers' counterpart (euler ~ Euler, heun ~ Heun,
    dpmpp_2m ~ DPM-Solver++ 2M, dpmpp_3m ~ 3M, dpmpp_2m_sde ~ 2M SDE, unipc ~ UniPC, ddim ~ DDIM,
    ddpm ~ DDPM, euler_ancestral ~ Euler ancestral). Both sides get their best configuration at
    each NFE: ours the best of its three grids, the peer the best of its default and tuned
    configurations (k-diffusion: Karras only). The ratio is our error / their error: ODE error for
    deterministic pairs, SW and mode TV for stochastic ones. Targets: no ratio above 1, and at 10
    NFE our best deterministic sampler's ODE error at most half of the best peer's. The tables also
    name, per sampler, the grid with the lowest geometric-mean error over all NFE and all problems
    (the one to recommend when a single grid must be chosen). Per problem, a last row compares the
    best deterministic sampler of each side at each NFE (any sampler, grid or configuration), the
    issue's target: at most 1 at every NFE, at most 0.5 at 10 NFE on at least one problem.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import importlib.metadata
import importlib.util
import logging
import math
import os
import platform
import subprocess
import sys
import time
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from benchmarks.common import load_kdiffusion_sampling
from benchmarks.common import markdown_table as md_table
from multidiff import grids
from multidiff.samplers import NFECounter, available_samplers, get_sampler
from multidiff.schedules import DiscreteSchedule
from multidiff.testing import GaussianMixture, sliced_wasserstein

NFES = (5, 10, 20, 50, 100)
QUICK_NFES = (10, 20)
ADAPTIVE_TOLS = (1e-2, 1e-3, 1e-4)
SKIPPED = ("ddpm_learned_variance",)  # needs denoiser.with_variance
FLOOR_SETS = 8  # independent true-sample sets averaged for the noise floor


# Matched pairs: our sampler -> the peers' counterparts (implementation, sampler name).
PAIRS: dict[str, list[tuple[str, str]]] = {
    "euler": [("k-diffusion", "sample_euler"), ("diffusers", "EulerDiscrete")],
    "heun": [("k-diffusion", "sample_heun"), ("diffusers", "HeunDiscrete")],
    "dpmpp_2m": [("k-diffusion", "sample_dpmpp_2m"), ("diffusers", "DPMSolverMultistep 2M")],
    "dpmpp_3m": [
        ("k-diffusion", "sample_dpmpp_3m_sde eta=0"),
        ("k-diffusion", "sample_lms"),
        ("diffusers", "DPMSolverMultistep 3M"),
    ],
    "unipc": [("k-diffusion", "sample_lms"), ("diffusers", "UniPCMultistep")],
    "ddim": [("diffusers", "DDIM")],
    "dpmpp_2m_sde": [("k-diffusion", "sample_dpmpp_2m_sde"), ("diffusers", "DPMSolverMultistep 2M SDE")],
    "ddpm": [("diffusers", "DDPM")],
    "euler_ancestral": [("k-diffusion", "sample_euler_ancestral"), ("diffusers", "EulerAncestralDiscrete")],
}


class Case:
    """A 1000-step training schedule all three libraries share: its table of sigmas, and the
    same betas as diffusers' scheduler options."""

    def __init__(self, name: str, table: DiscreteSchedule, betas: dict[str, Any]) -> None:
        self.name, self.table, self.betas = name, table, betas
        self.sigmas = table.sigmas()  # increasing, float64
        self.sigma_min = float(self.sigmas[0])
        self.sigma_max = float(self.sigmas[-1])
        self.log_sigmas = self.sigmas.log()

    def table_sigma(self, t: float) -> float:
        """VE sigma of the table at timestep ``t``: exact at integers, log-linear in between."""
        t = min(max(t, 0.0), self.sigmas.numel() - 1.0)
        lo = min(int(math.floor(t)), self.sigmas.numel() - 2)
        w = t - lo
        return math.exp(float(self.log_sigmas[lo]) * (1 - w) + float(self.log_sigmas[lo + 1]) * w)


CASES = (
    Case("DDPM linear", DiscreteSchedule.linear(), dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)),
    Case(
        "SD scaled-linear",
        DiscreteSchedule.scaled_linear(),
        dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    ),
)

# Our grids, by name: Karras (rho = 7) and uniform log-SNR over the case's sigma range, and the
# table's own integer timesteps with 'trailing' spacing (its last step jumps from sigma(t) to 0).
OUR_GRIDS: dict[str, Callable[[Case, int], Tensor]] = {
    "karras": lambda c, n: grids.karras_sigmas(n, c.sigma_min, c.sigma_max),
    "logsnr": lambda c, n: grids.logsnr_uniform_sigmas(n, c.sigma_min, c.sigma_max),
    "trailing": lambda c, n: grids.uniform_t_sigmas(c.table, n, "trailing"),
}
TIE = 0.005  # |ratio - 1| below this is a tie (same algorithm, rounding differences)


def vp_alpha(sigma: float) -> float:
    """VP signal scale of VE noise level ``sigma``: ``x_vp = alpha * x_ve``."""
    return 1.0 / math.sqrt(1.0 + sigma * sigma)


# ---------------------------------------------------------------------------------------------
# What a sampler is run against: the exact mixture, or a trivial model for timing


class ExactTarget:
    """The exact mixture, as a denoiser ``D(x, sigma)`` and as diffusers' eps model ``eps(x_vp, t)``
    on the timesteps of ``case``."""

    def __init__(self, gm: GaussianMixture, case: Case) -> None:
        self.gm, self.case = gm, case
        self.denoiser = gm.denoiser()

    def eps_vp(self, x_vp: Tensor, t: Tensor | float) -> Tensor:
        sigma = self.case.table_sigma(float(t))
        x_ve = x_vp / vp_alpha(sigma)
        return self.gm.eps(x_ve, sigma).to(x_vp.dtype)


class TrivialTarget:
    """A model that costs next to nothing, to time the samplers' own work."""

    def __init__(self, case: Case) -> None:
        self.case = case

    @staticmethod
    def denoiser(x: Tensor, sigma: Tensor, **_: Any) -> Tensor:
        return x * 0.5

    @staticmethod
    def eps_vp(x: Tensor, t: Tensor | float) -> Tensor:
        return x * 0.5


Target = ExactTarget | TrivialTarget


class _Counter:
    """Counts the calls of any callable (diffusers' eps model)."""

    def __init__(self, fn: Callable[..., Tensor]) -> None:
        self.fn, self.nfe = fn, 0

    def __call__(self, *args: Any) -> Tensor:
        self.nfe += 1
        return self.fn(*args)


def steps_for_budget(nfe_of_steps: Callable[[int], int], budget: int) -> int:
    """The largest number of steps whose evaluation count fits in ``budget`` (at least 1)."""
    steps = 1
    while nfe_of_steps(steps + 1) <= budget:
        steps += 1
    return steps


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


# ---------------------------------------------------------------------------------------------
# Methods: one sampler in one configuration


RunFn = Callable[[Target, Tensor, int, torch.Generator], tuple[Tensor, int]]


@dataclass
class Method:
    impl: str  # "multidiff", "k-diffusion" or "diffusers"
    name: str  # the sampler as its library calls it
    config: str  # grid or configuration, for the tables
    family: str  # our sampler it matches (PAIRS)
    stochastic: bool
    run: RunFn  # (target, x_T in VE, NFE budget, generator) -> (x0, NFE used)
    steps: Callable[[int], int] = lambda n: n  # grid steps used for an NFE budget

    @property
    def label(self) -> str:
        return f"{self.impl} | {self.name} | {self.config}"


def our_methods() -> list[Method]:
    out = []
    for name in available_samplers():
        if name in SKIPPED or name == "adaptive":
            continue
        spec = get_sampler(name)
        for grid, make in OUR_GRIDS.items():

            def run(
                target: Target, x: Tensor, nfe: int, gen: torch.Generator, spec=spec, make=make
            ) -> tuple[Tensor, int]:
                counter = NFECounter(target.denoiser)
                sigmas = make(target.case, steps_for_budget(spec.nfe, nfe))
                x0 = spec.fn(counter, x, sigmas, generator=gen if spec.stochastic else None)
                return x0, counter.nfe

            out.append(
                Method(
                    "multidiff",
                    name,
                    grid,
                    name,
                    spec.stochastic,
                    run,
                    steps=lambda n, spec=spec: steps_for_budget(spec.nfe, n),
                )
            )
    return out


# --- k-diffusion ---------------------------------------------------------------------------------


KDIFFUSION = (
    # (function, our family, stochastic, options, NFE of n steps)
    ("sample_euler", "euler", False, {}, lambda n: n),
    ("sample_heun", "heun", False, {}, lambda n: 2 * n - 1),
    ("sample_dpmpp_2m", "dpmpp_2m", False, {}, lambda n: n),
    ("sample_dpmpp_3m_sde", "dpmpp_3m", False, {"eta": 0.0}, lambda n: n),
    ("sample_lms", "dpmpp_3m", False, {}, lambda n: n),
    ("sample_euler_ancestral", "euler_ancestral", True, {}, lambda n: n),
    ("sample_dpmpp_2m_sde", "dpmpp_2m_sde", True, {}, lambda n: n),
)


def kdiffusion_methods(kds: types.ModuleType) -> list[Method]:
    out = []
    for fn_name, family, stochastic, options, nfe_of in KDIFFUSION:
        fn = getattr(kds, fn_name)

        def run(
            target: Target,
            x: Tensor,
            nfe: int,
            gen: torch.Generator,
            fn=fn,
            options=options,
            nfe_of=nfe_of,
            stochastic=stochastic,
        ) -> tuple[Tensor, int]:
            counter = NFECounter(target.denoiser)
            with default_dtype(x.dtype):
                c = target.case
                sigmas = kds.get_sigmas_karras(steps_for_budget(nfe_of, nfe), c.sigma_min, c.sigma_max, device=x.device)
            extra = dict(options)
            if stochastic:
                extra["noise_sampler"] = lambda s, s_next: torch.randn(x.shape, generator=gen, dtype=x.dtype).to(
                    x.device
                )
            elif "eta" in options:  # sample_dpmpp_3m_sde would otherwise build a Brownian tree it never uses
                extra["noise_sampler"] = lambda s, s_next: torch.zeros_like(x)
            x0 = fn(counter, x.clone(), sigmas, disable=True, **extra)
            return x0, counter.nfe

        name = fn_name + (" eta=0" if options.get("eta") == 0.0 else "")
        out.append(
            Method(
                "k-diffusion",
                name,
                "karras",
                family,
                stochastic,
                run,
                steps=lambda n, nfe_of=nfe_of: steps_for_budget(nfe_of, n),
            )
        )
    return out


# --- diffusers -----------------------------------------------------------------------------------


COMMON = dict(num_train_timesteps=1000, prediction_type="epsilon")  # and the case's betas

DIFFUSERS = (
    # (display name, scheduler class, our family, stochastic, base options, tuned option sets).
    # The tuned sets are documented options of each scheduler, screened on these problems:
    # Karras sigmas, uniform log-SNR (use_lu_lambdas / use_exponential_sigmas, the counterpart of
    # our logsnr grid), 'trailing' spacing and clip_sample=False (Lin et al. 2024).
    (
        "DDIM",
        "DDIMScheduler",
        "ddim",
        False,
        {},
        [
            {"clip_sample": False, "timestep_spacing": "trailing"},
            {"clip_sample": False, "timestep_spacing": "linspace"},
        ],
    ),
    (
        "EulerDiscrete",
        "EulerDiscreteScheduler",
        "euler",
        False,
        {},
        [{"use_karras_sigmas": True}, {"use_exponential_sigmas": True}],
    ),
    (
        "HeunDiscrete",
        "HeunDiscreteScheduler",
        "heun",
        False,
        {},
        [{"use_karras_sigmas": True}, {"timestep_spacing": "trailing"}],
    ),
    (
        "DPMSolverMultistep 2M",
        "DPMSolverMultistepScheduler",
        "dpmpp_2m",
        False,
        {"solver_order": 2},
        [{"use_karras_sigmas": True}, {"use_lu_lambdas": True}],
    ),
    (
        "DPMSolverMultistep 3M",
        "DPMSolverMultistepScheduler",
        "dpmpp_3m",
        False,
        {"solver_order": 3},
        [{"use_karras_sigmas": True}, {"use_lu_lambdas": True}],
    ),
    (
        "UniPCMultistep",
        "UniPCMultistepScheduler",
        "unipc",
        False,
        {},
        [{"use_karras_sigmas": True}, {"use_exponential_sigmas": True}],
    ),
    ("DDPM", "DDPMScheduler", "ddpm", True, {}, [{"clip_sample": False, "timestep_spacing": "trailing"}]),
    (
        "EulerAncestralDiscrete",
        "EulerAncestralDiscreteScheduler",
        "euler_ancestral",
        True,
        {},
        [{"timestep_spacing": "trailing"}],
    ),
    (
        "DPMSolverMultistep 2M SDE",
        "DPMSolverMultistepScheduler",
        "dpmpp_2m_sde",
        True,
        {"algorithm_type": "sde-dpmsolver++"},
        [{"use_karras_sigmas": True}, {"use_lu_lambdas": True}],
    ),
)


def load_diffusers() -> types.ModuleType | None:
    try:
        import diffusers
    except Exception as exc:  # pragma: no cover - depends on the environment
        print(f"# diffusers not usable: {exc!r}", file=sys.stderr)
        return None
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    try:
        diffusers.utils.logging.set_verbosity_error()
    except Exception:
        pass
    return diffusers


def _options_text(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items()) or "default"


def diffusers_methods(diffusers: types.ModuleType) -> list[Method]:
    out = []
    for display, cls_name, family, stochastic, base, tuned in DIFFUSERS:
        cls = getattr(diffusers, cls_name)
        heun = cls_name == "HeunDiscreteScheduler"
        nfe_of = (lambda n: 2 * n - 1) if heun else (lambda n: n)
        for tuned_options in [None, *tuned]:
            options = {**base, **(tuned_options or {})}
            # One per case, built once and reused, as a pipeline does: set_timesteps resets the
            # per-run state.
            schedulers = {c.name: cls(**COMMON, **c.betas, **options) for c in CASES}

            def run(
                target: Target,
                x: Tensor,
                nfe: int,
                gen: torch.Generator,
                schedulers=schedulers,
                nfe_of=nfe_of,
                stochastic=stochastic,
            ) -> tuple[Tensor, int]:
                scheduler = schedulers[target.case.name]
                scheduler.set_timesteps(steps_for_budget(nfe_of, nfe), device=x.device)
                # The same x_T in the scheduler's own space.
                if float(scheduler.init_noise_sigma) > 1.0:
                    sample = x.clone()
                else:
                    sample = x * vp_alpha(target.case.sigma_max)
                model = _Counter(target.eps_vp)
                step_kwargs = {"generator": gen} if stochastic else {}
                for t in scheduler.timesteps:
                    eps = model(scheduler.scale_model_input(sample, t), t)
                    sample = scheduler.step(eps, t, sample, **step_kwargs).prev_sample
                return sample, model.nfe

            config = "default" if tuned_options is None else _options_text(tuned_options)
            out.append(
                Method(
                    "diffusers",
                    display,
                    config,
                    family,
                    stochastic,
                    run,
                    steps=lambda n, nfe_of=nfe_of: steps_for_budget(nfe_of, n),
                )
            )
    return out


# --- adaptive solvers ----------------------------------------------------------------------------


def adaptive_methods(kds: types.ModuleType | None, tols: tuple[float, ...]) -> list[tuple[str, str, float, Callable]]:
    """(implementation, solver, tolerance, run(target, x) -> (x0, NFE)) for the tolerance-driven solvers."""
    out = []
    spec = get_sampler("adaptive")
    for tol in tols:

        def run(target: Target, x: Tensor, tol=tol) -> tuple[Tensor, int]:
            counter = NFECounter(target.denoiser)
            sigmas = torch.tensor([target.case.sigma_max, target.case.sigma_min, 0.0], dtype=torch.float64)
            return spec.fn(counter, x, sigmas, rtol=tol, atol=tol), counter.nfe

        out.append(("multidiff", "adaptive (Dormand-Prince 5(4))", tol, run))
    if kds is not None:
        for tol in tols:

            def run_kd(target: Target, x: Tensor, tol=tol) -> tuple[Tensor, int]:
                counter = NFECounter(target.denoiser)
                c = target.case
                xs = kds.sample_dpm_adaptive(
                    counter, x.clone(), c.sigma_min, c.sigma_max, rtol=tol, atol=tol, disable=True
                )
                # It stops at sigma_min: one more evaluation takes it to sigma 0.
                x0 = counter(xs, torch.full((x.shape[0],), c.sigma_min, dtype=x.dtype, device=x.device))
                return x0, counter.nfe

            out.append(("k-diffusion", "sample_dpm_adaptive (DPM-Solver-23) + final denoise", tol, run_kd))
    return out


# ---------------------------------------------------------------------------------------------
# Problems and metrics


@dataclass
class Problem:
    name: str
    gm: GaussianMixture
    case: Case
    x_T: Tensor  # (N, *shape), VE, at case.sigma_max
    x_ref: Tensor  # exact ODE endpoint from x_T
    true: Tensor  # true samples for SW
    expected_log_prob: float
    floor: dict[str, float] = field(default_factory=dict)


def make_problem(name: str, gm: GaussianMixture, case: Case, n: int, ode_steps: int, seed: int) -> Problem:
    g = torch.Generator().manual_seed(seed)
    x_T = case.sigma_max * torch.randn((n, *gm.shape), generator=g, dtype=torch.float64)
    x_ref = gm.ode_solution(x_T, case.sigma_max, steps=ode_steps)
    true, _ = gm.sample(n, generator=torch.Generator().manual_seed(seed + 1))
    p = Problem(f"{name}, {case.name}", gm, case, x_T, x_ref, true, gm.expected_log_prob())
    # The noise floor: the metrics of independent sets of true samples (their mean over a few sets,
    # since one set's SW or TV is itself a noisy number).
    floors = [
        evaluate(p, gm.sample(n, generator=torch.Generator().manual_seed(seed + 100 + i))[0], stochastic=True)
        for i in range(FLOOR_SETS)
    ]
    p.floor = {key: sum(f[key] for f in floors) / FLOOR_SETS for key in floors[0]}
    return p


def evaluate(p: Problem, x0: Tensor, stochastic: bool) -> dict[str, float]:
    x0 = x0.to(torch.float64)
    if not torch.isfinite(x0).all():
        nan = float("nan")
        return {"ode": nan, "ode_med": nan, "ll": nan, "tv": nan, "sw": nan}
    err = (x0 - p.x_ref).reshape(x0.shape[0], -1).norm(dim=1)
    return {
        "ode": float("nan") if stochastic else float(err.mean()),
        "ode_med": float("nan") if stochastic else float(err.median()),
        "ll": p.expected_log_prob - float(p.gm.log_prob(x0).mean()),
        "tv": 0.5 * float((p.gm.mode_weights(x0) - p.gm.weights).abs().sum()),
        "sw": sliced_wasserstein(x0, p.true),
    }


# ---------------------------------------------------------------------------------------------
# Timing


def time_method(method: Method, shape: tuple[int, ...], nfe: int, repeats: int, denoiser_us: float) -> float:
    """Microseconds per step of the sampler's own work (trivial denoiser's time subtracted).

    The fastest of ``repeats`` runs: the least disturbed by whatever else the machine does."""
    target = TrivialTarget(CASES[0])
    x = CASES[0].sigma_max * torch.randn(shape, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(0)
    method.run(target, x, nfe, gen)  # warm-up
    times = []
    used = nfe
    for _ in range(repeats):
        t0 = time.perf_counter()
        _, used = method.run(target, x, nfe, gen)
        times.append(time.perf_counter() - t0)
    steps = method.steps(nfe)
    return (min(times) * 1e6 - used * denoiser_us) / steps


def trivial_denoiser_us(shape: tuple[int, ...], repeats: int = 200) -> float:
    x = torch.randn(shape)
    s = torch.ones(shape[0])
    for _ in range(10):
        TrivialTarget.denoiser(x, s)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(repeats // 5):
            TrivialTarget.denoiser(x, s)
        times.append((time.perf_counter() - t0) / (repeats // 5))
    return min(times) * 1e6


# ---------------------------------------------------------------------------------------------
# Tables


def fmt(v: float | None, kind: str) -> str:
    if v is None:
        return "-"
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf"
    if kind.startswith("ode"):
        return f"{v:.2e}"
    if kind == "ratio":
        return f"{v:.2f}"
    return f"{v:.3g}"


METRICS = (
    ("ode", "ODE error (mean L2 to the exact PF-ODE endpoint; deterministic samplers)"),
    (
        "ode_med",
        "ODE error, median over samples (the mean above is dominated, in 64-D, by the few samples "
        "that end in another component than the exact ODE's)",
    ),
    ("ll", "LL gap (E_true[log p] - mean log p(samples))"),
    ("tv", "mode TV (total variation of the mode weights)"),
    ("sw", "SW (sliced Wasserstein to true samples)"),
)


def problem_section(
    p: Problem,
    methods: list[Method],
    results: dict,
    nfes: tuple[int, ...],
    adaptive: list[tuple[str, str, float, dict]],
) -> str:
    out = [f"### {p.name}", ""]
    nfe_head = [f"NFE {n}" for n in nfes]
    for key, title in METRICS:
        rows = []
        for m in methods:
            if key.startswith("ode") and m.stochastic:
                continue
            cells = []
            for n in nfes:
                r = results[(p.name, m.label, n)]
                cell = fmt(r[key], key)
                if r["nfe"] != n:
                    cell += f" ({r['nfe']})"
                cells.append(cell)
            rows.append([m.impl, m.name + (" (SDE)" if m.stochastic else ""), m.config, *cells])
        if not key.startswith("ode"):
            rows.append(["-", "true samples (noise floor, mean of 8 sets)", "-", *[fmt(p.floor[key], key)] * len(nfes)])
        out += [f"**{title}**", "", md_table(["impl", "sampler", "grid / config", *nfe_head], rows), ""]
    if adaptive:
        rows = [
            [
                impl,
                name,
                f"{tol:g}",
                str(r["nfe"]),
                fmt(r["ode"], "ode"),
                fmt(r["ll"], "ll"),
                fmt(r["tv"], "tv"),
                fmt(r["sw"], "sw"),
            ]
            for impl, name, tol, r in adaptive
        ]
        out += [
            "**Adaptive solvers** (rtol = atol = tol; NFE is what the tolerance cost)",
            "",
            md_table(["impl", "solver", "tol", "NFE", "ODE error", "LL gap", "mode TV", "SW"], rows),
            "",
        ]
    out.append("A cell `x (n)` was run with n evaluations instead of the column's (Heun: 2 steps - 1).")
    out.append("")
    return "\n".join(out)


def _score_key(m: Method) -> str:
    """The metric a method is ranked by: ODE error if deterministic, else SW."""
    return "sw" if m.stochastic else "ode"


def recommended_grids(
    problems: list[Problem], methods: list[Method], results: dict, nfes: tuple[int, ...]
) -> dict[str, str]:
    """For each of our samplers, the grid with the lowest geometric-mean error (ODE error, or SW
    for stochastic samplers) over every NFE and all problems."""
    best: dict[str, tuple[float, str]] = {}
    for m in methods:
        if m.impl != "multidiff":
            continue
        vals = [results[(p.name, m.label, n)][_score_key(m)] for p in problems for n in nfes]
        score = (
            sum(math.log(max(v, 1e-300)) for v in vals) / len(vals) if all(math.isfinite(v) for v in vals) else math.inf
        )
        if m.name not in best or score < best[m.name][0]:
            best[m.name] = (score, m.config)
    return {name: grid for name, (_, grid) in best.items()}


def ratio_section(
    problems: list[Problem], methods: list[Method], results: dict, nfes: tuple[int, ...]
) -> tuple[str, list[str]]:
    """The ratio tables, and the misses as text lines."""
    misses: list[str] = []
    at10: list[tuple[str, float]] = []  # (problem, best ours / best peer at 10 NFE)
    rec = recommended_grids(problems, methods, results, nfes)
    out = [
        "### Ratios: ours / peer, best configuration of each side at each NFE (target <= 1)",
        "",
        "Ours: the best of our grids at that NFE (letter: k = karras, l = logsnr, t = trailing). Peer: the best of "
        "its default and tuned configurations at that NFE. Deterministic pairs compare the ODE error, stochastic "
        f"pairs SW and mode TV. **x** marks a miss (ratio > {1 + TIE:g}); `=` a tie within {TIE:g} (same algorithm "
        "on the same grid); (noise) a miss where both values are within 1.5x the metric's noise floor.",
        "",
        "Recommended grid per sampler (lowest geometric-mean error over all NFE and all problems): "
        + ", ".join(f"{name}: {grid}" for name, grid in sorted(rec.items()))
        + ".",
        "",
    ]
    for p in problems:
        rows = []
        for family, peers in PAIRS.items():
            mine = [m for m in methods if m.impl == "multidiff" and m.name == family]
            if not mine:
                continue
            stochastic = mine[0].stochastic
            for impl, peer_name in peers:
                theirs = [m for m in methods if m.impl == impl and m.name == peer_name]
                if not theirs:
                    continue
                for key in ("sw", "tv") if stochastic else ("ode",):
                    cells = []
                    for n in nfes:
                        ours_best = min(mine, key=lambda m: results[(p.name, m.label, n)][key])
                        peer_best = min(theirs, key=lambda m: results[(p.name, m.label, n)][key])
                        a = results[(p.name, ours_best.label, n)][key]
                        b = results[(p.name, peer_best.label, n)][key]
                        ratio = a / b if b > 0 else math.inf
                        cell = f"{fmt(ratio, 'ratio')} {ours_best.config[0]}"
                        if abs(ratio - 1) <= TIE:
                            cell += " ="
                        elif not ratio <= 1 + TIE:
                            floor = p.floor.get(key, math.nan)
                            noise = max(a, b) <= 1.5 * floor
                            cell = f"**{cell}** x" + (" (noise)" if noise else "")
                            misses.append(
                                f"{p.name}: {family} ({ours_best.config}) vs {impl} {peer_name} ({peer_best.config}), "
                                f"{key} at NFE {n}: {fmt(a, key)} / {fmt(b, key)} = {fmt(ratio, 'ratio')}"
                                + (" [both within 1.5x the noise floor]" if noise else "")
                            )
                        cells.append(cell)
                    rows.append([family, f"{impl} {peer_name}", key, *cells])
        if not rows:
            out += [f"**{p.name}**: no peer library could be imported; nothing to compare.", ""]
            continue
        out += [f"**{p.name}**", "", md_table(["ours", "peer", "metric", *[f"NFE {n}" for n in nfes]], rows), ""]
        # The target: the best deterministic sampler of each side at every NFE (ratio <= 1),
        # and at 10 NFE at most half the best peer's error on at least one problem.
        det = [m for m in methods if not m.stochastic]
        ours_det = [m for m in det if m.impl == "multidiff"]
        peer_det = [m for m in det if m.impl != "multidiff"]
        if ours_det and peer_det:
            rows = []
            for n in nfes:
                mo = min(ours_det, key=lambda m: results[(p.name, m.label, n)]["ode"])
                mp = min(peer_det, key=lambda m: results[(p.name, m.label, n)]["ode"])
                eo, ep = results[(p.name, mo.label, n)]["ode"], results[(p.name, mp.label, n)]["ode"]
                ratio = eo / ep if ep > 0 else math.inf
                if n == 10:
                    at10.append((p.name, ratio))
                cell = fmt(ratio, "ratio")
                if not ratio <= 1.0:
                    cell = f"**{cell}** x"
                    misses.append(
                        f"{p.name}: best deterministic at NFE {n}: ours {mo.name} ({mo.config}) {fmt(eo, 'ode')} / "
                        f"{mp.impl} {mp.name} ({mp.config}) {fmt(ep, 'ode')} = {fmt(ratio, 'ratio')}"
                    )
                rows.append(
                    [
                        str(n),
                        f"{mo.name} ({mo.config})",
                        fmt(eo, "ode"),
                        f"{mp.impl} {mp.name} ({mp.config})",
                        fmt(ep, "ode"),
                        cell,
                    ]
                )
            out += [
                f"Best deterministic sampler of each side, {p.name} (target: ratio <= 1 at every NFE, "
                "<= 0.5 at 10 NFE on at least one problem):",
                "",
                md_table(["NFE", "ours", "ODE error", "best peer", "ODE error", "ratio"], rows),
                "",
            ]
    if at10:
        best = min(at10, key=lambda t: t[1])
        ok = best[1] <= 0.5
        out += [
            f"At 10 NFE the lowest best-vs-best ratio is {fmt(best[1], 'ratio')} ({best[0]}); target <= 0.5 on at "
            f"least one problem: {'met' if ok else '**missed**'}.",
            "",
        ]
        if not ok:
            misses.append(f"half-error target at NFE 10: lowest ratio {fmt(best[1], 'ratio')} ({best[0]})")
    return "\n".join(out), misses


def timing_section(
    methods: list[Method], timings: dict[str, float], shape: tuple[int, ...], denoiser_us: float, nfe: int
) -> str:
    rows = [[m.impl, m.name, m.config, str(m.steps(nfe)), f"{timings[m.label]:.0f}"] for m in methods]
    head = (
        f"### Sampler overhead\n\nMicroseconds per step on a {tuple(shape)} float32 tensor with the trivial denoiser "
        f"`x * 0.5` at {nfe} NFE, minus the denoiser's own {denoiser_us:.0f} us per call; the fastest of "
        "several runs spread over the benchmark's last minute. Expect +-20% from run to run on a shared VM.\n"
    )
    return head + "\n" + md_table(["impl", "sampler", "grid / config", "steps", "us/step"], rows) + "\n"


def environment(date: str | None, used: dict[str, bool]) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except Exception:
        pass
    versions = [f"torch {torch.__version__}"]
    for dist in ("diffusers", "k-diffusion"):
        try:
            versions.append(f"{dist} {importlib.metadata.version(dist)}" + ("" if used[dist] else " (not usable)"))
        except Exception:
            versions.append(f"{dist} not installed")
    commit = "unknown"
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        root = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10, cwd=here
        )
        if root.returncode == 0:
            commit = root.stdout.strip()
            diff = ["git", "diff", "--quiet", "HEAD", "--", "../multidiff"]
            dirty = subprocess.run(diff, timeout=10, cwd=here).returncode != 0
            commit += " (multidiff/ modified)" if dirty else ""
    except Exception:
        pass
    return (
        f"multidiff at commit {commit}. "
        f"Machine: {cpu}, {torch.get_num_threads()} torch threads, CPU only. "
        f"Date: {date or datetime.date.today().isoformat()}. Versions: {', '.join(versions)}, Python {platform.python_version()}."
    )


def write_csv(path: str, problems: list[Problem], methods: list[Method], results: dict, nfes: tuple[int, ...]) -> None:
    """Every (problem, method, NFE) result as a row of :data:`benchmarks.plot_samplers.SAMPLER_CSV_FIELDS`
    (``nan`` where a metric does not apply), and per problem and NFE the noise floor of true
    samples (impl ``true samples``), for ``python -m benchmarks.plot_samplers``."""
    import csv

    from benchmarks.plot_samplers import FLOOR_IMPL, SAMPLER_CSV_FIELDS

    metrics = ("ode", "ode_med", "ll", "tv", "sw")
    rows = []
    for p in problems:
        for m in methods:
            for n in nfes:
                r = results[(p.name, m.label, n)]
                rows.append(
                    [p.name, m.impl, m.name, m.config, m.family, int(m.stochastic), n, r["nfe"]]
                    + [r[k] for k in metrics]
                )
        floor = [p.floor[k] for k in metrics]  # evaluated as stochastic: no ODE error
        rows += [[p.name, FLOOR_IMPL, "noise floor", "-", "", 1, n, 0, *floor] for n in nfes]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(SAMPLER_CSV_FIELDS)
        w.writerows(rows)


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="NFE 10 and 20, few samples (a few minutes)")
    ap.add_argument("--out", help="also write the markdown to this file")
    ap.add_argument("--csv", help="also write every result as CSV, for python -m benchmarks.plot_samplers")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--no-peers", action="store_true", help="only multidiff's samplers")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--date", help="date to print in the header (default: today)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    t_start = time.perf_counter()
    nfes = QUICK_NFES if args.quick else NFES
    n_ring, n_mix = (300, 100) if args.quick else (2000, 1000)
    ode_steps = 300 if args.quick else 2000
    tols = ADAPTIVE_TOLS[:2] if args.quick else ADAPTIVE_TOLS

    kds = None if args.no_peers else load_kdiffusion_sampling()
    diffusers = None if args.no_peers else load_diffusers()
    methods = our_methods()
    if kds is not None:
        methods += kdiffusion_methods(kds)
    if diffusers is not None:
        methods += diffusers_methods(diffusers)

    problems = [
        problem
        for case in CASES
        for problem in (
            make_problem("2-D ring, 8 modes", GaussianMixture.ring(n_modes=8), case, n_ring, ode_steps, args.seed),
            make_problem(
                "64-D mixture, 10 components",
                GaussianMixture.random(64, 10, seed=args.seed),
                case,
                n_mix,
                ode_steps,
                args.seed,
            ),
        )
    ]

    results: dict[tuple[str, str, int], dict[str, float]] = {}
    adaptive_results: dict[str, list[tuple[str, str, float, dict]]] = {}
    for p in problems:
        target = ExactTarget(p.gm, p.case)
        for m in methods:
            for n in nfes:
                gen = torch.Generator().manual_seed(args.seed + 3)
                x0, used = m.run(target, p.x_T, n, gen)
                results[(p.name, m.label, n)] = {**evaluate(p, x0, m.stochastic), "nfe": used}
        adaptive_results[p.name] = []
        for impl, name, tol, run in adaptive_methods(kds, tols):
            x0, used = run(target, p.x_T)
            adaptive_results[p.name].append((impl, name, tol, {**evaluate(p, x0, False), "nfe": used}))
        print(f"# {p.name}: done at {time.perf_counter() - t_start:.0f} s", file=sys.stderr)

    shape = (16, 3, 64, 64)
    t_nfe = 20
    d_us = trivial_denoiser_us(shape)
    # Rounds over all methods, keeping each method's fastest: a passing slowdown of the machine
    # (other load, memory reclaim) then cannot hit every run of one method.
    timings: dict[str, float] = {}
    for _ in range(1 if args.quick else 3):
        for m in methods:
            us = time_method(m, shape, t_nfe, 3 if args.quick else 5, d_us)
            timings[m.label] = min(us, timings.get(m.label, math.inf))

    used = {"diffusers": diffusers is not None, "k-diffusion": kds is not None}
    parts = [
        "## Samplers",
        "",
        environment(args.date, used),
        "",
        f"Command: `python -m benchmarks.samplers{' --quick' if args.quick else ''}`; "
        f"samples: {n_ring} (ring), {n_mix} (64-D); reference ODE: RK4, {ode_steps} steps; "
        + "; ".join(f"{c.name}: sigma in [{c.sigma_min:.4g}, {c.sigma_max:.4g}]" for c in CASES)
        + ". `ddpm_learned_variance` is skipped "
        "(it needs a variance-predicting network). See the module docstring for definitions.",
        "",
    ]
    for p in problems:
        parts.append(problem_section(p, methods, results, nfes, adaptive_results[p.name]))
    ratios, misses = ratio_section(problems, methods, results, nfes)
    parts.append(ratios)
    parts.append(timing_section(methods, timings, shape, d_us, t_nfe))
    elapsed = time.perf_counter() - t_start
    parts.append(f"Total benchmark time: {elapsed:.0f} s.\n")
    text = "\n".join(parts)
    print(text)
    if misses:
        print("# Misses:\n" + "\n".join(f"#   {m}" for m in misses), file=sys.stderr)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    if args.csv:
        write_csv(args.csv, problems, methods, results, nfes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
