"""Stage 3's choice among consistent candidates (data.select) and the voice lines of the persona prompt."""

from __future__ import annotations

from pathlib import Path

import pytest

from personatune.persona import load_persona
from personatune.persona_prompt import persona_voice_lines, render_system_prompt
from personatune.scenarios import Scenario
from personatune.scoring.aggregate import VARIANCE_FLOORS
from personatune.scoring.record import ResponseScore
from personatune.stages.s3_consistency_data import build_pairs, typical_voice, voice_distance

REPO = Path(__file__).resolve().parents[2]
FEATS = list(VARIANCE_FLOORS)


def rec(consistent: bool, consistency: float, **style: float) -> ResponseScore:
    st = {f: 0.0 for f in FEATS}
    st.update(style)
    return ResponseScore(
        id="x",
        traits={},
        violations={},
        style=st,
        style_match=1.0,
        rules={},
        consistent=consistent,
        consistency=consistency,
    )


def scen(i: int, split: str) -> Scenario:
    return Scenario(
        id=f"s{i}", context="casual", messages=[{"role": "user", "content": f"q{i}"}], targets=[], split=split
    )


def test_typical_voice_is_the_mean_of_consistent_training_candidates_with_floored_scales():
    scenarios = [scen(0, "train"), scen(1, "train"), scen(2, "heldout")]
    scores = [
        [rec(True, 0.9, words=10, exclamation_rate=0.5), rec(False, 0.2, words=1000)],
        [rec(True, 0.7, words=30, exclamation_rate=0.0)],
        [rec(True, 0.9, words=500, exclamation_rate=1.0)],
    ]  # held out: must not move the mean
    means, scales = typical_voice(scenarios, scores)
    assert means["words"] == pytest.approx(20.0) and means["exclamation_rate"] == pytest.approx(0.25)
    assert scales["words"] == pytest.approx(20.0)  # max(|20|, floor 1)
    assert scales["question_rate"] == pytest.approx(VARIANCE_FLOORS["question_rate"])  # mean 0 -> the floor
    # distance: mean over features of |x - mean| / scale, by hand for one response
    d = voice_distance({**{f: 0.0 for f in FEATS}, "words": 30.0, "exclamation_rate": 0.0}, (means, scales))
    assert d == pytest.approx((10 / 20 + 0.25 / 0.25) / len(FEATS))  # words 10 off / 20, exclamations 0.25 off / 0.25
    assert typical_voice([scen(0, "train")], [[rec(False, 0.1)]]) is None


def test_select_typical_voice_picks_the_nearest_consistent_candidate_and_never_an_inconsistent_one():
    scenarios = [scen(i, "train") for i in range(4)]
    # the typical voice: words ~ 20 (three prompts of 20 words)
    cands = [["a0"], ["b0"], ["c0"], ["near-but-inconsistent", "far-high-score", "near-lower-score"]]
    scores = [
        [rec(True, 0.8, words=20)],
        [rec(True, 0.8, words=20)],
        [rec(True, 0.8, words=20)],
        [rec(False, 0.4, words=20), rec(True, 0.99, words=200), rec(True, 0.6, words=22)],
    ]
    spec = load_persona(REPO / "examples" / "personas" / "captain_nova.yaml")
    sft, _, stats = build_pairs(
        spec, scenarios, cands, {}, scorer=None, candidate_scores=scores, select="typical_voice"
    )
    assert sft[3]["messages"][-1]["content"] == "near-lower-score"
    sft, _, _ = build_pairs(spec, scenarios, cands, {}, scorer=None, candidate_scores=scores, select="max_consistency")
    assert sft[3]["messages"][-1]["content"] == "far-high-score"
    # a prompt with no consistent candidate yields nothing, under either rule
    scores[3] = [rec(False, 0.4, words=20)]
    for rule in ("typical_voice", "max_consistency"):
        sft, _, stats = build_pairs(spec, scenarios, cands, {}, scorer=None, candidate_scores=scores, select=rule)
        assert len(sft) == 3 and stats["chosen"] == 3


