"""The audio modality's judge (``multidiff eval``).

For the built-in tone set (whose data description carries ``pitches_hz``), nothing is trained and
nothing is shared with the model: a clip's class is the nearest pitch to its strongest partial
(:func:`~modalities.audio.metrics.classify_pitch`; ``pitch_accuracy`` is the fraction of samples
at the pitch asked for, ``judge_accuracy`` the same on held-out real clips), and the Fréchet
distance is over log-mel statistics (:func:`~modalities.audio.metrics.mel_features`) against the
held-out 20% of the run's clips. Other audio (a folder) gets the generic held-out classifier judge.

For the captioned tones (``source: tones`` with ``captions: true``) it also judges a text run's
samples attribute by attribute (:func:`tone_attributes`): pitch as above, and timbre, envelope and
loudness measured as :func:`modalities.audio.data.captioned_tones` makes them
(:func:`tone_figures`): the second and third harmonics against the fundamental, the late part's
level against the early part's, the peak level.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from multidiff.evaluate import AttributeJudge, Judge, real_examples, split_holdout, with_held_out_figures

__all__ = ["audio_judge", "tone_attributes", "tone_codes", "tone_figures"]


def tone_figures(x: Tensor, sample_rate: int, pitches_hz: list[float]) -> dict[str, Tensor]:
    """Measurements ``(B,)`` of tones ``x (B, C, L)``:

    * ``harmonic2``, ``harmonic3``: the spectrum's peak near twice and three times the
      fundamental (the strongest partial in the pitch range, :func:`~.metrics.estimate_f0`), over
      its peak at the fundamental (Hann window): 0 and 0 for a pure tone, 1/2 and 1/3 for a bright
      one (every harmonic at ``1/k``), 0 and 1/3 for a hollow one (the odd ones);
    * ``late``: the RMS level of the clip's second half (less its last tenth, the release) over its
      first half's: near 0 for a plucked tone (its decay's time constant is 8-15% of the clip),
      about 1 for a sustained one;
    * ``peak_db``: the peak level in dBFS (-24 quiet, -6 loud, +-1 dB).
    """
    from .metrics import estimate_f0

    v = x.double().mean(1)
    n = v.shape[-1]
    nfft = 1 << max(14, math.ceil(math.log2(n)))
    mag = torch.fft.rfft(v * torch.hann_window(n, dtype=v.dtype), n=nfft).abs()
    f0 = estimate_f0(x, sample_rate, fmin=min(pitches_hz) / 1.5, fmax=max(pitches_hz) * 1.5, harmonics=1)
    f0 = torch.nan_to_num(f0, nan=min(pitches_hz))
    span = torch.arange(-3, 4)  # bins around a partial: the window's main lobe and the detuning's rounding

    def peak(k: int) -> Tensor:
        centre = (f0 * k * nfft / sample_rate).round().long()
        return mag.gather(1, (centre[:, None] + span).clamp(0, mag.shape[1] - 1)).amax(1)

    a1 = peak(1).clamp_min(1e-12)
    half, tail = n // 2, n - n // 10
    early = v[:, :half].pow(2).mean(1).sqrt()
    late = v[:, half:tail].pow(2).mean(1).sqrt()
    return {
        "harmonic2": (peak(2) / a1).float(),
        "harmonic3": (peak(3) / a1).float(),
        "late": (late / early.clamp_min(1e-12)).float(),
        "peak_db": (20 * torch.log10(v.abs().amax(1).clamp_min(1e-12))).float(),
    }


def tone_codes(x: Tensor, sample_rate: int, pitches_hz: list[float]) -> dict[str, Tensor]:
    """The captioned tones' attribute codes ``(B,)`` of clips ``x``, each figure of
    :func:`tone_figures` cut halfway between the values the generator gives it: pitch by
    :func:`~.metrics.classify_pitch`; timbre pure when the third harmonic is under 1/6 of the
    fundamental, else bright when the second is over 1/4, else hollow; envelope plucked when the
    late level is under half the early one; loudness loud above -15 dBFS."""
    from .metrics import classify_pitch

    f = tone_figures(x, sample_rate, pitches_hz)
    timbre = torch.where(f["harmonic3"] < 1 / 6, 0, torch.where(f["harmonic2"] > 1 / 4, 1, 2))
    return {
        "pitch": classify_pitch(x, pitches_hz, sample_rate).long(),
        "timbre": timbre.long(),
        "envelope": (f["late"] >= 0.5).long(),
        "loudness": (f["peak_db"] > -15.0).long(),
    }


def tone_attributes(
    seen: tuple[Tensor, Mapping[str, Tensor]],
    held_out: tuple[Tensor, Mapping[str, Tensor]],
    sample_rate: int,
    pitches_hz: list[float],
) -> AttributeJudge:
    """The :class:`~multidiff.evaluate.AttributeJudge` of captioned tones (:func:`tone_codes`; nothing
    trained), prompts in the set's words (:data:`~modalities.audio.data.TONE_TEMPLATES`)."""
    from multidiff.captions import compose_caption, factor_captions

    from .data import TONE_ATTRIBUTES, TONE_FACTORS, TONE_TEMPLATES

    def caption(values: Mapping[str, str], rng: random.Random) -> str:
        return compose_caption(values, TONE_ATTRIBUTES, TONE_TEMPLATES, rng)

    def parts(values: Mapping[str, str], rng: random.Random) -> tuple[str, ...]:
        return factor_captions(values, TONE_ATTRIBUTES, TONE_TEMPLATES, TONE_FACTORS, rng)

    return AttributeJudge(
        values={k: a.values for k, a in TONE_ATTRIBUTES.items()},
        measure=lambda x: tone_codes(x, sample_rate, pitches_hz),
        caption=caption,
        real={"seen": seen, "held_out": held_out},
        description=(
            "pitch by the strongest partial; timbre by the 2nd and 3rd harmonics against the fundamental, "
            "envelope by the late level against the early one, loudness by the peak, each cut halfway between "
            "the generator's values"
        ),
        parts=parts,
    )


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
    ds, _ = adapter.build_dataset(data)
    x, y = real_examples(ds)
    tr, ho = split_holdout(len(x), 0.2, seed=0)
    judge = Judge(
        lambda v: classify_pitch(v, pitches, sr), lambda v: mel_features(v, sr), accuracy_name="pitch_accuracy"
    )
    judge = with_held_out_figures(judge, x, y, tr, ho)
    if data.captions:  # the captioned tones
        other, _ = adapter.build_dataset(data.model_copy(update={"split": "held_out", "limit": None}))
        held = (real_examples(other)[0], dict(other.attributes))
        judge = dataclasses.replace(judge, attributes=tone_attributes((x, dict(ds.attributes)), held, sr, pitches))
    text = (
        f"the strongest partial in the tone set's pitch range ({judge.figures.get('judge_accuracy', float('nan')):.3f} "
        f"right on the held-out 20% of real clips); Fréchet on log-mel statistics against those clips"
    )
    return dataclasses.replace(judge, description=text)
