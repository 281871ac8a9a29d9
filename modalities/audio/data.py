"""Audio data sets: built-in synthesized tones, any folder of audio files, SC09 spoken digits.

Every loader returns a :class:`~multidiff.modality.TensorDataset` of ``(N, C, L)`` waveforms
(decoded once, held in memory) at one sample rate and length, plus the
:class:`~multidiff.modality.DataInfo`, whose ``extra["sample_rate"]`` says the rate.
"""

from __future__ import annotations

import math
import os
import random
from pathlib import Path

import torch
from torch import Tensor

from multidiff.captions import (
    Attribute,
    CaptionedTensorDataset,
    compose_caption,
    held_out_mask,
    read_captions,
    variants_of_examples,
)
from multidiff.modality import DataInfo, TensorDataset, read_each, scan_labelled_folder

from .io import crop_or_pad, normalize_loudness, read_audio, resample, to_channels

__all__ = [
    "AUDIO_SUFFIXES",
    "DEFAULT_ROOT",
    "tones",
    "captioned_tones",
    "TONE_ATTRIBUTES",
    "TONE_TEMPLATES",
    "TONE_FACTORS",
    "TONES_HELD_OUT",
    "scan_folder",
    "audio_folder",
    "sc09",
    "midi_to_hz",
    "note_name",
]

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
DEFAULT_ROOT = Path(os.environ.get("MULTIDIFF_DATA", Path.home() / ".cache" / "multidiff" / "datasets"))

C_MAJOR_MIDI = (60, 62, 64, 65, 67, 69, 71, 72)  # C4 D4 E4 F4 G4 A4 B4 C5
_NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
_DETUNE = 0.005  # at most +-0.5% (8.6 cents)
_MAX_HARMONICS = 16
SC09_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def midi_to_hz(note: float) -> float:
    """Equal temperament with A4 (MIDI 69) at 440 Hz (ISO 16): ``440 * 2**((note - 69) / 12)``."""
    return 440.0 * 2.0 ** ((note - 69) / 12)


def note_name(hz: float) -> str:
    """Scientific pitch notation of the nearest equal-tempered note ("C4" for 261.6 Hz), or
    ``"<hz>Hz"`` when ``hz`` is more than 5 cents off every note."""
    midi = 69 + 12 * math.log2(hz / 440.0)
    m = round(midi)
    if abs(midi - m) > 0.05:
        return f"{hz:g}Hz"
    return f"{_NOTE_NAMES[m % 12]}{m // 12 - 1}"


def _uniform(n: int | tuple[int, ...], lo: float, hi: float, g: torch.Generator) -> Tensor:
    shape = (n,) if isinstance(n, int) else n
    return lo + (hi - lo) * torch.rand(shape, generator=g, dtype=torch.float64)


