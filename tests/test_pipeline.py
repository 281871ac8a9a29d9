"""The library API: ``Pipeline`` methods in data units, ``DataSpace``, ``SampleConfig`` overrides, and
the README's Python block run as written against a tiny run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from multidiff import cli
from multidiff.config import ConfigError, SampleConfig
from multidiff.denoiser import DataSpace
from multidiff.pipeline import load_pipeline

ROOT = Path(__file__).resolve().parents[1]
from tests.test_readme import TINY, TINY_TRAIN  # noqa: E402


def _tiny(config: str, out: Path, *extra: str) -> Path:
    modality = yaml.safe_load((ROOT / "configs" / config).read_text())["modality"]
    sets = [x for s in TINY[modality] + TINY_TRAIN + list(extra) for x in ("--set", s)]
    assert cli.main(["train", str(ROOT / "configs" / config), "--out-dir", str(out), *sets]) == 0
    return out


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny("image_digits.yaml", tmp_path_factory.mktemp("pipe") / "runs" / "image_digits")


@pytest.fixture(scope="module")
def tones_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # data_scale 5: the denoiser's space differs from data units
    return _tiny("audio_tones.yaml", tmp_path_factory.mktemp("pipe") / "runs" / "audio_tones", "diffusion.data_scale=5")


def test_data_space_maps_data_units_to_the_denoisers_space_and_back() -> None:
    x = torch.randn(3, 2, 5)
    sp = DataSpace(4.0, 0.5)
    torch.testing.assert_close(sp.encode(x), (x - 0.5) * 4.0)
    torch.testing.assert_close(sp.decode(sp.encode(x)), x)
    assert DataSpace().encode(x) is x  # the identity does no arithmetic
    with pytest.raises(ValueError, match="data_scale must be positive"):
        DataSpace(0.0)


def test_sample_overrides_are_validated_in_one_place() -> None:
    s = SampleConfig()
    assert s.with_overrides(steps=None) is s  # a flag not given changes nothing
    assert s.with_overrides(steps=7, guidance_scale=2).steps == 7
    with pytest.raises(ConfigError, match="unknown sample option stepz; expected one of: .*steps"):
        s.with_overrides(stepz=7)
    with pytest.raises(ConfigError, match="sample.steps: Input should be greater than or equal to 1"):
        s.with_overrides(steps=0)


def test_the_readmes_python_block_runs_as_written(digits_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"### The library: one Pipeline.*?```python\n(.*?)```", text, re.S)
    assert block, "README.md lost its Pipeline example"
    monkeypatch.chdir(digits_run.parent.parent)
    monkeypatch.setenv("MULTIDIFF_CACHE", str(digits_run.parent.parent / "cache"))
    ns: dict = {}
    exec(compile(block[1], "README.md", "exec"), ns)  # noqa: S102
    pipe, x, seven = ns["pipe"], ns["x"], ns["seven"]
    shape = pipe.info.shape
    assert x.shape == (16, *shape) and ns["labels"].tolist() == [7] * 16
    assert seven.shape == (1, *shape) and (digits_run.parent.parent / "seven.png").is_file()
    filled = ns["filled"]
    assert filled.shape == (4, *shape)
    top = shape[1] // 2
    assert torch.equal(filled[:, :, :top], seven[:, :, :top].expand(4, -1, -1, -1))  # exactly, in data units
    assert not torch.equal(filled[:, :, top:], seven[:, :, top:].expand(4, -1, -1, -1))
    assert ns["edited"].shape == (4, *shape) and ns["frames"].shape == (8, *shape)
    inv = ns["inv"]
    assert inv.noise.shape == (1, *shape) and inv.reconstruction.shape == (1, *shape)
    assert inv.error == pytest.approx(float((inv.reconstruction - seven).pow(2).mean().sqrt()), rel=1e-5)
    out, mask = ns["out"], ns["mask"]
    assert out.shape == (1, *shape) and mask.dtype == torch.bool
    assert torch.equal(out[~mask.expand_as(out)], seven[~mask.expand_as(out)])  # DiffEdit keeps the rest
    figures = ns["report"]["figures"]
    assert figures["samples"] == 20 * pipe.info.num_classes and 0 <= figures["class_accuracy"] <= 1
    assert ns["opts"].sampler == "unipc" and ns["opts"].steps == 8


def test_edits_take_and_return_data_units_when_the_space_is_scaled(tones_run: Path) -> None:
    """With ``data_scale`` 5 the pipeline encodes inputs and decodes outputs itself: known samples
    come back bit for bit, and an edit at strength 0 is the input in data units (not 5 times it)."""
    pipe = load_pipeline(tones_run, device="cpu")
    assert pipe.space.scale == 5.0
    x = pipe.training_examples(2, seed=1)
    assert float(x.abs().max()) <= 1.0
    mask = pipe.mask(region="0.5:")
    y = pipe.inpaint(x, mask, n=3, method="replace", steps=3)
    assert y.shape == (6, *pipe.info.shape)
    keep = ~mask.expand_as(y)
    assert torch.equal(y[keep], x.repeat_interleave(3, dim=0)[keep])
    same = pipe.sdedit(x, 0.0, steps=3)
    torch.testing.assert_close(same, x)
    s, _ = pipe.sample(4, steps=3, seed=2)
    z, _ = pipe.sample(4, sample=pipe.options(steps=3, seed=2))
    assert torch.equal(s, z)  # keyword overrides and a SampleConfig are the same thing


def test_labels_by_name_or_index_and_clear_errors(digits_run: Path) -> None:
    pipe = load_pipeline(digits_run, device="cpu")
    assert pipe.label("3") == 3 and pipe.label(3) == 3 and pipe.label(None) is None
    with pytest.raises(ValueError, match="--class must be one of"):
        pipe.label("eleven", "--class")
    with pytest.raises(ValueError, match="exactly one of a mask or a region"):
        pipe.mask()
    with pytest.raises(ValueError, match="sample.options.etta: unknown option 'etta'"):
        pipe.sample(2, options={"etta": 1})
    with pytest.raises(ValueError, match="negative class must be one of"):
        pipe.sample(2, negative_class="nope", guidance_scale=2, steps=2)


def test_clip_denoised_clamps_every_estimate_in_data_units() -> None:
    """``sample.clip_denoised`` (one field and its one use, in the guided denoiser every sampling path
    shares): every estimate the sampler sees lies in [-V, V] data units, i.e. [-sV, sV] in a space
    scaled by s; without it the mixture's estimates reach beyond."""
    from multidiff.modality import DataInfo
    from multidiff.pipeline import generate
    from multidiff.testing import GaussianMixture

    gm = GaussianMixture(torch.tensor([[-0.8], [0.8]]) * 2.0, 0.3 * 2.0)  # data at +-0.8, space scaled by 2
    den = gm.denoiser()
    den.space = DataSpace(2.0)
    seen: list[torch.Tensor] = []
    kw = dict(
        n=64, sampler="euler", steps=8, sigma_min=0.02, sigma_max=20.0, callback=lambda d: seen.append(d["denoised"])
    )
    # the last step jumps to the (clamped) estimate, so the samples lie in range too
    x, _ = generate(den, DataInfo((1,)), clip_denoised=0.5, options={"final_step": "jump"}, **kw)
    assert max(float(d.abs().max()) for d in seen) <= 1.0 + 1e-6  # 0.5 data units = 1.0 in the scaled space
    assert float(x.abs().max()) <= 0.5 + 1e-6
    seen.clear()
    generate(den, DataInfo((1,)), **kw)
    assert max(float(d.abs().max()) for d in seen) > 1.2
    from multidiff.cli import build_parser

    args = build_parser().parse_args(["sample", "RUN", "--clip-denoised", "0.5"])
    assert args.sample__clip_denoised == 0.5  # the flag exists because the field does
