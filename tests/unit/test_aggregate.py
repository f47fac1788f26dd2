"""Set-level metrics (METRICS.md) against values computed by hand in the comments."""

import json
import math

import numpy as np
import pytest

from personatune.errors import DataError
from personatune.gates import GateSpec, check_gates
from personatune.scoring.aggregate import (
    NATURAL_MOVEMENT,
    NO_CONTEXT,
    STYLE_VARIANCE_SCALE,
    adherence_pairs,
    bootstrap_ci,
    bootstrap_diff_ci,
    consistency_rate,
    format_summary,
    rate_difference,
    style_variance,
    summarize,
    trait_adherence,
    wilson_ci,
)
from personatune.scoring.record import ResponseScore
from personatune.scoring.style import STYLE_FEATURES


def rec(i, traits=None, violations=None, targets=(), context=None, consistent=True, style=None, rules=None, hard=()):
    full_style = {f: 0.0 for f in STYLE_FEATURES}
    full_style.update(style or {})
    return ResponseScore(
        id=str(i),
        traits=dict(traits or {}),
        violations=dict(violations or {}),
        style=full_style,
        style_match=0.8,
        rules=dict(rules or {}),
        consistent=consistent,
        consistency=0.7 if consistent else 0.3,
        targets=list(targets),
        context=context,
        hard_rules=list(hard),
    )


# ---- intervals ---------------------------------------------------------------------------------


