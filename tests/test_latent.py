"""Latent diffusion (issue 22, second half): a diffusion run on the latent grid of an autoencoder
run, through :class:`multidiff.latent.LatentSpace`, at ranks 1 to 3: the scale fit, the cache, the
refusals naming the autoencoder, exact inpainting in data space, every sampler and edit, exact
resume and the command line."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from helpers import checkpoint_weights, train
from torch import nn

from multidiff import cli
from multidiff import config as C
from multidiff import latent as L
from multidiff.autoencoder import DiagonalGaussian
from multidiff.checkpoint import find_checkpoint
from multidiff.pipeline import load_pipeline
from multidiff.samplers import available_samplers
from multidiff.train import Trainer, _MetricsLog

TRAIN = {"steps": 1, "batch_size": 8, "lr": 2e-3, "log_every": 1, "checkpoint_every": 0, "progress": False}
TRAIN["device"] = "cpu"
DATA = {
    "audio": {"source": "tones", "sample_rate": 8000, "length": 256, "per_class": 3},
    "image": {"source": "digits", "size": 8, "limit": 48},
    "voxel": {"source": "shapes", "resolution": 8, "per_class": 3, "representation": "sdf", "truncation": 2.0},
}
AE = {"channels": 4, "channel_mult": [1, 2], "head_channels": 8, "latent_channels": 2}
# a small network per rank for a latent grid of 64 frames, 4x4 or 4^3
MODEL = {
    "audio": {"channels": 8, "channel_mult": [1, 2], "factor": 2, "attention_levels": []},
    "image": {"channels": 8, "channel_mult": [1, 2], "attention_resolutions": []},
    "voxel": {"patch_size": 1, "channels": 8, "channel_mult": [1, 2], "attention_levels": []},
}
MODALITIES = ("audio", "image", "voxel")
DIMS = {"audio": 1, "image": 2, "voxel": 3}


def _ae(modality: str, out: Path, seed: int = 0) -> dict:
    train_ = {**TRAIN, "seed": seed}
    d = {"modality": modality, "task": "autoencoder", "out_dir": str(out), "data": DATA[modality], "train": train_}
    ae = {**AE, "patch_size": 1} if modality == "voxel" else AE  # 8^3 -> a 4^3 latent
    return json.loads(json.dumps({**d, "autoencoder": ae}))


def _latent(modality: str, out: Path, ae: Path, **latent: object) -> dict:
    d = {
        "modality": modality,
        "out_dir": str(out),
        "data": DATA[modality],
        "latent": {"autoencoder": str(ae), **latent},
        "model": MODEL[modality],
        "diffusion": {"schedule": {"kind": "linear", "num_steps": 100}, "parameterization": "eps"},
        "train": {**TRAIN, "steps": 2},
        "sample": {"steps": 2, "num_samples": 2, "sampler": "ddim"},
    }
    return json.loads(json.dumps(d))


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MULTIDIFF_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Per modality a tiny autoencoder run (one step) and a tiny latent run on it (two steps)."""
    root = tmp_path_factory.mktemp("latent_runs")
    mp = pytest.MonkeyPatch()
    mp.setenv("MULTIDIFF_CACHE", str(root / "cache"))
    out = {}
    try:
        for m in MODALITIES:
            train(_ae(m, root / f"{m}_ae"))
            train(_latent(m, root / f"{m}_latent", root / f"{m}_ae"))
            out[m] = (root / f"{m}_ae", root / f"{m}_latent")
    finally:
        mp.undo()
    return out


