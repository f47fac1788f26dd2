"""Style variance (METRICS.md): how far the voice moves between contexts, beyond sampling noise.

In units of how much a well-written persona's voice naturally moves (NATURAL_MOVEMENT), times 0.1; a
stratified bootstrap over responses within contexts gives its interval. VARIANCE_FLOORS (the per-feature
scale floors of stage 3's typical-voice selection) live here beside the units they complement.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from personatune.errors import DataError
from personatune.gates import Measurement
from personatune.scoring.intervals import N_RESAMPLES
from personatune.scoring.record import ResponseScore
from personatune.scoring.record_set import NO_CONTEXT, _as_records, _ctx, _jsonable
from personatune.scoring.style import STYLE_FEATURES

# Divisor floor of a feature's scale, in the feature's unit (style.STYLE_FEATURES): used by stage 3's
# typical-voice selection, so that a feature that is almost always zero cannot dominate a distance.
VARIANCE_FLOORS: dict[str, float] = {
    "words": 1.0,  # words per response
    "words_per_sentence": 1.0,  # words per sentence
    "question_rate": 0.05,  # share of sentences
    "exclamation_rate": 0.05,  # share of sentences
    "first_person_rate": 0.02,  # pronouns per word (about one per 50 words)
    "formality": 0.1,  # score in [0,1]
    "signature_rate": 0.25,  # phrases per response (one per four responses)
    "avoid_hits": 0.25,  # phrases per response
    "emoji_rate": 1.0,  # emoji per 100 words
}

# How much each style feature's context means move apart in a well-written persona, in the feature's unit:
# the median, over the 24 hand-written persona sets of benchmarks/scorer_corpus (their gold answers, 8 per
# context in 6 contexts), of the sampling-corrected between-context standard deviation (`_between_std`).
# Where that median is 0 (words_per_sentence, avoid_hits, emoji_rate: good answers keep them flat) a floor in
# the feature's unit stands in (0.25 words, 0.1 phrases, 0.5 emoji per 100 words). Measured by
# `python benchmarks/bench_style_variance.py --corpus-only` with the shipped instrument; the gold sets of
# benchmarks/gold were not used to choose them. "voice" is the instrument's P(in the persona's voice); the
# corpus is the instrument's training data, so its voice movement there is if anything underestimated, which
# makes the gate stricter, not looser.
NATURAL_MOVEMENT: dict[str, float] = {
    "words": 7.62,
    "words_per_sentence": 0.25,
    "question_rate": 0.035,
    "exclamation_rate": 0.0085,
    "first_person_rate": 0.0136,
    "formality": 0.0191,
    "signature_rate": 0.141,
    "avoid_hits": 0.1,
    "emoji_rate": 0.5,
    "voice": 0.0269,
}
# Style variance of a set whose voice moves exactly as much as a typical well-written persona's: the gate
# (< 0.15) then allows 1.5x that movement.
STYLE_VARIANCE_SCALE = 0.1


@dataclass
class StyleVarianceReport:
    """Style variance across contexts (METRICS.md) and everything needed to see where it comes from.

    Attributes:
        value: STYLE_VARIANCE_SCALE x the mean of per_feature; None when fewer than 2 context groups
            qualify (a gate on a None value fails).
        per_feature: feature -> sampling-corrected between-context std of the context means / the
            feature's natural-movement unit.
        per_context_means: context -> feature -> mean of the feature over that context's responses
            (qualifying groups only).
        overall_means: feature -> mean of the context means (each qualifying context weighted equally).
        floors: feature -> natural-movement unit used (NATURAL_MOVEMENT, or an override).
        groups_used: context -> responses, for groups with >= min_per_context responses.
        groups_skipped: context -> responses, for groups below the minimum (and unlabelled responses,
            under NO_CONTEXT).
        min_per_context: the minimum group size used.
        n: responses in qualifying groups.
        ci: stratified bootstrap 95% interval of value (responses resampled within each context), or None.
        note: why value is None, if it is.
    """

    value: float | None
    per_feature: dict[str, float] = field(default_factory=dict)
    per_context_means: dict[str, dict[str, float]] = field(default_factory=dict)
    overall_means: dict[str, float] = field(default_factory=dict)
    floors: dict[str, float] = field(default_factory=dict)
    groups_used: dict[str, int] = field(default_factory=dict)
    groups_skipped: dict[str, int] = field(default_factory=dict)
    min_per_context: int = 5
    n: int = 0
    ci: tuple[float, float] | None = None
    note: str = ""

    def measurement(self) -> Measurement | None:
        """The value as a gate Measurement, or None when it could not be computed (the gate fails)."""
        return None if self.value is None else Measurement(self.value, n=self.n, ci=self.ci)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


def _between_std(groups: list[np.ndarray]) -> np.ndarray:
    """Per feature: the between-context standard deviation of the context means, less what sampling explains.

    var_between = var over contexts of the context means (population) - mean over contexts of
    (within-context sample variance / context size), floored at 0; returns its square root. A set whose
    contexts differ only by sampling noise therefore scores about 0 whatever its size.
    """
    means = np.stack([g.mean(axis=0) for g in groups])
    noise = np.stack([g.var(axis=0, ddof=1) / len(g) if len(g) > 1 else np.zeros(g.shape[1]) for g in groups]).mean(
        axis=0
    )
    return np.sqrt(np.maximum(means.var(axis=0) - noise, 0.0))


def style_variance(
    records: Iterable[ResponseScore],
    min_per_context: int = 5,
    mean_floor: dict[str, float] | None = None,
    features: Sequence[str] | None = None,
    seed: int = 0,
    n_resamples: int = N_RESAMPLES,
) -> StyleVarianceReport:
    """How much the voice moves between contexts, relative to how much a well-written persona's moves (METRICS.md).

    For each feature f (the style features, and `voice` when the records have it): b_f = `_between_std` of
    the context groups with at least `min_per_context` responses (the spread of the context means beyond
    sampling noise), in units of NATURAL_MOVEMENT[f]. Style variance = STYLE_VARIANCE_SCALE * mean_f b_f / u_f.
    A set that moves like a typical well-written persona scores about 0.1; one that switches between an
    in-persona and a plain voice from context to context scores far above 0.15 (docs/quality-thresholds.md).
    Unlabelled responses (context None) form no group.

    Args:
        records: scored responses (their `style` dicts must hold every feature used).
        min_per_context: responses a context group needs to count (config eval.min_per_context).
        mean_floor: per-feature units overriding NATURAL_MOVEMENT (feature unit).
        features: features to average over (default: every STYLE_FEATURES feature, plus "voice" when every
            record has it).
        seed: bootstrap seed.
        n_resamples: bootstrap resamples (0: no interval).

    Returns:
        A StyleVarianceReport (per_feature holds b_f / u_f); value None with a note when fewer than 2 groups qualify.

    Raises:
        DataError: a record lacks a feature or has a non-finite value; a feature has no unit.
    """
    recs = _as_records(records)
    if features is None:
        feats = list(STYLE_FEATURES) + (["voice"] if recs and all("voice" in r.style for r in recs) else [])
    else:
        feats = list(features)
    units = {**NATURAL_MOVEMENT, **(mean_floor or {})}
    missing_unit = [f for f in feats if f not in units]
    if missing_unit:
        raise DataError(
            f"style_variance: no natural-movement unit for feature(s) {missing_unit}; pass mean_floor={{name: value}}"
        )
    groups: dict[str, list[ResponseScore]] = {}
    for r in recs:
        groups.setdefault(_ctx(r), []).append(r)
    used = {c: g for c, g in sorted(groups.items()) if c != NO_CONTEXT and len(g) >= min_per_context}
    skipped = {c: len(g) for c, g in sorted(groups.items()) if c not in used}
    report = StyleVarianceReport(
        value=None,
        floors={f: units[f] for f in feats},
        groups_used={c: len(g) for c, g in used.items()},
        groups_skipped=skipped,
        min_per_context=min_per_context,
        n=sum(len(g) for g in used.values()),
    )
    if len(used) < 2:
        report.note = (
            f"style variance needs >= 2 context groups with >= {min_per_context} responses; "
            f"{len(used)} qualify (groups: {dict((c, len(g)) for c, g in sorted(groups.items()))})"
        )
        return report

    mats: list[np.ndarray] = []
    for c, g in used.items():
        rows = []
        for r in g:
            try:
                rows.append([float(r.style[f]) for f in feats])
            except KeyError as e:
                raise DataError(
                    f"record {r.id!r} has no style feature {e.args[0]!r}; rescore it with this version of the scorer"
                ) from None
        mat = np.array(rows, dtype=float)
        if not np.isfinite(mat).all():
            raise DataError(f"context {c!r}: a style feature is NaN or infinite; rescore the responses")
        mats.append(mat)
    u = np.array([units[f] for f in feats], dtype=float)
    var = _between_std(mats) / u
    report.value = float(STYLE_VARIANCE_SCALE * var.mean())
    report.per_feature = {f: float(v) for f, v in zip(feats, var)}
    means = np.stack([m.mean(axis=0) for m in mats])
    report.per_context_means = {c: {f: float(v) for f, v in zip(feats, row)} for c, row in zip(used, means)}
    report.overall_means = {f: float(v) for f, v in zip(feats, means.mean(axis=0))}
    if n_resamples > 0:
        # Stratified bootstrap: resample responses within each context, so group sizes stay fixed.
        rng = np.random.default_rng(seed)
        vals = np.empty(n_resamples)
        idx = [rng.integers(0, len(m), size=(n_resamples, len(m))) for m in mats]
        for b in range(n_resamples):
            vals[b] = STYLE_VARIANCE_SCALE * (_between_std([m[i[b]] for m, i in zip(mats, idx)]) / u).mean()
        lo, hi = np.quantile(vals, [0.025, 0.975])
        report.ci = (float(lo), float(hi))
    return report
