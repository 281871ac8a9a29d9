"""Audio data from real WAV/FLAC/OGG files: reading, the clip transforms, every bad input failing
with the file's name, the synthesized tones, WAV and spectrogram output."""

from __future__ import annotations

import math
import os
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from modalities.audio import data as D
from modalities.audio.io import (
    crop_or_pad,
    mel_spectrogram,
    normalize_loudness,
    read_audio,
    resample,
    save_spectrogram_grid,
    save_waveform_grid,
    to_channels,
    write_wav,
)


def sine(freq: float, sr: int, n: int, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / sr)).astype(np.float32)


def peak_hz(x: torch.Tensor, sr: int) -> float:
    """Frequency of the largest bin of the (mean) power spectrum of ``(..., L)``."""
    p = torch.fft.rfft(x.double(), dim=-1).abs().pow(2).reshape(-1, x.shape[-1] // 2 + 1).mean(0)
    return float(torch.fft.rfftfreq(x.shape[-1], 1 / sr)[p.argmax()])


def write_clips(folder: Path, classes: dict[str, int], sr: int = 8000, n: int = 1000) -> list[Path]:
    """WAV/FLAC/OGG files in class sub-folders (``""`` for top-level files)."""
    paths = []
    for c, (name, count) in enumerate(classes.items()):
        sub = folder / name if name else folder
        sub.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            p = sub / f"clip{i}{D.AUDIO_SUFFIXES[i % 3]}"
            sf.write(p, sine(300 + 100 * c, sr, n), sr)
            paths.append(p)
    return paths


# ---------------------------------------------------------------- reading


@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg"])
def test_round_trip(tmp_path: Path, fmt: str) -> None:
    rng = np.random.default_rng(0)
    data = (rng.uniform(-0.9, 0.9, (800, 2))).astype(np.float32)
    p = tmp_path / f"a.{fmt}"
    sf.write(p, data, 11025)  # WAV/FLAC: 16-bit PCM; OGG: Vorbis (lossy)
    x, sr = read_audio(p)
    assert sr == 11025 and x.shape == (2, 800) and x.dtype == torch.float32
    if fmt == "ogg":  # lossy: the waveform survives only roughly
        assert x.shape == (2, 800)
    else:
        assert torch.allclose(x, torch.from_numpy(data.T), atol=1 / 32768 + 1e-6)


def test_stereo_file_in_a_mono_config_is_the_average(tmp_path: Path) -> None:
    left, right = sine(300, 8000, 500, 0.6), sine(700, 8000, 500, 0.2)
    folder = tmp_path / "f"
    folder.mkdir()
    sf.write(folder / "st.wav", np.stack([left, right], 1), 8000, subtype="FLOAT")
    ds, info = D.audio_folder(folder, 8000, 500, channels=1, normalize="none")
    assert ds.x.shape == (1, 1, 500) and info.num_classes == 0 and info.extra["sample_rate"] == 8000
    assert torch.allclose(ds.x[0, 0], torch.from_numpy((left + right) / 2), atol=1e-6)
    x, _ = read_audio(folder / "st.wav")
    assert to_channels(x[:1], 2).shape == (2, 500) and torch.equal(to_channels(x[:1], 2)[1], x[0])
    with pytest.raises(ValueError, match="song.wav.*6 channels"):
        to_channels(torch.zeros(6, 10), 2, source="song.wav")


def test_resampling_halves_the_length_and_keeps_the_pitch() -> None:
    x = torch.from_numpy(sine(440, 16000, 16000))[None]
    y = resample(x, 16000, 8000, source="a.wav")
    assert y.shape == (1, 8000)
    assert abs(peak_hz(y, 8000) - 440) <= 1.0
    assert abs(y.pow(2).mean().sqrt() - x.pow(2).mean().sqrt()) < 0.01  # the level survives
    assert resample(x, 16000, 16000, source="a.wav") is x
    # Rates whose ratio in lowest terms needs a gigabyte kernel are resampled with a nearby ratio.
    z = resample(torch.from_numpy(sine(440, 44101, 44101))[None], 44101, 16000, source="odd.wav")
    assert z.shape == (1, 16000) and abs(peak_hz(z, 16000) - 440) <= 1.0


@pytest.mark.parametrize("orig,new", [(0, 8000), (-16000, 8000), (16000, 22050.5), (16000, 8), (float("nan"), 8000)])
def test_unresamplable_rates_name_the_file_and_rates(orig: float, new: float) -> None:
    with pytest.raises(ValueError, match=r"'clip\.wav'.*Hz to .* Hz") as e:
        resample(torch.zeros(1, 100), orig, new, source="clip.wav")
    assert str(orig) in str(e.value) and str(new) in str(e.value)


def test_crop_or_pad() -> None:
    x = torch.arange(10.0)[None]
    assert torch.equal(crop_or_pad(x, 4), x[:, :4])
    assert torch.equal(crop_or_pad(x, 4, "center"), x[:, 3:7])
    padded = crop_or_pad(x, 13, "center")
    assert torch.equal(padded[:, :10], x) and torch.equal(padded[:, 10:], torch.zeros(1, 3))
    assert torch.equal(crop_or_pad(x, 10), x)
    with pytest.raises(ValueError, match="crop mode"):
        crop_or_pad(x, 4, "end")


def test_rms_normalization_reaches_the_target_and_silence_stays_silent() -> None:
    x = torch.from_numpy(sine(300, 8000, 4000, 0.02))[None].repeat(2, 1)
    for target in (-30.0, -20.0, -12.0):
        y = normalize_loudness(x, "rms", target)
        assert abs(20 * math.log10(float(y.pow(2).mean().sqrt())) - target) < 0.1
    y = normalize_loudness(x, "peak", -6.0)
    assert abs(20 * math.log10(float(y.abs().max())) + 6.0) < 0.01
    # A click at -3 dBFS RMS would need a peak far over 1: the limit holds it to 0.99.
    click = torch.zeros(1, 1000)
    click[0, 0] = 0.01
    assert float(normalize_loudness(click, "rms", -3.0).abs().max()) <= 0.99 + 1e-6
    silent = normalize_loudness(torch.zeros(2, 100), "rms")
    assert torch.equal(silent, torch.zeros(2, 100))
    assert normalize_loudness(x, "none") is x


# ---------------------------------------------------------------- bad input


def test_corrupt_file_names_it(tmp_path: Path) -> None:
    p = tmp_path / "noise.wav"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match=r"cannot read audio '.*noise\.wav'"):
        read_audio(p)


