"""The autoencoder task (issue 22, first half): :class:`AutoencoderKL` at ranks 1 to 3, its losses
against closed forms, and autoencoder runs trained, resumed bit-exactly, loaded and judged by the
same engine and command line as diffusion runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from helpers import checkpoint_weights, train

from multidiff import cli
from multidiff import config as C
from multidiff import reconstruction as R
from multidiff.autoencoder import AutoencoderKL, DiagonalGaussian, load_autoencoder
from multidiff.checkpoint import find_checkpoint
from multidiff.pipeline import load_pipeline
from multidiff.train import _MetricsLog

TRAIN = {"steps": 3, "batch_size": 8, "lr": 2e-3, "log_every": 1, "checkpoint_every": 0, "progress": False}
TRAIN["device"] = "cpu"
# one tiny autoencoder run per rank, on each modality's built-in data
RUNS = {
    "audio": {
        "modality": "audio",
        "data": {"source": "tones", "sample_rate": 8000, "length": 256, "per_class": 3},
        "autoencoder": {"channels": 4, "channel_mult": [1, 2], "head_channels": 8, "stft_sizes": [64, 32]},
    },
    "image": {
        "modality": "image",
        "data": {"source": "digits", "size": 8, "limit": 48},
        "autoencoder": {"channels": 4, "channel_mult": [1, 2], "head_channels": 8},
    },
    "voxel": {
        "modality": "voxel",
        "data": {"source": "shapes", "resolution": 8, "per_class": 3, "representation": "sdf", "truncation": 2.0},
        "autoencoder": {"channels": 4, "channel_mult": [1, 2], "head_channels": 8},
    },
}
DIMS = {"audio": 1, "image": 2, "voxel": 3}


def _run(modality: str, out: Path, **autoencoder: object) -> dict:
    d = json.loads(json.dumps({**RUNS[modality], "task": "autoencoder", "out_dir": str(out), "train": TRAIN}))
    d["autoencoder"].update(autoencoder)
    return d


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The three tiny runs, trained once for the tests that read them."""
    root = tmp_path_factory.mktemp("ae_runs")
    for m in RUNS:
        d = _run(m, root / m)
        d["train"]["sample_every"] = 3  # reconstructions of held-out examples
        d["sample"] = {"num_samples": 2}
        train(d)
    return {m: root / m for m in RUNS}


# --- the network ------------------------------------------------------------------------------


