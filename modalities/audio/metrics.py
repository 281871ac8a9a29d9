"""Audio metrics that do not depend on the model: fundamental frequency and mel-spectrogram statistics."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["estimate_f0", "pitch_classes", "classify_pitch", "pitch_accuracy", "mel_features"]


def estimate_f0(x: Tensor, sample_rate: int, *, fmin: float = 50.0, fmax: float = 2000.0, harmonics: int = 3) -> Tensor:
    """Fundamental frequency (Hz) of each clip ``(B, C, L)`` (or ``(B, L)``) by the harmonic product spectrum
    (Schroeder 1968; Noll 1969): the product of the magnitude spectrum downsampled by 1..``harmonics``
    peaks at the fundamental even when an overtone is louder. ``harmonics=1`` is the plain spectral
    peak in ``[fmin, fmax]``, more robust to broadband noise when the fundamental is known to be the
    strongest partial there (as in :func:`~modalities.audio.data.tones`). Silent clips give NaN."""
    x = x.double()
    if x.ndim == 3:
        x = x.mean(1)
    n = x.shape[-1]
    nfft = 1 << max(14, math.ceil(math.log2(n)))  # zero-padding: finer bins for short clips
    mag = torch.fft.rfft(x * torch.hann_window(n, dtype=x.dtype), n=nfft).abs()
    hps = mag.clone()
    for h in range(2, harmonics + 1):
        down = mag[..., ::h]
        hps = hps[..., : down.shape[-1]] * down
    freqs = torch.arange(hps.shape[-1], dtype=x.dtype) * sample_rate / nfft
    band = (freqs >= fmin) & (freqs <= fmax)
    scores = torch.where(band, hps, torch.zeros_like(hps))
    f0 = freqs[scores.argmax(-1)]
    silent = x.abs().amax(-1) < 1e-6
    return torch.where(silent, torch.full_like(f0, float("nan")), f0)


def pitch_classes(f0: Tensor, pitches_hz: list[float]) -> Tensor:
    """The index of the nearest pitch on a log-frequency scale (-1 where ``f0`` is NaN)."""
    ref = torch.log2(torch.tensor(pitches_hz, dtype=torch.float64))
    d = (torch.log2(f0.double())[:, None] - ref[None]).abs()
    cls = d.argmin(-1)
    return torch.where(torch.isnan(f0), torch.full_like(cls, -1), cls)


def classify_pitch(x: Tensor, pitches_hz: list[float], sample_rate: int) -> Tensor:
    """The class of each clip of a tone set: the nearest of ``pitches_hz`` to its strongest partial
    within a fifth below the lowest and a fifth above the highest pitch (where, in a tone set, only
    the fundamental can be)."""
    f0 = estimate_f0(x, sample_rate, fmin=min(pitches_hz) / 1.5, fmax=max(pitches_hz) * 1.5, harmonics=1)
    return pitch_classes(f0, pitches_hz)


def pitch_accuracy(x: Tensor, labels: Tensor, pitches_hz: list[float], sample_rate: int) -> float:
    """Fraction of clips of a tone set whose pitch class (:func:`classify_pitch`) is their label."""
    return float((classify_pitch(x, pitches_hz, sample_rate) == labels.cpu()).float().mean())


def mel_features(x: Tensor, sample_rate: int, n_mels: int = 64) -> Tensor:
    """Per-clip features ``(B, 2 n_mels)``: mean and standard deviation over time of the log-mel
    spectrogram, for a Fréchet distance on mel statistics."""
    from .io import mel_spectrogram

    feats = []
    for clip in x:
        m = mel_spectrogram(clip, sample_rate, n_mels=n_mels).double()
        feats.append(torch.cat([m.mean(-1), m.std(-1)]))
    return torch.stack(feats)
