"""Text conditioning end to end: a network beside its text encoder, the trainer's per-batch text
inputs, prompts and guidance's negative branch at sampling time.

The pieces of :mod:`multidiff.text` (encoders, the null embedding, the cache) become a run here:

* :class:`TextConditionedNet` holds the diffusion network and its :class:`~multidiff.text.TextEncoder`
  as one module, ``net(x, c_noise, **cond)`` like any other, so the optimizer, the EMA, the
  data-parallel wrapper and the checkpoints take the encoder (a learned one whole, a frozen one's
  null embedding) with no code of their own. During training it encodes token ids itself, so the
  learned encoder's gradient flows, and swaps in the null embedding where ``text_drop`` says;
  at sampling time it takes encoded prompts (``tokens``, ``token_mask``, ``pooled``) and, when
  it is given none, the null embedding.
* :class:`TrainingText` is the trainer's side: the encoder built from the training captions (a
  learned one's vocabulary) or loaded frozen, every example's text (token ids, or a frozen
  encoder's cached encodings: rank 0 encodes and writes, the other processes read), and each
  micro-batch's inputs with the caption dropout drawn like the label dropout.
* :func:`prompt_encoding` and :func:`text_negative`: prompts and negative prompts encoded once per
  call, all padded to the encoder's ``max_tokens``, so the conditional and the negative branch
  of classifier-free guidance have one shape and run as one doubled batch. A prompt of parts
  joined by ``" AND "`` ("a small shape AND a cone lying on its side") is a
  :class:`ComposedEncoding`: each part encoded on its own, and guidance composes the parts
  (:func:`composed_parts`, :func:`multidiff.guidance.composable_guidance`).

Every text tensor is padded to the encoder's ``max_tokens``: a masked position changes nothing
(:class:`multidiff.nn.TokenAttention` gives it weight exactly 0), and fixed shapes let a training
step run as CUDA graphs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .captions import caption_variants_of, captions_of
from .distributed import current_rows
from .text import (
    LearnedTextConfig,
    LearnedTextEncoder,
    TextEncoder,
    TextEncoding,
    build_text_encoder,
    encode_cached,
    text_drop_mask,
    with_null_rows,
)

if TYPE_CHECKING:
    from .config import ResolvedConfig
    from .distributed import World
    from .modality import DataInfo

__all__ = [
    "EXAMPLE_PROMPTS",
    "PROMPT_AND",
    "ComposedEncoding",
    "composed_parts",
    "split_prompt",
    "TextConditionedNet",
    "TrainingText",
    "load_text_encoder",
    "negative_rows",
    "prompt_encoding",
    "prompts_for",
    "text_encoder_of",
    "text_negative",
    "training_text",
    "with_text_dims",
]

EXAMPLE_PROMPTS = 16  # distinct training captions kept with a checkpoint: the default prompts


class TextConditionedNet(nn.Module):
    """A diffusion network and its text encoder as one module: ``net(x, c_noise, **cond)``.

    Text arrives in one of two forms (never both):

    * ``text_ids``, ``text_mask`` ``(B, L)``: token ids of a :class:`~multidiff.text.LearnedTextEncoder`,
      encoded here so its gradient flows (training);
    * ``tokens (B, L, D)``, ``token_mask (B, L)``, ``pooled (B, P)``: an encoding (a frozen
      encoder's cached one in training, or prompts encoded once before sampling).

    ``text_drop (B,)`` bool replaces those rows by the encoder's null embedding (caption dropout;
    always given in training, all False when the dropout is 0, so the null is part of every step's
    graph). With no text at all the rows get the null embedding: the unconditional model. The
    remaining ``cond`` (class labels, ``self_cond``) goes to the network unchanged.

    Any attribute the module itself lacks is the network's (``dims``, ``self_condition``), so it
    stands in for the network wherever one is expected.
    """

    def __init__(self, net: nn.Module, text: TextEncoder) -> None:
        super().__init__()
        self.net = net
        self.text = text

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            net = self.__dict__.get("_modules", {}).get("net")
            if net is None:
                raise
            return getattr(net, name)

    def forward(
        self,
        x: Tensor,
        c_noise: Tensor,
        *,
        text_ids: Tensor | None = None,
        text_mask: Tensor | None = None,
        text_drop: Tensor | None = None,
        tokens: Tensor | None = None,
        token_mask: Tensor | None = None,
        pooled: Tensor | None = None,
        **cond: Any,
    ) -> Tensor:
        if text_ids is not None and tokens is not None:
            raise ValueError("give text as token ids (text_ids) or as an encoding (tokens), not both")
        if text_ids is not None:
            if not isinstance(self.text, LearnedTextEncoder):
                raise ValueError(f"token ids need a learned text encoder, this network's is {type(self.text).__name__}")
            if text_mask is None:
                raise ValueError("text_ids need their text_mask")
            enc = self.text.encode_ids(text_ids, text_mask)
        elif tokens is not None:
            if token_mask is None or pooled is None:
                raise ValueError("an encoding needs tokens, token_mask and pooled together")
            enc = TextEncoding(tokens, token_mask, pooled)
        else:
            enc = self.text.null_encoding(x.shape[0])
        if text_drop is not None:
            enc = with_null_rows(enc, self.text.null, text_drop)
        return self.net(x, c_noise, **enc.as_cond(), **cond)


def text_encoder_of(denoiser: Any) -> TextEncoder | None:
    """The text encoder beside a denoiser's network (:class:`TextConditionedNet`), or ``None``."""
    net = getattr(denoiser, "net", None)
    return net.text if isinstance(net, TextConditionedNet) else None


