"""`personatune score`: score a JSONL file of responses against a persona.

Input lines: {"id": str|int, "text": str, "prompt": str?, "context": str?, "targets": [trait id]?}.
Output lines (same order, bad lines left out): id, traits, violations, style, style_match, rules,
hard_rules, consistent, consistency, targets, context (the ResponseScore JSON form).
A bad input line (not JSON, not an object, no string `text`, wrong field types, unknown target, a line
or text past personatune.limits) is reported by line number and skipped, and every skipped line is
counted. Lines are split on "\n" only (rundir.jsonl_lines). The output is written atomically, with
U+2028/U+2029/U+0085 and lone surrogates escaped (rundir.json_line); an output that is a folder or one
of the inputs is refused before anything is read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from personatune import limits
from personatune.errors import DataError
from personatune.output_paths import check_output_dir, check_output_file
from personatune.rundir import atomic_write_text, json_line, jsonl_lines


def _validate(obj: Any, known: set[str]) -> str | None:
    """None when `obj` is a valid input row, else the reason."""
    if not isinstance(obj, dict):
        return "not a JSON object"
    if not isinstance(obj.get("text"), str):
        return "missing string field 'text'"
    unusable = _text_problem(obj, ("text", "prompt", "context"))
    if unusable:
        return unusable
    if "id" in obj and not isinstance(obj["id"], (str, int)):
        return "'id' must be a string or integer"
    for k in ("prompt", "context"):
        if obj.get(k) is not None and not isinstance(obj[k], str):
            return f"'{k}' must be a string"
    tg = obj.get("targets")
    if tg is not None:
        if not isinstance(tg, list) or not all(isinstance(t, str) for t in tg):
            return "'targets' must be a list of trait ids"
        bad = [t for t in tg if t not in known]
        if bad:
            return f"unknown target trait(s) {bad}"
    return None


def _text_problem(obj: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    """Why a text field cannot be scored (limits.text_problem: too long, a lone surrogate), or None."""
    for k in keys:
        v = obj.get(k)
        why = limits.text_problem(v, k) if isinstance(v, str) else None
        if why:
            return why
    return None


def _read_lines(path: Path, what: str) -> list[str]:
    """The lines of a UTF-8 text file, split on "\n" only; DataError (one line, with the fix) when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"cannot read {what} {path}: not UTF-8 text (byte {e.start}); fix: save it as UTF-8 JSONL"
        ) from None
    except OSError as e:
        raise DataError(
            f"cannot read {what} {path}: {e.strerror or e}; fix: pass an existing UTF-8 JSONL file"
        ) from None
    return jsonl_lines(text)


def _parse_lines(lines: list[str], validate: Any) -> tuple[list[tuple[int, dict[str, Any]]], list[dict[str, Any]]]:
    """(valid (line number, object) rows, skipped [{line, reason}]) of JSONL lines; `validate(obj)` gives a reason or None."""
    rows, skipped = [], []
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if len(line) > limits.JSONL_MAX_LINE_CHARS:
            skipped.append(
                {
                    "line": no,
                    "reason": f"{len(line):,} characters, more than the line limit of {limits.JSONL_MAX_LINE_CHARS:,} "
                    "(personatune.limits.JSONL_MAX_LINE_CHARS)",
                }
            )
            continue
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:
            why = e.msg if isinstance(e, json.JSONDecodeError) else "nested too deeply"
            skipped.append({"line": no, "reason": f"not valid JSON ({why})"})
            continue
        reason = validate(obj)
        if reason:
            skipped.append({"line": no, "reason": reason})
        else:
            rows.append((no, obj))
    return rows, skipped


