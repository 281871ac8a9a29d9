"""Audio: a 1D UNet on raw waveforms, folders of WAV/FLAC/OGG, synthesized tones, WAVs and spectrograms.

Registered as the modality ``audio`` through the entry-point group ``multidiff.modalities``.
"""

from .adapter import AudioDataConfig, AudioModality, AudioModelConfig

__all__ = ["AudioDataConfig", "AudioModality", "AudioModelConfig"]
