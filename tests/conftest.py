"""Shared fixtures: per-sample shapes for tensor ranks 1 to 5 (batch axis included)."""

from __future__ import annotations

import pytest
import torch

# rank of the whole tensor -> per-sample shape: (B,), (B, C), (B, C, L), (B, C, H, W), (B, C, D, H, W)
RANK_SHAPES = {1: (), 2: (3,), 3: (2, 5), 4: (2, 3, 3), 5: (1, 2, 2, 3)}


@pytest.fixture(params=sorted(RANK_SHAPES), ids=lambda r: f"rank{r}")
def rank_shape(request: pytest.FixtureRequest) -> tuple[int, ...]:
    return RANK_SHAPES[request.param]


@pytest.fixture(autouse=True)
def _threads() -> None:
    # One thread: the tensors in tests are tiny, and OpenMP threads that spin on an oversubscribed
    # 2-core machine make small convolutions 100x slower.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # voxel caches (and anything else under MULTIDIFF_CACHE) go to a temporary folder, not ~/.cache
    monkeypatch.setenv("MULTIDIFF_CACHE", str(tmp_path_factory.getbasetemp() / "multidiff_cache"))
