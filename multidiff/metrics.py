"""Modality-agnostic sample-quality metrics: Fréchet distances and a small rank-generic classifier.

The Fréchet distance between two Gaussians (Dowson & Landau 1982) is what FID computes on
Inception features (Heusel et al. 2017, sec. 3):

    d^2 = ||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2).

Here it is computed in float64 from symmetric eigendecompositions only, so it is well defined
for singular covariances (fewer samples than features) and needs no scipy.

Where no pretrained feature network exists for a modality (1D signals, voxels, small toy
images), :class:`FeatureClassifier` stands in: a small convnet over any number of spatial axes,
trained on labelled real data (:func:`train_classifier`, cached on disk by
:func:`cached_classifier`). Its accuracy on generated samples of a requested class measures
conditional fidelity (the "classification accuracy score" idea of Ravuri & Vinyals 2019, used
the other way round), and the Fréchet distance of its pooled features measures distribution
match (:func:`feature_frechet`).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .nn import conv_nd, group_norm

__all__ = [
    "gaussian_stats",
    "frechet_distance",
    "frechet_distance_features",
    "FeatureClassifier",
    "train_classifier",
    "cached_classifier",
    "cache_key",
    "extract_features",
    "predict",
    "class_accuracy",
    "feature_frechet",
]

# Bump when FeatureClassifier's layout changes, so cached weights of the old layout are not reused.
ARCHITECTURE_VERSION = 1

# --- Fréchet distance -----------------------------------------------------------------------


def gaussian_stats(feats: Tensor) -> tuple[Tensor, Tensor]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)``, in float64, of features ``(N, D)``."""
    feats = torch.as_tensor(feats)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"need features of shape (N, D) with N >= 2, got {tuple(feats.shape)}")
    x = feats.detach().to(torch.float64)
    mu = x.mean(dim=0)
    xc = x - mu
    cov = xc.T @ xc / (x.shape[0] - 1)
    return mu, cov


def _sym(a: Tensor) -> Tensor:
    return 0.5 * (a + a.T)


def _sqrtm_psd(a: Tensor) -> Tensor:
    """Square root of a symmetric positive semi-definite matrix; eigenvalues below 0 (round-off) clamp to 0."""
    evals, evecs = torch.linalg.eigh(_sym(a))
    return (evecs * evals.clamp_min(0).sqrt()) @ evecs.T


def frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    """Squared Fréchet (2-Wasserstein) distance between ``N(mu1, cov1)`` and ``N(mu2, cov2)``.

    ``||mu1 - mu2||^2 + tr(C1) + tr(C2) - 2 tr((C1^1/2 C2 C1^1/2)^1/2)`` (Dowson & Landau 1982;
    the FID of Heusel et al. 2017). ``C1^1/2 C2 C1^1/2`` is symmetric PSD, so its trace-root is
    the sum of the square roots of its eigenvalues: two ``eigh`` calls in float64, no complex
    ``sqrtm``. The result is clamped at 0 against round-off.
    """
    mu1, mu2 = (torch.as_tensor(m, dtype=torch.float64).reshape(-1) for m in (mu1, mu2))
    cov1, cov2 = (torch.as_tensor(c, dtype=torch.float64) for c in (cov1, cov2))
    d = mu1.shape[0]
    if mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise ValueError(
            f"shapes do not match: mu1 {tuple(mu1.shape)}, cov1 {tuple(cov1.shape)}, "
            f"mu2 {tuple(mu2.shape)}, cov2 {tuple(cov2.shape)}"
        )
    cov2 = cov2.to(cov1.device)
    s1 = _sqrtm_psd(cov1)
    cross = torch.linalg.eigvalsh(_sym(s1 @ cov2 @ s1)).clamp_min(0).sqrt().sum()
    diff = (mu1 - mu2.to(mu1.device)).pow(2).sum()
    fd = diff + torch.diagonal(cov1).sum() + torch.diagonal(cov2).sum() - 2 * cross
    return max(float(fd), 0.0)


def frechet_distance_features(a: Tensor, b: Tensor) -> float:
    """:func:`frechet_distance` between the Gaussian fits of two feature sets ``(N, D)`` and ``(M, D)``."""
    return frechet_distance(*gaussian_stats(a), *gaussian_stats(b))


# --- the classifier -------------------------------------------------------------------------


