"""`personatune monitor`: has a deployed persona drifted? Tested on conversation logs.

    personatune monitor --persona P.yaml|RUN_DIR [--evaluator DIR] LOGS.jsonl [--reference SFT.jsonl]
                        [--window 200] [--out drift.html] [--alpha 0.01]

What it does, in order:
1. Read the logs: one conversation per line, `{"messages": [...]}` (optional "timestamp", "id") or a
   bare message list - the format `personatune serve --log` writes. A line that is not JSON, has no
   valid message list or no assistant turn is reported by line number and skipped; only a file with no
   usable line at all is an error (exit 2).
2. Score every assistant turn with the persona evaluator, its prompt being the nearest earlier user
   turn. The reference (by default the run's held-out chosen responses, 03_consistency_data/heldout/
   sft.jsonl) is scored exactly the same way: prompt only, no targeted traits, no context label, so
   logs and reference are compared like with like (production logs carry neither).
   Without a reference the first window is the reference and testing starts at window 2.
3. Cut the conversations into consecutive windows of `window` conversations, in file order (a last
   window shorter than half a window joins the one before it).
4. Test each window against the reference, one-sided (only a DROP is an alert):
   - consistency rate: two-proportion z-test (pooled variance);
   - consistency score distribution: Mann-Whitney U (scipy; normal approximation, tie- and continuity-corrected);
   - style_match distribution: Mann-Whitney U, same;
   - adherence of each trait: two-proportion z-test.
   A test alerts when p < alpha / m, m = (windows tested) x (tests per window): a Bonferroni
   correction, so with no drift the chance of any alert is at most `alpha`.
5. Multi-turn line-to-line consistency: inside one conversation, a later assistant turn contradicts an
   earlier one when the earlier turn expressed trait t (traits[t] >= 0.5, violations[t] < 0.5) and the
   later one violates it (violations[t] >= 0.5). Counted and shown with examples; informational, not an
   alert (the single-turn reference has no multi-turn rate to test against).
6. Write a self-contained HTML report (inline CSS and SVG, nothing fetched) and a JSON summary next
   to it; return 1 when any test alerts, 0 otherwise.

Responses of one conversation are treated as independent draws; multi-turn logs with strongly
correlated turns make the tests somewhat liberal (docs/evaluation-monitoring.md).

The statistics and the report are in their own modules, re-exported here: personatune.monitor_drift (steps 4-5)
and personatune.monitor_report (step 6); this module reads and scores the logs and runs the command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from personatune import limits
from personatune.errors import ConfigError, DataError

# Re-exported: tests and callers import the drift statistics and the report from personatune.monitor.
from personatune.monitor_drift import (  # noqa: F401
    SNIPPET,
    Conversation,
    DriftReport,
    TestResult,
    WindowSummary,
    _adheres,
    _jsonable,
    describe,
    detect_drift,
    find_contradictions,
    make_windows,
    mann_whitney_less,
    two_proportion_drop,
    window_tests,
)
from personatune.monitor_report import MAX_BAD_SHOWN, MAX_EXAMPLES, _f, render_html  # noqa: F401
from personatune.output_paths import check_output_file
from personatune.rundir import atomic_write_json, atomic_write_text, jsonl_lines
from personatune.scoring.record import ScorerLike

ROLES = ("system", "user", "assistant")


# ---- reading -----------------------------------------------------------------------------------------


def _check_messages(msgs: Any) -> str | None:
    """Why a message list is unusable, or None when it is fine."""
    if not isinstance(msgs, list) or not msgs:
        return "no non-empty 'messages' list"
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            return f"messages[{i}] is not an object"
        if m.get("role") not in ROLES:
            return f"messages[{i}].role={m.get('role')!r} is not one of {list(ROLES)}"
        if not isinstance(m.get("content"), str):
            return f"messages[{i}].content is not a string"
        unusable = limits.text_problem(m["content"], f"messages[{i}].content")
        if unusable:
            return unusable
    if not any(m["role"] == "assistant" for m in msgs):
        return "no assistant turn"
    return None


def read_conversations(path: str | Path) -> tuple[list[Conversation], list[tuple[int, str]]]:
    """Read a JSONL conversation log.

    Args:
        path: JSONL, one conversation per line: {"messages": [...], "timestamp"?: ...} or a bare list.

    Returns:
        (conversations, bad) where bad lists (line number, reason) for every skipped line; blank lines are ignored.

    Raises:
        DataError: the file cannot be read, or no line is usable.
    """
    path = Path(path)
    try:
        # Split on "\n" only: splitlines() would also cut a record at a U+2028 inside one of its strings.
        raw = jsonl_lines(path.read_bytes().decode("utf-8", errors="replace"))
    except OSError as e:
        raise DataError(f"cannot read {path} ({e.strerror}); fix: pass an existing JSONL file") from None
    convs: list[Conversation] = []
    bad: list[tuple[int, str]] = []
    for no, text in enumerate(raw, start=1):
        if not text.strip():
            continue
        if len(text) > limits.JSONL_MAX_LINE_CHARS:
            bad.append(
                (
                    no,
                    f"{len(text):,} characters, more than the line limit of {limits.JSONL_MAX_LINE_CHARS:,} (personatune.limits.JSONL_MAX_LINE_CHARS)",
                )
            )
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            bad.append((no, f"not JSON ({e.msg} at column {e.colno})"))
            continue
        except RecursionError:
            bad.append((no, "not JSON (nested too deeply)"))
            continue
        ts = None
        if isinstance(obj, dict):
            ts = obj.get("timestamp")
            obj = obj.get("messages")
        why = _check_messages(obj)
        if why:
            bad.append((no, why))
            continue
        convs.append(Conversation(no, [{"role": m["role"], "content": m["content"]} for m in obj], ts))
    if not convs:
        shown = "; ".join(f"line {n}: {w}" for n, w in bad[:3]) or "the file is empty"
        raise DataError(
            f"{path} has no usable conversation ({len(bad)} bad line(s): {shown}); fix: one JSON object per "
            f"line with a 'messages' list of {{role, content}} that contains an assistant turn"
        )
    return convs, bad


def score_conversations(scorer: ScorerLike, convs: list[Conversation]) -> list[list[tuple[int, Any]]]:
    """Score every assistant turn; its prompt is the nearest earlier user turn.

    Args:
        scorer: the persona scorer.
        convs: the conversations.

    Returns:
        Per conversation, a list of (message index, ResponseScore) in turn order.
    """
    texts, prompts, ids, where = [], [], [], []
    for ci, c in enumerate(convs):
        last_user = None
        for i, m in enumerate(c.messages):
            if m["role"] == "user":
                last_user = m["content"]
            elif m["role"] == "assistant":
                texts.append(m["content"])
                prompts.append(last_user)
                ids.append(f"line{c.line}:turn{i}")
                where.append((ci, i))
    records = scorer.score(texts, prompts=prompts, ids=ids) if texts else []
    out: list[list[tuple[int, Any]]] = [[] for _ in convs]
    for (ci, i), r in zip(where, records):
        out[ci].append((i, r))
    return out


def _check_options(window: Any, alpha: Any) -> None:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ConfigError(f"--window {window!r} must be an integer >= 1 (conversations per window)")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise ConfigError(f"--alpha {alpha!r} must be a number in (0, 1), e.g. 0.01")


def run_monitor(
    scorer: ScorerLike,
    trait_ids: list[str],
    logs: str | Path,
    reference: str | Path | None,
    window: int = 200,
    alpha: float = 0.01,
) -> DriftReport:
    """Read, score, window and test (steps 1-5 of the module docstring).

    Args:
        scorer: the persona scorer.
        trait_ids: the persona's traits.
        logs: the conversation log (JSONL).
        reference: reference JSONL (same format; held-out sft.jsonl rows qualify), or None to use the first window.
        window: conversations per window (>= 1).
        alpha: family-wise false-alarm rate (0 < alpha < 1).

    Returns:
        The DriftReport.

    Raises:
        ConfigError: bad window or alpha.
        DataError: unreadable or empty logs or reference.
    """
    _check_options(window, alpha)
    convs, bad = read_conversations(logs)
    scored = score_conversations(scorer, convs)
    bounds = make_windows(len(convs), window)
    win_recs = [[r for c in scored[a:b] for _, r in c] for a, b in bounds]
    bad_ref: list[tuple[int, str]] = []
    if reference is not None:
        ref_convs, bad_ref = read_conversations(reference)
        ref = [r for c in score_conversations(scorer, ref_convs) for _, r in c]
        source = f"{reference} ({len(ref_convs)} conversations)"
        tested = list(range(len(bounds)))
    else:
        if len(bounds) < 2:
            raise DataError(
                f"{logs}: without --reference the first window is the reference, but the log has only "
                f"{len(convs)} conversation(s) = 1 window of --window {window}; fix: pass --reference or a smaller --window"
            )
        ref = win_recs[0]
        source = f"first window of the log (lines {convs[0].line}-{convs[bounds[0][1] - 1].line})"
        tested = list(range(1, len(bounds)))
    tests, threshold, m = detect_drift(
        ref, [win_recs[i] if i in tested else [] for i in range(len(bounds))], trait_ids, alpha
    )
    summaries = []
    for i, (a, b) in enumerate(bounds):
        d = describe(win_recs[i], trait_ids)
        summaries.append(
            WindowSummary(
                i,
                convs[a].line,
                convs[b - 1].line,
                b - a,
                d["responses"],
                d["consistency_rate"],
                d["consistency_ci"],
                d["consistency_mean"],
                d["style_match_mean"],
                d["words_mean"],
                d["adherence"],
                convs[a].timestamp,
                convs[b - 1].timestamp,
            )
        )
    contradictions = find_contradictions(convs, scored)
    return DriftReport(
        alpha=float(alpha),
        threshold=threshold,
        n_tests=m,
        reference_source=source,
        reference=describe(ref, trait_ids),
        windows=summaries,
        tests=tests,
        contradictions=contradictions,
        n_contradictions=len(contradictions),
        conversations_multi_turn=sum(len(c.assistant_turns) >= 2 for c in convs),
        bad_lines=bad,
        bad_reference_lines=bad_ref,
        conversations=len(convs),
        responses=sum(len(w) for w in win_recs),
        window_size=window,
    )


# ---- entry point ---------------------------------------------------------------------------------


def _resolve(persona: str, evaluator: str | None, reference: str | None) -> tuple[str, str | None, str | None]:
    """A run directory given as --persona supplies persona, evaluator and held-out reference from its manifest."""
    root = Path(persona)
    if root.is_dir() and (root / "manifest.json").is_file():
        from personatune.rundir import RunDir

        rd = RunDir(root)
        persona = str(rd.output_path("02_persona", "persona"))
        if evaluator is None and rd.record("04_evaluation").status == "done":
            evaluator = str(rd.output_path("04_evaluation", "evaluator"))
        if reference is None and rd.record("03_consistency_data").status == "done":
            reference = str(rd.output_path("03_consistency_data", "heldout") / "sft.jsonl")
    return persona, evaluator, reference


def monitor_main(
    persona: str,
    evaluator: str | None,
    logs: str,
    reference: str | None = None,
    window: int = 200,
    out_html: str = "drift.html",
    alpha: float = 0.01,
) -> int:
    """Entry point of `personatune monitor`.

    Args:
        persona: persona YAML, or a run directory (persona, evaluator and held-out reference from its manifest).
        evaluator: fitted evaluator folder (default: the run's; else the untrained persona scorer).
        logs: JSONL conversation log.
        reference: reference JSONL (default: the run's 03_consistency_data/heldout/sft.jsonl; none: first window).
        window: conversations per window.
        out_html: where the HTML report goes; the JSON summary goes beside it with suffix .json.
        alpha: family-wise false-alarm rate.

    Returns:
        1 when any test alerts, else 0.

    Raises:
        ConfigError, DataError, PersonaSpecError, RunDirError: bad input (the CLI prints one line, exit 2), among
            them an --out (or the .json beside it) that is a folder or one of the inputs, refused before any work.
    """
    from personatune.persona import load_persona
    from personatune.scoring.factory import build_scorer

    persona, evaluator, reference = _resolve(persona, evaluator, reference)
    out = Path(out_html)
    if out.suffix.lower() == ".json":
        raise ConfigError(
            f"--out {out} ends in .json, the name of the JSON summary written beside the report; fix: e.g. --out {out.with_suffix('.html')}"
        )
    inputs = {"the log": logs, "--reference": reference, "--persona": persona, "--evaluator": evaluator}
    check_output_file(out, "--out", inputs)
    check_output_file(out.with_suffix(".json"), "--out (its .json summary)", inputs)
    # Options and input files are checked before the scorer is built (that takes seconds).
    _check_options(window, alpha)
    for what, path in (("the log", logs), ("--reference", reference)):
        if path is not None and not Path(path).is_file():
            raise DataError(
                f"{what} {path} is {'a folder' if Path(path).is_dir() else 'not found'}; fix: pass an existing JSONL file"
            )
    spec = load_persona(persona)
    scorer = build_scorer(spec, evaluator_dir=evaluator)  # the fitted evaluator, else the persona's untrained scorer
    rep = run_monitor(scorer, spec.trait_ids, logs, reference, window=window, alpha=alpha)
    atomic_write_text(out, render_html(rep, spec.name))
    atomic_write_json(out.with_suffix(".json"), rep.to_dict())
    print(format_summary(rep, out))
    return 1 if rep.alert else 0


def format_summary(rep: DriftReport, out: Path | None = None) -> str:
    """A few lines for the terminal."""
    lines = [
        f"monitor: {rep.conversations} conversations, {rep.responses} responses, {len(rep.windows)} window(s); "
        f"{len(rep.bad_lines)} bad line(s) skipped; reference {rep.reference['responses']} responses "
        f"(consistency {_f(rep.reference['consistency_rate'])})"
    ]
    for t in rep.alerts[:10]:
        lines.append(
            f"  ALERT window {t.window} {t.test}: {_f(t.value)} vs reference {_f(t.reference)} (p={_f(t.p)} < {_f(rep.threshold)})"
        )
    if len(rep.alerts) > 10:
        lines.append(f"  ... {len(rep.alerts) - 10} more alerts")
    lines.append(f"  multi-turn contradictions: {rep.n_contradictions}")
    lines.append(("DRIFT" if rep.alert else "no drift") + (f" -> {out}" if out else ""))
    return "\n".join(lines)
