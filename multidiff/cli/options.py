"""Command-line flags for the sampling options, made from :class:`~multidiff.config.SampleConfig`.

Every field of the ``sample`` section is a flag of ``multidiff sample``, ``multidiff edit ...`` and
``multidiff eval`` (``guidance_interval`` -> ``--guidance-interval``), with the field's
description as its help and the run's value as its default; a new field is a new flag with no
change here. :func:`sample_overrides` turns the parsed flags back into field values for
:meth:`SampleConfig.with_overrides <multidiff.config.SampleConfig.with_overrides>`.
"""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any, Literal, Union

from ..config import SampleConfig, _parse_value

# shorter or traditional spellings of some fields' flags
ALIASES: dict[str, tuple[str, ...]] = {
    "guidance_scale": ("--guidance",),
    "num_samples": ("-n", "--num"),
    "options": ("--option",),
}
_DEST = "sample__"


def _kind(annotation: Any) -> tuple[str, tuple[Any, ...]]:
    """A field's annotation as one of: bool, auto_bool, choice (with the choices), pair, mapping,
    number types, texts (one text or a list: a repeatable flag) or text."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        rest = tuple(a for a in args if a is not type(None))
        if bool in rest and any(typing.get_origin(a) is Literal for a in rest):
            return "auto_bool", ()
        if str in rest and any(typing.get_origin(a) is list for a in rest):
            return "texts", ()
        if len(rest) == 1:
            return _kind(rest[0])
        return "text", ()
    if origin is Literal:
        return "choice", args
    if origin is tuple:
        return "pair", args
    if origin is dict:
        return "mapping", ()
    if annotation is bool:
        return "bool", ()
    if annotation in (int, float):
        return "number", (annotation,)
    return "text", ()


def add_sample_flags(p: argparse.ArgumentParser, *, exclude: tuple[str, ...] = ()) -> None:
    """One flag per ``sample`` field (except ``exclude``), defaulting to the run's value."""
    g = p.add_argument_group("sampling options (default: the run's sample section)")
    for name, field in SampleConfig.model_fields.items():
        if name in exclude:
            continue
        flags = ALIASES.get(name, ()) or ("--" + name.replace("_", "-"),)
        help_ = (field.description or f"sample.{name}").replace("%", "%%")
        kind, args = _kind(field.annotation)
        dest = _DEST + name
        if kind == "bool":
            g.add_argument(*flags, dest=dest, action="store_const", const=True, help=help_)
        elif kind == "auto_bool":
            g.add_argument(*flags, dest=dest, choices=("auto", "on", "off"), help=help_)
        elif kind == "choice":
            g.add_argument(*flags, dest=dest, choices=args, help=help_)
        elif kind == "pair":
            g.add_argument(*flags, dest=dest, nargs=len(args), type=args[0], metavar=name.upper(), help=help_)
        elif kind == "mapping":
            g.add_argument(*flags, dest=dest, action="append", metavar="KEY=VALUE", help=help_ + " (repeatable)")
        elif kind == "texts":
            g.add_argument(*flags, dest=dest, action="append", metavar="TEXT", help=help_ + " (repeatable)")
        elif kind == "number":
            g.add_argument(*flags, dest=dest, type=args[0], metavar=name.upper(), help=help_)
        else:
            g.add_argument(*flags, dest=dest, metavar=name.upper(), help=help_)


def sample_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The ``sample`` fields the flags of :func:`add_sample_flags` set (``None``: not given)."""
    out: dict[str, Any] = {}
    for key, value in vars(args).items():
        if not key.startswith(_DEST) or value is None:
            continue
        name = key.removeprefix(_DEST)
        kind = _kind(SampleConfig.model_fields[name].annotation)[0]
        if kind == "auto_bool" and value in ("on", "off"):
            value = value == "on"
        elif kind == "mapping":
            pairs = {}
            for item in value:
                k, sep, v = item.partition("=")
                if not sep or not k:
                    raise ValueError(f"{ALIASES['options'][0]} expects KEY=VALUE, got {item!r}")
                pairs[k.strip()] = _parse_value(v)
            value = pairs
        elif kind == "texts":
            value = value[0] if len(value) == 1 else list(value)
        elif isinstance(value, list):
            value = tuple(value)
        out[name] = value
    return out


def flag_of(name: str) -> str:
    """The (first) flag of a ``sample`` field."""
    return (ALIASES.get(name) or ("--" + name.replace("_", "-"),))[-1]


def sampling_options(pipe: Any, args: argparse.Namespace) -> SampleConfig:
    """The run's ``sample`` section with the flags given; a class given by name is checked
    against the model's classes here, so an error names the flag."""
    s = pipe.options(**sample_overrides(args))
    if s.negative_class is not None:
        s = s.with_overrides(negative_class=pipe.label(s.negative_class, flag_of("negative_class")))
    return s


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The model a command uses: a run or checkpoint folder (or a diffusers folder, detected), or
    ``--diffusers PATH``."""
    p.add_argument(
        "checkpoint",
        nargs="?",
        help="a checkpoint folder, a run folder (its newest checkpoint) or a diffusers folder (detected)",
    )
    p.add_argument(
        "--diffusers",
        metavar="PATH",
        help="a local diffusers folder instead: a pipeline (model_index.json, unet/, scheduler/) or a UNet "
        "folder with its scheduler config (multidiff.interop.diffusers)",
    )


def load_model(args: argparse.Namespace) -> Any:
    """The :class:`~multidiff.pipeline.Pipeline` of :func:`add_model_args`' arguments."""
    from ..pipeline import Pipeline, load_pipeline

    if (args.checkpoint is None) == (getattr(args, "diffusers", None) is None):
        raise ValueError("give the model as exactly one of a checkpoint/run folder or --diffusers PATH")
    if args.diffusers is not None:
        return Pipeline.from_diffusers(args.diffusers, device=args.device)
    return load_pipeline(args.checkpoint, device=args.device)


def add_pipeline_args(p: argparse.ArgumentParser, *, exclude: tuple[str, ...] = ()) -> None:
    """For scripts built on a trained model: the run or checkpoint, ``--device`` and the sampling flags."""
    p.add_argument("checkpoint", help="a run folder (its newest checkpoint) or a checkpoint folder")
    p.add_argument("--device", default="auto")
    add_sample_flags(p, exclude=exclude)


def pipeline_from_args(p: argparse.ArgumentParser, args: argparse.Namespace, *, modality: str | None = None) -> Any:
    """``(pipeline, sampling options)`` of :func:`add_pipeline_args`' flags; a model of another
    ``modality``, a bad flag or an unreadable checkpoint ends in ``p.error`` (exit 2, one line)."""
    from ..pipeline import load_pipeline

    try:
        pipe = load_pipeline(args.checkpoint, device=args.device, modality=modality)
        return pipe, sampling_options(pipe, args)
    except ValueError as e:
        p.error(str(e))
