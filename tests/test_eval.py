"""`multidiff eval RUN`: every built-in modality's judge on a tiny run, its figures present and in
range, and the voxel single-piece fraction measured before the largest piece is kept."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from helpers import tiny_run

from multidiff import cli

AUDIO_RUN = {
    "modality": "audio",
    "data": {"source": "tones", "sample_rate": 8000, "length": 1024, "per_class": 5},
    "model": {"preset": "tiny", "channels": 4, "channel_mult": [1, 2], "attention_levels": []},
    "diffusion": {"schedule": {"kind": "cosine_discrete", "num_steps": 100}, "parameterization": "v"},
    "sample": {"steps": 2, "num_samples": 4, "sampler": "ddim"},
}
VOXEL_RUN = {
    "modality": "voxel",
    "data": {"source": "shapes", "resolution": 8, "per_class": 6, "representation": "sdf"},
    "model": {"preset": "tiny", "channels": 4, "channel_mult": [1, 2], "attention_levels": [1], "head_channels": 8},
    "diffusion": {"schedule": {"kind": "cosine_discrete", "num_steps": 100}, "parameterization": "v"},
    "sample": {"steps": 2, "num_samples": 6, "sampler": "ddim"},
}
TRAIN = {"steps": 2, "batch_size": 8, "log_every": 1, "checkpoint_every": 0, "progress": False, "device": "cpu"}


def _config(modality: str, out: Path) -> dict:
    if modality == "image":
        return tiny_run(out, train={"steps": 2})
    d = {**(AUDIO_RUN if modality == "audio" else VOXEL_RUN), "out_dir": str(out), "train": dict(TRAIN)}
    return json.loads(json.dumps(d))


# figure -> (low, high) for every modality; None: unbounded above
COMMON = {
    "samples": (1, None),
    "seconds": (0, None),
    "worst_class_accuracy": (0, 1),
    "judge_accuracy": (0, 1),
    "frechet": (0, None),
    "frechet_floor": (0, None),
}
EXTRA = {
    "image": {"class_accuracy": (0, 1)},
    "audio": {"pitch_accuracy": (0, 1)},
    "voxel": {
        "class_accuracy": (0, 1),
        "single_piece_fraction": (0, 1),
        "mean_pieces": (0, None),
        "watertight_fraction": (0, 1),
        "coverage": (0, 1),
        "mmd": (0, None),
    },
}


@pytest.mark.parametrize("modality", ["image", "audio", "voxel"])
def test_eval_prints_and_writes_every_figure_in_range(
    modality: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(_config(modality, tmp_path / "run")))
    assert cli.main(["train", str(cfg)]) == 0
    capsys.readouterr()
    args = ["eval", str(tmp_path / "run"), "--num", "3", "--seed", "1", "--json", str(tmp_path / "e.json")]
    if modality == "voxel":  # a small judge: the default trains on 600 shapes per class for 12 epochs
        args += ["--judge-option", "judge_per_class=10", "--judge-option", "judge_epochs=1"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "e.json").read_text())
    figures = report["figures"]
    wanted = {**COMMON, **EXTRA[modality]}
    assert set(wanted) <= set(figures), sorted(set(wanted) - set(figures))
    for name, (lo, hi) in wanted.items():
        v = figures[name]
        assert math.isfinite(v) and v >= lo and (hi is None or v <= hi), (name, v)
        assert name in out  # the printed table names every figure
    k = report["settings"]["num_classes"]
    assert figures["samples"] == 3 * k and len(report["per_class"]) == k
    assert report["settings"]["seed"] == 1 and report["settings"]["modality"] == modality
    assert report["judge"] and f"judge: {report['judge']}" in out


def test_single_piece_fraction_is_counted_before_the_largest_piece_is_kept() -> None:
    from modalities.voxel.io import grid_to_mesh
    from modalities.voxel.judge import mesh_figures, piece_counts

    two = -torch.ones(1, 1, 12, 12, 12)
    two[0, 0, 2:5, 2:5, 2:5] = 1.0  # two separate cubes
    two[0, 0, 7:10, 7:10, 7:10] = 1.0
    one = -torch.ones(1, 1, 12, 12, 12)
    one[0, 0, 3:9, 3:9, 3:9] = 1.0
    assert piece_counts(two).tolist() == [2] and piece_counts(one).tolist() == [1]
    assert piece_counts(-torch.ones(1, 1, 8, 8, 8)).tolist() == [0]
    exported = grid_to_mesh(two[0])  # what save_samples writes: the largest piece only
    assert len(exported.split(only_watertight=False)) == 1 and exported.is_watertight
    figures = mesh_figures(two, one)
    assert figures["single_piece_fraction"] == 0.0 and figures["mean_pieces"] == 2.0
    assert mesh_figures(torch.cat([two, one]), None)["single_piece_fraction"] == 0.5


def test_topology_tells_a_ring_from_an_arc_and_counts_each_piece() -> None:
    """The genus comes from the Euler characteristic of the closed surface: a real torus has one
    hole, a ball none, two balls none in all; a torus cut open (an arc, which the classifier may
    still call a torus) is one piece of genus 0, so it fails the torus's topology."""
    from modalities.voxel.data import primitive_sdf
    from modalities.voxel.judge import SHAPE_GENUS, piece_counts, surface_genus, topology_figures

    r = 16
    t = (torch.arange(r, dtype=torch.float32) + 0.5) / r - 0.5
    pts = torch.stack(torch.meshgrid(t, t, t, indexing="ij"), -1)
    grid = lambda d: (-d * r / 2.0).clamp(-1, 1)[None, None]  # noqa: E731  the data's truncated SDF
    torus = grid(primitive_sdf("torus", pts, major_radius=0.3, minor_radius=0.1))
    ball = grid(primitive_sdf("sphere", pts, radius=0.3))
    arc = torus.clone()
    arc[..., r // 2 - 1 : r // 2 + 1, :, : r // 2] = -1.0  # a slab through one side of the ring
    two = torch.maximum(
        grid(primitive_sdf("sphere", pts - 0.25, radius=0.15)), grid(primitive_sdf("sphere", pts + 0.25, radius=0.15))
    )
    grids = torch.cat([torus, ball, arc, two])
    assert piece_counts(grids).tolist() == [1, 1, 1, 2]
    assert surface_genus(grids).tolist() == [1, 0, 0, 0]
    assert surface_genus(-torch.ones(1, 1, 8, 8, 8)).tolist() == [0]
    genus = [SHAPE_GENUS.get(k, 0) for k in ("sphere", "torus")]
    labels = torch.tensor([1, 0, 1, 0])  # torus, sphere, torus (the arc), sphere (in two pieces)
    figs = topology_figures(grids, labels, genus, predicted=torch.tensor([1, 1, 1, 0]))
    assert figs["topology_fraction"] == 0.5  # the torus and the ball
    assert figs["strict_accuracy"] == 0.25  # the ball was judged a torus: only the torus counts


def test_shape_topology_benchmark_scores_the_kind_it_is_asked_for() -> None:
    """benchmarks/shape_topology.py's per-kind figures on a stand-in pipeline that returns two
    rings and two arcs for "torus": half have the hole, and the classifier's verdicts are kept."""
    from types import SimpleNamespace

    from benchmarks.shape_topology import kind_figures
    from modalities.voxel.data import SHAPES, primitive_sdf

    r = 16
    t = (torch.arange(r, dtype=torch.float32) + 0.5) / r - 0.5
    pts = torch.stack(torch.meshgrid(t, t, t, indexing="ij"), -1)
    torus = (-primitive_sdf("torus", pts, major_radius=0.3, minor_radius=0.1) * r / 2.0).clamp(-1, 1)[None, None]
    arc = torus.clone()
    arc[..., r // 2 - 1 : r // 2 + 1, :, : r // 2] = -1.0
    calls = []

    def sample(n, labels, seed, **options):
        calls.append((n, labels.tolist(), seed, options))
        return torch.cat([torus, arc, torus, arc]), labels

    pipe = SimpleNamespace(sample=sample, info=SimpleNamespace(class_names=list(SHAPES)))
    torus_label = SHAPES.index("torus")
    classify = lambda x: torch.tensor([torus_label, torus_label, 0, torus_label])  # noqa: E731
    figs = kind_figures(pipe, classify, torus_label, 4, 7, {"steps": 3})
    assert calls == [(4, [torus_label] * 4, 7, {"steps": 3})]
    assert figs == {"kind": 0.75, "one_piece": 1.0, "topology": 0.5, "strict": 0.25}


def test_eval_of_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["eval", str(tmp_path / "missing")]) == 2
    assert "multidiff: error:" in capsys.readouterr().err
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(_config("image", tmp_path / "run")))
    assert cli.main(["train", str(cfg)]) == 0
    assert cli.main(["eval", str(tmp_path / "run"), "--num", "0"]) == 2
    assert cli.main(["eval", str(tmp_path / "run"), "--judge-option", "colour=red"]) == 2
    assert "takes the option epochs, not colour" in capsys.readouterr().err
    assert cli.main(["eval", str(tmp_path / "run"), "--composed"]) == 2
    assert "--composed: prompts of parts are for a text-conditioned run" in capsys.readouterr().err


def test_an_unlabelled_run_has_no_generic_judge(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from helpers import write_images

    write_images(tmp_path / "imgs", {"": 20}, size=(8, 8))
    d = tiny_run(tmp_path / "run", train={"steps": 1})
    d["data"] = {"source": "folder", "path": str(tmp_path / "imgs"), "size": 8}
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(d))
    assert cli.main(["train", str(cfg)]) == 0
    assert cli.main(["eval", str(tmp_path / "run"), "--num", "2"]) == 2
    assert "needs class-labelled data" in capsys.readouterr().err
