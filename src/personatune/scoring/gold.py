"""Gold sets: hand-written, labelled persona answers that the instrument is calibrated and checked on.

A gold set is a persona file plus a JSONL file with one prompt per line and four answers
(benchmarks/gold/README.md): `gold` (excellent, in persona), `generic` (plain assistant), `flipped`
(in voice, contradicts one named trait) and `babble` (in voice, ignores the request). METRICS.md asks
that the scorer's `consistent` separates gold from generic and flipped, that `on_task` separates gold
from babble, and that every response-level gate passes on the gold answers and fails on the generic ones.
`gold_report` measures exactly that; `personatune score --gold` and benchmarks/bench_gold.py print it.

>>> items, problems = parse_gold_lines(['{"id": "a"}'], ["t"])
>>> problems[0]["line"], items
(1, [])
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from personatune.errors import DataError
from personatune.scoring.record import ResponseScore

KINDS: tuple[str, ...] = ("gold", "generic", "flipped", "babble")


@dataclass(frozen=True)
class ResponseGates:
    """The response-level gate thresholds of METRICS.md that a gold set is checked against."""

    consistency_rate: float = 0.85
    on_task_rate: float = 0.85
    adherence: float = 0.90
    style_variance: float = 0.15


GOLD_CONTEXTS: tuple[str, ...] = ("casual", "technical", "emotional", "adversarial", "multi_turn", "off_topic")


@dataclass(frozen=True)
class GoldItem:
    """One prompt of a gold set and its four labelled answers.

    Attributes:
        id: unique id within the file.
        context: context label (one of GOLD_CONTEXTS or a user label).
        messages: the conversation, ending with the user turn that is answered.
        targets: trait ids the prompt targets (the gold answer expresses them).
        answers: kind -> answer text, for every kind in KINDS.
        flipped_trait: the trait the `flipped` answer contradicts.
        line: the line number in the file (1-based).
    """

    id: str
    context: str
    messages: tuple[tuple[str, str], ...]
    targets: tuple[str, ...]
    answers: dict[str, str]
    flipped_trait: str
    line: int

    @property
    def prompt(self) -> str:
        """The last user turn."""
        return self.messages[-1][1]


def _item_problem(obj: Any, trait_ids: Sequence[str]) -> str | None:
    """None when `obj` is a valid gold line, else the reason (names the field and the fix)."""
    if not isinstance(obj, dict):
        return "not a JSON object"
    for k in ("id", "context"):
        if not isinstance(obj.get(k), str) or not obj[k].strip():
            return f"'{k}' must be a non-empty string"
    msgs = obj.get("messages")
    if (
        not isinstance(msgs, list)
        or not msgs
        or not all(
            isinstance(m, dict)
            and m.get("role") in ("system", "user", "assistant")
            and isinstance(m.get("content"), str)
            for m in msgs
        )
    ):
        return "'messages' must be a non-empty list of {role: system|user|assistant, content: str}"
    if msgs[-1]["role"] != "user":
        return "'messages' must end with a user turn"
    tg = obj.get("targets")
    if not isinstance(tg, list) or not tg or not all(isinstance(t, str) for t in tg):
        return "'targets' must be a non-empty list of trait ids"
    bad = [t for t in tg if t not in trait_ids]
    if bad:
        return f"'targets' names unknown trait(s) {bad}; available: {', '.join(trait_ids)}"
    for k in ("gold", "generic", "babble"):
        if not isinstance(obj.get(k), str) or not obj[k].strip():
            return f"'{k}' must be a non-empty string"
    fl = obj.get("flipped")
    if not isinstance(fl, dict) or not isinstance(fl.get("text"), str) or not fl["text"].strip():
        return '\'flipped\' must be {"trait": trait id, "text": non-empty string}'
    if fl.get("trait") not in trait_ids:
        return f"'flipped.trait' {fl.get('trait')!r} is not a trait of the persona; available: {', '.join(trait_ids)}"
    return None


def parse_gold_lines(lines: Sequence[str], trait_ids: Sequence[str]) -> tuple[list[GoldItem], list[dict[str, Any]]]:
    """Parse gold JSONL lines; bad lines are reported and skipped.

    Args:
        lines: the file's lines (split on "\\n" only).
        trait_ids: the persona's trait ids.

    Returns:
        (items, problems): the valid items, and one {"line", "reason"} per skipped line (a repeated id too).
    """
    items: list[GoldItem] = []
    problems: list[dict[str, Any]] = []
    seen: set[str] = set()
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append({"line": no, "reason": f"not valid JSON ({e.msg})"})
            continue
        reason = _item_problem(obj, trait_ids)
        if reason is None and obj["id"] in seen:
            reason = f"id {obj['id']!r} repeats an earlier line"
        if reason:
            problems.append({"line": no, "reason": reason})
            continue
        seen.add(obj["id"])
        items.append(
            GoldItem(
                id=obj["id"],
                context=obj["context"],
                messages=tuple((m["role"], m["content"]) for m in obj["messages"]),
                targets=tuple(obj["targets"]),
                answers={
                    "gold": obj["gold"],
                    "generic": obj["generic"],
                    "flipped": obj["flipped"]["text"],
                    "babble": obj["babble"],
                },
                flipped_trait=obj["flipped"]["trait"],
                line=no,
            )
        )
    return items, problems


def load_gold(path: str | Path, trait_ids: Sequence[str]) -> tuple[list[GoldItem], list[dict[str, Any]]]:
    """Read a gold JSONL file (see `parse_gold_lines`).

    Raises:
        DataError: the file cannot be read as UTF-8 text, or holds no valid line.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(
            f"cannot read gold file {p}: {e}; fix: pass a UTF-8 JSONL file (format: benchmarks/gold/README.md)"
        ) from None
    items, problems = parse_gold_lines(text.split("\n"), trait_ids)
    if not items:
        first = f" (line {problems[0]['line']}: {problems[0]['reason']})" if problems else ""
        raise DataError(
            f"gold file {p} has no valid line{first}; fix: one JSON object per line, format in benchmarks/gold/README.md"
        )
    return items, problems


