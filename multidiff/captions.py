"""Captioned data, for every modality: captions of a folder's files, captioned in-memory sets, and
captions composed from attributes.

* :func:`read_captions` pairs each data file of a folder with its caption, from Hugging Face's
  ``metadata.jsonl`` convention (one JSON object per line, ``{"file_name": ..., "text": ...}``,
  ``file_name`` relative to the folder of that ``metadata.jsonl``; one may sit in any sub-folder) or
  from a sidecar text file (``cat/001.png`` and ``cat/001.txt``). A missing or empty caption, a
  caption for a file that does not exist, non-UTF-8 text, a file with two captions: each stops the
  run with the file's name, or, under ``on_bad_file: skip``, is left out and counted.
* :class:`CaptionedTensorDataset`: a :class:`~multidiff.modality.TensorDataset` (items stay
  ``(x, label)``) that also holds a caption per example and, for the built-in captioned sets, the
  attributes the caption states (codes per example), so a judge can check a sample against them.
* :class:`Attribute` and :func:`compose_caption`: captions from attribute values through templates
  with synonyms and varied word order, so the text is not a fixed code; :func:`held_out_mask`
  marks the examples whose attributes match combinations kept out of training.

Nothing here knows a modality: the adapters bring the file suffixes and the attributes.
"""

from __future__ import annotations

import json
import random
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .modality import BAD_FILE_POLICIES, TensorDataset

__all__ = [
    "METADATA_FILE",
    "CaptionProblem",
    "read_captions",
    "read_caption_file",
    "CaptionedTensorDataset",
    "CaptionedExample",
    "Attribute",
    "compose_caption",
    "caption_variants",
    "factor_captions",
    "variants_of_examples",
    "held_out_mask",
    "matches",
    "captions_of",
    "caption_variants_of",
]

METADATA_FILE = "metadata.jsonl"


# ---------------------------------------------------------------- caption folders


@dataclass(frozen=True)
class CaptionProblem:
    """One reason a caption could not be used: the file it is about, and what is wrong."""

    path: Path
    message: str

    def __str__(self) -> str:
        return self.message


def _clean(text: str) -> str:
    """A caption with its whitespace runs (newlines included) made single spaces, stripped."""
    return " ".join(text.split())


def _utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8-sig")  # a leading byte-order mark is dropped
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{what} is not UTF-8 text (byte 0x{data[e.start]:02x} at position {e.start}); save it as UTF-8"
        ) from None


