"""Set-level persona metrics of METRICS.md, with 95% confidence intervals.

- consistency rate: share of responses that are `consistent`; Wilson interval.
- trait adherence: share of (response, trait) pairs that adhere, overall / per trait / per context;
  bootstrap over responses (pairs of one response are correlated), Wilson per trait (one pair per response).
- style variance: how far the context means of the style features move apart beyond what sampling
  explains, in units of how much a well-written persona's voice naturally moves (NATURAL_MOVEMENT),
  times 0.1; stratified bootstrap over responses within contexts.
- helpers: `wilson_ci`, `bootstrap_ci`, `bootstrap_diff_ci` (persona improvement), `summarize`,
  `format_summary`.

Every definition, floor and resample count is in docs/persona-evaluation.md ("Scorer arithmetic").

>>> [round(x, 4) for x in wilson_ci(9, 10)]
[0.5958, 0.9821]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from personatune.errors import DataError
from personatune.gates import Measurement
from personatune.scoring.record import ResponseScore
from personatune.scoring.style import STYLE_FEATURES

N_RESAMPLES = 1000
"""Bootstrap resamples for every interval in this module (percentile method, seeded)."""
NO_CONTEXT = "(none)"
"""Context label used in reports for records whose context is None."""

# Divisor floor of a feature's scale, in the feature's unit (style.STYLE_FEATURES): used by stage 3's
# typical-voice selection, so that a feature that is almost always zero cannot dominate a distance.
VARIANCE_FLOORS: dict[str, float] = {
    "words": 1.0,                 # words per response
    "words_per_sentence": 1.0,    # words per sentence
    "question_rate": 0.05,        # share of sentences
    "exclamation_rate": 0.05,     # share of sentences
    "first_person_rate": 0.02,    # pronouns per word (about one per 50 words)
    "formality": 0.1,             # score in [0,1]
    "signature_rate": 0.25,       # phrases per response (one per four responses)
    "avoid_hits": 0.25,           # phrases per response
    "emoji_rate": 1.0,            # emoji per 100 words
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

# ---- interval helpers --------------------------------------------------------------------------


def _z(alpha: float) -> float:
    return NormalDist().inv_cdf(1.0 - alpha / 2.0)


def auroc(scores: list[float], labels: list[int]) -> float | None:
    """Area under the ROC curve (Mann-Whitney U, ties count half). None without both classes."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=int)
    pos, neg = s[y == 1], s[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return None
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def auroc_ci(scores: list[float], labels: list[int], n_resamples: int = N_RESAMPLES, seed: int = 0,
             alpha: float = 0.05) -> tuple[float, float] | None:
    """Percentile bootstrap interval of `auroc`, resampling positives and negatives separately (class sizes fixed).

    Returns:
        (low, high) at level 1 - alpha, or None without both classes.
    """
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=int)
    pos, neg = s[y == 1], s[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return None
    rng = np.random.default_rng(seed)
    ip = rng.integers(0, len(pos), size=(n_resamples, len(pos)))
    ineg = rng.integers(0, len(neg), size=(n_resamples, len(neg)))
    negs = np.sort(neg[ineg], axis=1)
    stats = np.empty(n_resamples)
    for b in range(n_resamples):  # Mann-Whitney U by binary search: O(n log n) memory-light per resample
        lo = np.searchsorted(negs[b], pos[ip[b]], side="left")
        hi = np.searchsorted(negs[b], pos[ip[b]], side="right")
        stats[b] = (lo.sum() + 0.5 * (hi - lo).sum()) / (len(pos) * len(neg))
    return float(np.quantile(stats, alpha / 2)), float(np.quantile(stats, 1 - alpha / 2))


def wilson_ci(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n.

    Args:
        k: successes (0 <= k <= n).
        n: trials.
        alpha: 1 - confidence level (0.05 -> 95%).

    Returns:
        (low, high); (0.0, 1.0) when n == 0 (nothing is known).

    Raises:
        ValueError: k outside [0, n].
    """
    if n == 0:
        return (0.0, 1.0)
    if not 0 <= k <= n:
        raise ValueError(f"wilson_ci needs 0 <= k <= n; got k={k}, n={n}")
    z = _z(alpha)
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # k == 0 (k == n) gives exactly 0 (1) analytically; set it so rounding error does not show.
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return (lo, hi)


def bootstrap_ci(values: Sequence[float] | np.ndarray, stat: Callable[[np.ndarray], float] = np.mean,
                 n_resamples: int = N_RESAMPLES, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap interval of `stat` over the rows of `values`.

    Args:
        values: the sample, shape (n,) or (n, d); rows are resampled with replacement.
        stat: statistic of a resampled array (same shape convention as `values`).
        n_resamples: number of resamples.
        seed: seed of the numpy generator (same seed, same interval).
        alpha: 1 - confidence level.

    Returns:
        (low, high) percentiles alpha/2 and 1 - alpha/2 of the resampled statistic; (nan, nan) for an
        empty sample.
    """
    v = np.asarray(values, dtype=float)
    n = v.shape[0] if v.ndim else 0
    if n == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_resamples, n))
    if stat is np.mean and v.ndim == 1:
        stats = v[idx].mean(axis=1)  # vectorised fast path for the common case
    else:
        stats = np.array([stat(v[i]) for i in idx], dtype=float)
    lo, hi = np.nanquantile(stats, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))