@pytest.mark.parametrize("dims", [1, 2, 3], ids=["1d", "2d", "3d"])
def test_the_autoencoder_learns_a_fixed_batch_at_every_rank(dims: int) -> None:
    torch.manual_seed(0)
    shape = {1: (2, 32), 2: (1, 8, 8), 3: (1, 8, 8, 8)}[dims]
    ae = AutoencoderKL(dims, shape[0], 2, channels=8, channel_mult=(1, 2), factors=4 if dims == 1 else 2)
    # smooth examples (a few random low frequencies), as data is
    coarse = torch.randn(4, shape[0], *(s // 4 for s in shape[1:]))
    x = torch.nn.functional.interpolate(coarse, size=shape[1:], mode="linear" if dims == 1 else "nearest").tanh()
    eps = torch.randn(4, *ae.latent_shape(shape), generator=torch.Generator().manual_seed(1))
    opt = torch.optim.Adam(ae.parameters(), 3e-3)
    losses = []
    for _ in range(20):
        rec, post = ae(x, eps)
        loss = (R.l1_error(rec, x) + 1e-6 * post.kl() / x[0].numel()).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert post.mean.shape == (4, *ae.latent_shape(shape)) and rec.shape == x.shape
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.6 * losses[0], losses  # seen: 0.23 to 0.33 of the first loss


@pytest.mark.parametrize(
    "shape,channel_mult,factors,latent",
    [
        ((2, 13), (1, 2), 4, (3, 4)),
        ((1, 7, 9), (1, 2, 2), [[2, 1], 2], (3, 2, 5)),  # per-axis factors: (4, 2) in all
        ((1, 5, 6, 7), (1, 2), 2, (3, 3, 3, 4)),
    ],
    ids=["1d", "2d", "3d"],
)
def test_odd_sizes_are_padded_and_cropped_back_or_refused_naming_size_and_factor(
    shape: tuple, channel_mult: tuple, factors: object, latent: tuple
) -> None:
    dims = len(shape) - 1
    ae = AutoencoderKL(dims, shape[0], 3, channels=4, channel_mult=channel_mult, factors=factors, head_channels=4)
    x = torch.randn(2, *shape)
    post = ae.encode(x)
    assert tuple(post.mean.shape[1:]) == latent == ae.latent_shape(shape)
    assert ae.decode(post.mode(), shape[1:]).shape == x.shape
    assert ae(x)[0].shape == x.shape
    with pytest.raises(ValueError, match=r"does not decode to size .* total downsampling factors"):
        ae.decode(post.mode(), tuple(s + 8 for s in shape[1:]))
    strict = AutoencoderKL(
        dims, shape[0], 3, channels=4, channel_mult=channel_mult, factors=factors, head_channels=4, odd_sizes="error"
    )
    axis = next(i for i, (s, m) in enumerate(zip(shape[1:], strict.multiple)) if s % m)
    size, factor = shape[1 + axis], strict.multiple[axis]
    with pytest.raises(ValueError, match=rf"axis {axis} has size {size}, not a multiple of .* factor {factor}"):
        strict.encode(x)


def test_kl_of_a_diagonal_gaussian_is_the_closed_form() -> None:
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(3, 2, 4, 5, generator=g), torch.randn(3, 2, 4, 5, generator=g)
    post = DiagonalGaussian(mean, logvar)
    normal = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    want = torch.distributions.kl_divergence(normal, torch.distributions.Normal(0.0, 1.0)).sum((1, 2, 3))
    torch.testing.assert_close(post.kl(), want)
    assert post.kl().shape == (3,)
    assert float(DiagonalGaussian(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3)).kl()) == 0.0  # q = N(0, I)
    eps = torch.randn(3, 2, 4, 5, generator=g)
    torch.testing.assert_close(post.sample(eps), mean + (0.5 * logvar).exp() * eps)


def test_stft_loss_is_zero_for_equal_signals_positive_otherwise_and_per_example() -> None:
    g = torch.Generator().manual_seed(0)
    t = torch.arange(512) / 8000
    x = torch.stack([0.3 * torch.sin(2 * math.pi * 440 * t), 0.2 * torch.randn(512, generator=g)])[:, None]
    assert R.multi_resolution_stft_loss(x, x.clone()).tolist() == [0.0, 0.0]
    other = x.clone()
    other[1] = 0.2 * torch.randn(1, 512, generator=g)
    loss = R.multi_resolution_stft_loss(other, x)
    assert loss[0] == 0 and loss[1] > 0.1  # one example changed: only its loss moves
    louder = R.multi_resolution_stft_loss(1.5 * x, x)
    assert (louder > 0).all()
    # sizes longer than the signal are left out; none left is an error
    assert torch.equal(
        R.multi_resolution_stft_loss(other, x, [4096, 128]), R.multi_resolution_stft_loss(other, x, [128])
    )
    with pytest.raises(ValueError, match="no FFT size"):
        R.multi_resolution_stft_loss(x, x, [4096])


def test_surface_weights_pick_the_band_of_an_sdf_and_the_sign_changes_of_occupancy() -> None:
    sdf = torch.linspace(-1, 1, 9).reshape(1, 1, 9)  # surface at the middle element
    assert R.surface_weights(sdf, 0.3).flatten().tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 0]
    occ = -torch.ones(1, 1, 6, 6, 6)
    occ[..., 2:4, 2:4, 2:4] = 1  # a 2^3 cube: 8 voxels inside, and 56 outside touching it
    w = R.surface_weights(occ, 0.5)
    assert int(w[occ > 0].sum()) == 8 and int(w.sum()) == 4**3
    # an error far from the surface does not count; the same error at the surface counts in full
    far, near = occ.clone(), occ.clone()
    far[..., 0, 0, 0] = 0.0
    near[..., 2, 2, 2] = 0.0
    assert float(R.surface_weighted_error(far, occ, 0.5)) == 0.0
    assert float(R.surface_weighted_error(near, occ, 0.5)) == pytest.approx(1.0 / 64)
    assert float(R.l1_error(far, occ)) == float(R.l1_error(near, occ))  # plain L1 cannot tell them apart


