"""Small run configs and data for the engine tests (kept tiny: each step takes milliseconds)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np

TINY_MODEL = {
    "channels": 8,
    "channel_mult": [1, 2],
    "num_res_blocks": 1,
    "attention_resolutions": [4],
    "head_channels": 8,
}


def tiny_run(out_dir: Path, **sections: Any) -> dict[str, Any]:
    """A digits run at 8x8 with an 8-channel UNet; ``sections`` are merged into the defaults."""
    d: dict[str, Any] = {
        "modality": "image",
        "out_dir": str(out_dir),
        "data": {"source": "digits", "size": 8, "limit": 256},
        "model": dict(TINY_MODEL),
        "diffusion": {"schedule": {"kind": "linear", "num_steps": 100}, "parameterization": "eps"},
        "train": {
            "steps": 4,
            "batch_size": 16,
            "lr": 1e-3,
            "log_every": 1,
            "checkpoint_every": 0,
            "progress": False,
            "device": "cpu",
        },
        "sample": {"steps": 3, "num_samples": 10, "sampler": "ddim"},
    }
    out = copy.deepcopy(d)
    for k, v in sections.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k].update(v)
        else:
            out[k] = v
    return out


def write_images(folder: Path, classes: dict[str, int], size: tuple[int, int] = (12, 10), seed: int = 0) -> list[Path]:
    """PNG and JPEG files in class sub-folders (``{}`` for top-level files); returns their paths."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for name, count in classes.items():
        sub = folder / name if name else folder
        sub.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            arr = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            p = sub / f"img{i}.{'png' if i % 2 == 0 else 'jpg'}"
            Image.fromarray(arr).save(p)
            paths.append(p)
    return paths


def train(d: dict[str, Any], resume: bool | str = False) -> Any:
    """Train the run config ``d`` (a dict) to its ``train.steps``, resuming if asked; the Trainer."""
    from multidiff import config as C
    from multidiff.train import Trainer

    tr = Trainer(C.resolve_config(d), resume=resume)
    tr.fit()
    return tr


def checkpoint_weights(run: Path) -> tuple[dict, dict]:
    """The model and EMA weights of a run's newest checkpoint, read straight from its safetensors."""
    from safetensors.torch import load_file

    from multidiff.checkpoint import list_checkpoints

    ck = list_checkpoints(run)[-1]
    return load_file(str(ck / "model.safetensors")), load_file(str(ck / "ema.safetensors"))
