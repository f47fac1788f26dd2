"""Scorer: METRICS.md consistent/consistency agreement, judge combination, save/load, score_jsonl."""

from __future__ import annotations

import json
import math

import pytest

from personatune.errors import DataError
from personatune.persona import Behavior, Check, PersonaSpec, Style
from personatune.scoring.batch import score_jsonl
from personatune.scoring.scorer import BELOW_HALF, Judge, Scorer, consistency_of


@pytest.fixture(scope="module")
def spec(five_traits) -> PersonaSpec:
    return PersonaSpec(
        name="test",
        summary="a test persona",
        traits=five_traits,
        style=Style(words=(3, 60)),
        behaviors=[
            Behavior(id="no_profanity", description="never swears", check=Check(never_contain=["damn"])),
            Behavior(id="greets", description="soft rule", check=Check(must_contain=["hello"]), hard=False),
        ],
    )


@pytest.fixture(scope="module")
def scorer(spec) -> Scorer:
    return Scorer(spec)


def test_consistency_of_constructed_cases():
    tr = {"a": 0.8, "b": 0.3}
    # all fine: consistency is the min of the three terms
    assert consistency_of(tr, {"a": 0.1, "b": 0.2}, 0.9, True, ["a"]) == (True, pytest.approx(0.8))
    # mean over all traits when no target: (0.8+0.3)/2 = 0.55
    assert consistency_of(tr, {"a": 0.1, "b": 0.2}, 0.9, True, []) == (True, pytest.approx(0.55))
    assert consistency_of(tr, {"a": 0.1, "b": 0.2}, 0.9, True, ["b"]) == (False, pytest.approx(0.3))
    assert consistency_of(tr, {"a": 0.7, "b": 0.2}, 0.9, True, ["a"]) == (False, pytest.approx(0.3))
    assert consistency_of(tr, {"a": 0.1, "b": 0.2}, 0.4, True, ["a"]) == (False, pytest.approx(0.4))
    assert consistency_of(tr, {"a": 0.1, "b": 0.2}, 0.9, False, ["a"]) == (False, 0.0)
    # ties at exactly 0.5: style and mean count as consistent, a violation at 0.5 does not
    assert consistency_of({"a": 0.5}, {"a": 0.0}, 0.5, True, []) == (True, 0.5)
    c, s = consistency_of({"a": 0.9}, {"a": 0.5}, 0.9, True, [])
    assert c is False and s == BELOW_HALF and s < 0.5


@pytest.mark.stage
def test_consistent_matches_consistency_line(scorer):
    texts = [
        "Hello! I love meeting new people, tell me all about yourself.",
        "Hurry up, damn it, nothing ever goes right.",
        "The train leaves at nine.",
        "I'm sure it will all work out, take your time.",
        "ok",
    ]
    recs = scorer.score(
        texts, targets=[["sociable"], [], [], ["optimistic", "patient"], []], contexts=["casual"] * 5, ids=list("abcde")
    )
    assert [r.id for r in recs] == list("abcde")
    for r in recs:
        assert r.consistent == (r.consistency >= 0.5)
        mean_t = sum(r.traits[t] for t in (r.targets or r.traits)) / len(r.targets or r.traits)
        want = (
            max(r.violations.values()) < 0.5
            and all(r.rules[h] for h in r.hard_rules)
            and r.style_match >= 0.5
            and mean_t >= 0.5
        )
        assert r.consistent == want
    assert recs[1].rules["no_profanity"] is False and recs[1].consistency == 0.0
    assert recs[0].rules["greets"] is True and recs[0].hard_rules == ["no_profanity"]
    assert recs[0].traits["sociable"] > recs[2].traits["sociable"]


@pytest.mark.stage
def test_unknown_target_and_length_mismatch(scorer):
    with pytest.raises(DataError, match="unknown trait"):
        scorer.score(["hi"], targets=[["nope"]])
    with pytest.raises(DataError, match="contexts has 2 items"):
        scorer.score(["hi"], contexts=["a", "b"])


class FixedJudge:
    def __init__(self, pe: float, pv: float) -> None:
        self.pe, self.pv = pe, pv

    def judge(self, persona, texts, prompts):
        return [{t: (self.pe, self.pv) for t in persona.trait_ids} for _ in texts]


@pytest.mark.stage
def test_judge_combination_is_weighted_average(spec, scorer):
    assert isinstance(FixedJudge(1, 0), Judge)
    base = scorer.score(["I love meeting new people."])[0]
    mixed = Scorer(spec, profile=scorer.profile, judge=FixedJudge(1.0, 0.0), judge_weight=0.25).score(
        ["I love meeting new people."]
    )[0]
    for t in spec.trait_ids:
        assert math.isclose(mixed.traits[t], 0.75 * base.traits[t] + 0.25)
        assert math.isclose(mixed.violations[t], 0.75 * base.violations[t])
    with pytest.raises(DataError, match="judge_weight"):
        Scorer(spec, profile=scorer.profile, judge_weight=1.5)