def with_text_dims(model: Any, encoder: TextEncoder, modality: str) -> Any:
    """A copy of a ``model:`` section that builds its network for ``encoder``'s states
    (``token_dim``) and pooled vector (``pooled_dim``): a
    :class:`~multidiff.modality.PresetModelConfig`'s :meth:`~multidiff.modality.PresetModelConfig.with_text`.
    ``ValueError`` for a modality whose model section is not one (its network's arguments are its own)."""
    from .modality import PresetModelConfig

    if not isinstance(model, PresetModelConfig):
        raise ValueError(
            f"text: the {modality!r} modality's model section ({type(model).__name__}) does not build networks "
            "with cross-attention (it is not a PresetModelConfig); remove the text section"
        )
    return model.with_text(encoder.token_dim, encoder.pooled_dim)


def load_text_encoder(cfg: ResolvedConfig, weights: dict[str, Tensor]) -> TextEncoder | None:
    """The text encoder of a saved run (``None`` without a ``text`` section): a learned one rebuilt
    from the checkpoint's weights (its vocabulary is the tensor ``text.spec_json``), a frozen one
    built from the config (the checkpoint holds its null embedding, loaded with the network)."""
    t = cfg.run.text
    if t is None:
        return None
    if isinstance(t, LearnedTextConfig):
        if "text.spec_json" not in weights:
            raise ValueError("this checkpoint's config has a learned text encoder, but its weights hold none")
        return LearnedTextEncoder.from_state_dict(weights, prefix="text.")
    return build_text_encoder(t)


# ---------------------------------------------------------------- training


