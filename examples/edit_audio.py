"""Fill a gap in a clip and continue a clip with a trained audio model, through the Python API.

    python examples/edit_audio.py runs/audio_tones                    # a built-in tone as input
    python examples/edit_audio.py runs/audio_tones --input clip.wav --gap 0.4:0.6 --continue-from 0.5

Writes to ``--out`` (default ``edited_audio``): ``input.wav``, ``infill_k.wav`` (the gap
regenerated; everything else kept exactly), ``continuation_k.wav`` (everything after the prefix
generated; the prefix kept exactly), and ``edits.png``, the waveforms and spectrograms with the
generated span shaded. Generation is unconditional by default, so the model must continue
the pitch it hears; ``--class`` conditions it instead.

``multidiff edit inpaint CHECKPOINT --input clip.wav --region 0.5:`` does the same from the command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from multidiff import editing as E
from multidiff.cli.options import add_pipeline_args, pipeline_from_args


def _plot(clips: dict[str, tuple[torch.Tensor, tuple[float, float] | None]], sr: int, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from modalities.audio.io import mel_spectrogram

    fig, axes = plt.subplots(2, len(clips), figsize=(3.2 * len(clips), 4.2), squeeze=False)
    for j, (name, (x, span)) in enumerate(clips.items()):
        t = torch.arange(x.shape[-1]) / sr
        axes[0, j].plot(t, x[0], lw=0.5)
        axes[0, j].set_title(name, fontsize=9)
        axes[0, j].set_ylim(-1, 1)
        axes[1, j].imshow(mel_spectrogram(x, sr), origin="lower", aspect="auto", extent=(0, float(t[-1]), 0, 1))
        axes[1, j].set_yticks([])
        axes[1, j].set_xlabel("s")
        if span is not None:
            for ax in axes[:, j]:
                ax.axvspan(span[0] * t[-1], span[1] * t[-1], color="orange", alpha=0.2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


MODALITY = "audio"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", help="a WAV/FLAC/OGG file (default: a training clip of --input-class)")
    p.add_argument("--input-class", help="class of the built-in input clip (default: the middle class)")
    p.add_argument("--class", dest="label", help="condition the generation on this class (default: unconditional)")
    p.add_argument("--gap", default="0.4:0.6", help="fractions of the clip to fill (default 0.4:0.6)")
    p.add_argument("--continue-from", type=float, default=0.5, help="fraction kept as the prefix (default 0.5)")
    p.add_argument("--method", choices=E.MASK_METHODS, default="repaint")
    p.add_argument("-n", "--num", type=int, default=2, help="variations of each edit")
    p.add_argument("--out", default="edited_audio")
    add_pipeline_args(p, exclude=("num_samples",))  # the run, --device, --steps, --guidance, --seed, ...
    args = p.parse_args(argv)

    pipe, opts = pipeline_from_args(p, args, modality=MODALITY)
    from modalities.audio.io import write_wav

    names = pipe.info.class_names
    try:
        label = pipe.label(args.label)
        if args.input:
            x = pipe.read(args.input)
        else:
            src = pipe.label(args.input_class) if args.input_class else (len(names) // 2 if names else None)
            x = pipe.training_examples(1, src, seed=opts.seed)
        if not 0 < args.continue_from < 1:
            raise ValueError(f"--continue-from must lie in (0, 1), got {args.continue_from}")
        gap = pipe.mask(region=args.gap)
        tail = pipe.mask(region=f"{args.continue_from}:1")
    except ValueError as e:
        p.error(str(e))
    sr = int(pipe.info.extra["sample_rate"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # the run's guidance towards a class; none when unconditional
    opts = opts if label is not None else opts.with_overrides(guidance_scale=1.0)
    lo, hi = (float(v) for v in args.gap.split(":"))
    clips: dict[str, tuple[torch.Tensor, tuple[float, float] | None]] = {"input": (x[0], None)}
    print(write_wav(out / "input.wav", x[0], sr))
    for what, mask, span in (("infill", gap, (lo, hi)), ("continuation", tail, (args.continue_from, 1.0))):
        y = pipe.inpaint(x, mask, n=args.num, label=label, method=args.method, sample=opts)
        keep = ~mask.expand_as(y)
        assert torch.equal(y[keep], x.expand_as(y)[keep]), "known samples changed"
        for k, clip in enumerate(y):
            print(write_wav(out / f"{what}_{k}.wav", clip, sr))
        clips[what] = (y[0], span)
    print(_plot(clips, sr, out / "edits.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
