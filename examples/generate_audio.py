"""Generate WAVs (and their spectrograms) from a trained audio model.

    python examples/generate_audio.py runs/audio_tones -n 8 --class E4 --guidance 2
    python examples/generate_audio.py runs/audio_tones/checkpoints/step_00001500 --sampler unipc --steps 10

Writes ``<out>/000_E4.wav, 001_E4.wav, ...`` (soundfile, 16-bit PCM at the model's sample rate)
and ``<out>/spectrograms.png``. ``multidiff sample`` does the same from the command line.
"""

from __future__ import annotations

import argparse
import sys

from multidiff.pipeline import load_pipeline


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a run folder (its newest checkpoint) or a checkpoint folder")
    p.add_argument("-n", "--num", type=int, default=8, help="number of clips")
    p.add_argument("--class", dest="label", help="class name (e.g. E4) or index; default: every class in turn")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the run's)")
    p.add_argument("--sampler", help="any of `multidiff samplers` (default: the run's)")
    p.add_argument("--steps", type=int, help="sampler steps (default: the run's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="generated_audio", help="output folder")
    args = p.parse_args(argv)

    pipe = load_pipeline(args.checkpoint, device=args.device)
    if pipe.adapter.name != "audio":
        p.error(f"{args.checkpoint} holds a {pipe.adapter.name} model, not an audio one")
    try:
        label = pipe.label(args.label)
    except ValueError as e:
        p.error(str(e))
    x, labels = pipe.sample(
        args.num, labels=label, guidance_scale=args.guidance, sampler=args.sampler, steps=args.steps, seed=args.seed
    )
    for path in pipe.adapter.save_samples(x, args.out, pipe.info, labels=labels):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
