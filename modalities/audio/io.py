"""Audio files: reading any WAV/FLAC/OGG into a tensor, the clip-level transforms the data sets need,
writing tensors as WAV files, and log-mel spectrogram pictures.

File I/O goes through soundfile (libsndfile); torchaudio is used only for its resampler and its
mel filterbank. Waveforms are ``(channels, samples)`` float32 tensors, nominally in [-1, 1].
"""

from __future__ import annotations

import math
import re
import warnings
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "read_audio",
    "to_channels",
    "resample",
    "crop_or_pad",
    "normalize_loudness",
    "write_wav",
    "mel_spectrogram",
    "save_spectrogram_grid",
    "save_waveform_grid",
    "MAX_RESAMPLE_RATIO",
    "SILENCE_DBFS",
]

MAX_RESAMPLE_RATIO = 1000  # a larger ratio between two rates is a mistake (Hz vs kHz), not a resampling job
SILENCE_DBFS = -80.0  # quieter clips are left alone by normalize_loudness: amplifying them amplifies noise
_PEAK_LIMIT = 0.99
_MAX_KERNEL = 1 << 20  # torchaudio's sinc kernel elements (4 MiB in float32); see _resample_rates
_WAV_DATA = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


def read_audio(path: str | Path) -> tuple[Tensor, int]:
    """A file as ``(waveform (channels, samples) float32, sample_rate)``, through soundfile.

    Integer PCM comes back scaled to [-1, 1) (``x / 2**(bits-1)``); float files come back as stored.
    A corrupt, unreadable or empty file (0 bytes or 0 frames) or one holding NaN/inf raises a
    ``ValueError`` naming it. libsndfile reads a WAV whose data was cut short (a partial copy or
    download) without complaint, returning the frames that are there; this function then warns,
    naming the file, and returns them.
    """
    import soundfile as sf

    p = Path(path)
    if not p.exists():
        raise ValueError(f"audio file {str(p)!r} does not exist")
    if p.is_file() and p.stat().st_size == 0:
        raise ValueError(f"audio file {str(p)!r} is empty (0 bytes)")
    try:
        with sf.SoundFile(p) as f:
            sr, log = int(f.samplerate), f.extra_info
            data = f.read(dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, OSError, ValueError, TypeError) as e:
        raise ValueError(f"cannot read audio {str(p)!r}: {e}") from None
    if data.shape[0] == 0:
        raise ValueError(f"audio file {str(p)!r} is empty (0 frames; the file may be truncated after its header)")
    m = _WAV_DATA.search(log)
    if m and int(m.group(1)) > int(m.group(2)) and int(m.group(1)) != 0xFFFFFFFF:
        warnings.warn(
            f"audio file {str(p)!r} looks truncated: its header declares {m.group(1)} bytes of samples, "
            f"the file holds {m.group(2)}; using the {data.shape[0]} frames that are there",
            stacklevel=2,
        )
    x = torch.from_numpy(data.T.copy())
    if not torch.isfinite(x).all():
        raise ValueError(f"audio file {str(p)!r} holds NaN or infinite samples")
    return x, sr


def to_channels(x: Tensor, channels: int, *, source: str = "audio") -> Tensor:
    """``(..., C, L)`` to ``channels`` channels: stereo to mono by averaging the two (a downmix
    that halves a signal present in one channel only), mono to stereo by duplication.

    Other conversions (e.g. 5.1 to stereo, which needs a mixing convention) raise ``ValueError``
    naming ``source``.
    """
    c = x.shape[-2]
    if c == channels:
        return x
    if c == 2 and channels == 1:
        return x.mean(-2, keepdim=True)
    if c == 1 and channels == 2:
        return x.expand(*x.shape[:-2], 2, x.shape[-1]).contiguous()
    raise ValueError(
        f"cannot convert {source!r} from {c} channels to {channels}: only stereo to mono and mono to stereo are supported"
    )


