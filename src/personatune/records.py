"""The records of a run directory, declared once: the stages write them and the report reads them.

One pydantic model per file format (docs/run-directory in words, here in types):

    NN_stage/gate.json                 GateRecord           (pipeline.py, after every gated stage)
    NN_stage/result.json               StageResultRecord    (stages 5 and 6, so every rank returns the same result)
    05_optimization/metrics.jsonl      StepRow, one a line  (training.PersonaEvalCallback, every eval)
    05_optimization/metrics.json       OptimizationMetrics  (stage 5)
    06_iterations/rounds.jsonl         RoundRow, one a line (stage 6)
    06_iterations/metrics.json         IterationMetrics     (stage 6)
    06_iterations/round_N/result.json  RoundResult          (stage 6, marks a round finished)
    01_baseline/baseline.json          BaselineRecord       (stage 1)
    04_evaluation/report.json          EvaluationReport     (stage 4)
    04_evaluation/baseline_sampling.json  SamplingFingerprint (stage 4, beside baseline_samples.json)
    07_final_eval/final.json           FinalRecord          (stage 7)

Every model allows extra keys and gives every field that older runs may lack a default, so a run directory
written before a field existed still loads. A file that does not fit is refused with one line naming the file
and the field (`RecordError`, from `parse_record`) — never a traceback; the report instead keeps what fits and
warns about the rest (`salvage_record`).

`STAGE_TITLES` is the one table of stage ids and titles: pipeline.STAGES, the report and the verdict read it.

This module is longer than the ~450 lines we aim for, on purpose: it is the run directory's schema, about thirty
small declarative models and their three readers, and reads best as one document (like a format specification).

>>> g = parse_record(GateRecord, {"stage": "04_evaluation", "results": [{"metric": "adherence", "value": 0.93,
...                  "threshold": 0.9, "direction": ">=", "passed": True}]}, "04_evaluation/gate.json")
>>> g.results[0].value, g.results[0].status
(0.93, 'pass')
>>> try:
...     parse_record(GateRecord, {"results": [{"metric": "x", "value": "high"}]}, "gate.json")
... except RecordError as e:
...     print(e)
gate.json: results.0.value: Input should be a valid number, unable to parse string as a number
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from personatune.errors import RunDirError
from personatune.rundir import atomic_write_json, atomic_write_jsonl

STAGE_TITLES: dict[str, str] = {
    "01_baseline": "SFT preparation (baseline model)",
    "02_persona": "Persona definition",
    "03_consistency_data": "Consistency data",
    "04_evaluation": "Persona evaluation",
    "05_optimization": "Optimization (KL-bounded)",
    "06_iterations": "Iterative training",
    "07_final_eval": "Final evaluation",
}
"""Stage id (its folder and manifest key) -> title, in run order. Kept here, not in pipeline.py, because the report
and the verdict must not import the stages (they import torch and the models)."""

FINAL_STAGE = "07_final_eval"
DRIFT_REFERENCE_LABEL = "persona-prompted baseline"
"""The `kl_reference` of records whose `kl` is drift KL (against the baseline given the persona context)."""
PLAIN_REFERENCE_LABEL = "unprompted baseline"
"""The `kl_reference` of records whose `kl` is against the baseline without a persona context."""


class RecordError(RunDirError):
    """A run-directory file that does not fit its record: one line naming the file and the field."""


class Record(BaseModel):
    """Base of every on-disk record: unknown keys are kept (newer writers, hand notes), never an error."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    _order: tuple[str, ...] = PrivateAttr(default=())

    @model_validator(mode="wrap")
    @classmethod
    def _keep_key_order(cls, data: Any, handler: Any) -> Any:
        # The order the keys came in, so `to_json` writes a file back (and the report lists its columns) as it was.
        rec = handler(data)
        if isinstance(data, dict) and isinstance(rec, Record):
            rec._order = tuple(str(k) for k in data)
        return rec

    def to_json(self) -> dict[str, Any]:
        """The record as written to disk: the keys it was given, in their order (so a writer's file keeps its exact
        shape), field names as on disk (`yield`), extra keys kept."""
        d = self.model_dump(mode="json", by_alias=True, exclude_unset=True)
        return {**{k: d[k] for k in self._order if k in d}, **d}


