"""The example third-party modality (examples/custom_modality) installs with pip, is listed by
`multidiff modalities` and trains and samples through `multidiff`, with no change to multidiff."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "examples" / "custom_modality"


def _run(args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    out = subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out


def test_the_example_modality_installs_lists_trains_and_samples(tmp_path: Path) -> None:
    site = tmp_path / "site"
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--no-build-isolation"]
    pkg = tmp_path / "pkg"  # a copy: the build writes build/ and *.egg-info next to the sources
    shutil.copytree(PACKAGE, pkg, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    _run([*pip, "--target", str(site), str(pkg)], env, tmp_path)
    assert list(site.glob("multidiff_timeseries-*.dist-info"))
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    cli = [sys.executable, "-m", "multidiff"]
    assert "timeseries" in _run([*cli, "modalities"], env, tmp_path).stdout

    cfg = yaml.safe_load((PACKAGE / "config.yaml").read_text())
    cfg["out_dir"] = str(tmp_path / "run")
    cfg["data"]["per_class"] = 20
    cfg["train"].update(steps=6, batch_size=12, checkpoint_every=0, progress=False, threads=1, log_every=2)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = _run([*cli, "train", str(tmp_path / "c.yaml")], env, tmp_path).stdout
    assert "3-channel series of 128 steps from synthetic" in out and "done: step 6" in out
    out = _run(
        [
            *cli,
            "sample",
            str(tmp_path / "run"),
            "--class",
            "square",
            "-n",
            "3",
            "--steps",
            "4",
            "--out",
            str(tmp_path / "s"),
        ],
        env,
        tmp_path,
    ).stdout
    csvs = sorted((tmp_path / "s").glob("*.csv"))
    assert [p.name for p in csvs] == ["000_square.csv", "001_square.csv", "002_square.csv"]
    with open(csvs[0], newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["ch0", "ch1", "ch2"] and len(rows) == 129 and all(len(r) == 3 for r in rows)
    assert (tmp_path / "s" / "plot.png").stat().st_size > 1000
    # The adapter defines no judge: `multidiff eval` reports the generic figures (a classifier of its data).
    out = _run([*cli, "eval", str(tmp_path / "run"), "-n", "2", "--steps", "2"], env, tmp_path).stdout
    assert "a classifier trained on 48 real examples" in out and "frechet_floor" in out
    assert {"class_accuracy", "worst_class_accuracy", "frechet", "judge_accuracy"} <= set(out.split())

    # the demo asks every installed modality for its run: the example's appears by being installed
    out = _run([*cli, "demo", "--quick", "--modality", "timeseries", "--out", str(tmp_path / "demo")], env, tmp_path)
    assert "synthetic waves" in out.stdout and "done" not in out.stderr
    page = (tmp_path / "demo" / "index.html").read_text()
    assert "synthetic waves (3 channels of 128 steps, 3 kinds)" in page and "sampled series, one panel each" in page
    assert list((tmp_path / "demo" / "waves_run" / "samples").rglob("*.csv"))


def test_the_example_modality_reads_a_folder_of_csv_files(tmp_path: Path) -> None:
    sys.path.insert(0, str(PACKAGE))
    try:
        from multidiff_timeseries import TimeSeriesDataConfig, TimeSeriesModality
    finally:
        sys.path.remove(str(PACKAGE))
    for cls, n in (("up", 2), ("down", 3)):
        (tmp_path / "d" / cls).mkdir(parents=True)
        for i in range(n):
            with open(tmp_path / "d" / cls / f"s{i}.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["a", "b"])
                w.writerows([[j * (1 if cls == "up" else -1), 2 * j] for j in range(10 + i)])
    (tmp_path / "d" / "down" / "bad.csv").write_text("a,b\n1,oops\n")
    data = TimeSeriesDataConfig(source="folder", path=str(tmp_path / "d"), channels=2, length=16, on_bad_file="skip")
    with pytest.warns(UserWarning, match="skipped 1 of 6 CSV series"):
        ds, info = TimeSeriesModality().build_dataset(data)
    assert info.class_names == ("down", "up") and info.shape == (2, 16) and len(ds) == 5
    x, y = ds[3]
    assert int(y) == 1 and float(x.abs().max()) == 1.0 and float(x[:, 10:].abs().max()) == 0.0  # padded
    with pytest.raises(ValueError, match=r"bad\.csv"):
        TimeSeriesModality().build_dataset(data.model_copy(update={"on_bad_file": "error"}))