@dataclass
class GoldScores:
    """The scorer's records for every answer of a gold set, by kind (same item order in each list)."""

    items: list[GoldItem]
    records: dict[str, list[ResponseScore]]


def score_gold(scorer: Any, items: Sequence[GoldItem]) -> GoldScores:
    """Score the four answers of every item with `scorer` (one `Scorer.score` call for all of them).

    Args:
        scorer: a `personatune.scoring.scorer.Scorer`.
        items: gold items.

    Returns:
        GoldScores with one record per (kind, item).
    """
    texts, prompts, contexts, targets, ids = [], [], [], [], []
    for kind in KINDS:
        for it in items:
            texts.append(it.answers[kind])
            prompts.append([{"role": r, "content": c} for r, c in it.messages])
            contexts.append(it.context)
            targets.append(list(it.targets))
            ids.append(f"{it.id}/{kind}")
    recs = scorer.score(texts, prompts=prompts, contexts=contexts, targets=targets, ids=ids)
    n = len(items)
    return GoldScores(items=list(items), records={k: recs[i * n : (i + 1) * n] for i, k in enumerate(KINDS)})


def _rate(flags: Sequence[bool]) -> float:
    return float(np.mean(flags)) if len(flags) else math.nan


def _set_gates(records: Sequence[ResponseScore], gates: ResponseGates, min_per_context: int) -> dict[str, Any]:
    """Every response-level gate on one set of answers: {metric: {value, threshold, direction, passed}}."""
    from personatune.scoring.aggregate import on_task_rate, style_variance, trait_adherence

    adh = trait_adherence(records, n_resamples=200)
    sv = style_variance(records, min_per_context=min_per_context, n_resamples=0)
    per_ctx = {c: m.value for c, m in adh.per_context.items()}
    worst_ctx = min(per_ctx, key=per_ctx.get) if per_ctx else None
    ot = on_task_rate(records)
    rows = {
        "consistency_rate": (_rate([r.consistent for r in records]), gates.consistency_rate, ">="),
        "on_task_rate": (None if ot is None else ot.value, gates.on_task_rate, ">="),
        "adherence": (adh.overall.value, gates.adherence, ">="),
        "adherence_min_context": (None if worst_ctx is None else per_ctx[worst_ctx], gates.adherence, ">="),
        "style_variance": (sv.value, gates.style_variance, "<"),
    }
    out: dict[str, Any] = {}
    for k, (v, thr, d) in rows.items():
        ok = v is not None and not (isinstance(v, float) and math.isnan(v)) and (v >= thr if d == ">=" else v < thr)
        out[k] = {"value": v, "threshold": thr, "direction": d, "passed": bool(ok)}
    out["adherence_min_context"]["context"] = worst_ctx
    return out