R = TypeVar("R", bound=Record)


# --- shared pieces --------------------------------------------------------------------------------
class MeasurementRecord(Record):
    """A measured value with its sample size and 95% interval (gates.Measurement on disk); value None = not measured."""

    value: float | None = None
    n: int | None = None
    ci: list[float] | None = None


class BaselineFinal(Record):
    """One figure for the baseline and for the final model (stage 7)."""

    baseline: MeasurementRecord | None = None
    final: MeasurementRecord | None = None


class KLRecord(Record):
    """kl.KLResult.to_dict(), plus what stage 7 adds (tokens sampled, context length, what it measures)."""

    kl_per_token: float | None = None
    kl_per_token_stderr: float | None = None
    kl_per_sequence_mean: float | None = None
    tokens: int | None = None
    sequences: int | None = None
    reference: str | None = None
    unit: str | None = None
    max_new_tokens: int | None = None
    context_tokens: int | None = None
    few_shot: bool | None = None
    what: str | None = None


class KLBearing(Record):
    """A record with a `kl` number whose reference changed with drift KL (issue 15)."""

    kl: float | None = None
    kl_stderr: float | None = None
    kl_reference: str | None = None
    persona_shift: float | None = None

    @property
    def kl_is_drift(self) -> bool:
        """Whether `kl` is drift KL: records since drift KL name their reference or carry `persona_shift`.

        >>> StepRow(step=1, kl=0.1, kl_reference="persona-prompted baseline").kl_is_drift, StepRow(step=1, kl=0.1).kl_is_drift
        (True, False)
        """
        if self.kl_reference is not None:
            low = self.kl_reference.lower()
            return "unprompted" not in low and "persona" in low
        return "persona_shift" in self.model_fields_set


# --- gate.json ------------------------------------------------------------------------------------
class GateResultRecord(Record):
    """One gate result (gates.GateResult on disk)."""

    metric: str
    value: float | None = None
    threshold: float | None = None
    direction: str | None = None
    unit: str = ""
    passed: bool | None = None
    n: int | None = None
    ci: list[float] | None = None
    description: str = ""
    note: str = ""
    status: str = ""
    min_n: int | None = None
    n_key: str = ""

    @model_validator(mode="after")
    def _status_from_passed(self) -> "GateResultRecord":
        # Files written before inconclusive gates carry `passed` only.
        if not self.status and self.passed is not None:
            self.status = "pass" if self.passed else "fail"
        return self


class GateRecord(Record):
    """A stage's gate.json: every result, and the diagnosis and next steps shown when it did not pass."""

    stage: str | None = None
    results: list[GateResultRecord] = Field(default_factory=list)
    diagnosis: list[str] = Field(default_factory=list)
    next_steps: list[str] = Field(default_factory=list)
    passed: bool | None = None
    status: str | None = None

    @classmethod
    def of(cls, report: Any) -> "GateRecord":
        """The record of a `gates.GateReport` (its `to_dict()`, validated)."""
        return cls.model_validate(report.to_dict())

    def to_report(self) -> Any:
        """The `gates.GateReport` this record holds (for re-showing a recorded gate).

        Raises:
            RecordError: the record has no stage or a result lacks threshold or direction.
        """
        from personatune.gates import GateReport, GateResult

        if self.stage is None:
            raise RecordError("gate.json: stage: missing")
        out = []
        for i, r in enumerate(self.results):
            if r.threshold is None or r.direction is None or r.passed is None:
                raise RecordError(f"gate.json: results.{i}: needs threshold, direction and passed")
            out.append(
                GateResult(
                    metric=r.metric,
                    value=r.value,
                    threshold=r.threshold,
                    direction=r.direction,
                    unit=r.unit,
                    passed=r.passed,
                    n=r.n,
                    ci=None if r.ci is None else tuple(r.ci),
                    description=r.description,
                    note=r.note,
                    status=r.status,
                    min_n=r.min_n,
                    n_key=r.n_key,
                )
            )
        return GateReport(self.stage, out, diagnosis=list(self.diagnosis), next_steps=list(self.next_steps))

    def manifest_summary(self) -> dict[str, Any]:
        """The short form kept in the manifest's stage record: pass/status and each result's numbers."""
        keys = ("metric", "value", "threshold", "direction", "passed", "status", "n", "min_n")
        return {
            "passed": self.passed,
            "status": self.status,
            "results": [{k: getattr(r, k) for k in keys} for r in self.results],
        }