def tones(
    sample_rate: int = 8000,
    length: int = 4096,
    *,
    per_class: int = 200,
    pitches: list[float] | None = None,
    seed: int = 0,
    channels: int = 1,
) -> tuple[TensorDataset, DataInfo]:
    """Synthesized harmonic tones, one class per pitch; needs no files and no download.

    Class ``k`` is ``pitches[k]`` Hz (default: the C-major octave C4..C5, MIDI 60..72, 261.6 Hz to
    523.3 Hz). Each example draws, from ``seed`` alone:

    - detune: the fundamental off its pitch by up to +-0.5%;
    - timbre: 1 to 16 harmonics, all below 95% of Nyquist; harmonic ``k >= 2`` has amplitude
      ``u_k * k**-p`` (``p`` in [1, 2.5], ``u_k`` in [0.5, 1]) against the fundamental's 1, so the
      fundamental is always the strongest partial;
    - a random phase per harmonic;
    - envelope: a linear attack over 1-10% of the clip, then exponential decay with a time
      constant of 0.2 to 2 clip lengths, and a 10 ms raised-cosine release (at most 5% of the clip)
      so no clip ends in a click;
    - gain: the peak set to -20..-6 dBFS.

    Labels cycle through the classes (example ``i`` is class ``i % len(pitches)``).
    """
    hz = [midi_to_hz(m) for m in C_MAJOR_MIDI] if pitches is None else [float(p) for p in pitches]
    if not hz:
        raise ValueError("tones: pitches must not be empty")
    if per_class < 1 or length < 1 or sample_rate <= 0 or channels not in (1, 2):
        raise ValueError(
            f"tones: need per_class >= 1, length >= 1, sample_rate > 0 and 1 or 2 channels; got {per_class}, "
            f"{length}, {sample_rate}, {channels}"
        )
    nyquist = sample_rate / 2
    for p in hz:
        if not 0 < p * (1 + _DETUNE) < 0.95 * nyquist:
            raise ValueError(f"tones: pitch {p} Hz must be positive and below 95% of Nyquist ({0.95 * nyquist:g} Hz)")
    k_classes, n = len(hz), len(hz) * per_class
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % k_classes
    f0 = torch.tensor(hz, dtype=torch.float64)[labels] * (1 + _uniform(n, -_DETUNE, _DETUNE, g))
    room = torch.floor(0.95 * nyquist / f0).clamp(1, _MAX_HARMONICS)  # harmonics that fit below Nyquist
    count = 1 + torch.floor(_uniform(n, 0, 1, g) * room)
    harm = torch.arange(1, _MAX_HARMONICS + 1, dtype=torch.float64)
    amp = harm ** -_uniform((n, 1), 1.0, 2.5, g) * _uniform((n, _MAX_HARMONICS), 0.5, 1.0, g)
    amp[:, 0] = 1.0
    amp = amp * (harm <= count[:, None])
    phase = _uniform((n, _MAX_HARMONICS), 0, 2 * math.pi, g)
    duration = length / sample_rate
    attack = duration * _uniform((n, 1), 0.01, 0.1, g)
    tau = duration * _uniform((n, 1), 0.2, 2.0, g)
    peak = 10 ** (_uniform((n, 1), -20.0, -6.0, g) / 20)

    t = torch.arange(length, dtype=torch.float64) / sample_rate
    fade = max(1, min(round(0.01 * sample_rate), length // 20))  # 10 ms, at most 5% of the clip
    release = torch.ones(length)
    release[length - fade :] = 0.5 + 0.5 * torch.cos(torch.pi * torch.arange(1, fade + 1) / fade)
    amp, phase, attack, tau, peak = (v.float() for v in (amp, phase, attack, tau, peak))
    x = torch.empty(n, 1, length)
    for s in range(0, n, 256):  # chunks bound the working memory
        i = slice(s, s + 256)
        # The fundamental's phase in cycles, reduced mod 1 in float64, so float32 keeps harmonic
        # phases exact to ~1e-5 rad however long the clip.
        cycles = (f0[i, None] * t).frac().float()
        wave = torch.zeros(cycles.shape)
        for k in range(_MAX_HARMONICS):
            if amp[i, k].any():
                wave.addcmul_(amp[i, k : k + 1], torch.sin(cycles * (2 * math.pi * (k + 1)) + phase[i, k : k + 1]))
        tf = t.float()
        wave *= (tf / attack[i]).clamp(max=1) * torch.exp(-(tf - attack[i]).clamp(min=0) / tau[i]) * release
        x[i, 0] = wave * (peak[i] / wave.abs().amax(1, keepdim=True).clamp(min=1e-12))
    names = [note_name(p) for p in hz]
    if len(set(names)) != len(names):
        names = [f"{p:g}Hz" for p in hz]
    info = DataInfo((channels, length), k_classes, tuple(names), {"sample_rate": sample_rate, "pitches_hz": hz})
    return TensorDataset(to_channels(x, channels).contiguous(), labels), info


_TONE_NAMES = tuple(note_name(midi_to_hz(m)) for m in C_MAJOR_MIDI)

# What a captioned tone's caption states, and the phrases that say it (synonyms).
TONE_ATTRIBUTES: dict[str, Attribute] = {
    a.name: a
    for a in (
        Attribute(
            "pitch",
            _TONE_NAMES,
            {n: (n, f"pitch {n}", f"{midi_to_hz(m):.0f} Hz") for n, m in zip(_TONE_NAMES, C_MAJOR_MIDI)},
        ),
        Attribute(
            "timbre",
            ("pure", "bright", "hollow"),
            {
                "pure": ("pure", "sine-like", "clean", "pure sine"),
                "bright": ("bright", "buzzy", "brassy", "sawtooth-like"),
                "hollow": ("hollow", "clarinet-like", "woody", "square-wave"),
            },
        ),
        Attribute(
            "envelope",
            ("plucked", "sustained"),
            {
                "plucked": ("plucked", "percussive", "struck", "short"),
                "sustained": ("sustained", "held", "steady", "long"),
            },
        ),
        Attribute(
            "loudness", ("quiet", "loud"), {"quiet": ("quiet", "soft", "faint"), "loud": ("loud", "strong", "forceful")}
        ),
    )
}

TONE_TEMPLATES = (
    "a {loudness}, {timbre} {envelope} tone at {pitch}",
    "{pitch}: a {envelope} {timbre} note, {loudness}",
    "a {timbre} note at {pitch}, {envelope} and {loudness}",
    "{loudness} and {envelope}, a {timbre} sound at {pitch}",
    "a {envelope}, {loudness} {timbre} tone, {pitch}",
    "{timbre} {envelope} note at {pitch}, {loudness}",
    "a {loudness} {timbre} sound, {envelope}, at {pitch}",
)

# The factors a tone's caption is composed of (``data.caption_factors``): each attribute alone.
TONE_FACTORS: tuple[tuple[str, ...], ...] = (("pitch",), ("timbre",), ("envelope",), ("loudness",))

# Attribute combinations no training tone has (the "train" split leaves them out).
TONES_HELD_OUT: tuple[dict[str, str], ...] = (
    {"pitch": "G4", "timbre": "hollow", "envelope": "plucked"},
    {"pitch": "C5", "timbre": "pure", "loudness": "loud"},
    {"pitch": "E4", "timbre": "bright", "envelope": "sustained", "loudness": "quiet"},
)

_TONE_PEAK_DBFS = {"quiet": -24.0, "loud": -6.0}


def captioned_tones(
    sample_rate: int = 8000,
    length: int = 4096,
    *,
    per_class: int = 200,
    seed: int = 0,
    channels: int = 1,
    split: str = "train",
    held_out: tuple[dict[str, str], ...] = TONES_HELD_OUT,
    phases: str = "random",
    caption_variants: int = 0,
    caption_drop: float = 0.0,
    caption_factors: bool = False,
) -> tuple[CaptionedTensorDataset, DataInfo]:
    """Synthesized tones whose attributes a caption states; needs no files and no download.

    Class ``k`` (``i % 8`` for example ``i``) is the pitch, the C-major octave C4..C5 as in
    :func:`tones` (detuned by up to +-0.5%). Drawn uniformly from ``seed``, each example has:

    - timbre: ``pure`` (the fundamental alone), ``bright`` (every harmonic below 95% of Nyquist, up
      to 16, at ``1/k``: a sawtooth's spectrum) or ``hollow`` (the odd harmonics at ``1/k``: a
      square wave's, as a clarinet's low register); ``phases="random"``: a random phase per
      harmonic, ``"aligned"``: harmonic ``k`` at ``k`` times one random phase, so a bright tone is a
      sawtooth wave and a hollow one a square wave, each started at a random point of its cycle;
    - envelope: ``plucked`` (a 2 ms attack, exponential decay with a time constant of 8-15% of the
      clip) or ``sustained`` (a 5-10% attack, then level to the end);
    - loudness: the peak at -24 dBFS (``quiet``) or -6 dBFS (``loud``), +-1 dB;

    and a 10 ms raised-cosine release, so no clip ends in a click. Its caption comes from
    :data:`TONE_TEMPLATES` with synonyms (:data:`TONE_ATTRIBUTES`): "a soft, buzzy plucked tone
    at E4". ``split``: ``"train"`` leaves out the ``held_out`` combinations (:data:`TONES_HELD_OUT`),
    ``"held_out"`` keeps only them, ``"all"`` keeps everything. ``caption_variants``: that many more
    captions of each tone (``variants``), the timbre, envelope and loudness each left unsaid with
    probability ``caption_drop`` (:func:`multidiff.captions.caption_variants`); the pitch is always said.
    ``caption_factors``: one more caption per attribute, saying only it ("a loud tone",
    :data:`TONE_FACTORS`, :func:`multidiff.captions.factor_captions`).
    """
    if split not in ("train", "held_out", "all"):
        raise ValueError(f"split must be 'train', 'held_out' or 'all', got {split!r}")
    if phases not in ("random", "aligned"):
        raise ValueError(f"captioned_tones: phases must be 'random' or 'aligned', got {phases!r}")
    hz = [midi_to_hz(m) for m in C_MAJOR_MIDI]
    nyquist = sample_rate / 2
    if per_class < 1 or length < 1 or channels not in (1, 2) or max(hz) * (1 + _DETUNE) >= 0.95 * nyquist:
        raise ValueError(
            f"captioned_tones: need per_class >= 1, length >= 1, 1 or 2 channels and a sample rate above "
            f"{2 * max(hz) * (1 + _DETUNE) / 0.95:.0f} Hz; got {per_class}, {length}, {channels}, {sample_rate}"
        )
    attrs = TONE_ATTRIBUTES
    k_classes, n = len(hz), len(hz) * per_class
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % k_classes
    codes = {"pitch": labels}
    for name in ("timbre", "envelope", "loudness"):
        codes[name] = torch.randint(len(attrs[name].values), (n,), generator=g)
    f0 = torch.tensor(hz, dtype=torch.float64)[labels] * (1 + _uniform(n, -_DETUNE, _DETUNE, g))
    harm = torch.arange(1, _MAX_HARMONICS + 1, dtype=torch.float64)
    below = harm[None] * f0[:, None] < 0.95 * nyquist
    timbre = codes["timbre"][:, None]
    amp = torch.where(timbre == 0, (harm == 1).double(), 1 / harm)  # pure: the fundamental; else 1/k
    amp = amp * torch.where(timbre == 2, (harm % 2 == 1).double(), 1.0) * below  # hollow: odd harmonics only
    phase = _uniform((n, _MAX_HARMONICS), 0, 2 * math.pi, g)
    if phases == "aligned":  # the same draws either way, so the other attributes do not change
        phase = (phase[:, :1] * harm).remainder(2 * math.pi)
    duration = length / sample_rate
    plucked = (codes["envelope"] == 0)[:, None]
    attack = torch.where(plucked, 0.002, duration * _uniform((n, 1), 0.05, 0.1, g))
    tau = torch.where(plucked, duration * _uniform((n, 1), 0.08, 0.15, g), math.inf)
    level = torch.tensor([_TONE_PEAK_DBFS[v] for v in attrs["loudness"].values], dtype=torch.float64)
    peak = 10 ** ((level[codes["loudness"]][:, None] + _uniform((n, 1), -1.0, 1.0, g)) / 20)
    t = torch.arange(length, dtype=torch.float64) / sample_rate
    fade = max(1, min(round(0.01 * sample_rate), length // 20))
    release = torch.ones(length)
    release[length - fade :] = 0.5 + 0.5 * torch.cos(torch.pi * torch.arange(1, fade + 1) / fade)
    amp, phase, attack, tau, peak = (v.float() for v in (amp, phase, attack, tau, peak))
    x = torch.empty(n, 1, length)
    tf = t.float()
    for s in range(0, n, 256):
        i = slice(s, s + 256)
        cycles = (f0[i, None] * t).frac().float()
        wave = torch.zeros(cycles.shape)
        for k in range(_MAX_HARMONICS):
            if amp[i, k].any():
                wave.addcmul_(amp[i, k : k + 1], torch.sin(cycles * (2 * math.pi * (k + 1)) + phase[i, k : k + 1]))
        wave *= (tf / attack[i]).clamp(max=1) * torch.exp(-(tf - attack[i]).clamp(min=0) / tau[i]) * release
        x[i, 0] = wave * (peak[i] / wave.abs().amax(1, keepdim=True).clamp(min=1e-12))
    held = held_out_mask(codes, attrs, held_out)
    keep = ~held if split == "train" else held if split == "held_out" else torch.ones(n, dtype=torch.bool)
    rng = random.Random(seed)
    names = {k: attrs[k].values for k in codes}
    values = [{k: names[k][int(codes[k][j])] for k in codes} for j in range(n)]
    captions = [compose_caption(v, attrs, TONE_TEMPLATES, rng) for v in values]
    variants = variants_of_examples(
        values,
        attrs,
        TONE_TEMPLATES,
        count=caption_variants,
        drop=caption_drop,
        keep=("pitch",),
        seed=seed,
        factors=TONE_FACTORS if caption_factors else (),
    )
    ds = CaptionedTensorDataset(to_channels(x, channels).contiguous(), labels, captions, codes, names, variants)
    extra = {
        "sample_rate": sample_rate,
        "pitches_hz": hz,
        "source": "captioned_tones",
        "split": split,
        "phases": phases,
        "caption_variants": caption_variants,
        "caption_drop": caption_drop,
        "caption_factors": bool(caption_factors),
        "held_out": [dict(h) for h in held_out],
        "captions": True,
    }
    return ds.subset(keep.nonzero().squeeze(1)), DataInfo((channels, length), k_classes, _TONE_NAMES, extra)


def scan_folder(path: str | Path) -> tuple[list[Path], list[int], list[str]]:
    """Audio files under ``path`` labelled by sub-folder (see :func:`multidiff.modality.scan_labelled_folder`)."""
    return scan_labelled_folder(path, AUDIO_SUFFIXES, "audio files")


def _fit(x: Tensor, sr: int, sample_rate: int, length: int, crop: str, source: str) -> Tensor:
    """Resample ``(C, L)`` to ``sample_rate`` and crop it to at most ``length`` samples (no padding).
    A long clip is first cut to the window that is kept plus a margin wider than the resampling
    filter, so a 3-minute song costs no more than the second that is used; with ``crop="start"``
    the result is identical."""
    if sr != sample_rate and sr > 0:
        margin = math.ceil(8 * max(1.0, sr / sample_rate))
        keep = math.ceil(length * sr / sample_rate) + 2 * margin
        if x.shape[-1] > keep:
            x = crop_or_pad(x, keep, crop)
    x = resample(x, sr, sample_rate, source=source)
    return crop_or_pad(x, length, crop) if x.shape[-1] > length else x


def _load_clip(
    f: Path, sample_rate: int, length: int, channels: int, crop: str, normalize: str, target_dbfs: float
) -> Tensor:
    x, sr = read_audio(f)
    x = _fit(to_channels(x, channels, source=str(f)), sr, sample_rate, length, crop, str(f))
    return crop_or_pad(normalize_loudness(x, normalize, target_dbfs), length)  # the level of the sound, not of padding


def _load_clips(
    files: list[Path], sample_rate: int, length: int, channels: int, crop: str, normalize: str, target_dbfs: float
) -> Tensor:
    out = torch.empty(len(files), channels, length)
    for i, f in enumerate(files):
        out[i] = _load_clip(f, sample_rate, length, channels, crop, normalize, target_dbfs)
    return out


def _check_format(sample_rate: int, length: int, channels: int, crop: str, normalize: str) -> None:
    if int(sample_rate) != sample_rate or sample_rate <= 0 or length <= 0 or channels not in (1, 2):
        raise ValueError(
            f"need a positive whole sample rate, length > 0 and 1 or 2 channels; got {sample_rate}, {length}, {channels}"
        )
    if crop not in ("start", "center"):
        raise ValueError(f"crop must be 'start' or 'center', got {crop!r}")
    if normalize not in ("rms", "peak", "none"):
        raise ValueError(f"normalize must be 'rms', 'peak' or 'none', got {normalize!r}")


def audio_folder(
    path: str | Path,
    sample_rate: int,
    length: int,
    channels: int = 1,
    *,
    labels: bool = True,
    crop: str = "start",
    normalize: str = "rms",
    target_dbfs: float = -20.0,
    limit: int | None = None,
    on_bad: str = "error",
    captions: bool = False,
) -> tuple[TensorDataset, DataInfo]:
    """Any folder of WAV/FLAC/OGG files, as ``(N, channels, length)`` clips at ``sample_rate``.

    Each file is read, mixed down or up (stereo to mono averages), resampled, cropped to ``length``
    samples (keeping its start or centre), scaled by :func:`~.io.normalize_loudness` (``normalize``
    at ``target_dbfs``, measured on the sound, before padding; ``"none"`` keeps file levels, which
    may exceed 1 in float files) and zero-padded at the end if shorter. Every file is read before training starts, so a bad one
    fails the run at once, with its name (``on_bad="skip"``: left out and counted in
    ``info.extra["skipped_files"]``). ``limit`` keeps the first files in sorted order. With
    ``captions`` each recording takes its caption from the folder's ``metadata.jsonl`` or its
    sidecar ``.txt`` (:func:`multidiff.captions.read_captions`; one without a usable caption is a
    bad file), and the data set has ``captions``.
    """
    _check_format(sample_rate, length, channels, crop, normalize)
    files, labs, classes = scan_folder(path)
    texts: list[str] | None = None
    uncaptioned = 0
    if captions:
        kept, texts = read_captions(path, files, on_bad=on_bad, what="audio files")
        uncaptioned = len(files) - len(kept)
        files, labs = [files[i] for i in kept], [labs[i] for i in kept]
    if limit is not None:
        files, labs = files[:limit], labs[:limit]
    if not labels:
        labs, classes = [-1] * len(files), []
    read = lambda f: _load_clip(f, int(sample_rate), length, channels, crop, normalize, target_dbfs)  # noqa: E731
    clips, kept, bad = read_each(files, list(range(len(files))), read, on_bad=on_bad, what="audio files")
    extra = {"sample_rate": int(sample_rate), "source": str(path), "skipped_files": len(bad) + uncaptioned}
    if captions:
        extra["captions"] = True
    info = DataInfo((channels, length), len(classes), tuple(classes), extra)
    x, y = torch.stack(clips), torch.tensor([labs[i] for i in kept], dtype=torch.long)
    if texts is not None:
        return CaptionedTensorDataset(x, y, [texts[i] for i in kept]), info
    return TensorDataset(x, y), info


def _sc09_files(folder: Path) -> list[list[Path]]:
    return [sorted((folder / d).glob("*.wav")) if (folder / d).is_dir() else [] for d in SC09_DIGITS]


def sc09(
    root: str | Path | None = None,
    *,
    download: bool = False,
    sample_rate: int = 16000,
    length: int = 16000,
    limit: int | None = None,
) -> tuple[TensorDataset, DataInfo]:
    """SC09: the spoken digits "zero" to "nine" of Speech Commands v0.02 (Warden 2018,
    arXiv:1804.03209; SC09 as in Donahue et al. 2019, WaveGAN), 1-second 16 kHz mono clips,
    10 classes, all splits (about 38,900 clips, 2.5 GB in memory at 16 kHz float32).

    The files are looked for under ``root/SpeechCommands/speech_commands_v0.02/<digit>/*.wav``
    (``root`` defaults to :data:`DEFAULT_ROOT`); torchaudio downloads and extracts the 2.3 GB
    archive there only when ``download`` is set. Clips keep their recorded level (no
    normalization); short ones are zero-padded at the end. ``limit`` takes clips round-robin
    over the digits, so a small limit still holds every class.
    """
    _check_format(sample_rate, length, 1, "start", "none")
    root = Path(root).expanduser() if root is not None else DEFAULT_ROOT
    folder = root / "SpeechCommands" / "speech_commands_v0.02"
    per_digit = _sc09_files(folder)
    if not all(per_digit):
        if not download:
            raise ValueError(
                f"SC09 (Speech Commands v0.02 digits) is not in {str(folder)!r}; set data.download=true to "
                f"download it (2.3 GB, needs internet), or data.root to the folder holding SpeechCommands/"
            )
        from torchaudio.datasets import SPEECHCOMMANDS

        try:
            SPEECHCOMMANDS(str(root), download=True)
        except OSError as e:  # URLError and socket errors: offline
            raise ValueError(f"could not download Speech Commands to {str(root)!r} (offline?): {e}") from None
        except Exception as e:  # a checksum mismatch, a broken archive
            raise ValueError(f"could not download Speech Commands to {str(root)!r}: {e}") from None
        per_digit = _sc09_files(folder)
        missing = [d for d, fs in zip(SC09_DIGITS, per_digit) if not fs]
        if missing:
            raise ValueError(f"Speech Commands in {str(folder)!r} has no clips of {', '.join(missing)}")
    files, labs = [], []
    for j in range(max(len(fs) for fs in per_digit)):  # round-robin over the digits
        for k, fs in enumerate(per_digit):
            if j < len(fs):
                files.append(fs[j])
                labs.append(k)
    if limit is not None:
        files, labs = files[:limit], labs[:limit]
    x = _load_clips(files, int(sample_rate), length, 1, "start", "none", 0.0)
    info = DataInfo((1, length), 10, SC09_DIGITS, {"sample_rate": int(sample_rate), "source": "sc09"})
    return TensorDataset(x, torch.tensor(labs, dtype=torch.long)), info
