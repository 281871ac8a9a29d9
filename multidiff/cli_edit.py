"""``multidiff edit inpaint|sdedit|invert|interpolate|diffedit CHECKPOINT --input FILE ...``

Edits of a user's file by a trained model of any modality. The adapter reads the input
(:meth:`~multidiff.modality.Modality.read_input`: a PNG for an image model, a WAV for an audio
model, a mesh or a grid for a voxel model) and writes the results
(:meth:`~multidiff.modality.Modality.save_samples`); the edit itself is
:mod:`multidiff.editing`, the same code for every modality.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import editing as E
from . import grids
from .samplers import get_sampler

__all__ = ["add_edit_parser", "region_mask", "run_classifier"]


def region_mask(spec: str, shape: tuple[int, ...]) -> Tensor:
    """A box mask ``(1, *spatial)`` from fractional ranges per spatial axis, true inside the box.

    ``spec`` is comma-separated ``lo:hi`` ranges in [0, 1], one per spatial axis, missing ends
    meaning 0 and 1, missing trailing axes meaning the whole axis: ``0.25:0.75,0.25:0.75`` is the
    centre of an image, ``0.5:`` the second half of a clip (continuation), ``0.4:0.6`` a gap in it
    (infill), ``:,:,0.5:`` the top half of a voxel grid along its last axis.
    """
    spatial = shape[1:]
    parts = [p.strip() for p in spec.split(",")]
    if len(parts) > len(spatial):
        raise ValueError(f"--region {spec!r} names {len(parts)} axes; the data has {len(spatial)} spatial axes")
    mask = torch.zeros((1, *spatial), dtype=torch.bool)
    box: list[slice] = [slice(None)]
    for axis, (part, n) in enumerate(zip(parts + [":"] * (len(spatial) - len(parts)), spatial)):
        lo_s, sep, hi_s = part.partition(":")
        try:
            lo = float(lo_s) if lo_s.strip() else 0.0
            hi = float(hi_s) if hi_s.strip() else 1.0
        except ValueError:
            lo, hi = -1.0, -1.0
        if not sep or not 0.0 <= lo < hi <= 1.0:
            raise ValueError(
                f"--region {spec!r}: axis {axis} must be 'lo:hi' with 0 <= lo < hi <= 1 (fractions of the axis), got {part!r}"
            )
        a, b = round(lo * n), round(hi * n)
        box.append(slice(a, max(b, a + 1)))
    mask[tuple(box)] = True
    return mask


def _label(pipe: Any, text: str | None, flag: str = "--class") -> int | None:
    from .modality import class_index

    if text is None:
        return None
    k = pipe.info.num_classes
    if not k:
        raise ValueError(f"{flag} given, but this model is unconditional")
    try:
        return class_index(text, pipe.info.class_names or [str(i) for i in range(k)])
    except ValueError as e:
        raise ValueError(str(e).replace("--class", flag)) from None


def _save(pipe: Any, x: Tensor, out: Path, labels: Tensor | None = None) -> list[Path]:
    return pipe.adapter.save_samples(pipe.to_data(x), out, pipe.info, labels=labels)


def _out(args: argparse.Namespace, pipe: Any) -> Path:
    if args.out:
        return Path(args.out)
    return pipe.checkpoint.path.parent.parent / "edits" / f"{args.edit}_{Path(args.input[0]).stem}_seed{args.seed}"


def _load(args: argparse.Namespace) -> Any:
    from .pipeline import load_pipeline

    pipe = load_pipeline(args.checkpoint, device=args.device)
    if len(args.input) != (2 if args.edit == "interpolate" else 1):
        want = "two --input files" if args.edit == "interpolate" else "one --input file"
        raise ValueError(f"multidiff edit {args.edit} takes {want}, got {len(args.input)}")
    return pipe


def _report(paths: list[Path], t0: float, what: str) -> None:
    print(f"{what} in {time.perf_counter() - t0:.1f}s")
    for p in paths:
        print(f"wrote {p}")


@torch.no_grad()
def _cmd_inpaint(args: argparse.Namespace) -> int:
    pipe = _load(args)
    t0 = time.perf_counter()
    x = pipe.read_input(args.input[0])
    if (args.mask is None) == (args.region is None):
        raise ValueError("give the region to generate with exactly one of --mask FILE or --region SPEC")
    mask = (
        pipe.adapter.read_mask(Path(args.mask), pipe.info) if args.mask else region_mask(args.region, pipe.info.shape)
    )
    mask = E.check_mask(mask.to(x.device).unsqueeze(0) if mask.ndim == x.ndim - 1 else mask.to(x.device), x)
    n = args.num
    known, m = x.expand(n, *x.shape[1:]), mask.expand(n, *x.shape[1:])
    g = torch.Generator().manual_seed(args.seed)
    label = _label(pipe, args.class_label)
    out = E.inpaint(
        pipe.guided_denoiser(args.guidance, _label(pipe, args.negative_class, "--negative-class")),
        known,
        m,
        pipe.sampling_grid(args.steps, args.grid),
        method=args.method,
        sampler=args.sampler or pipe.config.run.sample.sampler,
        jump_length=args.jump_length,
        resample=args.resample,
        particles=args.particles,
        cond=pipe.condition(label, n),
        generator=g,
    )
    folder = _out(args, pipe)
    shown = torch.where(mask[:1], torch.zeros_like(x), x)  # the input with the region blanked
    paths = _save(pipe, shown, folder / "masked_input") + _save(pipe, out, folder / "inpainted")
    _report(paths, t0, f"inpainted {n} ({args.method}, {int(mask[0].float().mean() * 100)}% generated)")
    return 0


@torch.no_grad()
def _cmd_sdedit(args: argparse.Namespace) -> int:
    pipe = _load(args)
    t0 = time.perf_counter()
    x = pipe.read_input(args.input[0])
    n = args.num
    g = torch.Generator().manual_seed(args.seed)
    label = _label(pipe, args.class_label)
    out = E.sdedit(
        pipe.guided_denoiser(args.guidance, _label(pipe, args.negative_class, "--negative-class")),
        x.expand(n, *x.shape[1:]).clone(),
        args.strength,
        steps=args.steps or pipe.config.run.sample.steps,
        sampler=args.sampler or pipe.config.run.sample.sampler,
        grid=args.grid or pipe.config.run.sample.grid,
        cond=pipe.condition(label, n),
        generator=g,
    )
    folder = _out(args, pipe)
    paths = _save(pipe, x, folder / "input") + _save(pipe, out, folder / "edited")
    _report(paths, t0, f"edited {n} at strength {args.strength:g}")
    return 0


@torch.no_grad()
def _cmd_invert(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    pipe = _load(args)
    t0 = time.perf_counter()
    x = pipe.read_input(args.input[0])
    sigmas = pipe.sampling_grid(args.steps, args.grid)
    label = _label(pipe, args.class_label)
    den = pipe.guided_denoiser(1.0 if args.guidance is None else args.guidance)  # an unguided ODE inverts best
    cond = pipe.condition(label, 1)
    z = E.invert(den, x, sigmas, solver=args.solver, cond=cond)
    back = get_sampler(args.solver).fn(den, z, sigmas, cond=cond)
    err = ((back - x).pow(2).mean().sqrt() / pipe.denoiser.data_scale).item()
    folder = _out(args, pipe)
    folder.mkdir(parents=True, exist_ok=True)
    noise = folder / "noise.safetensors"
    save_file(
        {"noise": z[0].float().cpu().contiguous(), "sigmas": sigmas.float()},
        str(noise),
        metadata={"solver": args.solver, "checkpoint": str(pipe.checkpoint.path), "input": str(args.input[0])},
    )
    paths = [noise, *_save(pipe, back, folder / "reconstruction")]
    _report(paths, t0, f"inverted to sigma {sigmas[0].item():.3g} and back with {args.solver}: RMS error {err:.2e}")
    return 0


@torch.no_grad()
def _cmd_interpolate(args: argparse.Namespace) -> int:
    pipe = _load(args)
    t0 = time.perf_counter()
    xa, xb = pipe.read_input(args.input[0]), pipe.read_input(args.input[1])
    la, lb = _label(pipe, args.class_label), _label(pipe, args.class_b, "--class-b")
    den = pipe.guided_denoiser(1.0 if args.guidance is None else args.guidance)  # an unguided ODE inverts best
    ca = pipe.condition(la, 1)
    cb = pipe.condition(lb if lb is not None else la, 1)
    frames = E.interpolate(
        den,
        xa,
        xb,
        pipe.sampling_grid(args.steps, args.grid),
        args.frames,
        cond_a=ca,
        cond_b=cb,
        solver=args.solver,
        sampler=args.solver,
    )
    folder = _out(args, pipe)
    paths = _save(pipe, frames, folder / "frames")
    _report(paths, t0, f"decoded {args.frames} frames along the spherical path")
    return 0


@torch.no_grad()
def _cmd_diffedit(args: argparse.Namespace) -> int:
    pipe = _load(args)
    t0 = time.perf_counter()
    x = pipe.read_input(args.input[0])
    q = _label(pipe, args.class_label)
    r = _label(pipe, args.reference_class, "--reference-class")
    if q is None:
        raise ValueError("diffedit needs the class to edit towards: --class")
    g = torch.Generator().manual_seed(args.seed)
    out, mask = E.diffedit(
        pipe.guided_denoiser(args.guidance, None),
        x,
        cond_query=pipe.condition(q, 1),
        cond_ref=pipe.condition(r, 1),
        strength=args.strength,
        steps=args.steps or pipe.config.run.sample.steps,
        grid=args.grid or pipe.config.run.sample.grid,
        threshold=args.threshold,
        generator=g,
    )
    folder = _out(args, pipe)
    shown = torch.where(mask, torch.zeros_like(x), x)
    paths = _save(pipe, x, folder / "input") + _save(pipe, shown, folder / "mask") + _save(pipe, out, folder / "edited")
    _report(
        paths, t0, f"edited {int(mask.float().mean() * 100)}% of the input (the mask) towards class {args.class_label}"
    )
    return 0


def _common(
    p: argparse.ArgumentParser, inputs: str = "the input file (PNG, WAV, mesh or grid, as the model's modality reads)"
) -> None:
    p.add_argument("checkpoint", help="a checkpoint folder, or a run folder (its newest checkpoint)")
    p.add_argument("--input", action="append", required=True, metavar="FILE", help=inputs)
    p.add_argument("--out", help="output folder (default: <run>/edits/<edit>_<input>_seed<seed>)")
    p.add_argument("--steps", type=int, help="sampler steps (default: the run's sample.steps)")
    p.add_argument("--grid", choices=grids.GRIDS, help="sigma grid (default: the run's)")
    p.add_argument("--class", dest="class_label", help="class index or name to generate (default: unconditional)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the run's; 1 = none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")


def add_edit_parser(sub: Any) -> None:
    """Add ``edit`` and its sub-commands to the ``multidiff`` parser's sub-parsers ``sub``."""
    e = sub.add_parser("edit", help="edit a file with a trained model: inpaint, sdedit, invert, interpolate, diffedit")
    es = e.add_subparsers(dest="edit", required=True)

    p = es.add_parser(
        "inpaint",
        help="regenerate a region, keep the rest exactly (inpainting, audio infill/continuation, shape completion)",
    )
    _common(p)
    p.add_argument(
        "--mask", help="mask file, true/white where content is generated (PNG for images, .npy for any modality)"
    )
    p.add_argument(
        "--region",
        help="box to generate as fractions per spatial axis, e.g. 0.25:0.75,0.25:0.75 or 0.5: (continuation)",
    )
    p.add_argument(
        "--method",
        choices=E.MASK_METHODS,
        default="repaint",
        help="replace (one pass), repaint (resampling; default), smc (particles)",
    )
    p.add_argument("--sampler", help="sampler for --method replace (default: the run's)")
    p.add_argument("--jump-length", type=int, default=10, help="RePaint's jump length j (default 10)")
    p.add_argument("--resample", type=int, default=10, help="RePaint's resamplings r (default 10)")
    p.add_argument("--particles", type=int, default=16, help="particles per sample for --method smc (default 16)")
    p.add_argument("--negative-class", help="class to steer away from (with --guidance)")
    p.add_argument("-n", "--num", type=int, default=4, help="number of variations (default 4)")
    p.set_defaults(func=_cmd_inpaint)

    p = es.add_parser("sdedit", help="noise the input to a strength and denoise it (optionally as another class)")
    _common(p)
    p.add_argument(
        "--strength", type=float, default=0.5, help="in [0, 1]: 0 keeps the input, 1 ignores it (default 0.5)"
    )
    p.add_argument("--sampler", help="sampler (default: the run's)")
    p.add_argument("--negative-class", help="class to steer away from (with --guidance)")
    p.add_argument("-n", "--num", type=int, default=4, help="number of variations (default 4)")
    p.set_defaults(func=_cmd_sdedit)

    p = es.add_parser("invert", help="map the input to its noise along the probability-flow ODE, and back")
    _common(p)
    p.add_argument("--solver", choices=E.INVERSION_SOLVERS, default="dpmpp_2m", help="ODE solver (default dpmpp_2m)")
    p.set_defaults(func=_cmd_invert)

    p = es.add_parser("interpolate", help="decode the spherical path between two inputs' noises")
    _common(p, "two input files: --input A --input B")
    p.add_argument("--class-b", help="class of the second input; the condition moves linearly from --class to it")
    p.add_argument("--frames", type=int, default=8, help="number of frames, ends included (default 8)")
    p.add_argument("--solver", choices=E.INVERSION_SOLVERS, default="dpmpp_2m", help="ODE solver (default dpmpp_2m)")
    p.set_defaults(func=_cmd_interpolate)

    p = es.add_parser("diffedit", help="edit towards --class only where it disagrees with --reference-class")
    _common(p)
    p.add_argument("--reference-class", help="the input's own class (default: unconditional)")
    p.add_argument("--strength", type=float, default=0.5, help="encoding strength in [0, 1] (default 0.5)")
    p.add_argument("--threshold", type=float, default=0.5, help="mask threshold in [0, 1] (default 0.5)")
    p.set_defaults(func=_cmd_diffedit)


