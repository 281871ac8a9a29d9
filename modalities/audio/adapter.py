"""The audio adapter: config sections, 1D UNet presets for raw waveforms, data sets, WAV output."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError
from torch import Tensor, nn

from multidiff.modality import (
    DIT_TINY,
    DataConfig,
    DataInfo,
    DemoRun,
    Modality,
    PresetModelConfig,
    StrictModel,
    coin_flips,
    demo_config,
    finish_dataset,
    input_file,
    sample_names,
)

from .data import AUDIO_SUFFIXES

__all__ = ["PRESETS", "AudioModelConfig", "AudioDataConfig", "AudioModality", "build_unet1d"]

# 1D UNet presets for raw waveforms. Every level divides the length by ``factor``; attention only
# at the coarsest levels, where a clip is a few dozen positions long. ``tiny``: 2k-4k-sample clips
# on a CPU (32-64 positions at the last level; only 8 channels at full rate, where convolutions
# cost the most); ``small``: 16k samples (64 at level 4); ``base``: 64k samples (64 at level 5).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "channels": 8,
        "channel_mult": [1, 4, 8, 8],
        "num_res_blocks": 1,
        "factor": 4,
        "attention_levels": [3],
        "dropout": 0.0,
    },
    "small": {
        "channels": 32,
        "channel_mult": [1, 2, 4, 4, 8],
        "num_res_blocks": 2,
        "factor": 4,
        "attention_levels": [3, 4],
        "dropout": 0.0,
    },
    "base": {
        "channels": 64,
        "channel_mult": [1, 2, 2, 4, 4, 8],
        "num_res_blocks": 2,
        "factor": 4,
        "attention_levels": [4, 5],
        "dropout": 0.1,
    },
    # a diffusion transformer (multidiff.transformer.DiT, adaLN-Zero; U-ViT long skips on request)
    # with 16-sample patches: 128 tokens for a 2048-sample clip
    "dit_tiny": {**DIT_TINY, "patch_size": 16},
}


class AudioModelConfig(PresetModelConfig):
    """The ``model:`` section: a preset, any of whose values may be overridden."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = PRESETS

    preset: Literal["tiny", "small", "base", "dit_tiny"] = "tiny"
    factor: int | None = Field(None, ge=2)
    attention_levels: list[int] | None = None


class AudioDataConfig(DataConfig):
    """The ``data:`` section.

    ``source``: ``tones`` (built in: synthesized notes, the class is the pitch), ``folder``
    (``path`` to WAV/FLAC/OGG files, classes from sub-folders) or ``sc09`` (Speech Commands
    digits through torchaudio, in ``root``; fetched only with ``download: true``). Every clip is
    resampled to ``sample_rate``, mixed to ``channels`` (stereo to mono by averaging), cropped or
    zero-padded to ``length`` samples and loudness-normalised.

    ``phases`` (the captioned built-in tones only): ``random``, a random phase per harmonic, or
    ``aligned``, the harmonics in phase, so that a bright tone is a sawtooth wave and a hollow one a
    square wave (the same spectra, so the same captions and the same judge's codes; see
    :func:`~modalities.audio.data.captioned_tones`).
    """

    folder_files = "audio files"

    source: Literal["tones", "folder", "sc09"] = "tones"
    root: str | None = None
    download: bool = False
    sample_rate: int = Field(16000, ge=1000, le=384000)
    length: int = Field(16384, ge=64)
    channels: Literal[1, 2] = 1
    crop: Literal["start", "center"] = "start"
    normalize: Literal["rms", "peak", "none"] = "rms"
    per_class: int = Field(200, ge=1)
    random_polarity: bool = False
    phases: Literal["random", "aligned"] = "random"

    @model_validator(mode="after")
    def _phases_need_captioned_tones(self) -> AudioDataConfig:
        if self.phases != "random" and not (self.source == "tones" and self.captions):
            raise PydanticCustomError(  # named as data.phases
                "phases_source",
                f"phases {self.phases!r} shapes the captioned built-in tones; it needs source: tones and captions: true",
                {"loc": ("phases",)},
            )
        return self


def build_unet1d(
    model: AudioModelConfig, info: DataInfo, *, noise_scale: float = 1.0, learned_variance: bool = False
) -> nn.Module:
    """The 1D network of ``model`` (a UNet, or a DiT with ``model.backbone: dit``) for clips of
    ``info.shape = (channels, length)``."""
    return model.build_network(1, info, noise_scale=noise_scale, learned_variance=learned_variance)


