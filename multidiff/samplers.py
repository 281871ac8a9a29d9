"""Samplers: plain functions from noise to data, for any denoiser and any rank.

Every sampler has the signature::

    sampler(denoiser, x, sigmas, *, cond=None, generator=None, callback=None, **options) -> x0

* ``denoiser(x, sigma, **cond) -> x0_hat`` is the contract of :mod:`multidiff.denoiser`;
* ``x`` is the starting sample at ``sigmas[0]`` (for example ``sigmas[0] * randn``);
* ``sigmas`` is a 1-D grid, strictly decreasing and ending in 0 (see :mod:`multidiff.grids`);
* ``generator`` makes stochastic samplers deterministic; deterministic samplers draw nothing;
* ``callback(info)`` is called after each step with a dict (``i``, ``x``, ``sigma``,
  ``sigma_next``, ``denoised``).

The caller's ``x`` is never modified. The step coefficients are computed on the host from the
grid once, in float64, so the loop does not synchronize with the device.

The multistep solvers (DPM-Solver++ 2M/3M, their SDE form, UniPC) share one idea: in
``lambda = -log sigma`` the probability-flow ODE is ``dx/dlambda = D - x``, so over a step of
length ``h`` ``x_next = e^{-h} x + int_0^h e^{-(h-u)} D(u) du`` exactly (Lu et al. 2022,
DPM-Solver++, eq. 9). They differ only in which past (or, for a corrector, future)
evaluations of ``D`` the polynomial through ``D(u)`` uses; :func:`exp_integrator_weights` turns
those nodes into weights (second-order predictors use the papers' midpoint form instead, see
:func:`_predictor_weights`).

The last step, to ``sigma = 0`` (``lambda = inf``), cannot be a step in ``lambda``. In
``u = sigma^2`` the ODE is ``dx/du = -score(x, u) / 2`` with ``score = (D - x) / u``, smooth down to
``u = 0`` for data with a smooth density, so every deterministic sampler ends with
``x(0) = x(s) + 1/2 int_0^{s^2} score du``, the score interpolated by a polynomial in ``u`` through
its last ``order + 1`` evaluations (:func:`_integrate_to_zero`). A plain jump to
``D(sigma_min)`` leaves an error set by ``sigma_min`` that more steps do not lower.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ._util import randn_like

__all__ = [
    "SamplerSpec",
    "SamplerOptionError",
    "NFECounter",
    "check_sigmas",
    "posterior",
    "prior_sample",
    "exp_integrator_weights",
    "final_step_weights",
    "get_sampler",
    "available_samplers",
    "register_sampler",
    "sampler_options",
    "check_options",
    "sample",
    "sample_ddpm",
    "sample_ddpm_learned_variance",
    "sample_ddim",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
    "sample_dpmpp_2m",
    "sample_dpmpp_3m",
    "sample_dpmpp_2m_sde",
    "sample_unipc",
    "sample_adaptive",
]

Callback = Callable[[dict[str, Any]], None]


# ---------------------------------------------------------------------------------------------
# Validation, registry and bookkeeping


def check_sigmas(sigmas: Tensor | list[float], name: str = "sigmas") -> list[float]:
    """Validate a sampling grid and return it as Python floats (one host copy, before the loop)."""
    s = torch.as_tensor(sigmas, dtype=torch.float64).detach().cpu()
    if s.ndim != 1 or s.numel() < 2:
        raise ValueError(f"{name} must be a 1-D grid of at least 2 values (1 step), got shape {tuple(s.shape)}")
    if not torch.isfinite(s).all():
        raise ValueError(f"{name} must be finite, got {s.tolist()}")
    if s[-1] != 0:
        raise ValueError(f"{name} must end in 0, got last value {s[-1].item()}")
    if (s[:-1] <= 0).any():
        raise ValueError(f"{name} must be positive before the final 0, got {s.tolist()}")
    if (s[1:] >= s[:-1]).any():
        i = int(torch.nonzero(s[1:] >= s[:-1])[0])
        raise ValueError(
            f"{name} must be strictly decreasing; {name}[{i + 1}]={s[i + 1].item()} >= {name}[{i}]={s[i].item()}"
        )
    return s.tolist()


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler: the function and what is known about it.

    ``nfe(steps)`` is the number of network evaluations for a grid of ``steps`` steps
    (``None`` when adaptive); ``order`` the order of convergence of its deterministic form.
    """

    name: str
    fn: Callable[..., Tensor]
    stochastic: bool
    order: int
    nfe: Callable[[int], int] | None
    summary: str

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        return self.fn(*args, **kwargs)

    @property
    def options(self) -> tuple[str, ...]:
        """The keyword options ``fn`` takes beyond the arguments every sampler gets (see :data:`COMMON_ARGS`)."""
        return tuple(p.name for p in _option_params(self.fn)[0])

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Raise :class:`SamplerOptionError` for an option ``fn`` does not take, or a value of the
        wrong kind for an option whose default is a bool, a number or a string; a sampler that takes
        ``**kwargs`` accepts any name."""
        params, open_ended = _option_params(self.fn)
        by_name = {p.name: p for p in params}
        for key, value in options.items():
            p = by_name.get(key)
            if p is None:
                if open_ended:
                    continue
                valid = f"expected one of: {', '.join(by_name)}" if by_name else "it takes no options"
                raise SamplerOptionError(key, f"unknown option {key!r} for sampler {self.name!r}; {valid}")
            kind = _value_kind(p.default)
            if kind is not None and not _is_kind(value, kind):
                raise SamplerOptionError(
                    key, f"option {key!r} of sampler {self.name!r} expects {kind[0]}, got {value!r}"
                )


class SamplerOptionError(ValueError):
    """An option a sampler does not take, or a value of the wrong kind; ``key`` names the option."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


