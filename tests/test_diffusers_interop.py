"""diffusers folders as multidiff denoisers (:mod:`multidiff.interop.diffusers`), checked against diffusers itself.

Tiny randomly initialised diffusers models are written with ``save_pretrained`` into temporary
folders and read back offline. Each conversion is checked against the network called directly at
the matching timestep, and multidiff's samplers against diffusers' own scheduler loops, run by hand
here (``set_timesteps``, ``step``) on the same noise levels.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch

from multidiff.grids import schedule_sigma_range
from multidiff.interop.diffusers import (
    DiffusersError,
    FlowDenoiser,
    is_diffusers_folder,
    load_diffusers,
)
from multidiff.pipeline import Pipeline, load_pipeline
from multidiff.samplers import sample_ddim, sample_euler

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _unet2d(**kw: object) -> torch.nn.Module:
    torch.manual_seed(0)
    args = dict(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    return diffusers.UNet2DModel(**{**args, **kw})


def _save(folder: Path, unet: torch.nn.Module, scheduler: object, layout: str = "pipeline") -> Path:
    """``pipeline``: model_index.json, unet/, scheduler/; ``beside``: unet/ and scheduler/ without
    an index (the model folder is returned)."""
    if layout == "pipeline":
        diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
        return folder
    unet.save_pretrained(folder / "unet")
    scheduler.save_pretrained(folder / "scheduler")
    return folder / "unet"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("diffusers")
    out = {
        "eps": _save(root / "eps", _unet2d(), diffusers.DDIMScheduler(prediction_type="epsilon")),
        # a class-conditional v-prediction model, saved as a model folder with its scheduler beside it
        "v": _save(
            root / "v",
            _unet2d(num_class_embeds=3),
            diffusers.DDIMScheduler(prediction_type="v_prediction", beta_schedule="squaredcos_cap_v2"),
            layout="beside",
        ),
        "flow": _save(root / "flow", _unet2d(), diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)),
        "learned": _save(
            root / "learned",
            _unet2d(out_channels=2),
            diffusers.DDPMScheduler(variance_type="learned_range", beta_schedule="scaled_linear"),
        ),
    }
    torch.manual_seed(0)
    one_d = diffusers.UNet1DModel(
        sample_size=64,
        sample_rate=8000,
        in_channels=1,
        out_channels=1,
        extra_in_channels=16,
        time_embedding_dim=16,
        block_out_channels=(32, 32, 64),
    )
    one_d.save_pretrained(root / "audio")
    diffusers.DDPMScheduler().save_pretrained(root / "audio")  # scheduler_config.json in the model folder
    out["audio"] = root / "audio"
    torch.manual_seed(0)
    cond = diffusers.UNet2DConditionModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8,
        attention_head_dim=2,
        norm_num_groups=4,
    )
    out["cond"] = _save(
        root / "cond", cond, diffusers.EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_end=0.012)
    )
    return out


def _with_prediction(src: Path, dst: Path, prediction_type: str) -> Path:
    """A copy of a pipeline folder whose scheduler says the model predicts ``prediction_type``."""
    shutil.copytree(src, dst)
    f = dst / "scheduler" / "scheduler_config.json"
    cfg = json.loads(f.read_text())
    f.write_text(json.dumps({**cfg, "prediction_type": prediction_type}))
    return dst


def _table_sigma(den: torch.nn.Module, i: int, b: int) -> torch.Tensor:
    return torch.full((b,), float(den.schedule.sigmas()[i]))


def _call(unet: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, **cond: object) -> torch.Tensor:
    return unet(x, t, **cond).sample


# --- the conversions, against the network called directly --------------------------------------


@pytest.mark.parametrize("name", ["eps", "audio", "cond"])
def test_eps_model_is_x_minus_sigma_eps(models: dict[str, Path], name: str) -> None:
    m = load_diffusers(models[name])
    den, unet = m.denoiser, m.denoiser.net.unet
    assert den.parameterization == "eps" and den.vp and den.noise_cond == "timestep"
    torch.manual_seed(1)
    x = 3 * torch.randn(2, *m.info.shape)
    cond = {"encoder_hidden_states": torch.randn(2, 5, 8)} if name == "cond" else {}
    with torch.no_grad():
        for i in (0, 37, 500, 999):
            s = _table_sigma(den, i, 2)
            a = torch.rsqrt(1 + s * s).reshape(-1, *[1] * len(m.info.shape))
            eps = _call(unet, x * a, torch.tensor([i, i]), **cond)
            d = den(x, s, **cond)
            assert (d - (x - s.reshape(a.shape) * eps)).abs().max() < 1e-5, i


@pytest.mark.parametrize("prediction", ["v_prediction", "sample"])
def test_v_and_sample_predictions(models: dict[str, Path], tmp_path: Path, prediction: str) -> None:
    """``v``: ``D = a x_t - s v_hat`` with ``x_t = a x``; ``sample``: ``D`` is the output; class labels reach the network."""
    folder = models["v"] if prediction == "v_prediction" else _with_prediction(models["eps"], tmp_path / "x0", "sample")
    m = load_diffusers(folder)
    den, unet = m.denoiser, m.denoiser.net.unet
    torch.manual_seed(2)
    x = torch.randn(2, *m.info.shape)
    labels = {"class_labels": torch.tensor([0, 2])} if m.info.num_classes else {}
    with torch.no_grad():
        for i in (3, 400, 998):
            s = _table_sigma(den, i, 2)
            a = torch.rsqrt(1 + s * s)[:, None, None, None]
            out = _call(unet, a * x, torch.tensor([i, i]), **labels)
            want = a * (a * x) - s[:, None, None, None] * a * out if prediction == "v_prediction" else out
            assert (den(x, s, **labels) - want).abs().max() < 1e-5
        if labels:
            assert m.info.num_classes == 3
            other = den(x, s, class_labels=torch.tensor([1, 1]))
            assert (other - den(x, s, **labels)).abs().max() > 1e-4  # the label matters


def test_learned_variance_is_split_off(models: dict[str, Path]) -> None:
    m = load_diffusers(models["learned"])
    den, unet = m.denoiser, m.denoiser.net.unet
    assert den.learned_variance and m.info.shape == (1, 8, 8)
    x = torch.randn(2, 1, 8, 8)
    s = _table_sigma(den, 250, 2)
    with torch.no_grad():
        out = _call(unet, x * torch.rsqrt(1 + s * s)[:, None, None, None], torch.tensor([250, 250]))
        d, v = den.with_variance(x, s)
    assert out.shape[1] == 2
    assert (d - (x - s[:, None, None, None] * out[:, :1])).abs().max() < 1e-5
    assert (v - (out[:, 1:] + 1) / 2).abs().max() < 1e-6


def test_timestep_interpolates_in_log_sigma_and_clamps(models: dict[str, Path]) -> None:
    from multidiff.denoiser import noise_condition

    den = load_diffusers(models["eps"]).denoiser
    sig = den.schedule.sigmas()
    mid = ((sig[100].log() + sig[101].log()) / 2).exp()
    ts = noise_condition("timestep", torch.stack([mid, sig[0] / 10, sig[-1] * 10]), den.schedule)
    assert torch.allclose(ts, torch.tensor([100.5, 0.0, 999.0], dtype=torch.float64), atol=1e-9)


def test_flow_matching_denoiser(models: dict[str, Path]) -> None:
    """``D(y, sigma) = x_t - t v_hat(x_t, 1000 t)`` with ``t = sigma / (1 + sigma)``, ``x_t = y / (1 + sigma)``."""
    m = load_diffusers(models["flow"])
    den, unet = m.denoiser, m.denoiser.net.unet
    assert isinstance(den, FlowDenoiser) and den.schedule.shift == 3.0
    torch.manual_seed(3)
    for t in (0.05, 0.5, 0.97):
        x_t = torch.randn(2, 1, 8, 8)
        sigma = torch.full((2,), t / (1 - t))
        with torch.no_grad():
            v = _call(unet, x_t, torch.full((2,), 1000 * t))
            d = den(x_t / (1 - t), sigma)
        assert (d - (x_t - t * v)).abs().max() < 1e-5
    # the grids' range: diffusers' table shifted, its t = 1 entry left out
    lo, hi = schedule_sigma_range(den.schedule)
    assert abs(hi - 3 * 999) < 1e-6 and abs(lo - 3 / 999) < 1e-9


# --- samplers against diffusers' scheduler loops -------------------------------------------------


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@pytest.mark.parametrize("name", ["eps", "v"])
def test_ddim_matches_diffusers_ddim(models: dict[str, Path], name: str) -> None:
    folder = models[name]
    m = load_diffusers(folder)
    sched_dir = folder / "scheduler" if (folder / "scheduler").is_dir() else folder.parent / "scheduler"
    # clip_sample (on in the saved config) is what the loader ignores: the reference loop goes without it
    sched = diffusers.DDIMScheduler.from_pretrained(sched_dir, clip_sample=False)
    sched.set_timesteps(10)
    unet = m.denoiser.net.unet
    labels = {"class_labels": torch.tensor([0, 1, 2])} if m.info.num_classes else {}
    z = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    x = z.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(_call(unet, x, t.expand(3), **labels), t, x, eta=0.0).prev_sample
        # the same timesteps as VE sigmas, then 0 (set_alpha_to_one: the last step lands on the estimate)
        ac = m.denoiser.schedule.alphas_cumprod[sched.timesteps]
        sigmas = torch.cat([((1 - ac) / ac).sqrt(), torch.zeros(1, dtype=torch.float64)])
        ours = sample_ddim(m.denoiser, z / ac[0].sqrt().float(), sigmas, cond=labels, final_step="jump")
    diff = _max_diff(ours, x)
    print(f"DDIM ({name}) max |multidiff - diffusers| = {diff:.2e}, max |x| = {float(x.abs().max()):.3g}")
    # float32 rounding relative to the result: an untrained eps model's estimate reaches about 200
    assert diff < 1e-5 * max(1.0, float(x.abs().max()))


def test_euler_matches_diffusers_euler(models: dict[str, Path]) -> None:
    """A text-conditional model (``encoder_hidden_states`` passed through) under EulerDiscreteScheduler."""
    m = load_diffusers(models["cond"])
    sched = diffusers.EulerDiscreteScheduler.from_pretrained(models["cond"] / "scheduler", timestep_spacing="trailing")
    sched.set_timesteps(8)
    unet = m.denoiser.net.unet
    g = torch.Generator().manual_seed(5)
    ehs = torch.randn(2, 5, 8, generator=g)
    z = torch.randn(2, 1, 8, 8, generator=g) * sched.init_noise_sigma
    x = z.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            eps = _call(unet, sched.scale_model_input(x, t), t.expand(2), encoder_hidden_states=ehs)
            x = sched.step(eps, t, x).prev_sample
        sigmas = sched.sigmas.double()  # ends in 0
        ours = sample_euler(m.denoiser, z, sigmas, cond={"encoder_hidden_states": ehs}, final_step="jump")
    diff = _max_diff(ours, x)
    print(f"Euler (text-conditional) max |multidiff - diffusers| = {diff:.2e}")
    assert diff < 1e-5 * max(1.0, float(x.abs().max()))


def test_flow_euler_matches_diffusers_flow_match_euler(models: dict[str, Path]) -> None:
    """An Euler step in sigma on ``y = x_t / (1 - t)`` is diffusers' Euler step in ``t`` on ``x_t``.

    diffusers starts at ``t = 1`` (``sigma = inf`` in the VE view); here both start from the
    same ``x_t`` at ``t < 1``, given to ``set_timesteps`` as unshifted sigmas."""
    m = load_diffusers(models["flow"])
    sched = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(models["flow"] / "scheduler")
    sched.set_timesteps(sigmas=np.linspace(0.98, 0.02, 10).tolist())
    unet = m.denoiser.net.unet
    t = sched.sigmas.double()  # shifted flow times, then 0
    assert t[-1] == 0 and abs(float(t[0]) - 3 * 0.98 / (1 + 2 * 0.98)) < 1e-6
    z = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(6))
    x = z.clone()
    with torch.no_grad():
        for ts in sched.timesteps:
            x = sched.step(_call(unet, x, ts.expand(2)), ts, x).prev_sample
        sigmas = torch.cat([t[:-1] / (1 - t[:-1]), t[-1:]])
        ours = sample_euler(m.denoiser, z / (1 - t[0]).float(), sigmas, final_step="jump")
    diff = _max_diff(ours, x)
    print(f"flow Euler max |multidiff - diffusers| = {diff:.2e}")
    assert diff < 1e-5


# --- the pipeline and the command line -------------------------------------------------------------


def test_pipeline_inpaint_keeps_known_pixels(models: dict[str, Path]) -> None:
    pipe = Pipeline.from_diffusers(models["eps"], device="cpu")
    assert pipe.checkpoint is None and pipe.adapter.name == "image" and pipe.info.shape == (1, 8, 8)
    x = torch.rand(1, 1, 8, 8) * 2 - 1
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[:, 2:6, 2:6] = True
    out = pipe.inpaint(x, mask, n=2, method="repaint", jump_length=2, resample=2, steps=4)
    keep = ~mask.expand(2, 1, 8, 8)
    assert torch.equal(out[keep], x.expand(2, 1, 8, 8)[keep])
    assert (out[~keep] - x.expand(2, 1, 8, 8)[~keep]).abs().max() > 0  # the region was generated


def test_pipeline_methods_on_a_flow_model(models: dict[str, Path]) -> None:
    pipe = load_pipeline(models["flow"], device="cpu")  # detected by its model_index.json
    x, labels = pipe.sample(2, steps=3)
    assert x.shape == (2, 1, 8, 8) and labels is None and torch.isfinite(x).all()
    assert torch.isfinite(pipe.sdedit(x[:1], 0.5, n=2, steps=3)).all()
    with pytest.raises(ValueError, match="training data"):
        pipe.training_examples(1)
    # CUDA graphs stay off for a diffusers network (auto runs it eagerly; true says why not)
    with pytest.raises(ValueError, match="not checked under CUDA graph capture"):
        pipe.sample(1, steps=2, cuda_graphs=True)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "multidiff", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_cli_sample_writes_png_and_wav(models: dict[str, Path], tmp_path: Path) -> None:
    import soundfile as sf
    from PIL import Image

    r = _cli("sample", "--diffusers", str(models["eps"]), "-n", "2", "--steps", "3", "--out", str(tmp_path / "img"))
    assert r.returncode == 0, r.stderr
    with Image.open(tmp_path / "img.png") as im:
        assert im.size[0] > 0
    # a 1D model, detected from its config.json, written as WAVs at its sample rate
    r = _cli("sample", str(models["audio"]), "-n", "2", "--steps", "3", "--out", str(tmp_path / "wav"))
    assert r.returncode == 0, r.stderr
    wavs = sorted((tmp_path / "wav").glob("*.wav"))
    assert len(wavs) == 2
    data, rate = sf.read(wavs[0])
    assert rate == 8000 and data.shape[0] == 64


def test_cli_edit_inpaint_with_diffusers(models: dict[str, Path], tmp_path: Path) -> None:
    r = _cli("sample", "--diffusers", str(models["eps"]), "-n", "1", "--steps", "2", "--out", str(tmp_path / "in"))
    assert r.returncode == 0, r.stderr
    r = _cli(
        "edit",
        "inpaint",
        "--diffusers",
        str(models["eps"]),
        "--input",
        str(tmp_path / "in.png"),
        "--region",
        "0.25:0.75,0.25:0.75",
        "-n",
        "1",
        "--steps",
        "3",
        "--method",
        "replace",
        "--out",
        str(tmp_path / "edit"),
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "edit" / "inpainted.png").is_file()


def _refusal(folder: Path, file: Path) -> None:
    with pytest.raises(DiffusersError) as e:
        load_diffusers(folder)
    assert str(file) in str(e.value) and "\n" not in str(e.value)
    r = _cli("sample", "--diffusers", str(folder), "-n", "1", "--steps", "2")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and str(file) in lines[0], r.stderr


def test_refuses_a_folder_that_is_not_a_diffusers_model(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    assert not is_diffusers_folder(tmp_path)
    _refusal(tmp_path, tmp_path)


def test_refuses_an_unsupported_model_class(models: dict[str, Path], tmp_path: Path) -> None:
    folder = shutil.copytree(models["eps"], tmp_path / "m")
    cfg = folder / "unet" / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "_class_name": "UNet3DConditionModel"}))
    (folder / "model_index.json").write_text(
        json.dumps(
            {"_class_name": "X", "unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", "DDIMScheduler"]}
        )
    )
    _refusal(folder, cfg)
    with pytest.raises(DiffusersError, match="UNet2DModel, UNet1DModel, UNet2DConditionModel"):
        load_diffusers(folder)


def test_refuses_an_unsupported_scheduler(models: dict[str, Path], tmp_path: Path) -> None:
    folder = shutil.copytree(models["eps"], tmp_path / "s")
    f = folder / "scheduler" / "scheduler_config.json"
    f.write_text(json.dumps({"_class_name": "ScoreSdeVeScheduler", "num_train_timesteps": 2000}))
    _refusal(folder, f)
    f.write_text(json.dumps({"_class_name": "DDIMScheduler", "prediction_type": "flow"}))
    _refusal(folder, f)


def test_cond_model_needs_encoder_states_on_the_command_line(models: dict[str, Path], tmp_path: Path) -> None:
    r = _cli("sample", "--diffusers", str(models["cond"]), "-n", "1", "--steps", "2", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "encoder_hidden_states" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_class_labels_and_guidance_on_a_class_conditional_model(models: dict[str, Path]) -> None:
    """Labels 0, 1, 2 by default; guidance needs a negative class (diffusers' class models have no null class)."""
    pipe = load_pipeline(models["v"], device="cpu")  # a model folder, its scheduler/ beside it
    x, labels = pipe.sample(3, steps=3)
    assert labels.tolist() == [0, 1, 2] and torch.isfinite(x).all()
    with pytest.raises(ValueError, match="negative class"):
        pipe.sample(1, steps=2, guidance_scale=2.0)
    guided, _ = pipe.sample(1, steps=2, guidance_scale=2.0, negative_class=1, labels=0)
    plain, _ = pipe.sample(1, steps=2, labels=0)
    assert (guided - plain).abs().max() > 0


def test_text_conditional_pipeline_with_bound_encoder_states(models: dict[str, Path]) -> None:
    """``DiffusersNet.condition`` holds the text embeddings for every call of a sampling run (a batch of 1 repeated)."""
    pipe = Pipeline.from_diffusers(models["cond"], device="cpu")
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        pipe.sample(1, steps=2)
    states = torch.randn(1, 5, 8, generator=torch.Generator().manual_seed(7))
    pipe.denoiser.net.condition["encoder_hidden_states"] = states
    x, _ = pipe.sample(2, steps=2)
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()
    pipe.denoiser.net.condition["encoder_hidden_states"] = -states
    assert (pipe.sample(2, steps=2)[0] - x).abs().max() > 0  # the states reach the network


@pytest.mark.parametrize(
    "config",
    [
        {"beta_schedule": "linear"},
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
        {"beta_schedule": "squaredcos_cap_v2"},
        {"beta_schedule": "linear", "rescale_betas_zero_snr": True},
        {"trained_betas": np.linspace(1e-3, 0.05, 50).tolist(), "num_train_timesteps": 50},
    ],
)
def test_alphas_cumprod_from_the_config_matches_diffusers(config: dict[str, object]) -> None:
    """Computed here in float64; diffusers' float32 table agrees to float32 rounding (the zero-SNR
    table's last entry is kept finite here, 0 there)."""
    from multidiff.interop.diffusers import discrete_schedule

    sched = diffusers.DDIMScheduler(**config)
    ours = discrete_schedule(sched.config).alphas_cumprod
    theirs = sched.alphas_cumprod.double()
    assert ours.shape == theirs.shape
    n = -1 if config.get("rescale_betas_zero_snr") else None
    assert torch.allclose(ours[:n], theirs[:n], rtol=1e-5, atol=1e-7)
    if n:
        assert theirs[-1] == 0 and 0 < ours[-1] < ours[-2]


def test_the_modality_of_a_diffusers_model_comes_from_the_adapters_not_the_core() -> None:
    from multidiff.interop.diffusers import DiffusersError, modality_for
    from multidiff.registry import load_modality

    for cls in ("UNet2DModel", "UNet2DConditionModel", "UNet1DModel"):
        name = modality_for(cls)
        assert cls in load_modality(name).diffusers_classes
    with pytest.raises(DiffusersError, match=r"^model/config.json: no installed modality takes a UNet3DConditionModel"):
        modality_for("UNet3DConditionModel", "model/config.json")
