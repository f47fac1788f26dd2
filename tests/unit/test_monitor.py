"""`personatune monitor`: drift detection on conversation logs.

Most tests use a stub scorer (deterministic, instant) so the statistics can be checked on hundreds of
simulated logs; one test goes through the real Scorer with an example persona.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest

from personatune.errors import ConfigError, DataError
from personatune.monitor import (
    detect_drift,
    find_contradictions,
    make_windows,
    mann_whitney_less,
    read_conversations,
    render_html,
    run_monitor,
    score_conversations,
    two_proportion_drop,
)
from personatune.scoring.record import ResponseScore

TRAITS = ["warm", "curious", "precise"]
REPO = Path(__file__).resolve().parents[2]


def _u(text: str, salt: str = "") -> float:
    return int(hashlib.sha256((salt + text).encode()).hexdigest()[:8], 16) / 2**32


class StubScorer:
    """A response "good ..." is on-persona (consistent ~71%), "bad ..." off-persona (~29%, violates warm half the time).

    Markers "express:T" / "violate:T" in a text set traits[T] / violations[T] to 0.9.
    """

    def score(self, texts, prompts=None, contexts=None, targets=None, ids=None):
        out = []
        for i, t in enumerate(texts):
            h, h2 = _u(t), _u(t, "2")
            good = t.startswith("good")
            c = 0.3 + 0.7 * h if good else 0.7 * h
            viol = {k: 0.9 if f"violate:{k}" in t else 0.1 for k in TRAITS}
            if not good and h2 < 0.5:
                viol["warm"] = 0.9
            traits = {k: 0.9 if f"express:{k}" in t else 0.2 for k in TRAITS}
            out.append(
                ResponseScore(
                    id=ids[i] if ids else str(i),
                    traits=traits,
                    violations=viol,
                    style={"words": float(len(t.split()))},
                    style_match=0.6 + 0.4 * h2 if good else 0.2 + 0.4 * h2,
                    rules={},
                    consistent=c >= 0.5,
                    consistency=c,
                )
            )
        return out


def write_log(path: Path, kinds: list[str], extra_lines: dict[int, str] | None = None) -> Path:
    lines = [
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"question {i}"},
                    {"role": "assistant", "content": f"{k} reply {i}"},
                ],
                "timestamp": 1_700_000_000 + i,
            }
        )
        for i, k in enumerate(kinds)
    ]
    for at, text in sorted((extra_lines or {}).items()):
        lines.insert(at, text)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---- statistics against independent computations ---------------------------------------------------


def test_two_proportion_drop_matches_formula():
    z, p = two_proportion_drop(60, 100, 85, 100)
    pooled = 145 / 200
    want = (0.60 - 0.85) / math.sqrt(pooled * (1 - pooled) * (2 / 100))
    assert z == pytest.approx(want) and p == pytest.approx(NormalDist().cdf(want))
    assert two_proportion_drop(90, 100, 60, 100)[1] > 0.99  # an improvement is never a drop
    assert two_proportion_drop(10, 10, 20, 20) == (0.0, 1.0)
    assert all(math.isnan(v) for v in two_proportion_drop(0, 0, 5, 10))


def test_mann_whitney_close_to_exact_permutation_p():
    # Exact one-sided p by enumerating every split of the pooled sample (C(16, 8) = 12870).
    rng = np.random.default_rng(3)
    x = np.round(rng.normal(0.0, 1.0, 8), 1)
    y = np.round(rng.normal(0.8, 1.0, 8), 1)
    pooled = np.concatenate([x, y])
    from scipy.stats import rankdata

    avg = rankdata(pooled)  # average ranks of ties, 1-based
    observed = avg[:8].sum()
    sums = [avg[list(idx)].sum() for idx in itertools.combinations(range(16), 8)]
    exact = np.mean(np.array(sums) <= observed + 1e-9)
    _, p = mann_whitney_less(x, y)
    assert abs(p - exact) < 0.02, (p, exact)
    assert mann_whitney_less(y, x)[1] > 0.9


def test_mann_whitney_edge_cases_and_z_against_the_formula():
    assert all(math.isnan(v) for v in mann_whitney_less([], [1.0, 2.0]))
    assert mann_whitney_less([0.5] * 5, [0.5] * 7) == (0.0, 1.0)  # every value tied
    # z: normal approximation with tie and 0.5 continuity correction, computed here by hand; p = Φ(z).
    x, y = [0.1, 0.2, 0.2, 0.4, 0.5, 0.5, 0.5, 0.9], [0.2, 0.5, 0.6, 0.7, 0.7, 0.8, 0.9, 1.0, 1.0]
    from scipy.stats import rankdata

    ranks = rankdata(x + y)
    u = ranks[: len(x)].sum() - len(x) * (len(x) + 1) / 2
    n1, n2, n = len(x), len(y), len(x) + len(y)
    ties = np.unique(x + y, return_counts=True)[1]
    var = n1 * n2 / 12 * ((n + 1) - (ties**3 - ties).sum() / (n * (n - 1)))
    want = (u - n1 * n2 / 2 + 0.5) / math.sqrt(var)
    z, p = mann_whitney_less(x, y)
    assert z == pytest.approx(want, rel=1e-9) and p == pytest.approx(NormalDist().cdf(want), rel=1e-9)


# ---- reading --------------------------------------------------------------------------------------


def test_bad_lines_are_reported_by_number_and_skipped(tmp_path):
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "good hello"}]})
    bare = json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "good bare"}])
    lines = [
        good,
        "{not json",
        "",
        json.dumps({"foo": 1}),
        json.dumps({"messages": [{"role": "user", "content": "no reply"}]}),
        json.dumps({"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]}),
        json.dumps({"messages": [{"role": "assistant", "content": 3}]}),
        bare,
        '{"messages": [{"role": "user", "content": "tor',
    ]
    p = tmp_path / "log.jsonl"
    p.write_text("\n".join(lines) + "\n")
    convs, bad = read_conversations(p)
    assert [c.line for c in convs] == [1, 8]
    assert [n for n, _ in bad] == [2, 4, 5, 6, 7, 9]
    assert (
        "not JSON" in bad[0][1] and "no assistant turn" in bad[2][1] and "role" in bad[3][1] and "content" in bad[4][1]
    )


def test_all_bad_or_missing_is_data_error(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text("nope\n{}\n")
    with pytest.raises(DataError, match="no usable conversation.*line 1"):
        read_conversations(p)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="empty"):
        read_conversations(tmp_path / "empty.jsonl")
    with pytest.raises(DataError, match="cannot read"):
        read_conversations(tmp_path / "missing.jsonl")


def test_windows():
    assert make_windows(9, 4) == [(0, 4), (4, 9)]  # a last window of 1 < 4/2 joins the one before
    assert make_windows(10, 4) == [(0, 4), (4, 8), (8, 10)]  # 2 is half a window: kept
    assert make_windows(3, 10) == [(0, 3)]


# ---- drift ----------------------------------------------------------------------------------------


def test_planted_drift_is_detected_only_where_planted(tmp_path):
    ref = write_log(tmp_path / "ref.jsonl", ["good"] * 300)
    kinds = ["good"] * 300 + ["bad"] * 200
    bad_line = {150: "this line is broken"}
    log = write_log(tmp_path / "log.jsonl", kinds, bad_line)
    rep = run_monitor(StubScorer(), TRAITS, log, ref, window=100, alpha=0.01)
    assert rep.conversations == 500 and len(rep.windows) == 5 and [n for n, _ in rep.bad_lines] == [151]
    alerted = {t.window for t in rep.alerts}
    assert alerted == {3, 4}, [(t.window, t.test, t.p) for t in rep.alerts]
    tests = {t.test for t in rep.alerts}
    assert {"consistency_rate", "consistency_score", "style_match", "adherence[warm]"} <= tests
    assert "adherence[curious]" not in tests  # only warm was made to drift
    assert rep.n_tests == 5 * (3 + len(TRAITS)) and rep.threshold == pytest.approx(0.01 / rep.n_tests)
    html = render_html(rep, "Stub")
    assert "ALERT" in html and "<svg" in html
    # Self-contained: nothing is fetched (no script, stylesheet link, remote src or import).
    assert not any(s in html.lower() for s in ("<script", "<link", 'src="http', "@import", "url("))
    d = rep.to_dict()
    assert d["alert"] is True and d["n_bad_lines"] == 1
    json.dumps(d, allow_nan=False)  # strict JSON


def test_clean_log_no_alert(tmp_path):
    ref = write_log(tmp_path / "ref.jsonl", ["good"] * 300)
    log = write_log(tmp_path / "log.jsonl", ["good"] * 500)
    rep = run_monitor(StubScorer(), TRAITS, log, ref, window=100, alpha=0.01)
    assert not rep.alert and "No drift" in render_html(rep, "Stub")


def _records(rng: np.random.Generator, n: int, p_cons: float, p_viol: float) -> list[ResponseScore]:
    cons = rng.random(n) < p_cons
    score = np.where(cons, 0.5 + 0.5 * rng.random(n), 0.5 * rng.random(n))
    sm = rng.beta(5, 2, n)
    viol = rng.random((n, len(TRAITS))) < p_viol
    return [
        ResponseScore(
            id=str(i),
            traits={},
            violations={t: 0.9 if viol[i, j] else 0.1 for j, t in enumerate(TRAITS)},
            style={},
            style_match=float(sm[i]),
            rules={},
            consistent=bool(cons[i]),
            consistency=float(score[i]),
        )
        for i in range(n)
    ]


def test_false_alarm_rate_is_controlled_and_power_is_high():
    # Same distribution for reference and every window: the family-wise false-alarm rate must stay
    # at or below alpha (Bonferroni); checked on 300 simulated logs of 4 windows x 6 tests.
    rng = np.random.default_rng(0)
    alpha, reps = 0.05, 300
    false_alarms = 0
    for _ in range(reps):
        ref = _records(rng, 200, 0.85, 0.05)
        windows = [_records(rng, 100, 0.85, 0.05) for _ in range(4)]
        tests, _, m = detect_drift(ref, windows, TRAITS, alpha)
        assert m == 4 * (3 + len(TRAITS))
        false_alarms += any(t.alert for t in tests)
    rate = false_alarms / reps
    se = math.sqrt(alpha * (1 - alpha) / reps)
    assert rate <= alpha + 3 * se, rate
    # A real drop (0.85 -> 0.60 consistency) in the last window is found almost always: the z-test alone
    # has power ~0.97 here (expected z 4.8 against a Bonferroni critical value of 2.9).
    hits = 0
    for _ in range(100):
        ref = _records(rng, 200, 0.85, 0.05)
        windows = [_records(rng, 100, 0.85, 0.05) for _ in range(3)] + [_records(rng, 100, 0.60, 0.05)]
        tests, _, _ = detect_drift(ref, windows, TRAITS, alpha)
        hits += any(t.alert and t.window == 3 for t in tests)
    print(
        f"family-wise false-alarm rate {rate:.3f} over {reps} clean logs (alpha {alpha}); drop found in {hits}/100 drifted logs"
    )
    assert hits >= 90, hits


def test_without_reference_the_first_window_is_the_reference(tmp_path):
    log = write_log(tmp_path / "log.jsonl", ["good"] * 200 + ["bad"] * 100)
    rep = run_monitor(StubScorer(), TRAITS, log, None, window=100, alpha=0.01)
    assert "first window" in rep.reference_source
    assert {t.window for t in rep.tests} == {1, 2} and {t.window for t in rep.alerts} == {2}
    with pytest.raises(DataError, match="--reference"):
        run_monitor(StubScorer(), TRAITS, log, None, window=1000)


def test_bad_options(tmp_path):
    log = write_log(tmp_path / "log.jsonl", ["good"] * 5)
    with pytest.raises(ConfigError, match="--window"):
        run_monitor(StubScorer(), TRAITS, log, None, window=0)
    with pytest.raises(ConfigError, match="--alpha"):
        run_monitor(StubScorer(), TRAITS, log, None, window=2, alpha=1.5)


# ---- multi-turn ------------------------------------------------------------------------------------


def test_multi_turn_contradiction_detected(tmp_path):
    def conv(*replies):
        msgs = []
        for i, r in enumerate(replies):
            msgs += [{"role": "user", "content": f"turn {i}"}, {"role": "assistant", "content": r}]
        return json.dumps({"messages": msgs})

    lines = [
        conv("good a express:warm", "good b", "good c violate:warm"),  # contradiction on warm (turn 1 -> turn 5)
        conv("good d violate:warm", "good e express:warm"),  # violated first, expressed later: not this check
        conv("good f express:curious", "good g express:curious"),  # consistent
        conv("good h express:precise express:warm", "good i violate:precise violate:warm", "good j violate:warm"),
    ]
    p = tmp_path / "multi.jsonl"
    p.write_text("\n".join(lines) + "\n")
    convs, _ = read_conversations(p)
    found = find_contradictions(convs, score_conversations(StubScorer(), convs))
    got = sorted((c["line"], c["trait"], c["earlier_turn"], c["later_turn"]) for c in found)
    assert got == [(1, "warm", 1, 5), (4, "precise", 1, 3), (4, "warm", 1, 3)]
    assert "express:warm" in found[0]["earlier"] and "violate:warm" in found[0]["later"]
    rep = run_monitor(StubScorer(), TRAITS, p, p, window=10)
    assert rep.n_contradictions == 3 and rep.conversations_multi_turn == 4 and rep.responses == 10
    assert "line 1, trait <b>warm</b>" in render_html(rep, "Stub")


# ---- real scorer, real persona --------------------------------------------------------------------


def _example_persona() -> Path:
    found = sorted((REPO / "examples" / "personas").glob("*.yaml"))
    if not found:
        pytest.skip("no example persona in examples/personas yet")
    return found[0]


@pytest.mark.stage
def test_monitor_main_with_real_scorer_and_example_persona(tmp_path, capsys):
    pytest.importorskip("personatune.scoring.scorer")
    from personatune.monitor import monitor_main
    from personatune.persona import load_persona

    path = _example_persona()
    spec = load_persona(path)
    pos = [(t.id, u) for t in spec.traits for u in t.positive]
    neg = [(t.id, u) for t in spec.traits for u in t.negative]

    def conv(tid: str, text: str) -> dict:
        return {
            "messages": [
                {"role": "user", "content": f"Tell me about {tid.replace('_', ' ')}."},
                {"role": "assistant", "content": text},
            ]
        }

    rng = np.random.default_rng(0)
    ref = tmp_path / "ref.jsonl"
    ref.write_text("".join(json.dumps(conv(*pos[i])) + "\n" for i in rng.permutation(len(pos))))
    # Clean: on-persona utterances in another order. Drift: on-persona first, then the trait negatives.
    n = len(pos)
    clean = tmp_path / "clean.jsonl"
    clean.write_text("".join(json.dumps(conv(*pos[i])) + "\n" for i in rng.permutation(n)))
    drift = tmp_path / "drift.jsonl"
    drift.write_text(
        "".join(json.dumps(conv(*pos[i])) + "\n" for i in rng.permutation(n))
        + "".join(json.dumps(conv(*neg[i % len(neg)])) + "\n" for i in range(n))
        + "not json\n"
    )
    out = tmp_path / "clean.html"
    assert monitor_main(str(path), None, str(clean), str(ref), window=n, out_html=str(out), alpha=0.01) == 0
    assert out.is_file() and json.loads(out.with_suffix(".json").read_text())["alert"] is False
    out = tmp_path / "drift.html"
    assert monitor_main(str(path), None, str(drift), str(ref), window=n, out_html=str(out), alpha=0.01) == 1
    d = json.loads(out.with_suffix(".json").read_text())
    assert d["alert"] is True and {t["window"] for t in d["tests"] if t["alert"]} == {1} and d["n_bad_lines"] == 1
    assert "ALERT" in capsys.readouterr().out
