"""Guidance as composition: each function takes a denoiser and returns a new one.

Because a guided denoiser keeps the contract ``D(x, sigma, **cond) -> x0_hat``, every sampler
works with every guidance rule, on every rank, with no change.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ._util import append_dims

__all__ = ["classifier_free_guidance", "classifier_guidance", "composable_guidance", "x0_classifier_guidance"]

DenoiserFn = Callable[..., Tensor]


def _std_per_sample(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1).std(dim=1)


def _batched(denoiser: DenoiserFn, x: Tensor, sigma: Tensor, conds: Sequence[Mapping[str, Any]]) -> list[Tensor]:
    """The denoiser's estimate of ``x`` under each condition of ``conds``: in one call on a batch
    ``len(conds)`` times as large when the conditions are tensors of the batch's size with the same
    keys and shapes (one network pass on a larger batch is faster than several), else one call each."""
    b, first = x.shape[0], conds[0]
    if all(
        c.keys() == first.keys()
        and all(
            isinstance(c[k], Tensor)
            and isinstance(first[k], Tensor)
            and c[k].shape == first[k].shape
            and c[k].shape[:1] == (b,)
            for k in c
        )
        for c in conds
    ):
        m = len(conds)
        out = denoiser(
            torch.cat([x] * m), torch.cat([sigma] * m), **{k: torch.cat([c[k] for c in conds]) for k in first}
        )
        return list(out.split(b))
    return [denoiser(x, sigma, **c) for c in conds]


def classifier_free_guidance(
    denoiser: DenoiserFn,
    scale: float,
    *,
    negative: Mapping[str, Any] | Callable[[Mapping[str, Any]], Mapping[str, Any]],
    rescale: float = 0.0,
    interval: tuple[float, float] | None = None,
) -> DenoiserFn:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6), in x0 space.

    ``D_cfg = D(x | neg) + scale (D(x | cond) - D(x | neg))``: ``scale = 1`` is the conditional
    denoiser, ``scale = 0`` the negative (usually unconditional) one.

    Args:
        denoiser: the conditional denoiser.
        scale: the guidance weight ``w`` (1 = no guidance).
        negative: the condition used in place of the unconditional one (for a null class:
            ``{"class_labels": null_labels}``), either a mapping of keyword arguments that
            replaces the call's own, or a function from the call's conditions to it.
        rescale: guidance rescale ``phi`` (Lin et al. 2024, sec. 3.4, eqs. 15-16): the guided
            estimate is rescaled to the conditional one's standard deviation and mixed with
            weight ``phi``.
        interval: ``(sigma_lo, sigma_hi)``: guide only for ``sigma_lo < sigma <= sigma_hi``
            (Kynkäänniemi et al. 2024); elsewhere the conditional denoiser alone is used.
    """
    if not 0.0 <= rescale <= 1.0:
        raise ValueError(f"rescale must lie in [0, 1], got {rescale}")
    if interval is not None and not (0 <= interval[0] < interval[1]):
        raise ValueError(f"interval must be (sigma_lo, sigma_hi) with 0 <= sigma_lo < sigma_hi, got {interval}")

    def guided(x: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
        neg = negative(cond) if callable(negative) else {**cond, **negative}
        d_cond, d_neg = _batched(denoiser, x, sigma, [cond, neg])
        d = d_neg + scale * (d_cond - d_neg)
        if rescale > 0:
            ratio = _std_per_sample(d_cond) / _std_per_sample(d).clamp_min(1e-12)
            d = rescale * d * append_dims(ratio, d.ndim) + (1 - rescale) * d
        if interval is not None:
            inside = (sigma > interval[0]) & (sigma <= interval[1])
            d = torch.where(append_dims(inside, d.ndim), d, d_cond)
        return d

    return guided


def composable_guidance(
    denoiser: DenoiserFn,
    scale: float,
    *,
    parts: Callable[[Mapping[str, Any]], tuple[list[dict[str, Any]], Tensor]],
    negative: Callable[[Mapping[str, Any]], Mapping[str, Any]],
    interval: tuple[float, float] | None = None,
) -> DenoiserFn:
    """Composable classifier-free guidance (Liu et al. 2022, "Compositional Visual Generation with
    Composable Diffusion Models", eq. 10), in x0 space: a condition made of parts ``c_1 .. c_K``,

    ``D = D(x | neg) + scale * sum_k w_k (D(x | c_k) - D(x | neg))``.

    At ``scale = 1`` and unit weights this is the denoiser of the product of the parts'
    conditionals over the prior, ``p(x) prod_k p(x | c_k) / p(x)``: the conjunction of the parts
    (for the noise-free data exactly the full condition's, when each part is a function of the
    example). With one part it is :func:`classifier_free_guidance`.

    Args:
        denoiser: the conditional denoiser.
        scale: the guidance weight of every part (1 = the plain product).
        parts: from a call's conditions, the ``K`` conditions of its parts (each for the whole
            batch) and their weights ``(B, K)`` (0 leaves a part out for that row: prompts of
            fewer parts padded to ``K``).
        negative: from a part's conditions, the negative (usually unconditional) ones.
        interval: ``(sigma_lo, sigma_hi)``: guide only for ``sigma_lo < sigma <= sigma_hi``;
            elsewhere the plain product (``scale = 1``).
    """
    if interval is not None and not (0 <= interval[0] < interval[1]):
        raise ValueError(f"interval must be (sigma_lo, sigma_hi) with 0 <= sigma_lo < sigma_hi, got {interval}")

    def guided(x: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
        conds, weights = parts(cond)
        if not conds or tuple(weights.shape) != (x.shape[0], len(conds)):
            raise ValueError(f"composable guidance needs (B, K) weights for K >= 1 parts, got {tuple(weights.shape)}")
        *d_parts, d_neg = _batched(denoiser, x, sigma, [*conds, negative(conds[0])])
        w = weights.to(device=d_neg.device, dtype=d_neg.dtype)
        push = sum(append_dims(w[:, k], d_neg.ndim) * (d - d_neg) for k, d in enumerate(d_parts))
        s = torch.full_like(sigma, float(scale))
        if interval is not None:
            s = torch.where((sigma > interval[0]) & (sigma <= interval[1]), s, torch.ones_like(s))
        return d_neg + append_dims(s.to(d_neg.dtype), d_neg.ndim) * push

    return guided


def classifier_guidance(
    denoiser: DenoiserFn,
    log_prob: Callable[..., Tensor],
    scale: float = 1.0,
) -> DenoiserFn:
    """Classifier guidance (Dhariwal & Nichol 2021, sec. 4), for any differentiable
    ``log_prob(x, sigma, **cond) -> (B,)`` (a noisy classifier's ``log p(y | x)``).

    In score terms ``grad log p(x | y) = grad log p(x) + scale grad log p(y | x)``; with
    ``score = (D - x) / sigma^2`` that is ``D_guided = D + scale sigma^2 grad_x log p(y | x)``.
    With the exact classifier and ``scale = 1`` it equals the exact class-conditional denoiser.
    """

    def guided(x: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
        d = denoiser(x, sigma, **cond)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            lp = log_prob(xg, sigma, **cond)
            (grad,) = torch.autograd.grad(lp.sum(), xg)
        return d + scale * append_dims(sigma.to(x.dtype) ** 2, x.ndim) * grad.to(x.dtype)

    return guided


def x0_classifier_guidance(
    denoiser: DenoiserFn,
    log_prob: Callable[..., Tensor],
    scale: float = 1.0,
) -> DenoiserFn:
    """Classifier guidance with a classifier of *clean* data, applied to the denoiser's estimate
    (forward universal guidance, Bansal et al. 2024, eq. 6; the approximation of diffusion
    posterior sampling, Chung et al. 2023, eq. 10).

    ``log_prob(x0_hat, **cond) -> (B,)`` is any differentiable ``log p(y | x0)``: a classifier
    trained on real data, with no noise conditioning. ``p(y | x_sigma)`` is approximated by
    ``p(y | D(x_sigma, sigma))``, so ``D_guided = D + scale sigma^2 grad_x log p(y | D(x, sigma))``
    adds ``scale grad log p(y | x)`` to the score. The gradient runs back through the network:
    each step costs about one forward and one backward pass. Exact as ``sigma -> 0``; at large
    sigma the estimate ``D`` is a blur and the guidance a heuristic, which is why
    :func:`classifier_guidance` with a noise-aware classifier is preferable when one exists.
    """

    def guided(x: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            d = denoiser(xg, sigma, **cond)
            lp = log_prob(d, **cond)
            (grad,) = torch.autograd.grad(lp.sum(), xg)
        return d.detach() + scale * append_dims(sigma.to(x.dtype) ** 2, x.ndim) * grad.to(x.dtype)

    return guided