def gold_report(scores: GoldScores, gates: ResponseGates | None = None, min_per_context: int = 5) -> dict[str, Any]:
    """Everything METRICS.md asks of the instrument, measured on one scored gold set.

    Args:
        scores: output of `score_gold`.
        gates: the thresholds (default: `ResponseGates()`, the METRICS.md values).
        min_per_context: group minimum for style variance.

    Returns:
        A JSON-ready dict: n, consistent_rate per kind, balanced_accuracy, auroc, flipped_caught,
        flipped_caught_argmax, false_violations (per trait, on gold answers), trait_auroc (per trait: traits[t] of
        gold answers targeting t vs answers flipped on t, the figure stage 4 gates on), on_task {rate per kind,
        auroc, balanced_accuracy}, gates {gold, generic} (every response-level gate) and
        style_variance_mixed (gold answers in some contexts, generic in the others).
    """
    from personatune.scoring.aggregate import auroc, style_variance

    gates = gates or ResponseGates()
    rec = scores.records
    items = scores.items
    cons = {k: [r.consistent for r in rec[k]] for k in KINDS}
    neg = cons["generic"] + cons["flipped"]
    tpr, tnr = _rate(cons["gold"]), 1.0 - _rate(neg)
    au = auroc(
        [r.consistency for r in rec["gold"]] + [r.consistency for r in rec["generic"] + rec["flipped"]],
        [1] * len(rec["gold"]) + [0] * len(neg),
    )
    caught = [r.violations[it.flipped_trait] >= 0.5 for r, it in zip(rec["flipped"], items)]
    argmax = [
        max(r.violations, key=r.violations.get) == it.flipped_trait and r.violations[it.flipped_trait] >= 0.5
        for r, it in zip(rec["flipped"], items)
    ]
    per_trait_caught: dict[str, list[bool]] = {}
    for c, it in zip(caught, items):
        per_trait_caught.setdefault(it.flipped_trait, []).append(c)
    trait_ids = list(rec["gold"][0].traits) if rec["gold"] else []
    false_viol = {t: int(sum(r.violations[t] >= 0.5 for r in rec["gold"])) for t in trait_ids}
    # Stage 4's figure: per trait, traits[t] of the gold answers targeting t against the answers flipped on t.
    trait_auroc = {}
    for t in trait_ids:
        pos = [r.traits[t] for r in rec["gold"] if t in r.targets]
        neg = [r.traits[t] for r, it in zip(rec["flipped"], items) if it.flipped_trait == t]
        trait_auroc[t] = auroc(pos + neg, [1] * len(pos) + [0] * len(neg)) if pos and neg else None
    missed_targets = {t: int(sum(r.traits[t] < 0.5 for r in rec["gold"] if t in r.targets)) for t in trait_ids}
    ot = {k: [r.on_task for r in rec[k]] for k in KINDS}
    on_task: dict[str, Any] = {"measured": all(v is not None for vs in ot.values() for v in vs)}
    if on_task["measured"]:
        on_task["rate"] = {k: _rate([v >= 0.5 for v in ot[k]]) for k in KINDS}
        on_task["auroc"] = auroc(ot["gold"] + ot["babble"], [1] * len(ot["gold"]) + [0] * len(ot["babble"]))
        on_task["balanced_accuracy"] = (on_task["rate"]["gold"] + 1.0 - on_task["rate"]["babble"]) / 2.0
    # A set that mixes voices by context: gold answers in half the contexts, generic ones in the others.
    # Every balanced split is tried; the style-variance gate must fail on each of them.
    contexts = sorted({it.context for it in items})
    mixed = []
    half = len(contexts) // 2
    for chosen in itertools.combinations(contexts, half) if half else []:
        mix = [r_g if it.context in chosen else r_p for r_g, r_p, it in zip(rec["gold"], rec["generic"], items)]
        sv = style_variance(mix, min_per_context=min_per_context, n_resamples=0).value
        if sv is not None:
            mixed.append(sv)
    return {
        "n": len(items),
        "consistent_rate": {k: _rate(cons[k]) for k in KINDS},
        "balanced_accuracy": (tpr + tnr) / 2.0,
        "auroc": au,
        "flipped_caught": _rate(caught),
        "flipped_caught_argmax": _rate(argmax),
        "flipped_caught_per_trait": {t: _rate(v) for t, v in sorted(per_trait_caught.items())},
        "flipped_judged_inconsistent": 1.0 - _rate(cons["flipped"]),
        "false_violations": false_viol,
        "missed_targets": missed_targets,
        "trait_auroc": trait_auroc,
        "on_task": on_task,
        "gates": {
            "gold": _set_gates(rec["gold"], gates, min_per_context),
            "generic": _set_gates(rec["generic"], gates, min_per_context),
        },
        "style_variance_mixed": {
            "splits": len(mixed),
            "failing": int(sum(v >= gates.style_variance for v in mixed)),
            "min": min(mixed) if mixed else None,
            "mean": float(np.mean(mixed)) if mixed else None,
        },
    }