def _as_rate(rate: float, what: str, source: str, orig_sr: float, new_sr: float) -> int:
    ok = isinstance(rate, (int, float)) and not isinstance(rate, bool) and math.isfinite(rate)
    if not ok or rate <= 0 or int(rate) != rate:
        raise ValueError(
            f"cannot resample {source!r} from {orig_sr} Hz to {new_sr} Hz: the {what} rate must be a positive "
            "whole number of Hz"
        )
    return int(rate)


def _kernel_elements(orig: int, new: int) -> int:
    """Elements of torchaudio's sinc resampling kernel for rates in lowest terms (6 zero crossings,
    roll-off 0.99): ``new`` phases, each ``orig + 2 * width`` taps long."""
    width = math.ceil(6 * orig / (0.99 * min(orig, new)))
    return new * (orig + 2 * width)


def _resample_rates(orig: int, new: int) -> tuple[int, int]:
    """The rates to hand torchaudio: the exact ones, unless their ratio in lowest terms is so fine
    (44101 Hz to 16000 Hz is 44101/16000) that the polyphase kernel would take gigabytes; then the
    closest ratio with a kernel of at most 2**20 elements (a pitch and length error of a few parts per million)."""
    g = math.gcd(orig, new)
    o, n = orig // g, new // g
    if _kernel_elements(o, n) <= _MAX_KERNEL:
        return orig, new
    for shift in range(1, max(o, n).bit_length()):
        f = Fraction(n, o).limit_denominator(max(o, n) >> shift)
        if f.numerator > 0 and _kernel_elements(f.denominator, f.numerator) <= _MAX_KERNEL:
            return f.denominator, f.numerator
    raise AssertionError(f"no resampling ratio near {new}/{orig} fits")  # unreachable for ratios up to 1000x


def resample(x: Tensor, orig_sr: float, new_sr: float, *, source: str) -> Tensor:
    """``(..., L)`` from ``orig_sr`` to ``new_sr`` with torchaudio's windowed-sinc resampler
    (Hann window, 6 zero crossings; Smith, "Digital Audio Resampling", CCRMA).

    Rates must be positive whole numbers of Hz no more than :data:`MAX_RESAMPLE_RATIO` apart;
    anything else raises ``ValueError`` naming ``source`` (the file) and both rates. The output
    has ``ceil(L * new_sr / orig_sr)`` samples.
    """
    import torchaudio.functional as AF

    o = _as_rate(orig_sr, "source", source, orig_sr, new_sr)
    n = _as_rate(new_sr, "target", source, orig_sr, new_sr)
    if max(o, n) > MAX_RESAMPLE_RATIO * min(o, n):
        raise ValueError(
            f"cannot resample {source!r} from {o} Hz to {n} Hz: the ratio is over {MAX_RESAMPLE_RATIO}x "
            "(a rate given in kHz instead of Hz?)"
        )
    if o == n:
        return x
    ko, kn = _resample_rates(o, n)
    y = AF.resample(x.float(), ko, kn)
    return y[..., : math.ceil(x.shape[-1] * n / o)]


def crop_or_pad(x: Tensor, length: int, mode: str = "start") -> Tensor:
    """``(..., L)`` to exactly ``length`` samples: a longer clip is cropped (keeping its start, or
    its centre for ``mode="center"``), a shorter one zero-padded at the end."""
    if length <= 0:
        raise ValueError(f"length must be positive, got {length}")
    if mode not in ("start", "center"):
        raise ValueError(f"crop mode must be 'start' or 'center', got {mode!r}")
    n = x.shape[-1]
    if n < length:
        return torch.nn.functional.pad(x, (0, length - n))
    start = (n - length) // 2 if mode == "center" else 0
    return x[..., start : start + length]


def _dbfs_to_amplitude(dbfs: float) -> float:
    return 10.0 ** (dbfs / 20.0)


