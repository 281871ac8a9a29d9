"""The audio modality: the plugin, the 1D UNet presets, pitch estimation, WAV output that reads back."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import soundfile as sf
import torch

from modalities.audio import AudioDataConfig, AudioModality, AudioModelConfig
from modalities.audio.adapter import PRESETS, build_unet1d
from modalities.audio.metrics import estimate_f0, mel_features, pitch_accuracy, pitch_classes
from multidiff.modality import DataInfo
from multidiff.nn import count_parameters
from multidiff.registry import available_modalities, load_modality


def test_registered_through_the_entry_point() -> None:
    assert "audio" in available_modalities()
    assert load_modality("audio") is AudioModality


@pytest.mark.parametrize(("preset", "length"), [("tiny", 4096), ("small", 16384), ("tiny", 1000)])
def test_presets_build_and_run_on_waveforms(preset: str, length: int) -> None:
    net = build_unet1d(AudioModelConfig(preset=preset), DataInfo((1, length), 4))
    x = torch.randn(2, 1, length)
    out = net(x, torch.tensor([3.0, 700.0]), torch.tensor([0, 3]))
    assert out.shape == x.shape
    r = AudioModelConfig(preset=preset).resolved()
    # attention only where the clip is short: at most 256 positions at every attended level
    assert all(-(-length // r["factor"] ** lvl) <= 256 for lvl in r["attention_levels"]) or length < 4096


def test_preset_sizes_grow() -> None:
    UNET_PRESETS = [p for p in PRESETS if AudioModelConfig.preset_backbone(p) == "unet"]  # the DiT ones aside
    sizes = [count_parameters(build_unet1d(AudioModelConfig(preset=p), DataInfo((1, 16384), 0))) for p in UNET_PRESETS]
    assert sizes == sorted(sizes) and sizes[0] < 2e6


def test_bad_attention_level_is_named() -> None:
    with pytest.raises(ValueError, match="model.attention_levels"):
        AudioModelConfig(preset="tiny", attention_levels=[7]).resolved()


def _tone(f0: float, sr: int, n: int, overtone_gain: float = 0.0) -> torch.Tensor:
    t = torch.arange(n, dtype=torch.float64) / sr
    x = torch.sin(2 * math.pi * f0 * t) + overtone_gain * torch.sin(2 * math.pi * 2 * f0 * t + 0.3)
    return (0.3 * x / x.abs().max()).float()


def test_f0_estimator_finds_the_fundamental_even_under_a_louder_overtone() -> None:
    sr = 8000
    pitches = [261.63, 293.66, 329.63, 349.23, 392.0, 440.0, 493.88, 523.25]
    x = torch.stack([_tone(f, sr, 4096, overtone_gain=1.5) for f in pitches])[:, None]
    f0 = estimate_f0(x, sr)
    assert torch.allclose(f0, torch.tensor(pitches, dtype=f0.dtype), rtol=0.01)
    assert pitch_classes(f0, pitches).tolist() == list(range(8))
    plain = torch.stack([_tone(f, sr, 4096) for f in pitches])[:, None]
    assert pitch_accuracy(plain, torch.arange(8), pitches, sr) == 1.0
    assert pitch_accuracy(plain, torch.arange(8).roll(1), pitches, sr) == 0.0
    silent = estimate_f0(torch.zeros(1, 1, 4096), sr)
    assert torch.isnan(silent).all() and pitch_classes(silent, pitches).tolist() == [-1]


def test_mel_features_tell_pitches_apart() -> None:
    sr = 8000
    a = torch.stack([_tone(261.63, sr, 4096), _tone(261.63, sr, 4096)])[:, None]
    b = _tone(523.25, sr, 4096)[None, None]
    fa, fb = mel_features(a, sr), mel_features(b, sr)
    assert fa.shape == (2, 128)
    assert (fa[0] - fa[1]).norm() < 1e-6 < (fa[0] - fb[0]).norm()


def test_polarity_augmentation() -> None:
    ad = AudioModality()
    x = torch.randn(300, 1, 64)
    y = ad.augment(x, AudioDataConfig(random_polarity=True), torch.Generator().manual_seed(0))
    flipped = (y != x).flatten(1).any(1)
    assert torch.equal(y[flipped], -x[flipped]) and 100 < int(flipped.sum()) < 200
    assert torch.equal(ad.augment(x, AudioDataConfig(), torch.Generator()), x)


def test_save_samples_writes_wavs_that_read_back(tmp_path: Path) -> None:
    sr, n = 8000, 4096
    info = DataInfo((1, n), 2, ("low", "high"), {"sample_rate": sr})
    x = torch.stack([_tone(300, sr, n), _tone(600, sr, n)])[:, None]
    x[1, 0, 10] = 3.0  # out of range: must be clipped, not wrapped
    paths = AudioModality().save_samples(x, tmp_path / "out", info, labels=torch.tensor([0, 1]))
    wavs = sorted(p for p in paths if p.suffix == ".wav")
    assert [p.name for p in wavs] == ["000_low.wav", "001_high.wav"]
    for p in wavs:
        data, rate = sf.read(p, always_2d=True)
        assert rate == sr and data.shape == (n, 1)
        assert abs(data).max() <= 1.0 and abs(data).max() > 0.1  # not silent, not clipped beyond full scale
    assert any(p.suffix == ".png" for p in paths)


def test_pitch_judge_is_right_on_real_tones_even_under_noise() -> None:
    from modalities.audio.data import tones
    from modalities.audio.metrics import classify_pitch

    ds, info = tones(8000, 2048, per_class=40, seed=5)
    pitches = info.extra["pitches_hz"]
    assert pitch_accuracy(ds.x, ds.labels, pitches, 8000) == 1.0
    g = torch.Generator().manual_seed(0)
    rms = ds.x.pow(2).mean(-1, keepdim=True).sqrt()
    noisy = ds.x + rms * torch.randn(ds.x.shape, generator=g)  # white noise at the signal's power
    assert float((classify_pitch(noisy, pitches, 8000) == ds.labels).float().mean()) > 0.95