# What the instrument must reach on a gold set (issue 14 / METRICS.md, "The instrument must be valid").
TARGETS = {"balanced_accuracy": 0.90, "auroc": 0.95, "flipped_caught": 0.85, "on_task_balanced_accuracy": 0.90}
# Gates a plain assistant's answers must fail: the persona gates (a plain voice is on task and steady, so
# the on-task and style-variance gates rightly pass on it; the mixed set checks style variance instead).
PERSONA_GATES = ("consistency_rate", "adherence")


def unmet_targets(rep: dict[str, Any]) -> list[str]:
    """The instrument targets a `gold_report` misses, one readable line each (empty: all met)."""
    out = []
    got = {
        "balanced_accuracy": rep["balanced_accuracy"],
        "auroc": rep["auroc"],
        "flipped_caught": rep["flipped_caught"],
        "on_task_balanced_accuracy": rep["on_task"].get("balanced_accuracy"),
    }
    for k, thr in TARGETS.items():
        v = got[k]
        if v is None or (isinstance(v, float) and math.isnan(v)) or v < thr:
            out.append(f"{k} {_f(v)} < {thr:g}")
    for k, g in rep["gates"]["gold"].items():
        if not g["passed"]:
            out.append(f"gold answers fail the {k} gate ({_f(g['value'])} vs {g['direction']} {g['threshold']:g})")
    for k in PERSONA_GATES:
        g = rep["gates"]["generic"][k]
        if g["passed"]:
            out.append(f"generic answers pass the {k} gate ({_f(g['value'])} {g['direction']} {g['threshold']:g})")
    m = rep["style_variance_mixed"]
    if m["splits"] and m["failing"] < m["splits"]:
        out.append(
            f"style variance: {m['splits'] - m['failing']}/{m['splits']} gold/generic mixes by context pass the gate"
        )
    return out


