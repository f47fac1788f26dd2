"""The row formats stage 3 writes and stages 4-7 read, checked when they are read.

Stage 3's files are plain JSONL that users open, filter and edit by hand (drop a bad pair, fix a chosen answer). A
row that lost a field or got the wrong type would otherwise surface deep inside stage 4-7 as a KeyError or TypeError,
far from its cause. `read_stage3` reads a file and names the first bad row: file, line, field, what it holds and what
it must hold, and the fix — one line, before any model work.

Formats (consistency_pairs.build_pairs and scenarios.Scenario write them):
- `sft`: messages (the prompt turns + one assistant answer); context, targets, scenario_id where the stage uses them
  (stage 4);
- `pairs`: prompt (turns ending with the user's), chosen and rejected (assistant turns); context, targets,
  rejected_kind, flipped_trait when present;
- `prompts` (heldout/prompts.jsonl, scenarios.jsonl): id, context, messages (ending with a user turn), targets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from personatune.rundir import read_jsonl

ROLES = ("system", "user", "assistant")
STAGE3_FIX = "re-run stage 3 (personatune run CONFIG --from 3)"
SFT_NEEDS = ("context", "targets", "scenario_id")  # the sft fields stage 4 reads besides messages


def _messages(row: dict[str, Any], name: str, last: str | None, at_least: int = 1) -> str | None:
    """Why row[name] is not a list of at least `at_least` {role, content} turns ending with role `last`, or None."""
    if name not in row:
        return f"field {name!r} is missing (a list of {{role, content}} turns)"
    v = row[name]
    if not isinstance(v, list) or len(v) < at_least:
        return f"field {name!r} must be a list of at least {at_least} {{role, content}} turn(s), got {_show(v)}"
    for j, m in enumerate(v):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            return f"field {name!r} turn {j + 1} must be {{role: system|user|assistant, content: text}}, got {_show(m)}"
    if last is not None and v[-1]["role"] != last:
        return f"field {name!r} must end with {'an' if last == 'assistant' else 'a'} {last} turn, ends with {v[-1]['role']!r}"
    return None


def _show(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _field(row: dict[str, Any], name: str, kind: type, required: bool) -> str | None:
    if name not in row:
        return f"field {name!r} is missing" if required else None
    v = row[name]
    if kind is list:
        if not isinstance(v, list) or not all(isinstance(t, str) for t in v):
            return f"field {name!r} must be a list of trait ids, got {_show(v)}"
    elif not isinstance(v, kind):
        return f"field {name!r} must be {kind.__name__}, got {_show(v)}"
    return None


def _traits(row: dict[str, Any], traits: set[str] | None) -> str | None:
    if traits is None:
        return None
    for t in [*row.get("targets", []), *([row["flipped_trait"]] if row.get("flipped_trait") else [])]:
        if t not in traits:
            return f"trait {t!r} is not in the persona ({', '.join(sorted(traits))})"
    return None


def row_problem(
    kind: str, traits: Iterable[str] | None = None, need: tuple[str, ...] = ()
) -> Callable[[dict[str, Any]], str | None]:
    """The check of one row of a stage-3 file of `kind` (sft | pairs | prompts): a function row -> problem or None.
    With `traits`, targets and flipped_trait must be traits of the persona. `need`: sft fields the reading stage uses
    besides messages (stage 4: context, targets, scenario_id; stage 5 reads only messages)."""
    known = None if traits is None else set(traits)

    def check(row: dict[str, Any]) -> str | None:
        if not isinstance(row, dict):
            return f"a row must be a JSON object, got {_show(row)}"
        if kind == "sft":
            probs = [
                _messages(row, "messages", "assistant", 2),
                *(_field(row, f, str, f in need) for f in ("context", "scenario_id")),
                _field(row, "targets", list, "targets" in need),
            ]
        elif kind == "pairs":
            probs = [
                _messages(row, "prompt", "user"),
                _messages(row, "chosen", "assistant"),
                _messages(row, "rejected", "assistant"),
                *(_field(row, f, str, False) for f in ("context", "rejected_kind", "scenario_id")),
                _field(row, "targets", list, False),
                None if row.get("flipped_trait") is None else _field(row, "flipped_trait", str, True),
            ]
        elif kind == "prompts":
            probs = [
                *(_field(row, f, str, True) for f in ("id", "context")),
                _messages(row, "messages", "user"),
                _field(row, "targets", list, False),
            ]
        else:
            raise ValueError(f"unknown stage-3 row kind {kind!r}")
        return next((p for p in probs if p), None) or _traits(row, known)

    return check


def read_stage3(
    path: str | Path, kind: str, fix: str, traits: Iterable[str] | None = None, need: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """The rows of a stage-3 file, each checked (`row_problem`; `need`: the sft fields the caller uses).

    Raises:
        DataError: the file is missing, a line is not JSON, or a row is not of the format (file, line, field, fix).
    """
    return read_jsonl(path, fix=fix, check=row_problem(kind, traits, need))