class _Encodes:
    """Counts the examples :func:`multidiff.latent.encode_posterior` encodes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.examples = 0
        real = L.encode_posterior

        def counted(ae, x, batch_size=64):
            self.examples += x.shape[0]
            return real(ae, x, batch_size)

        monkeypatch.setattr(L, "encode_posterior", counted)


# --- the scale fit ---------------------------------------------------------------------------------


class _StubAE(nn.Module):
    """A stand-in autoencoder whose latents are ``N(mu, s^2)``: the first channel of the data
    (standard normal) times ``s`` plus ``mu``, at half the resolution; posterior std ``b``."""

    def __init__(self, mu: float, s: float, b: float) -> None:
        super().__init__()
        self.mu, self.s, self.b = mu, s, b
        self.w = nn.Parameter(torch.ones(()))
        self.multiple = (2, 2)

    def latent_shape(self, shape):
        return (1, shape[1] // 2, shape[2] // 2)

    def encode(self, x):
        mean = self.mu + self.s * x[:, :1, ::2, ::2] * self.w
        return DiagonalGaussian(mean, torch.full_like(mean, 2 * math.log(self.b)))

    def decode(self, z, size=None):
        return z.repeat_interleave(2, -1).repeat_interleave(2, -2)


def test_the_scale_fit_is_one_over_the_std_of_the_latents_and_the_shift_their_mean(tmp_path: Path) -> None:
    mu, s, b = 1.5, 0.25, 0.1
    x = torch.randn(2000, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    mean, logvar, _ = L.encode_cached(_StubAE(mu, s, b), x, weights="stub", cache_dir=tmp_path)
    scale, shift = L.fit_scale_shift(mean, scale="auto", shift="auto")
    assert scale == pytest.approx(1 / s, rel=0.01) and shift == pytest.approx(mu, abs=0.01)
    # LDM's default: shift 0, the std still about the mean
    assert L.fit_scale_shift(mean) == (pytest.approx(1 / s, rel=0.01), 0.0)
    # posterior samples: var = var(mean) + E[posterior var]
    scale_s, _ = L.fit_scale_shift(mean, logvar)
    assert scale_s == pytest.approx(1 / math.sqrt(s**2 + b**2), rel=0.01)
    # and what the fitted space makes of the latents: zero mean, unit std
    space = L.LatentSpace(_StubAE(mu, s, b), (1, 8, 8), scale, shift)
    z = space.encode(x)
    assert float(z.mean()) == pytest.approx(0, abs=1e-6) and float(z.std()) == pytest.approx(1, rel=1e-3)
    assert L.fit_scale_shift(mean, scale=2.0, shift=0.5) == (2.0, 0.5)  # numbers as given


# --- refusals -------------------------------------------------------------------------------------------


def test_a_latent_checkpoint_refuses_to_load_without_its_autoencoder(
    runs: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    ae, lat = runs["image"]
    ae2, lat2 = tmp_path / "ae", tmp_path / "lat"
    shutil.copytree(ae, ae2)
    d = _latent("image", lat2, ae2)
    train(d)
    assert load_pipeline(lat2, device="cpu").space.shape == (2, 4, 4)
    shutil.move(str(ae2), str(tmp_path / "moved"))
    with pytest.raises(ValueError, match=f"needs its autoencoder.*{ae2}.*does not exist"):
        load_pipeline(lat2, device="cpu")
    # told where it went, it loads
    assert load_pipeline(lat2, device="cpu", autoencoder=tmp_path / "moved").space.shape == (2, 4, 4)
    # another autoencoder (other weights) in its place is refused, naming the path
    train(_ae("image", ae2, seed=1))
    with pytest.raises(ValueError, match=f"{ae2}.*not the one this latent model was trained with"):
        load_pipeline(lat2, device="cpu")


def test_a_missing_or_mismatched_autoencoder_fails_before_any_work(
    runs: dict[str, tuple[Path, Path]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    enc = _Encodes(monkeypatch)
    ae_image, _ = runs["image"]
    missing = tmp_path / "no_such_ae"
    with pytest.raises(ValueError, match=f"latent.autoencoder.*{missing}.*does not exist"):
        Trainer(C.resolve_config(_latent("image", tmp_path / "a", missing)))
    # an autoencoder of other data shape (16x16 digits against one of 8x8)
    d = _latent("image", tmp_path / "b", ae_image)
    d["data"]["size"] = 16
    with pytest.raises(ValueError, match=rf"latent.autoencoder.*{ae_image}.*shape \(1, 8, 8\), not \(1, 16, 16\)"):
        Trainer(C.resolve_config(d))
    # an autoencoder of another modality
    with pytest.raises(ValueError, match=f"latent.autoencoder.*{ae_image}.*of image data, not of audio data"):
        Trainer(C.resolve_config(_latent("audio", tmp_path / "c", ae_image)))
    # a diffusion run is not an autoencoder
    with pytest.raises(ValueError, match="not an autoencoder"):
        Trainer(C.resolve_config(_latent("image", tmp_path / "d", runs["image"][1])))
    assert enc.examples == 0 and not any((tmp_path / n).exists() for n in "abcd")


def test_latent_config_errors_name_the_key(tmp_path: Path) -> None:
    d = _latent("image", tmp_path / "r", tmp_path / "ae")
    d["data"]["random_flip"] = True
    with pytest.raises(C.ConfigError, match="data.random_flip: a latent run trains on the data set encoded once"):
        C.resolve_config(d)
    d = _latent("audio", tmp_path / "r", tmp_path / "ae")
    d["data"]["random_polarity"] = True
    with pytest.raises(C.ConfigError, match="data.random_polarity"):
        C.resolve_config(d)
    d = _latent("image", tmp_path / "r", tmp_path / "ae")
    d["diffusion"]["data_scale"] = 2.0
    with pytest.raises(C.ConfigError, match="diffusion.data_scale.*latent.scale"):
        C.resolve_config(d)
    d = _latent("image", tmp_path / "r", tmp_path / "ae", scale=-1.0)
    with pytest.raises(C.ConfigError, match="latent.scale"):
        C.resolve_config(d)
    d = _latent("image", tmp_path / "r", tmp_path / "ae", posterior="mode")
    with pytest.raises(C.ConfigError, match="latent.posterior"):
        C.resolve_config(d)
    ae = _ae("image", tmp_path / "ae")
    ae["latent"] = {"autoencoder": "x"}
    with pytest.raises(C.ConfigError, match="latent.*belongs to diffusion runs"):
        C.resolve_config(ae)
    # a pixel run's saved config has no latent key, a latent run's resolves to the same section
    cfg = C.resolve_config(_latent("image", tmp_path / "r", tmp_path / "ae", shift="auto"))
    assert C.resolve_config(cfg.to_json()).run.latent == cfg.run.latent
    assert "latent" not in C.resolve_config(_ae("image", tmp_path / "ae")).to_json()


# --- the cache ----------------------------------------------------------------------------------------


def test_the_data_set_is_encoded_once_per_autoencoder_and_a_corrupt_cache_again(
    runs: dict[str, tuple[Path, Path]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    enc = _Encodes(monkeypatch)
    ae, _ = runs["image"]
    d = _latent("image", tmp_path / "r", ae)
    first = Trainer(C.resolve_config(d))
    n = len(first.dataset)
    file = first.objective.latent.cache_file
    assert enc.examples == n == 48 and file.is_file() and file.parent == tmp_path / "cache" / "latents"
    second = Trainer(C.resolve_config(d))
    assert enc.examples == n  # nothing encoded the second time
    assert torch.equal(second.dataset.x, first.dataset.x)
    assert second.objective.latent.space.scale == first.objective.latent.space.scale
    # other weights: another file
    train(_ae("image", tmp_path / "ae2", seed=1))
    other = Trainer(C.resolve_config(_latent("image", tmp_path / "r2", tmp_path / "ae2")))
    assert enc.examples == 2 * n and other.objective.latent.cache_file != file
    # a corrupt file is encoded again (and rewritten)
    file.write_bytes(b"not safetensors" * 10)
    again = Trainer(C.resolve_config(d))
    assert enc.examples == 3 * n and torch.equal(again.dataset.x, first.dataset.x)
    Trainer(C.resolve_config(d))
    assert enc.examples == 3 * n


# --- sampling and editing at every rank -------------------------------------------------------------


@pytest.mark.parametrize("modality", MODALITIES)
def test_latent_pipelines_sample_and_edit_in_data_units(runs: dict[str, tuple[Path, Path]], modality: str) -> None:
    ae, lat = runs[modality]
    pipe = load_pipeline(lat, device="cpu")
    shape = pipe.info.shape
    assert pipe.space.data_shape == shape and pipe.denoiser.net is not None
    assert pipe.checkpoint.meta["latent"]["latent_shape"] == list(pipe.space.shape) != list(shape)
    x, labels = pipe.sample(3, steps=2, guidance_scale=2.0)
    assert x.shape == (3, *shape) and torch.isfinite(x).all()
    ex = pipe.training_examples(2)
    assert pipe.sdedit(ex, 0.5, steps=2, n=2).shape == (4, *shape)
    assert pipe.interpolate(ex[:1], ex[1:], 3, steps=2).shape == (3, *shape)
    inv = pipe.invert(ex[:1], steps=2)
    assert inv.reconstruction.shape == (1, *shape) and inv.noise.shape == (1, *pipe.space.shape)
    assert math.isfinite(inv.error)
    with pytest.raises(ValueError, match="clip_denoised"):
        pipe.sample(1, steps=2, clip_denoised=1.0)
    if modality == "image":  # classifier guidance differentiates through the decoder
        x, _ = pipe.sample(2, steps=2, classifier_scale=1.0)
        assert x.shape == (2, *shape) and torch.isfinite(x).all()


@pytest.mark.parametrize("method", ["repaint", "replace"])
@pytest.mark.parametrize("modality", MODALITIES)
def test_latent_inpainting_keeps_the_known_values_exactly(
    runs: dict[str, tuple[Path, Path]], modality: str, method: str
) -> None:
    pipe = load_pipeline(runs[modality][1], device="cpu")
    ex = pipe.training_examples(2)
    # an odd box: cells of the latent grid partly masked are regenerated
    region = ",".join(["0.3:0.7"] * DIMS[modality])
    mask = pipe.mask(region=region)
    out = pipe.inpaint(ex, mask, n=2, steps=2, method=method, jump_length=1, resample=2)
    assert out.shape == (4, *pipe.info.shape)
    known = ~torch.broadcast_to(mask, out.shape)
    given = ex.repeat_interleave(2, dim=0)
    assert torch.equal(out[known], given[known])  # bit-equal where known
    assert not torch.equal(out[~known], given[~known])  # and generated where not
    # the mask on the latent grid: a cell is kept only if every data element it covers is known
    m = torch.broadcast_to(mask, (1, *pipe.info.shape))
    cells = pipe.space.encode_mask(m)
    assert cells.shape == (1, *pipe.space.shape)
    assert pipe.space.decode_mask(cells).shape == (1, 1, *pipe.info.shape[1:])
    covered = pipe.space.decode_mask(cells)[0, 0]
    assert bool((covered | ~m[0, 0]).all())  # every generated data element lies in a generated cell
    assert not bool(covered.all())  # and some cells are kept


def test_latent_diffedit_returns_a_data_grid_mask_and_keeps_the_rest(runs: dict[str, tuple[Path, Path]]) -> None:
    pipe = load_pipeline(runs["image"][1], device="cpu")
    ex = pipe.training_examples(1)
    out, mask = pipe.diffedit(ex, label=3, steps=2, strength=0.5, threshold=0.3)
    assert out.shape == (1, *pipe.info.shape) and mask.shape == (1, 1, *pipe.info.shape[1:])
    keep = ~torch.broadcast_to(mask, out.shape)
    assert torch.equal(out[keep], ex[keep])


@pytest.mark.parametrize("modality", MODALITIES)
def test_every_sampler_runs_on_a_latent_model(runs: dict[str, tuple[Path, Path]], modality: str) -> None:
    pipe = load_pipeline(runs[modality][1], device="cpu")
    ran = []
    for name in available_samplers():
        if name == "ddpm_learned_variance":  # needs a network with learned variance (none here)
            with pytest.raises(ValueError, match="learned_variance"):
                pipe.sample(1, sampler=name, steps=2)
            continue
        x, _ = pipe.sample(2, sampler=name, steps=2)
        assert x.shape == (2, *pipe.info.shape) and torch.isfinite(x).all(), name
        ran.append(name)
    assert len(ran) == len(available_samplers()) - 1


# --- resume and the command line -----------------------------------------------------------------------


def test_a_latent_run_resumes_bit_exactly(runs: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    """With posterior samples drawn per step, label dropout and gradient accumulation."""
    ae, _ = runs["voxel"]

    def run(name: str, steps: int, seed: int = 0) -> dict:
        d = _latent("voxel", tmp_path / name, ae, posterior="sample", shift="auto")
        d["train"].update(steps=steps, grad_accum=2, warmup_steps=2, ema_decay=0.9, seed=seed, checkpoint_every=2)
        return d

    train(run("whole", 5))
    part = run("part", 3)
    train(part)
    part["train"]["steps"] = 5
    tr = train(part, resume=True)
    rows = [_MetricsLog.read(tmp_path / n / "metrics.csv") for n in ("whole", "part")]
    assert [(r["step"], r["loss"]) for r in rows[0]] == [(r["step"], r["loss"]) for r in rows[1]]
    (m1, e1), (m2, e2) = checkpoint_weights(tmp_path / "whole"), checkpoint_weights(tmp_path / "part")
    assert all(torch.equal(m1[k], m2[k]) for k in m1) and all(torch.equal(e1[k], e2[k]) for k in e1)
    metas = [find_checkpoint(tmp_path / n).meta["latent"] for n in ("whole", "part")]
    assert metas[0] == metas[1] and metas[0]["posterior"] == "sample"
    assert tr.objective.latent.space.shift == metas[0]["shift"] != 0.0
    train(run("other", 5, seed=1))
    m3, _ = checkpoint_weights(tmp_path / "other")
    assert not all(torch.equal(m1[k], m3[k]) for k in m1)
    # a pixel run does not resume a latent checkpoint
    pixel = run("part", 6)
    del pixel["latent"]
    with pytest.raises(ValueError, match="latent run"):
        Trainer(C.resolve_config(pixel), resume=True)


def test_train_an_autoencoder_then_a_latent_model_then_sample_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import soundfile as sf

    ae_cfg, lat_cfg = tmp_path / "ae.yaml", tmp_path / "latent.yaml"
    ae_cfg.write_text(yaml.safe_dump(_ae("audio", tmp_path / "runs" / "ae")))
    lat_cfg.write_text(yaml.safe_dump(_latent("audio", tmp_path / "runs" / "latent", tmp_path / "runs" / "ae")))
    assert cli.main(["train", str(ae_cfg)]) == 0
    assert cli.main(["train", str(lat_cfg)]) == 0
    said = capsys.readouterr().out
    assert "latent (2, 64) of audio" in said and "(1, 256)" in said and str(tmp_path / "runs" / "ae") in said
    out = tmp_path / "samples"
    assert cli.main(["sample", str(tmp_path / "runs" / "latent"), "-n", "3", "--steps", "2", "--out", str(out)]) == 0
    wavs = sorted(out.rglob("*.wav"))
    assert len(wavs) == 3
    for w in wavs:
        data, rate = sf.read(w)
        assert data.shape[0] == 256 and rate == 8000


SHIPPED = {  # latent config -> (its autoencoder config, small data for both)
    "image_digits_latent.yaml": ("image_digits_ae.yaml", ["data.size=16", "data.limit=40"]),
    "audio_tones_latent.yaml": ("audio_tones_ae.yaml", ["data.length=256", "data.per_class=2"]),
    "voxel_shapes_latent.yaml": ("voxel_shapes_ae.yaml", ["data.resolution=8", "data.per_class=2"]),
}


def _train_shipped_pair(
    config: str,
    ae_config: str,
    sets: list[str],
    tmp_path: Path,
    ae_sets: tuple[str, ...] = (),
    latent_sets: tuple[str, ...] = (),
) -> None:
    """A step of the shipped autoencoder config, then a step of the shipped latent config on its
    latents (``sets`` for both, ``ae_sets`` for the autoencoder only, ``latent_sets`` for the latent
    run only), the autoencoder named as shipped: its ``out_dir``; the two configs' data sections
    alike but for the autoencoder's data-space augmentation (``random_*``)."""
    root = Path(__file__).resolve().parents[1]
    sets = sets + ["train.steps=1", "train.batch_size=4", "train.progress=false", "train.device=cpu"]
    sets += ["train.sample_every=0", "train.checkpoint_every=0"]
    shipped, shipped_ae = C.load_config(root / "configs" / config), C.load_config(root / "configs" / ae_config)
    assert shipped.run.latent.autoencoder == shipped_ae.run.out_dir
    data, ae_data = shipped.data.model_dump(), shipped_ae.data.model_dump()
    assert {k: v for k, v in data.items() if not k.startswith("random_")} == {
        k: v for k, v in ae_data.items() if not k.startswith("random_")
    }
    ae, out = tmp_path / "ae", tmp_path / "latent"
    for cfg, run, extra in ((ae_config, ae, [*ae_sets]), (config, out, [f"latent.autoencoder={ae}", *latent_sets])):
        args = ["train", str(root / "configs" / cfg), "--out-dir", str(run)]
        assert cli.main(args + [x for s in sets + extra for x in ("--set", s)]) == 0
    meta = find_checkpoint(out).meta
    assert meta["task"] == "diffusion" and meta["latent"]["checkpoint"] == str(find_checkpoint(ae).path.resolve())
    assert math.isfinite(_MetricsLog.read(out / "metrics.csv")[-1]["loss"])


