"""Latent diffusion as a data space: a trained autoencoder's encoder and decoder plus a fitted scale.

Latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion
Models", sec. 3) trains the diffusion model on the latent grid of a first-stage autoencoder.
Here that is one more :class:`~multidiff.denoiser.DataSpace`: :class:`LatentSpace` maps data
units ``(B, C, *spatial)`` to the denoiser's space ``(B, C_lat, *latent)`` by

    z = scale * (E(x) - shift),        x = D(z / scale + shift)

with ``E`` the posterior mean of the autoencoder's encoder and ``D`` its decoder (cropped back to
the data's size). Samplers, guidance and edits only see the denoiser's space, so every one of
them works on a latent model unchanged; :class:`~multidiff.pipeline.Pipeline` takes and returns
data units through the space, maps inpainting masks to the latent grid (:meth:`LatentSpace.encode_mask`)
and restores the known values in data space at the end.

**The scale** (LDM appendix G, "scale_by_std", sec. 4.3.2): the latents are rescaled to unit
standard deviation so that the noise schedule, designed for data of about unit variance, means
what it means on images. LDM takes ``1 / std`` of the first training batch's posterior samples;
:func:`fit_scale_shift` takes it over the whole encoded training set, in closed form when the
training latents are posterior samples (``var = var(mean) + E[posterior var]``). ``shift`` is 0
(LDM) or the latents' mean (``auto``). Both are stored in every checkpoint's ``meta.json``.

**The cache** (:func:`encode_cached`): the data set is encoded once per (autoencoder weights,
data tensor, encode settings) and kept under ``$MULTIDIFF_CACHE/latents`` as safetensors
(posterior mean and log-variance), written to a temporary name and renamed; an unreadable file
is encoded again.

**The autoencoder is named, not copied**: a latent run records the autoencoder run's path and the
SHA-256 of its EMA weights (:class:`AutoencoderRecord`); :func:`open_autoencoder` finds that
checkpoint again and refuses, naming the path, when it is missing or its weights differ.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import save_tensors_atomic

__all__ = [
    "AutoencoderRecord",
    "LatentSpace",
    "LatentTraining",
    "check_autoencoder_run",
    "encode_cached",
    "encode_posterior",
    "fit_scale_shift",
    "latent_cache_dir",
    "latent_cache_key",
    "open_autoencoder",
    "weights_sha256",
]

CACHE_VERSION = 1  # bump when the cache's file layout or key changes


# --- the space ------------------------------------------------------------------------------------


class LatentSpace(nn.Module):
    """The map between data units and a latent denoiser's space through a frozen autoencoder.

    The same interface as :class:`~multidiff.denoiser.DataSpace` (``encode``, ``decode``,
    ``scale``, ``shift``, ``identity``, :meth:`model_shape`, :meth:`encode_mask`,
    :meth:`decode_mask`), plus the shapes: ``data_shape = (C, *spatial)`` of one example and
    ``shape = (C_lat, *latent)`` of its latent. It is an ``nn.Module`` so that it moves with the
    :class:`~multidiff.denoiser.Denoiser` that holds it (``.to(device)``); its autoencoder is frozen
    and never in a state dict the trainer saves (the denoiser's network is saved, not the denoiser).

    Args:
        autoencoder: an :class:`~multidiff.autoencoder.AutoencoderKL` (anything with
            ``encode(x) -> DiagonalGaussian``, ``decode(z, size)`` and ``latent_shape(shape)``).
        data_shape: ``(C, *spatial)`` of one example in data units.
        scale, shift: ``z = scale * (latent - shift)`` (see :func:`fit_scale_shift`).
        batch_size: examples per encoder or decoder call.
    """

    def __init__(
        self,
        autoencoder: nn.Module,
        data_shape: Sequence[int],
        scale: float = 1.0,
        shift: float = 0.0,
        *,
        batch_size: int = 64,
    ) -> None:
        super().__init__()
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.data_shape = tuple(int(s) for s in data_shape)
        self.shape = tuple(int(s) for s in autoencoder.latent_shape(self.data_shape))
        self.batch_size = int(batch_size)
        self.scale, self.shift = 1.0, 0.0
        self.set_scale(scale, shift)

    def set_scale(self, scale: float, shift: float) -> None:
        if not (math.isfinite(scale) and scale > 0) or not math.isfinite(shift):
            raise ValueError(f"the latent scale must be positive and finite and the shift finite, got {scale}, {shift}")
        self.scale, self.shift = float(scale), float(shift)

    def train(self, mode: bool = True) -> LatentSpace:
        """The autoencoder stays in eval mode (it is frozen; a trainer's ``.train()`` must not reach it)."""
        return super().train(False)

    @property
    def identity(self) -> bool:
        return False

    @property
    def factors(self) -> tuple[int, ...]:
        """The total downsampling per spatial axis (data elements per latent cell along it)."""
        return tuple(int(m) for m in self.autoencoder.multiple)

    def extra_repr(self) -> str:
        return f"data_shape={self.data_shape}, shape={self.shape}, scale={self.scale:.6g}, shift={self.shift:.6g}"

    def model_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """The denoiser's example shape for data examples of ``shape``: the latent shape."""
        if tuple(shape) != self.data_shape:
            raise ValueError(f"this latent space maps examples of shape {self.data_shape}, got {tuple(shape)}")
        return self.shape

    def normalize(self, latent: Tensor) -> Tensor:
        """An autoencoder latent to the denoiser's space: ``scale * (latent - shift)``."""
        return (latent - self.shift) * self.scale

    def denormalize(self, z: Tensor) -> Tensor:
        """The denoiser's space to an autoencoder latent: ``z / scale + shift``."""
        return z / self.scale + self.shift

    def _device(self) -> torch.device:
        return next(self.autoencoder.parameters()).device

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Data units ``(B, *data_shape)`` to the denoiser's space (the posterior mean, normalized),
        on ``x``'s device, float32. Deterministic: edits and inversion start from it."""
        x = x.float() if not x.is_floating_point() else x
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"this latent space encodes examples of shape {self.data_shape}, got {tuple(x.shape[1:])}")
        mean, _ = encode_posterior(self.autoencoder, x, self.batch_size)
        return self.normalize(mean.to(x.device))

    def decode(self, z: Tensor) -> Tensor:
        """The denoiser's space ``(B, *shape)`` back to data units ``(B, *data_shape)`` (same
        device and dtype as ``z``). Differentiable (classifier guidance on decoded estimates)."""
        if tuple(z.shape[1:]) != self.shape:
            raise ValueError(f"this latent space decodes latents of shape {self.shape}, got {tuple(z.shape[1:])}")
        dev = self._device()
        lat = self.denormalize(z.float())
        out = [
            self.autoencoder.decode(lat[i : i + self.batch_size].to(dev), self.data_shape[1:]).to(z.device)
            for i in range(0, z.shape[0], self.batch_size)
        ]
        return (torch.cat(out) if out else z.new_zeros((0, *self.data_shape))).to(z.dtype)

    def encode_mask(self, mask: Tensor) -> Tensor:
        """A mask on the data grid ``(B, C or 1, *spatial)`` (true: generate) on the latent grid
        ``(B, C_lat, *latent)``: a latent cell is generated when any data element it covers is
        (and kept only when all are known), so every known cell is the encoding of known data
        only. The axis padding the encoder replicates is replicated here too."""
        m = torch.as_tensor(mask).bool()
        if m.ndim != len(self.data_shape) + 1:
            raise ValueError(
                f"a mask on the data grid has shape (B, C, *spatial) of rank {len(self.data_shape) + 1}, got {tuple(m.shape)}"
            )
        m = m.any(dim=1, keepdim=True)
        f, spatial = self.factors, tuple(m.shape[2:])
        pad = [(-s) % k for s, k in zip(spatial, f)]
        if any(pad):
            m = F.pad(m.float(), [v for p in reversed(pad) for v in (0, p)], mode="replicate").bool()
        b = m.shape[0]
        cells = [s // k for s, k in zip(m.shape[2:], f)]
        split = [v for n, k in zip(cells, f) for v in (n, k)]  # (n1, f1, n2, f2, ...)
        m = m.reshape(b, 1, *split).amax(dim=tuple(3 + 2 * i for i in range(len(f))))
        return m.expand(b, self.shape[0], *cells)

    def decode_mask(self, mask: Tensor) -> Tensor:
        """A mask on the latent grid ``(B, C_lat or 1, *latent)`` on the data grid ``(B, 1, *spatial)``:
        each cell covers its data elements (nearest-neighbour upsampling, cropped to the data size)."""
        m = torch.as_tensor(mask).bool().any(dim=1, keepdim=True)
        for axis, k in enumerate(self.factors):
            m = m.repeat_interleave(k, dim=2 + axis)
        return m[(slice(None), slice(None), *(slice(0, s) for s in self.data_shape[1:]))]


# --- encoding, the scale fit and the cache ----------------------------------------------------------


@torch.no_grad()
def encode_posterior(autoencoder: nn.Module, x: Tensor, batch_size: int = 64) -> tuple[Tensor, Tensor]:
    """The posterior ``(mean, logvar)`` of every example of ``x (N, C, *spatial)``, encoded in
    batches of ``batch_size`` on the autoencoder's device; float32 on ``x``'s device."""
    dev = next(autoencoder.parameters()).device
    means, logvars = [], []
    for i in range(0, x.shape[0], batch_size):
        post = autoencoder.encode(x[i : i + batch_size].to(dev).float())
        means.append(post.mean.float().to(x.device))
        logvars.append(post.logvar.float().to(x.device))
    if not means:
        raise ValueError("no examples to encode")
    return torch.cat(means), torch.cat(logvars)


def fit_scale_shift(
    mean: Tensor, logvar: Tensor | None = None, *, scale: float | str = "auto", shift: float | str = 0.0
) -> tuple[float, float]:
    """The latent ``(scale, shift)`` of LDM's ``scale_by_std`` (Rombach et al. 2022, sec. 4.3.2 and
    appendix G): ``scale = 1 / std`` of the training latents, ``shift = 0`` or their mean (``auto``).

    The latents are the posterior means ``mean (N, C, *latent)``; with ``logvar`` they are posterior
    samples ``mean + std * eps``, whose variance is ``var(mean) + E[exp(logvar)]`` (the law of total
    variance), so the fit is exact instead of one draw's estimate. The std is taken about the
    latents' mean (as ``torch.std`` in LDM), whatever the shift. A number given for ``scale`` or
    ``shift`` is used as it is.
    """
    m = mean.double()
    mu = float(m.mean())
    var = float(m.var(unbiased=False))
    if logvar is not None:
        var += float(logvar.double().exp().mean())
    sh = mu if shift == "auto" else float(shift)
    if scale == "auto":
        if not var > 0:
            raise ValueError("the latents have zero variance: the autoencoder encodes every example alike")
        sc = 1.0 / math.sqrt(var)
    else:
        sc = float(scale)
    return sc, sh


def latent_cache_dir() -> Path:
    """``$MULTIDIFF_CACHE/latents``, else ``~/.cache/multidiff/latents``."""
    base = os.environ.get("MULTIDIFF_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "multidiff").expanduser() / "latents"


def _hash_tensor(h: Any, x: Tensor) -> None:
    t = x.detach().cpu().contiguous()
    h.update(f"{t.dtype}:{tuple(t.shape)}\0".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def latent_cache_key(weights: str, x: Tensor, *, batch_size: int, device: str) -> str:
    """The cache file of data ``x`` encoded by the autoencoder whose weights hash to ``weights``,
    ``batch_size`` examples per call on a ``device`` of that type: ``<hash>-v<version>.safetensors``."""
    h = hashlib.sha256(f"latents:{CACHE_VERSION}:{weights}:{batch_size}:{torch.device(device).type}\0".encode())
    _hash_tensor(h, x)
    return f"{h.hexdigest()[:32]}-v{CACHE_VERSION}.safetensors"


def _load(file: Path, weights: str, n: int) -> tuple[Tensor, Tensor] | None:
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
            mean, logvar = f.get_tensor("mean"), f.get_tensor("logvar")
    except Exception:  # missing, half-written, corrupt, another layout: encode again
        return None
    if meta.get("weights") != weights or mean.shape != logvar.shape or mean.shape[0] != n:
        return None
    if not (torch.isfinite(mean).all() and torch.isfinite(logvar).all()):
        return None
    return mean, logvar


def encode_cached(
    autoencoder: nn.Module,
    x: Tensor,
    *,
    weights: str,
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
) -> tuple[Tensor, Tensor, Path]:
    """The posterior ``(mean, logvar)`` of every example of ``x`` (CPU, float32), encoded once and
    kept on disk; also the cache file.

    The file, under ``cache_dir`` (default :func:`latent_cache_dir`), is named by
    :func:`latent_cache_key`: the autoencoder's ``weights`` hash (:func:`weights_sha256`), the
    bytes, dtype and shape of ``x`` and the encode settings (batch size, device type). A second
    call with the same three reads it and encodes nothing; other weights or other data are another
    file. Written to a temporary name and renamed, so a killed run leaves none half-written; an
    unreadable or inconsistent file is encoded again; an unwritable cache folder costs only the
    caching (a warning).
    """
    device = next(autoencoder.parameters()).device
    folder = Path(cache_dir).expanduser() if cache_dir is not None else latent_cache_dir()
    file = folder / latent_cache_key(weights, x, batch_size=batch_size, device=str(device))
    hit = _load(file, weights, x.shape[0])
    if hit is not None:
        return hit[0], hit[1], file
    mean, logvar = encode_posterior(autoencoder, x.cpu(), batch_size)
    try:
        save_tensors_atomic({"mean": mean, "logvar": logvar}, {"weights": weights, "count": str(x.shape[0])}, file)
    except OSError as e:
        warnings.warn(f"cannot write the latent cache {str(file)!r} ({e}); the latents are not cached", stacklevel=2)
    return mean, logvar, file


# --- naming the autoencoder ---------------------------------------------------------------------------


def weights_sha256(ckpt: Any) -> str:
    """SHA-256 of a checkpoint's EMA weights file (the weights a latent space loads): the hash its
    ``meta.json`` recorded (checked on every read), or the file's own for a checkpoint without one."""
    files = ckpt.meta.get("files")
    if (
        isinstance(files, dict)
        and isinstance(files.get("ema.safetensors"), dict)
        and "sha256" in files["ema.safetensors"]
    ):
        return str(files["ema.safetensors"]["sha256"])
    return hashlib.sha256((Path(ckpt.path) / "ema.safetensors").read_bytes()).hexdigest()


@dataclass(frozen=True)
class AutoencoderRecord:
    """What a latent checkpoint records of its autoencoder and space (``meta.json["latent"]``).

    Attributes:
        autoencoder: the run (or checkpoint) folder as the config named it (``latent.autoencoder``).
        run: that folder made absolute when the run started.
        checkpoint: the autoencoder checkpoint folder used (absolute).
        sha256: SHA-256 of its EMA weights.
        data_shape, latent_shape: one example's shape in data units and in the latent.
        scale, shift: the fitted ``z = scale * (latent - shift)``.
        posterior: ``mean`` or ``sample``: what the model was trained on.
    """

    autoencoder: str
    run: str
    checkpoint: str
    sha256: str
    data_shape: tuple[int, ...]
    latent_shape: tuple[int, ...]
    scale: float
    shift: float
    posterior: str = "mean"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["data_shape"], d["latent_shape"] = list(self.data_shape), list(self.latent_shape)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> AutoencoderRecord:
        return cls(
            str(d["autoencoder"]),
            str(d["run"]),
            str(d["checkpoint"]),
            str(d["sha256"]),
            tuple(int(s) for s in d["data_shape"]),
            tuple(int(s) for s in d["latent_shape"]),
            float(d["scale"]),
            float(d["shift"]),
            str(d.get("posterior", "mean")),
        )


def _candidates(folder: Path) -> list[Any]:
    """The checkpoints of a run folder (newest first), or the checkpoint folder itself."""
    from .checkpoint import find_checkpoint, list_checkpoints

    if (folder / "meta.json").is_file():
        return [find_checkpoint(folder)]
    return [find_checkpoint(p) for p in reversed(list_checkpoints(folder))]


def _autoencoder_checkpoints(path: str | Path, what: str) -> list[Any]:
    """The checkpoints of the autoencoder run at ``path``, newest first; ``ValueError`` naming
    ``what`` and the path when the folder is missing or holds none."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ValueError(
            f"{what}: the autoencoder run {str(path)!r} does not exist"
            + (f" (looked for {str(p.resolve())!r})" if not p.is_absolute() else "")
            + "; train it first (multidiff train <its task: autoencoder config>)"
        )
    try:
        found = _candidates(p)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None
    if not found:
        raise ValueError(f"{what}: {str(path)!r} holds no checkpoint of an autoencoder run")
    return found


def open_autoencoder(
    path: str | Path,
    *,
    modality: str,
    data_shape: Sequence[int],
    sha256: str | None = None,
    device: str = "cpu",
    what: str = "latent.autoencoder",
) -> tuple[nn.Module, Any, str]:
    """The frozen autoencoder a latent run names, with its checkpoint and weights hash.

    ``path`` is an autoencoder run folder (its newest checkpoint) or a checkpoint folder. With
    ``sha256`` (a latent checkpoint being loaded or resumed), the checkpoint of the run whose EMA
    weights have that hash, whichever step it is. ``ValueError`` naming ``what`` and the path: a
    missing folder, a folder without checkpoints, a diffusion run, an autoencoder of another
    modality or data shape (:func:`multidiff.autoencoder.load_autoencoder`), or no checkpoint with
    the recorded weights.
    """
    from .autoencoder import load_autoencoder

    found = _autoencoder_checkpoints(path, what)
    pick = found[0]
    if sha256 is not None:
        match = [c for c in found if weights_sha256(c) == sha256]
        if not match:
            raise ValueError(
                f"{what}: the autoencoder in {str(path)!r} is not the one this latent model was trained with: "
                f"it recorded EMA weights of SHA-256 {sha256[:16]}..., and {str(path)!r} holds "
                + ", ".join(f"{c.path.name} ({weights_sha256(c)[:16]}...)" for c in found)
                + "; restore that autoencoder checkpoint (or point to it)"
            )
        pick = match[0]
    try:
        net, _, ckpt = load_autoencoder(pick.path, device=device, modality=modality, data_shape=data_shape)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None
    return net, ckpt, weights_sha256(ckpt)


def check_autoencoder_run(path: str | Path, modality: str, what: str = "latent.autoencoder") -> None:
    """The quick checks a latent run makes before anything else (no weights read): the folder
    exists and its newest checkpoint is an autoencoder of ``modality``; ``ValueError`` naming the path."""
    found = _autoencoder_checkpoints(path, what)
    meta = found[0].meta
    task = meta.get("task", meta.get("config", {}).get("task", "diffusion"))
    if task != "autoencoder":
        raise ValueError(f"{what}: {str(path)!r} holds a {task} run, not an autoencoder (task: autoencoder)")
    if meta.get("modality") != modality:
        raise ValueError(
            f"{what}: {str(path)!r} holds an autoencoder of {meta.get('modality')} data, not of {modality} data"
        )


# --- training on latents -------------------------------------------------------------------------------


class LatentTraining:
    """What a ``latent:`` section adds to a diffusion run (:class:`multidiff.train.DiffusionObjective`):
    the autoencoder's :class:`LatentSpace`, the training set encoded once (cached) with the scale
    and shift fitted on it, and each micro-batch's latents.

    Args:
        cfg: the run's resolved config (its ``latent`` section names the autoencoder run).
        info: the data's description (``info.shape`` in data units).
        pinned: the latent record of a checkpoint being resumed: its autoencoder (by weights hash),
            scale and shift are kept instead of taking the run's newest and fitting again.
    """

    def __init__(self, cfg: Any, info: Any, *, pinned: dict[str, Any] | None = None) -> None:
        lc = cfg.run.latent
        self.settings = lc
        self.pinned = AutoencoderRecord.from_json(pinned) if pinned is not None else None
        net, ckpt, sha = open_autoencoder(
            lc.autoencoder,
            modality=cfg.adapter.name,
            data_shape=info.shape,
            sha256=self.pinned.sha256 if self.pinned is not None else None,
        )
        self.checkpoint, self.sha256 = ckpt, sha
        self.space = LatentSpace(net, info.shape, batch_size=lc.encode_batch_size)
        if self.pinned is not None:
            if self.space.shape != self.pinned.latent_shape:
                raise ValueError(
                    f"--resume: the checkpoint's latent shape is {self.pinned.latent_shape}, the autoencoder's "
                    f"{self.space.shape}"
                )
            self.space.set_scale(self.pinned.scale, self.pinned.shift)
        self.cache_file: Path | None = None

    @property
    def sample(self) -> bool:
        """Train on posterior samples (LDM) rather than the posterior mean."""
        return self.settings.posterior == "sample"

    def dataset(self, dataset: Any) -> Any:
        """The training set as latents: a :class:`~multidiff.modality.TensorDataset` of the posterior
        mean (and log-variance, stacked on the channel axis, for ``posterior: sample``) with the
        labels, in the data set's order; encoded once (:func:`encode_cached`). Fits the scale and
        shift (:func:`fit_scale_shift`) unless they were pinned by a resumed checkpoint."""
        from .evaluate import real_examples
        from .modality import TensorDataset

        x, y = real_examples(dataset)
        lc = self.settings
        mean, logvar, self.cache_file = encode_cached(
            self.space.autoencoder, x, weights=self.sha256, batch_size=lc.encode_batch_size
        )
        if self.pinned is None:
            scale, shift = fit_scale_shift(mean, logvar if self.sample else None, scale=lc.scale, shift=lc.shift)
            self.space.set_scale(scale, shift)
        stats = torch.cat([mean, logvar], dim=1) if self.sample else mean
        return TensorDataset(stats, y)

    def batch(self, stats: Tensor, generator: torch.Generator, rows: Any) -> Tensor:
        """A micro-batch of cached statistics as latents in the denoiser's space: the mean, or a
        posterior sample ``mean + std * eps`` with ``eps`` drawn for the whole global batch from
        ``generator`` (so a resumed or data-parallel run draws the same)."""
        if not self.sample:
            return self.space.normalize(stats.float())
        c = self.space.shape[0]
        mean, logvar = stats[:, :c].float(), stats[:, c:].float()
        eps = rows.draw(torch.randn, tuple(mean.shape[1:]), generator, dtype=mean.dtype)
        return self.space.normalize(mean + torch.exp(0.5 * logvar) * eps)

    def record(self) -> AutoencoderRecord:
        """What the checkpoint records of the autoencoder and the space."""
        return AutoencoderRecord(
            autoencoder=str(self.settings.autoencoder),
            run=str(Path(self.settings.autoencoder).expanduser().resolve()),
            checkpoint=str(Path(self.checkpoint.path).resolve()),
            sha256=self.sha256,
            data_shape=self.space.data_shape,
            latent_shape=self.space.shape,
            scale=self.space.scale,
            shift=self.space.shift,
            posterior=self.settings.posterior,
        )
