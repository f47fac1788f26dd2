"""The TRL reward function: signature, completion formats, dataset columns."""

from __future__ import annotations

import doctest
import inspect

import pytest

import personatune.scoring.reward as reward_mod
from personatune.errors import DataError
from personatune.scoring.reward import make_reward_fn


class RecordingScorer:
    """Stands in for Scorer: records its arguments, consistency = words / 10."""

    def __init__(self) -> None:
        self.calls = []

    def score(self, texts, prompts=None, contexts=None, targets=None, ids=None):
        from types import SimpleNamespace

        self.calls.append({"texts": texts, "prompts": prompts, "contexts": contexts, "targets": targets})
        return [SimpleNamespace(consistency=len(t.split()) / 10) for t in texts]


def test_docstring_example_runs():
    res = doctest.testmod(reward_mod)
    assert res.failed == 0 and res.attempted > 0


def test_signature_and_name():
    fn = make_reward_fn(RecordingScorer())
    assert fn.__name__ == "persona_consistency"
    params = inspect.signature(fn).parameters
    assert "completions" in params and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def test_string_and_conversational_completions_with_columns():
    s = RecordingScorer()
    fn = make_reward_fn(s)
    out = fn(
        prompts=[[{"role": "user", "content": "hi?"}], "yo"],
        completions=["one two three", [{"role": "assistant", "content": "a b"}]],
        context=["casual", "technical"],
        targets=[["warm"], None],
        trainer_state=object(),
    )
    assert out == [0.3, 0.2]
    c = s.calls[-1]
    # A conversational prompt reaches the scorer as its message list (the scorer reads its last user turn).
    assert c["texts"] == ["one two three", "a b"] and c["prompts"] == [[{"role": "user", "content": "hi?"}], "yo"]
    assert c["contexts"] == ["casual", "technical"] and c["targets"] == [["warm"], []]


class TwoAxisScorer:
    """Stands in for Scorer: every completion is fully in voice (consistency 0.9); on_task is looked up per
    completion from a table (None when no prompt was given, as the real scorer does)."""

    def __init__(self, on_task: dict[str, float]) -> None:
        self.on_task = on_task
        self.prompts = None

    def score(self, texts, prompts=None, contexts=None, targets=None, ids=None):
        from types import SimpleNamespace

        self.prompts = prompts
        return [SimpleNamespace(consistency=0.9, on_task=None if prompts is None else self.on_task[t]) for t in texts]


def test_in_voice_babble_earns_less_than_an_in_voice_answer():
    answer, babble = "Aye, the engine is fixed: swap the fuse.", "Aye, the stars sing tonight, sailor!"
    fn = make_reward_fn(TwoAxisScorer({answer: 0.95, babble: 0.05}))
    prompt = [{"role": "system", "content": "ignored"}, {"role": "user", "content": "How do I fix my engine?"}]
    r_answer, r_babble = fn(prompts=[prompt, prompt], completions=[answer, babble])
    assert r_babble < r_answer
    assert r_answer == pytest.approx(0.9 * 0.95) and r_babble == pytest.approx(0.9 * 0.05)


def test_reward_is_monotone_in_on_task_and_falls_back_to_consistency_without_prompt():
    levels = [i / 10 for i in range(11)]
    texts = [f"reply {i}" for i in range(11)]
    s = TwoAxisScorer(dict(zip(texts, levels)))
    rewards = make_reward_fn(s)(prompts=["q?"] * len(texts), completions=texts)
    assert all(a < b for a, b in zip(rewards, rewards[1:])) and rewards[0] == 0.0
    assert all(0.0 <= r <= 1.0 for r in rewards)
    # Without prompts on_task is unknown: the reward is the consistency alone.
    assert make_reward_fn(s)(completions=texts[:2]) == [0.9, 0.9] and s.prompts is None


def test_combine_rule():
    assert reward_mod.combine(0.8, 0.5) == pytest.approx(0.4)
    assert reward_mod.combine(0.8, None) == 0.8
    assert reward_mod.combine(0.0, 1.0) == 0.0


def test_bad_completion_is_clear_error():
    with pytest.raises(DataError, match="neither a string"):
        make_reward_fn(RecordingScorer())(completions=[42])


@pytest.mark.stage
def test_real_scorer_reward_equals_consistency():
    from personatune.persona import PersonaSpec, Trait
    from personatune.scoring.scorer import Scorer

    traits = [
        Trait(id=f"t{i}", description=d, positive=p, negative=n)
        for i, (d, p, n) in enumerate(
            [
                (
                    "Cheerful and upbeat.",
                    ["What a lovely day!", "I'm so happy to help!", "This is wonderful news!"],
                    ["Ugh, whatever.", "I'm miserable.", "This is awful."],
                ),
                (
                    "Polite and courteous.",
                    ["Thank you kindly.", "Please, after you.", "I appreciate your patience."],
                    ["Get lost.", "I don't care about your manners.", "Shut up."],
                ),
                (
                    "Talks about the sea.",
                    ["The ocean waves are calling.", "I love sailing at dawn.", "Salt air fills my lungs."],
                    ["I hate the sea.", "Boats make me sick.", "I never go near water."],
                ),
                (
                    "Confident.",
                    ["I know exactly what to do.", "Trust me, I've got this.", "I am certain we will win."],
                    ["I'm not sure of anything.", "I doubt myself constantly.", "I can't decide."],
                ),
                (
                    "Brief.",
                    ["Short answer: yes.", "Done.", "In brief: no."],
                    [
                        "Let me ramble on and on for ages.",
                        "Here is a very long story.",
                        "I will explain everything at length.",
                    ],
                ),
            ]
        )
    ]
    spec = PersonaSpec(name="r", summary="reward test persona", traits=traits)
    sc = Scorer(spec)
    texts = ["What a lovely day for sailing! Thank you kindly.", "Get lost."]
    assert make_reward_fn(sc)(completions=texts) == [r.consistency for r in sc.score(texts)]