@pytest.mark.parametrize("config", sorted(SHIPPED))
def test_the_shipped_latent_configs_train_on_small_data(config: str, tmp_path: Path) -> None:
    """Each shipped latent config, its network as shipped, a step on the latents of its shipped
    autoencoder config (one step too) on a few small examples; the autoencoder named as shipped."""
    ae_config, data = SHIPPED[config]
    _train_shipped_pair(config, ae_config, data, tmp_path)


def _image_folder(root: Path) -> None:
    """8 RGB PNGs of two classes, of other sizes than the run's (resized and cropped)."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for c, name in enumerate(("red", "blue")):
        (root / name).mkdir(parents=True)
        for i in range(4):
            arr = torch.randint(0, 256, (20 + 2 * i, 24, 3), generator=g, dtype=torch.uint8)
            arr[..., 2 * c] = 230
            Image.fromarray(arr.numpy()).save(root / name / f"{i}.png")


def _audio_folder(root: Path) -> None:
    """8 short WAV recordings of two classes at 16 kHz (low and high sines with a little noise)."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    t = np.arange(1200) / 16000
    for c, name in enumerate(("low", "high")):
        (root / name).mkdir(parents=True)
        for i in range(4):
            wave = 0.3 * np.sin(2 * np.pi * (220 * (c + 1) + 20 * i) * t) + 0.01 * rng.standard_normal(len(t))
            sf.write(root / name / f"{i}.wav", wave.astype(np.float32), 16000)