class TrainingText:
    """A run's text conditioning on the trainer's side.

    Args:
        encoder: the text encoder (moved to ``device`` here; the trainer moves it with the network).
        captions: one caption per training example, in the data set's order.
        variants: optional, per example, more captions of it (a built-in set's ``data.caption_variants``):
            each step then shows every example with one of its captions, drawn uniformly.
        dropout: the probability of a caption being replaced by the null embedding.
        world: the process group (rank 0 writes a frozen encoder's cache first, the others read it).
        device: where encodings are computed.
        cache_dir: the text cache (default :func:`multidiff.text.default_text_cache_dir`).

    A learned encoder's captions are tokenized once here, padded to ``max_tokens``; a frozen
    encoder's are encoded once (:func:`multidiff.text.encode_cached`) and kept on the CPU.
    """

    def __init__(
        self,
        encoder: TextEncoder,
        captions: Sequence[str],
        *,
        variants: Sequence[Sequence[str]] | None = None,
        dropout: float,
        world: World | None = None,
        device: torch.device | str = "cpu",
        cache_dir: Any = None,
    ) -> None:
        self.encoder = encoder.to(device)
        self.captions = list(captions)
        self.dropout = float(dropout)
        self.length = encoder.max_tokens
        self.ids: Tensor | None = None
        self.mask: Tensor | None = None
        self.encoded = None
        # every caption an example may be shown with: its own first, then its variants; the
        # choices of example i are rows first[i] .. first[i] + count[i] - 1 of `texts`
        choices = [(c,) for c in self.captions]
        if variants is not None:
            if len(variants) != len(self.captions):
                raise ValueError(f"{len(variants)} lists of caption variants for {len(self.captions)} captions")
            choices = [(c, *v) for c, v in zip(self.captions, variants)]
        count = torch.tensor([len(c) for c in choices], dtype=torch.long)
        self.first = count.cumsum(0) - count
        self.count: Tensor | None = count if variants is not None else None
        texts = [t for c in choices for t in c]
        if isinstance(encoder, LearnedTextEncoder):
            ids, mask = encoder.tokenize(texts)
            pad = self.length - ids.shape[1]
            self.ids = torch.nn.functional.pad(ids, (0, pad))
            self.mask = torch.nn.functional.pad(mask, (0, pad))
        else:
            main = world is None or world.is_main
            if not main:  # rank 0 encodes and writes the cache first; the others then read it
                world.barrier()  # type: ignore[union-attr]
            self.encoded = encode_cached(encoder, texts, cache_dir)
            if main and world is not None:
                world.barrier()

    def inputs(
        self, idx: Sequence[int] | Tensor, generator: torch.Generator, device: torch.device
    ) -> dict[str, Tensor]:
        """The network's text inputs for examples ``idx`` (this process's rows of a micro-batch):
        token ids or the cached encoding, padded to ``max_tokens``, and ``text_drop``, drawn from
        ``generator`` for the global batch (call it under :func:`multidiff.distributed.global_rows`),
        as is, where examples have caption variants, which caption each example is shown with."""
        i = torch.as_tensor(idx, dtype=torch.long)
        drop = text_drop_mask(len(i), self.dropout, generator).to(device)
        i = self.rows(i, generator)
        if self.ids is not None:
            assert self.mask is not None
            return {
                "text_ids": self.ids[i].to(device, non_blocking=True),
                "text_mask": self.mask[i].to(device, non_blocking=True),
                "text_drop": drop,
            }
        assert self.encoded is not None
        enc = self.encoded.unique.select(self.encoded.index[i]).pad_to(self.length).to(device)
        return {**enc.as_cond(), "text_drop": drop}

    def rows(self, idx: Tensor, generator: torch.Generator) -> Tensor:
        """The rows of the encoded captions that show examples ``idx``: each example's own caption,
        or, with variants, one of its captions drawn uniformly (one draw per example of the global
        batch, so it does not depend on the number of processes)."""
        if self.count is None:
            return self.first[idx]
        u = current_rows(len(idx)).draw(torch.rand, (), generator).cpu()
        n = self.count[idx]
        return self.first[idx] + (u * n).long().clamp(max=n - 1)

    def describe(self, info: DataInfo) -> DataInfo:
        """``info`` with the first :data:`EXAMPLE_PROMPTS` distinct captions (data order) as
        ``extra["example_prompts"]``: a checkpoint keeps them as its default prompts."""
        from .modality import DataInfo

        examples = list(dict.fromkeys(self.captions))[:EXAMPLE_PROMPTS]
        return DataInfo(info.shape, info.num_classes, info.class_names, {**info.extra, "example_prompts": examples})

    def meta(self) -> dict[str, Any]:
        """What ``meta.json`` records of the encoder (its vocabulary is in the weights)."""
        enc = self.encoder
        out: dict[str, Any] = {
            "kind": enc.spec()["kind"],
            "token_dim": enc.token_dim,
            "pooled_dim": enc.pooled_dim,
            "max_tokens": enc.max_tokens,
            "captions": len(self.captions),
            "distinct_captions": len(set(self.captions)),
        }
        if self.count is not None:
            out["caption_choices"] = int(self.count.sum())
        if isinstance(enc, LearnedTextEncoder):
            out["vocabulary"] = len(enc.tokenizer)
        else:
            out["identity"] = enc.identity()
        return out