def read_caption_file(path: Path) -> str:
    """The caption in a sidecar text file: UTF-8 (a byte-order mark allowed), whitespace runs made
    single spaces; ``ValueError`` naming the file when it is not UTF-8 or holds no text."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read caption file {str(path)!r}: {e}") from None
    text = _clean(_utf8(data, f"caption file {str(path)!r}"))
    if not text:
        raise ValueError(f"caption file {str(path)!r} is empty")
    return text


def _visible(p: Path, root: Path) -> bool:
    return not any(q.startswith(".") for q in p.relative_to(root).parts)


def _metadata_entries(meta: Path, data: set[Path], problems: list[CaptionProblem]) -> dict[Path, tuple[str, str]]:
    """``file -> (caption, where)`` from one ``metadata.jsonl``; problems with an entry go to ``problems``."""
    out: dict[Path, tuple[str, str]] = {}
    try:
        raw = meta.read_bytes()
    except OSError as e:
        problems.append(CaptionProblem(meta, f"cannot read {str(meta)!r}: {e}"))
        return out
    for n, line in enumerate(raw.split(b"\n"), start=1):
        where = f"{str(meta)!r} line {n}"
        if not line.strip():
            continue
        try:
            entry = json.loads(_utf8(line, where))
        except ValueError as e:
            msg = str(e) if "UTF-8" in str(e) else f"{where} is not a JSON object ({e})"
            problems.append(CaptionProblem(meta, msg))
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("file_name"), str):
            problems.append(CaptionProblem(meta, f'{where} needs a "file_name" (a path relative to its folder)'))
            continue
        target = (meta.parent / entry["file_name"]).resolve()
        if target not in data:
            why = "which is not one of the data files" if target.is_file() else "which does not exist"
            problems.append(CaptionProblem(meta, f"{where} gives a caption for {entry['file_name']!r}, {why}"))
            continue
        text = entry.get("text")
        if not isinstance(text, str):
            problems.append(
                CaptionProblem(target, f'{where}: the caption ("text") of {str(target)!r} is {text!r}, not a string')
            )
            out[target] = ("", where)  # the file has a (bad) caption: not also "missing"
            continue
        if target in out:
            problems.append(CaptionProblem(target, f"{where} captions {str(target)!r} again ({out[target][1]})"))
            continue
        out[target] = (_clean(text), where)
    return out


def read_captions(
    root: str | Path, files: Sequence[Path], *, on_bad: str = "error", what: str = "files"
) -> tuple[list[int], list[str]]:
    """The caption of each of ``files`` (data files under the folder ``root``).

    A file's caption is its entry in a ``metadata.jsonl`` (Hugging Face's convention: a JSON
    object per line, ``file_name`` relative to that ``metadata.jsonl``'s folder, the caption in
    ``text``; any folder under ``root`` may have one) or its sidecar text file (``x.png`` and
    ``x.txt`` side by side, UTF-8). Captions have their whitespace runs made single spaces.

    Problems, each naming the file (and the ``metadata.jsonl`` line): a data file with no caption,
    an empty one, or two (an entry and a sidecar); a caption for a file that does not exist (an
    entry, or a ``.txt`` beside no data file); text that is not UTF-8; a ``metadata.jsonl`` line
    that is not a JSON object with ``file_name``. Under ``on_bad="error"`` the first stops
    everything (``ValueError``); under ``"skip"`` the data files concerned are left out, stray
    captions ignored, and the count and first names reported in one warning.

    Returns ``(kept, captions)``: the indices into ``files`` of the captioned files, in order, and
    their captions.
    """
    if on_bad not in BAD_FILE_POLICIES:
        raise ValueError(f"on_bad_file must be one of {list(BAD_FILE_POLICIES)}, got {on_bad!r}")
    base = Path(root).expanduser()
    data = [Path(f).resolve() for f in files]
    known = set(data)
    problems: list[CaptionProblem] = []
    listed: dict[Path, tuple[str, str]] = {}
    resolved_root = base.resolve()
    for meta in sorted(base.rglob(METADATA_FILE)):
        if meta.is_file() and _visible(meta, base):
            for f, entry in _metadata_entries(meta, known, problems).items():
                if f in listed:
                    problems.append(CaptionProblem(f, f"{entry[1]} captions {str(f)!r} again ({listed[f][1]})"))
                else:
                    listed[f] = entry
    sidecars = {f.with_suffix(".txt") for f in data}
    for txt in sorted(base.rglob("*.txt")):
        if txt.is_file() and _visible(txt, base) and txt.resolve() not in sidecars:
            problems.append(
                CaptionProblem(
                    txt,
                    f"caption file {str(txt)!r} is beside no data file (expected one of {what} named "
                    f"{txt.stem!r}); remove it or move it out of {str(resolved_root)!r}",
                )
            )
    kept: list[int] = []
    captions: list[str] = []
    bad_files: set[Path] = {p.path for p in problems}
    for i, f in enumerate(data):
        side = f.with_suffix(".txt")
        has_side = side.is_file()
        if f in listed and has_side:
            problems.append(
                CaptionProblem(f, f"{str(f)!r} has two captions, {listed[f][1]} and {str(side)!r}; keep one of them")
            )
            continue
        if f in listed:
            text, where = listed[f]
            if f in bad_files:
                continue
            if not text:
                problems.append(CaptionProblem(f, f"the caption of {str(f)!r} ({where}) is empty"))
                continue
        elif has_side:
            try:
                text = read_caption_file(side)
            except ValueError as e:
                problems.append(CaptionProblem(f, str(e)))
                continue
        else:
            problems.append(
                CaptionProblem(
                    f,
                    f"{str(f)!r} has no caption: expected {side.name!r} beside it or an entry in a {METADATA_FILE}",
                )
            )
            continue
        kept.append(i)
        captions.append(text)
    if problems:
        if on_bad == "error":
            raise ValueError(f"{problems[0]} (data.on_bad_file: skip leaves such files out)")
        names = ", ".join(repr(str(p.path)) for p in problems[:3]) + (
            f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        )
        warnings.warn(
            f"skipped {len(files) - len(kept)} of {len(files)} {what} and ignored the rest of {len(problems)} caption "
            f"problems: {names}",
            stacklevel=2,
        )
    if not kept:
        raise ValueError(f"none of the {len(files)} {what} in {str(base)!r} has a usable caption")
    return kept, captions


# ---------------------------------------------------------------- captioned sets


@dataclass(frozen=True)
class CaptionedExample:
    """One example of a :class:`CaptionedTensorDataset` with everything known about it."""

    x: Tensor
    label: int
    caption: str
    attributes: dict[str, str] = field(default_factory=dict)


class CaptionedTensorDataset(TensorDataset):
    """Examples in memory with a caption each; items stay ``(x, label)``, so any trainer reads it as
    a :class:`~multidiff.modality.TensorDataset`, and ``captions[i]`` is example ``i``'s caption.

    ``attributes`` (optional) maps an attribute's name to its codes ``(N,)``, ``attribute_values``
    the name to its value names (code ``k`` is ``attribute_values[name][k]``): what a built-in set's
    captions state, for a judge to check samples against. ``variants`` (optional): per example,
    more captions of it (:func:`caption_variants`) that training draws from in place of
    ``captions[i]``; ``captions`` stays the one caption an example is shown and prompted with.
    """

    def __init__(
        self,
        x: Tensor,
        labels: Tensor | None,
        captions: Sequence[str],
        attributes: Mapping[str, Tensor] | None = None,
        attribute_values: Mapping[str, Sequence[str]] | None = None,
        variants: Sequence[Sequence[str]] | None = None,
    ) -> None:
        super().__init__(x, labels)
        if len(captions) != x.shape[0]:
            raise ValueError(f"{len(captions)} captions for {x.shape[0]} examples")
        if variants is not None and len(variants) != x.shape[0]:
            raise ValueError(f"{len(variants)} lists of caption variants for {x.shape[0]} examples")
        self.captions = list(captions)
        self.variants = None if variants is None else [tuple(v) for v in variants]
        self.attributes = {k: torch.as_tensor(v, dtype=torch.long) for k, v in (attributes or {}).items()}
        self.attribute_values = {k: tuple(v) for k, v in (attribute_values or {}).items()}
        for k, v in self.attributes.items():
            if v.shape != (x.shape[0],) or k not in self.attribute_values:
                raise ValueError(f"attribute {k!r} needs a code per example and its value names")

    def attributes_of(self, i: int) -> dict[str, str]:
        """Example ``i``'s attributes by name (``{"digit": "7", "thickness": "thick", ...}``)."""
        return {k: self.attribute_values[k][int(v[i])] for k, v in self.attributes.items()}

    def example(self, i: int) -> CaptionedExample:
        return CaptionedExample(self.x[i], int(self.labels[i]), self.captions[i], self.attributes_of(i))

    def subset(self, idx: Sequence[int] | Tensor) -> CaptionedTensorDataset:
        """The examples ``idx``, in that order, captions and attributes with them."""
        i = torch.as_tensor(idx, dtype=torch.long)
        return CaptionedTensorDataset(
            self.x[i],
            self.labels[i],
            [self.captions[j] for j in i.tolist()],
            {k: v[i] for k, v in self.attributes.items()},
            self.attribute_values,
            None if self.variants is None else [self.variants[j] for j in i.tolist()],
        )


