"""Reconstruction losses and figures for autoencoders, as small pure functions of tensors of any rank.

Every loss returns one value per example, shape ``(B,)``, so a batch's loss is their mean and a
data-parallel run (each process a slice of the batch) computes what one process computes. The
modality adapter decides which of them a run uses (:meth:`multidiff.modality.Modality.autoencoder_defaults`);
nothing here knows images, audio or voxels:

* :func:`l1_error`, :func:`l2_error`: the mean absolute / squared error (LDM's pixel loss is L1);
* :func:`multi_resolution_stft_loss`: spectral convergence plus log-magnitude distance at several
  FFT sizes (Yamamoto et al. 2020, "Parallel WaveGAN", sec. 2.3; Stable Audio's and DAC's auxiliary
  loss), over the last axis;
* :func:`surface_weighted_error`: the absolute error where the target is near a level-0 surface
  (a signed distance or occupancy grid), to weigh the surface up against the empty bulk;
* :func:`hinge_discriminator_loss`, :func:`hinge_generator_loss`, :func:`adaptive_weight`: a patch
  discriminator's hinge losses and LDM's adaptive weight of the adversarial term.

Figures: :func:`psnr`, :func:`snr_db` and :func:`log_spectral_distance`, per example.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ._util import mean_flat

__all__ = [
    "STFT_SIZES",
    "adaptive_weight",
    "hinge_discriminator_loss",
    "hinge_generator_loss",
    "l1_error",
    "l2_error",
    "log_spectral_distance",
    "multi_resolution_stft_loss",
    "psnr",
    "snr_db",
    "stft_magnitude",
    "surface_weighted_error",
    "surface_weights",
]

# Stable Audio's VAE (stable-audio-tools, the mrstft loss of its autoencoder configs): 2048 down to 32
STFT_SIZES: tuple[int, ...] = (2048, 1024, 512, 256, 128, 64, 32)


def _check_pair(x: Tensor, target: Tensor) -> None:
    if x.shape != target.shape:
        raise ValueError(f"reconstruction {tuple(x.shape)} and target {tuple(target.shape)} differ in shape")
    if x.ndim < 2:
        raise ValueError(f"need a batch (B, C, *spatial), got shape {tuple(x.shape)}")


def l1_error(x: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error per example, ``(B,)``."""
    _check_pair(x, target)
    return mean_flat((x - target).abs())


def l2_error(x: Tensor, target: Tensor) -> Tensor:
    """Mean squared error per example, ``(B,)``."""
    _check_pair(x, target)
    return mean_flat((x - target).square())


