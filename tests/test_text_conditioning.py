"""Text conditioning end to end: the text section, training with a learned or frozen encoder
(exact resume at ranks 1, 2, 3), checkpoints, prompts and negative prompts in guidance, sampling,
edits and the command line, and the output checker."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest
import torch
from helpers import tiny_run
from safetensors.torch import load_file

from multidiff import config as C
from multidiff import grids as G
from multidiff import registry
from multidiff import samplers as SM
from multidiff.checkpoint import find_checkpoint, list_checkpoints
from multidiff.cli import main
from multidiff.conditioning import TextConditionedNet, negative_rows, prompt_encoding, text_negative
from multidiff.modality import DataConfig, DataInfo, Modality, PresetModelConfig, StrictModel, TensorDataset
from multidiff.pipeline import class_guidance, load_pipeline
from multidiff.testing import GaussianMixture
from multidiff.text import LearnedTextEncoder, TextEncoder, TextEncoding
from multidiff.train import Trainer, _MetricsLog

TEXT = {"width": 16, "depth": 1, "heads": 2, "max_tokens": 12, "dropout": 0.3}


# ---------------------------------------------------------------- a captioned toy modality of any rank


class ToyModel(PresetModelConfig):
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "toy": {"channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_levels": [1], "head_channels": 8}
    }
    preset: Literal["toy"] = "toy"


class ToyData(DataConfig):
    shape: list[int]


class _Captioned(TensorDataset):
    def __init__(self, x: torch.Tensor, labels: torch.Tensor, captions: list[str]) -> None:
        super().__init__(x, labels)
        self.captions = captions


class ToyText(Modality[ToyModel, ToyData]):
    """Blobs of any rank whose caption says their sign and class; samples saved as tensors."""

    name: ClassVar[str] = "toytext"
    ModelConfig: ClassVar[type[StrictModel]] = ToyModel
    DataConfig: ClassVar[type[StrictModel]] = ToyData

    def build_dataset(self, data: ToyData):
        g = torch.Generator().manual_seed(0)
        n = 48
        labels = torch.arange(n) % 3
        sign = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0)
        x = (0.5 * sign.view(-1, *[1] * len(data.shape)) + 0.2 * torch.randn(n, *data.shape, generator=g)).clamp(-1, 1)
        words = ["red", "green", "blue"]
        caps = [f"a {'bright' if s > 0 else 'dark'} {words[int(y)]} blob" for s, y in zip(sign, labels)]
        info = DataInfo(tuple(data.shape), 3 if data.class_conditional else 0)
        return _Captioned(x, labels, caps), info

    def build_network(self, model: ToyModel, info: DataInfo, *, noise_scale: float, learned_variance: bool = False):
        return model.build_network(
            len(info.shape) - 1, info, noise_scale=noise_scale, learned_variance=learned_variance
        )

    def save_samples(self, x, path: Path, info: DataInfo, *, labels=None) -> list[Path]:
        p = Path(path).with_suffix(".pt")
        p.parent.mkdir(parents=True, exist_ok=True)
        torch.save(x, p)
        return [p]


def _toy_run(out: Path, shape: list[int], **train: Any) -> dict[str, Any]:
    return {
        "modality": "toytext",
        "out_dir": str(out),
        "data": {"shape": shape, "captions": True},
        "text": dict(TEXT),
        "diffusion": {"schedule": {"kind": "cosine_discrete", "num_steps": 100}, "parameterization": "v"},
        "train": {
            "steps": 3,
            "batch_size": 8,
            "grad_accum": 2,
            "label_dropout": 0.2,
            "lr": 1e-3,
            "warmup_steps": 2,
            "ema_decay": 0.9,
            "log_every": 1,
            "checkpoint_every": 0,
            "progress": False,
            "device": "cpu",
            **train,
        },
        "sample": {"steps": 2, "num_samples": 4, "sampler": "ddim"},
    }


@pytest.fixture
def toytext(monkeypatch: pytest.MonkeyPatch) -> None:
    real = registry.load_modality
    monkeypatch.setattr(registry, "load_modality", lambda name: ToyText if name == "toytext" else real(name))


def _fit(d: dict, resume: bool = False) -> Trainer:
    tr = Trainer(C.resolve_config(d), resume=resume)
    tr.fit()
    return tr


def _weights(run: Path) -> tuple[dict, dict]:
    ck = list_checkpoints(run)[-1]
    return load_file(str(ck / "model.safetensors")), load_file(str(ck / "ema.safetensors"))


@pytest.mark.parametrize("shape", [[2, 16], [1, 8, 8], [1, 4, 4, 4]], ids=["rank1", "rank2", "rank3"])
def test_a_text_run_trains_jointly_and_resumes_bit_exactly(tmp_path: Path, toytext: None, shape: list[int]) -> None:
    """A learned encoder trains with the network (its weights move, in the optimizer and the
    EMA), class labels and text together, caption and label dropout, two micro-steps a step: 2
    steps + a resume to 3 computes exactly what 3 steps in one run do."""
    init = Trainer(C.resolve_config(_toy_run(tmp_path / "init", shape)))  # the weights a run starts from
    whole = _fit(_toy_run(tmp_path / "whole", shape))
    assert isinstance(whole.net, TextConditionedNet) and isinstance(whole.net.text, LearnedTextEncoder)
    assert any(p is whole.net.text.embed.weight for g in whole.opt.param_groups for p in g["params"])
    part = _toy_run(tmp_path / "part", shape)
    part["train"]["steps"] = 2
    _fit(part)
    part["train"]["steps"] = 3
    _fit(part, resume=True)
    rows = [_MetricsLog.read(tmp_path / r / "metrics.csv") for r in ("whole", "part")]
    assert [(r["step"], r["loss"], r["grad_norm"]) for r in rows[0]] == [
        (r["step"], r["loss"], r["grad_norm"]) for r in rows[1]
    ]
    (m1, e1), (m2, e2) = _weights(tmp_path / "whole"), _weights(tmp_path / "part")
    assert m1.keys() == m2.keys() and "text.spec_json" in m1 and "text.embed.weight" in m1 and "net.out.2.weight" in m1
    assert all(torch.equal(m1[k], m2[k]) for k in m1) and all(torch.equal(e1[k], e2[k]) for k in e1)
    # the encoder trained with the network, and its EMA followed
    start = init.net.text.embed.weight.detach()
    assert not torch.equal(m1["text.embed.weight"], start) and not torch.equal(e1["text.embed.weight"], start)
    assert not torch.equal(e1["text.embed.weight"], m1["text.embed.weight"])
    if len(shape) == 3:  # (once) another seed trains other weights, so the equality above means something
        _fit(_toy_run(tmp_path / "other", shape, seed=1))
        assert not all(torch.equal(m1[k], _weights(tmp_path / "other")[0][k]) for k in m1)


def test_the_checkpoint_round_trips_the_learned_encoder_and_its_vocabulary(tmp_path: Path, toytext: None) -> None:
    tr = _fit(_toy_run(tmp_path / "run", [1, 8, 8]))
    ck = find_checkpoint(tmp_path / "run")
    assert {p.name for p in ck.path.iterdir()} == {"model.safetensors", "ema.safetensors", "meta.json", "state.pt"}
    assert ck.meta["text"]["kind"] == "learned" and ck.meta["text"]["vocabulary"] == len(tr.net.text.tokenizer)
    assert ck.meta["data_info"]["extra"]["example_prompts"][:2] == ["a bright red blob", "a dark green blob"]
    pipe = load_pipeline(tmp_path / "run", device="cpu")
    enc, ema = pipe.text, tr.ema.text
    assert isinstance(enc, LearnedTextEncoder) and enc.tokenizer.vocab == ema.tokenizer.vocab
    assert enc.tokenizer.vocab[3:] == ["a", "blob", "bright", "dark", "blue", "green", "red"]  # by frequency
    sd, sd_ema = enc.state_dict(), ema.state_dict()
    assert sd.keys() == sd_ema.keys() and all(torch.equal(sd[k], sd_ema[k]) for k in sd)
    caps = ["a dark blue blob", "a bright thing"]  # "thing" is not in the vocabulary: <unk>
    a, b = enc.encode(caps), ema.encode(caps)
    assert torch.equal(a.states, b.states) and torch.equal(a.pooled, b.pooled)
    # a checkpoint whose text section says learned but whose weights hold no encoder is refused by name
    from multidiff.conditioning import load_text_encoder

    with pytest.raises(ValueError, match="weights hold none"):
        load_text_encoder(pipe.config, {k: v for k, v in sd.items() if False})


# ---------------------------------------------------------------- a frozen encoder through the cache


class _FrozenToy(TextEncoder):
    """A frozen encoder (its "backbone" is arithmetic): each word's letters as a state; counts calls."""

    frozen = True
    calls = 0

    def __init__(self) -> None:
        super().__init__(6, 6, 8)

    def identity(self) -> str:
        return "frozen-toy:v1"

    def spec(self) -> dict[str, Any]:
        return {"kind": "hf", "path": "toy", "max_tokens": self.max_tokens}

    def encode(self, texts):
        type(self).calls += len(texts)
        rows = [
            [torch.full((6,), sum(map(ord, w)) % 13 / 13.0) for w in t.split()][:8] or [torch.zeros(6)] for t in texts
        ]
        n = max(len(r) for r in rows)
        states, mask = torch.zeros(len(texts), n, 6), torch.zeros(len(texts), n, dtype=torch.bool)
        for i, r in enumerate(rows):
            states[i, : len(r)], mask[i, : len(r)] = torch.stack(r), True
        return TextEncoding(states.to(self.device), mask.to(self.device), states.mean(1).to(self.device))