def training_text(cfg: ResolvedConfig, dataset: Any, world: World | None, device: torch.device) -> TrainingText | None:
    """The :class:`TrainingText` of a run's ``text`` section (``None`` without one), from the data
    set's captions (``data.captions: true``)."""
    t = cfg.run.text
    if t is None:
        return None
    captions = captions_of(dataset)
    if captions is None:
        raise ValueError(
            f"text: the data set ({cfg.adapter.describe(cfg.data)}) has no captions; set data.captions: true "
            "with a captioned source"
        )
    if len(captions) != len(dataset):
        raise ValueError(f"the data set has {len(dataset)} examples but {len(captions)} captions")
    variants = caption_variants_of(dataset)
    for key, off in (("caption_variants", "0"), ("caption_factors", "false")):
        if getattr(cfg.data, key, None) and variants is None:
            from .config import ConfigError

            raise ConfigError(
                f"data.{key}: the data set ({cfg.adapter.describe(cfg.data)}) composes no caption variants; "
                f"expected {off} here (the built-in captioned sets compose them from their attributes)"
            )
    encoder = build_text_encoder(t, captions=captions + [c for v in variants or () for c in v])
    return TrainingText(encoder, captions, variants=variants, dropout=t.dropout, world=world, device=device)


# ---------------------------------------------------------------- prompts


def prompts_for(n: int, prompt: str | Sequence[str] | None, info: DataInfo) -> list[str] | None:
    """``n`` prompts: one for all, one per sample (a list of ``n``), or, for ``None``, the run's
    example prompts (``info.extra["example_prompts"]``) in turn; ``None`` when there are none."""
    if prompt is None:
        examples = list(info.extra.get("example_prompts") or [])
        return [examples[i % len(examples)] for i in range(n)] if examples else None
    if isinstance(prompt, str):
        return [prompt] * n
    out = list(prompt)
    if len(out) == 1:
        return out * n
    if len(out) != n:
        raise ValueError(f"need one prompt for all samples or one per sample ({n}), got {len(out)}")
    bad = [p for p in out if not isinstance(p, str)]
    if bad:
        raise ValueError(f"prompts must be strings, got {bad[0]!r}")
    return out


PROMPT_AND = " AND "
"""What joins the parts of a composed prompt (upper case, between spaces, as Liu et al. 2022 write it)."""


_AND = re.compile(r"(?:^|\s)AND(?=\s|$)")


def split_prompt(prompt: str) -> list[str]:
    """The parts of a prompt joined by :data:`PROMPT_AND` (one part for a plain prompt).

    >>> split_prompt("a small shape AND a cone lying on its side")
    ['a small shape', 'a cone lying on its side']
    """
    parts = [p.strip() for p in _AND.split(prompt)]
    if len(parts) == 1:
        return [prompt]
    if not all(parts):
        raise ValueError(f"prompt {prompt!r}: every part joined by AND needs words of its own")
    return parts


@dataclass(frozen=True)
class ComposedEncoding:
    """Prompts of parts (:func:`split_prompt`): ``parts`` holds ``K`` encodings per prompt (row
    ``b * K + k``; a prompt of fewer parts is padded with null rows of weight 0), ``weights`` the
    ``(B, K)`` weight of each part in composable guidance."""

    parts: TextEncoding
    weights: Tensor

    def __post_init__(self) -> None:
        b, k = self.weights.shape
        if len(self.parts) != b * k:
            raise ValueError(f"{len(self.parts)} encoded parts for {b} prompts of {k} parts")

    def __len__(self) -> int:
        return self.weights.shape[0]

    @property
    def count(self) -> int:
        """``K``, the most parts of any prompt."""
        return self.weights.shape[1]

    def select(self, idx: Tensor | Sequence[int] | slice) -> ComposedEncoding:
        rows = torch.arange(len(self))[idx].reshape(-1)
        k = self.count
        part_rows = (rows[:, None] * k + torch.arange(k)).reshape(-1)
        return ComposedEncoding(self.parts.select(part_rows), self.weights[rows])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> ComposedEncoding:
        return ComposedEncoding(self.parts.to(device, dtype), self.weights.to(device=device))

    def as_cond(self) -> dict[str, Tensor]:
        """The guidance's keyword arguments (not the network's: :func:`composed_parts` turns them
        into one set of ``tokens``, ``token_mask`` and ``pooled`` per part): ``(B, K, ...)`` each."""
        b, k = self.weights.shape
        p = self.parts
        return {
            "composed_tokens": p.states.reshape(b, k, *p.states.shape[1:]),
            "composed_mask": p.mask.reshape(b, k, -1),
            "composed_pooled": p.pooled.reshape(b, k, -1),
            "composed_weights": self.weights,
        }


