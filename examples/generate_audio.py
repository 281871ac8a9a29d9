"""Generate WAVs (and their spectrograms) from a trained audio model.

    python examples/generate_audio.py runs/audio_tones -n 8 --class E4 --guidance 2
    python examples/generate_audio.py runs/audio_tones/checkpoints/step_00001500 --sampler unipc --steps 10

Writes ``<out>/000_E4.wav, 001_E4.wav, ...`` (soundfile, 16-bit PCM at the model's sample rate)
and ``<out>/spectrograms.png``. ``multidiff sample`` does the same from the command line.
"""

from __future__ import annotations

import argparse
import sys

from multidiff.cli.options import add_pipeline_args, pipeline_from_args


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--class", dest="label", help="class name (e.g. E4) or index; default: every class in turn")
    p.add_argument("--out", default="generated_audio", help="output folder")
    add_pipeline_args(p)  # the run, --device, --steps, --guidance, --seed, ...
    args = p.parse_args(argv)

    pipe, opts = pipeline_from_args(p, args, modality="audio")
    try:
        label = pipe.label(args.label, "--class")
    except ValueError as e:
        p.error(str(e))
    x, labels = pipe.sample(opts.num_samples, labels=label, sample=opts)
    for path in pipe.adapter.save_samples(x, args.out, pipe.info, labels=labels):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