def captions_of(dataset: Any) -> list[str] | None:
    """A data set's captions (its ``captions`` attribute, one per example), or ``None``."""
    caps = getattr(dataset, "captions", None)
    return list(caps) if caps is not None else None


def caption_variants_of(dataset: Any) -> list[tuple[str, ...]] | None:
    """A data set's caption variants (its ``variants`` attribute: per example, the other captions
    training may use in place of its caption; see :func:`caption_variants`), or ``None``."""
    var = getattr(dataset, "variants", None)
    return [tuple(v) for v in var] if var is not None else None


# ---------------------------------------------------------------- composing captions


@dataclass(frozen=True)
class Attribute:
    """A property a caption states: its ``values`` and, per value, the phrases that say it
    (synonyms; ``""`` lets a caption leave the value unsaid, for a default such as "upright").
    ``unsaid``: what stands in its slot when a caption leaves the attribute out (nothing, or for
    the noun of a sentence a word that names no value: "a small shape on the left")."""

    name: str
    values: tuple[str, ...]
    phrases: Mapping[str, Sequence[str]]
    unsaid: tuple[str, ...] = ("",)

    def __post_init__(self) -> None:
        missing = [v for v in self.values if not self.phrases.get(v)]
        if missing:
            raise ValueError(f"attribute {self.name!r} has no phrase for {', '.join(missing)}")
        if not self.unsaid:
            raise ValueError(f"attribute {self.name!r}: unsaid needs at least one phrase ('' for nothing)")

    def unsaid_phrase(self, rng: random.Random) -> str:
        """What fills the attribute's slot when a caption leaves it out (one draw only where there
        is a choice, so captions that leave out a one-phrase attribute draw as before)."""
        return rng.choice(self.unsaid) if len(self.unsaid) > 1 else self.unsaid[0]

    def code(self, value: str) -> int:
        return self.values.index(value)