# --- baseline.json (stage 1) ----------------------------------------------------------------------
class CapabilitySummary(Record):
    """The capability suite's score, items and per-task accuracy (the full result is capability.json)."""

    score: float | None = None
    n: int | None = None
    tasks: dict[str, float | None] = Field(default_factory=dict)


class BaselineRecord(Record):
    """01_baseline/baseline.json: which baseline model, and its sanity check, capability and perplexity."""

    model: str | None = None
    path: str | None = None
    parameters: int | None = None
    load_seconds: float | None = None
    sft_rows: int | None = None
    chat_template: bool | None = None
    sanity_prompt: str | None = None
    sanity_reply: str | None = None
    sanity_new_tokens: int | None = None
    capability: CapabilitySummary | None = None
    perplexity: dict[str, Any] | None = None


# --- report.json (stage 4) ------------------------------------------------------------------------
Figure = MeasurementRecord | float
"""A rate with its n and interval, or (in hand-written or older files) a bare number."""


def figure_value(x: Figure | None) -> float | None:
    """The number of a Figure: a measurement's value, or the bare number."""
    return x.value if isinstance(x, MeasurementRecord) else x


class AurocFigure(Record):
    """A trait detector's held-out AUROC: expressed (n_pos) against trait-flipped (n_neg) responses."""

    auroc: float | None = None
    ci: list[float] | None = None
    n_pos: int | None = None
    n_neg: int | None = None
    n_off_task: int | None = None  # trait-flipped answers left out as off task (s4_evaluation.flip_took)


class AdherenceFigures(Record):
    overall: Figure | None = None
    per_trait: dict[str, Figure] = Field(default_factory=dict)
    per_context: dict[str, Figure] = Field(default_factory=dict)


class BaselinePersona(Record):
    """The stage-1 baseline's persona figures on the held-out prompts, no system prompt (the "before" of stages 5-7)."""

    consistency_rate: Figure | None = None
    adherence: Figure | None = None
    style_variance: float | None = None
    on_task_rate: MeasurementRecord | None = None
    n: int | None = None


class EvaluationReport(Record):
    """04_evaluation/report.json: the fitted evaluator's held-out figures and the baseline's."""

    auroc: dict[str, AurocFigure] = Field(default_factory=dict)
    adherence: AdherenceFigures | None = None
    style_variance: float | None = None
    consistency_rate: Figure | None = None
    on_task_rate: MeasurementRecord | None = None
    n_heldout: int | None = None
    n_train_examples: int | None = None
    baseline_persona: BaselinePersona | None = None


# --- result.json ----------------------------------------------------------------------------------
class StageResultRecord(Record):
    """A stage's result.json (stages 5 and 6): what its StageResult held, so other ranks and resumes return it."""

    outputs: dict[str, str] = Field(default_factory=dict)
    gate: GateRecord | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    message: str = ""
    num_processes: int | None = None


# --- metrics.jsonl (stages 5 and 6) ---------------------------------------------------------------
class StepRow(KLBearing):
    """One eval record of metrics.jsonl (training.PersonaEvalCallback; eval figures from EvalResult.summary())."""

    step: int
    checkpoint: str | None = None
    beta: float | None = None
    time: float | None = None
    train_seconds: float | None = None
    kl_per_sequence: float | None = None
    kl_tokens: int | None = None
    persona_shift_stderr: float | None = None
    consistency: float | None = None
    adherence: float | None = None
    style_variance: float | None = None
    on_task: float | None = None
    n: int | None = None
    eval_seconds: float | None = None
    decision: str | None = None
    reason: str | None = None


