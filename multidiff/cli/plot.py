"""``multidiff plot schedules | noising | loss``, each writing one PNG."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch


def _plot_out(args: argparse.Namespace, default: str) -> Path:
    return Path(args.out or default)


def _cmd_plot_schedules(args: argparse.Namespace) -> int:
    from ..plots import plot_schedules

    print(f"wrote {plot_schedules(_plot_out(args, 'schedules.png'))}")
    return 0


def _noising_source(path: str) -> tuple[Any, Any, Any]:
    """The resolved config, data description and (for a YAML config, whose data set is built to
    learn the example shape; else ``None``) training set of a checkpoint, run folder or config."""
    from ..checkpoint import find_checkpoint
    from ..config import load_config, resolve_config
    from ..modality import DataInfo

    p = Path(path)
    if p.is_file() and p.suffix.lower() in (".yaml", ".yml"):
        cfg = load_config(p)
        dataset, info = cfg.adapter.build_dataset(cfg.data)
        return cfg, info, dataset
    ckpt = find_checkpoint(p)
    cfg = resolve_config(ckpt.config, source=str(ckpt.path / "meta.json"))
    return cfg, DataInfo.from_json(ckpt.meta["data_info"]), None


def _cmd_plot_noising(args: argparse.Namespace) -> int:
    from ..config import build_schedule
    from ..denoiser import DataSpace
    from ..plots import noised_copies, plot_noising

    if args.levels < 2:
        raise ValueError(f"--levels must be at least 2, got {args.levels}")
    cfg, info, dataset = _noising_source(args.source)
    adapter = cfg.adapter
    if args.input is not None:
        if not Path(args.input).exists():
            raise ValueError(f"input file {args.input!r} does not exist")
        read = getattr(adapter, "read_input", None)
        if read is None:
            raise ValueError(f"the {adapter.name!r} modality cannot read input files; leave out --input")
        x0, what = read(Path(args.input), info, cfg.data), Path(args.input).name
    else:
        dataset = dataset if dataset is not None else adapter.build_dataset(cfg.data)[0]
        x0, what = dataset[0][0], "the first training example"
    if tuple(x0.shape) != tuple(info.shape):
        raise ValueError(f"{what} gives an example of shape {tuple(x0.shape)}, the model takes {info.shape}")
    d = cfg.run.diffusion
    schedule = build_schedule(d.schedule, size=max(info.shape[1:], default=1))
    t = torch.linspace(0, 1, args.levels, dtype=torch.float64)
    copies = noised_copies(x0, schedule, t, space=DataSpace(d.data_scale), seed=args.seed)
    out = _plot_out(args, "noising.png")
    files = adapter.save_noising(
        copies, out.with_name(f"{out.stem}_{adapter.name}"), info, levels=[f"t={v:.2f}" for v in t.tolist()]
    )
    pngs = [f for f in files if Path(f).suffix.lower() == ".png"]
    if not pngs:
        raise ValueError(f"the {adapter.name!r} adapter wrote no PNG picture of the noised copies")
    title = f"forward noising of {what} ({d.schedule.kind} schedule, {adapter.name})"
    for f in files:
        print(f"wrote {f}")
    print(f"wrote {plot_noising(pngs[0], schedule, t, out, title=title)}")
    return 0


def _cmd_plot_loss(args: argparse.Namespace) -> int:
    from ..plots import plot_loss

    print(f"wrote {plot_loss(args.runs, _plot_out(args, 'loss.png'))}")
    return 0


def add_parser(sub: Any) -> None:
    """``multidiff plot schedules | noising | loss``, each writing one PNG."""
    pl = sub.add_parser("plot", help="plot schedules, forward noising or loss curves (PNG)")
    what = pl.add_subparsers(dest="what", required=True)
    ps = what.add_parser("schedules", help="alpha, sigma and log-SNR against t for the usual noise schedules")
    ps.add_argument("--out", help="the PNG (default: schedules.png)")
    ps.set_defaults(func=_cmd_plot_schedules)
    pn = what.add_parser("noising", help="an input noised at several levels of a model's schedule")
    pn.add_argument("source", metavar="CHECKPOINT_OR_CONFIG", help="a checkpoint, a run folder or a YAML config")
    pn.add_argument("--input", help="a file of the model's modality (default: the first training example)")
    pn.add_argument("--levels", type=int, default=8, help="noise levels, t evenly spaced in [0, 1] (default 8)")
    pn.add_argument("--seed", type=int, default=0)
    pn.add_argument("--out", help="the PNG (default: noising.png; the adapter's files go beside it)")
    pn.set_defaults(func=_cmd_plot_noising)
    pc = what.add_parser("loss", help="training loss curves of one or more runs, overlaid")
    pc.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (or their metrics.csv / metrics.jsonl)")
    pc.add_argument("--out", help="the PNG (default: loss.png)")
    pc.set_defaults(func=_cmd_plot_loss)