def score_jsonl(
    persona_path: str | Path,
    input_path: str | Path,
    output_path: str | Path,
    evaluator_dir: str | Path | None = None,
    scorer: Any = None,
    max_errors_listed: int = 20,
    judge: Any = None,
    judge_weight: float | None = None,
) -> dict[str, Any]:
    """Score every valid line of `input_path` and write the records to `output_path`.

    Args:
        persona_path: persona YAML.
        input_path: input JSONL (format in the module docstring).
        output_path: output JSONL, written atomically.
        evaluator_dir: fitted evaluator folder (stage 4 output); default: detectors from the persona alone.
        scorer: an already built Scorer (tests, or callers that score many files); overrides evaluator_dir.
        max_errors_listed: how many bad lines are listed by number in the summary.
        judge: an optional Judge (scoring/judges.py) mixed into the trait probabilities.
        judge_weight: its weight in [0, 1]; None = the evaluator's saved weight, else DEFAULT_JUDGE_WEIGHT.

    Returns:
        aggregate.summarize of the records, plus "skipped" (count), "skipped_lines"
        ([{line, reason}], up to max_errors_listed), "input" and "output".

    Raises:
        ConfigError: the output is a folder or one of the inputs.
        DataError: the input file cannot be read, or has no line to score.
        PersonaSpecError: the persona file is invalid.
    """
    from personatune.scoring.aggregate import summarize
    from personatune.scoring.factory import build_scorer

    inp, outp = Path(input_path), Path(output_path)
    check_output_file(outp, "--output", {"--input": inp, "--persona": persona_path, "--evaluator": evaluator_dir})
    lines = _read_lines(inp, "input")  # before any model loads
    spec = scorer.persona if scorer is not None else None
    if spec is None:
        from personatune.persona import load_persona

        spec = load_persona(persona_path)
    known = set(spec.trait_ids)
    rows, skipped = _parse_lines(lines, lambda obj: _validate(obj, known))
    if not rows:
        first = f" (line {skipped[0]['line']}: {skipped[0]['reason']})" if skipped else ""
        what = (
            f"none of its {len(skipped)} non-blank line(s) can be scored{first}"
            if skipped
            else "it has no line to score"
        )
        raise DataError(
            f"{inp}: {what}; fix: one JSON object per line with a string field 'text' (optional: id, prompt, context, targets)"
        )
    if scorer is None:
        scorer = build_scorer(spec, evaluator_dir=evaluator_dir or None, judge=judge, judge_weight=judge_weight)
    records = scorer.score(
        [o["text"] for _, o in rows],
        prompts=[o.get("prompt") for _, o in rows],
        contexts=[o.get("context") for _, o in rows],
        targets=[o.get("targets") or [] for _, o in rows],
        ids=[str(o.get("id", f"line{no}")) for no, o in rows],
    )
    atomic_write_text(outp, "".join(json_line(r.to_dict()) for r in records))
    summary = summarize(records)  # an empty list gives every key too (values None)
    summary.update(
        {"skipped": len(skipped), "skipped_lines": skipped[:max_errors_listed], "input": str(inp), "output": str(outp)}
    )
    return summary


def fit_jsonl(
    persona_path: str | Path, examples_path: str | Path, output_dir: str | Path, max_errors_listed: int = 20
) -> dict[str, Any]:
    """`personatune fit`: fit the persona's profile on labelled JSONL and save an evaluator folder.

    Input lines: {"text": str, "trait": trait id, "label": "expressed" | "violated" | "neutral"}
    (the text expresses / contradicts / is neutral about the trait). A bad line (not JSON, not an
    object, no string `text`, unknown trait or label) is reported by line number and skipped. The
    persona's own exemplars are always part of the fit (traits.fit). The folder (profile.safetensors,
    profile.json, scorer.json; never pickle) is what `personatune score --evaluator DIR` loads.

    Returns:
        {"n_examples", "per_trait": {trait: {label: count}}, "skipped", "skipped_lines", "output"}.

    Raises:
        DataError: the input file cannot be read, or no trait has a usable line and the file is not empty.
        PersonaSpecError: the persona file is invalid.
    """
    from personatune.persona import load_persona
    from personatune.scoring.factory import build_scorer
    from personatune.scoring.traits import LABELS

    inp = Path(examples_path)
    check_output_dir(
        output_dir,
        "--output",
        ("profile.safetensors", "profile.json", "scorer.json"),
        {"--persona": persona_path, "--examples": inp},
    )
    spec = load_persona(persona_path)
    known = set(spec.trait_ids)

    def validate(obj: Any) -> str | None:
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str) or not obj["text"].strip():
            return "needs a non-empty string field 'text'"
        unusable = _text_problem(obj, ("text",))
        if unusable:
            return unusable
        if obj.get("trait") not in known:
            return f"trait {obj.get('trait')!r} is not in the persona (available: {', '.join(sorted(known))})"
        if obj.get("label") not in LABELS:
            return f"label {obj.get('label')!r} must be one of {', '.join(LABELS)}"
        return None

    parsed, skipped = _parse_lines(_read_lines(inp, "examples"), validate)
    rows = [{"text": o["text"], "trait": o["trait"], "label": o["label"]} for _, o in parsed]
    if skipped and not rows:
        raise DataError(
            f"{inp}: none of its {len(skipped)} line(s) is a usable example (line {skipped[0]['line']}: {skipped[0]['reason']}); "
            "fix: one JSON object per line with text, trait and label"
        )
    build_scorer(spec, examples=rows).save(output_dir)
    per_trait: dict[str, dict[str, int]] = {t: {lab: 0 for lab in LABELS} for t in spec.trait_ids}
    for r in rows:
        per_trait[r["trait"]][r["label"]] += 1
    return {
        "n_examples": len(rows),
        "per_trait": per_trait,
        "skipped": len(skipped),
        "skipped_lines": skipped[:max_errors_listed],
        "output": str(output_dir),
    }