def bootstrap_diff_ci(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                      stat: Callable[[np.ndarray], float] = np.mean, n_resamples: int = N_RESAMPLES, seed: int = 0,
                      alpha: float = 0.05, paired: bool = False) -> tuple[float, float]:
    """Percentile bootstrap interval of stat(a) - stat(b) (e.g. final minus baseline consistency rate).

    Args:
        a: first sample (e.g. 1/0 consistent flags of the final model).
        b: second sample (e.g. those of the baseline).
        stat: statistic of one sample.
        n_resamples: number of resamples.
        seed: generator seed.
        alpha: 1 - confidence level.
        paired: True when a[i] and b[i] come from the same prompt: indices are resampled jointly.
            False: a and b are resampled independently.

    Returns:
        (low, high); (nan, nan) when either sample is empty.

    Raises:
        ValueError: paired=True with samples of different lengths.
    """
    va, vb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(va) == 0 or len(vb) == 0:
        return (math.nan, math.nan)
    if paired and len(va) != len(vb):
        raise ValueError(f"paired bootstrap needs equal lengths; got {len(va)} and {len(vb)}")
    rng = np.random.default_rng(seed)
    ia = rng.integers(0, len(va), size=(n_resamples, len(va)))
    ib = ia if paired else rng.integers(0, len(vb), size=(n_resamples, len(vb)))
    if stat is np.mean and va.ndim == 1 and vb.ndim == 1:
        diffs = va[ia].mean(axis=1) - vb[ib].mean(axis=1)
    else:
        diffs = np.array([stat(va[i]) - stat(vb[j]) for i, j in zip(ia, ib)], dtype=float)
    lo, hi = np.nanquantile(diffs, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))


def rate_difference(a: Sequence[bool], b: Sequence[bool], paired: bool = False, seed: int = 0,
                    n_resamples: int = N_RESAMPLES) -> Measurement:
    """mean(a) - mean(b) of two sets of flags with its bootstrap 95% interval (persona improvement).

    Args:
        a: flags of the first set (e.g. `consistent` of the final model's responses).
        b: flags of the second set (e.g. the baseline's).
        paired: resample a[i], b[i] jointly (same prompts).
        seed: generator seed.
        n_resamples: number of resamples.

    Returns:
        Measurement(value, n=len(a) + len(b), ci); value nan when either set is empty.
    """
    va, vb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(va) == 0 or len(vb) == 0:
        return Measurement(math.nan, n=len(va) + len(vb), ci=None)
    ci = bootstrap_diff_ci(va, vb, n_resamples=n_resamples, seed=seed, paired=paired)
    return Measurement(float(va.mean() - vb.mean()), n=len(va) + len(vb), ci=ci)


