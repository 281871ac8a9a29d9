"""One training engine for every modality.

:class:`Trainer` turns a :class:`~multidiff.config.ResolvedConfig` into a trained model: AdamW
with linear warmup (and optional cosine decay), gradient clipping and accumulation, an EMA of
the weights with warmup, bf16/fp16 autocast and ``torch.compile`` on request, a progress bar,
CSV or JSONL metrics, periodic sample files and atomic checkpoints.

**Exact resume.** Every random draw of micro-step ``k`` (the batch order, noise levels, noise,
label dropout, augmentation, dropout inside the network) comes from generators seeded with
``(seed, k)``, and the batch order of epoch ``e`` is a permutation seeded with ``(seed, e)``.
So the state of a run is just its weights, EMA, optimizer state and step: resuming at step N
and training M more steps computes exactly what one run of N + M steps computes.

**What is trained is pluggable.** The loop (optimizer, EMA, clipping, precision, DDP, faults,
metrics, checkpoints, resume) is one; *what the model is and what the loss of a batch is* is an
objective (:class:`Objective`): :class:`DiffusionObjective` for ``task: diffusion`` (a denoiser and
the denoising loss) and :class:`multidiff.autoencoder.AutoencoderObjective` for ``task:
autoencoder`` (a KL autoencoder, its reconstruction losses and an optional discriminator, which
the loop updates with a second optimizer).

**Data parallel.** Under ``torchrun`` each process trains its slice of the global batch
(``train.batch_size``) inside ``DistributedDataParallel``; every per-example draw is made for the
whole global batch and sliced (:mod:`multidiff.distributed`), so the weights are those of one
process with the same batch, and a run resumes under any number of processes. Only rank 0 writes
files (config, metrics, samples, checkpoints) and shows a progress bar.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler, default_collate

from . import config as C
from ._util import amp_dtype, append_dims
from .checkpoint import (
    check_state_dict,
    find_checkpoint,
    grow_class_embedding,
    list_checkpoints,
    load_state_dict_checked,
    save_checkpoint,
)
from .cuda_graphs import graphs_enabled, side_stream, warm_up_and_capture
from .denoiser import Denoiser
from .distributed import Rows, current_rows, global_rows, setup
from .losses import diffusion_loss, sample_sigma_log_normal, sample_sigma_logit_normal, sample_sigma_uniform_t
from .pipeline import build_denoiser, data_classifier, generate, resolve_device, write_record
from .screening import build_screen

__all__ = [
    "DiffusionObjective",
    "Objective",
    "Trainer",
    "TrainResult",
    "build_objective",
    "ema_decay",
    "lr_factor",
    "step_seed",
    "drop_labels",
    "read_metrics",
]


def step_seed(seed: int, k: int) -> int:
    """A seed for micro-step (or epoch) ``k`` of a run seeded with ``seed``; distinct for distinct pairs."""
    return (seed * 1_000_003 + k * 7_919 + 12_345) % (2**63 - 1)


def lr_factor(step: int, warmup: int, total: int, kind: str = "constant") -> float:
    """Learning-rate multiplier: linear warmup over ``warmup`` steps, then constant or cosine to 0."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


def ema_decay(step: int, decay: float, warmup: bool = True) -> float:
    """EMA decay at optimizer step ``step``: ``min(decay, (1 + step) / (10 + step))`` with warmup,
    so early averages are not dominated by the random initialisation (as in Song et al.'s NCSN++ code)."""
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


def drop_labels(labels: Tensor, p: float, null: int, generator: torch.Generator) -> Tensor:
    """Replace each label by the null class with probability ``p`` (classifier-free guidance training,
    Ho & Salimans 2022, alg. 1)."""
    if p <= 0:
        return labels
    u = current_rows(labels.shape[0]).draw(torch.rand, labels.shape[1:], generator).to(labels.device)
    return torch.where(u < p, torch.full_like(labels, null), labels)


class _EpochBatches(Sampler[list[int]]):
    """Batch indices for micro-steps ``start, start + 1, ...``: epoch ``e`` is a permutation seeded
    with ``(seed, e)``, cut into ``n // batch`` full batches, of which this process takes ``rows``.
    Stateless, so a resumed run sees exactly the batches it would have seen, on any process count."""

    def __init__(self, n: int, batch: int, seed: int, start: int, rows: Rows | None = None) -> None:
        self.n, self.batch, self.seed, self.start = n, batch, seed, start
        self.rows = rows or Rows(0, batch, batch)
        self.per_epoch = n // batch
        self._perm: tuple[int, Tensor] | None = None  # (epoch, permutation) of the last batch asked for

    def indices(self, k: int) -> list[int]:
        """This process's example indices of micro-step ``k`` (a pure function of ``k``)."""
        e, i = divmod(k, self.per_epoch)
        if self._perm is None or self._perm[0] != e:
            g = torch.Generator().manual_seed(step_seed(self.seed, -1 - e))
            self._perm = (e, torch.randperm(self.n, generator=g))
        first = i * self.batch
        return self._perm[1][first + self.rows.start : first + self.rows.stop].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        k = self.start
        while True:
            yield self.indices(k)
            k += 1

    def __len__(self) -> int:  # the DataLoader asks; the stream is endless
        return 2**62


def _identity_collate(batch: Any) -> Any:
    return batch