# the arguments the caller (generate, the editing loops) passes to every sampler itself
COMMON_ARGS = ("denoiser", "x", "sigmas", "cond", "generator", "callback")


def _option_params(fn: Callable[..., Any]) -> tuple[list[inspect.Parameter], bool]:
    """A sampler's option parameters and whether it also takes ``**kwargs`` (or has no readable signature)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return [], True
    params = [
        p
        for p in sig.parameters.values()
        if p.name not in COMMON_ARGS and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    return params, any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())


def _value_kind(default: Any) -> tuple[str, tuple[type, ...]] | None:
    """What an option's default says its values are: (a description, the types accepted)."""
    if isinstance(default, bool):
        return "true or false", (bool,)
    if isinstance(default, int):
        return "an integer", (numbers.Integral,)
    if isinstance(default, float):
        return "a number", (numbers.Real,)
    if isinstance(default, str):
        return "a string", (str,)
    return None


def _is_kind(value: Any, kind: tuple[str, tuple[type, ...]]) -> bool:
    types = kind[1]
    return isinstance(value, types) and (bool in types or not isinstance(value, bool))


_REGISTRY: dict[str, SamplerSpec] = {}


def register_sampler(
    name: str,
    *,
    stochastic: bool,
    order: int,
    nfe: Callable[[int], int] | None = lambda n: n,
) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Decorator adding a sampler to the registry under ``name``."""

    def deco(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else name
        _REGISTRY[name] = SamplerSpec(name, fn, stochastic, order, nfe, summary)
        return fn

    return deco


def available_samplers() -> list[str]:
    return sorted(_REGISTRY)


def get_sampler(name: str) -> SamplerSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; known samplers: {', '.join(available_samplers())}") from None


def sampler_options(name: str) -> tuple[str, ...]:
    """The keyword options of the sampler called ``name`` (``sample.options`` in a run config),
    beyond :data:`COMMON_ARGS`; a sampler that also takes ``**kwargs`` accepts any other name too."""
    return get_sampler(name).options


def check_options(name: str, options: Mapping[str, Any]) -> None:
    """Raise :class:`SamplerOptionError` (a ``ValueError``) naming the first option the sampler
    called ``name`` does not take, with the ones it does, or a value of the wrong kind."""
    get_sampler(name).check_options(options)


def sample(
    denoiser: Callable[..., Tensor], x: Tensor, sigmas: Tensor, sampler: str = "dpmpp_2m", **kwargs: Any
) -> Tensor:
    """Run the sampler called ``sampler`` (see :func:`available_samplers`)."""
    return get_sampler(sampler).fn(denoiser, x, sigmas, **kwargs)


class NFECounter:
    """Wrap a denoiser and count its calls: ``c = NFECounter(d); sampler(c, ...); c.nfe``."""

    def __init__(self, denoiser: Callable[..., Tensor]) -> None:
        self.denoiser = denoiser
        self.nfe = 0

    def __call__(self, x: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
        self.nfe += 1
        return self.denoiser(x, sigma, **cond)

    def with_variance(self, x: Tensor, sigma: Tensor, **cond: Any) -> tuple[Tensor, Tensor]:
        """Forwarded (and counted) for denoisers with a learned variance."""
        fn = getattr(self.denoiser, "with_variance", None)
        if fn is None:
            raise ValueError("the wrapped denoiser has no with_variance(x, sigma, **cond) method")
        self.nfe += 1
        return fn(x, sigma, **cond)


class _Model:
    """The denoiser bound to the batch: called with a Python float sigma."""

    def __init__(self, denoiser: Callable[..., Tensor], x: Tensor, cond: Mapping[str, Any] | None) -> None:
        self.denoiser = denoiser
        self.cond = dict(cond or {})
        self.batch = x.shape[0]
        self.like = x

    def sigma(self, s: float) -> Tensor:
        return torch.full((self.batch,), s, dtype=self.like.dtype, device=self.like.device)

    def __call__(self, x: Tensor, s: float) -> Tensor:
        return self.denoiser(x, self.sigma(s), **self.cond)


def _report(callback: Callback | None, i: int, x: Tensor, s: float, s_next: float, denoised: Tensor) -> None:
    if callback is not None:
        callback({"i": i, "x": x, "sigma": s, "sigma_next": s_next, "denoised": denoised})


FINAL_STEPS: tuple[str, ...] = ("auto", "jump", "extrapolate", "integrate")
# "auto" integrates only when the last positive sigma is this small: the expansion in sigma^2 behind
# it needs sigma at or below the data's scale (about 1 for normalized data; measured on mixtures
# whose components have standard deviations 0.1 to 0.5, benchmarks/README.md).
EXTRAPOLATE_BELOW = 0.1
# At most this many evaluations enter the final step: order + 1 for the samplers up to third order.
FINAL_NODES_MAX = 4
# Consecutive evaluations used by the final step are at least this far apart (ratio of sigmas): on a
# dense grid the interpolation through nearly equal sigmas would amplify rounding (float32 at 500
# steps and more, benchmarks/README.md), so the nodes are spread over the last few steps instead.
FINAL_NODE_RATIO = 1.1


def _resolve_final_step(final_step: str, grid: list[float], stochastic: bool) -> str:
    """How the last step reaches sigma 0: ``"jump"``, ``"extrapolate"`` or ``"integrate"``."""
    if final_step not in FINAL_STEPS:
        raise ValueError(f"final_step must be one of {FINAL_STEPS}, got {final_step!r}")
    if final_step == "auto":
        # A stochastic trajectory's evaluations carry fresh noise; a polynomial through them amplifies it.
        small = len(grid) > 2 and grid[-2] <= EXTRAPOLATE_BELOW
        return "integrate" if small and not stochastic else "jump"
    return final_step


class _Tail:
    """The last evaluations ``(sigma, x, D)`` along the trajectory, and the final step from them.

    ``jump`` returns the last ``D``; ``extrapolate`` extrapolates ``D`` linearly in ``sigma^2``
    from the last two (:func:`_extrapolate_to_zero`); ``integrate`` integrates the ODE in
    ``sigma^2`` over the last interval with the score interpolated through the last ``nodes``
    evaluations (:func:`_integrate_to_zero`). Only what the mode needs is kept.
    """

    def __init__(self, mode: str, nodes: int) -> None:
        self.mode = mode
        self.nodes = max(1, min(nodes, FINAL_NODES_MAX))
        # One more than the nodes: the newest is kept even when it is close to the one before.
        self.keep = {"jump": 1, "extrapolate": 2}.get(mode, self.nodes + 1)
        self.sig: list[float] = []
        self.xs: list[Tensor] = []
        self.ds: list[Tensor] = []

    def add(self, s: float, x: Tensor, d: Tensor) -> None:
        if self.mode == "integrate" and len(self.sig) > 1 and self.sig[-2] < self.sig[-1] * FINAL_NODE_RATIO:
            # The newest so far was kept only in case it was the last; a newer one replaces it.
            self.sig.pop(), self.xs.pop(), self.ds.pop()
        self.sig.append(s)
        self.ds.append(d)
        if self.mode == "integrate":
            self.xs.append(x)
        if len(self.sig) > self.keep:
            self.sig.pop(0), self.ds.pop(0)
            if self.xs:
                self.xs.pop(0)

    def finish(self) -> Tensor:
        """``x(0)`` from the evaluations added so far (the last one at the grid's last positive sigma)."""
        if self.mode == "integrate":
            return _integrate_to_zero(self.sig[::-1], self.xs[::-1], self.ds[::-1], self.nodes)
        if self.mode == "extrapolate" and len(self.sig) > 1:
            return _extrapolate_to_zero(self.sig[-1], self.ds[-1], self.sig[-2], self.ds[-2])
        return self.ds[-1]


def _extrapolate_to_zero(s: float, d: Tensor, s_prev: float | None, d_prev: Tensor | None) -> Tensor:
    """``x(0)`` from the last two denoised estimates along the trajectory, linear in ``sigma^2``.

    The ODE ``dx/dsigma = (x - D)/sigma`` ends at ``x(0) = lim D(x(sigma), sigma)``. For data with a
    smooth density, ``D`` along the trajectory is ``D(0) + O(sigma^2)``
    (``dx/dsigma = -sigma * score``), so the plain jump ``x(0) ~ D(s)`` leaves an ``O(s^2)`` error
    fixed by the grid's last sigma, whatever the number of steps. Extrapolating linearly in
    ``sigma^2`` through ``(s_prev, d_prev)`` and ``(s, d)`` cancels that term but leaves one of order
    ``s^2 s_prev^2``, which does not fall with the number of steps either (``final_step="extrapolate"``;
    :func:`_integrate_to_zero` is the default). Without a previous point it is the jump.
    """
    if d_prev is None or s_prev is None:
        return d
    return d + (d - d_prev) * (s * s / (s_prev * s_prev - s * s))


def final_step_weights(sigmas: list[float]) -> list[float]:
    """Weights ``c_j`` of the final step ``x(0) = x_0 + sum_j c_j (D_j - x_j)`` (see :func:`_integrate_to_zero`).

    ``sigmas[0]`` is the last positive sigma of the grid, the others earlier ones (distinct).
    ``c_j = w_j / (2 t_j)`` with ``t_j = sigmas[j]^2 / sigmas[0]^2`` and ``w`` the weights of
    ``int_0^1 P(t) dt`` for the polynomial ``P`` through the nodes ``t_j``.
    """
    t = [(sj / sigmas[0]) ** 2 for sj in sigmas]
    w = _solve([[tj**m for tj in t] for m in range(len(t))], [1.0 / (m + 1) for m in range(len(t))])
    return [0.5 * wj / tj for wj, tj in zip(w, t)]


def _integrate_to_zero(sig: list[float], xs: list[Tensor], ds: list[Tensor], nodes: int = FINAL_NODES_MAX) -> Tensor:
    """``x(0)`` from the state ``xs[0]`` at ``sig[0]`` and the evaluations ``(sig[j], xs[j], ds[j])``, newest first.

    In ``u = sigma^2`` the probability-flow ODE is ``dx/du = -score / 2`` with
    ``score = (D - x) / u``, and for data with a smooth density the score along the trajectory
    is smooth in ``u`` down to 0, so ``x(0) = x(s) + 1/2 int_0^{s^2} score du`` integrates it like
    any other step: with the polynomial through the last evaluations, in ``u``, where ``lambda``
    would have an infinitely long interval. One node gives ``(x + D) / 2``, the jump in ``sigma``
    (Euler) gives ``D``. The error shrinks like ``(s^2 / var)^k`` with ``k`` nodes, ``var`` the
    data's local variance: on a unit-scale mixture with component std 0.1 and ``s = 0.03``, about
    5e-6, 3e-7 and 3e-8 for 2, 3 and 4 nodes, against 5e-3 for the jump and 3e-4 for the
    two-point extrapolation of ``D`` (benchmarks/README.md).
    """
    # At most ``nodes`` evaluations, the newest always, each at least FINAL_NODE_RATIO above the
    # one picked before it (nearly equal sigmas make the interpolation ill-conditioned).
    pick = [0]
    for j in range(1, len(sig)):
        if len(pick) < nodes and sig[j] >= sig[pick[-1]] * FINAL_NODE_RATIO:
            pick.append(j)
    out = xs[0]
    for c, j in zip(final_step_weights([sig[j] for j in pick]), pick):
        out = out + c * (ds[j] - xs[j])
    return out


def prior_sample(
    like: Tensor,
    sigma_max: float,
    *,
    generator: torch.Generator | None = None,
    data_mean: Tensor | float = 0.0,
    data_std: float = 0.0,
) -> Tensor:
    """A starting sample at ``sigma_max`` shaped like ``like``: ``data_mean + sqrt(sigma_max^2 + data_std^2) * z``.

    The true marginal at ``sigma_max`` is the data convolved with ``N(0, sigma_max^2)``. Pure
    noise ``sigma_max * z`` ignores the signal a schedule leaves at its largest noise level
    (non-zero terminal SNR, Lin et al. 2024, sec. 3.1) and biases what the sampler produces when
    the data's mean is not 0 or ``sigma_max`` is not large. Matching the data's first two moments
    (``data_mean`` of the data's shape or a scalar, ``data_std`` a scalar) removes that bias to
    first order; with the defaults it is pure noise.
    """
    if sigma_max <= 0 or data_std < 0:
        raise ValueError(f"need sigma_max > 0 and data_std >= 0, got sigma_max={sigma_max}, data_std={data_std}")
    z = randn_like(like, generator)
    return torch.as_tensor(data_mean, dtype=like.dtype, device=like.device) + math.sqrt(sigma_max**2 + data_std**2) * z


# ---------------------------------------------------------------------------------------------
# Exponential-integrator weights (shared by DPM-Solver++ and UniPC)


def _psi(m: int, z: float) -> float:
    """``psi_m(z) = int_0^z e^{-(z-u)} u^m / m! du`` (so ``psi_0 = 1 - e^{-z}``).

    A series for small ``z`` avoids the cancellation of the recurrence
    ``psi_m = z^m / m! - psi_{m-1}``.
    """
    if z < 1.0:
        total, term, j = 0.0, z ** (m + 1) / math.factorial(m + 1), 0
        while abs(term) > 1e-18 * max(abs(total), 1e-300) and j < 60:
            total += term
            j += 1
            term = -term * z / (m + 1 + j)
        return total
    p = -math.expm1(-z)
    for k in range(1, m + 1):
        p = z**k / math.factorial(k) - p
    return p


def exp_integrator_weights(nodes: list[float], h: float, k: float = 1.0) -> list[float]:
    """Weights ``w_j`` so that ``int_0^h k e^{-k(h-u)} P(u) du = sum_j w_j D_j``.

    ``P`` is the polynomial through ``(nodes[j], D_j)`` (``u = lambda - lambda_now``; past
    evaluations have ``u < 0``, a corrector's new one ``u = h``). ``k = 1`` is the
    probability-flow ODE; ``k = 1 + eta`` the SDE of DPM-Solver++ (Lu et al. 2022, sec. 5).
    """
    n = len(nodes)
    # Integrals of the monomials (u/h)^m: int_0^h k e^{-k(h-u)} (u/h)^m du = m! psi_m(k h) / (k h)^m.
    kh = k * h
    moments = [math.factorial(m) * _psi(m, kh) / kh**m for m in range(n)]
    # P(u) = sum_m c_m (u/h)^m with V c = D  =>  integral = moments . V^{-1} D, so w solves V^T w = moments.
    return _solve([[(u / h) ** m for u in nodes] for m in range(n)], moments)


def _solve(a: list[list[float]], b: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting for the tiny (at most 5x5) systems above, in
    Python floats: cheaper per step than a round trip through a tensor library."""
    n = len(b)
    m = [row[:] + [rhs] for row, rhs in zip(a, b)]
    for col in range(n):
        piv = max(range(col, n), key=lambda r: abs(m[r][col]))
        if m[piv][col] == 0.0:
            raise ValueError("exp_integrator_weights: nodes must be distinct")
        m[col], m[piv] = m[piv], m[col]
        for r in range(col + 1, n):
            f = m[r][col] / m[col][col]
            for c in range(col, n + 1):
                m[r][c] -= f * m[col][c]
    x = [0.0] * n
    for r in range(n - 1, -1, -1):
        x[r] = (m[r][n] - sum(m[r][c] * x[c] for c in range(r + 1, n))) / m[r][r]
    return x


def _predictor_weights(nodes: list[float], h: float, k: float) -> list[float]:
    """Weights of the multistep predictor over past evaluations.

    Second order uses the published midpoint form: DPM-Solver++(2M)'s
    ``phi_1 (D + h / (2 h_1) (D - D_1))`` (Lu et al. 2022, alg. 2), which UniPC's UniP-2 with
    ``B(h) = e^h - 1`` reduces to (Zhao et al. 2023, sec. 3.3). It is as accurate as the exact
    integral of the linear interpolant at small steps and measurably more accurate at the large
    steps of a 5 to 20 NFE run (benchmarks/README.md). Other orders use the exact weights.
    """
    if len(nodes) == 2:
        phi1 = -math.expm1(-k * h)
        c = phi1 * h / (2 * -nodes[1])
        return [phi1 + c, -c]
    return exp_integrator_weights(nodes, h, k)


def _combine(x: Tensor, cx: float, ds: list[Tensor], ws: list[float]) -> Tensor:
    out = x * cx
    for d, w in zip(ds, ws):
        out = out + w * d
    return out


# ---------------------------------------------------------------------------------------------
# Ancestral and DDIM samplers (Ho et al. 2020; Song et al. 2021)


def posterior(s: float, s_next: float) -> tuple[float, float]:
    """DDPM posterior ``q(x_next | x, x0)`` in the VE view: weight on ``x - x0`` and variance.

    Mean ``x0 + (s_next^2 / s^2)(x - x0)``, variance ``s_next^2 (s^2 - s_next^2) / s^2``
    (Ho et al. 2020, eq. 7, divided by ``alpha_next``).
    """
    r = (s_next / s) ** 2
    return r, s_next**2 * (1 - r)


@register_sampler("ddpm", stochastic=True, order=1)
def sample_ddpm(
    denoiser: Callable[..., Tensor],
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Ancestral DDPM: draw from the posterior ``q(x_next | x, x0_hat)`` (Ho et al. 2020, alg. 2)."""
    grid = check_sigmas(sigmas)
    model = _Model(denoiser, x, cond)
    for i, (s, s_next) in enumerate(zip(grid[:-1], grid[1:])):
        d = model(x, s)
        r, var = posterior(s, s_next)
        x = d + r * (x - d)
        if s_next > 0:
            x = x + math.sqrt(var) * randn_like(x, generator)
        _report(callback, i, x, s, s_next, d)
    return x


def _learned_log_variance(s: float, s_next: float, v: Tensor) -> Tensor:
    """Improved DDPM's interpolated log-variance (Nichol & Dhariwal 2021, eq. 15), VE view.

    ``log var = v log beta + (1 - v) log beta_tilde``: ``beta_tilde`` the posterior variance and
    ``beta`` the forward variance of a VP process over the step, both divided by
    ``alpha_next^2``: ``beta = (s^2 - s_next^2)(1 + s_next^2) / (1 + s^2)``.
    """
    _, beta_tilde = posterior(s, s_next)
    beta = (s * s - s_next * s_next) * (1 + s_next * s_next) / (1 + s * s)
    return v * math.log(beta) + (1 - v) * math.log(beta_tilde)


@register_sampler("ddpm_learned_variance", stochastic=True, order=1)
def sample_ddpm_learned_variance(
    denoiser: Callable[..., Tensor],
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Ancestral DDPM with the network's learned variance (Nichol & Dhariwal 2021, sec. 3.1).

    Needs ``denoiser.with_variance(x, sigma, **cond) -> (x0_hat, v)``; with ``v = 0`` it is
    exactly :func:`sample_ddpm`. On a respaced grid the variance interpolates the respaced
    betas, as in the paper's sec. 4.
    """
    grid = check_sigmas(sigmas)
    with_variance = getattr(denoiser, "with_variance", None)
    if with_variance is None:
        raise ValueError("ddpm_learned_variance needs a denoiser with a with_variance(x, sigma, **cond) method")
    model = _Model(with_variance, x, cond)
    for i, (s, s_next) in enumerate(zip(grid[:-1], grid[1:])):
        d, v = model(x, s)
        r, _ = posterior(s, s_next)
        x = d + r * (x - d)
        if s_next > 0:
            x = x + torch.exp(0.5 * _learned_log_variance(s, s_next, v)) * randn_like(x, generator)
        _report(callback, i, x, s, s_next, d)
    return x


@register_sampler("ddim", stochastic=False, order=1)
def sample_ddim(
    denoiser: Callable[..., Tensor],
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    eta: float = 0.0,
    final_step: str = "auto",
) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12): ``eta = 0`` deterministic, ``eta = 1`` equals DDPM.

    VE view: ``x_next = x0 + sqrt(s_next^2 - c^2) eps_hat + c z`` with
    ``c^2 = eta^2 s_next^2 (s^2 - s_next^2) / s^2``. The last step to 0 is as in
    :func:`sample_heun` (``final_step``; with ``eta > 0``, ``"auto"`` is the paper's jump).
    """
    if eta < 0:
        raise ValueError(f"eta must be non-negative, got {eta}")
    grid = check_sigmas(sigmas)
    tail = _Tail(_resolve_final_step(final_step, grid, eta > 0), nodes=2)
    model = _Model(denoiser, x, cond)
    for i, (s, s_next) in enumerate(zip(grid[:-1], grid[1:])):
        d = model(x, s)
        tail.add(s, x, d)
        if s_next == 0:
            x = tail.finish()
            _report(callback, i, x, s, s_next, d)
            break
        _, var = posterior(s, s_next)
        c2 = eta * eta * var
        eps = (x - d) / s
        x = d + math.sqrt(max(s_next * s_next - c2, 0.0)) * eps
        if c2 > 0:
            x = x + math.sqrt(c2) * randn_like(x, generator)
        _report(callback, i, x, s, s_next, d)
    return x


# ---------------------------------------------------------------------------------------------
# Karras-style ODE/SDE samplers (Karras et al. 2022)


@register_sampler("euler", stochastic=False, order=1)
def sample_euler(
    denoiser: Callable[..., Tensor],
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    final_step: str = "auto",
) -> Tensor:
    """Euler on the probability-flow ODE ``dx/dsigma = (x - D)/sigma`` (Karras et al. 2022, eq. 4).

    The last step to 0 is as in :func:`sample_heun` (``final_step``); ``"jump"`` is the Euler step.
    """
    grid = check_sigmas(sigmas)
    tail = _Tail(_resolve_final_step(final_step, grid, False), nodes=2)
    model = _Model(denoiser, x, cond)
    for i, (s, s_next) in enumerate(zip(grid[:-1], grid[1:])):
        d = model(x, s)
        tail.add(s, x, d)
        x = tail.finish() if s_next == 0 else d + (s_next / s) * (x - d)  # x + (s_next - s)(x - d)/s
        _report(callback, i, x, s, s_next, d)
    return x


def _ancestral_split(s: float, s_next: float, eta: float) -> tuple[float, float]:
    """Split a step into a deterministic move to ``s_down`` and fresh noise ``s_up`` with
    ``s_down^2 + s_up^2 = s_next^2``; ``eta = 1`` injects the DDPM posterior's noise."""
    _, var = posterior(s, s_next)
    s_up = min(s_next, eta * math.sqrt(var))
    return math.sqrt(max(s_next * s_next - s_up * s_up, 0.0)), s_up


@register_sampler("euler_ancestral", stochastic=True, order=1)
def sample_euler_ancestral(
    denoiser: Callable[..., Tensor],
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """Euler ancestral: an Euler step to ``s_down`` then noise up to ``s_next``."""
    grid = check_sigmas(sigmas)
    model = _Model(denoiser, x, cond)
    for i, (s, s_next) in enumerate(zip(grid[:-1], grid[1:])):
        d = model(x, s)
        s_down, s_up = _ancestral_split(s, s_next, eta)
        x = d + (s_down / s) * (x - d)
        if s_up > 0:
            x = x + s_up * s_noise * randn_like(x, generator)
        _report(callback, i, x, s, s_next, d)
    return x


@register_sampler("heun", stochastic=False, order=2, nfe=lambda n: 2 * n - 1)
def sample_heun(
    denoiser: Callable[..., Tensor],
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    final_step: str = "auto",
) -> Tensor:
    """Heun's 2nd-order method with optional churn (Karras et al. 2022, alg. 2).

    ``s_churn > 0`` adds noise (stochastic). The last step to 0 costs no evaluation:
    ``final_step="jump"`` is the paper's Euler jump to ``D(sigma_min)``; ``"integrate"`` integrates
    the ODE in ``sigma^2`` over that interval with the score through the last ``order + 1``
    evaluations (:func:`_integrate_to_zero`), which removes the jump's error floor;
    ``"extrapolate"`` is the older extrapolation of ``D``, linear in ``sigma^2`` from the last two
    evaluations; ``"auto"`` integrates when the last positive sigma is at most
    ``EXTRAPOLATE_BELOW`` and no churn is used, and jumps otherwise.
    """
    grid = check_sigmas(sigmas)
    tail = _Tail(_resolve_final_step(final_step, grid, s_churn > 0), nodes=3)
    n = len(grid) - 1
    model = _Model(denoiser, x, cond)
    for i, (s, s_next) in enumerate(zip(grid[:-1], grid[1:])):
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= s <= s_tmax else 0.0
        s_hat = s * (1 + gamma)
        if gamma > 0:
            x = x + math.sqrt(s_hat**2 - s**2) * s_noise * randn_like(x, generator)
        d = model(x, s_hat)
        tail.add(s_hat, x, d)
        if s_next == 0:
            x = tail.finish()
        else:
            x_euler = d + (s_next / s_hat) * (x - d)
            d2 = model(x_euler, s_next)
            # Trapezoid in sigma: slopes (x - d)/s_hat and (x_euler - d2)/s_next.
            slope = 0.5 * ((x - d) / s_hat + (x_euler - d2) / s_next)
            x = x + (s_next - s_hat) * slope
        _report(callback, i, x, s, s_next, d)
    return x


# ---------------------------------------------------------------------------------------------
# Exponential multistep solvers (DPM-Solver++, UniPC)


def _multistep(
    denoiser: Callable[..., Tensor],
    x: Tensor,
    sigmas: Tensor,
    *,
    order: int,
    cond: Mapping[str, Any] | None,
    generator: torch.Generator | None,
    callback: Callback | None,
    eta: float = 0.0,
    s_noise: float = 1.0,
    corrector: bool = False,
    final_step: str = "auto",
) -> Tensor:
    """Shared loop: an exponential Adams-Bashforth predictor of ``order`` over past ``D`` values,
    optionally an Adams-Moulton corrector of ``order + 1`` using the new evaluation (UniPC),
    and ``eta > 0`` for the SDE form."""
    if order < 1 or order > 4:
        raise ValueError(f"order must be between 1 and 4, got {order}")
    if eta < 0:
        raise ValueError(f"eta must be non-negative, got {eta}")
    grid = check_sigmas(sigmas)
    # The final step uses order + 1 evaluations (order + 2 after a corrector of one order more).
    tail = _Tail(_resolve_final_step(final_step, grid, eta > 0), nodes=order + (2 if corrector else 1))
    model = _Model(denoiser, x, cond)
    lams: list[float] = []  # lambda = -log sigma of the stored evaluations
    ds: list[Tensor] = []
    sig: list[float] = []
    d = model(x, grid[0])
    k = 1.0 + eta
    n = len(grid) - 1
    for i in range(n):
        s, s_next = grid[i], grid[i + 1]
        lams.append(-math.log(s))
        ds.append(d)
        sig.append(s)
        tail.add(s, x, d)
        if s_next == 0:
            x = tail.finish()
            _report(callback, i, x, s, s_next, d)
            break
        h = -math.log(s_next) - lams[-1]
        # Lower the order over the first steps, where fewer past values exist.
        p = min(order, len(ds))
        nodes = [lam - lams[-1] for lam in lams[-p:]][::-1]
        past = ds[-p:][::-1]
        cx = math.exp(-k * h)
        x_pred = _combine(x, cx, past, _predictor_weights(nodes, h, k))
        noise = None
        if eta > 0:
            noise = randn_like(x, generator) * (s_next * math.sqrt(-math.expm1(-2 * eta * h)) * s_noise)
            x_pred = x_pred + noise
        d_new = model(x_pred, s_next)
        if corrector and eta == 0:
            # UniC (Zhao et al. 2023, sec. 3.2): refit with the new evaluation at u = h, one order
            # higher, at no extra cost: d_new is needed for the next step anyway.
            pc = min(order, len(ds))
            c_nodes = [h] + nodes[:pc]
            c_vals = [d_new] + past[:pc]
            x = _combine(x, cx, c_vals, exp_integrator_weights(c_nodes, h, k))
        else:
            x = x_pred
        _report(callback, i, x, s, s_next, ds[-1])
        d = d_new
        # Keep only what the highest order needs.
        if len(ds) > order:
            lams.pop(0), ds.pop(0), sig.pop(0)
    return x


@register_sampler("dpmpp_2m", stochastic=False, order=2)
def sample_dpmpp_2m(
    denoiser: Callable[..., Tensor],
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    final_step: str = "auto",
) -> Tensor:
    """DPM-Solver++(2M), data prediction, multistep (Lu et al. 2022, alg. 2)."""
    return _multistep(
        denoiser, x, sigmas, order=2, cond=cond, generator=generator, callback=callback, final_step=final_step
    )


@register_sampler("dpmpp_3m", stochastic=False, order=3)
def sample_dpmpp_3m(
    denoiser: Callable[..., Tensor],
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    final_step: str = "auto",
) -> Tensor:
    """DPM-Solver++(3M): third-order multistep (Lu et al. 2022, sec. 4 and app. B)."""
    return _multistep(
        denoiser, x, sigmas, order=3, cond=cond, generator=generator, callback=callback, final_step=final_step
    )


@register_sampler("dpmpp_2m_sde", stochastic=True, order=2)
def sample_dpmpp_2m_sde(
    denoiser: Callable[..., Tensor],
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """DPM-Solver++(2M) SDE (Lu et al. 2022, sec. 5): ``dx = (1+eta)(D - x) dlambda + noise``.

    The linear part and the noise are integrated exactly; ``D`` is linear through the last two
    evaluations. ``eta = 0`` is the ODE solver.
    """
    return _multistep(
        denoiser, x, sigmas, order=2, cond=cond, generator=generator, callback=callback, eta=eta, s_noise=s_noise
    )


@register_sampler("unipc", stochastic=False, order=3)
def sample_unipc(
    denoiser: Callable[..., Tensor],
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    order: int = 2,
    final_step: str = "auto",
) -> Tensor:
    """UniPC (Zhao et al. 2023): UniP-``order`` predictor and UniC corrector of one order more.

    Weights are the exact exponential integrals of the interpolating polynomial (the variant of
    UniPC whose ``B(h)`` makes the order conditions hold exactly), data prediction.
    """
    return _multistep(
        denoiser,
        x,
        sigmas,
        order=order,
        cond=cond,
        generator=generator,
        callback=callback,
        corrector=True,
        final_step=final_step,
    )


# ---------------------------------------------------------------------------------------------
# Adaptive step size


# Dormand & Prince 1980, RK5(4)7M tableau.
_DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_DP_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_DP_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_DP_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)


@register_sampler("adaptive", stochastic=False, order=5, nfe=None)
def sample_adaptive(
    denoiser: Callable[..., Tensor],
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    rtol: float = 1e-3,
    atol: float = 1e-3,
    max_nfe: int = 10_000,
    h_init: float = 0.5,
    final_step: str = "auto",
) -> Tensor:
    """Adaptive Dormand-Prince 5(4) on the PF-ODE in ``u = log sigma``: ``dx/du = x - D``.

    Integrates from ``sigmas[0]`` to the smallest positive sigma of the grid with steps chosen so
    that each step's local error estimate stays below ``atol + rtol |x|`` (RMS over each
    sample, worst sample of the batch), then steps to 0 as ``final_step`` says (see
    :func:`sample_heun`). Only the end points of ``sigmas`` are used. Raises ``RuntimeError`` if ``max_nfe`` is exceeded.
    """
    if rtol <= 0 or atol <= 0:
        raise ValueError(f"rtol and atol must be positive, got rtol={rtol}, atol={atol}")
    grid = check_sigmas(sigmas)
    tail = _Tail(_resolve_final_step(final_step, grid, False), nodes=FINAL_NODES_MAX)
    model = _Model(denoiser, x, cond)
    u, u_end = math.log(grid[0]), math.log(grid[-2])
    nfe = 0

    def f(y: Tensor, uu: float) -> tuple[Tensor, Tensor]:
        nonlocal nfe
        nfe += 1
        d = model(y, math.exp(uu))
        return y - d, d

    k1, d = f(x, u)
    tail.add(math.exp(u), x, d)
    h = -min(h_init, u - u_end) if u > u_end else 0.0
    i = 0
    while u > u_end + 1e-12:
        h = max(h, u_end - u)  # h < 0: u decreases
        ks = [k1]
        for j in range(1, 7):
            y = x
            for a, kk in zip(_DP_A[j], ks):
                if a != 0.0:
                    y = y + (h * a) * kk
            kj, dj = f(y, u + _DP_C[j] * h)
            ks.append(kj)
        x5 = y  # stage 7 is evaluated at the 5th-order solution (FSAL)
        err = sum(((b5 - b4) * h) * kk for b5, b4, kk in zip(_DP_B5, _DP_B4, ks) if b5 != b4)
        scale = atol + rtol * torch.maximum(x.abs(), x5.abs())
        ratio = (err / scale).pow(2).reshape(x.shape[0], -1).mean(dim=1).sqrt().max().item()
        if ratio <= 1.0:
            s_prev = math.exp(u)
            x, u, k1, d = x5, u + h, ks[6], dj
            tail.add(math.exp(u), x, d)
            _report(callback, i, x, s_prev, math.exp(u), d)
            i += 1
        h = h * min(5.0, max(0.2, 0.9 * ratio ** (-0.2))) if ratio > 0 else h * 5.0
        if nfe > max_nfe:
            raise RuntimeError(f"adaptive sampler exceeded max_nfe={max_nfe}; loosen rtol/atol")
    return tail.finish()