# ---- records -----------------------------------------------------------------------------------


def _as_records(records: Iterable[ResponseScore | dict[str, Any]]) -> list[ResponseScore]:
    return [r if isinstance(r, ResponseScore) else ResponseScore.from_dict(r) for r in records]


def _ctx(r: ResponseScore) -> str:
    return NO_CONTEXT if r.context is None else str(r.context)


def consistency_rate(records: Iterable[ResponseScore]) -> Measurement:
    """Share of responses that are `consistent` (METRICS.md), with its Wilson 95% interval.

    Args:
        records: scored responses.

    Returns:
        Measurement(value, n=responses, ci); value nan and ci None for no record (a gate on it fails).
    """
    recs = _as_records(records)
    n = len(recs)
    if n == 0:
        return Measurement(math.nan, n=0, ci=None)
    k = sum(bool(r.consistent) for r in recs)
    return Measurement(k / n, n=n, ci=wilson_ci(k, n))


def on_task_rate(records: Iterable[ResponseScore]) -> Measurement | None:
    """METRICS.md on-task rate: share of responses with on_task >= 0.5, Wilson interval.

    Returns:
        The rate over the records whose on_task was measured, or None when none was.
    """
    flags = [r.on_task >= 0.5 for r in _as_records(records) if r.on_task is not None]
    if not flags:
        return None
    k = int(sum(flags))
    return Measurement(k / len(flags), n=len(flags), ci=wilson_ci(k, len(flags)))


@dataclass
class AdherenceReport:
    """Trait adherence (METRICS.md) overall, per trait and per context.

    Attributes:
        overall: share of all (response, trait) pairs that adhere; n = pairs; bootstrap CI over responses.
        per_trait: trait id -> share of its pairs that adhere; n = pairs (= responses scored on it); Wilson CI.
        per_context: context label -> share of the pairs of its responses; bootstrap CI over its responses.
            Records with no context are reported under NO_CONTEXT.
        n_responses: responses counted.
    """

    overall: Measurement
    per_trait: dict[str, Measurement] = field(default_factory=dict)
    per_context: dict[str, Measurement] = field(default_factory=dict)
    n_responses: int = 0

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


def adherence_pairs(record: ResponseScore) -> dict[str, bool]:
    """Whether each trait of one record adheres (METRICS.md).

    The record's traits are the keys of `traits` and `violations`. A targeted trait adheres when
    traits[t] >= 0.5 and violations[t] < 0.5; a trait the prompt does not target adheres when
    violations[t] < 0.5. When `targets` is empty no trait is targeted, so every trait only has to be
    not violated. A trait missing from `violations` counts as not violated.

    Args:
        record: one scored response.

    Returns:
        Trait id -> adheres.

    Raises:
        DataError: a targeted trait has no score in `traits`.
    """
    out: dict[str, bool] = {}
    targets = set(record.targets)
    for t in sorted(set(record.traits) | set(record.violations) | targets):
        ok = record.violations.get(t, 0.0) < 0.5
        if t in targets:
            if t not in record.traits:
                raise DataError(f"record {record.id!r} targets trait {t!r} but has no traits[{t!r}] score; "
                                f"score it with the persona that defines {t!r}")
            ok = ok and record.traits[t] >= 0.5
        out[t] = ok
    return out


def _ratio_measurement(k: np.ndarray, m: np.ndarray, seed: int, n_resamples: int) -> Measurement:
    """sum(k)/sum(m) with a bootstrap interval over rows (responses)."""
    total = int(m.sum())
    if total == 0:
        return Measurement(math.nan, n=0, ci=None)
    value = float(k.sum() / total)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(k), size=(n_resamples, len(k)))
    with np.errstate(invalid="ignore", divide="ignore"):
        stats = k[idx].sum(axis=1) / m[idx].sum(axis=1)
    lo, hi = np.nanquantile(stats, [0.025, 0.975])
    return Measurement(value, n=total, ci=(float(lo), float(hi)))


