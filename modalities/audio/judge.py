"""The audio modality's judge (``multidiff eval``).

For the built-in tone set (whose data description carries ``pitches_hz``), nothing is trained and
nothing is shared with the model: a clip's class is the nearest pitch to its strongest partial
(:func:`~modalities.audio.metrics.classify_pitch`; ``pitch_accuracy`` is the fraction of samples
at the pitch asked for, ``judge_accuracy`` the same on held-out real clips), and the Fréchet
distance is over log-mel statistics (:func:`~modalities.audio.metrics.mel_features`) against the
held-out 20% of the run's clips. Other audio (a folder) gets the generic held-out classifier judge.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from multidiff.evaluate import Judge, real_examples, split_holdout, with_held_out_figures

__all__ = ["audio_judge"]


def audio_judge(
    adapter: Any, data: Any, info: Any, *, cache_dir: str | Path | None = None, device: Any = None, **options: Any
) -> Judge:
    """The tone set's pitch judge, or the generic judge for other audio (see the module docstring)."""
    from multidiff.modality import Modality

    from .metrics import classify_pitch, mel_features

    pitches = info.extra.get("pitches_hz")
    if not pitches:
        return Modality.judge(adapter, data, info, cache_dir=cache_dir, device=device, **options)
    if options:
        raise ValueError(f"the audio modality's pitch judge takes no options, got {', '.join(sorted(options))}")
    sr, pitches = int(info.extra["sample_rate"]), [float(p) for p in pitches]
    x, y = real_examples(adapter.build_dataset(data)[0])
    tr, ho = split_holdout(len(x), 0.2, seed=0)
    judge = Judge(
        lambda v: classify_pitch(v, pitches, sr), lambda v: mel_features(v, sr), accuracy_name="pitch_accuracy"
    )
    judge = with_held_out_figures(judge, x, y, tr, ho)
    text = (
        f"the strongest partial in the tone set's pitch range ({judge.figures.get('judge_accuracy', float('nan')):.3f} "
        f"right on the held-out 20% of real clips); Fréchet on log-mel statistics against those clips"
    )
    return dataclasses.replace(judge, description=text)
