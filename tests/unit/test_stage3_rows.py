"""Stage-3 files edited by hand: a row that lost a field or got the wrong type is named by file, line and field when
stages 4-7 read it (personatune.stage3_rows), instead of a KeyError deep inside a stage."""

from __future__ import annotations

import json

import pytest

from personatune.errors import DataError
from personatune.stage3_rows import STAGE3_FIX, read_stage3, row_problem

U = [{"role": "user", "content": "Why is the sky blue?"}]
A = [{"role": "assistant", "content": "Aye, sunlight scatters, matey!"}]
PAIR = {
    "prompt": U,
    "chosen": A,
    "rejected": [{"role": "assistant", "content": "Blue light scatters most."}],
    "context": "technical",
    "targets": ["optimistic"],
    "rejected_kind": "trait_flipped",
    "flipped_trait": "optimistic",
    "scenario_id": "technical-1",
}
SFT = {"messages": U + A, "context": "technical", "targets": ["optimistic"], "scenario_id": "technical-1"}
PROMPT = {"id": "technical-1", "context": "technical", "messages": U, "targets": ["optimistic"], "split": "heldout"}


def test_rows_as_stage_3_writes_them_pass():
    assert row_problem("pairs", ["optimistic"])(PAIR) is None
    assert row_problem("pairs")({**PAIR, "flipped_trait": None, "rejected_kind": "baseline"}) is None
    assert row_problem("sft", ["optimistic"])(SFT) is None
    assert row_problem("prompts", ["optimistic"])(PROMPT) is None


@pytest.mark.parametrize(
    "kind,row,expected",
    [
        ("pairs", {k: v for k, v in PAIR.items() if k != "rejected"}, "field 'rejected' is missing (a list of {role"),
        ("pairs", {**PAIR, "prompt": "Why is the sky blue?"}, "field 'prompt' must be a list"),
        ("pairs", {**PAIR, "chosen": U}, "field 'chosen' must end with an assistant turn, ends with 'user'"),
        ("pairs", {**PAIR, "rejected": [{"role": "assistant"}]}, "field 'rejected' turn 1 must be {role"),
        ("pairs", {**PAIR, "targets": "optimistic"}, "field 'targets' must be a list of trait ids"),
        ("pairs", {**PAIR, "flipped_trait": 3}, "field 'flipped_trait' must be str, got 3"),
        ("pairs", {**PAIR, "flipped_trait": "grumpy"}, "trait 'grumpy' is not in the persona (optimistic)"),
        ("sft", {k: v for k, v in SFT.items() if k != "scenario_id"}, "field 'scenario_id' is missing"),
        ("sft", {**SFT, "messages": A}, "field 'messages' must be a list of at least 2"),
        ("sft", {**SFT, "targets": ["optimistic", "grumpy"]}, "trait 'grumpy' is not in the persona"),
        ("prompts", {**PROMPT, "messages": U + A}, "field 'messages' must end with a user turn"),
        ("prompts", {k: v for k, v in PROMPT.items() if k != "id"}, "field 'id' is missing"),
        ("prompts", [1, 2], "a row must be a JSON object, got [1, 2]"),
    ],
)
def test_each_broken_row_is_named(kind, row, expected):
    problem = row_problem(kind, ["optimistic"], need=("context", "targets", "scenario_id"))(row)
    assert problem is not None and expected in problem


def test_sft_fields_are_required_only_where_the_stage_reads_them():
    plain = {"messages": U + A}  # what stage 5 reads of a chosen answer
    assert row_problem("sft")(plain) is None
    assert row_problem("sft", need=("context",))(plain) == "field 'context' is missing"
    assert "field 'targets' must be a list" in row_problem("sft")({**plain, "targets": 3})  # typed when present


def test_read_stage3_names_file_line_field_and_fix(tmp_path):
    path = tmp_path / "pairs.jsonl"
    bad = {k: v for k, v in PAIR.items() if k != "chosen"}
    path.write_text(json.dumps(PAIR) + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError) as e:
        read_stage3(path, "pairs", STAGE3_FIX, ["optimistic"])
    msg = str(e.value)
    assert msg.startswith(f"{path} line 3: field 'chosen' is missing")
    assert msg.endswith("fix: correct or delete that line, or re-run stage 3 (personatune run CONFIG --from 3)")
    path.write_text(json.dumps(PAIR) + "\n")
    assert read_stage3(path, "pairs", STAGE3_FIX, ["optimistic"]) == [PAIR]