def trait_adherence(records: Iterable[ResponseScore], seed: int = 0, n_resamples: int = N_RESAMPLES) -> AdherenceReport:
    """Trait adherence over all (response, trait) pairs (METRICS.md), overall / per trait / per context.

    Args:
        records: scored responses.
        seed: bootstrap seed.
        n_resamples: bootstrap resamples.

    Returns:
        An AdherenceReport; overall value nan (n=0) when there is no pair.

    Raises:
        DataError: a record targets a trait it has no score for.
    """
    recs = _as_records(records)
    pairs = [adherence_pairs(r) for r in recs]
    k = np.array([sum(p.values()) for p in pairs], dtype=float)
    m = np.array([len(p) for p in pairs], dtype=float)
    overall = _ratio_measurement(k, m, seed, n_resamples)

    per_trait: dict[str, Measurement] = {}
    for t in sorted({t for p in pairs for t in p}):
        flags = [p[t] for p in pairs if t in p]
        kt = sum(flags)
        per_trait[t] = Measurement(kt / len(flags), n=len(flags), ci=wilson_ci(kt, len(flags)))

    per_context: dict[str, Measurement] = {}
    ctxs = np.array([_ctx(r) for r in recs], dtype=object)
    for c in sorted(set(ctxs.tolist())):
        sel = ctxs == c
        per_context[c] = _ratio_measurement(k[sel], m[sel], seed, n_resamples)
    return AdherenceReport(overall=overall, per_trait=per_trait, per_context=per_context, n_responses=len(recs))


# ---- style variance ----------------------------------------------------------------------------


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
    noise = np.stack([g.var(axis=0, ddof=1) / len(g) if len(g) > 1 else np.zeros(g.shape[1]) for g in groups]).mean(axis=0)
    return np.sqrt(np.maximum(means.var(axis=0) - noise, 0.0))


def style_variance(records: Iterable[ResponseScore], min_per_context: int = 5, mean_floor: dict[str, float] | None = None,
                   features: Sequence[str] | None = None, seed: int = 0, n_resamples: int = N_RESAMPLES) -> StyleVarianceReport:
    """How much the voice moves between contexts, relative to how much a well-written persona's moves (METRICS.md).

    For each feature f (the style features, and `voice` when the records have it): b_f = `_between_std` of
    the context groups with at least `min_per_context` responses (the spread of the context means beyond
    sampling noise), in units of NATURAL_MOVEMENT[f]. Style variance = STYLE_VARIANCE_SCALE * mean_f b_f / u_f.
    A set that moves like a typical well-written persona scores about 0.1; one that switches between an
    in-persona and a plain voice from context to context scores far above 0.15 (docs/quality-thresholds.md).
    Unlabelled responses (context None) form no group.

    Args:
        records: scored responses (their `style` dicts must hold every feature used).
        min_per_context: responses a context group needs to count (config gates.evaluation.min_per_context).
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
        raise DataError(f"style_variance: no natural-movement unit for feature(s) {missing_unit}; pass mean_floor={{name: value}}")
    groups: dict[str, list[ResponseScore]] = {}
    for r in recs:
        groups.setdefault(_ctx(r), []).append(r)
    used = {c: g for c, g in sorted(groups.items()) if c != NO_CONTEXT and len(g) >= min_per_context}
    skipped = {c: len(g) for c, g in sorted(groups.items()) if c not in used}
    report = StyleVarianceReport(value=None, floors={f: units[f] for f in feats}, groups_used={c: len(g) for c, g in used.items()},
                                 groups_skipped=skipped, min_per_context=min_per_context, n=sum(len(g) for g in used.values()))
    if len(used) < 2:
        report.note = (f"style variance needs >= 2 context groups with >= {min_per_context} responses; "
                       f"{len(used)} qualify (groups: {dict((c, len(g)) for c, g in sorted(groups.items()))})")
        return report

    mats: list[np.ndarray] = []
    for c, g in used.items():
        rows = []
        for r in g:
            try:
                rows.append([float(r.style[f]) for f in feats])
            except KeyError as e:
                raise DataError(f"record {r.id!r} has no style feature {e.args[0]!r}; rescore it with this version of the scorer") from None
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


# ---- summary -----------------------------------------------------------------------------------


def _jsonable(x: Any) -> Any:
    """Replace NaN/inf by None and tuples by lists, recursively, so json.dumps writes valid JSON."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Measurement):
        return _jsonable(asdict(x))
    return x


