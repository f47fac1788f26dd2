"""Stage 3's rejection sampling on the rejected side (data.contrast_best_of): retries, the kept response, the counts."""

from __future__ import annotations

from types import SimpleNamespace

from personatune.consistency_gate import data_gate
from personatune.persona import load_persona
from personatune.scenarios import Scenario
from personatune.stages.s3_consistency_data import sample_contrast
from tests.helpers import persona_config


class Backend:
    """Answers try a (seed = 0 + a) of each job from a script: job text -> list of answers per try."""

    def __init__(self, script: dict[str, list[str]]):
        self.script, self.calls = script, []

    def generate(self, convs, **params):
        self.calls.append((len(convs), params["seed"]))
        return [[self.script[c[-1]["content"]][params["seed"]]] for c in convs]


class Scorer:
    """Consistent when the text says "persona"; consistency from the number after "c=" when there is one; off task
    when the text says "babble"."""

    def score(self, texts, prompts=None, contexts=None, targets=None, ids=None):
        out = []
        for t in texts:
            c = float(t.split("c=")[1].split()[0]) if "c=" in t else (0.9 if "persona" in t else 0.1)
            ot = 0.1 if "babble" in t else 0.9
            out.append(SimpleNamespace(consistent=c >= 0.5, consistency=c, on_task=ot, text=t))
        return out


def scen(i: int) -> Scenario:
    return Scenario(
        id=f"s{i}", context="casual", messages=[{"role": "user", "content": f"q{i}"}], targets=[], split="train"
    )


def test_consistent_contrast_is_sampled_again_until_inconsistent_and_the_least_consistent_is_kept_otherwise(tmp_path):
    cfg = persona_config("data.contrast_best_of=3", "seed=0")
    by_id = {f"s{i}": scen(i) for i in range(3)}
    p = {"max_new_tokens": 8, "temperature": 1.0, "top_p": 1.0, "seed": 0, "n": 1}
    jobs = [([{"role": "user", "content": f"q{i}"}], dict(p)) for i in range(3)]
    meta = [("s0", "baseline", None), ("s1", "trait_flipped", "optimistic"), ("s2", "style_broken", None)]
    base = Backend({"q0": ["plain answer", "never used", "never used"]})
    teacher = Backend(
        {
            "q1": ["persona c=0.9", "flat c=0.2", "never used"],  # inconsistent on the second try: kept
            "q2": ["persona c=0.8", "persona c=0.6", "persona c=0.7"],  # never inconsistent: the least consistent kept
        }
    )
    texts, scores, tries = sample_contrast(
        jobs, meta, by_id, {"baseline": base, "teacher": teacher}, Scorer(), tmp_path / "g.jsonl", cfg
    )
    assert texts == ["plain answer", "flat c=0.2", "persona c=0.6"]
    assert [s.consistent for s in scores] == [False, False, True]
    assert base.calls == [(1, 0)]  # the baseline response was inconsistent on the first try: no retry
    assert teacher.calls == [(2, 0), (2, 1), (1, 2)]  # only the still-consistent jobs are sampled again
    # per kind: [inconsistent on the first try, jobs, responses sampled]
    assert tries == {"baseline": [1, 1, 1], "trait_flipped": [0, 1, 2], "style_broken": [0, 1, 3]}

    # A resumed run replays every try from the generation record: nothing is sampled again.
    base2, teacher2 = Backend({}), Backend({})
    again = sample_contrast(
        jobs, meta, by_id, {"baseline": base2, "teacher": teacher2}, Scorer(), tmp_path / "g.jsonl", cfg
    )
    assert again[0] == texts and base2.calls == [] and teacher2.calls == []


def test_one_try_keeps_the_first_response_and_the_gate_names_the_first_try_yield(tmp_path):
    cfg = persona_config("data.contrast_best_of=1")
    p = {"max_new_tokens": 8, "temperature": 1.0, "top_p": 1.0, "seed": 0, "n": 1}
    jobs = [([{"role": "user", "content": "q0"}], dict(p))]
    teacher = Backend({"q0": ["persona c=0.9"]})
    texts, scores, tries = sample_contrast(
        jobs,
        [("s0", "trait_flipped", "optimistic")],
        {"s0": scen(0)},
        {"baseline": None, "teacher": teacher},
        Scorer(),
        tmp_path / "g.jsonl",
        cfg,
    )
    assert texts == ["persona c=0.9"] and scores[0].consistent and tries == {"trait_flipped": [0, 1, 1]}
    spec = load_persona(cfg.persona)
    stats = {
        "scenarios": 1,
        "chosen": 1,
        "chosen_consistent": 1,
        "rejected": 1,
        "rejected_inconsistent": 0,
        "violated_pairs": {},
        "by_kind": {"trait_flipped": {"n": 1, "inconsistent": 0}},
        "contrast_tries": tries,
    }
    gate = data_gate(spec, [scen(0)], stats, cfg)
    assert any("inconsistent on the first try trait_flipped: 0/1" in d for d in gate.diagnosis)
    assert any("data.contrast_best_of" in s for s in gate.next_steps)


def test_dataset_card_shows_teacher_and_contrast_yield_even_when_the_gate_passes():
    from personatune.consistency_gate import dataset_card
    from personatune.gates import GateReport

    cfg = persona_config()
    spec = load_persona(cfg.persona)
    gate = GateReport(
        "03_consistency_data",
        [],
        diagnosis=["teacher yield: 9/10 prompts", "contrast yield: inconsistent on the first try baseline: 5/9"],
    )
    card = dataset_card(spec, [scen(0)], [], [], gate)
    assert "## Yield" in card and "- contrast yield: inconsistent on the first try baseline: 5/9" in card
    assert "- teacher yield: 9/10 prompts" in card


def test_a_trait_flip_that_answers_nothing_is_sampled_again_and_kept_only_when_no_try_answers(tmp_path):
    cfg = persona_config("data.contrast_best_of=3", "seed=0")
    by_id = {f"s{i}": scen(i) for i in range(3)}
    p = {"max_new_tokens": 8, "temperature": 1.0, "top_p": 1.0, "seed": 0, "n": 1}
    jobs = [([{"role": "user", "content": f"q{i}"}], dict(p)) for i in range(3)]
    meta = [("s0", "trait_flipped", "optimistic"), ("s1", "trait_flipped", "optimistic"), ("s2", "style_broken", None)]
    teacher = Backend(
        {
            "q0": ["babble c=0.1", "flat c=0.2", "never used"],  # off task first: sampled again, the answer kept
            "q1": ["persona c=0.9", "babble c=0.3", "babble c=0.1"],  # never on task: its first inconsistent try kept
            "q2": ["babble c=0.2", "never used", "never used"],  # not a trait flip: off task does not matter
        }
    )
    texts, scores, tries = sample_contrast(
        jobs, meta, by_id, {"baseline": None, "teacher": teacher}, Scorer(), tmp_path / "g.jsonl", cfg
    )
    assert texts == ["flat c=0.2", "babble c=0.3", "babble c=0.2"]
    assert teacher.calls == [(3, 0), (2, 1), (1, 2)]
    assert tries == {"trait_flipped": [1, 2, 5], "style_broken": [1, 1, 1]}