class Objective(Protocol):
    """What a run trains, for the one loop of :class:`Trainer`: the model, the random draws of a
    micro-step and the loss of a micro-batch (plus, optionally, a second network with its own loss).

    Attributes:
        task: the run's ``task`` (recorded in every checkpoint).
        net: the network the trainer optimizes, averages (EMA) and saves as ``model``/``ema.safetensors``.
        aux: a second network trained beside it by its own optimizer from :meth:`aux_loss` (a
            discriminator), kept in ``state.pt``; or None.
        part_names: the loss terms logged as extra metrics columns (each a mean over logged steps).
        parts: those terms of the last micro-batch, detached scalars (set by :meth:`loss`).
        graph_blockers: reasons (-> whether they hold) the step cannot run as CUDA graphs.
    """

    task: str
    net: nn.Module
    aux: nn.Module | None
    part_names: tuple[str, ...]
    parts: dict[str, Tensor]
    graph_blockers: dict[str, bool]

    def train_subset(self, dataset: Any) -> Any:
        """The examples it trains on (all, or all but a held-out part)."""

    def draws(self, x0: Tensor, labels: Tensor, g: torch.Generator, rows: Rows) -> Any:
        """Every random draw of one micro-step, from ``g`` (seeded by ``(seed, k)``), for the
        augmented batch ``x0`` (this process's ``rows`` of the global batch): the loss's inputs.
        Nothing random may happen later, so a CUDA graph of the loss replays with fresh draws."""

    def loss(self, net: nn.Module, inputs: Any, step: int) -> Tensor:
        """The mean loss of one micro-batch through ``net`` (this objective's network, maybe
        wrapped by DDP or ``torch.compile``) at optimizer step ``step``; no random draw."""

    def aux_loss(self, aux_net: nn.Module, step: int) -> Tensor | None:
        """The second network's loss on the last micro-batch (None: no update at this step)."""

    def meta(self) -> dict[str, Any]:
        """What a checkpoint's ``meta.json`` records of it (``task`` at least)."""

    def sample_files(self, ema: nn.Module, out: Path, callback: Callable[[dict[str, Any]], None] | None) -> list[Path]:
        """Files of what the EMA model makes (samples, reconstructions) in ``out``."""


class DiffusionObjective:
    """``task: diffusion``: the modality's network wrapped in its parameterization (a
    :class:`~multidiff.denoiser.Denoiser`); a micro-step draws noise levels, noise and label
    dropout; the loss is the weighted denoising loss (:func:`multidiff.losses.diffusion_loss`),
    with self-conditioning when the network takes it."""

    task = "diffusion"

    def __init__(
        self,
        cfg: C.ResolvedConfig,
        info: Any,
        device: torch.device,
        autocast: Callable[[], Any],
        text: Any = None,
        latent: dict[str, Any] | None = None,
    ) -> None:
        self.cfg, self.info, self.device, self.autocast = cfg, info, device, autocast
        # ``text``: the run's training text (multidiff.conditioning), whose encoder sits beside the network
        encoder = text.encoder if text is not None else None
        # a latent run (multidiff.latent): the autoencoder's space; ``latent`` is the record of a
        # checkpoint being resumed, whose autoencoder, scale and shift are kept
        self.latent = None
        if cfg.run.latent is not None:
            from .latent import LatentTraining

            self.latent = LatentTraining(cfg, info, pinned=latent)
        space = self.latent.space if self.latent is not None else None
        self.denoiser: Denoiser = build_denoiser(cfg, info, text=encoder, space=space).to(device)
        self.net: nn.Module = self.denoiser.net
        self.aux: nn.Module | None = None
        self.part_names: tuple[str, ...] = ()
        self.parts: dict[str, Tensor] = {}
        self.graph_blockers = {
            # a recomputed level replays its dropout from saved random state, which a capture cannot read
            "model.gradient_checkpointing recomputes levels from saved random state": any(
                getattr(m, "gradient_checkpointing", False) for m in self.net.modules()
            ),
        }

    def train_subset(self, dataset: Any) -> Any:
        """All examples; for a latent run their latents (encoded once, cached), with the scale fitted."""
        if self.latent is None:
            return dataset
        return self.latent.dataset(dataset)

    def _sigmas(self, n: int, g: torch.Generator) -> Tensor:
        d = self.cfg.run.diffusion
        sched = self.denoiser.schedule
        if d.noise_sampling == "log_normal":
            return sample_sigma_log_normal(n, p_mean=d.p_mean, p_std=d.p_std, generator=g, device=self.device)
        if d.noise_sampling == "logit_normal":
            return sample_sigma_logit_normal(
                sched, n, mean=d.logit_mean, std=d.logit_std, shift=d.time_shift, generator=g, device=self.device
            )
        return sample_sigma_uniform_t(sched, n, generator=g, device=self.device)

    def draws(
        self, x0: Tensor, labels: Tensor, g: torch.Generator, rows: Rows
    ) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """The batch in the denoiser's space, its noise levels, noise and (dropped) labels."""
        with global_rows(rows):  # per-example draws: whole global batch, this process's rows
            if self.latent is not None:  # cached posterior statistics -> the latent batch (maybe a sample)
                x0 = self.latent.batch(x0, g, rows)
            else:
                x0 = self.denoiser.space.encode(x0)
            cond: dict[str, Tensor] = {}
            if self.info.num_classes > 0:
                labels = labels.to(self.device, non_blocking=True).long()
                cond["class_labels"] = drop_labels(labels, self.cfg.run.train.label_dropout, self.info.num_classes, g)
        sigma = self._sigmas(rows.total, g)[rows.start : rows.stop]
        noise = rows.draw(torch.randn, tuple(x0.shape[1:]), g, dtype=x0.dtype)  # g lives on the device
        return x0, sigma, noise, cond

    def loss(self, net: nn.Module, inputs: tuple[Tensor, Tensor, Tensor, dict[str, Tensor]], step: int) -> Tensor:
        """The mean loss of one micro-batch; no random draw and no host read (CUDA-graph safe)."""
        x0, sigma, noise, cond = inputs
        d = self.cfg.run.diffusion
        den = self.denoiser if net is self.net else self.denoiser.with_net(net)
        if self.denoiser.self_condition:
            cond = {**cond, "self_cond": self._self_cond_estimate(den, x0, sigma, noise, cond)}
        with self.autocast():
            loss = diffusion_loss(
                den, x0, sigma, noise=noise, weighting=d.weighting, gamma=d.min_snr_gamma, bias=d.sigmoid_bias, **cond
            )
        return loss.mean()

    @torch.no_grad()
    def _self_cond_estimate(
        self, den: Denoiser, x0: Tensor, sigma: Tensor, noise: Tensor, cond: dict[str, Tensor]
    ) -> Tensor:
        """Self-conditioning's input (Chen et al. 2023, "Analog Bits", alg. 1): the model's own
        estimate, without gradient, for the first half of the rows (in random order already), zeros
        for the rest, so the network learns both to refine an estimate and to start from none."""
        est = torch.zeros_like(x0)
        h = x0.shape[0] // 2
        if h:
            s = sigma[:h].to(x0.dtype)
            x = x0[:h] + append_dims(s, x0.ndim) * noise[:h]
            with self.autocast():
                est[:h] = den(x, s, **{k: v[:h] for k, v in cond.items()}).to(x0.dtype)
        return est

    def aux_loss(self, aux_net: nn.Module, step: int) -> Tensor | None:
        return None

    def meta(self) -> dict[str, Any]:
        """The task; for a latent run also its autoencoder and space (:class:`multidiff.latent.AutoencoderRecord`)."""
        if self.latent is not None:
            return {"task": self.task, "latent": self.latent.record().to_json()}
        return {"task": self.task}

    def sample_files(self, ema: nn.Module, out: Path, callback: Callable[[dict[str, Any]], None] | None) -> list[Path]:
        """Samples of the EMA model as the ``sample`` section says (screened by its checker), in the
        adapter's files, with their prompts and the checker's counts beside them."""
        ema_denoiser = self.denoiser.with_net(ema)
        s = self.cfg.run.sample
        clf = data_classifier(self.cfg, self.info, self.device) if s.classifier_scale else None
        screen = build_screen(s, self.cfg, self.info, self.device)
        gen = generate(
            ema_denoiser, self.info, n=s.num_samples, sample=s, classifier=clf, callback=callback, checker=screen
        )
        paths = self.cfg.adapter.save_samples(gen.x, out, self.info, labels=gen.labels)
        return paths + write_record(out, gen, {"samples_of": out.name})  # prompts, screening


