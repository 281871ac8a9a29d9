"""CUDA graphs for small models: one launch for hundreds of kernels.

A small network (the 1.2M-parameter digits UNet, the tones and shapes nets) runs each of its
hundreds of kernels in a few microseconds on a modern GPU, so eager PyTorch spends its time
launching them and the GPU idles (56-78 ms per training step of the shipped digits, tones and
shapes configs on an H200, 5.8-7.8 ms as graphs: benchmarks/README.md). A CUDA graph records the
kernels once and replays them with one launch.

Two users, each for static shapes:

* the trainer captures its whole optimizer step (forward, backward, clipping, AdamW, EMA; see
  :class:`multidiff.train.Trainer`), with the random draws made before the replay so that every
  step is still seeded by ``(seed, step)``;
* :func:`multidiff.pipeline.generate` wraps the network in :class:`GraphedNet`, which captures one
  graph per input signature (a batch and its classifier-free-guidance double) and replays it at
  every sampler step.

``cuda_graphs`` settings are ``"auto"`` (on where they can run: a CUDA device, and for training no
DDP and no fp16 loss scaling), ``True`` (on, or an error naming why they cannot be) and ``False``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["GraphSetting", "graphs_enabled", "GraphedNet", "side_stream", "warm_up_and_capture"]

GraphSetting = bool | str  # True, False or "auto"


def graphs_enabled(setting: GraphSetting, device: torch.device, obstacles: dict[str, bool], key: str) -> bool:
    """Whether to use CUDA graphs: ``setting`` (``auto``/``True``/``False``) on ``device``, given
    ``obstacles`` (a reason -> whether it holds). ``True`` with an obstacle raises, naming the
    config ``key`` and the reason; ``auto`` then quietly runs eagerly."""
    if setting not in (True, False, "auto"):
        raise ValueError(f"{key} must be true, false or 'auto', got {setting!r}")
    if setting is False:
        return False
    reasons = [r for r, holds in {"the device is not CUDA": device.type != "cuda", **obstacles}.items() if holds]
    if reasons and setting is True:
        raise ValueError(f"{key}=true, but CUDA graphs cannot run here: {'; '.join(reasons)} (use auto or false)")
    return not reasons


@contextmanager
def side_stream(device: torch.device) -> Iterator[None]:
    """Run the block on a fresh CUDA stream ordered after the current one, and order the current
    one after it: where PyTorch asks a capture's warm-up to run (nothing on other devices)."""
    if device.type != "cuda":
        yield
        return
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        yield
    torch.cuda.current_stream(device).wait_stream(side)


def warm_up_and_capture(fn: Callable[[], Any], pool: Any = None, warmup: int = 1) -> tuple[torch.cuda.CUDAGraph, Any]:
    """Run ``fn`` ``warmup`` times on a side stream (lazy initialisation: cuBLAS/cuDNN handles,
    autotuning, allocations), then capture one call into a graph; returns the graph and what the
    captured call returned (its tensors are the graph's static outputs). ``warmup=0`` captures at
    once, for a ``fn`` whose state is already initialised."""
    if warmup:
        with side_stream(torch.device("cuda", torch.cuda.current_device())):
            for _ in range(warmup):
                fn()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = fn()
    return graph, out


def _signature(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    def sig(v: Any) -> Any:
        if isinstance(v, Tensor):
            return ("T", tuple(v.shape), v.dtype, v.device)
        return ("V", v)  # None and Python values are baked into the graph: part of the key

    autocast = (torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
    return (autocast, tuple(sig(a) for a in args), tuple(sorted((k, sig(v)) for k, v in kwargs.items())))


class GraphedNet(nn.Module):
    """``net`` with every call replayed from a CUDA graph captured for its input signature.

    The first call with a new signature (shapes, dtypes, which keyword arguments are tensors,
    the autocast state) warms up once and captures; later calls copy their inputs into the
    graph's static buffers, replay, and return a copy of the static output (a sampler keeps
    earlier outputs, which the next replay would overwrite). Every graph of one ``GraphedNet``
    shares one memory pool. Calls with gradients enabled (classifier guidance differentiates
    through the network) and calls off CUDA run ``net`` eagerly.

    For inference: the graph reads the parameters in place (an update to their values is seen),
    but a parameter or module replaced by another object is not.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self._graphs: dict[tuple[Any, ...], tuple[torch.cuda.CUDAGraph, list[Tensor], Any]] = {}
        self._pool: Any = None
        self.self_condition = bool(getattr(net, "self_condition", False))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        tensors = [v for v in (*args, *kwargs.values()) if isinstance(v, Tensor)]
        if torch.is_grad_enabled() or not tensors or any(t.device.type != "cuda" for t in tensors):
            return self.net(*args, **kwargs)
        key = _signature(args, kwargs)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(args, kwargs)
            self._graphs[key] = entry
        graph, static_in, static_out = entry
        for buf, v in zip(static_in, tensors):
            buf.copy_(v)
        graph.replay()
        return static_out.clone()

    def _capture(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, list[Tensor], Any]:
        static_args = tuple(a.clone() if isinstance(a, Tensor) else a for a in args)
        static_kwargs = {k: v.clone() if isinstance(v, Tensor) else v for k, v in kwargs.items()}
        static_in = [v for v in (*static_args, *static_kwargs.values()) if isinstance(v, Tensor)]
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph, out = warm_up_and_capture(lambda: self.net(*static_args, **static_kwargs), pool=self._pool)
        if not isinstance(out, Tensor):
            raise TypeError(f"GraphedNet needs a network that returns one tensor, got {type(out).__name__}")
        return graph, static_in, out