class FeatureClassifier(nn.Module):
    """A small convnet over ``dims`` spatial axes: ``(B, C, *spatial) -> (B, num_classes)`` logits.

    One block per width: 3-wide convolution, GroupNorm, SiLU, then a stride-2 3-wide convolution
    (GroupNorm, SiLU) that halves every spatial axis (rounding up, so any size >= 1 works). The
    very first convolution has no GroupNorm (see below). Global average pooling over all spatial
    axes gives the features ``(B, widths[-1])`` (:meth:`features`), and a linear head the logits.
    Inputs are expected roughly in [-1, 1], the range the diffusion models work in.
    """

    def __init__(
        self, dims: int, in_channels: int, num_classes: int, widths: Sequence[int] = (32, 64, 128), groups: int = 8
    ) -> None:
        super().__init__()
        if not widths or any(w < 1 for w in widths) or in_channels < 1 or num_classes < 1:
            raise ValueError("need at least one positive width, one input channel and one class")
        self.dims = dims
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.widths = tuple(int(w) for w in widths)
        self.groups = groups
        layers: list[nn.Module] = []
        c = in_channels
        for i, w in enumerate(self.widths):
            # No normalization right after the input: per-sample GroupNorm there would make the
            # features blind to a global brightness or contrast change, which a metric must see.
            layers += [conv_nd(dims, c, w, 3, padding=1), group_norm(w, groups) if i else nn.Identity(), nn.SiLU()]
            layers += [conv_nd(dims, w, w, 3, stride=2, padding=1), group_norm(w, groups), nn.SiLU()]
            c = w
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c, num_classes)

    def config(self) -> dict[str, Any]:
        """The constructor arguments, JSON-ready: ``FeatureClassifier(**m.config())`` rebuilds the layout."""
        return {
            "dims": self.dims,
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "widths": list(self.widths),
            "groups": self.groups,
        }

    def _check(self, x: Tensor) -> None:
        if x.ndim != self.dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"this classifier takes (B, {self.in_channels}, *spatial) with {self.dims} spatial axes, "
                f"got shape {tuple(x.shape)}"
            )

    def features(self, x: Tensor) -> Tensor:
        """Globally pooled features ``(B, widths[-1])``."""
        self._check(x)
        return self.body(x).flatten(2).mean(dim=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _fork_devices(device: torch.device) -> list[torch.device]:
    return [device] if device.type == "cuda" else []


def train_classifier(
    x: Tensor,
    labels: Tensor,
    *,
    dims: int | None = None,
    num_classes: int | None = None,
    widths: Sequence[int] = (32, 64, 128),
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 0.05,
    seed: int = 0,
    augment: Callable[[Tensor], Tensor] | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> FeatureClassifier:
    """Train a :class:`FeatureClassifier` on ``x (N, C, *spatial)`` with integer ``labels (N,)``.

    AdamW with cross-entropy; the learning rate warms up linearly over the first epoch's steps
    (at most 100) and decays on a cosine to 0. Deterministic given ``seed`` (on one device and
    thread count): initialisation, shuffling and ``augment`` draw from torch's global RNG, seeded
    inside a forked RNG state so the caller's stream is left untouched. ``augment(batch) ->
    batch`` is applied to each training batch on ``device``. ``dims`` defaults to
    ``x.ndim - 2``, ``num_classes`` to ``labels.max() + 1``. ``x`` may stay on the CPU; batches
    move to ``device`` (default: ``x``'s). Returns the classifier in eval mode on ``device``.
    """
    x = torch.as_tensor(x)
    labels = torch.as_tensor(labels).reshape(-1).long()
    dims = x.ndim - 2 if dims is None else dims
    if x.ndim != dims + 2 or x.shape[0] != labels.shape[0] or x.shape[0] < 1:
        raise ValueError(
            f"need x (N, C, *spatial) with {dims} spatial axes and labels (N,), got {tuple(x.shape)} and {tuple(labels.shape)}"
        )
    if (labels < 0).any():
        raise ValueError("labels must be non-negative class indices")
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    if int(labels.max()) >= num_classes:
        raise ValueError(f"labels reach {int(labels.max())} but num_classes is {num_classes}")
    device = torch.device(device) if device is not None else x.device
    n = x.shape[0]
    steps_per_epoch = -(-n // batch_size)
    total = max(1, epochs * steps_per_epoch)
    warmup = min(100, steps_per_epoch)

    with torch.random.fork_rng(devices=_fork_devices(device)):
        torch.manual_seed(seed)
        model = FeatureClassifier(dims, x.shape[1], num_classes, widths).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt,
            lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)),
        )
        model.train()
        epoch_iter: Any = range(epochs)
        if progress:
            from tqdm.auto import tqdm

            epoch_iter = tqdm(epoch_iter, desc="classifier", unit="epoch")
        for _ in epoch_iter:
            order = torch.randperm(n)
            run_loss = 0.0
            for i in range(0, n, batch_size):
                idx = order[i : i + batch_size]
                xb = x[idx].to(device=device, dtype=torch.float32, non_blocking=True)
                yb = labels[idx].to(device)
                if augment is not None:
                    xb = augment(xb)
                loss = F.cross_entropy(model(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                run_loss += loss.item() * idx.numel()
            if progress:
                epoch_iter.set_postfix(loss=f"{run_loss / n:.4f}")
    return model.eval()


# --- the on-disk cache ----------------------------------------------------------------------

_TRAIN_SIGNATURE = inspect.signature(train_classifier)


def _hash_tensor(h: Any, t: Tensor) -> None:
    t = torch.as_tensor(t).detach().cpu().contiguous()
    h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))