def build_objective(
    cfg: C.ResolvedConfig,
    info: Any,
    device: torch.device,
    autocast: Callable[[], Any],
    text: Any = None,
    latent: dict[str, Any] | None = None,
) -> Objective:
    """The objective of the run's ``task`` (on ``device``; ``autocast()`` the precision context;
    ``text`` the training text of a text-conditioned diffusion run; ``latent`` the latent record of
    a latent checkpoint being resumed)."""
    if cfg.run.task == "autoencoder":
        from .autoencoder import AutoencoderObjective

        return AutoencoderObjective(cfg, info, device, autocast)
    return DiffusionObjective(cfg, info, device, autocast, text, latent)


@dataclass
class TrainResult:
    step: int
    run_dir: Path
    checkpoint: Path | None
    losses: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False  # stopped early by SIGINT / SIGTERM (a checkpoint was written)


class _MetricsLog:
    """Append-only CSV or JSONL of logged rows; on resume, rows after the resumed step are dropped."""

    FIELDS = ("step", "loss", "lr", "grad_norm", "samples_per_s", "elapsed_s")

    def __init__(self, path: Path, fmt: str, resume_step: int | None, extra: tuple[str, ...] = ()) -> None:
        self.path, self.fmt = path, fmt
        self.fields = (*self.FIELDS, *extra)  # extra: an objective's loss terms
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None or not path.exists():
            path.write_text(",".join(self.fields) + "\n" if fmt == "csv" else "")
        else:
            rows = [r for r in self.read(path) if r["step"] <= resume_step]
            path.write_text(",".join(self.fields) + "\n" if fmt == "csv" else "")
            for r in rows:
                self.write(r)

    @staticmethod
    def read(path: Path) -> list[dict[str, float]]:
        if path.suffix == ".csv":
            with open(path, newline="") as f:
                return [{k: (int(v) if k == "step" else float(v)) for k, v in r.items()} for r in csv.DictReader(f)]
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def write(self, row: dict[str, float]) -> None:
        with open(self.path, "a", newline="") as f:
            if self.fmt == "csv":
                csv.writer(f).writerow([row.get(k, math.nan) for k in self.fields])
            else:
                f.write(json.dumps(row) + "\n")


