"""Set-level persona metrics of METRICS.md, with 95% confidence intervals.

- consistency rate: share of responses that are `consistent`; Wilson interval.
- trait adherence: share of (response, trait) pairs that adhere, overall / per trait / per context;
  bootstrap over responses (pairs of one response are correlated), Wilson per trait (one pair per response).
- style variance: how far the context means of the style features move apart beyond what sampling
  explains, in units of how much a well-written persona's voice naturally moves (NATURAL_MOVEMENT),
  times 0.1; stratified bootstrap over responses within contexts.
- helpers: `summarize`, `format_summary`.

The intervals (`wilson_ci`, `bootstrap_ci`, `bootstrap_diff_ci`, `rate_difference`, `auroc`, `auroc_ci`) live in
personatune.scoring.intervals and style variance in personatune.scoring.style_variance; both are re-exported here,
so every metric still imports from personatune.scoring.aggregate.

Every definition, floor and resample count is in docs/persona-evaluation.md ("Scorer arithmetic").

>>> [round(x, 4) for x in wilson_ci(9, 10)]
[0.5958, 0.9821]
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from personatune.errors import DataError
from personatune.gates import Measurement

# Re-exported: stages, the report and benchmarks import every set-level metric from this module.
from personatune.scoring.intervals import (  # noqa: F401
    N_RESAMPLES,
    _z,
    auroc,
    auroc_ci,
    bootstrap_ci,
    bootstrap_diff_ci,
    rate_difference,
    wilson_ci,
)
from personatune.scoring.record import ResponseScore
from personatune.scoring.record_set import NO_CONTEXT, _as_records, _ctx, _jsonable  # noqa: F401
from personatune.scoring.style import STYLE_FEATURES
from personatune.scoring.style_variance import (  # noqa: F401
    NATURAL_MOVEMENT,
    STYLE_VARIANCE_SCALE,
    VARIANCE_FLOORS,
    StyleVarianceReport,
    _between_std,
    style_variance,
)

# ---- records -----------------------------------------------------------------------------------


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
                raise DataError(
                    f"record {record.id!r} targets trait {t!r} but has no traits[{t!r}] score; "
                    f"score it with the persona that defines {t!r}"
                )
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


# ---- summary -----------------------------------------------------------------------------------


def _mean_measurement(values: Sequence[float], seed: int, n_resamples: int) -> Measurement:
    if not values:
        return Measurement(math.nan, n=0, ci=None)
    return Measurement(
        float(np.mean(values)), n=len(values), ci=bootstrap_ci(values, seed=seed, n_resamples=n_resamples)
    )


def summarize(
    records: Iterable[ResponseScore], min_per_context: int = 5, seed: int = 0, n_resamples: int = N_RESAMPLES
) -> dict[str, Any]:
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
        traits[t] = {
            "mean_expressed": meas(_mean_measurement(expr, seed, n_resamples), "probability"),
            "violation_rate": meas(
                Measurement(
                    kv / len(viol) if viol else math.nan, n=len(viol), ci=wilson_ci(kv, len(viol)) if viol else None
                ),
                "fraction of responses",
            ),
        }
    rules: dict[str, Any] = {}
    for b in sorted({b for r in recs for b in r.rules}):
        flags = [bool(r.rules[b]) for r in recs if b in r.rules]
        kb = sum(flags)
        rules[b] = {
            **meas(Measurement(kb / len(flags), n=len(flags), ci=wilson_ci(kb, len(flags))), "pass rate"),
            "hard": any(b in r.hard_rules for r in recs),
        }
    feats = list(STYLE_FEATURES)
    style_means = {
        f: _jsonable(float(np.mean([r.style[f] for r in recs if f in r.style])))
        if any(f in r.style for r in recs)
        else None
        for f in feats
    }
    return {
        "n": len(recs),
        "consistency_rate": meas(consistency_rate(recs), "fraction of responses"),
        "mean_consistency": meas(
            _mean_measurement([float(r.consistency) for r in recs], seed, n_resamples), "score in [0,1]"
        ),
        "style_match": meas(
            _mean_measurement([float(r.style_match) for r in recs], seed, n_resamples), "score in [0,1]"
        ),
        "adherence": {
            "overall": meas(adh.overall, pair_unit),
            "per_trait": {t: meas(m, pair_unit) for t, m in adh.per_trait.items()},
            "per_context": {c: meas(m, pair_unit) for c, m in adh.per_context.items()},
            "n_responses": adh.n_responses,
        },
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
    rows = [
        ("consistency rate", _fmt(summary["consistency_rate"])),
        ("mean consistency", _fmt(summary["mean_consistency"])),
        ("style match", _fmt(summary["style_match"])),
        ("trait adherence", _fmt(summary["adherence"]["overall"])),
    ]
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
            lines.append(
                f"  groups skipped (< {sv['min_per_context']} responses or no context): {sv['groups_skipped']}"
            )
    means = {f: v for f, v in summary.get("style_means", {}).items() if v is not None}
    if means:
        lines += ["", "style features (mean over responses)"]
        w = max(len(k) for k in means)
        lines += [f"  {f:<{w}}  {v:.3f}" for f, v in means.items()]
    return "\n".join(lines)
