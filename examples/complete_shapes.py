"""Complete a partial shape with a trained voxel model, through the Python API.

    python examples/complete_shapes.py runs/voxel_shapes                     # a built-in torus, half of it given
    python examples/complete_shapes.py runs/voxel_shapes --input part.obj --region :,:,0.5:1 --class cone

The grid of ``--input`` (a mesh, voxelized as the run's data, or a ``.npy``/``grids.npz`` grid)
is kept outside ``--region`` (fractions per axis; default: the upper half along the last axis)
and the region is generated, ``-n`` times. Writes to ``--out`` (default ``completed_shapes``):
meshes (``--format``), ``grids.npz`` and ``preview.png``: first the given part alone (``000``),
then the completions.

``multidiff edit inpaint CHECKPOINT --input part.obj --region :,:,0.5:`` does the same from the command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from multidiff import editing as E
from multidiff.cli.options import add_pipeline_args, pipeline_from_args

MODALITY = "voxel"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", help="a mesh or grid file (default: a training shape of --class)")
    p.add_argument("--class", dest="label", help="kind of shape to complete as (default: torus, when the model has it)")
    p.add_argument("--region", default=":,:,0.5:1", help="part to generate, fractions per axis (default :,:,0.5:1)")
    p.add_argument("--method", choices=E.MASK_METHODS, default="repaint")
    p.add_argument("-n", "--num", type=int, default=4, help="completions")
    p.add_argument("--format", default="obj", choices=("obj", "ply", "stl", "glb"))
    p.add_argument("--out", default="completed_shapes")
    add_pipeline_args(p, exclude=("num_samples",))  # the run, --device, --steps, --guidance, --seed, ...
    args = p.parse_args(argv)

    pipe, opts = pipeline_from_args(p, args, modality=MODALITY)
    names = pipe.info.class_names
    try:
        label = pipe.label(args.label or ("torus" if "torus" in names else None))
        x = pipe.read(args.input) if args.input else pipe.training_examples(1, label, seed=opts.seed)
        mask = pipe.mask(region=args.region)
    except ValueError as e:
        p.error(str(e))
    y = pipe.inpaint(x, mask, n=args.num, label=label, method=args.method, sample=opts)
    keep = ~mask.expand_as(y)
    assert torch.equal(y[keep], x.expand_as(y)[keep]), "given voxels changed"
    out = Path(args.out)
    given = torch.where(mask, torch.full_like(x, -1.0), x)  # the given part alone; -1 is empty in occupancy and SDF
    both = torch.cat([given, y])
    for path in pipe.adapter.save_samples(both, out, pipe.info, file_format=args.format):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