def normalize_loudness(x: Tensor, mode: str = "rms", target_dbfs: float = -20.0) -> Tensor:
    """Scale one clip so its level is ``target_dbfs``, then limit its peak to 0.99.

    ``"rms"`` sets the RMS over all channels and samples to ``target_dbfs`` (dB relative to a
    full-scale square wave, RMS 1; a full-scale sine is -3 dBFS); ``"peak"`` sets the largest
    ``|x|`` to ``target_dbfs``; ``"none"`` returns ``x``. The peak limit is a plain gain, so a very
    peaky clip ends quieter than the target. A clip below :data:`SILENCE_DBFS` (e.g. digital
    silence) is returned as is, never divided by zero.
    """
    if mode == "none":
        return x
    if mode not in ("rms", "peak"):
        raise ValueError(f"normalize must be 'rms', 'peak' or 'none', got {mode!r}")
    if x.numel() == 0:
        return x
    level = x.float().pow(2).mean().sqrt() if mode == "rms" else x.abs().max()
    if float(level) <= _dbfs_to_amplitude(SILENCE_DBFS):
        return x
    y = x * (_dbfs_to_amplitude(target_dbfs) / level)
    peak = float(y.abs().max())
    return y * (_PEAK_LIMIT / peak) if peak > _PEAK_LIMIT else y


def write_wav(path: str | Path, x: Tensor, sample_rate: int, subtype: str = "PCM_16") -> Path:
    """Write ``(channels, samples)`` (or ``(samples,)``, mono) in [-1, 1] as a WAV file.

    Values are clamped to [-1, 1] (a model's samples overshoot a little); NaN becomes 0 and
    +-inf +-1, with a warning naming the file. ``subtype`` is ``"PCM_16"`` or ``"FLOAT"``
    (32-bit). Parent folders are created.
    """
    import soundfile as sf

    if subtype not in ("PCM_16", "FLOAT"):
        raise ValueError(f"cannot write {str(path)!r}: subtype must be 'PCM_16' or 'FLOAT', got {subtype!r}")
    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise ValueError(f"cannot write {str(path)!r}: sample rate must be a positive whole number, got {sample_rate}")
    x = x.detach().float().cpu()
    x = x[None] if x.ndim == 1 else x
    if x.ndim != 2:
        raise ValueError(f"cannot write {str(path)!r}: expected (channels, samples), got shape {tuple(x.shape)}")
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        warnings.warn(f"{bad} non-finite samples written as 0 (NaN) or +-1 (inf) to {str(path)!r}", stacklevel=2)
        x = torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    sf.write(p, x.clamp(-1, 1).T.numpy(), int(sample_rate), subtype=subtype, format="WAV")
    return p


def _n_fft(sample_rate: int, n_mels: int) -> int:
    """A power of two near a 32 ms window, with at least 2 FFT bins per mel band (no empty filters)."""
    near = 2 ** round(math.log2(max(0.032 * sample_rate, 16)))
    return max(near, 2 ** math.ceil(math.log2(4 * n_mels)))


