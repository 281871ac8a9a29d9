"""The command line, run as a user runs it, and the promise that `import multidiff` stays light."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from multidiff import cli


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
    assert "dpmpp_2m" in out and "ODE error" in out
    for name in ("ring_samples.png", "schedules.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_bad_arguments_exit_with_usage_error() -> None:
    r = subprocess.run([sys.executable, "-m", "multidiff.cli", "train-everything"], capture_output=True, text=True)
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_import_multidiff_stays_light() -> None:
    code = "import sys, multidiff; print(sorted({'torchaudio', 'torchvision', 'trimesh'} & set(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"