def test_wilson_known_values():
    # z = 1.959964; 9/10: centre (0.9 + z^2/20) / (1 + z^2/10) = 0.78898, half 0.19314.
    lo, hi = wilson_ci(9, 10)
    assert (lo, hi) == pytest.approx((0.59584, 0.98212), abs=1e-4)
    # 0/10: lower exactly 0, upper z^2/10 / (1 + z^2/10) = 0.27753.
    lo, hi = wilson_ci(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.27753, abs=1e-4)
    assert wilson_ci(10, 10)[1] == 1.0
    assert wilson_ci(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_ci(11, 10)


def test_bootstrap_ci_properties():
    assert bootstrap_ci([0.3] * 20) == pytest.approx((0.3, 0.3))
    assert all(math.isnan(x) for x in bootstrap_ci([]))
    # 200 ones and 200 zeros: normal theory gives 0.5 +- 1.96 * sqrt(0.25/400) = 0.5 +- 0.049.
    v = [1.0] * 200 + [0.0] * 200
    lo, hi = bootstrap_ci(v, seed=3)
    assert lo == pytest.approx(0.451, abs=0.012) and hi == pytest.approx(0.549, abs=0.012)
    assert bootstrap_ci(v, seed=3) == (lo, hi)  # seeded
    # A custom statistic goes through the generic path; the median of 0..100 lies near 50.
    lo, hi = bootstrap_ci(np.arange(101.0), stat=np.median)
    assert 35 < lo < 50 < hi < 65


def test_bootstrap_diff_ci():
    assert bootstrap_diff_ci([1.0] * 10, [0.0] * 10) == (1.0, 1.0)
    # Paired identical samples: every resampled difference is 0.
    x = [1.0, 0.0, 1.0, 1.0, 0.0]
    assert bootstrap_diff_ci(x, x, paired=True) == (0.0, 0.0)
    # Independent resampling of identical samples: an interval around 0 of positive width.
    lo, hi = bootstrap_diff_ci([1.0, 0.0] * 50, [1.0, 0.0] * 50)
    assert lo < 0 < hi
    # 0.8 vs 0.5 with n = 100 each: se = sqrt(0.16/100 + 0.25/100) = 0.064 -> 0.3 +- 0.125.
    a, b = [1.0] * 80 + [0.0] * 20, [1.0] * 50 + [0.0] * 50
    lo, hi = bootstrap_diff_ci(a, b, seed=1)
    assert lo == pytest.approx(0.175, abs=0.03) and hi == pytest.approx(0.425, abs=0.03)
    with pytest.raises(ValueError):
        bootstrap_diff_ci([1.0], [1.0, 0.0], paired=True)
    m = rate_difference([True] * 80 + [False] * 20, [True] * 50 + [False] * 50, seed=1)
    assert m.value == pytest.approx(0.3) and m.n == 200 and m.ci == (lo, hi)
    assert math.isnan(rate_difference([], [True]).value)


# ---- consistency rate ----------------------------------------------------------------------------


def test_consistency_rate():
    recs = [rec(i, consistent=c) for i, c in enumerate([True, True, False, True])]
    m = consistency_rate(recs)
    assert m.value == 0.75 and m.n == 4 and m.ci == wilson_ci(3, 4)
    empty = consistency_rate([])
    assert math.isnan(empty.value) and empty.n == 0
    gate = check_gates([GateSpec("consistency_rate", 0.85, ">=", "fraction")], {"consistency_rate": empty})[0]
    assert gate.passed is False


# ---- trait adherence -----------------------------------------------------------------------------

# Hand-computed set: traits a, b.
#  r1 casual, targets [a]: a expressed .8, violated .1 -> adheres; b violated .2 -> adheres.        2/2
#  r2 casual, targets [a]: a expressed .4 -> not expressed -> fails; b not violated -> adheres.     1/2
#  r3 tech, no targets:    a violated .6 -> fails; b violated .1 -> adheres (expression irrelevant). 1/2
#  r4 tech, targets [b]:   a violated .49 -> adheres; b expressed .5 but violated .5 -> fails.      1/2
# overall 5/8; per trait a: T F F T = 2/4, b: T T T F = 3/4; casual 3/4, tech 2/4.
ADH = [
    rec(1, {"a": 0.8, "b": 0.1}, {"a": 0.1, "b": 0.2}, ["a"], "casual"),
    rec(2, {"a": 0.4, "b": 0.9}, {"a": 0.0, "b": 0.0}, ["a"], "casual"),
    rec(3, {"a": 0.1, "b": 0.1}, {"a": 0.6, "b": 0.1}, [], "tech"),
    rec(4, {"a": 0.0, "b": 0.5}, {"a": 0.49, "b": 0.5}, ["b"], "tech"),
]


def test_adherence_by_hand():
    assert [adherence_pairs(r) for r in ADH] == [
        {"a": True, "b": True},
        {"a": False, "b": True},
        {"a": False, "b": True},
        {"a": True, "b": False},
    ]
    rep = trait_adherence(ADH)
    assert rep.overall.value == 5 / 8 and rep.overall.n == 8 and rep.n_responses == 4
    # Each response adheres on 1/2 or 2/2 of its pairs, so every resampled ratio lies in [0.5, 1].
    lo, hi = rep.overall.ci
    assert 0.5 <= lo <= 5 / 8 <= hi <= 1.0
    assert {t: m.value for t, m in rep.per_trait.items()} == {"a": 0.5, "b": 0.75}
    assert rep.per_trait["b"].ci == wilson_ci(3, 4) and rep.per_trait["b"].n == 4
    assert {c: m.value for c, m in rep.per_context.items()} == {"casual": 0.75, "tech": 0.5}
    assert rep.per_context["tech"].n == 4
    assert trait_adherence(ADH).overall.ci == rep.overall.ci  # seeded


def test_adherence_edge_cases():
    # No context -> NO_CONTEXT; a trait missing from violations counts as not violated.
    rep = trait_adherence([rec(1, {"a": 0.9}, {}, ["a"], None)])
    assert rep.per_context[NO_CONTEXT].value == 1.0
    assert math.isnan(trait_adherence([]).overall.value)
    with pytest.raises(DataError, match="targets trait 'zz'"):
        trait_adherence([rec(1, {"a": 0.9}, {"a": 0.0}, ["zz"])])


# ---- style variance ------------------------------------------------------------------------------


def sv_records():
    # Context A: words 10, 20 (mean 15); question_rate 0, 0 (mean 0).
    # Context B: words 30, 40 (mean 35); question_rate 0, 0.1 (mean 0.05).
    # Formality 0.5 everywhere; every other feature 0.
    return [
        rec(1, context="A", style={"words": 10, "formality": 0.5}),
        rec(2, context="A", style={"words": 20, "formality": 0.5}),
        rec(3, context="B", style={"words": 30, "formality": 0.5}),
        rec(4, context="B", style={"words": 40, "formality": 0.5, "question_rate": 0.1}),
        rec(5, context="C", style={"words": 500}),  # 1 response: below the minimum, skipped
        rec(6, context=None, style={"words": 500}),  # unlabelled: never a group
        rec(7, context=None, style={"words": 500}),
    ]


def test_style_variance_by_hand():
    rep = style_variance(sv_records(), min_per_context=2)
    u = NATURAL_MOVEMENT
    # words: context means 15, 35 -> population variance 100; sampling noise = mean over contexts of
    # (sample variance 50 / 2 responses) = 25 -> between-context std sqrt(75), in units of u["words"].
    # question_rate: means 0, 0.05 -> variance 0.000625 < noise (0 + 0.005 / 2) / 2 = 0.00125 -> 0 (noise only).
    # formality: constant -> 0; the all-zero features -> 0 (no division by anything data-dependent).
    assert rep.per_feature["words"] == pytest.approx(math.sqrt(75) / u["words"])
    assert rep.per_feature["question_rate"] == 0.0
    assert rep.per_feature["emoji_rate"] == 0.0 and rep.per_feature["formality"] == 0.0
    assert "voice" not in rep.per_feature  # the records carry no voice probability
    assert rep.value == pytest.approx(STYLE_VARIANCE_SCALE * math.sqrt(75) / u["words"] / len(STYLE_FEATURES))
    assert rep.groups_used == {"A": 2, "B": 2}
    assert rep.groups_skipped == {NO_CONTEXT: 2, "C": 1}
    assert rep.n == 4
    assert rep.per_context_means["B"]["words"] == 35 and rep.overall_means["words"] == 25
    lo, hi = rep.ci
    assert lo <= hi
    assert rep.measurement().value == rep.value
    # Only two features: the mean of the two; another unit for words scales its term.
    assert style_variance(sv_records(), 2, features=["words", "question_rate"]).value == pytest.approx(
        STYLE_VARIANCE_SCALE * math.sqrt(75) / u["words"] / 2
    )
    assert style_variance(sv_records(), 2, mean_floor={"words": 1.0}).per_feature["words"] == pytest.approx(
        math.sqrt(75)
    )


def test_style_variance_three_contexts_and_constant_groups():
    # Every response in a context has the same words: means 10, 20, 30 -> population std sqrt(200/3), no
    # sampling noise. Within-group values are constant, so every bootstrap resample gives the same value.
    recs = [
        rec(i, context=c, style={"words": w})
        for i, (c, w) in enumerate([("x", 10)] * 5 + [("y", 20)] * 5 + [("z", 30)] * 5)
    ]
    rep = style_variance(recs, features=["words"])
    assert rep.value == pytest.approx(STYLE_VARIANCE_SCALE * math.sqrt(200 / 3) / NATURAL_MOVEMENT["words"])
    assert rep.ci == pytest.approx((rep.value, rep.value))


def test_style_variance_separates_a_steady_voice_from_one_that_switches_by_context():
    """The decision the gate exists for: one voice everywhere passes, persona in some contexts and a plain
    assistant in others fails (here through the instrument's voice probability and the words)."""
    rng = np.random.default_rng(0)
    ctx = ["casual", "technical", "emotional", "creative", "adversarial", "off_topic"]

    def one(i, c, in_voice):
        v = float(np.clip(rng.normal(0.9 if in_voice else 0.1, 0.05), 0, 1))
        return rec(i, context=c, style={"words": float(rng.normal(60 if in_voice else 80, 15)), "voice": v})

    steady = [one(i, c, True) for i, c in enumerate(ctx * 8)]
    mixed = [one(i, c, ctx.index(c) % 2 == 0) for i, c in enumerate(ctx * 8)]
    for r in steady + mixed:  # every record has voice: the feature joins the default set
        assert "voice" in r.style
    s, m = style_variance(steady, min_per_context=5), style_variance(mixed, min_per_context=5)
    assert "voice" in s.per_feature and s.value < 0.15 < m.value
    # Sampling noise alone does not count: the steady set's contexts differ by chance only.
    assert s.per_feature["voice"] < 1.0 < m.per_feature["voice"]


def test_style_variance_needs_two_groups():
    recs = [rec(i, context="only", style={"words": 10 + i}) for i in range(6)] + [
        rec(9, context="few", style={"words": 1})
    ]
    rep = style_variance(recs, min_per_context=5)
    assert rep.value is None and rep.measurement() is None
    assert "1 qualify" in rep.note and rep.groups_skipped == {"few": 1}
    gate = check_gates([GateSpec("style_variance", 0.15, "<", "relative std")], {"style_variance": rep.measurement()})[
        0
    ]
    assert gate.passed is False
    assert style_variance([], min_per_context=5).value is None


def test_style_variance_bad_input():
    bad = sv_records()
    del bad[0].style["words"]
    with pytest.raises(DataError, match="no style feature 'words'"):
        style_variance(bad, min_per_context=2)
    with pytest.raises(DataError, match="no natural-movement unit"):
        style_variance(sv_records(), 2, features=["words", "made_up"])


# ---- summary -------------------------------------------------------------------------------------


def test_summarize_and_format():
    recs = [
        *ADH,
        rec(
            5,
            {"a": 0.9, "b": 0.9},
            {"a": 0.0, "b": 0.0},
            [],
            "tech",
            consistent=False,
            rules={"asks_back": False},
            hard=["asks_back"],
        ),
    ]
    recs[0].rules = {"asks_back": True}
    s = summarize(recs, min_per_context=2)
    json.dumps(s, allow_nan=False)  # JSON-ready: no NaN, no tuples
    assert s["n"] == 5
    assert s["consistency_rate"]["value"] == 0.8 and s["consistency_rate"]["ci"] == list(wilson_ci(4, 5))
    # Adherence: r1-r4 give 5/8; r5 adheres on both -> 7/10.
    assert s["adherence"]["overall"]["value"] == pytest.approx(0.7)
    assert s["adherence"]["per_context"]["tech"]["value"] == pytest.approx(4 / 6)
    assert s["rules"]["asks_back"]["value"] == 0.5 and s["rules"]["asks_back"]["hard"] is True
    # Trait a violated (>= 0.5) only in r3: 1/5.
    assert s["traits"]["a"]["violation_rate"]["value"] == pytest.approx(0.2)
    assert s["traits"]["a"]["mean_expressed"]["value"] == pytest.approx((0.8 + 0.4 + 0.1 + 0.0 + 0.9) / 5)
    assert s["style_variance"]["value"] is not None and s["style_variance"]["unit"]
    text = format_summary(s)
    assert "consistency rate" in text and "0.800 [" in text and "asks_back" in text and "tech" in text
    # Empty set: nothing to measure, nothing crashes, nothing is NaN.
    e = summarize([])
    json.dumps(e, allow_nan=False)
    assert e["consistency_rate"]["value"] is None and e["style_variance"]["value"] is None
    assert "n/a" in format_summary(e)


def test_auroc_by_hand_and_its_bootstrap_interval():
    from personatune.scoring.aggregate import auroc, auroc_ci

    # 2 positives x 2 negatives: pairs (0.9>0.1, 0.9>0.5, 0.4>0.1, 0.4<0.5) -> 3/4; a tie counts half.
    assert auroc([0.9, 0.4, 0.1, 0.5], [1, 1, 0, 0]) == 0.75
    assert auroc([0.5, 0.5], [1, 0]) == 0.5
    assert auroc([0.3], [1]) is None and auroc_ci([0.3], [1]) is None
    # Perfect separation stays perfect under any resample of either class.
    assert auroc_ci([0.9, 0.8, 0.7, 0.2, 0.1], [1, 1, 1, 0, 0]) == (1.0, 1.0)
    # Brute-force reference: the same resamples scored by the O(n^2) definition.
    rng = np.random.default_rng(1)
    s, y = rng.normal(size=40), np.array([1] * 20 + [0] * 20)
    s[:20] += 1.0
    lo, hi = auroc_ci(list(s), list(y), n_resamples=200, seed=3)
    r = np.random.default_rng(3)
    pos, neg = s[y == 1], s[y == 0]
    ip, ineg = r.integers(0, 20, size=(200, 20)), r.integers(0, 20, size=(200, 20))
    ref = [auroc(list(pos[a]) + list(neg[b]), [1] * 20 + [0] * 20) for a, b in zip(ip, ineg)]
    assert (lo, hi) == (float(np.quantile(ref, 0.025)), float(np.quantile(ref, 0.975)))
    assert lo < auroc(list(s), list(y)) < hi
    # More data, narrower interval.
    s2, y2 = np.concatenate([s + 0.0, s]), np.concatenate([y, y])
    lo2, hi2 = auroc_ci(list(s2), list(y2), n_resamples=200, seed=3)
    assert hi2 - lo2 < hi - lo