def _mesh_folder(root: Path) -> None:
    """8 meshes of two classes as OBJ, PLY and STL files: boxes and spheres of several sizes."""
    import trimesh

    for name in ("box", "ball"):
        (root / name).mkdir(parents=True)
    for i in range(4):
        box = trimesh.creation.box((0.5 + 0.1 * i, 0.6, 0.4 + 0.1 * i))
        box.export(root / "box" / f"{i}.{('obj', 'ply', 'stl', 'obj')[i]}")
        ball = trimesh.creation.icosphere(2, radius=0.3 + 0.05 * i)
        ball.export(root / "ball" / f"{i}.{('stl', 'obj', 'ply', 'ply')[i]}")


# latent config for a GPU -> (its autoencoder config, a writer of a small folder, the data's size for a
# CPU step, the autoencoder's and the latent model's widths cut: depth, levels, factors, attention,
# losses and discriminator stay as shipped; 84M, 21M and 10M autoencoder and 36-54M latent parameters
# as shipped would write checkpoints of gigabytes)
FOLDERS = {
    # 256x256 -> 16x16 (a 2x2x4 latent at f = 8); the discriminator from the first step, so it runs
    "image_folder_latent.yaml": (
        "image_folder_ae.yaml",
        _image_folder,
        ["data.size=16"],
        ("autoencoder.channels=16", "autoencoder.disc_channels=8", "autoencoder.disc_start=0"),
        ("model.channels=16",),
        ([3, 16, 16], [4, 2, 2]),
    ),
    # 65,536 samples -> 1,024 (a 16-frame latent at f = 64)
    "audio_folder_latent.yaml": (
        "audio_folder_ae.yaml",
        _audio_folder,
        ["data.length=1024"],
        ("autoencoder.channels=8",),
        ("model.channels=16",),
        ([1, 1024], [32, 16]),
    ),
    # 64^3 -> 8^3 (a 2^3 latent at f = 4); the voxel cache under the test's MULTIDIFF_CACHE
    "voxel_meshes_latent.yaml": (
        "voxel_meshes_ae.yaml",
        _mesh_folder,
        ["data.resolution=8"],
        ("autoencoder.channels=8",),
        ("model.channels=16",),
        ([1, 8, 8, 8], [8, 2, 2, 2]),
    ),
}