def test_truncated_files(tmp_path: Path) -> None:
    good = tmp_path / "good.wav"
    sf.write(good, sine(440, 8000, 8000), 8000, subtype="PCM_16")
    raw = good.read_bytes()
    # libsndfile reads a WAV cut in half without error, returning the frames that are there;
    # read_audio passes them on with a warning naming the file.
    half = tmp_path / "half.wav"
    half.write_bytes(raw[: len(raw) // 2])
    with pytest.warns(UserWarning, match=r"half\.wav' looks truncated"):
        x, sr = read_audio(half)
    assert sr == 8000 and 0 < x.shape[1] < 8000
    # Cut inside the header: an error naming the file.
    head = tmp_path / "head.wav"
    head.write_bytes(raw[:20])
    with pytest.raises(ValueError, match=r"cannot read audio '.*head\.wav'"):
        read_audio(head)
    # A complete header and no samples: empty.
    bare = tmp_path / "bare.wav"
    bare.write_bytes(raw[:44])
    with pytest.raises(ValueError, match=r"audio file '.*bare\.wav' is empty"):
        read_audio(bare)


def test_empty_and_missing_files_name_them(tmp_path: Path) -> None:
    (tmp_path / "zero.wav").write_bytes(b"")
    with pytest.raises(ValueError, match=r"audio file '.*zero\.wav' is empty"):
        read_audio(tmp_path / "zero.wav")
    sf.write(tmp_path / "noframes.flac", np.zeros((0, 1), np.float32), 8000)
    with pytest.raises(ValueError, match=r"audio file '.*noframes\.flac' is empty"):
        read_audio(tmp_path / "noframes.flac")
    with pytest.raises(ValueError, match=r"'.*absent\.wav' does not exist"):
        read_audio(tmp_path / "absent.wav")


def test_a_bad_file_in_a_folder_fails_the_load_with_its_name(tmp_path: Path) -> None:
    write_clips(tmp_path / "d", {"a": 2, "b": 2})
    (tmp_path / "d" / "b" / "broken.wav").write_bytes(b"RIFF....WAVEjunk")
    with pytest.raises(ValueError, match=r"broken\.wav"):
        D.audio_folder(tmp_path / "d", 8000, 1000)


def test_folders_without_audio_or_missing_are_named(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no audio here")
    with pytest.raises(ValueError, match=r"'.*empty' holds no audio files"):
        D.audio_folder(tmp_path / "empty", 8000, 100)
    with pytest.raises(ValueError, match=r"'.*nowhere' does not exist"):
        D.audio_folder(tmp_path / "nowhere", 8000, 100)
    write_clips(tmp_path / "mixed", {"": 1, "cls": 1})
    with pytest.raises(ValueError, match="mixes audio files at the top level"):
        D.scan_folder(tmp_path / "mixed")


# ---------------------------------------------------------------- folders


def test_labels_from_sub_folders_resampled_and_padded(tmp_path: Path) -> None:
    write_clips(tmp_path / "d", {"high": 3, "low": 2}, sr=16000, n=1000)
    (tmp_path / "d" / "low" / "._clip0.wav").write_bytes(b"\0\5\26\7")  # a macOS resource fork: skipped
    ds, info = D.audio_folder(tmp_path / "d", 8000, 600, channels=2, crop="center")
    assert info.num_classes == 2 and info.class_names == ("high", "low") and info.shape == (2, 600)
    assert info.extra["sample_rate"] == 8000
    assert ds.x.shape == (5, 2, 600) and sorted(ds.labels.tolist()) == [0, 0, 0, 1, 1]
    assert torch.equal(ds.x[:, 0], ds.x[:, 1])  # mono files duplicated to stereo
    # 1000 samples at 16 kHz are 500 at 8 kHz: zero-padded at the end; RMS at -20 dBFS.
    assert torch.all(ds.x[:, :, 510:] == 0) and torch.all(ds.x[:, :, :490].abs().amax(-1) > 0.05)
    rms = ds.x[:, :, :500].pow(2).mean((1, 2)).sqrt()
    assert torch.allclose(20 * rms.log10(), torch.full((5,), -20.0), atol=0.2)
    unlabelled, info0 = D.audio_folder(tmp_path / "d", 8000, 600, labels=False, limit=2)
    assert len(unlabelled) == 2 and info0.num_classes == 0 and torch.all(unlabelled.labels == -1)


def test_long_files_are_cut_before_resampling_with_the_same_result(tmp_path: Path) -> None:
    x = torch.from_numpy(np.random.default_rng(1).uniform(-0.5, 0.5, 20000).astype(np.float32))[None]
    fitted = D._fit(x, 16000, 8000, 700, "start", "x.wav")
    assert torch.allclose(fitted, resample(x, 16000, 8000, source="x.wav")[:, :700], atol=1e-6)


# ---------------------------------------------------------------- tones


def test_tones_shapes_classes_and_determinism() -> None:
    ds, info = D.tones(per_class=20)
    assert ds.x.shape == (160, 1, 4096) and ds.x.dtype == torch.float32
    assert info.shape == (1, 4096) and info.num_classes == 8 and info.extra["sample_rate"] == 8000
    assert info.class_names == ("C4", "D4", "E4", "F4", "G4", "A4", "B4", "C5")
    assert info.extra["pitches_hz"][0] == pytest.approx(261.63, abs=0.01)
    assert info.extra["pitches_hz"][-1] == pytest.approx(523.25, abs=0.01)
    assert torch.bincount(ds.labels).tolist() == [20] * 8
    peaks = ds.x.abs().amax(-1)
    assert ds.x.abs().max() <= 1 and peaks.min() >= 10 ** (-20 / 20) - 1e-4 and peaks.max() <= 10 ** (-6 / 20) + 1e-4
    again, _ = D.tones(per_class=20)
    other, _ = D.tones(per_class=20, seed=1)
    assert torch.equal(ds.x, again.x) and not torch.allclose(ds.x, other.x, atol=1e-2)
    stereo, sinfo = D.tones(per_class=2, channels=2, pitches=[440.0, 1000.0])
    assert stereo.x.shape == (4, 2, 4096) and sinfo.class_names == ("A4", "1000Hz")
    with pytest.raises(ValueError, match="Nyquist"):
        D.tones(pitches=[4000.0])


def test_each_tone_class_sounds_at_its_pitch() -> None:
    ds, info = D.tones(per_class=25)
    for k, hz in enumerate(info.extra["pitches_hz"]):
        f = peak_hz(ds.x[ds.labels == k, 0], 8000)
        assert abs(f - hz) / hz < 0.03, (info.class_names[k], f, hz)


# ---------------------------------------------------------------- output


@pytest.mark.parametrize("subtype", ["PCM_16", "FLOAT"])
def test_write_wav_reads_back_and_clamps(tmp_path: Path, subtype: str) -> None:
    x = torch.linspace(-1.5, 1.5, 301).repeat(2, 1)
    p = write_wav(tmp_path / "out" / "deep" / "a.wav", x, 22050, subtype)
    info = sf.info(p)
    assert p.is_file() and info.samplerate == 22050 and info.frames == 301 and info.channels == 2
    assert info.subtype == subtype and info.format == "WAV"
    y, _ = read_audio(p)
    assert y.abs().max() <= 1.0 and torch.allclose(y, x.clamp(-1, 1), atol=1 / 32768 + 1e-6)
    with pytest.warns(UserWarning, match=r"non-finite.*nan\.wav"):
        write_wav(tmp_path / "nan.wav", torch.tensor([[0.5, float("nan"), float("inf")]]), 8000, subtype)
    y, _ = read_audio(tmp_path / "nan.wav")
    assert torch.allclose(y, torch.tensor([[0.5, 0.0, 1.0]]), atol=1e-4)


def test_spectrogram_grid_is_a_png(tmp_path: Path) -> None:
    ds, info = D.tones(per_class=1, length=2048)
    spec = mel_spectrogram(ds.x[0], 8000)
    assert spec.shape[0] == 64 and torch.isfinite(spec).all()
    assert torch.isfinite(mel_spectrogram(torch.zeros(1, 100), 8000)).all()  # silence, shorter than a window
    p = save_spectrogram_grid(ds.x, 8000, tmp_path / "pics" / "grid.png", nrow=3, titles=list(info.class_names))
    with Image.open(p) as im:
        assert im.format == "PNG" and im.size[0] > 200


def test_waveform_grid_draws_the_span_asked_for(tmp_path: Path) -> None:
    t = torch.arange(800) / 8000
    sine = 0.05 * torch.sin(2 * torch.pi * 250 * t)
    x = torch.stack([sine, torch.sign(sine)])[:, None]  # a quiet sine and a loud square wave

    def line(path: Path) -> torch.Tensor:  # the pixels of the waveforms' (blue) lines
        with Image.open(path) as im:
            assert im.format == "PNG"
            rgb = torch.from_numpy(np.array(im.convert("RGB"))).int()
        return (rgb[..., 2] > 120) & (rgb[..., 0] < 100)

    whole = line(save_waveform_grid(x, 8000, tmp_path / "w" / "all.png", nrow=2, titles=["sine", "square"]))
    zoom = line(save_waveform_grid(x, 8000, tmp_path / "zoom.png", nrow=2, start=0.01, seconds=0.008))
    assert whole.shape == zoom.shape and not torch.equal(whole, zoom)  # 25 periods against 2
    # each panel scales to its own peak: the quiet sine spans its panel as far as the loud square wave
    half = zoom.shape[1] // 2
    spans = [zoom[:, cols].any(1).nonzero() for cols in (slice(0, half), slice(half, None))]
    assert all(len(r) > 0.4 * zoom.shape[0] for r in spans)  # each line spans most of the figure's height
    assert abs(int(spans[0].max() - spans[0].min()) - int(spans[1].max() - spans[1].min())) < 0.1 * zoom.shape[0]
    with pytest.raises(ValueError, match="zoom.png.*outside"):
        save_waveform_grid(x, 8000, tmp_path / "zoom.png", start=0.09, seconds=0.02)
    with pytest.raises(ValueError, match="bad.png.*B, C, L"):
        save_waveform_grid(x[0], 8000, tmp_path / "bad.png")


# ---------------------------------------------------------------- SC09


def test_sc09_missing_without_download_says_how(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"data\.download=true.*data\.root"):
        D.sc09(tmp_path / "empty_root")


def test_sc09_download_offline_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchaudio.datasets.speechcommands as S

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(S, "download_url_to_file", offline)
    with pytest.raises(ValueError, match=r"could not download Speech Commands.*offline"):
        D.sc09(tmp_path, download=True)


def test_sc09_reads_the_extracted_layout(tmp_path: Path) -> None:
    folder = tmp_path / "SpeechCommands" / "speech_commands_v0.02"
    for d in D.SC09_DIGITS + ("yes",):
        (folder / d).mkdir(parents=True)
        for i in range(2):
            sf.write(folder / d / f"spk{i}_nohash_0.wav", sine(200 + i, 16000, 12000 + 4000 * i), 16000)
    ds, info = D.sc09(tmp_path, sample_rate=8000, length=8000, limit=15)
    assert ds.x.shape == (15, 1, 8000) and info.num_classes == 10 and info.class_names[0] == "zero"
    assert ds.labels[:10].tolist() == list(range(10))  # round-robin: a limit keeps every digit
    assert info.extra["sample_rate"] == 8000
    assert torch.all(ds.x[0, 0, 6010:] == 0)  # a 0.75 s clip padded to 1 s


def test_default_root_follows_the_environment() -> None:
    expected = os.environ.get("MULTIDIFF_DATA")
    if expected:
        assert Path(expected) == D.DEFAULT_ROOT
    else:
        assert D.DEFAULT_ROOT == Path.home() / ".cache" / "multidiff" / "datasets"
