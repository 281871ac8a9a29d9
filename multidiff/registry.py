"""Modalities are found through the entry-point group ``multidiff.modalities``.

A third party adds a modality by shipping a package that declares, in its ``pyproject.toml``::

    [project.entry-points."multidiff.modalities"]
    mydata = "mypackage.adapter:MyAdapter"

Entry points are only listed here; an adapter is imported when it is asked for, so
``import multidiff`` never imports a modality's heavy dependencies.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any

GROUP = "multidiff.modalities"

__all__ = ["GROUP", "modality_entry_points", "available_modalities", "load_modality"]


def modality_entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def available_modalities() -> list[str]:
    return sorted(modality_entry_points())


def load_modality(name: str) -> Any:
    eps = modality_entry_points()
    if name not in eps:
        known = ", ".join(sorted(eps)) or "none installed"
        raise ValueError(f"unknown modality {name!r}; installed modalities: {known}")
    return eps[name].load()