def _mean_measurement(values: Sequence[float], seed: int, n_resamples: int) -> Measurement:
    if not values:
        return Measurement(math.nan, n=0, ci=None)
    return Measurement(float(np.mean(values)), n=len(values), ci=bootstrap_ci(values, seed=seed, n_resamples=n_resamples))


def summarize(records: Iterable[ResponseScore], min_per_context: int = 5, seed: int = 0, n_resamples: int = N_RESAMPLES) -> dict[str, Any]:
    """Every set-level metric of `records` as a JSON-ready dict (NaN -> None, tuples -> lists).

    Keys: n, consistency_rate, mean_consistency, style_match, adherence {overall, per_trait, per_context,
    n_responses}, style_variance (StyleVarianceReport fields), style_means (feature -> mean over all
    responses), traits (trait -> mean expressed probability and violation rate, share with
    violations >= 0.5, Wilson CI), rules (rule -> pass rate, Wilson CI, hard flag). Measurements are
    dicts {value, n, ci}, and carry a "unit".

    Args:
        records: scored responses.
        min_per_context: group minimum for style variance.
        seed: bootstrap seed.
        n_resamples: bootstrap resamples.

    Returns:
        The summary dict.

    Raises:
        DataError: as trait_adherence and style_variance.
    """
    recs = _as_records(records)

    def meas(m: Measurement, unit: str) -> dict[str, Any]:
        return {**_jsonable(asdict(m)), "unit": unit}

    adh = trait_adherence(recs, seed=seed, n_resamples=n_resamples)
    sv = style_variance(recs, min_per_context=min_per_context, seed=seed, n_resamples=n_resamples)
    pair_unit = "fraction of (response, trait) pairs"
    traits: dict[str, Any] = {}
    for t in sorted({t for r in recs for t in (*r.traits, *r.violations)}):
        expr = [r.traits[t] for r in recs if t in r.traits]
        viol = [r.violations[t] >= 0.5 for r in recs if t in r.violations]
        kv = sum(viol)
        traits[t] = {"mean_expressed": meas(_mean_measurement(expr, seed, n_resamples), "probability"),
                     "violation_rate": meas(Measurement(kv / len(viol) if viol else math.nan, n=len(viol),
                                                        ci=wilson_ci(kv, len(viol)) if viol else None), "fraction of responses")}
    rules: dict[str, Any] = {}
    for b in sorted({b for r in recs for b in r.rules}):
        flags = [bool(r.rules[b]) for r in recs if b in r.rules]
        kb = sum(flags)
        rules[b] = {**meas(Measurement(kb / len(flags), n=len(flags), ci=wilson_ci(kb, len(flags))), "pass rate"),
                    "hard": any(b in r.hard_rules for r in recs)}
    feats = list(STYLE_FEATURES)
    style_means = {f: _jsonable(float(np.mean([r.style[f] for r in recs if f in r.style]))) if any(f in r.style for r in recs) else None
                   for f in feats}
    return {
        "n": len(recs),
        "consistency_rate": meas(consistency_rate(recs), "fraction of responses"),
        "mean_consistency": meas(_mean_measurement([float(r.consistency) for r in recs], seed, n_resamples), "score in [0,1]"),
        "style_match": meas(_mean_measurement([float(r.style_match) for r in recs], seed, n_resamples), "score in [0,1]"),
        "adherence": {"overall": meas(adh.overall, pair_unit),
                      "per_trait": {t: meas(m, pair_unit) for t, m in adh.per_trait.items()},
                      "per_context": {c: meas(m, pair_unit) for c, m in adh.per_context.items()},
                      "n_responses": adh.n_responses},
        "style_variance": {**sv.to_dict(), "unit": "x0.1 of a well-written persona's natural movement"},
        "style_means": style_means,
        "traits": traits,
        "rules": rules,
    }


