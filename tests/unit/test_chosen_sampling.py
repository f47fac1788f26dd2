"""Stage 3's best-of on the chosen side with data.best_of_first: the rest of best_of only where no candidate is
eligible yet, resumable, and all at once without it."""

from __future__ import annotations

from types import SimpleNamespace

from personatune.persona import load_persona
from personatune.scenarios import Scenario
from personatune.stages.s3_consistency_data import sample_chosen
from tests.helpers import PERSONA, persona_config


class Backend:
    """Draws of prompt q under seed s: script[q][s * n + j] for the j-th of n candidates."""

    def __init__(self, script: dict[str, list[str]]):
        self.script, self.calls = script, []

    def generate(self, convs, **params):
        n, s = params["n"], params["seed"]
        self.calls.append((len(convs), n, s))
        return [[self.script[c[-1]["content"]][s * n + j] for j in range(n)] for c in convs]


class Scorer:
    """Eligible when the text says "persona" (consistent and on task)."""

    def score(self, texts, prompts=None, contexts=None, targets=None, ids=None):
        return [SimpleNamespace(consistent="persona" in t, consistency=0.9, on_task=0.9, text=t) for t in texts]


def scen(i: int) -> Scenario:
    return Scenario(id=f"s{i}", context="casual", messages=[{"role": "user", "content": f"q{i}"}], split="train")


SCRIPT = {
    "q0": ["plain", "persona a", "never", "never"],  # eligible among the first two: no more
    "q1": ["plain", "plain", "plain", "persona b"],  # none among the first two: two more, the second eligible
    "q2": ["plain"] * 4,  # none at all: four sampled, the prompt is dropped later
}


def test_more_candidates_only_where_none_is_eligible_and_a_resumed_run_samples_nothing(tmp_path):
    spec = load_persona(PERSONA)
    cfg = persona_config("data.best_of=4", "data.best_of_first=2", "data.teacher.batch_size=8", "seed=0")
    teacher = Backend(SCRIPT)
    outs, scores = sample_chosen(teacher, spec, [scen(i) for i in range(3)], Scorer(), tmp_path / "g.jsonl", cfg)
    assert outs == [["plain", "persona a"], ["plain", "plain", "plain", "persona b"], ["plain"] * 4]
    assert [[s.text for s in cs] for cs in scores] == outs
    assert teacher.calls == [(3, 2, 0), (2, 2, 1)]  # the second round: q1 and q2 only, the next seed
    again = Backend({})
    assert sample_chosen(again, spec, [scen(i) for i in range(3)], Scorer(), tmp_path / "g.jsonl", cfg)[0] == outs
    assert again.calls == []


def test_without_best_of_first_every_candidate_is_sampled_at_once(tmp_path):
    spec = load_persona(PERSONA)
    cfg = persona_config("data.best_of=4", "data.teacher.batch_size=8", "seed=0")
    teacher = Backend(SCRIPT)
    outs, _ = sample_chosen(teacher, spec, [scen(i) for i in range(3)], Scorer(), tmp_path / "g.jsonl", cfg)
    assert outs == [SCRIPT[f"q{i}"] for i in range(3)] and teacher.calls == [(2, 4, 0), (1, 4, 0)]


def test_generation_calls_end_where_the_system_prompt_changes(tmp_path):
    from personatune.generation.resumable import generate_resumable

    class Echo:
        def __init__(self):
            self.calls = []

        def generate(self, convs, **params):
            self.calls.append([c[-1]["content"] for c in convs])
            return [[c[-1]["content"]] for c in convs]

    p = {"max_new_tokens": 4, "temperature": 0.0, "top_p": 1.0, "n": 1, "seed": 0}

    def job(system: str | None, q: str):
        turns = [{"role": "system", "content": system}] if system else []
        return turns + [{"role": "user", "content": q}], dict(p)

    jobs = [job("A", "a1"), job("B", "b1"), job("A", "a2"), job("A", "a3"), job("B", "b2"), job(None, "u1")]
    jobs += [job(None, "u2")]
    echo = Echo()
    out = generate_resumable(echo, jobs, tmp_path / "g.jsonl", chunk=2, echo=lambda m: None)
    assert out == [[c[-1]["content"]] for c, _ in jobs]
    # Sorted by context, at most 2 per call, and never two system prompts in one call (no system prompt is one group).
    assert echo.calls == [["u1", "u2"], ["a1", "a2"], ["a3"], ["b1", "b2"]]
    echo = Echo()
    generate_resumable(echo, jobs, tmp_path / "h.jsonl", chunk=2, echo=lambda m: None, group_contexts=False)
    assert echo.calls == [["a1", "b1"], ["a2", "a3"], ["b2", "u1"], ["u2"]]  # stage order, calls of 2