@pytest.mark.parametrize("config", sorted(FOLDERS))
def test_the_shipped_folder_latent_configs_train_on_small_folders(config: str, tmp_path: Path) -> None:
    """The GPU configs for a folder of images, recordings or meshes: a step of the shipped
    autoencoder config and one of the shipped latent config on a few small files written here, at
    a small size and width, in float32 on the CPU; everything else as shipped."""
    ae_config, write, size, ae_sets, latent_sets, (data_shape, latent_shape) = FOLDERS[config]
    write(tmp_path / "data")
    sets = [f"data.path={tmp_path / 'data'}", *size, "train.precision=fp32", "train.num_workers=0"]
    _train_shipped_pair(config, ae_config, sets, tmp_path, ae_sets, latent_sets)
    record = find_checkpoint(tmp_path / "latent").meta["latent"]
    assert record["data_shape"] == data_shape and record["latent_shape"] == latent_shape  # f = 8, 64, 4
    assert record["posterior"] == "sample"
    row = _MetricsLog.read(tmp_path / "ae" / "metrics.csv")[-1]
    if "autoencoder.disc_start=0" in ae_sets:  # the image autoencoder's discriminator took its step
        assert math.isfinite(row["disc"]) and row["disc"] > 0


def test_a_text_conditioned_latent_run_trains_and_samples_with_prompts(
    runs: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    """Text conditioning rides on the latent run: the captions line up with the cached latents."""
    d = _latent("image", tmp_path / "text", runs["image"][0])
    d["data"] = {"source": "digits", "size": 8, "limit": 48, "captions": True}
    d["text"] = {"width": 16, "depth": 1, "heads": 2, "max_tokens": 12, "dropout": 0.3}
    tr = train(d)
    assert len(tr.dataset) == 48 and tr.dataset.x.shape[1:] == (2, 4, 4)
    pipe = load_pipeline(tmp_path / "text", device="cpu")
    x, _ = pipe.sample(2, steps=2, prompt="a thick digit 3", guidance_scale=2.0)
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()
