"""The engine knows no modality: toy adapters over 1D and 3D data train, checkpoint, resume and sample."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest
import torch

from multidiff import config as C
from multidiff import registry
from multidiff.modality import DataInfo, Modality, StrictModel, TensorDataset
from multidiff.nn import UNet
from multidiff.pipeline import load_pipeline
from multidiff.train import Trainer


class ToyData(StrictModel):
    shape: list[int]


class ToyModel(StrictModel):
    channels: int = 8


class Toy(Modality[ToyModel, ToyData]):
    """Random blobs of any rank; samples are saved as tensors."""

    name: ClassVar[str] = "toy"
    ModelConfig: ClassVar[type[StrictModel]] = ToyModel
    DataConfig: ClassVar[type[StrictModel]] = ToyData

    def build_dataset(self, data: ToyData):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64, *data.shape, generator=g).clamp(-1, 1)
        return TensorDataset(x, torch.arange(64) % 3), DataInfo(tuple(data.shape), 3)

    def build_network(self, model: ToyModel, info: DataInfo, *, noise_scale: float, learned_variance: bool = False):
        dims = len(info.shape) - 1
        return UNet(
            dims,
            info.shape[0],
            channels=model.channels,
            channel_mult=(1, 2),
            num_res_blocks=1,
            attention_levels=(1,),
            head_channels=8,
            num_classes=info.num_classes,
            noise_scale=noise_scale,
        )

    def save_samples(self, x, path: Path, info: DataInfo, *, labels=None) -> list[Path]:
        p = Path(path).with_suffix(".pt")
        p.parent.mkdir(parents=True, exist_ok=True)
        torch.save(x, p)
        return [p]


@pytest.mark.parametrize("shape", [[2, 24], [1, 6, 5, 4]], ids=["1d", "3d"])
def test_toy_modality_trains_resumes_and_samples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shape: list[int]
) -> None:
    monkeypatch.setattr(registry, "load_modality", lambda name: Toy)
    d = {
        "modality": "toy",
        "out_dir": str(tmp_path / "run"),
        "data": {"shape": shape},
        "diffusion": {
            "schedule": {"kind": "edm"},
            "parameterization": "edm",
            "weighting": "edm",
            "noise_sampling": "log_normal",
        },
        "train": {
            "steps": 2,
            "batch_size": 8,
            "log_every": 1,
            "checkpoint_every": 0,
            "progress": False,
            "sample_every": 2,
        },
        "sample": {"steps": 3, "num_samples": 6, "sampler": "heun", "guidance_scale": 2.0},
    }
    Trainer(C.resolve_config(d)).fit()
    assert torch.load(tmp_path / "run" / "samples" / "step_00000002.pt").shape == (6, *shape)
    d["train"]["steps"] = 3
    assert Trainer(C.resolve_config(d), resume=True).fit().step == 3
    x, labels = load_pipeline(str(tmp_path / "run"), device="cpu").sample(4, steps=2)
    assert x.shape == (4, *shape) and torch.isfinite(x).all() and labels.tolist() == [0, 1, 2, 0]


def test_an_adapter_missing_a_method_cannot_be_built() -> None:
    class Half(Modality):
        def build_dataset(self, data):  # no network, no output
            raise AssertionError

    with pytest.raises(TypeError, match="abstract"):
        Half()