@pytest.mark.stage
def test_save_and_from_evaluator_dir(tmp_path, spec, scorer):
    scorer.save(tmp_path / "ev")
    back = Scorer.from_evaluator_dir(spec, tmp_path / "ev")
    texts = ["Hello there! Parties are the best.", "Nothing ever goes right."]
    assert [r.to_dict() for r in back.score(texts)] == [r.to_dict() for r in scorer.score(texts)]
    other = spec.model_copy(update={"name": "someone else"})
    with pytest.raises(DataError, match="different persona"):
        Scorer.from_evaluator_dir(other, tmp_path / "ev")


@pytest.mark.stage
def test_score_jsonl_skips_bad_lines(tmp_path, scorer):
    inp = tmp_path / "in.jsonl"
    lines = [
        json.dumps(
            {"id": 1, "text": "Hello! I love meeting new people.", "targets": ["sociable"], "context": "casual"}
        ),
        "{not json",
        json.dumps({"id": 3}),
        json.dumps({"id": 4, "text": "fine", "targets": "sociable"}),
        "",
        json.dumps({"id": 6, "text": "Take your time, there is no rush.", "prompt": "Can you wait?"}),
        json.dumps(["a list"]),
        json.dumps({"id": 8, "text": "x", "targets": ["unknown_trait"]}),
    ]
    inp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "sub" / "out.jsonl"
    summary = score_jsonl("unused.yaml", inp, out, scorer=scorer)
    assert summary["skipped"] == 5
    assert [s["line"] for s in summary["skipped_lines"]] == [2, 3, 4, 7, 8]
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == ["1", "6"]
    for r in rows:
        assert {"traits", "violations", "style", "style_match", "rules", "consistent", "consistency"} <= set(r)
    assert summary["n"] == 2 and not list(out.parent.glob(".*tmp"))
    # on_task is measured where the line has a prompt, and absent (null) where it has none
    assert rows[0]["on_task"] is None and 0.0 <= rows[1]["on_task"] <= 1.0


@pytest.mark.stage
def test_on_task_reads_the_last_user_turn_and_prefers_an_answer_to_babble(scorer):
    q = "How do I boil an egg?"
    answer = "Put the egg in boiling water for about nine minutes, then cool it in cold water before peeling."
    babble = "I love meeting new people! Parties with friends are the best thing in the world."
    recs = scorer.score([answer, babble, answer], prompts=[q, q, None])
    assert recs[0].on_task > recs[1].on_task and recs[2].on_task is None
    assert recs[0].on_task >= 0.5 > recs[1].on_task
    # an OpenAI-style message list: only the last user turn counts
    msgs = [
        {"role": "user", "content": "Tell me about parties."},
        {"role": "assistant", "content": "Sure."},
        {"role": "user", "content": q},
    ]
    assert scorer.score([answer], prompts=[msgs])[0].on_task == pytest.approx(recs[0].on_task, abs=1e-6)


@pytest.mark.stage
def test_a_looping_answer_is_off_task_however_relevant_its_words(scorer):
    q = "What would be on your ideal pizza?"
    answer = "Mushrooms, olives and plenty of basil on a thin crust, with a little chilli oil at the end."
    loop = "A pizza, a pizza, a pizza with cheese, a pizza, a pizza, a pizza with cheese, a pizza, a pizza."
    ok, looped = scorer.score([answer, loop], prompts=[q, q])
    assert ok.on_task >= 0.5 > looped.on_task
    assert looped.on_task == 0.0  # its trigram repetition share is far above REPETITION_ALL
    # and the training reward (consistency x on_task) cannot rise by looping
    from personatune.scoring.reward import make_reward_fn

    r_ok, r_loop = make_reward_fn(scorer)(prompts=[q, q], completions=[answer, loop])
    assert r_loop == 0.0 <= r_ok


@pytest.mark.stage
def test_own_voice_caps_style_match_and_rejects_another_personas_words(five_traits):
    """With the shipped instrument's lexical bank, a response full of a bank persona's words is not this
    persona's (style_match <= own_voice < 0.5), whatever its voice probability."""
    from personatune.scoring.instrument import Instrument
    from personatune.scoring.lexical import bank_of

    bank = bank_of(Instrument.default().weights_dir)
    assert bank is not None
    name, counts = sorted(bank.personas.items())[0]
    other_words = " ".join(w for w, _ in counts.most_common(40) if len(w) > 4)
    spec = PersonaSpec(name="test", summary="a test persona", traits=five_traits, style=Style(words=(3, 60)))
    mine, theirs = Scorer(spec).score(["I love meeting new people and learning how things work.", other_words])
    for r in (mine, theirs):
        assert r.style_match <= r.style["own_voice"] + 1e-12
    assert theirs.style["own_voice"] < 0.5 and not theirs.consistent
    assert mine.style["own_voice"] >= 0.5