def test_select_adherent_voice_prefers_candidates_that_show_every_targeted_trait():
    def adh(expr: dict[str, float], words: float, viol: dict[str, float] | None = None) -> ResponseScore:
        r = rec(True, 0.7, words=words)
        r.traits, r.violations, r.targets = dict(expr), dict(viol or {}), ["a", "b"]
        return r

    scenarios = [scen(i, "train") for i in range(11)]  # ten prompts fix the typical voice near 20 words
    cands = [["x"]] * 10 + [["typical-but-one-trait", "far-both-traits", "far-both-but-violates", "farther-both"]]
    scores = [[adh({"a": 1, "b": 1}, 20)] for _ in range(10)] + [
        [
            adh({"a": 0.9, "b": 0.2}, 20),  # consistent (mean expression 0.55) yet b is not shown
            adh({"a": 0.6, "b": 0.6}, 40),
            adh({"a": 0.9, "b": 0.9}, 20, {"c": 0.8}),  # shows both, violates an untargeted trait
            adh({"a": 0.9, "b": 0.9}, 80),
        ]
    ]
    spec = load_persona(REPO / "examples" / "personas" / "captain_nova.yaml")
    sft, _, _ = build_pairs(spec, scenarios, cands, {}, scorer=None, candidate_scores=scores, select="adherent_voice")
    # most adherent traits first (2 of 2 targeted, nothing violated), then the nearest the typical voice
    assert sft[10]["messages"][-1]["content"] == "far-both-traits"
    sft, _, _ = build_pairs(spec, scenarios, cands, {}, scorer=None, candidate_scores=scores, select="typical_voice")
    assert sft[10]["messages"][-1]["content"] == "typical-but-one-trait"


def test_voice_block_renders_exclamations_and_questions_only_when_set():
    nova = load_persona(REPO / "examples" / "personas" / "captain_nova.yaml")  # exclamations: often, questions unset
    lines = "\n".join(persona_voice_lines(nova))
    assert "Exclaim often" in lines and "question" not in lines.lower()
    tutor = load_persona(
        REPO / "examples" / "personas" / "socratic_tutor.yaml"
    )  # questions: often, exclamations: sometimes
    lines = "\n".join(persona_voice_lines(tutor))
    assert "Ask the user a question in most replies." in lines and "Exclaim now and then" in lines
    # the style-broken prompt still flips exclamations rather than asking for them
    broken = render_system_prompt(nova, break_style=True)
    assert "Never use exclamation marks." in broken and "Exclaim often" not in broken


def test_heldout_size_hint_scales_the_split_to_the_observed_yield():
    from personatune.stages.s4_evaluation import heldout_size_hint

    # 29 held-out prompts over 6 contexts, 14 chosen (yield 48%): 5 per context need ceil(5/0.483) = 11 prompts per context,
    # 11 / (29/6) = 2.28x the current split.
    h = heldout_size_hint(29, 14, 6, 5, 0.2, 144)
    assert "11 held-out prompts per context (now 4.8)" in h and "2.3x" in h
    assert "data.heldout_fraction=0.46" in h and "data.max_prompts=328" in h
    # beyond the 0.5 cap only max_prompts is suggested; enough data or no data: no hint
    assert "heldout_fraction" not in heldout_size_hint(29, 5, 6, 5, 0.2, 144)
    assert heldout_size_hint(60, 60, 6, 5, 0.2, None) is None
    assert heldout_size_hint(0, 0, 0, 5, 0.2, None) is None


def test_scorer_setting_is_a_config_key_that_invalidates_stages_3_and_4():
    from personatune.config import load_config
    from personatune.pipeline import STAGES

    cfg = load_config(REPO / "examples" / "quickstart.yaml", ["scorer.judge.weight=0.25"])
    assert cfg.scorer.judge.weight == 0.25
    assert load_config(REPO / "examples" / "quickstart.yaml", []).scorer.judge.backend == "none"
    keys = {s.id: s.config_keys for s in STAGES}
    assert "scorer" in keys["03_consistency_data"] and "scorer" in keys["04_evaluation"]