COMPOSED_KEYS = ("composed_tokens", "composed_mask", "composed_pooled", "composed_weights")


def composed_parts(cond: dict[str, Any]) -> tuple[list[dict[str, Any]], Tensor]:
    """A call's conditions with a :class:`ComposedEncoding`'s keys as one condition per part
    (``tokens``, ``token_mask``, ``pooled``, beside the call's other conditions, a class label)
    and the parts' ``(B, K)`` weights: ``parts`` of :func:`multidiff.guidance.composable_guidance`."""
    rest = {k: v for k, v in cond.items() if k not in COMPOSED_KEYS}
    tokens, mask, pooled = cond["composed_tokens"], cond["composed_mask"], cond["composed_pooled"]
    return [
        {**rest, "tokens": tokens[:, k], "token_mask": mask[:, k], "pooled": pooled[:, k]}
        for k in range(tokens.shape[1])
    ], cond["composed_weights"]


@torch.no_grad()
def prompt_encoding(
    encoder: TextEncoder, prompts: Sequence[str] | None, n: int | None = None
) -> TextEncoding | ComposedEncoding:
    """The encoding of ``prompts`` (each distinct one encoded once), or ``n`` rows of the null
    embedding for ``None``, padded to ``max_tokens``, on the encoder's device; a
    :class:`ComposedEncoding` of their parts when any prompt is composed (``" AND "``)."""
    if prompts is None:
        if n is None:
            raise ValueError("no prompts: say how many null rows")
        return encoder.null_encoding(n, encoder.max_tokens).to(encoder.device)
    prompts = list(prompts)
    split = [split_prompt(p) for p in prompts]
    if any(len(parts) > 1 for parts in split):
        k = max(len(parts) for parts in split)
        texts = [t for parts in split for t in parts]
        null = encoder.null_encoding(1, encoder.max_tokens).to(encoder.device)
        every = TextEncoding.cat([_encode_distinct(encoder, texts), null])  # the null row last
        rows, start = [], 0
        for parts in split:  # a prompt's parts, then the null row for each part it lacks
            rows += [*range(start, start + len(parts)), *[len(texts)] * (k - len(parts))]
            start += len(parts)
        weights = torch.tensor([[1.0] * len(p) + [0.0] * (k - len(p)) for p in split], device=encoder.device)
        return ComposedEncoding(every.select(rows), weights)
    return _encode_distinct(encoder, prompts)


def _encode_distinct(encoder: TextEncoder, prompts: list[str]) -> TextEncoding:
    distinct = list(dict.fromkeys(prompts))
    row = {p: i for i, p in enumerate(distinct)}
    enc = encoder.encode(distinct).pad_to(encoder.max_tokens)
    return enc.select([row[p] for p in prompts])


def text_negative(encoder: TextEncoder, negative_prompt: str | None) -> TextEncoding:
    """Guidance's negative text, one row padded to ``max_tokens``: the null embedding, or the
    encoding of ``negative_prompt``."""
    if negative_prompt is None:
        return prompt_encoding(encoder, None, 1)
    if not isinstance(negative_prompt, str):
        raise ValueError(f"negative_prompt takes one prompt for all samples, got {type(negative_prompt).__name__}")
    if len(split_prompt(negative_prompt)) > 1:
        raise ValueError(
            f"negative_prompt {negative_prompt!r}: a negative prompt is one prompt, not parts joined by AND"
        )
    return prompt_encoding(encoder, [negative_prompt])


def negative_rows(negative: TextEncoding, cond: dict[str, Any]) -> dict[str, Tensor]:
    """``negative`` (one row) as the text of a batch whose condition is ``cond``: as many rows as
    its ``tokens`` and padded (or trimmed of shared padding) to their length, so both branches of
    guidance stack into one batch."""
    tokens = cond["tokens"]
    b, n = tokens.shape[:2]
    neg = negative if negative.length <= n else negative.trim()
    if neg.length > n:
        raise ValueError(f"the negative prompt has {neg.length} tokens, the prompts {n}: pad the prompts")
    neg = neg.pad_to(n).to(tokens.device, tokens.dtype)
    return {
        "tokens": neg.states.expand(b, -1, -1),
        "token_mask": neg.mask.expand(b, -1),
        "pooled": neg.pooled.expand(b, -1),
    }