# --- rounds.jsonl and round_N/result.json (stage 6) -------------------------------------------------
class RoundRow(KLBearing):
    """One row of rounds.jsonl: a stage-6 round measured on the held-out prompts (round 0 = the stage-5 model)."""

    round: int
    yield_: float | None = Field(default=None, alias="yield")
    consistency: float | None = None
    consistency_ci: list[float] | None = None
    adherence: float | None = None
    style_variance: float | None = None
    on_task: float | None = None
    pairs: int | None = None
    steps: int | None = None
    passed: bool | None = None
    kept: bool | None = None
    seconds: float | None = None


class EvalRecord(Record):
    """A full held-out evaluation (training.EvalResult on disk, without the texts)."""

    kl: KLRecord | None = None
    persona_shift: KLRecord | None = None
    consistency: MeasurementRecord | None = None
    adherence: MeasurementRecord | None = None
    style_variance: float | None = None
    adherence_per_trait: dict[str, float | None] = Field(default_factory=dict)
    n: int | None = None
    on_task: MeasurementRecord | None = None
    style_variance_n: int | None = None


class RoundResult(Record):
    """round_N/result.json: a finished round (its key decides whether a resumed run may skip it)."""

    round: int
    key: str
    row: RoundRow
    eval: EvalRecord | None = None
    model: str | None = None
    model_hash: str | None = None


# --- metrics.json (stages 5 and 6) ----------------------------------------------------------------
class OptimizationMetrics(Record):
    """05_optimization/metrics.json: the selected checkpoint, its full evaluation and the whole eval history."""

    selection: dict[str, Any] = Field(default_factory=dict)
    final: dict[str, Any] = Field(default_factory=dict)
    kl: KLRecord | None = None
    persona_shift: KLRecord | None = None
    consistency: MeasurementRecord | None = None
    adherence: MeasurementRecord | None = None
    on_task: dict[str, Any] | None = None
    reference_samples: dict[str, Any] | None = None
    history: list[StepRow] = Field(default_factory=list)


class IterationMetrics(Record):
    """06_iterations/metrics.json: the kept round, why the rounds stopped, and every round."""

    best_round: int | None = None
    stop_reason: str | None = None
    kept_reason: str | None = None
    reference: str | None = None
    scorer: str | None = None
    rounds_run: int | None = None
    rounds: list[RoundRow] = Field(default_factory=list)
    kept_eval: EvalRecord | None = None
    rounds_detail: list[dict[str, Any]] = Field(default_factory=list)


# --- baseline_sampling.json (stage 4) -------------------------------------------------------------
class SamplingFingerprint(Record):
    """What determined stage 4's baseline samples; a later stage reuses them only when all of it is unchanged.

    Attributes:
        baseline: the stage-1 record that made the baseline weights (its finish time and output hashes).
        model: the `model` config section (loading: dtype, device, … change the numerics).
        decoding: max_new_tokens, temperature, top_p, batch_size (batching changes padding, so the numerics).
        seed: the run seed the sampler was seeded with.
        prompts: hash of the held-out prompt rows sampled (ids and messages, in order).
        samples: hash of the baseline_samples.json these settings produced (ties the pair of files together).
    """

    baseline: dict[str, Any] = Field(default_factory=dict)
    model: dict[str, Any] = Field(default_factory=dict)
    decoding: dict[str, Any] = Field(default_factory=dict)
    seed: int | None = None
    prompts: str | None = None
    samples: str | None = None

    def same_sampling(self, other: "SamplingFingerprint") -> bool:
        """Whether both describe the same sampling (everything but the samples' own hash)."""
        keys = ("baseline", "model", "decoding", "seed", "prompts")
        return all(getattr(self, k) == getattr(other, k) for k in keys)


# --- final.json (stage 7) -------------------------------------------------------------------------
class Improvement(MeasurementRecord):
    """Persona improvement: consistency(final) - consistency(baseline), paired bootstrap interval."""

    baseline: float | None = None
    final: float | None = None
    unit: str | None = None
    method: str | None = None


class StyleVarianceFigures(Record):
    baseline: float | None = None
    final: float | None = None
    note: str | None = None


class ContextFigures(Record):
    """Stage 7's figures in one context (older runs put baseline/final at the top level: kept as extra keys)."""

    n: int | None = None
    consistency: BaselineFinal | None = None
    adherence: BaselineFinal | None = None