def test_figures_psnr_snr_and_log_spectral_distance() -> None:
    x = torch.sin(torch.arange(1024) / 7.0).reshape(1, 1, 1024)
    noisy = x + 0.1 * torch.randn(1, 1, 1024, generator=torch.Generator().manual_seed(0))
    snr = float(R.snr_db(noisy, x))
    assert snr == pytest.approx(10 * math.log10(x.square().sum() / (noisy - x).square().sum()), rel=1e-5)
    assert float(R.psnr(x + 0.1, x, data_range=2.0)) == pytest.approx(10 * math.log10(4 / 0.01), rel=1e-5)
    assert float(R.log_spectral_distance(x, x)) == 0.0 and float(R.log_spectral_distance(noisy, x)) > 1.0


# --- runs of the engine -----------------------------------------------------------------------


@pytest.mark.parametrize("modality", ["audio", "image", "voxel"])
def test_autoencoder_runs_train_at_every_rank_and_record_task_and_shapes(runs: dict[str, Path], modality: str) -> None:
    rows = _MetricsLog.read(runs[modality] / "metrics.csv")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["kl"]) for r in rows)
    assert ("stft" in rows[0]) == (modality == "audio") and ("surface" in rows[0]) == (modality == "voxel")
    meta = find_checkpoint(runs[modality]).meta
    net, cfg, _ = load_autoencoder(runs[modality], device="cpu", modality=modality)
    shape = tuple(meta["data_info"]["shape"])
    assert meta["task"] == "autoencoder" and meta["modality"] == modality and tuple(meta["data_shape"]) == shape
    assert tuple(meta["latent_shape"]) == net.latent_shape(shape) and len(shape) == DIMS[modality] + 1
    assert "model" not in meta["config"] and meta["config"]["autoencoder"]["channels"] == 4
    files = {
        p.relative_to(runs[modality] / "samples" / "step_00000003").parts[0]
        for p in (runs[modality] / "samples").rglob("*.*")
    }
    assert files == {"real.png", "reconstructed.png"} if modality == "image" else files == {"real", "reconstructed"}
    x = torch.zeros(2, *shape)
    assert net(x)[0].shape == x.shape
    # another modality's or another data shape's autoencoder is refused by name
    other = "image" if modality != "image" else "audio"
    with pytest.raises(ValueError, match=f"autoencoder of {modality} data, not of {other} data"):
        load_autoencoder(runs[modality], device="cpu", modality=other)
    with pytest.raises(ValueError, match=r"trained on examples of shape .*, not"):
        load_autoencoder(runs[modality], device="cpu", data_shape=(shape[0] + 1, *shape[1:]))
    with pytest.raises(ValueError, match="autoencoder run .*does not sample"):
        load_pipeline(runs[modality], device="cpu")


FIGURES = {
    "image": ["psnr", "worst_psnr"],
    "audio": ["snr_db", "median_snr_db", "lsd_db", "pitch_accuracy"],
    "voxel": ["iou", "chamfer", "chamfer_floor"],
}


