"""Editing with a trained denoiser, written once for tensors of any rank.

Every function here works in the denoiser's own space (the VE view ``x = x0 + sigma * eps`` of
:mod:`multidiff.denoiser`) on ``(B, C, *spatial)`` tensors, so the same code inpaints an image,
fills a gap in a waveform and completes a voxel grid. Each is either a transformation of the
denoiser (masked generation by replacement, condition mixing), which then works in every
sampler, or a transformation of the sampling loop (RePaint resampling, SDEdit's partial
noising, inversion along the probability-flow ODE):

* :func:`inpaint`: keep known values, generate the rest: ``method="replace"`` in any sampler,
  ``method="repaint"`` with RePaint's resampling (Lugmayr et al. 2022);
* :func:`sdedit`: noise an input to a strength in [0, 1] and denoise it (Meng et al. 2022);
* :func:`invert`: run the probability-flow ODE backwards, data to noise (Song et al. 2021, DDIM
  inversion; here also to second order), so that sampling the result returns the input;
* :func:`slerp` and :func:`interpolate`: decode a spherical path between two inverted noises,
  optionally mixing two conditions along it;
* :func:`diffedit_mask` and :func:`diffedit`: a mask where two conditions disagree, then an edit
  confined to it (Couairon et al. 2023).

A mask is boolean (or 0/1), broadcastable to the data, and **true where new content is
generated**; known values are kept exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from . import grids as G
from . import schedules as S
from ._util import append_dims, randn_like
from .samplers import Callback, check_sigmas, get_sampler, posterior

__all__ = [
    "MASK_METHODS",
    "INVERSION_SOLVERS",
    "check_mask",
    "region_mask",
    "masked_denoiser",
    "mixed_condition_denoiser",
    "repaint_path",
    "inpaint",
    "strength_to_sigma",
    "sdedit_sigmas",
    "sdedit",
    "invert",
    "slerp",
    "interpolate",
    "diffedit_mask",
    "diffedit",
]

DenoiserFn = Callable[..., Tensor]
MASK_METHODS = ("replace", "repaint", "smc")
INVERSION_SOLVERS = ("ddim", "dpmpp_2m", "heun")


# ---------------------------------------------------------------------------------------------
# Masks and masked generation


def check_mask(mask: Tensor, like: Tensor, name: str = "mask") -> Tensor:
    """``mask`` as a boolean tensor broadcast to ``like``'s shape, with a clear error otherwise.

    Accepted: boolean or 0/1 tensors of ``like``'s shape, of one example's shape ``(C, *spatial)``
    or ``(1, *spatial)``, or ``(B, 1, *spatial)``; anything torch broadcasts to ``like``.
    """
    m = torch.as_tensor(mask, device=like.device)
    if m.dtype != torch.bool:
        if not torch.isin(m.unique(), torch.tensor([0, 1], device=m.device, dtype=m.dtype)).all():
            raise ValueError(f"{name} must be boolean or hold only 0 and 1 (true = generate)")
        m = m.bool()
    try:
        return torch.broadcast_to(m, like.shape)
    except RuntimeError:
        raise ValueError(
            f"{name} of shape {tuple(m.shape)} does not match the data of shape {tuple(like.shape)} "
            f"(expected {tuple(like.shape[1:])}, (1, {', '.join(map(str, like.shape[2:]))}) or the full shape)"
        ) from None


def region_mask(spec: str, shape: tuple[int, ...]) -> Tensor:
    """A box mask ``(1, *spatial)`` from fractional ranges per spatial axis, true inside the box.

    ``spec`` is comma-separated ``lo:hi`` ranges in [0, 1], one per spatial axis, missing ends
    meaning 0 and 1, missing trailing axes meaning the whole axis: ``0.25:0.75,0.25:0.75`` is the
    centre of an image, ``0.5:`` the second half of a clip (continuation), ``0.4:0.6`` a gap in it
    (infill), ``:,:,0.5:`` the top half of a voxel grid along its last axis.
    """
    spatial = shape[1:]
    parts = [p.strip() for p in spec.split(",")]
    if len(parts) > len(spatial):
        raise ValueError(f"--region {spec!r} names {len(parts)} axes; the data has {len(spatial)} spatial axes")
    mask = torch.zeros((1, *spatial), dtype=torch.bool)
    box: list[slice] = [slice(None)]
    for axis, (part, n) in enumerate(zip(parts + [":"] * (len(spatial) - len(parts)), spatial)):
        lo_s, sep, hi_s = part.partition(":")
        try:
            lo = float(lo_s) if lo_s.strip() else 0.0
            hi = float(hi_s) if hi_s.strip() else 1.0
        except ValueError:
            lo, hi = -1.0, -1.0
        if not sep or not 0.0 <= lo < hi <= 1.0:
            raise ValueError(
                f"--region {spec!r}: axis {axis} must be 'lo:hi' with 0 <= lo < hi <= 1 (fractions of the axis), got {part!r}"
            )
        a, b = round(lo * n), round(hi * n)
        box.append(slice(a, max(b, a + 1)))
    mask[tuple(box)] = True
    return mask


def masked_denoiser(denoiser: DenoiserFn, known: Tensor, mask: Tensor) -> DenoiserFn:
    """Replacement as a transformation of the denoiser: ``D_m = where(mask, D(x, sigma), known)``.

    In a sampler the known coordinates of the state then follow ``known + sigma * z`` exactly (the
    probability-flow ODE and the DDPM posterior with a constant ``x0`` are solved exactly by every
    sampler here), which is the replacement method of score-based imputation (Song et al. 2021,
    app. I.2; RePaint's eq. 8 for the known part) without a separate noising step, and the
    sample ends on ``known`` wherever ``mask`` is false. ``mask`` is true where content is
    generated; ``known`` and ``mask`` broadcast against the batch.
    """
    known_m = known
    m = mask

    def masked(x: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
        d = denoiser(x, sigma, **cond)
        return torch.where(m, d, known_m.to(d.dtype))

    return masked


def mixed_condition_denoiser(
    denoiser: DenoiserFn, cond_a: Mapping[str, Any], cond_b: Mapping[str, Any], weight: Tensor | float
) -> DenoiserFn:
    """``(1 - w) D(x | a) + w D(x | b)``: linear interpolation between two conditions.

    Denoiser outputs are affine in the score (``D = x + sigma^2 score``), so this mixes the two
    conditional scores, the rule behind classifier-free guidance and composable diffusion (Liu et
    al. 2022, eq. 6); it needs nothing of the network, so it works for class labels as for any
    other condition. ``weight`` is a scalar or one value per sample ``(B,)``.
    """

    def mixed(x: Tensor, sigma: Tensor, **_: Any) -> Tensor:
        w = torch.as_tensor(weight, dtype=x.dtype, device=x.device)
        if w.ndim == 1:
            w = append_dims(w, x.ndim)
        return (1 - w) * denoiser(x, sigma, **cond_a) + w * denoiser(x, sigma, **cond_b)

    return mixed


def repaint_path(n_steps: int, jump_length: int, resample: int) -> list[int]:
    """The grid indices RePaint visits (Lugmayr et al. 2022, alg. 1 and the schedule of sec. 4.2).

    Index ``i`` is ``sigmas[i]``: the path starts at 0 (the largest sigma) and ends at ``n_steps``
    (sigma 0). Going down one index is a denoising step; going up is forward noising. Every
    ``jump_length`` steps above the clean end, the path goes back up ``jump_length`` steps and down
    again, ``resample - 1`` times, so each level there is denoised ``resample`` times in all.
    """
    if n_steps < 1 or jump_length < 1 or resample < 1:
        raise ValueError(
            f"need n_steps, jump_length and resample >= 1, got {n_steps}, {jump_length}, {resample} "
            "(resample=1 is plain replacement)"
        )
    # jump points counted in steps left to the clean end, as in the paper's schedule
    jumps = {t: resample - 1 for t in range(jump_length, n_steps - jump_length + 1, jump_length)}
    path, t = [0], n_steps
    while t > 0:
        t -= 1
        path.append(n_steps - t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                path.append(n_steps - t)
    return path


def _run_sampler(
    name: str, denoiser: DenoiserFn, x: Tensor, sigmas: Tensor, options: Mapping[str, Any] | None, **kwargs: Any
) -> Tensor:
    """The sampler called ``name`` with its own ``options``, checked first (a misspelt option names itself)."""
    spec = get_sampler(name)
    spec.check_options(dict(options or {}))
    return spec.fn(denoiser, x, sigmas, **kwargs, **dict(options or {}))


def _prior_with_known(known: Tensor, mask: Tensor, sigma: float, generator: torch.Generator | None) -> Tensor:
    """The starting state at ``sigma``: ``known + sigma z`` outside the mask, ``sigma z`` inside."""
    return torch.where(mask, torch.zeros_like(known), known) + sigma * randn_like(known, generator)


def inpaint(
    denoiser: DenoiserFn,
    known: Tensor,
    mask: Tensor,
    sigmas: Tensor,
    *,
    method: str = "replace",
    sampler: str = "dpmpp_2m",
    jump_length: int = 10,
    resample: int = 10,
    eta: float = 1.0,
    particles: int = 16,
    ess_threshold: float = 0.5,
    x: Tensor | None = None,
    cond: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    options: Mapping[str, Any] | None = None,
) -> Tensor:
    """Masked generation: sample where ``mask`` is true, keep ``known`` exactly elsewhere.

    Image inpainting, audio infill (a gap) and continuation (everything after a prefix), and
    voxel shape completion are this one function with different masks.

    Args:
        denoiser: ``D(x, sigma, **cond)``, possibly guided.
        known: ``(B, C, *spatial)`` in the denoiser's space; values under the mask are ignored.
        mask: true where content is generated (see :func:`check_mask` for accepted shapes).
        sigmas: the sampling grid (decreasing, ending in 0).
        method: ``"replace"``: :func:`masked_denoiser` in the sampler ``sampler`` (one pass, the
            network's NFE); ``"repaint"``: RePaint resampling (:func:`repaint_path`), each
            denoising step a DDIM step with ``eta`` (1: the DDPM posterior, as in the paper), each
            upward step forward noising ``x + sqrt(s_hi^2 - s_lo^2) z``. Resampling lets the
            generated part agree with the known part (harmonization); replacement alone decides
            the generated part from noisy known values and can miss the conditional's modes
            (measured in tests/test_editing.py and benchmarks/README.md).
            ``"smc"``: sequential Monte Carlo over ``particles`` copies of each example (SMCDiff,
            Trippe et al. 2023, alg. 2): the known part follows one forward-noised path of
            ``known``; each particle's unknown part takes a DDPM posterior step, is weighted by
            how likely that step makes the known part's next value, and particles are resampled
            when the effective sample size falls below ``ess_threshold * particles``. This is the
            one method whose result converges to the exact conditional distribution (as particles
            and steps grow, for an exact denoiser); it costs ``particles`` network evaluations per
            example and step, and returns one particle per example.
        jump_length, resample: RePaint's ``j`` and ``r`` (the paper uses 10 and 10).
        x: the starting state at ``sigmas[0]`` (default ``known + sigmas[0] z`` outside the mask,
            ``sigmas[0] z`` inside); used by :func:`diffedit` to start from an inverted input.
        options: extra keyword arguments for the sampler (``method="replace"``).

    Returns the sample; ``torch.equal(out[~mask], known[~mask])`` holds.
    """
    if method not in MASK_METHODS:
        raise ValueError(f"method must be one of {MASK_METHODS}, got {method!r}")
    m = check_mask(mask, known)
    grid = check_sigmas(sigmas)
    if x is None:
        x = _prior_with_known(known, m, grid[0], generator)
    elif x.shape != known.shape:
        raise ValueError(f"the starting state has shape {tuple(x.shape)}, the data {tuple(known.shape)}")
    d_m = masked_denoiser(denoiser, known, m)
    if method == "replace":
        out = _run_sampler(sampler, d_m, x, sigmas, options, cond=cond, generator=generator, callback=callback)
    elif method == "smc":
        if particles < 1:
            raise ValueError(f"particles must be at least 1, got {particles}")
        out = _smc(denoiser, known, m, grid, particles, ess_threshold, cond, generator, callback)
    else:
        if eta < 0:
            raise ValueError(f"eta must be non-negative, got {eta}")
        out = _repaint(d_m, x, grid, repaint_path(len(grid) - 1, jump_length, resample), eta, cond, generator, callback)
    return torch.where(m, out, known.to(out.dtype))


def _repaint(
    d_m: DenoiserFn,
    x: Tensor,
    grid: list[float],
    path: list[int],
    eta: float,
    cond: Mapping[str, Any] | None,
    generator: torch.Generator | None,
    callback: Callback | None,
) -> Tensor:
    cond = dict(cond or {})
    b = x.shape[0]
    for k, (i, j) in enumerate(zip(path[:-1], path[1:])):
        s, s_next = grid[i], grid[j]
        if j > i:  # denoise one step (DDIM with eta; eta = 1 samples the DDPM posterior)
            d = d_m(x, torch.full((b,), s, dtype=x.dtype, device=x.device), **cond)
            _, var = posterior(s, s_next)
            c2 = eta * eta * var
            x = d + math.sqrt(max(s_next * s_next - c2, 0.0)) * ((x - d) / s)
            if c2 > 0:
                x = x + math.sqrt(c2) * randn_like(x, generator)
            if callback is not None:
                callback({"i": k, "x": x, "sigma": s, "sigma_next": s_next, "denoised": d})
        else:  # forward noising back up to the higher level (VE: add independent noise)
            x = x + math.sqrt(s_next * s_next - s * s) * randn_like(x, generator)
    return x


def _repeat_cond(cond: Mapping[str, Any] | None, b: int, p: int) -> dict[str, Any]:
    """Per-example conditions repeated for ``p`` particles each."""
    out = {}
    for k, v in (cond or {}).items():
        out[k] = v.repeat_interleave(p, dim=0) if isinstance(v, Tensor) and v.ndim >= 1 and v.shape[0] == b else v
    return out


def _smc(
    denoiser: DenoiserFn,
    known: Tensor,
    m: Tensor,
    grid: list[float],
    p: int,
    ess_threshold: float,
    cond: Mapping[str, Any] | None,
    generator: torch.Generator | None,
    callback: Callback | None,
) -> Tensor:
    """SMCDiff (Trippe et al. 2023, alg. 2) with the DDPM posterior as proposal, in the VE view."""
    b = known.shape[0]
    shape = known.shape[1:]
    n = len(grid) - 1
    # one forward-noised path of the known values per example, from sigma 0 up: x_{i} = x_{i+1} + sqrt(s_i^2 - s_{i+1}^2) z
    path = [known]
    for i in range(n - 1, -1, -1):
        path.append(path[-1] + math.sqrt(grid[i] ** 2 - grid[i + 1] ** 2) * randn_like(known, generator))
    path = path[::-1]  # path[i] is at grid[i]
    rep = lambda t: t.repeat_interleave(p, dim=0)  # noqa: E731
    mp = rep(m)
    x = torch.where(mp, grid[0] * randn_like(mp.to(known.dtype), generator), rep(path[0]))
    cond_p = _repeat_cond(cond, b, p)
    logw = torch.zeros(b, p, dtype=torch.float64, device=known.device)
    sig = torch.empty(b * p, dtype=known.dtype, device=known.device)
    keep = (~mp).to(known.dtype)
    for i in range(n):
        s, s_next = grid[i], grid[i + 1]
        d = denoiser(x, sig.fill_(s), **cond_p)
        if s_next == 0:
            x = torch.where(mp, d, rep(known))
            if callback is not None:
                callback({"i": i, "x": x, "sigma": s, "sigma_next": s_next, "denoised": d})
            break
        r, var = posterior(s, s_next)
        mean = d + r * (x - d)
        target = rep(path[i + 1])
        # log N(known part of the next level; posterior mean, var): the weight of this transition
        logw += (-0.5 / var * ((target - mean) ** 2 * keep).reshape(b, p, -1).sum(-1)).double()
        x = torch.where(mp, mean + math.sqrt(var) * randn_like(mean, generator), target)
        logw -= logw.logsumexp(dim=1, keepdim=True)
        ess = 1.0 / logw.exp().pow(2).sum(dim=1)  # (b,)
        low = ess < ess_threshold * p
        if bool(low.any()):
            idx = _systematic_resample(logw, generator)  # (b, p)
            idx = torch.where(low.unsqueeze(1), idx, torch.arange(p, device=idx.device).expand(b, p))
            flat = (idx + p * torch.arange(b, device=idx.device).unsqueeze(1)).reshape(-1)
            x = x[flat]
            logw = torch.where(low.unsqueeze(1), torch.full_like(logw, -math.log(p)), logw)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": s, "sigma_next": s_next, "denoised": d})
    # one particle per example, drawn by the final weights
    u = torch.rand(b, 1, generator=generator, device=generator.device if generator is not None else None)
    pick = (logw.exp().cumsum(dim=1) < u.to(logw.device, torch.float64)).sum(dim=1).clamp_max(p - 1)
    return x.reshape(b, p, *shape)[torch.arange(b, device=x.device), pick.to(x.device)]


def _systematic_resample(logw: Tensor, generator: torch.Generator | None) -> Tensor:
    """Systematic resampling (Kitagawa 1996) per row of normalized log-weights ``(b, p)``: indices ``(b, p)``."""
    b, p = logw.shape
    u = torch.rand(b, 1, generator=generator, device=generator.device if generator is not None else None)
    pos = (u.to(logw.device, torch.float64) + torch.arange(p, device=logw.device, dtype=torch.float64)) / p
    cdf = logw.exp().cumsum(dim=1)
    cdf[:, -1] = 1.0
    return torch.searchsorted(cdf, pos).clamp_max(p - 1)


# ---------------------------------------------------------------------------------------------
# SDEdit


def strength_to_sigma(strength: float, schedule: S.Schedule | None, *, sigma_max: float | None = None) -> float:
    """The VE noise level at which an edit of ``strength`` in [0, 1] starts.

    ``strength`` is the fraction of the model's diffusion time: ``sigma(t = strength)`` of its
    training schedule (Meng et al. 2022 use ``t0`` in [0, 1] the same way), so 1 is the
    schedule's largest noise (a fresh sample) and 0 the input itself. Without a schedule (an EDM
    model) the EDM schedule from 0.002 to ``sigma_max`` (default 80) is used.
    """
    if not (isinstance(strength, int | float) and 0.0 <= float(strength) <= 1.0):
        raise ValueError(f"strength must lie in [0, 1], got {strength!r}")
    if schedule is None:
        schedule = S.EDMSchedule(sigma_max=sigma_max or 80.0)
    return float(S.sigma(schedule, torch.tensor(float(strength), dtype=torch.float64)))


def sdedit_sigmas(
    strength: float,
    steps: int,
    *,
    schedule: S.Schedule | None,
    grid: str = "karras",
    sigma_min: float | None = None,
) -> Tensor:
    """The sampling grid of an edit at ``strength``: ``steps`` steps from
    :func:`strength_to_sigma` down to 0. Grids uniform in time (``leading``, ``trailing``,
    ``linspace``) keep the points of the full grid of ``ceil(steps / strength)`` steps below
    the start, so an edit at strength 0.5 visits the levels of a full run at twice the steps."""
    s0 = strength_to_sigma(strength, schedule)
    if grid in ("leading", "trailing", "linspace"):
        if schedule is None:
            raise ValueError(f"grid {grid!r} needs a schedule")
        full = G.make_grid(grid, max(steps, math.ceil(steps / strength)), schedule=schedule)
        tail = full[(full < s0 * (1 - 1e-9))]
        return torch.cat([torch.tensor([s0], dtype=full.dtype), tail])
    lo = G.schedule_sigma_range(schedule)[0] if schedule is not None else 0.002
    lo = lo if sigma_min is None else sigma_min
    if s0 <= lo * (1 + 1e-6):  # below the smallest trained level: a single step to 0
        return torch.tensor([s0, 0.0], dtype=torch.float64)
    return G.make_grid(grid, steps, schedule=schedule, sigma_min=lo, sigma_max=s0)


def sdedit(
    denoiser: DenoiserFn,
    x: Tensor,
    strength: float,
    *,
    steps: int = 25,
    sampler: str = "dpmpp_2m",
    grid: str = "karras",
    schedule: S.Schedule | None = None,
    cond: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    options: Mapping[str, Any] | None = None,
) -> Tensor:
    """SDEdit (Meng et al. 2022, sec. 3): noise ``x`` to the level of ``strength`` and denoise.

    ``x_t = x + sigma(strength) z``, then ``steps`` steps of ``sampler`` from there under ``cond``
    (a class other than the input's changes its class). Strength 0 returns ``x``; 1 draws a fresh
    sample that ignores it. When ``x`` is distributed as the data, the result is too, exactly for
    an exact denoiser and ODE, at every strength (the noised input has the marginal the ODE maps to
    the data); a smaller strength keeps more of the input. ``schedule`` defaults to the
    denoiser's (``denoiser.schedule``).
    """
    schedule = schedule if schedule is not None else getattr(denoiser, "schedule", None)
    s0 = strength_to_sigma(strength, schedule)
    if strength == 0:
        return x.clone()
    sigmas = sdedit_sigmas(strength, steps, schedule=schedule, grid=grid)
    x_t = x + s0 * randn_like(x, generator)
    return _run_sampler(sampler, denoiser, x_t, sigmas, options, cond=cond, generator=generator, callback=callback)


# ---------------------------------------------------------------------------------------------
# Inversion and interpolation


def invert(
    denoiser: DenoiserFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    solver: str = "dpmpp_2m",
    cond: Mapping[str, Any] | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Map data ``x`` to its noise at ``sigmas[0]`` along the probability-flow ODE, backwards.

    ``sigmas`` is the grid a sampler would use to generate (decreasing, ending in 0); the ODE
    ``dx/dsigma = (x - D(x, sigma)) / sigma`` is integrated up the same points, from the last
    positive one (where ``x(sigma) = x + O(sigma^2)``, since ``dx/dsigma = -sigma * score``) to the
    first. Generating from the result with the matching sampler on the same grid returns ``x``
    up to the solver's discretization error, which falls with the number of steps
    (tests/test_editing.py measures it on the exact mixture):

    * ``ddim``: first order, ``x' = D + (s'/s)(x - D)`` (DDIM inversion; Song et al. 2021, eq. 13
      run backwards); decode with ``ddim`` or ``euler``.
    * ``dpmpp_2m``: second order, DPM-Solver++(2M) (Lu et al. 2022, alg. 2) with the step
      ``h = lambda' - lambda`` negative; decode with ``dpmpp_2m``.
    * ``heun``: second order, two evaluations a step (Karras et al. 2022, alg. 1); decode with ``heun``.
    """
    if solver not in INVERSION_SOLVERS:
        raise ValueError(f"solver must be one of {INVERSION_SOLVERS}, got {solver!r}")
    grid = [s for s in check_sigmas(sigmas)[::-1] if s > 0]
    cond = dict(cond or {})
    b = x.shape[0]

    def model(y: Tensor, s: float) -> Tensor:
        return denoiser(y, torch.full((b,), s, dtype=y.dtype, device=y.device), **cond)

    d_prev: Tensor | None = None
    h_prev = 0.0
    for i, (s, s_next) in enumerate(zip(grid[:-1], grid[1:])):
        d = model(x, s)
        r = s_next / s
        if solver == "heun":
            x_e = d + r * (x - d)
            d2 = model(x_e, s_next)
            x = x + (s_next - s) * 0.5 * ((x - d) / s + (x_e - d2) / s_next)
        else:
            h = math.log(s) - math.log(s_next)  # lambda' - lambda, negative going up
            dd = d if (solver == "ddim" or d_prev is None) else d + (h / (2 * h_prev)) * (d - d_prev)
            x = dd + r * (x - dd)
            d_prev, h_prev = d, h
        if callback is not None:
            callback({"i": i, "x": x, "sigma": s, "sigma_next": s_next, "denoised": d})
    return x


def slerp(z0: Tensor, z1: Tensor, t: Tensor | float) -> Tensor:
    """Spherical interpolation per sample (Shoemake 1985): ``(B, ...)`` ends, ``t`` scalar or ``(B,)``.

    High-dimensional Gaussian noise lies near a sphere; the straight line between two draws
    passes through a region of too small a norm, which decodes to washed-out samples, while the
    arc keeps the norm (for equal-norm ends). Nearly parallel ends fall back to the line.
    """
    if z0.shape != z1.shape:
        raise ValueError(f"the two ends have shapes {tuple(z0.shape)} and {tuple(z1.shape)}")
    a, b = z0.reshape(z0.shape[0], -1).double(), z1.reshape(z1.shape[0], -1).double()
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-300)
    theta = cos.clamp(-1, 1).acos()
    t = torch.as_tensor(t, dtype=torch.float64, device=z0.device).expand(z0.shape[0])
    sin = theta.sin()
    small = sin.abs() < 1e-6
    w0 = torch.where(small, 1 - t, ((1 - t) * theta).sin() / torch.where(small, 1.0, sin))
    w1 = torch.where(small, t, (t * theta).sin() / torch.where(small, 1.0, sin))
    out = append_dims(w0, a.ndim) * a + append_dims(w1, b.ndim) * b
    return out.reshape(z0.shape).to(z0.dtype)


def interpolate(
    denoiser: DenoiserFn,
    x_a: Tensor,
    x_b: Tensor,
    sigmas: Tensor,
    frames: int | Sequence[float] = 8,
    *,
    cond_a: Mapping[str, Any] | None = None,
    cond_b: Mapping[str, Any] | None = None,
    solver: str = "dpmpp_2m",
    sampler: str = "dpmpp_2m",
    batch_size: int = 64,
) -> Tensor:
    """Decode the spherical path between the inverted noises of ``x_a`` and ``x_b``.

    ``x_a``, ``x_b``: one example each, as batches of one ``(1, C, *spatial)``. Both are mapped
    to noise with :func:`invert` (under their own conditions), the noise is interpolated with
    :func:`slerp` at ``frames`` points in [0, 1] (a count, or the points themselves), and each
    point is decoded by ``sampler`` on ``sigmas`` with the conditions mixed linearly at the same
    weight (:func:`mixed_condition_denoiser`; the same condition throughout when only one is
    given). Returns ``(frames, C, *spatial)``; the first and last frames reconstruct the inputs.
    """
    if x_a.shape != x_b.shape or x_a.ndim < 2 or x_a.shape[0] != 1:
        raise ValueError(
            f"interpolate takes two batches of one example, (1, C, *spatial), got {tuple(x_a.shape)} and {tuple(x_b.shape)}"
        )
    xa, xb = x_a, x_b
    ts = torch.linspace(0, 1, frames, dtype=torch.float64) if isinstance(frames, int) else torch.tensor(frames)
    if ts.numel() < 2 or (ts < 0).any() or (ts > 1).any():
        raise ValueError(f"frames must be a count >= 2 or points in [0, 1], got {frames!r}")
    ca, cb = dict(cond_a or {}), dict(cond_b or cond_a or {})
    z_a = invert(denoiser, xa, sigmas, solver=solver, cond=ca)
    z_b = invert(denoiser, xb, sigmas, solver=solver, cond=cb)
    spec = get_sampler(sampler)
    out = []
    for start in range(0, ts.numel(), batch_size):
        t = ts[start : start + batch_size].to(xa.device)
        n = t.numel()
        z = slerp(z_a.expand(n, *z_a.shape[1:]), z_b.expand(n, *z_b.shape[1:]), t)
        rep_a = {k: _repeat(v, n) for k, v in ca.items()}
        rep_b = {k: _repeat(v, n) for k, v in cb.items()}
        fn = denoiser if not ca and not cb else mixed_condition_denoiser(denoiser, rep_a, rep_b, t.to(xa.dtype))
        out.append(spec.fn(fn, z, sigmas))
    return torch.cat(out)


def _repeat(v: Any, n: int) -> Any:
    """A one-example condition repeated for ``n`` samples."""
    if isinstance(v, Tensor) and v.ndim >= 1 and v.shape[0] == 1:
        return v.expand(n, *v.shape[1:])
    return v


# ---------------------------------------------------------------------------------------------
# DiffEdit


def diffedit_mask(
    denoiser: DenoiserFn,
    x: Tensor,
    *,
    cond_query: Mapping[str, Any],
    cond_ref: Mapping[str, Any],
    strength: float = 0.5,
    n: int = 10,
    threshold: float = 0.5,
    schedule: S.Schedule | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """DiffEdit's mask (Couairon et al. 2023, sec. 3.2): where two conditions disagree about ``x``.

    ``x`` is noised to ``strength`` ``n`` times; the denoiser's predictions under the query and
    the reference condition are compared, ``|D(x_t | query) - D(x_t | ref)|`` averaged over the
    draws and the channels (a difference of noise estimates in the paper; the two differ by the
    factor ``sigma``, which the normalization removes), scaled to [0, 1] per sample and
    thresholded. Returns a boolean ``(B, 1, *spatial)`` mask, true where the edit goes.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    schedule = schedule if schedule is not None else getattr(denoiser, "schedule", None)
    s = strength_to_sigma(strength, schedule)
    if s <= 0:
        raise ValueError("strength must be positive for a DiffEdit mask")
    sig = torch.full((x.shape[0],), s, dtype=x.dtype, device=x.device)
    diff = torch.zeros_like(x)
    for _ in range(n):
        x_t = x + s * randn_like(x, generator)
        diff += (denoiser(x_t, sig, **cond_query) - denoiser(x_t, sig, **cond_ref)).abs()
    m = diff.mean(dim=1, keepdim=True)
    flat = m.reshape(m.shape[0], -1)
    lo, hi = flat.min(1).values, flat.max(1).values
    m = (m - append_dims(lo, m.ndim)) / append_dims((hi - lo).clamp_min(1e-12), m.ndim)
    return m >= threshold


def diffedit(
    denoiser: DenoiserFn,
    x: Tensor,
    *,
    cond_query: Mapping[str, Any],
    cond_ref: Mapping[str, Any],
    strength: float = 0.5,
    steps: int = 25,
    grid: str = "karras",
    mask: Tensor | None = None,
    n_mask: int = 10,
    threshold: float = 0.5,
    solver: str = "ddim",
    sampler: str = "ddim",
    schedule: S.Schedule | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """DiffEdit (Couairon et al. 2023, sec. 3): edit ``x`` from the reference condition to the
    query, only where they disagree.

    1. the mask (:func:`diffedit_mask`, or ``mask`` given);
    2. DDIM-encode ``x`` under the reference condition up to ``strength`` (:func:`invert` on the
       grid of :func:`sdedit_sigmas`);
    3. decode under the query condition from there, keeping the input outside the mask
       (:func:`inpaint` by replacement, started from the encoded state).

    ``denoiser`` may be guided (for instance classifier-free with the query). Returns
    ``(edited, mask)``; outside the mask ``edited`` equals ``x`` exactly.
    """
    schedule = schedule if schedule is not None else getattr(denoiser, "schedule", None)
    if mask is None:
        mask = diffedit_mask(
            denoiser,
            x,
            cond_query=cond_query,
            cond_ref=cond_ref,
            strength=strength,
            n=n_mask,
            threshold=threshold,
            schedule=schedule,
            generator=generator,
        )
    m = check_mask(mask, x)
    sigmas = sdedit_sigmas(strength, steps, schedule=schedule, grid=grid)
    x_r = invert(denoiser, x, sigmas, solver=solver, cond=cond_ref)
    out = inpaint(denoiser, x, m, sigmas, sampler=sampler, x=x_r, cond=cond_query, generator=generator)
    return out, m[:, :1] if m.shape[1] > 1 else m