def _key_value(v: Any) -> Any:
    """A JSON-ready stand-in for a training argument; callables by qualified name (their body is not hashed)."""
    if callable(v):
        return f"{getattr(v, '__module__', '?')}.{getattr(v, '__qualname__', type(v).__qualname__)}"
    if isinstance(v, (tuple, list)):
        return [_key_value(u) for u in v]
    return v


# Arguments that change where or how verbosely training runs, not what it learns.
_NOT_IN_KEY = ("device", "progress")


def cache_key(x: Tensor, labels: Tensor, *, tag: str, **train_kwargs: Any) -> str:
    """SHA-256 of ``tag``, the bytes of ``x`` and ``labels``, the effective training arguments
    (defaults filled in) and :data:`ARCHITECTURE_VERSION`."""
    bound = _TRAIN_SIGNATURE.bind(x, labels, **train_kwargs)
    bound.apply_defaults()
    args = {k: _key_value(v) for k, v in bound.arguments.items() if k not in ("x", "labels", *_NOT_IN_KEY)}
    h = hashlib.sha256()
    h.update(json.dumps({"tag": tag, "arch": ARCHITECTURE_VERSION, "train": args}, sort_keys=True).encode())
    _hash_tensor(h, x)
    _hash_tensor(h, labels)
    return h.hexdigest()[:32]


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cached_classifier(
    x: Tensor, labels: Tensor, *, cache_dir: Path | str, tag: str, **train_kwargs: Any
) -> FeatureClassifier:
    """:func:`train_classifier` once per (tag, data, arguments, architecture), then load from disk.

    Files: ``cache_dir/<key>.json`` (constructor arguments and what was trained) and
    ``cache_dir/<key>.safetensors`` (weights; loaded with safetensors, never pickle). Each is
    written to a temporary name and renamed, the weights last, so a present weights file means
    a complete entry. An ``augment`` callable enters the key by its qualified name only: change
    ``tag`` when its behaviour changes.
    """
    from safetensors.torch import load_file, save_file

    cache_dir = Path(cache_dir)
    key = cache_key(x, labels, tag=tag, **train_kwargs)
    weights, meta = cache_dir / f"{key}.safetensors", cache_dir / f"{key}.json"
    device = train_kwargs.get("device")
    if weights.exists() and meta.exists():
        info = json.loads(meta.read_text())
        model = FeatureClassifier(**info["config"])
        model.load_state_dict(load_file(str(weights)))
        target = torch.device(device) if device is not None else torch.as_tensor(x).device
        return model.to(target).eval()
    model = train_classifier(x, labels, **train_kwargs)
    cache_dir.mkdir(parents=True, exist_ok=True)
    info = {"config": model.config(), "tag": tag, "architecture_version": ARCHITECTURE_VERSION}
    _atomic_write(meta, lambda p: Path(p).write_text(json.dumps(info, indent=2)))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _atomic_write(weights, lambda p: save_file(state, p))
    return model


# --- evaluation -----------------------------------------------------------------------------


@torch.no_grad()
def _batched(fn: Callable[[Tensor], Tensor], classifier: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    device = _device_of(classifier)
    dtype = next(classifier.parameters()).dtype
    was_training = classifier.training
    classifier.eval()
    try:
        outs = [
            fn(x[i : i + batch_size].to(device=device, dtype=dtype)).cpu() for i in range(0, x.shape[0], batch_size)
        ]
    finally:
        classifier.train(was_training)
    return torch.cat(outs)


def extract_features(classifier: FeatureClassifier, x: Tensor, batch_size: int = 256) -> Tensor:
    """Pooled features ``(N, D)`` of ``x``, on the CPU, in batches on the classifier's device."""
    return _batched(classifier.features, classifier, x, batch_size)


def predict(classifier: nn.Module, x: Tensor, batch_size: int = 256) -> Tensor:
    """Predicted class indices ``(N,)`` (argmax of the logits), on the CPU."""
    return _batched(classifier, classifier, x, batch_size).argmax(dim=1)


def class_accuracy(classifier: nn.Module, x: Tensor, labels: Tensor, batch_size: int = 256) -> float:
    """Fraction of ``x`` the classifier assigns to ``labels``."""
    labels = torch.as_tensor(labels).reshape(-1).cpu()
    if labels.shape[0] != x.shape[0]:
        raise ValueError(f"{x.shape[0]} inputs but {labels.shape[0]} labels")
    return (predict(classifier, x, batch_size) == labels).double().mean().item()


def feature_frechet(classifier: FeatureClassifier, x_a: Tensor, x_b: Tensor, batch_size: int = 256) -> float:
    """Fréchet distance between the classifier's pooled features of two sets (an FID with this network)."""
    return frechet_distance_features(
        extract_features(classifier, x_a, batch_size), extract_features(classifier, x_b, batch_size)
    )