def stft_magnitude(x: Tensor, n_fft: int, hop: int | None = None, *, eps: float = 1e-8) -> Tensor:
    """``|STFT|`` of every signal along the last axis of ``x (..., L)``: ``(..., n_fft // 2 + 1, frames)``,
    a Hann window of ``n_fft`` samples, hop ``n_fft // 4`` by default, centred frames (reflect
    padding). The power is floored at ``eps`` before the square root, as auraloss (and so Stable
    Audio) does, so the log of a silent bin is finite (``log(sqrt(eps))``)."""
    lead, length = x.shape[:-1], x.shape[-1]
    if not 1 < n_fft <= length:
        raise ValueError(f"an FFT size must lie in [2, {length}] (the signal length), got {n_fft}")
    hop = hop or max(1, n_fft // 4)
    window = torch.hann_window(n_fft, device=x.device, dtype=x.dtype)
    spec = torch.stft(x.reshape(-1, length), n_fft, hop, window=window, center=True, return_complex=True)
    power = spec.real.square() + spec.imag.square()
    return power.clamp(min=eps).sqrt().reshape(*lead, *spec.shape[-2:])


def multi_resolution_stft_loss(
    x: Tensor, target: Tensor, fft_sizes: Sequence[int] = STFT_SIZES, *, eps: float = 1e-8
) -> Tensor:
    """The multi-resolution STFT loss per example, ``(B,)``, over the last axis of ``(B, C, ..., L)``.

    At each FFT size ``n`` (hop ``n / 4``) it adds the spectral convergence ``||S_t - S_x||_F /
    ||S_t||_F`` and the mean log-magnitude distance ``|log S_t - log S_x|`` (Yamamoto et al. 2020,
    eqs. 4-5; ``S`` the STFT magnitudes of one example, all channels together), then averages over
    the sizes. Sizes longer than the signal are left out (an error if none is left). Zero for equal
    signals; the magnitudes ignore phase, so pair it with a waveform loss where the waveform matters.
    """
    _check_pair(x, target)
    length = x.shape[-1]
    sizes = [int(n) for n in fft_sizes if 1 < int(n) <= length]
    if not sizes:
        raise ValueError(f"no FFT size of {list(fft_sizes)} fits signals of {length} samples")
    b = x.shape[0]
    total = x.new_zeros(b, dtype=torch.float32)
    for n in sizes:
        sx = stft_magnitude(x.float(), n, eps=eps).reshape(b, -1)
        st = stft_magnitude(target.float(), n, eps=eps).reshape(b, -1)
        convergence = torch.linalg.vector_norm(st - sx, dim=1) / torch.linalg.vector_norm(st, dim=1)
        log_mag = (st.log() - sx.log()).abs().mean(1)
        total = total + convergence + log_mag
    return total / len(sizes)


_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


def surface_weights(target: Tensor, band: float) -> Tensor:
    """1 where ``target (B, C, *spatial)`` is near its level-0 surface, else 0 (float, same shape).

    Near means ``|target| < band`` (a signed distance within the band) or a sign change within
    the element's 3-wide neighbourhood (every surface element of an occupancy grid, whose values
    are only -1 and +1)."""
    dims = target.ndim - 2
    if dims not in _MAX_POOL:
        raise ValueError(f"need 1 to 3 spatial axes (B, C, *spatial), got shape {tuple(target.shape)}")
    pool = _MAX_POOL[dims]
    hi = pool(target, 3, stride=1, padding=1)
    lo = -pool(-target, 3, stride=1, padding=1)
    return ((target.abs() < band) | ((lo < 0) & (hi > 0))).to(target.dtype)


def surface_weighted_error(x: Tensor, target: Tensor, band: float) -> Tensor:
    """The mean absolute error over the elements near the target's surface (:func:`surface_weights`),
    per example, ``(B,)``; 0 for an example without surface. Added to :func:`l1_error`, it weighs
    the surface up by the inverse of its share of the volume (a few per cent of a 32^3 grid)."""
    _check_pair(x, target)
    w = surface_weights(target, band)
    dims = tuple(range(1, x.ndim))
    return ((x - target).abs() * w).sum(dims) / w.sum(dims).clamp(min=1)


def hinge_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """The discriminator's hinge loss per example (Lim & Ye 2017; LDM's ``hinge_d_loss``):
    ``(mean relu(1 - D(real)) + mean relu(1 + D(fake))) / 2`` over each example's patches, ``(B,)``."""
    return 0.5 * (mean_flat(F.relu(1.0 - real_logits)) + mean_flat(F.relu(1.0 + fake_logits)))


def hinge_generator_loss(fake_logits: Tensor) -> Tensor:
    """The generator's adversarial loss per example, ``-mean D(fake)`` over its patches, ``(B,)``."""
    return -mean_flat(fake_logits)


def adaptive_weight(rec_loss: Tensor, adv_loss: Tensor, last_layer: Tensor, *, max_weight: float = 1e4) -> Tensor:
    """LDM's adaptive weight of the adversarial loss (Esser et al. 2021, "Taming Transformers",
    eq. 7): ``||grad_L rec|| / (||grad_L adv|| + 1e-4)`` at the decoder's last layer ``L``, clamped
    to ``[0, max_weight]`` and detached. Both losses are scalars that depend on ``last_layer``."""
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adv_loss, last_layer, retain_graph=True)[0]
    return (g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(0.0, max_weight).detach()


# --- figures ----------------------------------------------------------------------------------


def psnr(x: Tensor, target: Tensor, data_range: float = 2.0) -> Tensor:
    """Peak signal-to-noise ratio per example in dB, ``10 log10(range^2 / MSE)``, ``(B,)``;
    ``data_range`` is the span of the data (2 for values in [-1, 1]). Infinite for a perfect copy."""
    mse = l2_error(x.double(), target.double())
    return (10 * torch.log10(data_range**2 / mse)).float()


def snr_db(x: Tensor, target: Tensor) -> Tensor:
    """Signal-to-noise ratio per example in dB, ``10 log10(sum target^2 / sum (x - target)^2)``, ``(B,)``."""
    _check_pair(x, target)
    dims = tuple(range(1, x.ndim))
    signal = target.double().square().sum(dims)
    noise = (x.double() - target.double()).square().sum(dims)
    return (10 * torch.log10(signal / noise)).float()


def log_spectral_distance(x: Tensor, target: Tensor, n_fft: int = 512, *, eps: float = 1e-8) -> Tensor:
    """Log-spectral distance per example in dB, ``(B,)``, over the last axis: the root mean square
    over frequency of ``10 log10 P_t - 10 log10 P_x`` (power spectra, Hann window of ``n_fft``
    samples, hop ``n_fft / 4``, power floored at ``eps``), averaged over frames and channels (as
    in audio super-resolution, e.g. Kuleshov et al. 2017, eq. 3)."""
    _check_pair(x, target)
    n = min(n_fft, x.shape[-1])
    px = stft_magnitude(x.double(), n, eps=eps).square()
    pt = stft_magnitude(target.double(), n, eps=eps).square()
    diff = 10 * (pt.log10() - px.log10())  # (B, C, ..., F, T)
    per_frame = diff.square().mean(-2).sqrt()
    return per_frame.reshape(x.shape[0], -1).mean(1).float()


def _finite_mean(v: Tensor) -> float:
    """The mean of the finite values (a perfect copy's infinite PSNR left out), NaN if none."""
    v = v[torch.isfinite(v)]
    return float(v.mean()) if len(v) else math.nan
