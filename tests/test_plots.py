"""``multidiff plot``: every kind writes a PNG that opens, and bad input exits 2 naming the path."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from helpers import tiny_run, write_images
from PIL import Image

from multidiff import cli
from multidiff import schedules as S
from multidiff.denoiser import DataSpace
from multidiff.plots import noised_copies, smooth

ROOT = Path(__file__).resolve().parents[1]


def assert_png(path: Path, min_side: int = 100) -> None:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "PNG" and min(im.size) >= min_side


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two tiny digits runs, one logging CSV and one JSON lines, with checkpoints."""
    from multidiff.config import resolve_config
    from multidiff.train import Trainer

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("runs")
    made = []
    for name, fmt in (("csv_run", "csv"), ("jsonl_run", "jsonl")):
        d = tiny_run(root / name, train={"steps": 6, "metrics_format": fmt})
        Trainer(resolve_config(d)).fit()
        made.append(root / name)
    return made


def test_schedules(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["plot", "schedules", "--out", str(tmp_path / "s.png")], capsys)
    assert code == 0 and out.strip() == f"wrote {tmp_path / 's.png'}"
    assert_png(tmp_path / "s.png")


def test_loss_overlays_runs_of_either_metrics_format(
    runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "loss.png"
    code, text, _ = run_cli(["plot", "loss", *map(str, runs), "--out", str(out)], capsys)
    assert code == 0 and str(out) in text
    assert_png(out)
    code, _, _ = run_cli(["plot", "loss", str(runs[1] / "metrics.jsonl"), "--out", str(tmp_path / "one.png")], capsys)
    assert code == 0
    assert_png(tmp_path / "one.png")


def test_smooth_is_unbiased_at_the_start() -> None:
    assert smooth([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])
    assert smooth([1.0, 3.0], weight=0.5)[1] == pytest.approx((0.5 * 1 + 3) / 1.5)


def test_noising_from_a_run_with_and_without_an_input(
    runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "noising.png"
    code, text, _ = run_cli(["plot", "noising", str(runs[0]), "--levels", "5", "--out", str(out)], capsys)
    assert code == 0 and text.strip().endswith(f"wrote {out}")
    assert_png(out)
    assert_png(tmp_path / "noising_image.png", min_side=8)  # the adapter's own picture: one row of 5 copies
    with Image.open(tmp_path / "noising_image.png") as im:
        assert im.size[0] > 4 * im.size[1]
    [img] = write_images(tmp_path / "in", {"": 1}, size=(20, 20))
    code, _, err = run_cli(
        ["plot", "noising", str(runs[0]), "--input", str(img), "--out", str(tmp_path / "i.png")], capsys
    )
    assert code == 0, err
    assert_png(tmp_path / "i.png")


@pytest.mark.parametrize(
    ("modality", "data", "wrote"),
    [
        ("audio", {"source": "tones", "sample_rate": 8000, "length": 2048}, "n_audio/spectrograms.png"),
        ("voxel", {"source": "shapes", "resolution": 16}, "n_voxel/preview.png"),
    ],
)
def test_noising_of_other_modalities_from_a_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], modality: str, data: dict, wrote: str
) -> None:
    cfg = tmp_path / "run.yaml"
    diffusion = {"schedule": {"kind": "cosine"}, "data_scale": 2.0}
    cfg.write_text(yaml.safe_dump({"modality": modality, "data": data, "diffusion": diffusion}))
    code, text, err = run_cli(["plot", "noising", str(cfg), "--levels", "4", "--out", str(tmp_path / "n.png")], capsys)
    assert code == 0, err
    assert_png(tmp_path / "n.png")
    assert_png(tmp_path / wrote)
    assert "t=1.00" in text  # the adapter's files are named by noise level


def test_noised_copies_run_from_data_to_noise() -> None:
    x0 = torch.ones(1, 4, 4)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    x = noised_copies(x0, S.CosineSchedule(), t, space=DataSpace(2.0))
    assert x.shape == (3, 1, 4, 4)
    assert torch.allclose(x[0], x0, atol=1e-3)  # t = 0: the input, in data units
    assert abs(float(x[2].mean())) < 1.0 and float(x[2].std()) < 1.0  # t = 1: noise / data_scale


def test_samplers_from_the_benchmark_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m benchmarks.samplers --csv`` writes what ``python -m benchmarks.plot_samplers``
    reads (its writer run on made-up results here; the benchmark itself takes a minute)."""
    import benchmarks.samplers as bench
    from benchmarks.plot_samplers import SAMPLER_CSV_FIELDS, main

    nfes = (5, 10, 20)
    metrics = ("ode", "ode_med", "ll", "tv", "sw")
    problems = [SimpleNamespace(name=f"problem {i}", floor={k: 0.01 for k in metrics}) for i in range(2)]
    methods = [
        SimpleNamespace(impl=impl, name=name, config=grid, family=name, stochastic=sto, label=f"{impl}|{name}|{grid}")
        for impl in ("multidiff", "k-diffusion")
        for name, sto in (("euler", False), ("heun", False), ("ddpm", True))
        for grid in ("karras", "logsnr")
    ]
    results = {
        (p.name, m.label, n): {
            "nfe": n,
            **{k: (math.nan if m.stochastic and k.startswith("ode") else 1.0 / n) for k in metrics},
        }
        for p in problems
        for m in methods
        for n in nfes
    }
    csv_path = tmp_path / "bench.csv"
    bench.write_csv(str(csv_path), problems, methods, results, nfes)
    assert csv_path.read_text().splitlines()[0] == ",".join(SAMPLER_CSV_FIELDS)
    assert main([str(csv_path), "--out", str(tmp_path / "sp.png")]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'sp.png'}"
    assert_png(tmp_path / "sp.png")


@pytest.mark.parametrize("what", ["MISSING", "PNG", "RUN/metrics.csv"])
def test_plot_samplers_refuses_bad_input_naming_the_path(
    runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], what: str
) -> None:
    from benchmarks.plot_samplers import main

    Image.new("RGB", (8, 8)).save(tmp_path / "picture.png")
    subs = {"MISSING": str(tmp_path / "no_such"), "PNG": str(tmp_path / "picture.png"), "RUN": str(runs[0])}
    head = what.split("/")[0]
    path = what.replace(head, subs[head], 1)
    assert main([path, "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert path in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.png").exists()


def test_plot_samplers_is_no_longer_a_multidiff_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["plot", "samplers", "x.csv"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "path"),
    [
        (["plot", "loss", "MISSING"], "MISSING"),
        (["plot", "loss", "RUN", "PNG"], "PNG"),
        (["plot", "loss", "EMPTY"], "EMPTY"),
        (["plot", "noising", "MISSING"], "MISSING"),
        (["plot", "noising", "RUN", "--input", "MISSING"], "MISSING"),
        (["plot", "noising", "RUN", "--input", "RUN/metrics.csv"], "RUN/metrics.csv"),
    ],
)
def test_bad_input_exits_2_naming_the_path(
    runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], path: str
) -> None:
    (tmp_path / "empty").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "picture.png")
    subs = {"MISSING": str(tmp_path / "no_such"), "PNG": str(tmp_path / "picture.png")}
    subs |= {"EMPTY": str(tmp_path / "empty"), "RUN": str(runs[0])}
    argv = [a.replace(a.split("/")[0], subs[a.split("/")[0]], 1) if a.split("/")[0] in subs else a for a in argv]
    path = path.replace(path.split("/")[0], subs[path.split("/")[0]], 1)
    code, out, err = run_cli([*argv, "--out", str(tmp_path / "x.png")], capsys)
    assert code == 2
    assert path in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.png").exists()
