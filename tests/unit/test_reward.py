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
    out = fn(prompts=[[{"role": "user", "content": "hi?"}], "yo"],
             completions=["one two three", [{"role": "assistant", "content": "a b"}]],
             context=["casual", "technical"], targets=[["warm"], None], trainer_state=object())
    assert out == [0.3, 0.2]
    c = s.calls[-1]
    assert c["texts"] == ["one two three", "a b"] and c["prompts"] == ["hi?", "yo"]
    assert c["contexts"] == ["casual", "technical"] and c["targets"] == [["warm"], []]


def test_bad_completion_is_clear_error():
    with pytest.raises(DataError, match="neither a string"):
        make_reward_fn(RecordingScorer())(completions=[42])


def test_real_scorer_reward_equals_consistency():
    from personatune.persona import PersonaSpec, Trait
    from personatune.scoring.scorer import Scorer

    traits = [Trait(id=f"t{i}", description=d, positive=p, negative=n) for i, (d, p, n) in enumerate([
        ("Cheerful and upbeat.", ["What a lovely day!", "I'm so happy to help!", "This is wonderful news!"], ["Ugh, whatever.", "I'm miserable.", "This is awful."]),
        ("Polite and courteous.", ["Thank you kindly.", "Please, after you.", "I appreciate your patience."], ["Get lost.", "I don't care about your manners.", "Shut up."]),
        ("Talks about the sea.", ["The ocean waves are calling.", "I love sailing at dawn.", "Salt air fills my lungs."], ["I hate the sea.", "Boats make me sick.", "I never go near water."]),
        ("Confident.", ["I know exactly what to do.", "Trust me, I've got this.", "I am certain we will win."], ["I'm not sure of anything.", "I doubt myself constantly.", "I can't decide."]),
        ("Brief.", ["Short answer: yes.", "Done.", "In brief: no."], ["Let me ramble on and on for ages.", "Here is a very long story.", "I will explain everything at length."]),
    ])]
    spec = PersonaSpec(name="r", summary="reward test persona", traits=traits)
    sc = Scorer(spec)
    texts = ["What a lovely day for sailing! Thank you kindly.", "Get lost."]
    assert make_reward_fn(sc)(completions=texts) == [r.consistency for r in sc.score(texts)]