def score_gold_file(
    persona_path: str | Path,
    gold_path: str | Path,
    output_path: str | Path | None = None,
    evaluator_dir: str | Path | None = None,
    judge: Any = None,
    judge_weight: float | None = None,
) -> dict[str, Any]:
    """`personatune score --gold`: score a gold set and return (and optionally write) its `gold_report`.

    Args:
        persona_path: the persona file the gold set is written for.
        gold_path: the gold JSONL file.
        output_path: where to write the report as JSON (None: not written).
        evaluator_dir: a fitted evaluator folder (default: the persona-only profile, as stage 3 uses).
        judge: an optional LLM judge; judge_weight: its weight.

    Returns:
        The report, plus "skipped_lines" ([{line, reason}]) and "persona".

    Raises:
        ConfigError: the output is a folder or one of the inputs.
        DataError: the gold file cannot be read or has no valid line.
        PersonaSpecError: the persona file is invalid.
    """
    from personatune.output_paths import check_output_file
    from personatune.persona import load_persona
    from personatune.rundir import atomic_write_text
    from personatune.scoring.aggregate import _jsonable
    from personatune.scoring.factory import build_scorer

    if output_path is not None:
        check_output_file(
            Path(output_path),
            "--output",
            {"--gold": gold_path, "--persona": persona_path, "--evaluator": evaluator_dir},
        )
    spec = load_persona(persona_path)
    items, problems = load_gold(gold_path, spec.trait_ids)
    scorer = build_scorer(spec, evaluator_dir=evaluator_dir, judge=judge, judge_weight=judge_weight)
    rep = gold_report(score_gold(scorer, items))
    rep["unmet_targets"] = unmet_targets(rep)
    rep.update({"skipped_lines": problems, "persona": str(persona_path), "gold": str(gold_path)})
    rep = _jsonable(rep)
    if output_path is not None:
        atomic_write_text(Path(output_path), json.dumps(rep, indent=2) + "\n")
    return rep


def _f(x: Any, d: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{d}f}"


def format_gold_report(name: str, rep: dict[str, Any]) -> str:
    """A readable block of a `gold_report` (the lines bench_gold.py and `score --gold` print)."""
    c = rep["consistent_rate"]
    lines = [
        f"== {name}: {rep['n']} prompts x 4 answers",
        "  consistent rate:   " + "  ".join(f"{k} {_f(c[k])}" for k in KINDS),
        f"  balanced accuracy (gold vs generic+flipped) {_f(rep['balanced_accuracy'])}   AUROC {_f(rep['auroc'])}",
        f"  flipped trait caught {_f(rep['flipped_caught'])} (as the top violation {_f(rep['flipped_caught_argmax'])}); "
        f"flipped judged inconsistent {_f(rep['flipped_judged_inconsistent'])}",
        "  caught per trait: " + ", ".join(f"{t} {_f(v, 2)}" for t, v in rep["flipped_caught_per_trait"].items()),
        "  per-trait AUROC (gold for t vs flipped on t, stage 4's figure): "
        + ", ".join(f"{t} {_f(v, 2)}" for t, v in rep.get("trait_auroc", {}).items()),
        "  false violations on gold (count): " + ", ".join(f"{t} {v}" for t, v in rep["false_violations"].items()),
        "  targets missed on gold (count):   " + ", ".join(f"{t} {v}" for t, v in rep["missed_targets"].items()),
    ]
    ot = rep["on_task"]
    if ot["measured"]:
        lines.append(
            "  on_task rate: "
            + "  ".join(f"{k} {_f(ot['rate'][k])}" for k in KINDS)
            + f"   gold vs babble: AUROC {_f(ot['auroc'])}, balanced accuracy {_f(ot['balanced_accuracy'])}"
        )
    else:
        lines.append("  on_task: not measured by this scorer")
    for kind in ("gold", "generic"):
        g = rep["gates"][kind]
        parts = []
        for k, v in g.items():
            extra = f" ({v['context']})" if k == "adherence_min_context" and v.get("context") else ""
            parts.append(f"{k} {_f(v['value'])}{extra} {'PASS' if v['passed'] else 'FAIL'}")
        lines.append(f"  gates on {kind:7s}: " + "; ".join(parts))
    m = rep["style_variance_mixed"]
    lines.append(
        f"  style variance of gold/generic mixed by context: {m['failing']}/{m['splits']} splits fail the gate "
        f"(min {_f(m['min'])}, mean {_f(m['mean'])})"
    )
    unmet = rep.get("unmet_targets")
    if unmet is not None:
        lines.append("  targets: all met" if not unmet else "  targets NOT met: " + "; ".join(unmet))
    return "\n".join(lines)
