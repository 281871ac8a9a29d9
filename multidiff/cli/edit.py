"""``multidiff edit inpaint|sdedit|invert|interpolate|diffedit RUN --input FILE ...``

Edits of a user's file by a trained model of any modality: the modality reads the input and
writes the results, the edit itself is one :class:`~multidiff.pipeline.Pipeline` method, the same
code for every modality (:mod:`multidiff.editing`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from .. import editing as E
from .options import add_model_args, add_sample_flags, load_model, sampling_options


def _load(args: argparse.Namespace) -> tuple[Any, Any, Path]:
    """The pipeline, the sampling options and the output folder of an edit command."""
    want = 2 if args.edit == "interpolate" else 1
    if len(args.input) != want:
        what = "two --input files" if want == 2 else "one --input file"
        raise ValueError(f"multidiff edit {args.edit} takes {what}, got {len(args.input)}")
    pipe = load_model(args)
    for flag in ("class_label", "class_b", "reference_class"):  # names or indices to indices, errors name the flag
        if getattr(args, flag, None) is not None:
            setattr(args, flag, pipe.label(getattr(args, flag), "--" + flag.replace("_label", "").replace("_", "-")))
    s = sampling_options(pipe, args)
    folder = (
        Path(args.out)
        if args.out
        else pipe.output_root / "edits" / f"{args.edit}_{Path(args.input[0]).stem}_seed{s.seed}"
    )
    return pipe, s, folder


def _screened(pipe: Any, out: torch.Tensor, s: Any) -> Any:
    """The edit's outputs through the checker ``--checker`` (``sample.checker``) names, before
    anything is written; its counts are printed and go to ``<name>.json`` beside them."""
    made = pipe.screened(out, s)
    if made.screening is not None:
        print(made.screening.summary())
    return made


def _report(paths: list[Path], t0: float, what: str) -> int:
    print(f"{what} in {time.perf_counter() - t0:.1f}s")
    for p in paths:
        print(f"wrote {p}")
    return 0


def _inpaint(args: argparse.Namespace) -> int:
    pipe, s, folder = _load(args)
    t0 = time.perf_counter()
    x = pipe.read(args.input[0])
    if (args.mask is None) == (args.region is None):
        raise ValueError("give the region to generate with exactly one of --mask FILE or --region SPEC")
    mask = pipe.mask(args.mask, args.region)
    out = pipe.inpaint(
        x,
        mask,
        n=args.num,
        label=args.class_label,
        method=args.method,
        jump_length=args.jump_length,
        resample=args.resample,
        particles=args.particles,
        sample=s,
    )
    shown = torch.where(mask.expand_as(x), torch.zeros_like(x), x)  # the input with the region blanked
    paths = pipe.save(shown, folder / "masked_input") + pipe.save(_screened(pipe, out, s), folder / "inpainted")
    return _report(paths, t0, f"inpainted {args.num} ({args.method}, {int(mask.float().mean() * 100)}% generated)")


def _sdedit(args: argparse.Namespace) -> int:
    pipe, s, folder = _load(args)
    t0 = time.perf_counter()
    x = pipe.read(args.input[0])
    out = pipe.sdedit(x, args.strength, n=args.num, label=args.class_label, sample=s)
    paths = pipe.save(x, folder / "input") + pipe.save(_screened(pipe, out, s), folder / "edited")
    return _report(paths, t0, f"edited {args.num} at strength {args.strength:g}")


def _invert(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    pipe, s, folder = _load(args)
    t0 = time.perf_counter()
    inv = pipe.invert(pipe.read(args.input[0]), label=args.class_label, solver=args.solver, sample=s, **_guidance(args))
    folder.mkdir(parents=True, exist_ok=True)
    noise = folder / "noise.safetensors"
    save_file(
        {"noise": inv.noise[0].contiguous(), "sigmas": inv.sigmas.float()},
        str(noise),
        metadata={
            "solver": args.solver,
            "checkpoint": str(pipe.checkpoint.path if pipe.checkpoint is not None else pipe.origin),
            "input": str(args.input[0]),
        },
    )
    paths = [noise, *pipe.save(_screened(pipe, inv.reconstruction, s), folder / "reconstruction")]
    top = inv.sigmas[0].item()
    return _report(paths, t0, f"inverted to sigma {top:.3g} and back with {args.solver}: RMS error {inv.error:.2e}")


def _guidance(args: argparse.Namespace) -> dict[str, Any]:
    """Inversion and interpolation are unguided unless --guidance is given (not the run's scale)."""
    given = getattr(args, "sample__guidance_scale", None)
    return {"guidance_scale": 1.0 if given is None else given}


def _interpolate(args: argparse.Namespace) -> int:
    pipe, s, folder = _load(args)
    t0 = time.perf_counter()
    frames = pipe.interpolate(
        pipe.read(args.input[0]),
        pipe.read(args.input[1]),
        args.frames,
        label=args.class_label,
        label_b=args.class_b,
        prompt_b=args.prompt_b,
        solver=args.solver,
        sample=s,
        **_guidance(args),
    )
    made = _screened(pipe, frames, s.model_copy(update={"prompt": None}))  # its prompts are mixed along the path
    return _report(pipe.save(made, folder / "frames"), t0, f"decoded {args.frames} frames along the spherical path")


def _diffedit(args: argparse.Namespace) -> int:
    pipe, s, folder = _load(args)
    t0 = time.perf_counter()
    x = pipe.read(args.input[0])
    if args.class_label is None and s.prompt is None:
        raise ValueError("diffedit needs what to edit towards: --class (or --prompt for a text model)")
    out, mask = pipe.diffedit(
        x,
        args.class_label,
        reference=args.reference_class,
        reference_prompt=args.reference_prompt,
        strength=args.strength,
        threshold=args.threshold,
        sample=s,
    )
    shown = torch.where(mask, torch.zeros_like(x), x)
    edited = pipe.save(_screened(pipe, out, s), folder / "edited")
    paths = pipe.save(x, folder / "input") + pipe.save(shown, folder / "mask") + edited
    towards = " and ".join(
        [f"class {args.class_label}"] * (args.class_label is not None)
        + [f"prompt {s.prompt!r}"] * (s.prompt is not None)
    )
    what = f"edited {int(mask.float().mean() * 100)}% of the input (the mask) towards {towards}"
    return _report(paths, t0, what)


def _common(
    p: argparse.ArgumentParser, inputs: str = "the input file (PNG, WAV, mesh or grid, as the model's modality reads)"
) -> None:
    add_model_args(p)
    p.add_argument("--input", action="append", required=True, metavar="FILE", help=inputs)
    p.add_argument("--out", help="output folder (default: <run>/edits/<edit>_<input>_seed<seed>)")
    p.add_argument("--class", dest="class_label", help="class index or name to generate (default: unconditional)")
    p.add_argument("--device", default="auto")
    add_sample_flags(p, exclude=("num_samples",))


def add_parser(sub: Any) -> None:
    """``edit`` and its sub-commands."""
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
    p.add_argument("--jump-length", type=int, default=10, help="RePaint's jump length j (default 10)")
    p.add_argument("--resample", type=int, default=10, help="RePaint's resamplings r (default 10)")
    p.add_argument("--particles", type=int, default=16, help="particles per sample for --method smc (default 16)")
    p.add_argument("-n", "--num", type=int, default=4, help="number of variations (default 4)")
    p.set_defaults(func=_inpaint)

    p = es.add_parser("sdedit", help="noise the input to a strength and denoise it (optionally as another class)")
    _common(p)
    p.add_argument(
        "--strength", type=float, default=0.5, help="in [0, 1]: 0 keeps the input, 1 ignores it (default 0.5)"
    )
    p.add_argument("-n", "--num", type=int, default=4, help="number of variations (default 4)")
    p.set_defaults(func=_sdedit)

    p = es.add_parser("invert", help="map the input to its noise along the probability-flow ODE, and back")
    _common(p)
    p.add_argument("--solver", choices=E.INVERSION_SOLVERS, default="dpmpp_2m", help="ODE solver (default dpmpp_2m)")
    p.set_defaults(func=_invert)

    p = es.add_parser("interpolate", help="decode the spherical path between two inputs' noises")
    _common(p, "two input files: --input A --input B")
    p.add_argument("--class-b", help="class of the second input; the condition moves linearly from --class to it")
    p.add_argument(
        "--prompt-b", help="prompt of the second input (a text model); the condition moves linearly from --prompt to it"
    )
    p.add_argument("--frames", type=int, default=8, help="number of frames, ends included (default 8)")
    p.add_argument("--solver", choices=E.INVERSION_SOLVERS, default="dpmpp_2m", help="ODE solver (default dpmpp_2m)")
    p.set_defaults(func=_interpolate)

    p = es.add_parser(
        "diffedit",
        help="edit towards --class / --prompt only where it disagrees with --reference-class / --reference-prompt",
    )
    _common(p)
    p.add_argument("--reference-class", help="the input's own class (default: unconditional)")
    p.add_argument("--reference-prompt", help="a text model: the input's own description (default: the null text)")
    p.add_argument("--strength", type=float, default=0.5, help="encoding strength in [0, 1] (default 0.5)")
    p.add_argument("--threshold", type=float, default=0.5, help="mask threshold in [0, 1] (default 0.5)")
    p.set_defaults(func=_diffedit)