_ARTICLE = re.compile(r"\b([Aa]) (?=(?:8\b|8[0-9]|eight|eleven|[aeiou]))")


def _tidy(text: str) -> str:
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([,:.])", r"\1", text)  # no space before punctuation (an empty slot)
    text = re.sub(r"([,:])(?:\s*[,:])+", r"\1", text)  # ", ," from an empty slot
    text = re.sub(r"\b(?:at|and)\s*(?=[,:]|$)", "", text)  # a connective before an empty slot: "at ," -> ","
    text = re.sub(r"(^|[,:])\s*and\b", r"\1", text)  # ... or after one: ", and loud" -> ", loud"
    text = re.sub(r"\b([Aa]n?)\s*[,:]\s*", r"\1 ", text)  # "a , bright tone" -> "a bright tone"
    text = re.sub(r"\s+([,:.])", r"\1", text)
    text = re.sub(r"([,:])(?:\s*[,:])+", r"\1", text)
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"^[\s,:]+|[\s,:]+$", "", text)
    text = _ARTICLE.sub(lambda m: m.group(1) + "n ", text)  # "a 8" -> "an 8", "a upright" -> "an upright"
    return text


def compose_caption(
    values: Mapping[str, str],
    attributes: Mapping[str, Attribute],
    templates: Sequence[str],
    rng: random.Random,
    *,
    unsaid: Sequence[str] = (),
) -> str:
    """A caption for attribute ``values``: a random template whose ``{name}`` slots get a random
    phrase of each value (for the attributes named in ``unsaid``, their :attr:`Attribute.unsaid`
    phrase, usually nothing), tidied (empty slots and the "at" or "and" left beside one, commas,
    "a"/"an").

    >>> size = Attribute("size", ("small", "large"), {"small": ["small", "tiny"], "large": ["big"]})
    >>> compose_caption({"size": "large"}, {"size": size}, ["a {size} thing"], random.Random(0))
    'a big thing'
    """
    template = rng.choice(list(templates))
    slots = {
        k: attributes[k].unsaid_phrase(rng) if k in unsaid else rng.choice(list(attributes[k].phrases[v]))
        for k, v in values.items()
    }
    return _tidy(template.format(**slots))


def caption_variants(
    values: Mapping[str, str],
    attributes: Mapping[str, Attribute],
    templates: Sequence[str],
    rng: random.Random,
    count: int,
    *,
    drop: float = 0.0,
    keep: Sequence[str] = (),
) -> tuple[str, ...]:
    """``count`` more captions of attribute ``values`` (:func:`compose_caption` with fresh draws of
    template and synonyms), for training to draw from in place of an example's one caption.

    ``drop``: the probability that an attribute other than those in ``keep`` is left unsaid in a
    variant (partial captions, "a bright tone at E4" for a loud, bright, sustained E4; at least one
    attribute is always said). A model trained on them must read each attribute's words on their
    own, and at guidance the words of a full caption add up: the conditional model of a caption is
    then close to a product of its parts, the compositional reading of classifier-free guidance
    (Liu et al. 2022, "Compositional Visual Generation with Composable Diffusion Models", eq. 6).

    >>> size = Attribute("size", ("small", "large"), {"small": ["small"], "large": ["big"]})
    >>> kind = Attribute("kind", ("box", "ball"), {"box": ["box"], "ball": ["ball"]})
    >>> caption_variants({"size": "large", "kind": "box"}, {"size": size, "kind": kind}, ["a {size} {kind}"],
    ...                  random.Random(0), 3, drop=0.99, keep=("kind",))
    ('a box', 'a box', 'a box')
    """
    if count < 0 or not 0.0 <= drop < 1.0:
        raise ValueError(f"caption_variants: need count >= 0 and 0 <= drop < 1, got {count}, {drop}")
    unknown = [k for k in keep if k not in values]
    if unknown:
        raise ValueError(f"caption_variants: keep names attributes the values lack: {unknown}")
    out = []
    for _ in range(count):
        unsaid = [k for k in values if k not in keep and rng.random() < drop]
        if len(unsaid) == len(values):  # nothing would be said: say one at random
            unsaid.remove(rng.choice(unsaid))
        out.append(compose_caption(values, attributes, templates, rng, unsaid=unsaid))
    return tuple(out)


