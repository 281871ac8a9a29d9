"""The command line, run as a user runs it, and the promise that `import multidiff` stays light."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import soundfile as sf
import yaml
from helpers import tiny_run, write_images
from PIL import Image

from multidiff import cli
from multidiff.checkpoint import find_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def test_samplers_lists_every_registered_sampler(capsys: pytest.CaptureFixture[str]) -> None:
    from multidiff.samplers import available_samplers

    assert cli.main(["samplers"]) == 0
    out = capsys.readouterr().out
    for name in available_samplers():
        assert name in out


def test_modalities_lists_installed_entry_points(capsys: pytest.CaptureFixture[str]) -> None:
    from multidiff.registry import available_modalities

    assert cli.main(["modalities"]) == 0
    out = capsys.readouterr().out
    names = available_modalities()
    assert all(n in out for n in names) if names else "no modality adapters installed" in out


def test_demo_writes_pictures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "dpmpp_2m" in out and "ODE error" in out and "handwritten digits" in out and "synthesized tones" in out
    assert "primitive shapes" in out
    pictures = ["ring_samples.png", "schedules.png", "loss_digits.png", "noising.png", "trajectory.png"]
    pictures += ["digits_run/samples/digits.png", "loss_tones.png", "tones_run/samples/tones/spectrograms.png"]
    pictures += ["audio_real_spectrograms.png", "loss_shapes.png", "voxel_real_preview.png"]
    pictures += ["shapes_run/samples/shapes/preview.png"]
    for name in pictures:
        with Image.open(tmp_path / name) as im:
            assert im.format == "PNG" and min(im.size) >= 64
    assert find_checkpoint(tmp_path / "digits_run").step == 30
    assert find_checkpoint(tmp_path / "tones_run").step == 20
    wavs = sorted((tmp_path / "tones_run" / "samples" / "tones").glob("*.wav"))
    assert len(wavs) == 16
    data, rate = sf.read(wavs[0])
    assert rate == 8000 and data.shape == (2048,) and np.isfinite(data).all()
    assert find_checkpoint(tmp_path / "shapes_run").step == 10
    grids = np.load(tmp_path / "shapes_run" / "samples" / "shapes" / "grids.npz")
    assert grids["grids"].shape == (12, 1, 16, 16, 16) and np.isfinite(grids["grids"]).all()
    assert out.strip().splitlines()[-1] == f"open {tmp_path / 'index.html'} to see everything together"
    page = (tmp_path / "index.html").read_text()
    links = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert "<script" not in page and not [u for u in links if "://" in u or u.startswith("/")]
    assert all((tmp_path / unquote(u)).is_file() for u in links), [
        u for u in links if not (tmp_path / unquote(u)).is_file()
    ]
    linked = {unquote(u) for u in links}
    assert {"digits_run/samples/digits.png", "loss_tones.png", "shapes_run/samples/shapes/preview.png"} <= linked
    assert {"ring_samples.png", "schedules.png", "shapes_run/samples/shapes/000_sphere.obj"} <= linked
    assert page.count("<audio controls") == len(wavs) and "<td>dpmpp_2m</td>" in page


def test_train_then_sample_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(tiny_run(tmp_path / "run")))
    assert cli.main(["train", str(cfg), "--set", "train.steps=3"]) == 0
    assert "done: step 3" in capsys.readouterr().out
    assert cli.main(["train", str(cfg), "--set", "train.steps=5", "--resume"]) == 0
    assert "steps 3 -> 5" in capsys.readouterr().out
    out = tmp_path / "seven.png"
    args = ["sample", str(tmp_path / "run"), "--class", "7", "--guidance", "2", "-n", "4", "--steps", "2"]
    assert cli.main([*args, "--sampler", "euler", "--out", str(out)]) == 0
    with Image.open(out) as im:
        assert im.format == "PNG"
    assert "step 5" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "CFG", "--set", "train.stepz=3"], "train.stepz: unknown key"),
        (["train", "CFG", "--set", "train.steps=many"], "train.steps: Input should be a valid integer"),
        (["train", "CFG", "--set", "data.source=folder", "--set", "data.path=/no/such/folder"], "/no/such/folder"),
        (["train", "CFG", "--set", "data.source=folder", "--set", "data.path=IMGS"], "cannot read image"),
        (["train", "CFG", "--set", "model.channels=16", "--set", "train.init_from=RUN"], "made for another model"),
        (["train", "CFG", "--set", "model.channels=16", "--resume"], "made for another model"),
        (["sample", "/no/such/run"], "does not exist"),
        (["sample", "RUN", "--class", "eleven"], "--class must be one of"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(tiny_run(tmp_path / "run", train={"steps": 1})))
    if "RUN" in " ".join(argv) or "--resume" in argv:
        assert cli.main(["train", str(cfg)]) == 0
    write_images(tmp_path / "imgs", {"a": 2, "b": 1})
    (tmp_path / "imgs" / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    before = {p.relative_to(tmp_path): p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    subs = {"CFG": str(cfg), "RUN": str(tmp_path / "run"), "IMGS": str(tmp_path / "imgs")}
    argv = [
        subs.get(a, a) if "=" not in a else a.split("=")[0] + "=" + subs.get(a.split("=")[1], a.split("=")[1])
        for a in argv
    ]
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    after = {p.relative_to(tmp_path): p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # nothing written, nothing overwritten


def test_bad_arguments_exit_with_usage_error() -> None:
    r = subprocess.run([sys.executable, "-m", "multidiff.cli", "train-everything"], capture_output=True, text=True)
    assert r.returncode == 2 and "invalid choice" in r.stderr


# what `import multidiff` must not import (.ci/run checks the same list in a fresh install)
HEAVY = (
    "torchaudio",
    "torchvision",
    "trimesh",
    "soundfile",
    "skimage",
    "scipy",
    "sklearn",
    "matplotlib",
    "PIL",
    "modalities",
    "diffusers",
    "transformers",
    "sentence_transformers",
)


def test_import_multidiff_stays_light() -> None:
    code = f"import sys, multidiff; print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert r.stdout.strip() == "[]"
    # each of them is installed here, so the check above is not vacuous
    assert [m for m in HEAVY if importlib.util.find_spec(m) is None] == []