@lru_cache(maxsize=8)
def _mel_transform(sample_rate: int, n_fft: int, n_mels: int) -> torch.nn.Module:
    import torchaudio.transforms as T

    mel = T.MelSpectrogram(sample_rate, n_fft=n_fft, hop_length=n_fft // 4, n_mels=n_mels, power=2.0)
    return torch.nn.Sequential(mel, T.AmplitudeToDB("power", top_db=80.0))


def mel_spectrogram(x: Tensor, sample_rate: int, n_mels: int = 64) -> Tensor:
    """Log-mel power spectrogram ``(n_mels, frames)`` in dB (0 dB = power 1, floor 80 dB below the
    peak) of a clip ``(channels, samples)`` or ``(samples,)``, mixed to mono; HTK mel scale
    (Young et al., The HTK Book), a ~32 ms Hann window and 75% overlap."""
    x = x.detach().float().cpu()
    x = x.mean(0) if x.ndim == 2 else x
    n_fft = _n_fft(int(sample_rate), n_mels)
    if x.shape[-1] < n_fft:
        x = torch.nn.functional.pad(x, (0, n_fft - x.shape[-1]))
    with torch.no_grad():
        return _mel_transform(int(sample_rate), n_fft, n_mels)(x)


def _check_clips(x: Tensor, path: str | Path) -> None:
    if x.ndim != 3:
        raise ValueError(f"cannot draw {str(path)!r}: expected a batch (B, C, L), got shape {tuple(x.shape)}")


def _panel_grid(b: int, path: str | Path, nrow: int | None, titles: list[str] | None, draw, suptitle: str) -> Path:
    """One PNG of ``b`` panels, ``nrow`` to a row: ``draw(ax, i)`` fills panel ``i``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if titles is not None and len(titles) != b:
        raise ValueError(f"cannot draw {str(path)!r}: {len(titles)} titles for {b} clips")
    nrow = nrow or math.ceil(math.sqrt(b))
    rows = math.ceil(b / nrow)
    fig = Figure(figsize=(2.2 * nrow, 1.8 * rows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, nrow, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= b:
            ax.axis("off")
            continue
        draw(ax, i)
        ax.set_xticks([]), ax.set_yticks([])
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=8)
    fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=100)
    return p


def save_spectrogram_grid(
    x: Tensor,
    sample_rate: int,
    path: str | Path,
    nrow: int | None = None,
    titles: list[str] | None = None,
) -> Path:
    """Write a batch ``(B, C, L)`` as one PNG of log-mel spectrograms, one panel per clip (mono
    mix), ``nrow`` panels per row, with optional per-panel ``titles`` (class names)."""
    _check_clips(x, path)
    specs = [mel_spectrogram(c, sample_rate) for c in x]
    duration = x.shape[-1] / sample_rate

    def draw(ax, i: int) -> None:
        ax.imshow(
            specs[i].numpy(), origin="lower", aspect="auto", cmap="magma", extent=(0, duration, 0, specs[i].shape[0])
        )

    return _panel_grid(len(x), path, nrow, titles, draw, f"log-mel spectrograms ({sample_rate} Hz, {duration:.2f} s)")


def save_waveform_grid(
    x: Tensor,
    sample_rate: int,
    path: str | Path,
    nrow: int | None = None,
    titles: list[str] | None = None,
    *,
    start: float = 0.0,
    seconds: float | None = None,
) -> Path:
    """Write a batch ``(B, C, L)`` as one PNG of waveforms (mono mix), one panel per clip, each
    from ``start`` for ``seconds`` (default: to the end): a few periods show a tone's wave shape.
    Each panel is scaled to its own peak (its y range printed in its corner), so that quiet clips
    show their shape too."""
    _check_clips(x, path)
    length = x.shape[-1]
    a = int(round(start * sample_rate))
    b = length if seconds is None else a + int(round(seconds * sample_rate))
    if not 0 <= a < b <= length:
        raise ValueError(
            f"cannot draw {str(path)!r}: start {start} s and seconds {seconds} fall outside the clips' "
            f"{length / sample_rate:g} s"
        )
    v = x.float().mean(1)[:, a:b]
    t = (torch.arange(a, b) / sample_rate * 1000).numpy()

    def draw(ax, i: int) -> None:
        peak = float(v[i].abs().max().clamp_min(1e-6)) * 1.1
        ax.axhline(0, color="0.8", lw=0.5)
        ax.plot(t, v[i].numpy(), lw=0.8)
        ax.set_ylim(-peak, peak)
        ax.text(0.01, 0.97, f"+-{peak:.2g}", transform=ax.transAxes, fontsize=6, va="top", color="0.4")

    return _panel_grid(len(x), path, nrow, titles, draw, f"waveforms ({sample_rate} Hz, {t[0]:.0f}-{t[-1]:.0f} ms)")