class Robustness(Record):
    context: str | None = None
    n: int | None = None
    unit: str | None = None
    before: MeasurementRecord | None = None
    after: MeasurementRecord | None = None
    note: str | None = None


class Ratio(MeasurementRecord):
    """A ratio with its interval, and why it is missing when it is."""

    note: str | None = None
    unit: str | None = None


class OnTaskFigures(Record):
    baseline: MeasurementRecord | None = None
    final: MeasurementRecord | None = None
    unit: str | None = None
    retention: Ratio | None = None


class TaskDrop(Record):
    """One capability or lm-eval task, baseline vs final (stage-7 `candidate` is the final model's suite accuracy)."""

    metric: str | None = None
    baseline: float | None = None
    candidate: float | None = None
    final: float | None = None
    drop: float | None = None
    allowed: float | None = None
    ok: bool | None = None
    n: int | None = None


class CapabilityRetention(Record):
    value: float | None = None
    unit: str | None = None
    baseline_score: float | None = None
    final_score: float | None = None
    n_items: int | None = None
    baseline_source: str | None = None
    tasks: dict[str, TaskDrop] = Field(default_factory=dict)
    all_tasks_ok: bool | None = None
    task_rule: str | None = None


class LmEvalFigures(Record):
    tasks: dict[str, TaskDrop] = Field(default_factory=dict)
    not_compared: dict[str, str] = Field(default_factory=dict)
    baseline_source: str | None = None
    lm_eval_version: str | None = None
    rule: str | None = None


class PromptedBaseline(Record):
    """The baseline given the persona context: the context-distillation target."""

    consistency: MeasurementRecord | None = None
    on_task: MeasurementRecord | None = None
    adherence: MeasurementRecord | None = None
    n: int | None = None
    context: str | None = None
    unit: str | None = None
    gap_closed: float | None = None
    gap_closed_unit: str | None = None


class EarlierGate(Record):
    status: str | None = None
    gate_passed: bool | None = None


class FinalRecord(Record):
    """07_final_eval/final.json: the verdict, its reasons, and every figure behind it."""

    verdict: str | None = None
    reasons: list[str] | str = Field(default_factory=list)
    n_prompts: int | None = None
    decoding: dict[str, Any] = Field(default_factory=dict)
    baseline_model: str | None = None
    final_model: str | None = None
    scorer: str | None = None
    baseline_samples: str | None = None
    final_samples: str | None = None
    improvement: Improvement | None = None
    consistency: BaselineFinal | None = None
    adherence: BaselineFinal | None = None
    style_variance: StyleVarianceFigures | None = None
    per_trait: dict[str, BaselineFinal] = Field(default_factory=dict)
    per_context: dict[str, ContextFigures] = Field(default_factory=dict)
    robustness: Robustness | None = None
    on_task: OnTaskFigures | None = None
    prompted_baseline: PromptedBaseline | None = None
    retention: CapabilityRetention | None = None
    lm_eval: LmEvalFigures | None = None
    perplexity: dict[str, Any] | None = None
    kl: KLRecord | None = None
    persona_shift: KLRecord | None = None
    kl_reference: str | None = None
    earlier_gates: dict[str, EarlierGate] = Field(default_factory=dict)
    gates: list[GateResultRecord] = Field(default_factory=list)
    seconds: float | None = None

    @property
    def kl_is_drift(self) -> bool:
        """Whether `kl` is drift KL (final.json names its reference or carries `persona_shift` since drift KL)."""
        if self.kl_reference is not None:
            low = self.kl_reference.lower()
            return "unprompted" not in low and "persona" in low
        return "persona_shift" in self.model_fields_set


# --- reading --------------------------------------------------------------------------------------
def _where(loc: tuple[Any, ...]) -> str:
    return ".".join(str(x) for x in loc) or "(top level)"


def _problem(where: str, err: ValidationError) -> str:
    e = err.errors()[0]
    more = len(err.errors()) - 1
    return f"{where}: {_where(e['loc'])}: {e['msg']}" + (f" (+{more} more)" if more else "")