class AudioModality(Modality[AudioModelConfig, AudioDataConfig]):
    name: ClassVar[str] = "audio"
    diffusers_classes: ClassVar[tuple[str, ...]] = ("UNet1DModel",)
    ModelConfig: ClassVar[type[StrictModel]] = AudioModelConfig
    DataConfig: ClassVar[type[StrictModel]] = AudioDataConfig
    input_suffixes: ClassVar[tuple[str, ...]] = AUDIO_SUFFIXES

    def build_dataset(self, data: AudioDataConfig) -> tuple[torch.utils.data.Dataset, DataInfo]:
        from . import data as D

        if data.source == "tones" and data.captions:
            ds, info = D.captioned_tones(
                data.sample_rate,
                data.length,
                per_class=data.per_class,
                channels=data.channels,
                split=data.split,
                phases=data.phases,
                caption_variants=data.caption_variants,
                caption_drop=data.caption_drop,
                caption_factors=data.caption_factors,
            )
        elif data.source == "tones":
            ds, info = D.tones(data.sample_rate, data.length, per_class=data.per_class, channels=data.channels)
        elif data.source == "folder":
            assert data.path is not None
            ds, info = D.audio_folder(
                data.path,
                data.sample_rate,
                data.length,
                data.channels,
                labels=data.class_conditional,
                crop=data.crop,
                normalize=data.normalize,
                limit=data.limit,
                on_bad=data.on_bad_file,
                captions=data.captions,
            )
        elif data.captions:
            raise ValueError(
                f"data.captions: the {data.source!r} set has no captions; captioned sources: tones "
                "(attributes drawn and stated) and folder (metadata.jsonl or sidecar .txt files)"
            )
        else:
            ds, info = D.sc09(
                data.root, download=data.download, sample_rate=data.sample_rate, length=data.length, limit=data.limit
            )
        return finish_dataset(ds, info, limit=data.limit, class_conditional=data.class_conditional)

    def build_network(
        self, model: AudioModelConfig, info: DataInfo, *, noise_scale: float, learned_variance: bool = False
    ) -> nn.Module:
        return build_unet1d(model, info, noise_scale=noise_scale, learned_variance=learned_variance)

    def augment(self, x: Tensor, data: AudioDataConfig, generator: torch.Generator) -> Tensor:
        """Random polarity (``x -> -x``, inaudible) when ``data.random_polarity`` is set."""
        if not data.random_polarity:
            return x
        return torch.where(coin_flips(x, generator), -x, x)

    def read_input(self, path: Path, info: DataInfo, data: AudioDataConfig) -> Tensor:
        """A WAV/FLAC/OGG file (through soundfile) as ``info.shape = (C, L)``, as the training clips were made.

        Mixed to ``C`` channels (stereo to mono by averaging, mono to stereo by repeating),
        resampled to the model's rate (``info.extra["sample_rate"]``), cropped to its first ``L``
        samples or zero-padded at the end (either with a warning saying by how much), and, for a
        model trained on a folder, scaled like its clips (``data.normalize`` at -20 dBFS, measured
        before padding). Built-in tones and SC09 were never normalised, so their inputs keep the
        file's level: floats nominally in [-1, 1] (a float file may exceed 1).
        """
        from .data import _fit
        from .io import crop_or_pad, normalize_loudness, read_audio, to_channels

        p = input_file(path, self.input_suffixes, "the 'audio' modality")
        channels, length = info.shape[0], info.shape[-1]
        rate = int(info.extra.get("sample_rate", data.sample_rate))
        x, sr = read_audio(p)
        x = to_channels(x, channels, source=str(p))
        n = math.ceil(x.shape[-1] * rate / sr)  # samples after resampling (see io.resample)
        x = _fit(x, sr, rate, length, "start", str(p))
        if n != length:
            what = f"cropped to its first {length}" if n > length else f"zero-padded at the end to {length}"
            warnings.warn(
                f"input {str(p)!r} is {n} samples ({n / rate:.3f} s) at {rate} Hz; {what} samples "
                f"({length / rate:.3f} s, {abs(n - length)} samples {'cut' if n > length else 'added'})",
                stacklevel=2,
            )
        if data.source == "folder":
            x = normalize_loudness(x, data.normalize, -20.0)  # audio_folder's target_dbfs
        return crop_or_pad(x, length).float().contiguous()

    def save_samples(self, x: Tensor, path: Path, info: DataInfo, *, labels: Tensor | None = None) -> list[Path]:
        """One WAV per clip in the folder ``path`` (named by index and class) and a spectrogram grid."""
        from .io import save_spectrogram_grid, write_wav

        sr = int(info.extra.get("sample_rate", 16000))
        folder = Path(path)
        folder = folder.with_suffix("") if folder.suffix else folder
        names = sample_names(x.shape[0], info, labels)
        paths = [write_wav(folder / f"{n}.wav", x[i], sr) for i, n in enumerate(names)]
        titles = [n.split("_", 1)[-1] for n in names] if labels is not None else None
        paths.append(
            save_spectrogram_grid(x[:32], sr, folder / "spectrograms.png", titles=titles[:32] if titles else None)
        )
        return paths

    def demo(self, quick: bool) -> DemoRun:
        """Tones, the class is the pitch (a shorter configs/audio_tones.yaml)."""
        return DemoRun(
            "tones",
            "synthesized tones (0.26 s at 8 kHz, 8 pitches)",
            demo_config(
                "audio",
                data={"source": "tones", "sample_rate": 8000, "length": 2048, "random_polarity": True},
                model={"preset": "tiny", **({"channels": 4, "channel_mult": [1, 2, 2, 2]} if quick else {})},
                diffusion={"data_scale": 5.0},
                steps=20 if quick else 600,
                batch_size=32,
                num_samples=16,
                quick=quick,
            ),
            {
                "spectrograms.png": "spectrograms of the sampled clips",
                "audio_real_spectrograms.png": "spectrograms of training clips, to compare",
            },
        )

    def save_pictures(
        self, denoiser: Any, dataset: Any, info: DataInfo, out_dir: Path, *, guidance_scale: float = 1.0
    ) -> list[Path]:
        """Spectrograms of eight training clips, to compare with the samples."""
        from .io import save_spectrogram_grid

        n = min(8, len(dataset))
        x = torch.stack([dataset[i * (len(dataset) // n)][0] for i in range(n)])
        return [
            save_spectrogram_grid(
                x, int(info.extra.get("sample_rate", 16000)), Path(out_dir) / "audio_real_spectrograms.png"
            )
        ]

    def describe(self, data: AudioDataConfig) -> str:
        src = data.source + (f" {data.path}" if data.path else "")
        return (
            f"audio from {src}, {data.length} samples at {data.sample_rate} Hz ({data.length / data.sample_rate:.2f} s)"
        )

    reconstruction_help: ClassVar[dict[str, str]] = {
        "snr_db": "signal-to-noise ratio of each reconstruction against its clip, dB, mean over clips (higher is better)",
        "median_snr_db": "the median SNR over clips",
        "worst_snr_db": "the lowest SNR of any clip",
        "lsd_db": "log-spectral distance, dB (512-sample frames), mean over clips (lower is better)",
        "pitch_accuracy": "reconstructions whose pitch is their clip's class (tone set; higher is better)",
        "pitch_accuracy_real": "the same for the real clips: the ceiling",
    }

    def autoencoder_defaults(self, data: AudioDataConfig) -> dict[str, Any]:
        """Stable Audio's VAE losses (Evans et al. 2024, stable-audio-tools): the multi-resolution
        STFT loss (FFT sizes 2048 to 32) with KL weight 1e-4 per latent frame, here ``1e-4 * C * 16``
        per data element for ``C`` channels and the total downsampling 16 of ``factors: 4`` at two
        downsamplings (see :mod:`multidiff.autoencoder`); plus a waveform L1 that carries the
        waveform (the magnitudes leave the phase free when there is no adversarial loss). The STFT
        weight is 0.1 against an L1 weight of 10 (clips near -20 dBFS: an L1 of 0.01 to 0.1): at
        1.0 the log-magnitude term's gradient (norm ~20 on the tones, clipped to 1) drowned the
        L1's and held the tones' SNR at 8 dB; 0.1 gave 13.5 dB after 400 steps and the lowest
        log-spectral distance (docs/notes/issue22_autoencoder.md)."""
        return {
            "l1": 10.0,
            "stft": 0.1,
            "kl_weight": 1e-4 * data.channels * 16,
            "channels": 16,
            "channel_mult": [1, 2, 4],
            "factors": 4,
            "latent_channels": 8,
        }

    def reconstruction_figures(
        self, x: Tensor, recon: Tensor, info: DataInfo, *, labels: Tensor | None = None
    ) -> dict[str, float]:
        """SNR and log-spectral distance of each reconstruction against its clip; for the tone set
        (``info.extra["pitches_hz"]``) also the pitch accuracy of the reconstructions and of the clips
        (:func:`~modalities.audio.metrics.classify_pitch`)."""
        from multidiff.reconstruction import log_spectral_distance, snr_db

        snr = snr_db(recon, x)
        out = {
            "snr_db": float(snr[torch.isfinite(snr)].mean()),
            "median_snr_db": float(snr.median()),
            "worst_snr_db": float(snr.min()),
            "lsd_db": float(log_spectral_distance(recon, x).mean()),
        }
        pitches = info.extra.get("pitches_hz")
        if pitches and labels is not None:
            from .metrics import pitch_accuracy

            sr = int(info.extra["sample_rate"])
            out["pitch_accuracy"] = pitch_accuracy(recon, labels, [float(p) for p in pitches], sr)
            out["pitch_accuracy_real"] = pitch_accuracy(x, labels, [float(p) for p in pitches], sr)
        return out

    def judge(self, data: AudioDataConfig, info: DataInfo, **kwargs: Any) -> Any:  # type: ignore[override]
        """Pitch and log-mel statistics for the tone set; the generic judge for other audio (:mod:`.judge`)."""
        from .judge import audio_judge

        return audio_judge(self, data, info, **kwargs)
