"""Configs: every shipped YAML validates; every error names the key, the value and what was expected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from helpers import tiny_run

from multidiff import config as C
from multidiff import samplers
from multidiff import schedules as S

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_configs_exist() -> None:
    names = {p.name for p in CONFIGS}
    assert {"image_digits.yaml", "image_cifar10.yaml", "image_folder.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates(path: Path) -> None:
    cfg = C.load_config(path)
    assert cfg.run.modality == cfg.adapter.name
    # The resolved config round-trips: what a checkpoint saves rebuilds the same config.
    again = C.resolve_config(cfg.to_json())
    assert again.to_json() == cfg.to_json()


def test_overrides_are_typed_and_nested(tmp_path: Path) -> None:
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump(tiny_run(tmp_path / "run")))
    cfg = C.load_config(
        p, ["train.steps=7", "train.lr=3e-4", "diffusion.schedule.kind=cosine_discrete", "model.channel_mult=[1,1]"]
    )
    assert cfg.run.train.steps == 7 and cfg.run.train.lr == pytest.approx(3e-4)
    assert cfg.run.diffusion.schedule == C.CosineDiscreteScheduleConfig(num_steps=100)
    assert cfg.model.channel_mult == [1, 1]
    # a whole section as YAML: another kind, without the keys of the first
    cfg = C.load_config(p, ["diffusion.schedule={kind: cosine, logsnr_max: 10}"])
    assert cfg.run.diffusion.schedule == C.CosineScheduleConfig(logsnr_max=10)


def _error(d: dict, tmp_path: Path, overrides: list[str] | None = None) -> str:
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(d))
    with pytest.raises(C.ConfigError) as e:
        C.load_config(p, overrides)
    return str(e.value)


def test_misspelt_key_names_the_key_and_the_valid_ones(tmp_path: Path) -> None:
    msg = _error(tiny_run(tmp_path, train={"lrr": 0.1}), tmp_path)
    assert "train.lrr" in msg and "unknown key" in msg and "lr" in msg.split("expected one of:")[1]
    assert len(msg.splitlines()) == 1


def test_misspelt_key_in_a_modality_section(tmp_path: Path) -> None:
    msg = _error(tiny_run(tmp_path, model={"chanels": 4}), tmp_path)
    assert "model.chanels" in msg and "channels" in msg


def test_wrong_type_names_key_value_and_expectation(tmp_path: Path) -> None:
    msg = _error(tiny_run(tmp_path), tmp_path, ["train.batch_size=lots"])
    assert "train.batch_size" in msg and "'lots'" in msg and "integer" in msg
    msg = _error(tiny_run(tmp_path, diffusion={"parameterization": "score"}), tmp_path)
    assert "diffusion.parameterization" in msg and "'score'" in msg and "'eps'" in msg


def test_unknown_sampler_and_modality(tmp_path: Path) -> None:
    msg = _error(tiny_run(tmp_path, sample={"sampler": "dpm_fast"}), tmp_path)
    assert "sample.sampler" in msg and "dpmpp_2m" in msg
    msg = _error(tiny_run(tmp_path, modality="smell"), tmp_path)
    assert "smell" in msg and "image" in msg


def test_folder_without_path(tmp_path: Path) -> None:
    msg = _error(tiny_run(tmp_path, data={"source": "folder"}), tmp_path)
    assert "data" in msg and "data.path" in msg


def test_every_error_line_starts_with_the_dotted_path_of_its_key(tmp_path: Path) -> None:
    """What the config fuzz (tests/test_faults.py) found: no pydantic member names, positions or
    bare validators in the path, and keys that would make the path ambiguous are quoted."""
    cases = {
        "train.cuda_graphs: Input should be a valid boolean or 'auto' (got [1])": {"train": {"cuda_graphs": [1]}},
        "sample.negative_class: Input should be a valid integer or a valid string (got [2])": {
            "sample": {"negative_class": [2]}
        },
        "train.adam_betas: too few items (got [0.5])": {"train": {"adam_betas": [0.5]}},
        "diffusion.noise_cond: 'timestep' needs a discrete schedule": {
            "diffusion": {"noise_cond": "timestep", "schedule": {"kind": "cosine"}}
        },
        "data.path: source 'folder' needs data.path": {"data": {"source": "folder"}},
        "'': unknown key": {"": 1},
        "train.'a.b': unknown key": {"train": {"a.b": 1}},
        "'x\\ny': unknown key": {"x\ny": 1},
    }
    for expected, sections in cases.items():
        with pytest.raises(C.ConfigError) as e:
            C.resolve_config(tiny_run(tmp_path, **sections))
        assert str(e.value).startswith(f"invalid config <dict>: {expected}") and "\n" not in str(e.value), str(e.value)


def test_bad_files_and_overrides(tmp_path: Path) -> None:
    with pytest.raises(C.ConfigError, match="does not exist"):
        C.load_config(tmp_path / "nope.yaml")
    (tmp_path / "x.yaml").write_text("modality: [image\n")
    with pytest.raises(C.ConfigError, match="not valid YAML"):
        C.load_config(tmp_path / "x.yaml")
    with pytest.raises(C.ConfigError, match="key.sub=value"):
        C.apply_overrides({}, ["train.steps"])
    with pytest.raises(C.ConfigError, match="not a section"):
        C.apply_overrides({"train": 3}, ["train.steps=4"])


@pytest.mark.parametrize("kind", C.SCHEDULE_KINDS)
def test_build_schedule_matches_the_schedule_classes(kind: str) -> None:
    steps = {"num_steps": 50} if kind in ("linear", "scaled_linear", "cosine_discrete") else {}
    sched = C.build_schedule(C.schedule_config(kind=kind, **steps))
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    lam = sched.logsnr(t)
    assert torch.all(lam[:-1] > lam[1:])  # log-SNR decreases in t
    if kind == "linear":
        expected = S.DiscreteSchedule.linear(50)
        assert torch.allclose(lam, expected.logsnr(t))
    shifted = C.build_schedule(C.schedule_config(kind=kind, **steps, shift_base_size=8), size=32)
    assert torch.allclose(shifted.logsnr(t), lam + 2 * torch.log(torch.tensor(8 / 32, dtype=torch.float64)))


def test_noise_scale_maps_every_condition_to_about_a_thousand() -> None:
    sched = S.DiscreteSchedule.linear(100)
    assert C.noise_scale("timestep", sched) * 99 == pytest.approx(999)
    assert C.noise_scale("timestep", S.DiscreteSchedule.linear(1000)) == 1.0
    assert C.noise_scale("t") == 1000.0


def test_misspelt_sampler_option_names_the_key_and_the_valid_ones(tmp_path: Path) -> None:
    msg = _error(tiny_run(tmp_path, sample={"sampler": "ddim", "options": {"etta": 0.5}}), tmp_path)
    assert "sample.options.etta" in msg and "'ddim'" in msg and "expected one of: eta, final_step" in msg
    assert len(msg.splitlines()) == 1
    msg = _error(tiny_run(tmp_path, sample={"sampler": "ddpm"}), tmp_path, ["sample.options.eta=0.5"])
    assert "sample.options.eta" in msg and "'ddpm'" in msg and "takes no options" in msg
    # values are checked against the kind of the option's default
    msg = _error(tiny_run(tmp_path, sample={"sampler": "unipc"}), tmp_path, ["sample.options.order=fast"])
    assert "sample.options.order" in msg and "integer" in msg and "'fast'" in msg


def test_valid_sampler_options_pass(tmp_path: Path) -> None:
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump(tiny_run(tmp_path / "run", sample={"sampler": "heun"})))
    cfg = C.load_config(p, ["sample.options.s_churn=1", "sample.options.final_step=jump"])
    assert cfg.run.sample.options == {"s_churn": 1, "final_step": "jump"}
    assert samplers.sampler_options("heun") == ("s_churn", "s_tmin", "s_tmax", "s_noise", "final_step")
    # a sampler that takes **kwargs accepts any option
    samplers.register_sampler("_test_open", stochastic=False, order=1)(lambda denoiser, x, sigmas, **kw: x)
    try:
        samplers.check_options("_test_open", {"anything": 1})
        assert C.SampleConfig(sampler="_test_open", options={"anything": 1}).options == {"anything": 1}
    finally:
        del samplers._REGISTRY["_test_open"]


def test_generate_checks_sampler_options_before_sampling() -> None:
    from multidiff.modality import DataInfo
    from multidiff.pipeline import generate

    def denoiser(x: torch.Tensor, sigma: torch.Tensor, **cond: object) -> torch.Tensor:
        raise AssertionError("sampled despite a bad option")

    with pytest.raises(
        C.ConfigError, match="sample.options.etta: unknown option 'etta' for sampler 'ddim'.*eta, final_step"
    ):
        generate(denoiser, DataInfo((1, 4)), n=2, sampler="ddim", steps=2, sigma_max=10.0, options={"etta": 0})


def test_cli_train_with_a_bad_sampler_option_exits_2_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from multidiff import cli

    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(tiny_run(tmp_path / "run")))
    assert cli.main(["train", str(cfg), "--set", "sample.options.bogus=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "sample.options.bogus" in err and "'ddim'" in err and "eta, final_step" in err, err
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written


def test_schedule_keys_are_those_of_its_kind(tmp_path: Path) -> None:
    msg = _error(tiny_run(tmp_path, diffusion={"schedule": {"kind": "edm", "beta_start": 1e-3}}), tmp_path)
    assert "diffusion.schedule.beta_start: unknown key for kind 'edm'" in msg
    assert "expected one of: kind, rho, shift_base_size, sigma_max, sigma_min, zero_terminal_snr" in msg
    msg = _error(tiny_run(tmp_path), tmp_path, ["diffusion.schedule.logsnr_min=-10"])  # tiny_run's is linear
    assert "diffusion.schedule.logsnr_min: unknown key for kind 'linear'" in msg and "beta_end" in msg
    msg = _error(tiny_run(tmp_path, diffusion={"schedule": {"kind": "edm", "rho": -1}}), tmp_path)
    assert "diffusion.schedule.rho:" in msg and "greater than 0" in msg
    msg = _error(tiny_run(tmp_path, diffusion={"schedule": {"kind": "karras"}}), tmp_path)
    assert "diffusion.schedule.kind: unknown kind 'karras'" in msg and "'edm'" in msg
    # every kind takes exactly the keys build_schedule reads, and the two common ones
    for kind in C.SCHEDULE_KINDS:
        assert C.schedule_config(kind=kind).kind == kind
    assert set(C.EDMScheduleConfig.model_fields) == {"kind", "sigma_min", "sigma_max", "rho", *COMMON_SCHEDULE_KEYS}
    assert set(C.VPLinearScheduleConfig.model_fields) == {"kind", *COMMON_SCHEDULE_KEYS}


COMMON_SCHEDULE_KEYS = ("shift_base_size", "zero_terminal_snr")


def test_schedule_kind_defaults_to_linear(tmp_path: Path) -> None:
    run = tiny_run(tmp_path)
    del run["diffusion"]
    assert C.resolve_config(run).run.diffusion.schedule == C.LinearScheduleConfig()
    run = tiny_run(tmp_path, diffusion={"schedule": {"num_steps": 20, "beta_end": 0.03}})
    assert C.resolve_config(run).run.diffusion.schedule == C.LinearScheduleConfig(num_steps=20, beta_end=0.03)
    assert C.DiffusionConfig().schedule == C.schedule_config() == C.LinearScheduleConfig()


# diffusion.schedule as meta.json held it before one model per kind: every kind's keys, flat
LEGACY_SCHEDULE = {
    "num_steps": 1000,
    "beta_start": None,
    "beta_end": None,
    "logsnr_min": -15.0,
    "logsnr_max": 15.0,
    "sigma_min": 0.002,
    "sigma_max": 80.0,
    "rho": 7.0,
    "shift_base_size": None,
    "zero_terminal_snr": False,
}


@pytest.mark.parametrize("kind", C.SCHEDULE_KINDS)
def test_a_legacy_flat_schedule_from_a_checkpoint_loads(tmp_path: Path, kind: str) -> None:
    saved = C.resolve_config(tiny_run(tmp_path)).to_json()
    saved["diffusion"]["schedule"] = {"kind": kind, **LEGACY_SCHEDULE, "shift_base_size": 8.0}
    legacy = json.loads(json.dumps(saved))
    with pytest.raises(C.ConfigError, match="unknown key"):  # a user's config stays strict
        C.resolve_config(legacy)
    cfg = C.config_from_json(json.dumps(legacy))
    assert legacy == saved  # the migration copies
    assert cfg.run.diffusion.schedule.kind == kind and cfg.run.diffusion.schedule.shift_base_size == 8.0
    assert cfg.run.diffusion.schedule == C.schedule_config(
        {k: v for k, v in saved["diffusion"]["schedule"].items() if k in type(cfg.run.diffusion.schedule).model_fields}
    )
    # a checkpoint folder's meta.json goes through the same migration
    from multidiff.checkpoint import Checkpoint

    assert C.resolve_config(Checkpoint(tmp_path, {"config": legacy}).config).to_json() == cfg.to_json()
    # today's configs pass unchanged
    assert C.migrate_config(cfg.to_json()) == cfg.to_json()


def test_a_legacy_schedule_value_the_kind_ignored_is_dropped_with_a_warning(tmp_path: Path) -> None:
    saved = C.resolve_config(tiny_run(tmp_path)).to_json()
    saved["diffusion"]["schedule"] = {**LEGACY_SCHEDULE, "kind": "edm", "beta_start": 0.001, "sigma_max": 40.0}
    with pytest.warns(UserWarning, match="kind 'edm' held beta_start=0.001, which that kind does not use"):
        cfg = C.config_from_json(json.dumps(saved))
    assert cfg.run.diffusion.schedule == C.EDMScheduleConfig(sigma_max=40.0)


def _network_fingerprint(net: torch.nn.Module) -> list[object]:
    """Every module's type and public attributes (dropout rates, groups, heads, checkpointing) and
    every weight's name and shape: two networks that differ in any UNet argument differ here."""
    mods = [
        (name, type(m).__name__, sorted((k, repr(v)) for k, v in vars(m).items() if not k.startswith("_")))
        for name, m in net.named_modules()
    ]
    return [mods, [(k, tuple(v.shape)) for k, v in net.state_dict().items()]]