def test_a_frozen_encoder_trains_from_its_cache_and_keeps_only_the_null(
    tmp_path: Path, toytext: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from multidiff import conditioning

    monkeypatch.setattr(conditioning, "build_text_encoder", lambda cfg, **kw: _FrozenToy())
    d = _toy_run(tmp_path / "run", [2, 16])
    d["text"] = {"kind": "hf", "path": "toy", "max_tokens": 8, "dropout": 0.5}
    _FrozenToy.calls = 0
    init = Trainer(C.resolve_config(d))
    null0 = init.net.text.null.states.detach().clone()
    assert _FrozenToy.calls == 6  # the 6 distinct captions, once, into the cache
    from multidiff.text import default_text_cache_dir, text_cache_key

    captions = init.text.captions
    assert (default_text_cache_dir() / text_cache_key("frozen-toy:v1", captions)).is_file()
    _FrozenToy.calls = 0
    _fit(d)
    assert _FrozenToy.calls == 0  # the second trainer read the cache, and training encodes nothing
    model, _ = _weights(tmp_path / "run")
    assert sorted(k for k in model if k.startswith("text.")) == ["text.null.pooled", "text.null.states"]
    assert not torch.equal(model["text.null.states"], null0)  # the null embedding trained (half the captions)
    # an EMA copy of a network beside a frozen encoder shares the encoder's backbone, copies its null
    import copy

    from multidiff.text import _FrozenBackbone

    class Wrapped(_FrozenBackbone):
        def encode(self, texts):
            raise NotImplementedError

    w = Wrapped(4, 4, 8)
    w._set_backbone(torch.nn.Linear(4, 4))
    twin = copy.deepcopy(w)
    assert twin.__dict__["_backbone"] is w.__dict__["_backbone"] and twin.null.states is not w.null.states
    pipe = load_pipeline(tmp_path / "run", device="cpu")
    x, _ = pipe.sample(3, prompt="a dark red blob", guidance_scale=2.0, negative_prompt="a bright blob")
    assert x.shape == (3, 2, 16) and torch.isfinite(x).all()


# ---------------------------------------------------------------- guidance


class _TokenMock:
    """A denoiser whose estimate is the mean of the real tokens' states, per row (a mock
    conditional model whose output depends only on the text); records each call's batch size."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **cond: Any) -> torch.Tensor:
        self.calls.append(x.shape[0])
        w = cond["token_mask"].to(x.dtype)[..., None]
        mean = (cond["tokens"] * w).sum(1) / w.sum(1).clamp_min(1)  # (B, D)
        return x * 0 + mean.mean(1).view(-1, *[1] * (x.ndim - 1)) + cond["pooled"][:, :1].view(-1, *[1] * (x.ndim - 1))


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_guidance_with_text_scale_one_and_the_negative_prompt(rank: int) -> None:
    enc = LearnedTextEncoder.from_captions(["a thick 7", "a thin 3 leaning left", "nothing"], width=8, depth=1, heads=2)
    torch.manual_seed(0)
    for p in enc.parameters():
        p.data.normal_()
    x = torch.randn(4, *[3] * rank)
    sigma = torch.full((4,), 2.0)
    cond = prompt_encoding(enc, ["a thick 7", "a thin 3", "a thick 7", "leaning left"]).as_cond()
    mock = _TokenMock()
    d_cond = mock(x, sigma, **cond)
    # scale 1 is the conditional denoiser itself
    assert class_guidance(mock, 0, 1.0, text_negative=text_negative(enc, "nothing")) is mock
    # scale w: D_neg + w (D_cond - D_neg), with the negative prompt's encoding as D_neg, in one doubled call
    for negative in (None, "nothing"):
        neg = text_negative(enc, negative)
        mock.calls.clear()
        out = class_guidance(mock, 0, 3.0, text_negative=neg)(x, sigma, **cond)
        assert mock.calls == [8]  # both branches in one batch: the negative is padded to the prompts' length
        d_neg = mock(x, sigma, **negative_rows(neg, cond))
        torch.testing.assert_close(out, d_neg + 3.0 * (d_cond - d_neg))
        expect = enc.encode([negative]) if negative else enc.null_encoding(1)
        torch.testing.assert_close(
            d_neg[:, 0].flatten()[:1], mock(x[:1], sigma[:1], **expect.as_cond())[:, 0].flatten()[:1]
        )
    null_out = class_guidance(mock, 0, 3.0, text_negative=text_negative(enc, None))(x, sigma, **cond)
    assert not torch.allclose(out, null_out)  # the negative prompt replaced the null branch
    # with class labels too, the negative branch drops both conditions
    seen = []
    both = class_guidance(lambda x, s, **c: seen.append(c) or mock(x, s, **c), 5, 2.0, text_negative=neg)
    both(x, sigma, **cond, class_labels=torch.tensor([0, 1, 2, 3]))
    assert seen[0]["class_labels"].tolist() == [0, 1, 2, 3, 5, 5, 5, 5]


def test_the_network_uses_the_null_embedding_without_text(tmp_path: Path, toytext: None) -> None:
    tr = Trainer(C.resolve_config(_toy_run(tmp_path / "r", [1, 8, 8])))
    net = tr.net.eval()
    x, c = torch.randn(2, 1, 8, 8), torch.rand(2)
    null = net.text.null_encoding(2, net.text.max_tokens).as_cond()
    with torch.no_grad():
        torch.testing.assert_close(net(x, c), net(x, c, **null))
        ids, mask = net.text.tokenize(["a dark red blob", "a bright blue blob"])
        by_ids = net(x, c, text_ids=ids, text_mask=mask)
        by_enc = net(x, c, **net.text.encode(["a dark red blob", "a bright blue blob"]).as_cond())
        torch.testing.assert_close(by_ids, by_enc)
        dropped = net(x, c, text_ids=ids, text_mask=mask, text_drop=torch.tensor([True, False]))
        torch.testing.assert_close(dropped[0], net(x, c)[0])
        torch.testing.assert_close(dropped[1], by_ids[1])
    assert net.dims == 2 and net.self_condition is False  # the network's attributes, through the wrapper


# ---------------------------------------------------------------- sampling, edits, the command line, the checker


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny class- and text-conditional digits run (8x8, 3 steps)."""
    out = tmp_path_factory.mktemp("digits") / "run"
    d = tiny_run(out, data={"source": "digits", "size": 8, "limit": 256, "captions": True}, text=dict(TEXT))
    d["train"]["steps"] = 3
    torch.set_num_threads(1)
    _fit(d)
    return out


def flag_threes(x: torch.Tensor, *, prompts: list[str] | None, labels: torch.Tensor | None) -> torch.Tensor:
    """An output checker that flags class 3 (and records what it saw)."""
    SEEN.append((x.shape[0], prompts, labels))
    return labels == 3


SEEN: list[Any] = []


def test_sampling_takes_prompts_one_for_all_or_one_each(digits_run: Path) -> None:
    pipe = load_pipeline(digits_run, device="cpu")
    a = pipe.sample(4, prompt="a thick 3", guidance_scale=2.0, seed=1)
    b = pipe.sample(4, prompt=["a thick 3"] * 4, guidance_scale=2.0, seed=1)
    c = pipe.sample(4, prompt="a thin small 7 leaning left", guidance_scale=2.0, seed=1)
    assert a.prompts == ["a thick 3"] * 4 and torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    d = pipe.sample(4, prompt="a thick 3", guidance_scale=2.0, negative_prompt="a 7", seed=1)
    assert not torch.equal(a.x, d.x)
    default = pipe.sample(3, seed=1)
    assert default.prompts == pipe.info.extra["example_prompts"][:3]
    with pytest.raises(ValueError, match="one per sample"):
        pipe.sample(4, prompt=["a", "b"])


def test_edits_take_prompts(digits_run: Path) -> None:
    pipe = load_pipeline(digits_run, device="cpu")
    x = pipe.training_examples(1)
    kw = {"steps": 2, "seed": 0, "guidance_scale": 2.0}
    e3 = pipe.sdedit(x, 0.6, n=2, prompt="a thick 3", **kw)
    e7 = pipe.sdedit(x, 0.6, n=2, prompt="a thin 7", **kw)
    assert e3.shape == (2, 1, 8, 8) and not torch.equal(e3, e7)
    mask = pipe.mask(region="0:0.5,0:1")
    inp = pipe.inpaint(x, mask, n=1, prompt="a thick 3", method="replace", **kw)
    assert torch.equal(inp[:, :, 4:], x[:, :, 4:])  # the known half exactly as given
    frames = pipe.interpolate(x, x, 3, prompt="a thick 3", prompt_b="a thin 7", steps=2)
    same = pipe.interpolate(x, x, 3, prompt="a thick 3", steps=2)
    assert torch.equal(frames[0], same[0]) and not torch.equal(frames[-1], same[-1])
    edited, m = pipe.diffedit(x, prompt="a thick 3", reference_prompt="a thin 7", steps=2, strength=0.5)
    assert edited.shape == x.shape and m.dtype == torch.bool


def test_a_model_without_text_refuses_prompts(tmp_path: Path) -> None:
    d = tiny_run(tmp_path / "plain")
    d["train"]["steps"] = 1
    _fit(d)
    pipe = load_pipeline(tmp_path / "plain", device="cpu")
    assert pipe.text is None
    for kw in ({"prompt": "a 3"}, {"negative_prompt": "a 3", "guidance_scale": 2.0}):
        with pytest.raises(ValueError, match="trained without text"):
            pipe.sample(2, **kw)
    with pytest.raises(ValueError, match="trained without text"):
        pipe.sdedit(pipe.training_examples(1), 0.5, prompt="a 3", steps=1)


def test_sample_command_with_prompts_writes_files(digits_run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "s"
    argv = ["sample", str(digits_run), "--prompt", "a thick 3", "--negative-prompt", "a 7", "-n", "4"]
    assert main([*argv, "--steps", "2", "--guidance", "2", "--out", str(out), "--device", "cpu"]) == 0
    assert (tmp_path / "s.png").is_file()
    record = json.loads((tmp_path / "s.json").read_text())
    assert record["prompts"] == ["a thick 3"] * 4 and record["screening"] is None and record["samples"] == 4
    out2 = tmp_path / "two"
    assert (
        main(
            [
                "sample",
                str(digits_run),
                "--prompt",
                "a 3",
                "--prompt",
                "a 7",
                "-n",
                "2",
                "--steps",
                "1",
                "--out",
                str(out2),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "two.json").read_text())["prompts"] == ["a 3", "a 7"]
    assert "wrote" in capsys.readouterr().out


def test_the_checker_replaces_or_drops_and_counts(digits_run: Path, tmp_path: Path, capsys) -> None:
    pipe = load_pipeline(digits_run, device="cpu")
    SEEN.clear()
    spec = f"{__name__}:flag_threes"
    plain = pipe.sample(10, steps=2, batch_size=4)
    rep = pipe.sample(10, steps=2, checker=spec, batch_size=4)
    assert [s[0] for s in SEEN] == [4, 4, 2] and SEEN[0][1] == pipe.info.extra["example_prompts"][:4]  # every batch
    assert rep.screening.to_json() == {
        "checker": spec,
        "action": "replace",
        "checked": 10,
        "flagged": 1,
        "replaced": 1,
        "dropped": 0,
    }
    assert (rep.x[3] == 0).all() and torch.equal(rep.x[:3], plain.x[:3]) and torch.equal(rep.x[4:], plain.x[4:])
    drop = pipe.sample(10, steps=2, checker=spec, checker_action="drop", batch_size=4)
    assert drop.x.shape[0] == 9 and 3 not in drop.labels.tolist() and len(drop.prompts) == 9
    assert torch.equal(drop.x[3:], plain.x[4:]) and drop.screening.dropped == 1
    # the command line prints the count and writes it beside the samples
    argv = ["sample", str(digits_run), "-n", "10", "--steps", "2", "--checker", spec, "--checker-action", "drop"]
    assert main([*argv, "--out", str(tmp_path / "c")]) == 0
    assert "flagged 1 of 10 outputs (dropped)" in capsys.readouterr().out
    assert json.loads((tmp_path / "c.json").read_text())["screening"]["dropped"] == 1
    # an edit's outputs go through it too
    made = pipe.screened(torch.ones(3, 1, 8, 8), pipe.options(checker=spec), labels=torch.tensor([3, 1, 3]))
    assert made.screening.flagged == 2 and (made.x[0] == 0).all() and (made.x[1] == 1).all()
    for bad, match in (
        ("nowhere.module:f", "cannot import"),
        ("json:nothing", "has no"),
        ("nocolon", "module:function"),
    ):
        with pytest.raises(ValueError, match=match):
            pipe.sample(2, steps=1, checker=bad)


def test_the_classifier_checker_flags_the_classes_named(digits_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``checker: classifier:3`` asks the run's data classifier; here a stand-in that calls
    everything brighter than its mean a 3."""
    from multidiff import pipeline

    def fake(config, info, device="cpu", **kw):
        return lambda x, labels: torch.where((x.flatten(1).mean(1) > -0.6) == (labels == 3), 0.0, -5.0)

    monkeypatch.setattr(pipeline, "data_classifier", fake)
    pipe = load_pipeline(digits_run, device="cpu")
    x = torch.full((4, 1, 8, 8), -1.0)
    x[1] = 1.0
    made = pipe.screened(x, pipe.options(checker="classifier:3"))
    assert made.screening.flagged == 1 and (made.x[1] == 0).all() and (made.x[0] == -1).all()
    with pytest.raises(ValueError, match="must be one of"):
        pipe.screened(x, pipe.options(checker="classifier:eleven"))


# ---------------------------------------------------------------- config errors


def test_text_config_errors_name_their_keys(tmp_path: Path, toytext: None) -> None:
    d = tiny_run(tmp_path, text={"kind": "learned"})
    with pytest.raises(C.ConfigError, match=r"text: a text section needs captioned data: set data.captions: true"):
        C.resolve_config(d)
    d = tiny_run(tmp_path, model={"cross_attention_resolutions": [4]})
    with pytest.raises(C.ConfigError, match=r"model.cross_attention_resolutions: cross-attention needs a text section"):
        C.resolve_config(d)
    d = tiny_run(tmp_path, data={"captions": True}, text={"kind": "bert"})
    with pytest.raises(C.ConfigError, match=r"text.kind: unknown kind 'bert'"):
        C.resolve_config(d)
    d = tiny_run(tmp_path, data={"captions": True}, text={"width": 10, "heads": 4})
    with pytest.raises(C.ConfigError, match=r"text.heads: width \(10\) must be divisible by heads \(4\)"):
        C.resolve_config(d)
    d = tiny_run(tmp_path, data={"captions": True}, text={"dropout": 1.5, "colour": 1})
    with pytest.raises(
        C.ConfigError, match=r"2 problems:\n  text.max_tokens|text.dropout.*\n  text.colour: unknown key"
    ):
        C.resolve_config(d)
    d = tiny_run(tmp_path, model={"cross_attention_resolutions": [4], "cross_attention_levels": [0]}, text={})
    d["data"]["captions"] = True
    with pytest.raises(C.ConfigError, match="not both"):
        C.resolve_config(d)
    d = tiny_run(tmp_path, data={"captions": True}, text={})
    d["model"] = {"preset": "dit_tiny", "cross_attention_levels": [0]}
    with pytest.raises(C.ConfigError, match="cross_attention_levels is a key of the unet backbone"):
        C.resolve_config(d)
    d = tiny_run(tmp_path, data={"captions": True, "source": "mnist"}, text={})
    with pytest.raises(ValueError, match="has no captions"):
        Trainer(C.resolve_config(d))
    # a text section on data that says it is captioned but holds no captions
    d = _toy_run(tmp_path / "t", [2, 16])
    monkey = ToyText.build_dataset

    def plain(self, data):
        ds, info = monkey(self, data)
        return TensorDataset(ds.x, ds.labels), info

    ToyText.build_dataset = plain  # type: ignore[method-assign]
    try:
        with pytest.raises(ValueError, match="has no captions; set data.captions: true"):
            Trainer(C.resolve_config(d))
    finally:
        ToyText.build_dataset = monkey  # type: ignore[method-assign]
    # ok: a text section with captions, saved and read back
    ok = tiny_run(tmp_path, data={"captions": True}, text={"dropout": 0.2})
    cfg = C.resolve_config(ok)
    assert cfg.run.text.kind == "learned" and cfg.to_json()["text"]["dropout"] == 0.2
    assert C.resolve_config(cfg.to_json()).run.text == cfg.run.text


# ---------------------------------------------------------------- data parallel


@pytest.mark.slow  # real torchrun processes
def test_two_processes_train_a_text_run_as_one_does(tmp_path: Path) -> None:
    """Under torchrun (gloo, 2 processes) a learned encoder's run trains the weights one process
    trains with the same global batch: the encoder's gradients are all-reduced with the network's,
    and the caption dropout is drawn for the global batch."""
    from test_distributed import _max_diff, _torchrun

    def config(out: str) -> dict[str, Any]:
        d = tiny_run(Path(out), data={"source": "digits", "size": 8, "limit": 256, "captions": True}, text=dict(TEXT))
        d["train"].update(steps=3, batch_size=16, grad_accum=2, checkpoint_every=3, label_dropout=0.2)
        d["out_dir"] = out
        return d

    one = tmp_path / "one"
    Trainer(C.resolve_config(config(str(one)))).fit()
    out = _torchrun(tmp_path / "ddp", 2, config("run"))
    assert "cpu x 2 processes (global batch 16)" in out.stdout
    (ddp_model, ddp_ema), (ref_model, ref_ema) = _weights(tmp_path / "ddp" / "ranks" / "rank0" / "run"), _weights(one)
    assert any(k.startswith("text.") for k in ddp_model)
    assert _max_diff(ddp_model, ref_model) < 2e-4 and _max_diff(ddp_ema, ref_ema) < 2e-4
    # the encoder moved (its gradient comes through zero-initialised cross-attention, so slowly at
    # first), and the two runs' encoders agree to a small fraction of how far it moved
    keys = [k for k, v in ref_model.items() if k.startswith("text.") and v.is_floating_point()]
    init = Trainer(C.resolve_config(config(str(tmp_path / "init")))).net.state_dict()
    moved = _max_diff({k: ref_model[k] for k in keys}, {k: init[k] for k in keys})
    assert moved > 1e-4 and _max_diff({k: ddp_model[k] for k in keys}, {k: ref_model[k] for k in keys}) < 0.1 * moved
    loss = [r["loss"] for r in _MetricsLog.read(tmp_path / "ddp" / "ranks" / "rank0" / "run" / "metrics.csv")]
    assert loss == pytest.approx([r["loss"] for r in _MetricsLog.read(one / "metrics.csv")], rel=1e-5)


# ---------------------------------------------------------------- a negative prompt, measured on exact truth


class _TextKeyedMixture:
    """The exact denoiser of a Gaussian mixture whose components carry words ("3", "7", "thick",
    "thin"): a prompt's encoding is read back to its words by matching the encoder's pooled vector
    against the prompts it knows, and restricts the mixture to the components that have every
    word; an unknown encoding (the null embedding) leaves the whole mixture."""

    def __init__(self, gm: GaussianMixture, words: list[set[str]], encoder: LearnedTextEncoder, prompts: list[str]):
        self.gm, self.words = gm, words
        self.keys = self._key(**encoder.encode(prompts).as_cond())
        self.allowed = [[all(w in comp for w in p.split() if w != "a") for comp in words] for p in prompts]

    @staticmethod
    def _key(tokens, token_mask, pooled):
        """The pooled vector and the mean of the real tokens' states (a random pooled vector alone
        may not tell "a 3" from "a 7")."""
        w = token_mask.double()[..., None]
        return torch.cat([pooled.double(), (tokens.double() * w).sum(1) / w.sum(1).clamp_min(1)], 1)

    def __call__(self, x, sigma, *, tokens, token_mask, pooled):
        d = torch.cdist(self._key(tokens, token_mask, pooled), self.keys)  # (B, prompts)
        best = d.argmin(1)
        known = d.gather(1, best[:, None])[:, 0] < 1e-6
        everything = torch.ones(len(self.words), dtype=torch.bool)
        keep = torch.stack([torch.tensor(self.allowed[i]) if k else everything for i, k in zip(best.tolist(), known)])
        gm, xd, s = self.gm, x.double(), sigma.double()
        log_joint = gm._log_joint(xd, s).masked_fill(~keep, -math.inf)  # p(k | x, words) up to a constant
        r = torch.softmax(log_joint, dim=1)
        tot = gm.vars.unsqueeze(0) + s.view(-1, *[1] * x.ndim) ** 2
        comp = gm.means.unsqueeze(0) + gm.vars.unsqueeze(0) / tot * (xd.unsqueeze(1) - gm.means.unsqueeze(0))
        return torch.einsum("bk,bk...->b...", r, comp).to(x.dtype)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_a_negative_prompt_steers_samples_away_from_what_it_says(rank: int) -> None:
    """'a 3' with the negative prompt 'thick' gives fewer thick 3s than 'a 3' guided against the
    null text at guidance 3 (measured: about 0.5 against 0.05-0.17 at ranks 1-3), through the real
    guidance path (class_guidance with text_negative) and a sampler."""
    shape = (1, *[4] * rank)
    g = torch.Generator().manual_seed(rank)
    words = [{"3", "thick"}, {"3", "thin"}, {"7", "thick"}, {"7", "thin"}]
    thick_dir = torch.randn(shape, generator=g, dtype=torch.float64)
    digit_dir = torch.randn(shape, generator=g, dtype=torch.float64)
    means = torch.stack([(1 if "thick" in w else -1) * thick_dir + (1 if "3" in w else -1) * digit_dir for w in words])
    gm = GaussianMixture(0.5 * means, 0.3)
    prompts = ["a 3", "thick", "a thick 3", "a thin 3"]
    enc = LearnedTextEncoder.from_captions(prompts + ["a 7", "a thin 7", "a thick 7"], width=8, depth=1, heads=2)
    torch.manual_seed(0)
    for p in enc.parameters():
        p.data.normal_()
    den = _TextKeyedMixture(gm, words, enc, prompts)
    n = 200
    cond = prompt_encoding(enc, ["a 3"] * n).as_cond()
    sig = G.make_grid("karras", 24, sigma_min=0.01, sigma_max=20.0)
    x_t = 20.0 * torch.randn((n, *shape), generator=g, dtype=torch.float64)

    def thick_fraction(negative: str | None) -> tuple[float, float]:
        guided = class_guidance(den, 0, 3.0, text_negative=text_negative(enc, negative))
        x0 = SM.sample(guided, x_t.float(), sig, "dpmpp_2m", cond=cond).double()
        nearest = torch.cdist(x0.flatten(1), gm.means.flatten(1)).argmin(1)
        return float((nearest == 0).double().mean()), float((nearest <= 1).double().mean())

    thick_null, threes_null = thick_fraction(None)
    thick_neg, threes_neg = thick_fraction("thick")
    assert threes_null > 0.95 and threes_neg > 0.95  # both stay 3s
    assert 0.3 < thick_null < 0.7  # guided against the null text, half the 3s are thick, as in the data
    assert thick_neg < thick_null - 0.25  # the negative prompt takes most of them away


# ---------------------------------------------------------------- prompts composed of parts (AND), on exact truth


def _product_mixture(rank: int):
    """Four components at the corners of a square spanned by two orthogonal directions (thick or
    thin, 3 or 7), isotropic: the data is a product of independent coordinates along them, so the
    conditional of "a thick 3" is exactly the product of those of "a 3" and "thick" over the prior."""
    shape = (1, *[4] * rank)
    g = torch.Generator().manual_seed(10 + rank)
    u, v = torch.randn(2, math.prod(shape), generator=g, dtype=torch.float64)
    u = u / u.norm()
    v = v - (v @ u) * u
    v = v / v.norm()
    words = [{"3", "thick"}, {"3", "thin"}, {"7", "thick"}, {"7", "thin"}]
    means = torch.stack([(1.5 if "thick" in w else -1.5) * u + (1.5 if "3" in w else -1.5) * v for w in words]).reshape(
        4, *shape
    )
    prompts = ["a 3", "thick", "a thick 3", "a 7", "thin"]
    enc = LearnedTextEncoder.from_captions(prompts + ["a thin 3", "a thin 7", "a thick 7"], width=8, depth=1, heads=2)
    torch.manual_seed(0)
    for p in enc.parameters():
        p.data.normal_()
    gm = GaussianMixture(means, 0.4)
    return shape, gm, enc, _TextKeyedMixture(gm, words, enc, prompts)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_composing_a_prompt_of_its_factors_gives_the_exact_conditional_denoiser(rank: int) -> None:
    """The prompt "a 3 AND thick" at guidance 1 (composable guidance over the null text: Liu et al. 2022) is the
    exact denoiser of "a thick 3" at every noise level, in one batched call; at guidance w each
    part's push is scaled by w, and a prompt of one part is classifier-free guidance."""
    from multidiff.conditioning import ComposedEncoding, composed_parts
    from multidiff.guidance import classifier_free_guidance, composable_guidance
    from multidiff.pipeline import negative_condition

    shape, gm, enc, den = _product_mixture(rank)
    null = text_negative(enc, None)
    n = 6
    x = 2.0 * torch.randn((n, *shape), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    composed = prompt_encoding(enc, ["a 3 AND thick"] * n)
    assert isinstance(composed, ComposedEncoding) and composed.count == 2
    calls: list[int] = []

    def counted(x, sigma, **c):
        calls.append(x.shape[0])
        return den(x, sigma, **c)

    for scale in (1.0, 2.5):
        fn = composable_guidance(counted, scale, parts=composed_parts, negative=negative_condition(0, None, null))
        for s in (0.05, 0.5, 2.0, 10.0):
            sigma = torch.full((n,), s, dtype=torch.float64)
            calls.clear()
            got = fn(x, sigma, **composed.as_cond())
            assert calls == [3 * n]  # both parts and the null branch in one call
            full = den(x, sigma, **prompt_encoding(enc, ["a thick 3"] * n).as_cond())
            d_u = den(x, sigma, **null.select([0] * n).as_cond())
            if scale == 1.0:
                torch.testing.assert_close(got, full, rtol=0, atol=1e-9)
            else:  # D_u + w ((D_3 - D_u) + (D_thick - D_u)) = D_u + w (D_thick3 - D_u) on this product
                torch.testing.assert_close(got, d_u + scale * (full - d_u), rtol=0, atol=1e-9)
    # one part: classifier-free guidance of that prompt
    one = prompt_encoding(enc, ["a 3 AND thick", "a 7"] * 3)
    sigma = torch.full((n,), 0.7, dtype=torch.float64)
    got = composable_guidance(den, 3.0, parts=composed_parts, negative=negative_condition(0, None, null))(
        x, sigma, **one.as_cond()
    )
    cfg = classifier_free_guidance(den, 3.0, negative=negative_condition(0, None, null))
    plain = prompt_encoding(enc, ["a 7"] * n).as_cond()
    torch.testing.assert_close(got[1::2], cfg(x, sigma, **plain)[1::2], rtol=0, atol=1e-9)
    assert one.weights.tolist() == [[1.0, 1.0], [1.0, 0.0]] * 3  # the plain prompt's padding part weighs 0
    row = one.select(slice(1, 2))  # rows select their parts: "a 7", then the null text
    torch.testing.assert_close(
        row.parts.states, torch.cat([enc.encode(["a 7"]).pad_to(enc.max_tokens).states, null.states])
    )
    assert row.weights.tolist() == [[1.0, 0.0]] and one.select([4, 0]).weights.tolist() == [[1.0, 1.0]] * 2


@pytest.mark.parametrize("rank", [1, 3])
def test_sampling_a_composed_prompt_lands_in_the_combination_it_names(rank: int) -> None:
    """Sampled with dpmpp_2m from the exact denoiser, "a 7 AND thin" puts nearly every sample in the
    thin-7 component; "a 7" alone puts about half there."""
    shape, gm, enc, den = _product_mixture(rank)
    null = text_negative(enc, None)
    from multidiff.conditioning import composed_parts
    from multidiff.guidance import composable_guidance
    from multidiff.pipeline import negative_condition

    n = 200
    g = torch.Generator().manual_seed(rank)
    sig = G.make_grid("karras", 24, sigma_min=0.01, sigma_max=20.0)
    x_t = 20.0 * torch.randn((n, *shape), generator=g, dtype=torch.float64)
    fn = composable_guidance(den, 1.0, parts=composed_parts, negative=negative_condition(0, None, null))
    both = SM.sample(fn, x_t, sig, "dpmpp_2m", cond=prompt_encoding(enc, ["a 7 AND thin"] * n).as_cond())
    alone = SM.sample(den, x_t, sig, "dpmpp_2m", cond=prompt_encoding(enc, ["a 7"] * n).as_cond())
    nearest = [torch.cdist(x0.flatten(1), gm.means.flatten(1)).argmin(1) for x0 in (both, alone)]
    assert float((nearest[0] == 3).double().mean()) > 0.95
    assert 0.3 < float((nearest[1] == 3).double().mean()) < 0.7 and bool((nearest[1] >= 2).all())


def test_a_pipeline_samples_prompts_of_parts(tmp_path: Path, toytext: None) -> None:
    """Through Pipeline.sample: "P AND P" at guidance 1 is "P" at guidance 2 (D_u + 2 (D_P - D_u)),
    a plain prompt in the same batch is untouched, and a negative prompt of parts is refused."""
    _fit(_toy_run(tmp_path / "run", [1, 8, 8]))
    pipe = load_pipeline(tmp_path / "run", device="cpu")
    p = "a dark red blob"
    kw = {"sampler": "euler", "steps": 4, "seed": 3}
    twice, _ = pipe.sample(2, prompt=[f"{p} AND {p}", p], guidance_scale=1.0, **kw)
    at_two, _ = pipe.sample(2, prompt=p, guidance_scale=2.0, **kw)
    at_one, _ = pipe.sample(2, prompt=p, guidance_scale=1.0, **kw)
    torch.testing.assert_close(twice[0], at_two[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(twice[1], at_one[1], rtol=0, atol=1e-6)
    # guidance moves this barely trained model's samples 3e-4: a hundred times the tolerance above
    assert float((at_two[0] - at_one[0]).abs().max()) > 1e-4
    other, _ = pipe.sample(2, prompt=f"{p} AND a bright blue blob", guidance_scale=1.0, **kw)
    assert float((other[0] - at_one[0]).abs().max()) > 1e-4
    with pytest.raises(ValueError, match="negative prompt is one prompt"):
        pipe.sample(1, prompt=p, negative_prompt="a AND b", guidance_scale=2.0)
    with pytest.raises(ValueError, match="every part joined by AND"):
        pipe.sample(1, prompt=f"{p} AND")