class Trainer:
    """Train the model a resolved config describes.

    Args:
        cfg: the validated config (:func:`multidiff.config.load_config`).
        resume: continue from the newest checkpoint in ``cfg.run.out_dir`` (``True``) or from a
            given checkpoint folder (a path); the run then trains up to ``train.steps``.
    """

    def __init__(self, cfg: C.ResolvedConfig, *, resume: bool | str = False) -> None:
        self.cfg = cfg
        t = cfg.run.train
        self.t = t
        self.run_dir = Path(cfg.run.out_dir)
        self.world, self.device = setup(resolve_device(t.device))
        self.rows = Rows.of(t.batch_size, self.world)
        self.adapter = cfg.adapter
        if t.threads is not None:  # CPU intra-op threads; fewer than cores helps when the machine is shared
            torch.set_num_threads(t.threads)
        if t.deterministic:  # process-wide; cuBLAS needs its workspace fixed before the first call
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        torch.manual_seed(t.seed)
        # a latent run names an autoencoder run: it must be there before any work starts
        pinned = None
        if cfg.run.latent is not None:
            from .latent import check_autoencoder_run

            check_autoencoder_run(cfg.run.latent.autoencoder, self.adapter.name)
            pinned = self._latent_record(resume)
        # rank 0 builds the data first (downloads, voxel caches); the others then read what it wrote
        if not self.world.is_main:
            self.world.barrier()
        self.dataset, self.info = self.adapter.build_dataset(cfg.data)
        if self.world.is_main:
            self.world.barrier()
        # --- text conditioning (multidiff.conditioning): the encoder beside the network, each example's text
        self.text = None
        if cfg.run.text is not None:
            if cfg.run.task != "diffusion":
                raise ValueError(f"text conditioning is for diffusion runs; this run's task is {cfg.run.task!r}")
            from .conditioning import training_text

            self.text = training_text(cfg, self.dataset, self.world, self.device)
            self.info = self.text.describe(self.info)  # its example prompts: a checkpoint's default prompts
            self._examples = _EpochBatches(len(self.dataset), t.batch_size, t.seed, 0, self.rows)
        # --- end text conditioning
        # bf16 on GPUs that have it, fp16 with loss scaling on older ones, float32 on CPUs ("auto")
        self.amp = amp_dtype(t.precision, self.device)
        amp = self.amp
        # the run's objective: what the model is and what the loss of a batch is (its task)
        self.objective: Objective = build_objective(
            cfg, self.info, self.device, lambda: self.autocast(), self.text, pinned
        )
        # rank 0 first: a latent run encodes the data set once into the cache, the others read it
        if not self.world.is_main:
            self.world.barrier()
        self.dataset = self.objective.train_subset(self.dataset)
        if self.world.is_main:
            self.world.barrier()
        if len(self.dataset) < t.batch_size:
            raise ValueError(
                f"train.batch_size={t.batch_size} is larger than the data set ({len(self.dataset)} training "
                "examples); lower it"
            )
        self.net = self.objective.net
        self.ema = copy.deepcopy(self.net).requires_grad_(False).eval()
        # a diffusion run's denoiser and its EMA twin (None for other tasks)
        self.denoiser: Denoiser | None = getattr(self.objective, "denoiser", None)
        self.ema_denoiser = self.denoiser.with_net(self.ema) if self.denoiser is not None else None
        # the whole optimizer step as CUDA graphs (multidiff.cuda_graphs): small models are launch-bound
        self.graphs = graphs_enabled(
            t.cuda_graphs,
            self.device,
            {
                "the run is data-parallel (torchrun)": self.world.distributed,
                "fp16 needs the loss scaler's host-side step": amp == torch.float16,
                **self.objective.graph_blockers,
            },
            "train.cuda_graphs",
        )
        # one fused kernel for the whole update: on CPU 4x faster than the loop (2-4% of a step);
        # capturable keeps its step count on the device, as a graph needs
        fused = self.device.type in ("cuda", "cpu")
        self.opt = torch.optim.AdamW(
            self.net.parameters(),
            lr=t.lr,
            betas=t.adam_betas,
            weight_decay=t.weight_decay,
            fused=fused or None,
            capturable=self.graphs,
        )
        cache = not self.graphs  # autocast's cast cache must be off inside a CUDA graph capture
        self.autocast = (
            (lambda: torch.autocast(self.device.type, dtype=amp, cache_enabled=cache))
            if amp is not None
            else (lambda: nullcontext())
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp == torch.float16)
        # a second network with its own optimizer (an autoencoder's discriminator), not averaged
        self.aux = self.objective.aux
        self.aux_opt: torch.optim.Optimizer | None = None
        if self.aux is not None:
            self.aux_opt = torch.optim.AdamW(
                self.aux.parameters(),
                lr=getattr(cfg.autoencoder, "disc_lr", None) or t.lr,
                betas=t.adam_betas,
                weight_decay=t.weight_decay,
                fused=fused or None,
            )
        self.ddp: DistributedDataParallel | None = None
        self.aux_ddp: DistributedDataParallel | None = None
        if self.world.distributed:  # gradients are averaged over processes in backward
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.net, device_ids=ids)
            if self.aux is not None:
                self.aux_ddp = DistributedDataParallel(self.aux, device_ids=ids)
        wrapped = self.ddp or self.net
        self.forward_net: nn.Module = torch.compile(wrapped) if t.compile else wrapped
        self.aux_forward: nn.Module | None = self.aux_ddp or self.aux
        self.step = 0
        self.skipped: bool | None = False  # the last train_step was skipped (non-finite); None: graphed, unknown
        self._graphed: _GraphedStep | None = None
        self._resume_step: int | None = None
        if resume:
            self._resume(resume)
        elif t.init_from:
            self._init_from(t.init_from)

    # --- state --------------------------------------------------------------------------

    def _latent_record(self, resume: bool | str) -> dict[str, Any] | None:
        """The latent record (autoencoder, weights hash, scale, shift) of the checkpoint a latent run
        resumes, so it continues with the same autoencoder and space; None for a fresh run."""
        if not resume:
            return None
        if resume is True:
            if not list_checkpoints(self.run_dir):
                raise ValueError(f"--resume: no checkpoint in {self.run_dir / 'checkpoints'}")
            ckpt = find_checkpoint(self.run_dir)
        else:
            ckpt = find_checkpoint(resume)
        rec = ckpt.meta.get("latent")
        if not isinstance(rec, dict):
            raise ValueError(
                f"--resume: {ckpt.path} is not a checkpoint of a latent run (no latent record), and this run has a "
                "latent section"
            )
        return rec

    def _init_from(self, path: str) -> None:
        """Start from another run's EMA weights (fine-tuning); the class table grows to fit."""
        ckpt = find_checkpoint(path)
        state = ckpt.weights("ema")
        if self.info.num_classes > 0:
            # text conditioning: the network sits in a TextConditionedNet, under "net."
            key = "net.class_embed.weight" if self.text is not None else "class_embed.weight"
            state = grow_class_embedding(state, key, self.info.num_classes)
        load_state_dict_checked(self.net, state, str(ckpt.path))
        self.ema.load_state_dict(self.net.state_dict())

    def _resume(self, resume: bool | str) -> None:
        """Load a checkpoint's weights, EMA, optimizer, scaler, RNG and step, all or nothing: every
        file is read and verified (:meth:`Checkpoint.read_bytes`) and checked against this model
        before anything is applied, and a failure while applying restores what was there."""
        if resume is True:
            if not list_checkpoints(self.run_dir):
                raise ValueError(f"--resume: no checkpoint in {self.run_dir / 'checkpoints'}")
            ckpt = find_checkpoint(self.run_dir)
        else:
            ckpt = find_checkpoint(resume)
        task = ckpt.meta.get("task", "diffusion")
        if task != self.objective.task:
            raise ValueError(
                f"--resume: {ckpt.path} is a checkpoint of a {task} run, and this run's task is {self.objective.task}"
            )
        if "latent" in ckpt.meta and self.cfg.run.latent is None:
            raise ValueError(
                f"--resume: {ckpt.path} is a checkpoint of a latent run (autoencoder {ckpt.meta['latent'].get('autoencoder')}), "
                "and this run has no latent section"
            )
        model, ema, st = ckpt.weights("model"), ckpt.weights("ema"), ckpt.training_state()
        check_state_dict(self.net, model, str(ckpt.path / "model.safetensors"))
        check_state_dict(self.ema, ema, str(ckpt.path / "ema.safetensors"))
        state_pt = ckpt.path / "state.pt"
        if not isinstance(st, dict) or not all(k in st for k in ("optimizer", "rng_cpu", "step")):
            raise ValueError(f"cannot read {state_pt}: it lacks the optimizer, RNG or step{ckpt._earlier()}")
        if self.aux is not None:
            if not isinstance(st.get("aux"), dict) or "aux_optimizer" not in st:
                raise ValueError(
                    f"cannot resume from {state_pt}: it holds no discriminator (autoencoder.disc_weight was 0 in that "
                    f"run){ckpt._earlier()}"
                )
            check_state_dict(self.aux, st["aux"], f"{state_pt} (discriminator)")
        before = self._snapshot()
        try:
            self.net.load_state_dict(model)
            self.ema.load_state_dict(ema)
            self.opt.load_state_dict(st["optimizer"])
            for group in self.opt.param_groups:  # the saved run may have been graphed or not
                group["capturable"] = self.graphs
            if self.aux is not None and self.aux_opt is not None:
                self.aux.load_state_dict(st["aux"])
                self.aux_opt.load_state_dict(st["aux_optimizer"])
            if st.get("scaler"):
                self.scaler.load_state_dict(st["scaler"])
            torch.set_rng_state(st["rng_cpu"])
            step = int(st["step"])
        except Exception as e:  # a state.pt that does not fit this optimizer: back to before
            self._restore(before)
            raise ValueError(f"cannot load {state_pt} into this run: {e}{ckpt._earlier()}") from None
        self.step = step
        self._resume_step = self.step

    def _snapshot(self) -> dict[str, Any]:
        """Copies of everything :meth:`_resume` changes, for :meth:`_restore`."""
        return {
            "net": {k: v.clone() for k, v in self.net.state_dict().items()},
            "ema": {k: v.clone() for k, v in self.ema.state_dict().items()},
            "opt": copy.deepcopy(self.opt.state_dict()),
            "scaler": copy.deepcopy(self.scaler.state_dict()) if self.scaler.is_enabled() else None,
            "rng_cpu": torch.get_rng_state(),
            "aux": {k: v.clone() for k, v in self.aux.state_dict().items()} if self.aux is not None else None,
            "aux_opt": copy.deepcopy(self.aux_opt.state_dict()) if self.aux_opt is not None else None,
        }

    def _restore(self, snap: dict[str, Any]) -> None:
        self.net.load_state_dict(snap["net"])
        self.ema.load_state_dict(snap["ema"])
        self.opt.load_state_dict(snap["opt"])
        if snap["scaler"] is not None:
            self.scaler.load_state_dict(snap["scaler"])
        if self.aux is not None and self.aux_opt is not None:
            self.aux.load_state_dict(snap["aux"])
            self.aux_opt.load_state_dict(snap["aux_opt"])
        torch.set_rng_state(snap["rng_cpu"])

    def state(self) -> dict[str, Any]:
        opt = self.opt.state_dict()
        for group in opt["param_groups"]:  # a graphed step keeps lr in a device tensor
            group["lr"] = float(group["lr"])
        out = {
            "optimizer": opt,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "rng_cpu": torch.get_rng_state(),
            "step": self.step,
        }
        if self.aux is not None and self.aux_opt is not None:  # tensors and plain values: weights_only loads them
            out["aux"] = {k: v.detach().cpu().clone() for k, v in self.aux.state_dict().items()}
            out["aux_optimizer"] = self.aux_opt.state_dict()
        return out

    def save(self) -> Path:
        meta = {
            "config": self.cfg.to_json(),
            "data_info": self.info.to_json(),
            "modality": self.adapter.name,
            "parameters": sum(p.numel() for p in self.net.parameters()),
            **self.objective.meta(),
        }
        if self.text is not None:  # text conditioning: what the encoder is (its weights are the model's)
            meta["text"] = self.text.meta()
        return save_checkpoint(
            self.run_dir,
            self.step,
            model=self.net,
            ema=self.ema,
            meta=meta,
            state=self.state(),
            keep=self.t.keep_checkpoints,
        )

    # --- one step -----------------------------------------------------------------------

    def _loader(self) -> Iterator[tuple[Tensor, Tensor]]:
        start = self.step * self.t.grad_accum
        sampler = _EpochBatches(len(self.dataset), self.t.batch_size, self.t.seed, start, self.rows)
        batched = hasattr(self.dataset, "__getitems__")
        loader = DataLoader(
            self.dataset,
            batch_sampler=sampler,
            num_workers=self.t.num_workers,
            collate_fn=_identity_collate if batched else default_collate,
            pin_memory=self.device.type == "cuda",
            persistent_workers=self.t.num_workers > 0,
        )
        return iter(loader)

    def _micro_loss(self, x0: Tensor, labels: Tensor, k: int) -> Tensor:
        return self._loss_of(self._micro_inputs(x0, labels, k))

    def _micro_inputs(self, x0: Tensor, labels: Tensor, k: int) -> Any:
        """Micro-step ``k``'s random draws, all seeded by ``(seed, k)``: the augmented batch and the
        objective's draws (:meth:`Objective.draws`: for diffusion the batch in the denoiser's
        space, its noise levels, noise and dropped labels). Everything random happens here, before
        the network, so a CUDA graph of the rest replays with fresh draws."""
        seed = step_seed(self.t.seed, k)
        # dropout inside the network (each process draws its own masks)
        torch.manual_seed(step_seed(seed, self.world.rank) if self.world.distributed else seed)
        g = torch.Generator(device=self.device).manual_seed(seed)
        rows = self.rows
        with global_rows(rows):  # per-example draws: whole global batch, this process's rows
            x0 = x0.to(self.device, non_blocking=True)
            # a latent run's batch is cached latents: data-space augmentation does not apply (config refuses it)
            if getattr(self.objective, "latent", None) is None:
                x0 = self.adapter.augment(x0, self.cfg.data, g)
            x0 = x0.float()
            inputs = self.objective.draws(x0, labels, g, rows)
            if self.text is not None:  # text conditioning: the examples' text, some rows dropped to the null
                inputs[3].update(self.text.inputs(self._examples.indices(k), g, self.device))
        return inputs

    def _loss_of(self, inputs: Any) -> Tensor:
        """The mean loss of one micro-batch (:meth:`Objective.loss`); no random draw and no host
        read for a diffusion run (CUDA-graph safe)."""
        return self.objective.loss(self.forward_net, inputs, self.step)

    def _clip_gradients(self, params: list[Tensor]) -> Tensor:
        """The gradients' global norm, after clipping them to ``train.grad_clip`` (no host read)."""
        if self.t.grad_clip is not None:
            return torch.nn.utils.clip_grad_norm_(params, self.t.grad_clip)
        return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = ema_decay(self.step, self.t.ema_decay, self.t.ema_warmup)
        ema_p = list(self.ema.parameters())
        torch._foreach_lerp_(ema_p, list(self.net.parameters()), 1.0 - decay)
        for b_ema, b in zip(self.ema.buffers(), self.net.buffers()):
            b_ema.copy_(b)

    def train_step(self, batches: Iterator[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        """One optimizer step over ``grad_accum`` micro-batches; returns (loss, grad norm) on the device.

        Eagerly, a step with a non-finite loss or gradient is skipped and ``self.skipped`` says so
        (one host read per step). As CUDA graphs (``train.cuda_graphs``) the skip happens on the
        device, without a host read, and ``self.skipped`` is ``None``: the loop reads the device's
        count of skipped steps at each log row (see :class:`_GraphedStep`)."""
        if self.graphs:
            if self._graphed is None:
                self._graphed = _GraphedStep(self)
            return self._graphed(batches)
        t = self.t
        factor = lr_factor(self.step, t.warmup_steps, t.steps, t.lr_schedule)
        for group in self.opt.param_groups:
            group["lr"] = t.lr * factor
        total = torch.zeros((), device=self.device)
        aux_total = torch.zeros((), device=self.device)  # the second network's loss (a discriminator's)
        parts = torch.zeros(len(self.objective.part_names), device=self.device)
        aux_stepped = False
        for j in range(t.grad_accum):
            x0, labels = next(batches)
            # under DDP, gradients are all-reduced only in the last micro-step's backward
            sync = self.ddp is None or j == t.grad_accum - 1
            with nullcontext() if sync else self.ddp.no_sync():
                loss = self._micro_loss(x0, labels, self.step * t.grad_accum + j) / t.grad_accum
                self.scaler.scale(loss).backward()
            total += loss.detach()
            if self.aux_forward is not None:
                with nullcontext() if sync or self.aux_ddp is None else self.aux_ddp.no_sync():
                    aux_loss = self.objective.aux_loss(self.aux_forward, self.step)
                    if aux_loss is not None:
                        self.scaler.scale(aux_loss / t.grad_accum).backward()
                        aux_total += aux_loss.detach() / t.grad_accum
                        aux_stepped = True
            if len(parts):
                parts += torch.stack([self.objective.parts[n] for n in self.objective.part_names]) / t.grad_accum
        self._step_parts = parts
        self.scaler.unscale_(self.opt)
        gnorm = self._clip_gradients([p for p in self.net.parameters() if p.grad is not None])
        aux_gnorm = torch.zeros((), device=self.device)
        if aux_stepped:
            assert self.aux is not None and self.aux_opt is not None
            self.scaler.unscale_(self.aux_opt)
            aux_gnorm = self._clip_gradients([p for p in self.aux.parameters() if p.grad is not None])
        # One host read per step; the loss is averaged over processes, so every one decides alike.
        # Under fp16 an overflowing gradient is the loss scaler's business (it skips and lowers the
        # scale); only a non-finite loss counts there.
        loss_all = self.world.mean(total + aux_total)  # the same verdict on every process
        bad = ~torch.isfinite(loss_all) if self.scaler.is_enabled() else ~torch.isfinite(loss_all + gnorm + aux_gnorm)
        self.skipped = bool(bad)
        if self.skipped:
            self.opt.zero_grad(set_to_none=True)
            if self.aux_opt is not None:
                self.aux_opt.zero_grad(set_to_none=True)
            if self.scaler.is_enabled():
                self.scaler.update(new_scale=self.scaler.get_scale() / 2)
            self.step += 1  # the batch is consumed: a resumed run skips it too
            return total, gnorm
        self.scaler.step(self.opt)
        if aux_stepped:
            assert self.aux_opt is not None
            for group in self.aux_opt.param_groups:
                group["lr"] = (self.cfg.autoencoder.disc_lr or t.lr) * factor  # type: ignore[union-attr]
            self.scaler.step(self.aux_opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        if self.aux_opt is not None:
            self.aux_opt.zero_grad(set_to_none=True)
        self.step += 1
        self._update_ema()
        return total, gnorm

    # --- the loop -----------------------------------------------------------------------

    def sample_files(self, tag: str, callback: Callable[[dict[str, Any]], None] | None = None) -> list[Path]:
        """Sample with the EMA model as the ``sample`` section says and write the adapter's files
        (an autoencoder: reconstructions of held-out examples; on rank 0 only, the other processes
        wait). ``callback`` goes to the sampler (a progress bar)."""
        if not self.world.is_main:
            self.world.barrier()
            return []
        self.ema.eval()
        paths = self.objective.sample_files(self.ema, self.run_dir / "samples" / tag, callback)
        self.world.barrier()
        return paths

    def close(self) -> None:
        """Leave the process group this trainer joined under torchrun (nothing on one process)."""
        self.world.close()

    def fit(self) -> TrainResult:
        t = self.t
        main = self.world.is_main
        log = None
        if main:  # only rank 0 writes files
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(json.dumps(self.cfg.to_json(), indent=2))
            log = _MetricsLog(
                self.run_dir / f"metrics.{t.metrics_format}",
                t.metrics_format,
                self._resume_step,
                self.objective.part_names,
            )
        result = TrainResult(self.step, self.run_dir, None)
        if self.step >= t.steps:
            return result
        batches = self._loader()
        self.net.train()
        bar = None
        if t.progress and main:
            from tqdm.auto import tqdm

            bar = tqdm(total=t.steps, initial=self.step, desc=f"train {self.adapter.name}", dynamic_ncols=True)
        t0 = time.perf_counter()

        def new_window() -> tuple[float, Tensor, int, int]:  # start, loss sum and count of good steps, steps
            return time.perf_counter(), torch.zeros((), device=self.device), 0, 0

        window_start, window_loss, window_n, steps_in_window = new_window()
        self._window_parts = torch.zeros(len(self.objective.part_names), device=self.device)
        last_ckpt = None
        bad_in_row = 0
        stop = _StopRequest()
        with stop.installed():
            while self.step < t.steps:
                try:
                    loss, gnorm = self.train_step(batches)
                except RuntimeError as e:  # torch.cuda.OutOfMemoryError is one
                    raise _out_of_memory(e, t, self.device) from None
                steps_in_window += 1
                log_now = self.step % t.log_every == 0 or self.step == t.steps
                if self.skipped is None:  # CUDA graphs: skipped on the device, counted at log rows
                    assert self._graphed is not None
                    window_loss += loss  # 0 for a skipped step
                    window_n = window_n + self._graphed.good
                    if log_now and (in_row := self._graphed.report(self.step)) >= t.max_nonfinite_steps:
                        self._stop_nonfinite(in_row)
                elif self.skipped:
                    bad_in_row += 1
                    warnings.warn(
                        f"step {self.step}: non-finite loss or gradient (loss {float(loss):.4g}, gradient norm "
                        f"{float(gnorm):.4g}); step skipped, weights and EMA unchanged ({bad_in_row} in a row)",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    if bad_in_row >= t.max_nonfinite_steps:
                        self._stop_nonfinite(bad_in_row)
                else:
                    bad_in_row = 0
                    window_loss += loss
                    window_n += 1
                    if len(self._window_parts):
                        self._window_parts += self._step_parts
                if bar is not None:
                    bar.update(1)
                if log_now and window_n:
                    self._log_row(log, result, bar, window_loss, window_n, steps_in_window, gnorm, window_start, t0)
                    window_start, window_loss, window_n, steps_in_window = new_window()
                if t.sample_every and self.step % t.sample_every == 0:
                    self.sample_files(f"step_{self.step:08d}")
                    self.net.train()
                if (t.checkpoint_every and self.step % t.checkpoint_every == 0) or self.step == t.steps:
                    if main:
                        last_ckpt = self.save()
                if stop.requested(self.world, self.device):
                    if main and (last_ckpt is None or last_ckpt.name != f"step_{self.step:08d}"):
                        last_ckpt = self.save()
                    result.interrupted = True
                    break
        if bar is not None:
            bar.close()
        self.world.barrier()  # every process leaves with rank 0's last checkpoint on disk
        result.step, result.checkpoint, result.seconds = self.step, last_ckpt, time.perf_counter() - t0
        return result

    def _stop_nonfinite(self, in_row: int) -> None:
        """Too many non-finite steps in a row: save the last good weights (skipped steps left
        them alone) and stop with what to change."""
        t = self.t
        kept = self.save() if self.world.is_main else None
        self.world.barrier()
        raise FloatingPointError(
            f"{in_row} steps in a row had a non-finite loss or gradient (up to step {self.step}); "
            f"the last good weights are saved in {kept or self.run_dir / 'checkpoints'}. Lower "
            f"train.lr, set train.grad_clip, or use precision fp32 (train.max_nonfinite_steps="
            f"{t.max_nonfinite_steps})"
        )

    def _log_row(
        self,
        log: _MetricsLog | None,
        result: TrainResult,
        bar: Any,
        window_loss: Tensor,
        window_n: int | Tensor,
        steps: int,
        gnorm: Tensor,
        window_start: float,
        t0: float,
    ) -> None:
        """One metrics row: the mean loss of the window's good steps (over all processes)."""
        t = self.t
        now = time.perf_counter()
        mean_loss = float(self.world.mean(window_loss)) / float(window_n)
        sps = steps * t.batch_size * t.grad_accum / max(now - window_start, 1e-9)
        row = {
            "step": self.step,
            "loss": mean_loss,
            "lr": float(self.opt.param_groups[0]["lr"]),
            "grad_norm": float(gnorm),
            "samples_per_s": round(sps, 2),
            "elapsed_s": round(now - t0, 2),
        }
        if len(self._window_parts):  # the objective's loss terms, means over the window's good steps
            means = (self.world.mean(self._window_parts) / float(window_n)).tolist()
            row.update(zip(self.objective.part_names, means))
            self._window_parts.zero_()
        if log is not None:
            log.write(row)
        result.losses.append((self.step, mean_loss))
        if bar is not None:
            bar.set_postfix(loss=f"{mean_loss:.4f}", samples_s=f"{sps:.0f}")


class _GraphedStep:
    """The trainer's optimizer step as CUDA graphs (``train.cuda_graphs``; see :mod:`multidiff.cuda_graphs`).

    Two graphs share one memory pool: *micro* (one micro-batch's loss and backward, gradients
    accumulated in place) is replayed ``grad_accum`` times, then *update* (gradient norm and
    clipping, the non-finite test, AdamW, EMA, zeroed gradients). Before each replay the trainer's
    own :meth:`Trainer._micro_inputs` makes the micro-step's random draws from its
    ``(seed, step)`` generators and seeds the network's dropout, so a graphed run computes what an
    eager one does (up to float rounding) and resumes exactly. The learning rate and the EMA weight
    live in device tensors refilled from the host before each step.

    **Non-finite steps without a host read.** The update passes the test's verdict to fused AdamW
    as ``found_inf`` (the kernel then leaves weights and moments alone and undoes its step count)
    and multiplies the EMA weight by 0, so a skipped step changes nothing, as eagerly. The device
    counts skipped steps and the longest run in a row; the loop reads them once per log row
    (:meth:`report`), so a run stops at the first log row after ``max_nonfinite_steps`` in a row.

    The first step runs the same functions eagerly on a side stream (the warm-up a capture needs:
    gradients, optimizer state and library handles come into being); the second captures.
    """

    def __init__(self, tr: Trainer, *, capture: bool = True) -> None:
        self.tr = tr
        self.capture = capture  # False: the same functions, always eager (tests it on a CPU)
        dev = tr.device
        zero = lambda: torch.zeros((), device=dev)  # noqa: E731
        # fused AdamW reads a tensor lr as float32 on CUDA (a rounding of 5e-8 against the eager
        # step's double) and as given on the CPU
        self.lr = torch.tensor(tr.t.lr, dtype=torch.float32 if dev.type == "cuda" else torch.float64, device=dev)
        for group in tr.opt.param_groups:
            group["lr"] = self.lr
        self.ema_weight, self.total, self.loss, self.gnorm = zero(), zero(), zero(), zero()
        self.good, self.run, self.longest, self.skipped = zero(), zero(), zero(), zero()
        self.static: tuple[Tensor, Tensor, Tensor, dict[str, Tensor]] | None = None
        self.micro: torch.cuda.CUDAGraph | None = None
        self.update: torch.cuda.CUDAGraph | None = None
        self.warm = False

    def _micro(self, inputs: tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]) -> None:
        loss = self.tr._loss_of(inputs) / self.tr.t.grad_accum
        loss.backward()
        self.total += loss.detach()

    @torch.no_grad()
    def _update(self) -> None:
        tr = self.tr
        params = [p for p in tr.net.parameters() if p.grad is not None]
        gnorm = tr._clip_gradients(params)
        bad = ~torch.isfinite(self.total + gnorm)
        tr.opt.found_inf = bad.float()  # fused AdamW skips the whole update where it is 1
        try:
            tr.opt.step()
        finally:
            del tr.opt.found_inf
        good = (~bad).float()
        weight = self.ema_weight * good
        ema_p, net_p = list(tr.ema.parameters()), list(tr.net.parameters())
        torch._foreach_lerp_(ema_p, net_p, [weight] * len(net_p))
        for b_ema, b in zip(tr.ema.buffers(), tr.net.buffers()):
            b_ema.copy_(b)
        torch._foreach_zero_([p.grad for p in params])
        self.loss.copy_(torch.where(bad, 0.0, self.total))
        self.gnorm.copy_(gnorm)
        self.good.copy_(good)
        self.run.copy_((self.run + 1) * bad)
        self.longest.copy_(torch.maximum(self.longest, self.run))
        self.skipped.add_(bad)
        self.total.zero_()

    def __call__(self, batches: Iterator[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        tr, t = self.tr, self.tr.t
        self.lr.fill_(t.lr * lr_factor(tr.step, t.warmup_steps, t.steps, t.lr_schedule))
        self.ema_weight.fill_(1.0 - ema_decay(tr.step + 1, t.ema_decay, t.ema_warmup))  # as after an eager step
        if not (self.capture and self.warm):  # eagerly (on a side stream before a capture)
            with side_stream(tr.device):
                for j in range(t.grad_accum):
                    self._micro(tr._micro_inputs(*next(batches), tr.step * t.grad_accum + j))
                self._update()
            self.warm = True
        else:
            for j in range(t.grad_accum):
                inputs = tr._micro_inputs(*next(batches), tr.step * t.grad_accum + j)
                if self.micro is None:
                    self._capture(inputs)
                assert self.static is not None and self.micro is not None
                x0, sigma, noise, cond = self.static
                x0.copy_(inputs[0]), sigma.copy_(inputs[1]), noise.copy_(inputs[2])
                for k, v in inputs[3].items():
                    cond[k].copy_(v)
                self.micro.replay()
            assert self.update is not None
            self.update.replay()
        tr.skipped = None
        tr.step += 1
        return self.loss.clone(), self.gnorm.clone()

    def _capture(self, inputs: tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]) -> None:
        x0, sigma, noise, cond = inputs
        self.static = (x0.clone(), sigma.clone(), noise.clone(), {k: v.clone() for k, v in cond.items()})
        static = self.static
        self.micro, _ = warm_up_and_capture(lambda: self._micro(static), warmup=0)
        self.update, _ = warm_up_and_capture(self._update, pool=self.micro.pool(), warmup=0)

    def report(self, step: int) -> int:
        """Warn about the steps skipped since the last report; return the longest run of skipped
        steps in a row within them (one host read)."""
        skipped, longest = (int(v) for v in torch.stack([self.skipped, self.longest]).tolist())
        if skipped:
            warnings.warn(
                f"up to step {step}: {skipped} steps had a non-finite loss or gradient since the last log row; "
                f"skipped, weights and EMA unchanged ({longest} in a row at most)",
                RuntimeWarning,
                stacklevel=3,
            )
        self.skipped.zero_()
        self.longest.copy_(self.run)
        return longest


class _StopRequest:
    """SIGINT / SIGTERM during training ask for a clean stop: the loop finishes its step, writes a
    checkpoint and returns (``TrainResult.interrupted``). A second signal is not caught again."""

    def __init__(self) -> None:
        self.flag = False

    def _handler(self, signum: int, frame: Any) -> None:
        self.flag = True
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))  # a second one acts as usual

    @contextmanager
    def installed(self) -> Iterator[None]:
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():  # handlers live in the main thread
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        try:
            yield
        finally:
            for sig, old in self._previous.items():
                signal.signal(sig, old)

    def requested(self, world: Any, device: torch.device) -> bool:
        """Under DDP every process must stop at the same step: the flags are all-reduced."""
        if not world.distributed:
            return self.flag
        import torch.distributed as dist

        f = torch.tensor([float(self.flag)], device=device)
        dist.all_reduce(f, op=dist.ReduceOp.MAX)
        return bool(f.item())


def _out_of_memory(e: BaseException, t: C.TrainConfig, device: torch.device) -> BaseException:
    """An out-of-memory error as a message saying what to lower; any other error unchanged."""
    text = str(e)
    if (
        not isinstance(e, torch.cuda.OutOfMemoryError)
        and "out of memory" not in text
        and "can't allocate memory" not in text
    ):
        return e
    return MemoryError(
        f"out of memory on {device} at train.batch_size={t.batch_size}: lower train.batch_size and raise "
        f"train.grad_accum to keep the batch (e.g. --set train.batch_size={max(1, t.batch_size // 2)} --set "
        f"train.grad_accum={2 * t.grad_accum}), or use precision bf16, model.gradient_checkpointing: true, or a "
        f"smaller model ({text.splitlines()[0] if text else type(e).__name__})"
    )


def read_metrics(path: Path) -> list[dict[str, float]]:
    """The rows of a run's ``metrics.csv`` or ``metrics.jsonl``."""
    return _MetricsLog.read(Path(path))