def _another(key: str, value: object) -> object:
    """A different valid value for a model key."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, str):
        return {"conv": "box", "box": "conv"}[value]
    if isinstance(value, float):
        return 0.3 if value != 0.3 else 0.1
    if isinstance(value, int):
        return value // 2 if value >= 2 else value + 1
    assert isinstance(value, (list, tuple)), (key, value)
    if key.startswith("attention"):
        return [] if value else [0]
    return [value[0] + 1, *value[1:]]


@pytest.mark.parametrize(
    ("modality", "shape"), [("image", (3, 32, 32)), ("audio", (1, 2048)), ("voxel", (1, 16, 16, 16))]
)
def test_every_model_key_reaches_the_network(modality: str, shape: tuple[int, ...]) -> None:
    """No preset key or model override is dropped on the way to the network, for either backbone:
    changing any key the backbone takes (from its first preset, or from the network's default
    where that preset leaves it out) changes the network the adapter builds."""
    import inspect

    from multidiff import registry
    from multidiff.modality import DataInfo
    from multidiff.nn import UNet
    from multidiff.transformer import DiT

    adapter = registry.load_modality(modality)()
    mc = adapter.ModelConfig
    info = DataInfo(shape, 3)
    for backbone, cls in (("unet", UNet), ("dit", DiT)):
        presets = [p for p in mc.PRESETS if mc.preset_backbone(p) == backbone]
        preset = presets[0]
        keys = {k for p in presets for k in mc.PRESETS[p]} | mc.backbone_keys(backbone)
        keys -= {"preset", "backbone"}
        resolved = mc(preset=preset).resolved()
        defaults = {k: p.default for k, p in inspect.signature(cls).parameters.items()}
        base_net = adapter.build_network(mc(preset=preset), info, noise_scale=1.0)
        assert isinstance(base_net, cls)
        base = _network_fingerprint(base_net)
        # the cross-attention keys act on a network built for a text encoder's widths (model.with_text)
        cross = {"cross_attention_levels": [0], "cross_attention_resolutions": [shape[-1]]}
        base_text = _network_fingerprint(
            adapter.build_network(mc(preset=preset).with_text(16, 8), info, noise_scale=1.0)
        )
        assert base_text != base
        for key in sorted(keys):
            if key in cross:
                model = mc(preset=preset, **{key: cross[key]}).with_text(16, 8)
                net = adapter.build_network(model, info, noise_scale=1.0)
                assert _network_fingerprint(net) != base_text, f"{modality} {backbone} model.{key} changes nothing"
                continue
            value = resolved[key] if key in resolved else defaults[key]
            model = mc(preset=preset, **{key: _another(key, value)})
            net = adapter.build_network(model, info, noise_scale=1.0)
            assert _network_fingerprint(net) != base, f"{modality} {backbone} model.{key} does not change the network"


@pytest.mark.parametrize("modality", ["image", "audio", "voxel"])
def test_backbone_picks_the_network_and_refuses_the_other_backbones_keys(modality: str) -> None:
    from multidiff.nn import UNet
    from multidiff.transformer import DiT

    base = {"modality": modality}
    cfg = C.resolve_config({**base, "model": {"backbone": "dit"}})
    assert cfg.model.preset == "dit_tiny" and cfg.model.network_backbone == "dit"
    assert C.resolve_config({**base, "model": {"preset": "dit_tiny"}}).model.network_backbone == "dit"
    assert C.resolve_config({**base, "model": {"backbone": "unet"}}).model.preset == "tiny"
    shape = {"image": (1, 16, 16), "audio": (1, 2048), "voxel": (1, 16, 16, 16)}[modality]
    from multidiff.modality import DataInfo

    info = DataInfo(shape, 2)
    assert isinstance(cfg.adapter.build_network(cfg.model, info, noise_scale=1.0), DiT)
    unet_cfg = C.resolve_config(base)
    assert isinstance(unet_cfg.adapter.build_network(unet_cfg.model, info, noise_scale=1.0), UNet)
    with pytest.raises(C.ConfigError, match=r"model\.channels: channels is a key of the unet backbone, not of 'dit'"):
        C.resolve_config({**base, "model": {"backbone": "dit", "channels": 8}})
    with pytest.raises(C.ConfigError, match=r"model\.depth: depth, width are keys of the dit backbone, not of 'unet'"):
        C.resolve_config({**base, "model": {"preset": "tiny", "width": 64, "depth": 2}})
    with pytest.raises(C.ConfigError, match=r"model\.backbone: backbone 'dit' does not fit preset 'tiny'.*dit_tiny"):
        C.resolve_config({**base, "model": {"preset": "tiny", "backbone": "dit"}})
    with pytest.raises(C.ConfigError, match=r"model\.patch_size"):
        C.resolve_config({**base, "model": {"backbone": "dit", "patch_size": 0}})
    # a saved config (every key written out, the other backbone's as null) reads back the same
    assert C.config_from_json(json.dumps(cfg.to_json())).model == cfg.model


def test_a_checkpoint_saved_with_a_legacy_flat_schedule_loads(tmp_path: Path) -> None:
    from multidiff import cli
    from multidiff.checkpoint import find_checkpoint
    from multidiff.pipeline import load_pipeline

    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(tiny_run(tmp_path / "run", train={"steps": 1, "checkpoint_every": 1})))
    assert cli.main(["train", str(cfg)]) == 0
    meta_path = find_checkpoint(tmp_path / "run").path / "meta.json"
    meta = json.loads(meta_path.read_text())
    assert meta["config"]["diffusion"]["schedule"] == {
        "kind": "linear",
        "num_steps": 100,
        "beta_start": None,
        "beta_end": None,
        "shift_base_size": None,
        "zero_terminal_snr": False,
    }
    meta["config"]["diffusion"]["schedule"] = {**LEGACY_SCHEDULE, "kind": "linear", "num_steps": 100}
    meta_path.write_text(json.dumps(meta))
    pipe = load_pipeline(str(tmp_path / "run"), device="cpu")
    assert pipe.config.run.diffusion.schedule == C.LinearScheduleConfig(num_steps=100)
