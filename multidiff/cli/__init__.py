"""The ``multidiff`` command line: each command parses its flags, makes one library call and prints.

``multidiff train CONFIG``          trains the model a YAML config describes (``--set``, ``--resume``)
``multidiff sample RUN``            samples a trained model with any sampler, guidance scale and class
``multidiff edit EDIT RUN``         edits a file: inpaint, sdedit, invert, interpolate, diffedit
``multidiff eval RUN``              scores a trained model with its modality's judge
``multidiff demo``                  trains a small model of each installed modality on built-in data
``multidiff plot WHAT``             plots schedules, forward noising or loss curves (a PNG)
``multidiff samplers``              lists the registered samplers
``multidiff modalities``            lists the installed modality adapters

One module per command (:mod:`.train`, :mod:`.sample`, :mod:`.edit`, :mod:`.eval`, :mod:`.demo`,
:mod:`.plot`), each with ``add_parser(sub)``; the library they call is
:class:`multidiff.pipeline.Pipeline`, :class:`multidiff.train.Trainer` and :mod:`multidiff.plots`.

Exit codes: 0 success, 1 a failure while running, 2 bad input (config, paths, arguments).
"""

from __future__ import annotations

import argparse
import sys

from .. import registry
from .. import samplers as SM
from . import demo, edit, plot, sample, train
from . import eval as eval_

__all__ = ["build_parser", "main"]


def _cmd_samplers(_: argparse.Namespace) -> int:
    print(f"{'name':<24}{'order':>6}  {'stochastic':<11}{'NFE for n steps':<17}summary")
    for name in SM.available_samplers():
        spec = SM.get_sampler(name)
        nfe = "adaptive" if spec.nfe is None else ("n" if spec.nfe(7) == 7 else f"{spec.nfe(7)} for n=7")
        print(f"{name:<24}{spec.order:>6}  {str(spec.stochastic):<11}{nfe:<17}{spec.summary}")
    return 0


def _cmd_modalities(_: argparse.Namespace) -> int:
    eps = registry.modality_entry_points()
    if not eps:
        print(f"no modality adapters installed (entry-point group {registry.GROUP!r})")
    for name, ep in sorted(eps.items()):
        print(f"{name:<12}{ep.value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="multidiff", description="Diffusion models over any kind of data.")
    p.add_argument("--version", action="version", version=f"multidiff {__import__('multidiff').__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for module in (demo, plot, train, sample, edit, eval_):
        module.add_parser(sub)
    sub.add_parser("samplers", help="list the registered samplers").set_defaults(func=_cmd_samplers)
    sub.add_parser("modalities", help="list the installed modality adapters").set_defaults(func=_cmd_modalities)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ValueError as e:
        print(f"multidiff: error: {e}", file=sys.stderr)
        return 2
    except (FloatingPointError, MemoryError, OSError) as e:  # diverged, out of memory, disk full...
        print(f"multidiff: error: {e.strerror if isinstance(e, OSError) and e.strerror else e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
