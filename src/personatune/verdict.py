"""The run's verdict: one definition for the CLI (`personatune run`) and the report header.

A run is NO-DEPLOY as soon as a stage's gate did not pass — failed, or inconclusive (too few samples
to decide, METRICS.md "Evidence") — whether the pipeline stopped there or went on with --keep-going for
diagnosis. It is DEPLOY only when stage 7 decided DEPLOY and no gate did not pass. Before either, there is
no verdict yet.

Two texts per verdict:

- `reason`: the words `personatune run` prints in its last line, `verdict: NO-DEPLOY (<reason>)`:
  "the 03_consistency_data gate failed", "inconclusive at stage 04_evaluation: 18 more samples needed (raise
  data.heldout_fraction) for auroc[warmth]", "gates failed: 03_consistency_data, 05_optimization".
  `stop_reason` is the pipeline's own function for the stopping stage.
- `detail`: the stopping stage and its gate values, for a reader who has not opened gate.json:
  "stopped at stage 3: gate rejected_inconsistency_rate 0.624 < 0.85; chosen_consistency_rate inconclusive
  (n=129 < 137, raise data.max_prompts)".

Everything here is a pure function of plain data (the manifest's stage records, gate.json documents,
final.json), tolerant of missing or malformed parts, and imports no model code, so the report can use it.

>>> g = {"status": "fail", "results": [{"metric": "rejected_inconsistency_rate", "value": 0.624031, "threshold": 0.85,
...                                     "direction": ">=", "passed": False, "status": "fail"}]}
>>> stop_reason("03_consistency_data", g)
'the 03_consistency_data gate failed'
>>> stop_detail("03_consistency_data", g)
'stopped at stage 3: gate rejected_inconsistency_rate 0.624 < 0.85'
>>> v = run_verdict(["03_consistency_data"], {"03_consistency_data": {"status": "gate_failed"}}, {"03_consistency_data": g}, None)
>>> v.headline()
'NO-DEPLOY — stopped at stage 3: gate rejected_inconsistency_rate 0.624 < 0.85'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from personatune.records import FINAL_STAGE, Record

NOT_PASSED = ("gate_failed", "gate_inconclusive")
"""Manifest statuses of a stage whose gate did not pass."""
NOT_FINISHED = ("pending", "running", "failed", "interrupted")
"""Manifest statuses of a stage 7 whose final.json (if any) is left from an earlier attempt."""
DETAIL_PARTS = 3
"""Gate results named in a detail line per stage; the rest are counted."""
_NOT = {">=": "<", ">": "<=", "<=": ">", "<": ">="}


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return None if math.isnan(v) or math.isinf(v) else float(v)


def _g(x: float) -> str:
    return f"{x:.4g}"


def stage_label(stage: str) -> str:
    """ "stage 3" for "03_consistency_data"; the id itself when it has no number."""
    head = str(stage).split("_", 1)[0]
    return f"stage {int(head)}" if head.isdigit() else str(stage)


def _gate_dict(gate: Any) -> dict[str, Any] | None:
    """A gate as a dict: a records.GateRecord, a GateReport (to_dict), a gate.json / manifest gate mapping, or None."""
    if isinstance(gate, Record):
        return gate.to_json()
    if hasattr(gate, "to_dict"):
        try:
            gate = gate.to_dict()
        except Exception:  # noqa: BLE001 - a verdict line must never raise
            return None
    return gate if isinstance(gate, dict) else None


def _results(gate: dict[str, Any] | None) -> list[dict[str, Any]]:
    res = (gate or {}).get("results")
    return [r for r in res if isinstance(r, dict)] if isinstance(res, list) else []


def _result_status(r: dict[str, Any]) -> str:
    st = r.get("status")
    if st in ("pass", "fail", "inconclusive"):
        return str(st)
    return "pass" if r.get("passed") is True else "fail"


def gate_status(gate: Any) -> str | None:
    """ "pass", "fail" or "inconclusive" (as GateReport.status), from the recorded status or the results; None when unknown."""
    g = _gate_dict(gate)
    if g is None:
        return None
    if g.get("status") in ("pass", "fail", "inconclusive"):
        return str(g["status"])
    res = _results(g)
    if not res:
        return None if g.get("passed") is None else ("pass" if g.get("passed") is True else "fail")
    states = [_result_status(r) for r in res]
    if all(s == "pass" for s in states):
        return "pass"
    return "fail" if "fail" in states else "inconclusive"


def shortfall(gate: Any) -> str:
    """What an inconclusive gate needs (GateReport.shortfall), or "" when it cannot be told."""
    if hasattr(gate, "shortfall"):
        try:
            return str(gate.shortfall())
        except Exception:  # noqa: BLE001
            return ""
    g = _gate_dict(gate)
    if g is None:
        return ""
    from personatune.gates import GateReport

    try:
        return GateReport.from_dict({"stage": "?", **g}).shortfall()
    except (AttributeError, KeyError, TypeError, ValueError):
        return ""


def stop_reason(stage: str, gate: Any) -> str:
    """Why the run stops at `stage`, in the CLI's verdict line: the failed gate, or what an inconclusive one needs.

    Args:
        stage: the stage id, e.g. "03_consistency_data".
        gate: its GateReport, its gate.json (or manifest gate) mapping, or None when unknown.
    """
    if gate_status(gate) == "inconclusive":
        return f"inconclusive at stage {stage}: {shortfall(gate) or 'too few samples to decide'}"
    return f"the {stage} gate failed"


def gate_parts(gate: Any) -> list[str]:
    """One short phrase per gate result that did not pass, failed ones first:
    "gate METRIC VALUE <op> THRESHOLD" (the op says how it misses), "gate METRIC not measured", or
    "METRIC inconclusive (n=N < MIN, raise KEY)"."""
    failed, undecided = [], []
    for r in _results(_gate_dict(gate)):
        st = _result_status(r)
        if st == "pass":
            continue
        metric = str(r.get("metric", "?"))
        if st == "inconclusive":
            n, need = r.get("n"), r.get("min_n")
            size = f"n={n if isinstance(n, int) else 0} < {need}" if isinstance(need, int) else "too few samples"
            key = f", raise {r['n_key']}" if isinstance(r.get("n_key"), str) and r.get("n_key") else ""
            undecided.append(f"{metric} inconclusive ({size}{key})")
            continue
        v, t, d = _num(r.get("value")), _num(r.get("threshold")), r.get("direction")
        if v is None:
            failed.append(f"gate {metric} not measured")
        elif t is not None and d in _NOT:
            failed.append(f"gate {metric} {_g(v)} {_NOT[d]} {_g(t)}")
        else:
            failed.append(f"gate {metric} {_g(v)}")
    return failed + undecided


def _parts_text(gate: Any, fallback: str) -> str:
    parts = gate_parts(gate)
    if not parts:
        return fallback
    more = len(parts) - DETAIL_PARTS
    return "; ".join(parts[:DETAIL_PARTS]) + (f"; {more} more" if more > 0 else "")


def stop_detail(stage: str, gate: Any) -> str:
    """The stopping stage and its gate values: "stopped at stage 3: gate rejected_inconsistency_rate 0.624 < 0.85"."""
    word = "inconclusive" if gate_status(gate) == "inconclusive" else "failed"
    return f"stopped at {stage_label(stage)}: {_parts_text(gate, f'gate {word} (gate.json unreadable)')}"


@dataclass(frozen=True)
class RunVerdict:
    """A run's verdict.

    Attributes:
        verdict: "DEPLOY", "NO-DEPLOY", or None (no verdict yet).
        reason: the CLI's words for it (the parenthesis of `verdict: NO-DEPLOY (...)`).
        detail: the stage(s) and gate values behind it, one line.
        stages: the stages whose gate did not pass (in pipeline order).
    """

    verdict: str | None
    reason: str
    detail: str
    stages: tuple[str, ...] = ()

    def headline(self) -> str:
        """ "NO-DEPLOY — stopped at stage 3: gate …", "DEPLOY — …", or "no verdict yet"."""
        return f"{self.verdict} — {self.detail}" if self.verdict else "no verdict yet"


def _rec(records: Mapping[str, Any], stage: str) -> dict[str, Any]:
    r = records.get(stage) if isinstance(records, Mapping) else None
    return r if isinstance(r, dict) else {}


def run_verdict(
    stage_ids: Sequence[str], records: Mapping[str, Any], gates: Mapping[str, Any], final: Any
) -> RunVerdict:
    """The verdict of a run from its manifest records, gate documents and final.json.

    A stage counts when its status is gate_failed or gate_inconclusive; of those after the first, only the ones
    that started after the first finished (a run that went on with --keep-going), not ones left from an earlier
    attempt that a later run never reached. When the run went on past a not-passed gate, the reason is the one
    `personatune run` prints at the end ("gates failed: A, B"); when it stopped there, the stopping stage's.

    Args:
        stage_ids: the stages in pipeline order.
        records: manifest "stages": stage id -> record ({"status", "started", "finished", "message", "gate"}).
        gates: stage id -> its gate.json mapping (None: the record's "gate" summary is used).
        final: 07_final_eval/final.json, as parsed JSON or a records.FinalRecord (or None).
    """
    status = {s: _rec(records, s).get("status") for s in stage_ids}
    bad = [s for s in stage_ids if status[s] in NOT_PASSED]
    gate_of = {
        s: (
            gates.get(s)
            if isinstance(gates, Mapping) and isinstance(gates.get(s), dict)
            else _rec(records, s).get("gate")
        )
        for s in bad
    }
    if bad:
        first = bad[0]
        t_first = _num(_rec(records, first).get("finished"))

        def after_first(s: str) -> bool:
            t = _num(_rec(records, s).get("started"))
            return t_first is None or t is None or t >= t_first

        counted = [first] + [s for s in bad[1:] if after_first(s)]
        later = stage_ids[list(stage_ids).index(first) + 1 :]
        went_on = t_first is not None and any(
            _num(_rec(records, s).get("started")) is not None and after_first(s) for s in later
        )
        if len(counted) == 1 and not went_on:
            return RunVerdict(
                "NO-DEPLOY", stop_reason(first, gate_of[first]), stop_detail(first, gate_of[first]), (first,)
            )
        undecided = [s for s in counted if status[s] == "gate_inconclusive"]
        head = "gates not passed" if undecided else "gates failed"
        which = ", ".join(f"{s} (inconclusive)" if s in undecided else s for s in counted)
        detail = f"{head}: " + "; ".join(
            f"{stage_label(s)}: {_parts_text(gate_of[s], 'gate ' + ('inconclusive' if s in undecided else 'failed'))}"
            for s in counted
        )
        return RunVerdict("NO-DEPLOY", f"{head}: {which}", detail, tuple(counted))
    if isinstance(final, Record):  # a records.FinalRecord
        final = final.to_json()
    v = final.get("verdict") if isinstance(final, dict) else None
    if v in ("DEPLOY", "NO-DEPLOY") and status.get(FINAL_STAGE) not in NOT_FINISHED:
        msg = _rec(records, FINAL_STAGE).get("message")
        if v == "DEPLOY":
            detail = (
                msg[len("DEPLOY:") :].strip()
                if isinstance(msg, str) and msg.startswith("DEPLOY:")
                else "every stage-7 gate passed"
            )
        else:
            reasons = final.get("reasons")
            first_reason = (
                reasons[0]
                if isinstance(reasons, list) and reasons and isinstance(reasons[0], str)
                else "a stage-7 gate did not pass"
            )
            detail = f"{stage_label(FINAL_STAGE)}: {first_reason}"
        return RunVerdict(str(v), "stage 7", detail)
    return RunVerdict(None, "no verdict yet", "")