@pytest.mark.parametrize("modality", ["audio", "image", "voxel"])
def test_eval_of_an_autoencoder_run_prints_its_reconstruction_figures(
    runs: dict[str, Path], modality: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "e.json"
    assert cli.main(["eval", str(runs[modality]), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    report = json.loads(out.read_text())
    figures = report["figures"]
    for name in ["examples", "rmse", "mae", *FIGURES[modality]]:
        assert name in figures and math.isfinite(figures[name]), (name, figures)
        assert name in text
    assert "held-out examples reconstructed" in text and report["settings"]["task"] == "autoencoder"
    n = {"audio": 24, "image": 48, "voxel": 18}[modality]
    assert figures["examples"] == round(0.1 * n)  # the held-out 10%, never trained on
    assert cli.main(["eval", str(runs[modality]), "--steps", "3"]) == 2  # a sampling flag: diffusion only
    assert "is for diffusion runs" in capsys.readouterr().err


def test_resume_of_an_autoencoder_run_is_bit_exact(tmp_path: Path) -> None:
    """3 steps, stop, resume for 3: the same losses, loss terms, weights, EMA and discriminator as 6
    steps at once, with the discriminator starting in the first half, gradient accumulation, random
    flips and the posterior's noise all drawing randomness."""
    extra = {"disc_weight": 0.5, "disc_start": 2, "disc_channels": 4, "disc_layers": 2}

    def run(name: str, steps: int, seed: int = 0) -> dict:
        d = _run("image", tmp_path / name, **extra)
        d["data"]["random_flip"] = True
        d["train"].update(steps=steps, grad_accum=2, warmup_steps=2, ema_decay=0.9, seed=seed)
        return d

    train(run("whole", 6))
    train(run("part", 3))
    train(run("part", 6), resume=True)
    rows = {n: _MetricsLog.read(tmp_path / n / "metrics.csv") for n in ("whole", "part")}
    untimed = [[{k: v for k, v in r.items() if k not in ("samples_per_s", "elapsed_s")} for r in rows[n]] for n in rows]
    assert untimed[0] == untimed[1] and len(untimed[0]) == 6  # losses, gradient norms, every loss term
    assert rows["whole"][-1]["disc"] > 0 and rows["whole"][0]["disc"] == 0  # it did start at step 2
    (m1, e1), (m2, e2) = checkpoint_weights(tmp_path / "whole"), checkpoint_weights(tmp_path / "part")
    assert all(torch.equal(m1[k], m2[k]) for k in m1) and all(torch.equal(e1[k], e2[k]) for k in e1)
    d1, d2 = (find_checkpoint(tmp_path / n).training_state()["aux"] for n in ("whole", "part"))
    assert all(torch.equal(d1[k], d2[k]) for k in d1)
    # another seed differs, so the equalities above mean something
    train(run("other", 6, seed=1))
    m3, _ = checkpoint_weights(tmp_path / "other")
    assert not all(torch.equal(m1[k], m3[k]) for k in m1)


def test_an_autoencoder_run_does_not_resume_a_diffusion_checkpoint(tmp_path: Path) -> None:
    from helpers import tiny_run

    train(tiny_run(tmp_path / "diffusion", train={"steps": 1, "checkpoint_every": 1}))
    d = _run("image", tmp_path / "ae")
    with pytest.raises(ValueError, match="checkpoint of a diffusion run, and this run's task is autoencoder"):
        train(d, resume=str(tmp_path / "diffusion"))


def _error(d: dict) -> str:
    with pytest.raises(C.ConfigError) as e:
        C.resolve_config(d)
    return str(e.value)


def test_autoencoder_config_errors_name_the_key(tmp_path: Path) -> None:
    d = _run("image", tmp_path)
    d["autoencoder"]["latent_chanels"] = 4
    msg = _error(d)
    assert "autoencoder.latent_chanels: unknown key" in msg and "latent_channels" in msg
    d = _run("image", tmp_path, kl_weight=-1.0)
    assert "autoencoder.kl_weight: Input should be greater than or equal to 0" in _error(d)
    d = _run("image", tmp_path, factors=[2, 2])
    assert "autoencoder.factors: one factor per downsampling: len(channel_mult) - 1 = 1" in _error(d)
    d = _run("image", tmp_path, l1=0.0)
    assert "autoencoder.l1: every reconstruction weight" in _error(d)
    d = {**_run("image", tmp_path), "model": {"preset": "tiny"}}
    assert "model: an autoencoder run (task: autoencoder) has no model section" in _error(d)
    d = {**_run("image", tmp_path), "task": "diffusion"}
    assert "autoencoder: the autoencoder section belongs to autoencoder runs" in _error(d)
    d = {**_run("image", tmp_path), "task": "vae"}
    assert "task: Input should be 'diffusion' or 'autoencoder'" in _error(d)
    # a per-axis factor of the wrong rank is known once the data is: named when the run is built
    d = _run("image", tmp_path, factors=[[2, 2, 2]])
    with pytest.raises(C.ConfigError, match=r"autoencoder.factors: each entry must be .* 2 of them"):
        train(d)
    # the YAML and --set path says the same
    cfg = tmp_path / "ae.yaml"
    cfg.write_text(yaml.safe_dump(_run("image", tmp_path)))
    with pytest.raises(C.ConfigError, match="autoencoder.disc_start: Input should be greater than or equal to 0"):
        C.load_config(cfg, ["autoencoder.disc_start=-3"])


def test_modality_defaults_fill_the_autoencoder_section(tmp_path: Path) -> None:
    audio = C.resolve_config(_run("audio", tmp_path)).autoencoder
    image = C.resolve_config(_run("image", tmp_path)).autoencoder
    voxel = C.resolve_config(_run("voxel", tmp_path)).autoencoder
    assert audio.stft > 0 and audio.kl_weight == pytest.approx(1.6e-3) and audio.factors == 4
    assert image.stft == 0 and image.surface == 0 and image.kl_weight == 1e-6
    assert voxel.surface > 0 and voxel.surface_band == 0.5  # one voxel of an SDF truncated at 2 voxels
    assert C.resolve_config(_run("audio", tmp_path, stft=0.0)).autoencoder.stft == 0  # a run's key wins
    # the saved config resolves to the same section
    cfg = C.resolve_config(_run("voxel", tmp_path))
    assert C.resolve_config(cfg.to_json()).autoencoder == cfg.autoencoder


def test_the_train_command_trains_an_autoencoder_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "ae.yaml"
    d = _run("audio", tmp_path / "run")
    d["train"]["steps"] = 1
    cfg.write_text(yaml.safe_dump(d))
    assert cli.main(["train", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "multidiff train: autoencoder of audio from tones, 256 samples at 8000 Hz" in out
    assert "-> latent (8, 64)" in out and "done: step 1" in out
    assert cli.main(["sample", str(tmp_path / "run")]) == 2  # an autoencoder does not sample
    assert "does not sample" in capsys.readouterr().err


SMALL_DATA = {
    "image_digits_ae.yaml": ["data.size=8", "data.limit=40"],
    "audio_tones_ae.yaml": ["data.length=256", "data.per_class=2"],
    "voxel_shapes_ae.yaml": ["data.resolution=8", "data.per_class=2"],
}


@pytest.mark.parametrize("config", sorted(SMALL_DATA))
def test_the_shipped_autoencoder_configs_train_on_small_data(config: str, tmp_path: Path) -> None:
    """Each shipped autoencoder config, its network and losses as shipped, on a few small examples."""
    root = Path(__file__).resolve().parents[1]
    sets = SMALL_DATA[config] + ["train.steps=1", "train.batch_size=4", "train.progress=false"]
    sets += ["train.sample_every=0", "train.checkpoint_every=0", "train.device=cpu"]
    out = tmp_path / "run"
    args = ["train", str(root / "configs" / config), "--out-dir", str(out), *[x for s in sets for x in ("--set", s)]]
    assert cli.main(args) == 0
    meta = find_checkpoint(out).meta
    assert meta["task"] == "autoencoder" and meta["step"] == 1
    assert math.isfinite(_MetricsLog.read(out / "metrics.csv")[-1]["loss"])