def factor_captions(
    values: Mapping[str, str],
    attributes: Mapping[str, Attribute],
    templates: Sequence[str],
    factors: Sequence[Sequence[str]],
    rng: random.Random,
) -> tuple[str, ...]:
    """One caption per factor of attribute ``values``, saying only that factor's attributes ("a
    small shape", "a cone lying on its side", "a shape on the left"): the parts a prompt is
    composed of (``"... AND ..."``, :func:`multidiff.conditioning.split_prompt`).

    A model trained on them learns ``p(x | factor)`` for each factor. Where a caption's attributes
    are functions of the example (as a built-in set's are), ``p(x | c) = p(x) prod_k p(c_k | x)``,
    so ``grad log p(x | c) = grad log p(x) + sum_k (grad log p(x | c_k) - grad log p(x))``: the
    product of the factors' conditionals is the full caption's, and a combination no example has
    is composed of factors every one of which training saw (Liu et al. 2022, "Compositional Visual
    Generation with Composable Diffusion Models", eqs. 9-10). ``factors`` group attributes whose
    words depend on each other (a shape's orientation is said the kind's way: one factor).

    >>> size = Attribute("size", ("small", "large"), {"small": ["small"], "large": ["big"]})
    >>> kind = Attribute("kind", ("box", "ball"), {"box": ["box"], "ball": ["ball"]}, unsaid=("thing",))
    >>> factor_captions({"size": "large", "kind": "box"}, {"size": size, "kind": kind}, ["a {size} {kind}"],
    ...                 [["kind"], ["size"]], random.Random(0))
    ('a box', 'a big thing')
    """
    out = []
    for factor in factors:
        unknown = [k for k in factor if k not in values]
        if unknown or not factor:
            raise ValueError(f"factor_captions: a factor names attributes the values lack: {list(factor)}")
        unsaid = [k for k in values if k not in factor]
        out.append(compose_caption(values, attributes, templates, rng, unsaid=unsaid))
    return tuple(out)


def matches(values: Mapping[str, str], combination: Mapping[str, str]) -> bool:
    """Whether ``values`` has every attribute value of ``combination`` (a partial assignment)."""
    return all(values.get(k) == v for k, v in combination.items())


def held_out_mask(
    codes: Mapping[str, Tensor], attributes: Mapping[str, Attribute], held_out: Sequence[Mapping[str, str]]
) -> Tensor:
    """``(N,)`` bool: the examples (attribute ``codes``, ``(N,)`` each) matching any of the
    ``held_out`` combinations (partial assignments such as ``{"digit": "7", "slant": "left"}``)."""
    n = next(iter(codes.values())).shape[0] if codes else 0
    out = torch.zeros(n, dtype=torch.bool)
    for combo in held_out:
        unknown = [k for k in combo if k not in attributes or combo[k] not in attributes[k].values]
        if unknown:
            raise ValueError(f"held-out combination {dict(combo)} names unknown attributes or values: {unknown}")
        hit = torch.ones(n, dtype=torch.bool)
        for k, v in combo.items():
            hit &= codes[k] == attributes[k].code(v)
        out |= hit
    return out


def variants_of_examples(
    values: Sequence[Mapping[str, str]],
    attributes: Mapping[str, Attribute] | Callable[[Mapping[str, str]], Mapping[str, Attribute]],
    templates: Sequence[str],
    *,
    count: int,
    drop: float,
    keep: Sequence[str],
    seed: int,
    factors: Sequence[Sequence[str]] = (),
) -> list[tuple[str, ...]] | None:
    """:func:`caption_variants` of every example's attribute ``values``, then, for ``factors``, its
    :func:`factor_captions` (``None`` when there are neither), from a random stream of their own
    (seeded by ``seed``), so an example's one caption does not change with them. ``attributes``
    may be a function of the values (a kind's own words)."""
    if count == 0 and not factors:
        return None
    rng = random.Random(f"{seed}:caption_variants")
    words = attributes if callable(attributes) else (lambda _: attributes)
    out = [caption_variants(v, words(v), templates, rng, count, drop=drop, keep=keep) for v in values]
    if factors:
        frng = random.Random(f"{seed}:caption_factors")
        out = [o + factor_captions(v, words(v), templates, factors, frng) for o, v in zip(out, values)]
    return out