def _fmt(m: dict[str, Any] | None, digits: int = 3) -> str:
    """'0.912 [0.871, 0.944] n=200' from a summary measurement dict."""
    if not m or m.get("value") is None:
        return "n/a"
    s = f"{m['value']:.{digits}f}"
    if m.get("ci"):
        s += f" [{m['ci'][0]:.{digits}f}, {m['ci'][1]:.{digits}f}]"
    if m.get("n") is not None:
        s += f" n={m['n']}"
    return s


def format_summary(summary: dict[str, Any]) -> str:
    """A readable table of a `summarize` dict, with 95% intervals in brackets.

    Args:
        summary: output of `summarize` (or the same dict read back from JSON).

    Returns:
        Multi-line text.
    """
    lines = [f"responses: {summary['n']}    (value [95% CI] n)", ""]
    rows = [("consistency rate", _fmt(summary["consistency_rate"])), ("mean consistency", _fmt(summary["mean_consistency"])),
            ("style match", _fmt(summary["style_match"])), ("trait adherence", _fmt(summary["adherence"]["overall"]))]
    sv = summary["style_variance"]
    sv_txt = "n/a" if sv.get("value") is None else _fmt({"value": sv["value"], "ci": sv.get("ci"), "n": sv.get("n")})
    rows.append(("style variance", sv_txt + (f"  ({sv['note']})" if sv.get("note") else "")))
    width = max(len(r[0]) for r in rows)
    lines += [f"{k:<{width}}  {v}" for k, v in rows]

    def table(title: str, items: dict[str, Any], key: str = "") -> None:
        if not items:
            return
        lines.append("")
        lines.append(title)
        w = max(len(k) for k in items)
        for k, m in items.items():
            lines.append(f"  {k:<{w}}  {_fmt(m[key] if key else m)}")

    table("adherence per trait", summary["adherence"]["per_trait"])
    table("adherence per context", summary["adherence"]["per_context"])
    table("trait expressed (mean probability)", summary["traits"], "mean_expressed")
    table("trait violated (share of responses)", summary["traits"], "violation_rate")
    if summary["rules"]:
        lines += ["", "rules (pass rate)"]
        w = max(len(k) for k in summary["rules"])
        lines += [f"  {k:<{w}}  {_fmt(m)}{'  hard' if m.get('hard') else ''}" for k, m in summary["rules"].items()]
    if sv.get("per_feature"):
        lines += ["", "style movement per feature (between-context std beyond sampling noise / natural movement)"]
        w = max(len(k) for k in sv["per_feature"])
        lines += [f"  {f:<{w}}  {v:.3f}" for f, v in sv["per_feature"].items()]
        if sv.get("groups_skipped"):
            lines.append(f"  groups skipped (< {sv['min_per_context']} responses or no context): {sv['groups_skipped']}")
    means = {f: v for f, v in summary.get("style_means", {}).items() if v is not None}
    if means:
        lines += ["", "style features (mean over responses)"]
        w = max(len(k) for k in means)
        lines += [f"  {f:<{w}}  {v:.3f}" for f, v in means.items()]
    return "\n".join(lines)
