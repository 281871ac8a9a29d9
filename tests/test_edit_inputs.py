"""Reading a user's file as one example of a trained model's data (the start of an edit), and masks:
images, audio and voxels in their training units, round trips through each adapter's own output,
and every wrong, missing or corrupt file failing with its name."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
import trimesh
from PIL import Image

from modalities.audio.adapter import AudioDataConfig, AudioModality
from modalities.image.adapter import ImageDataConfig, ImageModality
from modalities.image.io import save_png
from modalities.voxel import data as VD
from modalities.voxel.adapter import VoxelDataConfig, VoxelModality
from multidiff.config import resolve_config
from multidiff.modality import DataInfo, Modality

IMAGE, AUDIO, VOXEL = ImageModality(), AudioModality(), VoxelModality()
SR = 16000


def audio_info(channels: int = 1, length: int = 4096) -> DataInfo:
    return DataInfo((channels, length), extra={"sample_rate": SR})


def voxel_info(r: int = 8) -> DataInfo:
    return DataInfo((1, r, r, r), extra={"resolution": r})


def sine(freq: float, sr: int, n: int, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / sr)).astype(np.float32)


def write_png(path: Path, arr: np.ndarray) -> Path:
    Image.fromarray(arr).save(path)
    return path


# ---------------------------------------------------------------- the interface


class _Minimal(Modality):
    """A third-party adapter written before read_input existed."""

    name = "minimal"

    def build_dataset(self, data: Any) -> Any:
        raise NotImplementedError

    def build_network(self, model: Any, info: DataInfo, *, noise_scale: float, learned_variance: bool = False) -> Any:
        raise NotImplementedError

    def save_samples(self, x: Any, path: Path, info: DataInfo, *, labels: Any = None) -> list[Path]:
        return []


def test_an_adapter_without_readers_still_works_and_says_so(tmp_path: Path) -> None:
    m, info = _Minimal(), DataInfo((2, 5))
    assert m.input_suffixes == ()
    with pytest.raises(ValueError, match=r"'minimal' modality cannot read input files.*x\.csv"):
        m.read_input(tmp_path / "x.csv", info, None)
    np.save(tmp_path / "m.npy", np.array([0, 1, 0, 2, 0]))
    mask = m.read_mask(tmp_path / "m.npy", info)  # the default .npy reader
    assert mask.dtype == torch.bool and mask.tolist() == [[False, True, False, True, False]]


def test_suffixes_are_declared() -> None:
    assert {".png", ".jpg", ".jpeg", ".bmp", ".webp"} <= set(IMAGE.input_suffixes)
    assert set(AUDIO.input_suffixes) == {".wav", ".flac", ".ogg"}
    assert set(VD.MESH_SUFFIXES) | {".npy", ".npz"} == set(VOXEL.input_suffixes)


# ---------------------------------------------------------------- images


def test_png_round_trips_in_minus_one_to_one(tmp_path: Path) -> None:
    u8 = torch.randint(0, 256, (3, 8, 6), generator=torch.Generator().manual_seed(0))
    x = u8.float() / 127.5 - 1
    p = save_png(x, tmp_path / "in.png")  # the image adapter's own writer
    y = IMAGE.read_input(p, DataInfo((3, 8, 6)), ImageDataConfig())
    assert y.shape == (3, 8, 6) and y.dtype == torch.float32
    assert (y - x).abs().max() <= 1 / 255


def test_image_is_covered_and_centre_cropped_like_a_folder(tmp_path: Path) -> None:
    # 8 tall, 16 wide: white left half, black right half; an 8x8 model keeps columns 4..11
    arr = np.zeros((8, 16, 3), dtype=np.uint8)
    arr[:, :8] = 255
    y = IMAGE.read_input(write_png(tmp_path / "wide.png", arr), DataInfo((3, 8, 8)), ImageDataConfig())
    assert torch.equal(y[:, :, :4], torch.ones(3, 8, 4)) and torch.equal(y[:, :, 4:], -torch.ones(3, 8, 4))
    # a larger picture is downscaled to cover: 32x32 -> 8x8 keeps the half split
    arr = np.zeros((32, 32), dtype=np.uint8)
    arr[:, :16] = 255
    y = IMAGE.read_input(write_png(tmp_path / "big.png", arr), DataInfo((1, 8, 8)), ImageDataConfig())
    assert y.shape == (1, 8, 8) and (y[..., :3] > 0.9).all() and (y[..., 5:] < -0.9).all()


def test_channels_follow_the_model(tmp_path: Path) -> None:
    red = np.zeros((4, 4, 3), dtype=np.uint8)
    red[..., 0] = 255
    grey = IMAGE.read_input(write_png(tmp_path / "red.png", red), DataInfo((1, 4, 4)), ImageDataConfig())
    assert grey.shape == (1, 4, 4)
    assert torch.allclose(grey, torch.full((1, 4, 4), round(0.299 * 255) / 127.5 - 1), atol=1 / 255)  # BT.601 luma
    g = write_png(tmp_path / "grey.png", np.full((4, 4), 200, dtype=np.uint8))
    rgb = IMAGE.read_input(g, DataInfo((3, 4, 4)), ImageDataConfig())
    assert rgb.shape == (3, 4, 4) and torch.allclose(rgb, torch.full((3, 4, 4), 200 / 127.5 - 1))


def test_jpeg_is_read(tmp_path: Path) -> None:
    p = tmp_path / "flat.jpg"
    Image.fromarray(np.full((10, 10, 3), 64, dtype=np.uint8)).save(p, quality=95)
    y = IMAGE.read_input(p, DataInfo((3, 5, 5)), ImageDataConfig())
    assert y.shape == (3, 5, 5) and torch.allclose(y, torch.full_like(y, 64 / 127.5 - 1), atol=3 / 255)


def test_png_mask_is_white_resized_nearest_and_aligned(tmp_path: Path) -> None:
    arr = np.zeros((16, 16), dtype=np.uint8)
    arr[:8, :8] = 255
    arr[8:, 8:] = 100  # grey, below half: kept
    m = IMAGE.read_mask(write_png(tmp_path / "m.png", arr), DataInfo((3, 8, 8)))
    assert m.dtype == torch.bool and m.shape == (1, 8, 8)
    expected = torch.zeros(1, 8, 8, dtype=torch.bool)
    expected[:, :4, :4] = True
    assert torch.equal(m, expected)
    # a wide RGB mask is cropped the way the image is: its left half white -> 4 of 8 columns
    wide = np.zeros((8, 16, 3), dtype=np.uint8)
    wide[:, :8, 1] = 255  # any channel
    m = IMAGE.read_mask(write_png(tmp_path / "wide.png", wide), DataInfo((1, 8, 8)))
    assert m[0, :, :4].all() and not m[0, :, 4:].any()
    # a 0/1 label map: nonzero generates
    labels = np.zeros((8, 8), dtype=np.uint8)
    labels[2, 3] = 1
    m = IMAGE.read_mask(write_png(tmp_path / "labels.png", labels), DataInfo((1, 8, 8)))
    assert m.sum() == 1 and m[0, 2, 3]
    # alpha is ignored: an opaque black RGBA picture generates nothing
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    assert not IMAGE.read_mask(write_png(tmp_path / "rgba.png", rgba), DataInfo((3, 8, 8))).any()


@pytest.mark.parametrize(
    "modality, info",
    [(IMAGE, DataInfo((3, 4, 4))), (AUDIO, audio_info(2, 16)), (VOXEL, voxel_info(8))],
    ids=["image", "audio", "voxel"],
)
def test_npy_masks_for_every_modality(tmp_path: Path, modality: Modality, info: DataInfo) -> None:
    rng = np.random.default_rng(0)
    spatial = rng.integers(0, 2, info.shape[1:])
    np.save(tmp_path / "s.npy", spatial)
    m = modality.read_mask(tmp_path / "s.npy", info)
    assert m.dtype == torch.bool and m.shape == (1, *info.shape[1:])
    assert torch.equal(m[0], torch.from_numpy(spatial != 0))
    full = rng.random(info.shape) > 0.5
    np.save(tmp_path / "f.npy", full)
    assert torch.equal(modality.read_mask(tmp_path / "f.npy", info), torch.from_numpy(full))
    np.save(tmp_path / "bad.npy", np.ones((*info.shape[1:-1], info.shape[-1] + 1)))
    with pytest.raises(ValueError, match=r"bad\.npy.*has shape") as e:
        modality.read_mask(tmp_path / "bad.npy", info)
    assert str(tuple(info.shape)) in str(e.value)  # both shapes named
    np.save(tmp_path / "nan.npy", np.full(info.shape[1:], np.nan))
    with pytest.raises(ValueError, match=r"nan\.npy.*NaN"):
        modality.read_mask(tmp_path / "nan.npy", info)


# ---------------------------------------------------------------- audio


def test_wav_at_another_rate_is_resampled_and_cropped_with_a_warning(tmp_path: Path) -> None:
    p = tmp_path / "a.wav"
    sf.write(p, sine(440, 8000, 4000), 8000, subtype="FLOAT")  # 0.5 s -> 8000 samples at 16 kHz
    with pytest.warns(UserWarning, match=r"a\.wav.*8000 samples.*cropped to its first 4096.*3904 samples cut"):
        x = AUDIO.read_input(p, audio_info(), AudioDataConfig(sample_rate=SR, length=4096))
    assert x.shape == (1, 4096) and x.dtype == torch.float32
    ref = torch.from_numpy(sine(440, SR, 4096))
    assert (x[0, 64:] - ref[64:]).abs().max() < 0.02  # the same tone at the new rate (tones: level kept)


def test_short_clip_is_padded_at_the_end_with_a_warning(tmp_path: Path) -> None:
    p = tmp_path / "short.flac"
    clip = sine(300, SR, 1000)
    sf.write(p, clip, SR, subtype="PCM_24")
    with pytest.warns(UserWarning, match=r"short\.flac.*zero-padded at the end to 2048.*1048 samples added"):
        x = AUDIO.read_input(p, audio_info(length=2048), AudioDataConfig(length=2048))
    assert torch.allclose(x[0, :1000], torch.from_numpy(clip), atol=1e-6)
    assert torch.equal(x[0, 1000:], torch.zeros(1048))


def test_exact_length_needs_no_warning_and_channels_follow_the_model(tmp_path: Path) -> None:
    left, right = sine(300, SR, 256, 0.4), sine(500, SR, 256, 0.2)
    sf.write(tmp_path / "st.wav", np.stack([left, right], 1), SR, subtype="FLOAT")
    sf.write(tmp_path / "mono.wav", left, SR, subtype="FLOAT")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mono = AUDIO.read_input(tmp_path / "st.wav", audio_info(1, 256), AudioDataConfig(length=256))
        stereo = AUDIO.read_input(tmp_path / "mono.wav", audio_info(2, 256), AudioDataConfig(length=256, channels=2))
    assert torch.allclose(mono[0], torch.from_numpy((left + right) / 2), atol=1e-6)
    assert stereo.shape == (2, 256) and torch.equal(stereo[0], stereo[1])
    assert torch.allclose(stereo[0], torch.from_numpy(left), atol=1e-6)


@pytest.mark.parametrize("normalize, level", [("rms", "rms"), ("peak", "peak"), ("none", None)])
def test_folder_models_get_their_loudness_normalisation(tmp_path: Path, normalize: str, level: str | None) -> None:
    p = tmp_path / "loud.wav"
    clip = sine(440, SR, 1024, 0.9)
    sf.write(p, clip, SR, subtype="FLOAT")
    data = AudioDataConfig(source="folder", path=str(tmp_path), length=2048, normalize=normalize)
    with pytest.warns(UserWarning, match="padded"):
        x = AUDIO.read_input(p, audio_info(length=2048), data)
    sound = x[0, :1024]
    assert torch.equal(x[0, 1024:], torch.zeros(1024))  # padding stays silent
    if level == "rms":  # -20 dBFS, measured before padding, as audio_folder does
        assert math.isclose(float(sound.pow(2).mean().sqrt()), 0.1, rel_tol=1e-4)
    elif level == "peak":
        assert math.isclose(float(sound.abs().max()), 0.1, rel_tol=1e-4)
    else:
        assert torch.allclose(sound, torch.from_numpy(clip), atol=1e-6)


def test_validated_run_config_sections_work(tmp_path: Path) -> None:
    cfg = resolve_config(
        {
            "modality": "audio",
            "out_dir": str(tmp_path),
            "data": {"source": "tones", "sample_rate": 8000, "length": 512},
        },
        source="test",
    )
    p = tmp_path / "t.wav"
    sf.write(p, sine(440, 8000, 512), 8000, subtype="FLOAT")
    x = cfg.adapter.read_input(p, DataInfo((1, 512), extra={"sample_rate": 8000}), cfg.data)
    assert torch.allclose(x[0], torch.from_numpy(sine(440, 8000, 512)), atol=1e-6)


# ---------------------------------------------------------------- voxels


def test_sample_grids_round_trip_by_index(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(3, 1, 8, 8, 8, generator=g) * 2.2 - 1.1).float()  # samples may overshoot [-1, 1]
    VOXEL.save_samples(x, tmp_path / "s", voxel_info())
    npz = tmp_path / "s" / "grids.npz"
    data = VoxelDataConfig(resolution=8, representation="sdf")
    assert torch.equal(VOXEL.read_input(npz, voxel_info(), data), x[0])
    assert torch.equal(VOXEL.read_input(Path(f"{npz}#2"), voxel_info(), data), x[2])
    with pytest.raises(ValueError, match=r"grids\.npz.*holds 3 grids; #3 is out of range"):
        VOXEL.read_input(Path(f"{npz}#3"), voxel_info(), data)
    with pytest.raises(ValueError, match=r"grids\.npz.*is 8\^3, expected 16\^3"):
        VOXEL.read_input(npz, voxel_info(16), VoxelDataConfig(resolution=16))


def test_npy_grids_and_their_resolution(tmp_path: Path) -> None:
    grid = np.linspace(-1, 1, 8**3, dtype=np.float32).reshape(8, 8, 8)
    np.save(tmp_path / "g.npy", grid)
    np.save(tmp_path / "g1.npy", grid[None])
    np.savez(tmp_path / "one.npz", grid=grid)
    data = VoxelDataConfig(resolution=8)
    for name in ("g.npy", "g1.npy", "one.npz"):
        y = VOXEL.read_input(tmp_path / name, voxel_info(), data)
        assert y.shape == (1, 8, 8, 8) and torch.equal(y[0], torch.from_numpy(grid)), name
    with pytest.raises(ValueError, match=r"one\.npz.*holds one grid; #1 is out of range"):
        VOXEL.read_input(Path(f"{tmp_path / 'one.npz'}#1"), voxel_info(), data)
    with pytest.raises(ValueError, match=r"g\.npy.*'#0' picks a grid of a \.npz file only"):
        VOXEL.read_input(Path(f"{tmp_path / 'g.npy'}#0"), voxel_info(), data)
    with pytest.raises(ValueError, match=r"g\.npy.*is 8\^3, expected 16\^3"):
        VOXEL.read_input(tmp_path / "g.npy", voxel_info(16), VoxelDataConfig(resolution=16))
    np.save(tmp_path / "big.npy", grid * 5)
    with pytest.raises(ValueError, match=r"big\.npy.*outside \[-1, 1\]"):
        VOXEL.read_input(tmp_path / "big.npy", voxel_info(), data)


def test_an_occupancy_grid_becomes_the_sdf_of_an_sdf_model(tmp_path: Path) -> None:
    occ = np.zeros((8, 8, 8), dtype=bool)
    occ[2:6, 2:6, 2:6] = True
    np.save(tmp_path / "occ.npy", occ)
    y = VOXEL.read_input(tmp_path / "occ.npy", voxel_info(), VoxelDataConfig(resolution=8))
    assert torch.equal(y[0], torch.from_numpy(np.where(occ, 1.0, -1.0)).float())  # occupancy model: as is
    with pytest.warns(UserWarning, match=r"occ\.npy.*converted to the model's truncated SDF"):
        s = VOXEL.read_input(tmp_path / "occ.npy", voxel_info(), VoxelDataConfig(resolution=8, representation="sdf"))
    assert torch.equal(s[0] > 0, torch.from_numpy(occ))
    assert math.isclose(float(s[0, 2, 2, 2]), 0.5 / 3, abs_tol=1e-6)  # half a voxel in, truncation 3
    assert math.isclose(float(s[0, 0, 0, 0]), (0.5 - math.sqrt(12)) / 3, abs_tol=1e-6)  # 2 voxels out per axis


@pytest.mark.parametrize("suffix", [".obj", ".stl"])
@pytest.mark.parametrize("representation", ["occupancy", "sdf"])
def test_mesh_is_voxelized_like_the_folder_dataset(tmp_path: Path, suffix: str, representation: str) -> None:
    folder = tmp_path / "meshes"
    folder.mkdir()
    p = folder / f"box{suffix}"
    trimesh.creation.box((2.0, 2.0, 2.0)).export(p)
    data = VoxelDataConfig(source="folder", path=str(folder), resolution=16, representation=representation)
    y = VOXEL.read_input(p, voxel_info(16), data)
    assert y.shape == (1, 16, 16, 16)
    assert float(y[0, 8, 8, 8]) == 1.0  # the centre is inside (7 voxels in: beyond the truncation)
    assert float(y[0, 0, 0, 0]) < 0 and float(y[0, 15, 0, 15]) < 0  # corners outside
    if representation == "occupancy":
        assert float(y[0, 0, 0, 0]) == -1.0 and float(y[0, 1, 1, 1]) == 1.0  # one voxel of margin
    ds, _ = VOXEL.build_dataset(data)
    assert torch.equal(y, ds[0][0])  # exactly what training saw


# ---------------------------------------------------------------- bad inputs


def _wav(p: Path) -> Path:
    sf.write(p, sine(440, SR, 256), SR)
    return p


def _png(p: Path) -> Path:
    return write_png(p, np.zeros((4, 4), dtype=np.uint8))


def _obj(p: Path) -> Path:
    trimesh.creation.box().export(p)
    return p


CASES = {
    "image": (IMAGE, DataInfo((3, 4, 4)), ImageDataConfig(), r"\.png"),
    "audio": (AUDIO, audio_info(1, 256), AudioDataConfig(length=256), r"\.wav"),
    "voxel": (VOXEL, voxel_info(8), VoxelDataConfig(resolution=8), r"\.obj.*\.npz"),
}


@pytest.mark.parametrize(
    "modality, make, name",
    [
        ("image", _wav, "clip.wav"),
        ("image", _obj, "box.obj"),
        ("audio", _png, "pic.png"),
        ("audio", _obj, "box.obj"),
        ("voxel", _wav, "clip.wav"),
        ("voxel", _png, "pic.png"),
    ],
)
def test_another_kind_of_data_is_refused_by_name(tmp_path: Path, modality: str, make: Any, name: str) -> None:
    m, info, data, reads = CASES[modality]
    p = make(tmp_path / name)
    with pytest.raises(ValueError, match=rf"{re.escape(name)}.*'{modality}' modality reads.*{reads}"):
        m.read_input(p, info, data)


@pytest.mark.parametrize("modality", sorted(CASES))
def test_missing_files_and_folders_are_named(tmp_path: Path, modality: str) -> None:
    m, info, data, _ = CASES[modality]
    suffix = m.input_suffixes[0]
    with pytest.raises(ValueError, match=rf"nothere\{suffix}' does not exist"):
        m.read_input(tmp_path / f"nothere{suffix}", info, data)
    (tmp_path / f"dir{suffix}").mkdir()
    with pytest.raises(ValueError, match=rf"dir\{suffix}' does not exist \(it is a folder\)"):
        m.read_input(tmp_path / f"dir{suffix}", info, data)
    with pytest.raises(ValueError, match=r"nomask\.npy' does not exist"):
        m.read_mask(tmp_path / "nomask.npy", info)


CORRUPT = [
    ("image", ".png"),
    ("image", ".jpg"),
    ("audio", ".wav"),
    ("audio", ".flac"),
    ("voxel", ".obj"),
    ("voxel", ".stl"),
    ("voxel", ".npy"),
    ("voxel", ".npz"),
]


@pytest.mark.parametrize("modality, suffix", CORRUPT)
def test_corrupt_files_are_named(tmp_path: Path, modality: str, suffix: str) -> None:
    m, info, data, _ = CASES[modality]
    p = tmp_path / f"junk{suffix}"
    p.write_bytes(np.random.default_rng(1).integers(0, 256, 600, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match=rf"junk\{suffix}"):
        m.read_input(p, info, data)


def test_bad_masks_are_named(tmp_path: Path) -> None:
    info = DataInfo((3, 4, 4))
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match=r"cannot read mask .*junk\.png"):
        IMAGE.read_mask(junk, info)
    with pytest.raises(ValueError, match=r"clip\.wav.*'image' modality's masks reads.*\.png.*\.npy"):
        IMAGE.read_mask(_wav(tmp_path / "clip.wav"), info)
    with pytest.raises(ValueError, match=r"pic\.png.*'audio' modality's masks reads \.npy"):
        AUDIO.read_mask(_png(tmp_path / "pic.png"), audio_info())
    bad = tmp_path / "junk.npy"
    bad.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ValueError, match=r"cannot read mask .*junk\.npy"):
        VOXEL.read_mask(bad, voxel_info())
