"""Caption variants and partial captions (``data.caption_variants``, ``data.caption_drop``): more
captions of each built-in example, some with attributes left unsaid, drawn anew every step."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
import torch

from multidiff.captions import Attribute, caption_variants, variants_of_examples
from multidiff.conditioning import TrainingText
from multidiff.config import ConfigError, resolve_config
from multidiff.distributed import Rows, global_rows
from multidiff.text import LearnedTextEncoder

_DANGLING = re.compile(r"(\b(at|and|a|an)\s*([,:]|$))|(^|[,:]\s*)and\b|,,|\s\s|^[,: ]|[,: ]$")


def _sets():
    from modalities.audio.data import TONE_ATTRIBUTES, TONE_TEMPLATES
    from modalities.image.data import DIGIT_ATTRIBUTES, DIGIT_TEMPLATES
    from modalities.voxel.data import SHAPE_ATTRIBUTES, SHAPE_ORIENTATIONS, SHAPE_TEMPLATES

    shape = {"kind": "cone", "size": "small", "position": "right", "orientation": "horizontal"}
    return [
        (
            {"pitch": "E4", "timbre": "bright", "envelope": "sustained", "loudness": "quiet"},
            TONE_ATTRIBUTES,
            TONE_TEMPLATES,
            "pitch",
        ),
        (shape, {**SHAPE_ATTRIBUTES, "orientation": SHAPE_ORIENTATIONS["cone"]}, SHAPE_TEMPLATES, "kind"),
        (
            {"digit": "8", "thickness": "thick", "size": "small", "slant": "right", "position": "left"},
            DIGIT_ATTRIBUTES,
            DIGIT_TEMPLATES,
            "digit",
        ),
    ]


def _said(caption: str, attr: Attribute, value: str) -> bool:
    return any(p and re.search(rf"(^|\W){re.escape(p)}(\W|$)", caption) for p in attr.phrases[value])


@pytest.mark.parametrize("which", [0, 1, 2], ids=["tones", "shapes", "digits"])
def test_partial_captions_leave_attributes_unsaid_at_the_drop_rate_and_read_cleanly(which: int) -> None:
    values, attrs, templates, noun = _sets()[which]
    full = caption_variants(values, attrs, templates, random.Random(0), 200)
    assert len(set(full)) > 40  # fresh templates and synonyms, not one caption repeated
    for c in full:  # drop 0: every attribute said
        assert all(_said(c, attrs[k], v) for k, v in values.items()), c
        assert not _DANGLING.search(c), c
    drop = 0.4
    part = caption_variants(values, attrs, templates, random.Random(1), 600, drop=drop, keep=(noun,))
    others = [k for k in values if k != noun]
    unsaid = sum(not _said(c, attrs[k], values[k]) for c in part for k in others) / (len(part) * len(others))
    assert abs(unsaid - drop) < 0.05, unsaid  # 2,400 draws at 0.4: sd 0.01
    for c in part:
        assert _said(c, attrs[noun], values[noun]), c  # the kept attribute is always said
        assert not _DANGLING.search(c), c  # no "at" or "and" beside an empty slot, no "a," or doubled commas


def test_a_variant_always_says_something_and_bad_arguments_are_refused() -> None:
    size = Attribute("size", ("small", "large"), {"small": ["small"], "large": ["big"]})
    kind = Attribute("kind", ("box", "ball"), {"box": ["box"], "ball": ["ball"]})
    out = caption_variants({"size": "large", "kind": "box"}, {"size": size, "kind": kind}, ["a {size} {kind}"],
                           random.Random(0), 100, drop=0.999)  # fmt: skip
    assert set(out) == {"a big", "a box"}  # one attribute said, never none
    with pytest.raises(ValueError, match="keep names"):
        caption_variants({"size": "large"}, {"size": size}, ["{size}"], random.Random(0), 1, keep=("kind",))
    with pytest.raises(ValueError, match="drop < 1"):
        caption_variants({"size": "large"}, {"size": size}, ["{size}"], random.Random(0), 1, drop=1.0)
    assert (
        variants_of_examples([{"size": "small"}], {"size": size}, ["{size}"], count=0, drop=0, keep=(), seed=0) is None
    )


def test_built_in_sets_keep_their_captions_and_carry_variants_through_subsets() -> None:
    from modalities.audio.data import captioned_tones

    plain, _ = captioned_tones(8000, 256, per_class=4, split="all")
    ds, info = captioned_tones(8000, 256, per_class=4, split="all", caption_variants=3, caption_drop=0.5)
    assert ds.captions == plain.captions and plain.variants is None  # the one caption does not change
    assert info.extra["caption_variants"] == 3 and info.extra["caption_drop"] == 0.5
    assert len(ds.variants) == len(ds) and all(len(v) == 3 for v in ds.variants)
    sub = ds.subset([5, 2])
    assert sub.captions == [ds.captions[5], ds.captions[2]] and sub.variants == [ds.variants[5], ds.variants[2]]
    train, _ = captioned_tones(8000, 256, per_class=20, caption_variants=2)
    every, _ = captioned_tones(8000, 256, per_class=20, split="all")
    assert len(train.variants) == len(train) < len(every)  # the held-out split drops its variants with it


def test_training_draws_every_caption_of_an_example_uniformly() -> None:
    captions = ["a loud tone at C4", "a soft tone at D4"]
    variants = [("a tone at C4", "a loud sound at C4"), ("a tone at D4", "soft, a tone at D4")]
    enc = LearnedTextEncoder.from_captions(captions + [c for v in variants for c in v], width=8, depth=1, heads=2)
    tt = TrainingText(enc, captions, variants=variants, dropout=0.0)
    plain = TrainingText(enc, captions, dropout=0.0)
    ids, _ = enc.tokenize([*captions, *[c for v in variants for c in v]])
    by_ids = {tuple(r[r != 0].tolist()): t for r, t in zip(ids, [*captions, *[c for v in variants for c in v]])}
    g = torch.Generator().manual_seed(0)
    seen: dict[int, list[str]] = {0: [], 1: []}
    for _ in range(300):
        got = tt.inputs(torch.tensor([0, 1]), g, torch.device("cpu"))["text_ids"]
        for i, row in enumerate(got):
            seen[i].append(by_ids[tuple(row[row != 0].tolist())])
    for i in (0, 1):
        choices = [captions[i], *variants[i]]
        assert set(seen[i]) == set(choices)  # the example's own caption and its variants, nothing else
        assert all(abs(seen[i].count(c) / 300 - 1 / 3) < 0.1 for c in choices)  # uniformly
    # without variants each example is shown with its caption
    same = plain.inputs(torch.tensor([1, 0]), g, torch.device("cpu"))["text_ids"]
    assert torch.equal(same, plain.ids[[1, 0]])
    assert plain.meta()["captions"] == 2 and tt.meta()["caption_choices"] == 6
    # a global batch of 4 split over 2 processes draws what one process drawing all 4 draws
    whole = tt.inputs(torch.tensor([0, 1, 0, 1]), torch.Generator().manual_seed(3), torch.device("cpu"))["text_ids"]
    halves = []
    for rank in (0, 1):
        with global_rows(Rows(2 * rank, 2 * rank + 2, 4)):
            halves.append(tt.inputs(torch.tensor([0, 1]), torch.Generator().manual_seed(3), torch.device("cpu")))
    assert torch.equal(torch.cat([h["text_ids"] for h in halves]), whole)


def test_caption_variant_keys_name_themselves_when_they_cannot_apply(tmp_path: Path) -> None:
    tones = {"source": "tones", "sample_rate": 8000, "length": 512, "per_class": 2, "captions": True}
    base = {"modality": "audio", "out_dir": str(tmp_path), "data": tones}
    cfg = resolve_config({**base, "data": {**tones, "caption_variants": 2, "caption_drop": 0.3}})
    ds, _ = cfg.adapter.build_dataset(cfg.data)
    assert all(len(v) == 2 for v in ds.variants)
    for data, key in (
        ({**tones, "captions": False, "caption_variants": 2}, "data.caption_variants"),
        ({**tones, "source": "folder", "path": str(tmp_path), "caption_variants": 2}, "data.caption_variants"),
        ({**tones, "caption_drop": 0.3}, "data.caption_drop.*caption_variants >= 1"),
        ({**tones, "caption_variants": 2, "caption_drop": 1.0}, "data.caption_drop"),
    ):
        with pytest.raises(ConfigError, match=key):
            resolve_config({**base, "data": data})
    for modality, data in (
        ("image", {"source": "digits", "size": 8, "captions": True}),
        ("voxel", {"source": "shapes", "resolution": 8, "per_class": 1, "captions": True}),
    ):
        cfg = resolve_config({"modality": modality, "data": {**data, "caption_variants": 2, "caption_drop": 0.5}})
        ds, info = cfg.adapter.build_dataset(cfg.data)
        assert len(ds.variants) == len(ds) and info.extra["caption_variants"] == 2


def test_a_data_set_without_variants_is_refused_when_the_config_asks_for_them(tmp_path: Path) -> None:
    from modalities.audio.data import captioned_tones
    from multidiff.conditioning import training_text

    tones = {"source": "tones", "sample_rate": 8000, "length": 256, "per_class": 2, "captions": True}
    cfg = resolve_config(
        {"modality": "audio", "out_dir": str(tmp_path), "data": {**tones, "caption_variants": 2}, "text": {"width": 8}}
    )
    plain, _ = captioned_tones(8000, 256, per_class=2)  # as a modality whose sets compose none would build
    with pytest.raises(ConfigError, match="data.caption_variants: .*composes no caption variants"):
        training_text(cfg, plain, None, torch.device("cpu"))
    built, _ = cfg.adapter.build_dataset(cfg.data)
    tt = training_text(cfg, built, None, torch.device("cpu"))
    assert tt is not None and tt.meta()["caption_choices"] == 3 * len(built)


@pytest.mark.parametrize("which", [0, 1, 2], ids=["tones", "shapes", "digits"])
def test_factor_captions_say_their_factor_and_nothing_else(which: int) -> None:
    """Each factor caption states its factor's values and no other attribute's (a shape or digit
    named by a word that names no kind: "a small shape"); every factor is said over the draws."""
    from modalities.audio.data import TONE_FACTORS
    from modalities.image.data import DIGIT_FACTORS
    from modalities.voxel.data import SHAPE_FACTORS
    from multidiff.captions import factor_captions

    values, attrs, templates, noun = _sets()[which]
    factors = (TONE_FACTORS, SHAPE_FACTORS, DIGIT_FACTORS)[which]
    rng = random.Random(0)
    for _ in range(40):
        caps = factor_captions(values, attrs, templates, factors, rng)
        assert len(caps) == len(factors)
        for cap, factor in zip(caps, factors):
            assert not _DANGLING.search(cap), cap
            for name, value in values.items():
                if not any(attrs[name].phrases[value]):  # said by nothing (a sphere's orientation)
                    continue
                assert _said(cap, attrs[name], value) == (name in factor), (cap, name)
            if noun not in factor and attrs[noun].unsaid != ("",):
                assert any(re.search(rf"\b{w}\b", cap) for w in attrs[noun].unsaid), cap
    with pytest.raises(ValueError, match="factor names attributes"):
        factor_captions(values, attrs, templates, [("colour",)], rng)


def test_built_in_sets_add_one_caption_per_factor_and_keep_their_own() -> None:
    from modalities.voxel.data import SHAPE_FACTORS, captioned_shapes

    plain, _ = captioned_shapes(8, per_class=3, split="all")
    ds, info = captioned_shapes(8, per_class=3, split="all", caption_factors=True, caption_variants=2)
    assert ds.captions == plain.captions and info.extra["caption_factors"] is True
    assert all(len(v) == 2 + len(SHAPE_FACTORS) for v in ds.variants)
    alone, _ = captioned_shapes(8, per_class=3, split="all", caption_factors=True)
    assert all(len(v) == len(SHAPE_FACTORS) for v in alone.variants)
    # the factor captions come from a stream of their own: variants do not change them
    assert [v[2:] for v in ds.variants] == [v for v in alone.variants]


def test_caption_factors_name_the_key_when_they_cannot_apply(tmp_path: Path) -> None:
    from modalities.audio.data import captioned_tones
    from multidiff.conditioning import training_text

    tones = {"source": "tones", "sample_rate": 8000, "length": 256, "per_class": 2, "captions": True}
    base = {"modality": "audio", "out_dir": str(tmp_path), "data": tones, "text": {"width": 8}}
    for data in ({**tones, "captions": False}, {**tones, "source": "folder", "path": str(tmp_path)}):
        with pytest.raises(ConfigError, match="data.caption_factors"):
            resolve_config({**base, "data": {**data, "caption_factors": True}})
    cfg = resolve_config({**base, "data": {**tones, "caption_factors": True}})
    plain, _ = captioned_tones(8000, 256, per_class=2)
    with pytest.raises(ConfigError, match="data.caption_factors: .*composes no caption variants.*false"):
        training_text(cfg, plain, None, torch.device("cpu"))
    built, _ = cfg.adapter.build_dataset(cfg.data)
    tt = training_text(cfg, built, None, torch.device("cpu"))
    assert tt is not None and tt.meta()["caption_choices"] == 5 * len(built)  # its own + 4 factors