def run_classifier(pipe: Any, *, cache_dir: Path | None = None) -> Callable[[Tensor, Tensor], Tensor]:
    """``log p(y | x)`` from a classifier of the run's own training data (trained once, cached).

    A :class:`~multidiff.metrics.FeatureClassifier` over the data's rank, trained on the
    training set the run's config describes and cached by content under
    ``$MULTIDIFF_CACHE/classifiers`` (``~/.cache/multidiff``). It sees clean data only; the
    guidance applies it to the denoiser's estimate (:func:`multidiff.guidance.x0_classifier_guidance`).
    """
    import os

    from .metrics import cached_classifier
    from .modality import TensorDataset

    if not pipe.info.num_classes:
        raise ValueError("classifier guidance needs a class-conditional model; this one is unconditional")
    cache = cache_dir or Path(os.environ.get("MULTIDIFF_CACHE", Path.home() / ".cache" / "multidiff")) / "classifiers"
    ds, _ = pipe.adapter.build_dataset(pipe.config.data)
    if isinstance(ds, TensorDataset):
        x, y = ds.x, ds.labels
    else:
        items = [ds[i] for i in range(len(ds))]
        x, y = torch.stack([torch.as_tensor(a) for a, _ in items]), torch.as_tensor([int(b) for _, b in items])
    keep = y >= 0
    if not keep.any():
        raise ValueError("classifier guidance needs labelled training data")
    print(f"classifier for guidance: {int(keep.sum())} training examples (cached in {cache})")
    clf = cached_classifier(
        x[keep].float(),
        y[keep],
        cache_dir=cache,
        tag=f"guidance:{pipe.adapter.describe(pipe.config.data)}",
        num_classes=pipe.info.num_classes,
        epochs=10,
        progress=True,
    ).to(pipe.device)
    clf.requires_grad_(False)

    def log_prob(x: Tensor, labels: Tensor) -> Tensor:
        logp = torch.log_softmax(clf(x.float()), dim=1)
        return logp.gather(1, labels.clamp(0, pipe.info.num_classes - 1).long().unsqueeze(1)).squeeze(1)

    return log_prob
