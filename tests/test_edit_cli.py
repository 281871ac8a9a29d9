"""``multidiff edit ...`` and the guidance options of ``multidiff sample`` on tiny trained models of
each modality: files in, files out, known values kept, bad input refused with one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import tiny_run

from multidiff import config as C
from multidiff.cli import main
from multidiff.train import Trainer


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("edit_image") / "run"
    Trainer(C.resolve_config(tiny_run(out, train={"steps": 2}))).fit()
    return out


@pytest.fixture(scope="module")
def audio_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("edit_audio") / "run"
    d = {
        "modality": "audio",
        "out_dir": str(out),
        "data": {"source": "tones", "sample_rate": 8000, "length": 512, "per_class": 4},
        "model": {"preset": "tiny", "channels": 4, "channel_mult": [1, 2], "attention_levels": []},
        "diffusion": {
            "schedule": {"kind": "cosine_discrete", "num_steps": 100},
            "parameterization": "v",
            "data_scale": 5.0,
        },
        "train": {"steps": 2, "batch_size": 8, "log_every": 1, "checkpoint_every": 0, "progress": False},
        "sample": {"steps": 3, "num_samples": 2},
    }
    Trainer(C.resolve_config(d)).fit()
    return out


@pytest.fixture(scope="module")
def voxel_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("edit_voxel") / "run"
    d = {
        "modality": "voxel",
        "out_dir": str(out),
        "data": {"source": "shapes", "resolution": 8, "per_class": 2, "representation": "sdf"},
        "model": {"preset": "tiny", "channels": 4, "channel_mult": [1, 2], "attention_levels": [1], "head_channels": 8},
        "diffusion": {"schedule": {"kind": "cosine_discrete", "num_steps": 100}, "parameterization": "v"},
        "train": {"steps": 2, "batch_size": 4, "log_every": 1, "checkpoint_every": 0, "progress": False},
        "sample": {"steps": 3, "num_samples": 2},
    }
    Trainer(C.resolve_config(d)).fit()
    return out


def _digit_png(path: Path) -> Path:
    from PIL import Image

    from modalities.image.data import digits

    ds, _ = digits((8, 8))
    arr = ((ds.x[3, 0].numpy() + 1) * 127.5).round().astype(np.uint8)
    Image.fromarray(arr).save(path)
    return path


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_image_edits_write_pictures(image_run: Path, tmp_path: Path, capsys) -> None:
    png = _digit_png(tmp_path / "digit.png")
    cases = {
        "inpaint": ["--region", "0.25:0.75,0.25:0.75", "-n", "2", "--method", "replace"],
        "sdedit": ["--strength", "0.6", "--class", "7", "-n", "2"],
        "invert": [],
        "interpolate": ["--input", str(png), "--frames", "3", "--class", "1", "--class-b", "2"],
        "diffedit": ["--class", "8", "--reference-class", "3"],
    }
    for edit, extra in cases.items():
        out = tmp_path / edit
        code, stdout, err = _run(
            capsys,
            "edit",
            edit,
            str(image_run),
            "--input",
            str(png),
            "--out",
            str(out),
            "--steps",
            "3",
            "--device",
            "cpu",
            *extra,
        )
        assert code == 0, (edit, err)
        written = [Path(line.removeprefix("wrote ")) for line in stdout.splitlines() if line.startswith("wrote ")]
        assert written and all(p.exists() and p.stat().st_size > 0 for p in written), (edit, stdout)
    assert (
        "RMS error"
        in _run(
            capsys, "edit", "invert", str(image_run), "--input", str(png), "--out", str(tmp_path / "i2"), "--steps", "3"
        )[1]
    )
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "invert" / "noise.safetensors"))
    assert saved["noise"].shape == (1, 8, 8) and saved["sigmas"][-1] == 0


def test_audio_continuation_keeps_the_prefix(audio_run: Path, tmp_path: Path, capsys) -> None:
    t = np.arange(512) / 8000
    wav = tmp_path / "clip.wav"
    sf.write(wav, 0.3 * np.sin(2 * np.pi * 440 * t), 8000, subtype="PCM_16")
    out = tmp_path / "cont"
    code, _, err = _run(
        capsys,
        "edit",
        "inpaint",
        str(audio_run),
        "--input",
        str(wav),
        "--region",
        "0.5:",
        "--out",
        str(out),
        "-n",
        "2",
        "--steps",
        "3",
    )
    assert code == 0, err
    src, _ = sf.read(wav, dtype="float32")
    for f in sorted((out / "inpainted").glob("*.wav")):
        got, sr = sf.read(f, dtype="float32")
        assert sr == 8000 and got.shape == (512,)
        assert np.abs(got[:256] - src[:256]).max() <= 1.5 / 32768  # the prefix, to the 16-bit step
    assert len(list((out / "inpainted").glob("*.wav"))) == 2


def test_shape_completion_keeps_the_given_voxels(voxel_run: Path, tmp_path: Path, capsys) -> None:
    from modalities.voxel.data import shapes

    ds, _ = shapes(8, per_class=1, representation="sdf", seed=3)
    grid = tmp_path / "part.npy"
    np.save(grid, ds.x[0, 0].numpy())
    out = tmp_path / "complete"
    code, _, err = _run(
        capsys,
        "edit",
        "inpaint",
        str(voxel_run),
        "--input",
        str(grid),
        "--region",
        ":,:,0.5:",
        "--out",
        str(out),
        "-n",
        "2",
        "--steps",
        "3",
        "--method",
        "smc",
        "--particles",
        "2",
    )
    assert code == 0, err
    done = np.load(out / "inpainted" / "grids.npz")["grids"]
    assert done.shape == (2, 1, 8, 8, 8)
    assert np.array_equal(done[:, 0, :, :, :4], np.broadcast_to(ds.x[0, 0, :, :, :4].numpy(), (2, 8, 8, 4)))
    assert not np.allclose(done[:, 0, :, :, 4:], ds.x[0, 0, :, :, 4:].numpy())


def test_sample_with_a_negative_class_and_classifier_guidance(image_run: Path, tmp_path: Path, capsys) -> None:
    code, stdout, err = _run(
        capsys,
        "sample",
        str(image_run),
        "-n",
        "4",
        "--steps",
        "2",
        "--guidance",
        "2",
        "--negative-class",
        "3",
        "--out",
        str(tmp_path / "neg.png"),
    )
    assert code == 0, err
    assert (tmp_path / "neg.png").exists()
    args = ("sample", str(image_run), "-n", "4", "--steps", "2", "--guidance", "2", "--guidance-interval")
    code, stdout, err = _run(capsys, *args, "0.5", "20", "--out", str(tmp_path / "window.png"))
    assert code == 0, err
    assert (tmp_path / "window.png").exists()
    code, stdout, err = _run(capsys, *args, "20", "0.5", "--out", str(tmp_path / "never.png"))
    assert code == 2 and "interval" in err and not (tmp_path / "never.png").exists()
    code, stdout, err = _run(
        capsys,
        "sample",
        str(image_run),
        "-n",
        "4",
        "--steps",
        "2",
        "--classifier-scale",
        "1",
        "--class",
        "5",
        "--out",
        str(tmp_path / "clf.png"),
    )
    assert code == 0, err
    assert "classifier for guidance" in stdout and (tmp_path / "clf.png").exists()


def test_bad_edit_inputs_exit_2_with_one_line(image_run: Path, audio_run: Path, tmp_path: Path, capsys) -> None:
    png = _digit_png(tmp_path / "digit.png")
    wav = tmp_path / "clip.wav"
    sf.write(wav, np.zeros(512), 8000)
    bad_mask = tmp_path / "mask.npy"
    np.save(bad_mask, np.ones((5, 5), dtype=bool))
    base = ["--out", str(tmp_path / "never"), "--steps", "2"]
    cases = [
        (["edit", "inpaint", str(image_run), "--input", str(png), "--mask", str(bad_mask), *base], "mask.npy"),
        (["edit", "inpaint", str(image_run), "--input", str(png), *base], "exactly one of --mask"),
        (
            ["edit", "sdedit", str(image_run), "--input", str(png), "--strength", "1.5", *base],
            "strength must lie in [0, 1]",
        ),
        (["edit", "sdedit", str(image_run), "--input", str(wav), *base], "clip.wav"),
        (["edit", "inpaint", str(audio_run), "--input", str(png), "--region", "0.5:", *base], "digit.png"),
        (["edit", "inpaint", str(image_run), "--input", str(png), "--region", "0.5:0.2", *base], "--region"),
        (["edit", "inpaint", str(image_run), "--input", str(png), "--region", ":,:,:", *base], "2 spatial axes"),
        (["edit", "interpolate", str(image_run), "--input", str(png), *base], "two --input files"),
        (["edit", "diffedit", str(image_run), "--input", str(png), *base], "--class"),
        (["edit", "sdedit", str(image_run), "--input", str(png), "--class", "eleven", *base], "--class"),
        (
            ["edit", "sdedit", str(audio_run), "--input", str(wav), "--negative-class", "nope", *base],
            "--negative-class",
        ),
    ]
    for argv, needle in cases:
        code, out, err = _run(capsys, *argv)
        assert code == 2, (argv, out, err)
        assert needle in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert not (tmp_path / "never").exists()


def _example(name: str):
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_editing_examples_run(image_run: Path, audio_run: Path, voxel_run: Path, tmp_path: Path, capsys) -> None:
    from PIL import Image

    assert (
        _example("edit_images").main(
            [
                str(image_run),
                "--steps",
                "3",
                "-n",
                "2",
                "--frames",
                "3",
                "--out",
                str(tmp_path / "i"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert Image.open(tmp_path / "i" / "inpainting.png").size[0] > 0 and (tmp_path / "i" / "interpolation.png").exists()
    assert (
        _example("edit_audio").main([str(audio_run), "--steps", "3", "--out", str(tmp_path / "a"), "--device", "cpu"])
        == 0
    )
    wavs = sorted(p.name for p in (tmp_path / "a").glob("*.wav"))
    assert wavs == ["continuation_0.wav", "continuation_1.wav", "infill_0.wav", "infill_1.wav", "input.wav"]
    src, _ = sf.read(tmp_path / "a" / "input.wav")
    cont, _ = sf.read(tmp_path / "a" / "continuation_0.wav")
    assert np.abs(cont[:256] - src[:256]).max() <= 1.5 / 32768
    assert (
        _example("complete_shapes").main(
            [str(voxel_run), "--steps", "3", "-n", "2", "--out", str(tmp_path / "v"), "--device", "cpu"]
        )
        == 0
    )
    grids = np.load(tmp_path / "v" / "grids.npz")["grids"]
    assert grids.shape == (3, 1, 8, 8, 8)
    assert np.array_equal(
        grids[1:, :, :, :, :4], np.broadcast_to(grids[0, :, :, :, :4], (2, 1, 8, 8, 4))
    )  # given part kept
    assert (tmp_path / "v" / "preview.png").exists()