def parse_record(model: type[R], data: Any, where: str) -> R:
    """Validate parsed JSON as one record, or fail with one line.

    Args:
        model: the record class, e.g. GateRecord.
        data: the parsed JSON.
        where: the file, as shown in the message (e.g. "04_evaluation/gate.json").

    Returns:
        The record.

    Raises:
        RecordError: "<where>: <field path>: <what is wrong>" (the first problem, and how many more).
    """
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise RecordError(_problem(where, e)) from None


def read_record(model: type[R], path: str | Path, where: str | None = None) -> R:
    """Read and validate one JSON file as a record.

    Raises:
        RecordError: the file is missing, unreadable, not JSON, or does not fit (one line naming file and field).
    """
    where = where or str(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecordError(f"{where}: missing") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RecordError(f"{where}: unreadable ({type(e).__name__})") from None
    except (json.JSONDecodeError, RecursionError) as e:
        raise RecordError(f"{where}: not valid JSON ({getattr(e, 'msg', type(e).__name__)})") from None
    return parse_record(model, data, where)


def write_record(path: str | Path, model: type[Record], data: Any) -> None:
    """Write a run-directory file after checking it against its record: a dict as JSON, or (for a `.jsonl` path) a
    list of dicts, one a line, each checked. The file holds the writer's own dicts, so its keys and numbers stay as
    the writer made them; the check only makes a format change fail at the writer instead of in a reader.

    Args:
        path: the file to write (atomically).
        model: its record class, e.g. FinalRecord.
        data: the dict (or, for .jsonl, the list of dicts) to write.

    Raises:
        RecordError: the data does not fit its record (a writer bug: one line naming the file and the field).
    """
    path = Path(path)
    where = f"{path.parent.name}/{path.name}"
    if path.suffix == ".jsonl":
        for i, row in enumerate(data):
            parse_record(model, row, f"{where} line {i + 1}")
        atomic_write_jsonl(path, data)
    else:
        parse_record(model, data, where)
        atomic_write_json(path, data)


MAX_SALVAGE_ROUNDS = 50
"""How many validation rounds `salvage_record` tries before giving a file up (each drops the fields that failed)."""


def salvage_record(model: type[R], data: Any, where: str) -> tuple[R | None, list[str]]:
    """Validate what fits and drop what does not, for a reader that shows as much of a run as it can (the report).

    A field (at any depth) that fails validation is removed and validation is retried, so one malformed figure
    costs only itself. Required fields that fail take their container with them.

    Args:
        model: the record class.
        data: the parsed JSON.
        where: the file, as shown in the warnings.

    Returns:
        (record, warnings): the record, or None when nothing of it fits (not an object, or its required fields
        are bad); one line per dropped field, "<where>: <field path>: <what is wrong>; left out".
    """
    if not isinstance(data, dict):
        return None, [f"{where}: not a JSON object; its section is left out"]
    data = copy.deepcopy(data)
    warnings: list[str] = []
    for _ in range(MAX_SALVAGE_ROUNDS):
        try:
            return model.model_validate(data), warnings
        except ValidationError as err:
            # One field per round: removing a list element shifts the indexes the other errors name.
            loc = tuple(err.errors()[0]["loc"])
            if not _drop(data, loc):
                break
            warnings.append(f"{where}: {_where(loc)}: {err.errors()[0]['msg']}; left out")
    return None, warnings + [f"{where}: does not fit its record; its section is left out"]


def _drop(data: Any, loc: tuple[Any, ...]) -> bool:
    """Remove the value at `loc` (a pydantic error location) from nested dicts and lists; False when nothing is there.

    A required field that is missing names a key that does not exist: the deepest one that does (the record
    lacking it) is removed instead.
    """
    container, key, cur = None, None, data
    for k in loc:
        if isinstance(cur, dict) and k in cur or isinstance(cur, list) and isinstance(k, int) and 0 <= k < len(cur):
            container, key, cur = cur, k, cur[k]
        else:
            break
    if container is None:
        return False
    del container[key]
    return True


def finite(x: float | None) -> float | None:
    """x, or None for NaN and infinities (which JSON readers outside Python refuse)."""
    return None if x is None or isinstance(x, bool) or not math.isfinite(x) else float(x)
