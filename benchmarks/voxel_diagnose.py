"""Where a trained shapes model loses the class (issue 5): per noise level, not only at the end.

    python -m benchmarks.voxel_diagnose runs/quality_shapes [runs/other ...]

For each run (trained on ``data.source: shapes``), on 120 held-out real shapes (the split of
quality.py) it prints three tables:

1. **Denoiser error by noise level.** RMS of ``D(x0 + sigma z) - x0`` at each VE ``sigma``, with
   the true class and with the null class, and over the far field only (the voxels clamped at
   +-1 by the truncation, where the clean value is known exactly). A conditional error well
   below the unconditional one at large ``sigma`` means the network has learned what the class
   looks like; equal errors there mean it ignores the label. The identity's error is ``sigma``.
2. **SDEdit class accuracy.** The real shapes noised to ``strength`` and denoised under their own
   class (guidance 2, the config's sampler, steps and grid), scored by quality.py's judge: 1.0 at
   strength 0, the plain sampler's accuracy at 1. The strength where it falls tells whether
   fine detail (small strength) or the global form (large) is lost.
3. **Sampler comparison**: guidance-2 class accuracy of ``--per-class`` samples per class for
   each ``sampler/steps/grid`` setting.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from modalities.voxel.judge import shapes_judge_classifier
from multidiff.editing import strength_to_sigma
from multidiff.evaluate import split_holdout
from multidiff.metrics import class_accuracy
from multidiff.pipeline import load_pipeline

SIGMAS = (0.02, 0.1, 0.5, 1.0, 3.0, 10.0, 30.0, 100.0)
STRENGTHS = (0.3, 0.5, 0.7, 0.9)
SETTINGS = ("dpmpp_2m/20/karras", "ddim/100/trailing", "ddpm/100/trailing")


def diagnose(run: str, cache: str, per_class: int, settings: list[str]) -> str:
    pipe = load_pipeline(run)
    cfg = pipe.config
    if cfg.data.source != "shapes":
        raise SystemExit(f"{run}: trained on {cfg.data.source!r}; this script needs data.source 'shapes'")
    ds, info = cfg.adapter.build_dataset(cfg.data)
    _, ho = split_holdout(len(ds.x), 0.2, seed=0)
    x, y = ds.x[ho][:120], ds.labels[ho][:120]
    far = x.abs() >= 0.999
    null = torch.full_like(y, info.num_classes)
    den = pipe.denoiser
    clf = shapes_judge_classifier(cfg.data, cache)
    g = torch.Generator().manual_seed(0)
    lines = [
        f"### {run} ({pipe.checkpoint.step} steps, {cfg.run.diffusion.parameterization}, {cfg.run.diffusion.weighting})",
        "",
    ]
    lines += ["| sigma | RMS, class | RMS, null class | RMS far field, class |", "|---:|---:|---:|---:|"]
    with torch.no_grad():
        for s in SIGMAS:
            xt = x + s * torch.randn(x.shape, generator=g)
            sig = torch.full((len(x),), s)
            ec, eu = den(xt, sig, class_labels=y) - x, den(xt, sig, class_labels=null) - x
            lines.append(
                f"| {s:g} | {ec.pow(2).mean().sqrt():.3f} | {eu.pow(2).mean().sqrt():.3f} | {ec[far].pow(2).mean().sqrt():.3f} |"
            )
    s = cfg.run.sample
    lines += [
        "",
        f"| SDEdit strength | sigma | class accuracy ({s.sampler}, {s.steps} steps, guidance 2) |",
        "|---:|---:|---:|",
    ]
    for st in STRENGTHS:
        out = pipe.sdedit(x, st, label=y, guidance_scale=2.0, seed=0)
        lines.append(f"| {st:g} | {strength_to_sigma(st, den.schedule):.2f} | {class_accuracy(clf, out, y):.3f} |")
    labels = torch.arange(info.num_classes).repeat_interleave(per_class)
    lines += ["", f"| sampler/steps/grid | class accuracy, guidance 2 ({len(labels)} samples) |", "|---|---:|"]
    for setting in settings:
        sampler, steps, grid = setting.split("/")
        samples, lab = pipe.sample(
            len(labels), labels=labels, guidance_scale=2.0, seed=1, sampler=sampler, steps=int(steps), grid=grid
        )
        lines.append(f"| {setting} | {class_accuracy(clf, samples, lab):.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="run folders of shapes models")
    p.add_argument("--per-class", type=int, default=20)
    p.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated sampler/steps/grid")
    p.add_argument(
        "--cache", default=str(Path.home() / ".cache" / "multidiff" / "classifiers"), help="quality.py's judge cache"
    )
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    for run in a.runs:
        print(diagnose(run, a.cache, a.per_class, a.settings.split(",")) + "\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
