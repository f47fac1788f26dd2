"""Stage 4's held-out detector check: which trait-flipped answers count as negatives, and `detector_errors.md`."""

from __future__ import annotations

from pathlib import Path

import pytest

from personatune.consistency_pairs import ON_TASK_LINE
from personatune.persona import load_persona
from personatune.stages.s4_evaluation import (
    auroc_advice,
    auroc_examples,
    detector_errors,
    flip_took,
    with_flip_on_task,
)

ROOT = Path(__file__).resolve().parents[2]


def section(md: str, trait: str) -> str:
    return md.split(f"## {trait}:")[1].split("\n## ")[0]


def test_lists_the_lowest_chosen_and_highest_flipped_answers_per_trait():
    rows = [
        ("brave", 1, 0.90, "chosen high"),
        ("brave", 1, 0.10, "chosen  low\nacross lines"),
        ("brave", 1, 0.40, "chosen mid"),
        ("brave", 0, 0.80, "flip high"),
        ("brave", 0, 0.05, "flip low"),
        ("calm", 1, 0.70, "calm chosen"),
    ]
    aucs = {
        "brave": {"auroc": 0.6667, "n_pos": 3, "n_neg": 2},
        "calm": {"auroc": None, "n_pos": 1, "n_neg": 0},
    }
    md = detector_errors(rows, aucs, k=2)
    brave = section(md, "brave")
    assert brave.startswith(" AUROC 0.667 (3 chosen, 2 trait-flipped)")
    chosen, flipped = brave.split("trait-flipped, highest first:")
    # the two lowest chosen answers, lowest first, whitespace collapsed; the highest one left out (k = 2)
    assert chosen.index("0.100 chosen low across lines") < chosen.index("0.400 chosen mid")
    assert "chosen high" not in chosen
    assert flipped.index("0.800 flip high") < flipped.index("0.050 flip low")
    calm = section(md, "calm")
    assert calm.startswith(" AUROC not measured (1 chosen, 0 trait-flipped)")
    assert "0.700 calm chosen" in calm and "- (none)" in calm.split("trait-flipped, highest first:")[1]


def test_a_failed_auroc_names_the_teacher_for_silent_flips_and_a_judge_for_detector_errors():
    # A hand check found the 135M teacher's flips mostly silent on the trait (docs/benchmarks.md, "Who writes a
    # flip"), so the diagnosis names both fixes, by trait, with the figure it failed on.
    why, fixes = auroc_advice("brave", {"auroc": 0.873, "n_pos": 55, "n_neg": 67, "ci": (0.80, 0.94)})
    assert why == ["trait brave: detector AUROC 0.873 on 55+67 held-out responses, 95% CI 0.80-0.94"]
    assert len(fixes) == 1 and "nothing about brave" in fixes[0]
    assert "data.teacher" in fixes[0] and "scorer.judge.backend" in fixes[0]
    # Few responses per side: the noise comes first; no held-out contrast at all: only more prompts help.
    assert "fewer than 10" in auroc_advice("brave", {"auroc": 0.7, "n_pos": 9, "n_neg": 30})[1][0]
    why, fixes = auroc_advice("calm", {"auroc": None, "n_pos": 3, "n_neg": 0})
    assert "no held-out examples of both classes (3 expressed, 0 trait-flipped)" in why[0]
    assert fixes == ["raise data.heldout_fraction or the number of prompts so every trait has held-out contrast"]


def test_long_answers_are_cut():
    md = detector_errors([("t", 0, 0.5, "word " * 200)], {"t": {"auroc": None, "n_pos": 0, "n_neg": 1}})
    line = next(x for x in md.splitlines() if x.startswith("- 0.500 "))
    assert len(line) <= len("- 0.500 ") + 300


def _flip(text, trait, consistent=False, on_task=None):
    p = {
        "prompt": [{"role": "user", "content": "q"}],
        "chosen": [{"role": "assistant", "content": "c"}],
        "rejected": [{"role": "assistant", "content": text}],
        "rejected_kind": "trait_flipped",
        "flipped_trait": trait,
        "rejected_consistent": consistent,
    }
    if on_task is not None:
        p["rejected_on_task"] = on_task
    return p


def test_a_flip_counts_as_a_negative_only_when_it_took_and_answers_the_request():
    assert flip_took(_flip("a", "bold", on_task=0.9))
    assert flip_took(_flip("a", "bold"))  # a run written before stage 3 recorded on_task
    assert not flip_took(_flip("a", "bold", on_task=ON_TASK_LINE - 0.01))  # off task: answers nothing
    assert not flip_took(_flip("a", "bold", consistent=True, on_task=0.9))  # the flip did not take
    assert not flip_took({**_flip("a", "bold"), "rejected_kind": "baseline"})
    sft = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "c"}], "targets": ["bold"]}]
    pairs = [_flip("kept", "bold", on_task=0.8), _flip("babble", "bold", on_task=0.1), _flip("same", "bold", True, 0.9)]
    texts, traits, labels = auroc_examples(sft, pairs)
    assert (texts, traits, labels) == (["c", "kept"], ["bold", "bold"], [1, 0])


@pytest.mark.stage
def test_runs_written_before_stage_3_recorded_on_task_get_it_measured():
    spec = load_persona(ROOT / "examples" / "personas" / "captain_nova.yaml")
    ask = [{"role": "user", "content": "How do I boil an egg?"}]
    answer = {**_flip("Put the egg in boiling water for nine minutes, then cool it in cold water.", "adventurous")}
    loop = {**_flip("No, no sir, no sir, no sir, no sir, no sir, no sir, no sir, no sir.", "adventurous")}
    known = _flip("whatever", "adventurous", on_task=0.7)
    (train, held) = with_flip_on_task(spec, [{**answer, "prompt": ask}, {**loop, "prompt": ask}], [known])
    assert train[0]["rejected_on_task"] >= ON_TASK_LINE > train[1]["rejected_on_task"]
    assert held == [known]  # recorded by stage 3: kept as it is
    assert [flip_took(p) for p in train] == [True, False]
