"""Output screening: a checker sees every generated batch, with its prompts and labels, before
anything is written; what it flags is replaced by zeros (data units) or dropped, and counted.

The ``sample`` section names the checker (off by default):

* ``checker: "package.module:function"``: any importable function
  ``fn(x, *, prompts, labels) -> flags``: ``x (B, *shape)`` in data units (float32, CPU),
  ``prompts`` a list of ``B`` strings or ``None`` (a model without text), ``labels (B,)`` or
  ``None``; ``flags``: ``B`` booleans (a tensor or a sequence), True for an output to withhold.
* ``checker: "classifier:7,9"``: the run's own data classifier (the one classifier guidance uses,
  trained once on the training set and cached) flags outputs it assigns to any of these classes
  (names or indices).

``checker_action: replace`` (the default) keeps the batch's size with flagged outputs set to 0 in
data units (mid-grey pictures, silence); ``drop`` leaves them out. :class:`Screening` counts
what was checked, flagged, replaced and dropped; ``multidiff sample`` prints it and writes it
beside the samples.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["OutputScreen", "Screening", "build_screen", "load_checker"]

CheckerFn = Callable[..., Any]


@dataclass
class Screening:
    """What a checker did to one call's outputs."""

    checker: str
    action: str
    checked: int = 0
    flagged: int = 0

    @property
    def replaced(self) -> int:
        return self.flagged if self.action == "replace" else 0

    @property
    def dropped(self) -> int:
        return self.flagged if self.action == "drop" else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "checker": self.checker,
            "action": self.action,
            "checked": self.checked,
            "flagged": self.flagged,
            "replaced": self.replaced,
            "dropped": self.dropped,
        }

    def summary(self) -> str:
        what = "replaced by zeros" if self.action == "replace" else "dropped"
        return f"checker {self.checker} flagged {self.flagged} of {self.checked} outputs ({what})"


def load_checker(spec: str) -> CheckerFn:
    """The function ``"package.module:function"`` names (``function`` may be dotted: ``Class.method``);
    ``ValueError`` saying what is wrong otherwise."""
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"sample.checker must be 'module:function' or 'classifier:CLASSES', got {spec!r}")
    try:
        obj: Any = importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"sample.checker {spec!r}: cannot import {module!r} ({e})") from None
    for part in name.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"sample.checker {spec!r}: {module!r} has no {name!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"sample.checker {spec!r} is not callable")
    return obj


class OutputScreen:
    """A checker and its action (``replace`` or ``drop``), counting into :attr:`report`."""

    def __init__(self, fn: CheckerFn, name: str, action: str = "replace") -> None:
        if action not in ("replace", "drop"):
            raise ValueError(f"checker_action must be 'replace' or 'drop', got {action!r}")
        self.fn, self.report = fn, Screening(name, action)

    def __call__(self, x: Tensor, prompts: Sequence[str] | None, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(x, keep)``: the batch with flagged rows zeroed (``replace``; ``keep`` all True) or
        as it is with ``keep`` False for the flagged rows (``drop``)."""
        b = x.shape[0]
        flags = self.fn(x, prompts=None if prompts is None else list(prompts), labels=labels)
        flags = torch.as_tensor(flags)
        if flags.shape != (b,):
            raise ValueError(
                f"checker {self.report.checker} returned flags of shape {tuple(flags.shape)} for {b} outputs"
            )
        flags = flags.to(torch.bool).cpu()
        self.report.checked += b
        self.report.flagged += int(flags.sum())
        if self.report.action == "drop":
            return x, ~flags
        return torch.where(flags.view(-1, *[1] * (x.ndim - 1)), torch.zeros_like(x), x), torch.ones(b, dtype=torch.bool)


def _classifier_checker(classes: list[int], config: Any, info: Any, device: Any) -> CheckerFn:
    """Flags outputs that the run's data classifier assigns to one of ``classes``."""
    from .pipeline import data_classifier

    log_prob = data_classifier(config, info, device)
    k = info.num_classes

    def check(x: Tensor, *, prompts: Any = None, labels: Any = None) -> Tensor:
        with torch.no_grad():
            xs = x.to(device)
            scores = torch.stack(
                [log_prob(xs, torch.full((x.shape[0],), c, dtype=torch.long, device=xs.device)) for c in range(k)], 1
            )
        return torch.isin(scores.argmax(1).cpu(), torch.tensor(classes))

    return check


def build_screen(sample: Any, config: Any = None, info: Any = None, device: Any = "cpu") -> OutputScreen | None:
    """The screen ``sample.checker`` names (``None`` when off). The ``classifier:`` form needs the
    run's ``config`` and data ``info`` (its training data trains the classifier)."""
    spec = sample.checker
    if spec is None:
        return None
    if spec.startswith("classifier:"):
        from .pipeline import resolve_label

        if config is None or info is None:
            raise ValueError(f"sample.checker {spec!r} needs the run's training data (sample through a Pipeline)")
        if not info.num_classes:
            raise ValueError(f"sample.checker {spec!r}: this model has no classes for a classifier to flag")
        names = [c.strip() for c in spec.removeprefix("classifier:").split(",") if c.strip()]
        if not names:
            raise ValueError(f"sample.checker {spec!r} names no class")
        classes = [int(resolve_label(c, info, "sample.checker class")) for c in names]  # type: ignore[arg-type]
        return OutputScreen(_classifier_checker(classes, config, info, device), spec, sample.checker_action)
    return OutputScreen(load_checker(spec), spec, sample.checker_action)
