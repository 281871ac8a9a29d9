"""Does training learn? Short runs on built-in data, judged by something independent of the model:
a classifier trained on the real digits or shapes, the fundamental frequency of the tones.

Marked slow: each trains a real model for a minute or two on a CPU. The full-length run and its
higher bar live in ``benchmarks/quality.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from multidiff.config import load_config, resolve_config
from multidiff.evaluate import classifier_judge, score_conditional, split_holdout
from multidiff.metrics import class_accuracy, train_classifier
from multidiff.pipeline import load_pipeline
from multidiff.train import Trainer

pytestmark = pytest.mark.slow

TONES_STEPS = 600
TONES_BAR = 0.5  # chance is 1/8
# chance is 1/6; the shipped config (flow, self-conditioning, bf16, 2400 steps) scores 0.90-0.95 kind
# accuracy at guidance 2 with 99-100% of its grids in one piece (multidiff eval, four seeds); these
# 500 steps with EMA 0.995 gave 0.625 (n = 120) and 0.875 (n = 48)
SHAPES_BAR = 0.3
SHAPES_ONE_PIECE_BAR = 0.6
VOXEL_STEPS = 500
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_class_conditional_digits_are_recognised(tmp_path: Path) -> None:
    """800 steps at 8x8 (the digits' native resolution): guided samples must be recognised as the
    class asked for far above chance (10%); the full 16x16 run must reach 90% (benchmarks/quality.py)."""
    cfg = resolve_config(
        {
            "modality": "image",
            "out_dir": str(tmp_path / "run"),
            "data": {"source": "digits", "size": 8},
            "model": {"channels": 32, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [4]},
            "diffusion": {
                "schedule": {"kind": "cosine_discrete"},
                "parameterization": "v",
                "weighting": "snr_plus_one",
            },
            "train": {
                "steps": 800,
                "batch_size": 64,
                "lr": 1e-3,
                "warmup_steps": 50,
                "lr_schedule": "cosine",
                "ema_decay": 0.999,
                "log_every": 100,
                "checkpoint_every": 0,
                "progress": False,
            },
            "sample": {"sampler": "dpmpp_2m", "steps": 15},
        }
    )
    ds, _ = cfg.adapter.build_dataset(cfg.data)
    tr, ho = split_holdout(len(ds), 0.2, seed=0)
    clf = train_classifier(ds.x[tr], ds.labels[tr], epochs=8, seed=0)
    assert class_accuracy(clf, ds.x[ho], ds.labels[ho]) > 0.9  # the judge itself is competent

    result = Trainer(cfg).fit()
    assert result.losses[-1][1] < 0.5 * result.losses[0][1]
    pipe = load_pipeline(str(tmp_path / "run"), device="cpu")
    guided = score_conditional(pipe, classifier_judge(clf), ds.x[ho], per_class=30, guidance_scale=2.0)
    assert guided.accuracy > 0.75, guided
    assert min(guided.per_class) > 0.3, guided  # no digit is missing
    # Samples are closer to real digits than noise is, in the judge's feature space.
    noise = score_conditional(pipe, classifier_judge(clf), ds.x[ho], per_class=30, guidance_scale=2.0, steps=1)
    assert guided.frechet < noise.frechet

    # Inpainting (issue 6): the bottom half of held-out digits regenerated for their own class
    # keeps the top half exactly and is still recognised as that digit.
    x, y = ds.x[ho][:60], ds.labels[ho][:60]
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[:, 4:] = True
    out = pipe.inpaint(x, mask, label=y, method="replace", guidance_scale=2.0, steps=15, seed=0)
    assert torch.equal(out[:, :, :4], x[:, :, :4])
    assert class_accuracy(clf, out, y) > 0.7


def _short_train(steps: int, batch: int) -> dict:
    return {
        "steps": steps,
        "batch_size": batch,
        "lr": 1e-3,
        "warmup_steps": 50,
        "lr_schedule": "cosine",
        "ema_decay": 0.995,
        "log_every": 50,
        "checkpoint_every": 0,
        "progress": False,
    }


V_PRED = {"schedule": {"kind": "cosine_discrete"}, "parameterization": "v", "weighting": "snr_plus_one"}


def test_class_conditional_tones_have_their_pitch(tmp_path: Path) -> None:
    """600 steps of configs/audio_tones.yaml's model (2000 there): guided clips must have the pitch
    asked for, by the spectrum, far above chance (12.5%); the full run must reach 80%."""
    from modalities.audio.metrics import classify_pitch, mel_features
    from multidiff.evaluate import Judge

    cfg = resolve_config(
        {
            "modality": "audio",
            "out_dir": str(tmp_path / "run"),
            "data": {"source": "tones", "sample_rate": 8000, "length": 2048, "random_polarity": True},
            "model": {"preset": "tiny"},
            "diffusion": {**V_PRED, "data_scale": 5.0},
            "train": _short_train(TONES_STEPS, 32),
            "sample": {"sampler": "dpmpp_2m", "steps": 20},
        }
    )
    ds, info = cfg.adapter.build_dataset(cfg.data)
    pitches, sr = info.extra["pitches_hz"], info.extra["sample_rate"]
    judge = Judge(lambda v: classify_pitch(v, pitches, sr), lambda v: mel_features(v, sr))
    _, ho = split_holdout(len(ds), 0.2, seed=0)
    assert float((judge.classify(ds.x[ho]) == ds.labels[ho]).float().mean()) > 0.99  # the judge is right

    Trainer(cfg).fit()
    pipe = load_pipeline(str(tmp_path / "run"), device="cpu")
    guided = score_conditional(pipe, judge, ds.x[ho], per_class=20, guidance_scale=2.0)
    assert guided.accuracy > TONES_BAR, guided
    noise = score_conditional(pipe, judge, ds.x[ho], per_class=20, guidance_scale=2.0, steps=1)
    assert guided.frechet < noise.frechet

    # Continuation (issue 6): the first half of held-out clips kept exactly, the second half
    # generated unconditionally: the model must continue the pitch it hears.
    x, y = ds.x[ho][:48], ds.labels[ho][:48]
    half = x.shape[-1] // 2
    mask = torch.zeros(1, x.shape[-1], dtype=torch.bool)
    mask[:, half:] = True
    out = pipe.inpaint(x, mask, method="replace", guidance_scale=1.0, steps=20, seed=0)
    assert torch.equal(out[..., :half], x[..., :half])
    same_pitch = (judge.classify(out[..., half:]) == y).float().mean().item()
    assert same_pitch > 0.5, same_pitch  # chance is 1/8


def test_class_conditional_shapes_are_recognised(tmp_path: Path) -> None:
    """A shorter run of configs/voxel_shapes.yaml as shipped (flow matching, its net, batch and
    learning rate; fewer steps and a shorter EMA): guided shapes must be recognised as the kind
    asked for by a 3D classifier trained on shapes the model never sees, far above chance (1/6),
    and most sampled grids must be one piece before any piece is dropped."""
    from modalities.voxel.data import shapes
    from modalities.voxel.judge import piece_counts
    from modalities.voxel.metrics import random_cube_symmetry
    from multidiff._util import native_bf16

    sets = [f"out_dir={tmp_path / 'run'}", f"train.steps={VOXEL_STEPS}", "train.ema_decay=0.995"]
    sets += ["train.checkpoint_every=0", "train.progress=false", "train.log_every=50"]
    if not native_bf16("cpu"):  # the config's bf16 would be emulated here: many times slower
        sets.append("train.precision=fp32")
    cfg = load_config(CONFIGS / "voxel_shapes.yaml", sets)
    assert cfg.run.diffusion.parameterization == "flow" and cfg.model.self_condition  # the bars' recipe
    ds, _ = cfg.adapter.build_dataset(cfg.data)
    _, ho = split_holdout(len(ds), 0.2, seed=0)
    other, _ = shapes(16, per_class=300, representation="sdf", truncation=2.0, seed=1)  # shapes the model never sees
    clf = train_classifier(other.x, other.labels, widths=(16, 32, 64), epochs=8, augment=random_cube_symmetry)
    assert class_accuracy(clf, ds.x[ho], ds.labels[ho]) > 0.85  # the judge itself is competent

    Trainer(cfg).fit()
    pipe = load_pipeline(str(tmp_path / "run"), device="cpu")
    guided = score_conditional(pipe, classifier_judge(clf), ds.x[ho], per_class=20, guidance_scale=2.0)
    assert guided.accuracy > SHAPES_BAR, guided
    x, _ = pipe.sample(48, guidance_scale=2.0, seed=5)
    one_piece = (piece_counts(x) == 1).float().mean().item()
    print(f"shapes after {VOXEL_STEPS} steps: accuracy {guided.accuracy:.3f} at guidance 2, one piece {one_piece:.3f}")
    assert one_piece >= SHAPES_ONE_PIECE_BAR, one_piece
