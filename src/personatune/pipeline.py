"""The literal stage table and the gated runner (the workflow's decision tree).

    Stage 1 baseline ready?          -> continue
    Stage 2 traits defined?          -> continue
    Stage 3 consistency >= 85%?      -> continue
    Stage 4 adherence >= 90%?        -> continue
    Stage 5 KL <= 0.1, persona kept? -> continue
    Stage 6 best round kept          -> continue
    Stage 7 no regression?           -> DEPLOY

The runner writes the resolved config first, then walks the table in order. A stage whose
config sections, inputs and outputs are unchanged since it finished is skipped, so re-running
the same command after a crash or Ctrl-C resumes at the stage that was in progress. A failed
gate stops the run with exit code 1 and the gate's diagnosis. A stage whose gate failed and whose
config and inputs are unchanged is not re-run (it would fail the same way): its recorded gate is
reported again. `--keep-going` (keep_going=True) runs the later stages anyway, for diagnosis — every
failed gate is listed at the end, the exit code stays 1 and the verdict stays NO-DEPLOY.

An inconclusive gate (too few samples to decide, METRICS.md "Evidence") does not pass either: it stops
the run like a failed one, but is shown and recorded as its own state (manifest status `gate_inconclusive`,
gate.json status "inconclusive"), and the verdict says how many more samples would decide it and which
config key buys them: "NO-DEPLOY (inconclusive at stage X: N more samples needed (raise KEY) for ...)".
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable

from personatune import limits
from personatune.config import RunConfig, section_hash, to_yaml
from personatune.cpu_time import cpu_times, steal_note, steal_share
from personatune.errors import ConfigError, PersonatuneError
from personatune.gates import GateReport
from personatune.logs import FILE_ONLY, run_logging
from personatune.records import STAGE_TITLES, GateRecord, RecordError, read_record, write_record
from personatune.rundir import RunDir, StageRecord, atomic_write_text, file_hash
from personatune.stage import Stage
from personatune.stages import (
    s1_baseline,
    s2_persona,
    s3_consistency_data,
    s4_evaluation,
    s5_optimization,
    s6_iterations,
    s7_final,
)
from personatune.verdict import stop_detail, stop_reason  # noqa: F401 (stop_reason is also imported from here)

log = logging.getLogger(__name__)

# The one table of stages, in run order (ids and titles: records.STAGE_TITLES). `run=None` marks a stage that is not implemented yet.
STAGES: tuple[Stage, ...] = (
    Stage(
        "01_baseline",
        STAGE_TITLES["01_baseline"],
        s1_baseline.run,
        config_keys=("model", "sft", "lm_eval", "seed", "persona"),
        version=2,
        issue=5,
    ),
    Stage(
        "02_persona", STAGE_TITLES["02_persona"], s2_persona.run, config_keys=("persona", "gates"), version=1, issue=2
    ),
    Stage(
        "03_consistency_data",
        STAGE_TITLES["03_consistency_data"],
        s3_consistency_data.run,
        config_keys=("data", "scorer", "gates", "seed", "model", "threads"),
        inputs=(("01_baseline", "baseline"), ("02_persona", "persona")),
        version=3,
        issue=4,
    ),
    Stage(
        "04_evaluation",
        STAGE_TITLES["04_evaluation"],
        s4_evaluation.run,
        config_keys=("gates", "seed", "data", "scorer", "model", "eval"),
        inputs=(("02_persona", "persona"), ("03_consistency_data", "train"), ("03_consistency_data", "heldout")),
        version=3,
        issue=4,
    ),
    Stage(
        "05_optimization",
        STAGE_TITLES["05_optimization"],
        s5_optimization.run,
        config_keys=("model", "train", "gates", "data", "scorer", "seed", "eval"),
        inputs=(
            ("01_baseline", "baseline"),
            ("02_persona", "persona"),
            ("03_consistency_data", "train"),
            ("03_consistency_data", "heldout"),
            ("04_evaluation", "evaluator"),
        ),
        version=1,
        issue=5,
        multi_process=True,
    ),
    Stage(
        "06_iterations",
        STAGE_TITLES["06_iterations"],
        s6_iterations.run,
        config_keys=("model", "train", "iterations", "gates", "data", "scorer", "seed", "eval"),
        inputs=(
            ("01_baseline", "baseline"),
            ("02_persona", "persona"),
            ("03_consistency_data", "train"),
            ("03_consistency_data", "heldout"),
            ("04_evaluation", "evaluator"),
            ("05_optimization", "model"),
        ),
        version=1,
        issue=5,
        multi_process=True,
    ),
    Stage(
        "07_final_eval",
        STAGE_TITLES["07_final_eval"],
        s7_final.run,
        config_keys=("model", "train", "gates", "data", "scorer", "lm_eval", "seed", "eval"),
        inputs=(
            ("01_baseline", "baseline"),
            ("02_persona", "persona"),
            ("03_consistency_data", "heldout"),
            ("04_evaluation", "evaluator"),
            ("06_iterations", "model"),
        ),
        version=1,
        issue=6,
    ),
)


def _world_size() -> int:
    """Processes in this launch (torchrun / accelerate launch set WORLD_SIZE); 1 when not launched."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def find_stage(name: str, stages: tuple[Stage, ...] = STAGES) -> int:
    """Index of a stage given as '3', 's3', '03', '03_consistency_data' or 'consistency_data'.

    Raises:
        ConfigError: no such stage (lists the valid names).
    """
    key = name.strip().lower().lstrip("s")
    for i, st in enumerate(stages):
        num = st.id.split("_", 1)[0]
        if key in (st.id, num, str(int(num)), st.id.split("_", 1)[1]) or name == st.id:
            return i
    valid = ", ".join(f"{int(s.id[:2])} ({s.id})" for s in stages)
    raise ConfigError(f"unknown stage {name!r}; valid stages: {valid}")


def _stage_key_extra(cfg: RunConfig, st: Stage) -> str:
    """The stage's version, and the persona file's content hash when the stage reads the persona."""
    extra = f"v{st.version}"
    if "persona" in st.config_keys:
        extra += file_hash(cfg.persona) if Path(cfg.persona).is_file() else "missing"
    return extra


def stage_cache_key(cfg: RunConfig, st: Stage) -> str:
    """The config part of a stage's cache key: its config sections and its version.

    The persona enters by its file's content, not its path, so a run directory whose checkout was moved or copied
    elsewhere (the config then names the same persona at another absolute path) keeps its finished stages.
    """
    keys = tuple(k for k in st.config_keys if k != "persona")
    return section_hash(cfg, keys, extra=_stage_key_extra(cfg, st))


def legacy_stage_cache_key(cfg: RunConfig, st: Stage) -> str:
    """The key as recorded before 2026-12-01 (the persona's path hashed beside its content): a record carrying it
    still counts as unchanged, so run directories written then keep their finished stages."""
    return section_hash(cfg, st.config_keys, extra=_stage_key_extra(cfg, st))


def _event(line: str) -> None:
    """One bookkeeping line in the run's log.txt (attached by `run_pipeline`), not on the console."""
    log.info(line, extra=FILE_ONLY)


def _record_end(rd: RunDir, stage: str, rec: StageRecord, status: str, error: str) -> None:
    """Record a stage that ended without a result (failed or interrupted), if the run directory still takes writes."""
    rec.status, rec.error = status, limits.shorten(error, 1000)
    try:
        rd.set_record(stage, rec)
        _event(f"{stage} {status}: {rec.error}")
    except OSError:
        pass  # the error being raised says more than this one would (e.g. a full disk)


def _recorded_gate(path: Path) -> GateReport | None:
    """A stage's recorded gate.json; None when it is missing or unreadable."""
    try:
        return read_record(GateRecord, path).to_report()
    except RecordError:
        return None


def gate_record_status(gate: GateReport) -> str:
    """The manifest status of a stage that finished with this gate: done, gate_inconclusive or gate_failed."""
    return {"pass": "done", "inconclusive": "gate_inconclusive"}.get(gate.status, "gate_failed")


def check_run_inputs(cfg: RunConfig) -> None:
    """Check, in about a second and before stage 1, what the stages would otherwise find broken much later.

    The persona file must load (schema, every problem listed), and every model the config names
    (model.name; a teacher or judge model run in-process) must resolve: a local path that exists, a
    built-in name, or a Hugging Face id that is cached or known to the Hub (models.check_model_available).

    Raises:
        PersonaSpecError: the persona file is missing or invalid.
        ModelNotFoundError: a model name cannot be resolved.
    """
    from personatune.models import check_model_available
    from personatune.persona import load_persona

    load_persona(cfg.persona)
    names = [cfg.model.name]
    if cfg.data.teacher.backend == "hf" and cfg.data.teacher.model:
        names.append(cfg.data.teacher.model)
    if cfg.scorer.judge.backend == "hf" and cfg.scorer.judge.model:
        names.append(cfg.scorer.judge.model)
    for name in dict.fromkeys(names):
        check_model_available(name)


def _write_report(root: Path, echo: Callable[[str], None]) -> None:
    """Rebuild report.html from the run directory (also after a failed gate: it shows the diagnosis)."""
    from personatune.report import build_report

    try:
        echo(f"report: {build_report(root)}")
    except Exception as e:  # noqa: BLE001 - the report never decides the run's outcome (a hostile file in the run dir included)
        echo(f"report could not be written: {type(e).__name__}: {limits.shorten(str(e), 300)}")


class _GateStops:
    """The gates of this run that did not pass (failed or inconclusive), in order, and what the runner does about
    each: stop there (report, detail and verdict lines), or go on for diagnosis under --keep-going.

    Args:
        rd: the run directory.
        root: its folder as the config names it (shown in the report line).
        keep_going: go on past a gate that did not pass.
        echo: where progress lines go.
    """

    def __init__(self, rd: RunDir, root: Path, keep_going: bool, echo: Callable[[str], None]) -> None:
        self.rd, self.root, self.keep_going, self.echo = rd, root, keep_going, echo
        self.failed: list[str] = []
        self.inconclusive: list[str] = []

    def stop_here(self, st_id: str, gate: GateReport | None) -> bool:
        """Record a gate that did not pass; True when the run must stop here."""
        self.failed.append(st_id)
        word = "failed"
        if gate is not None and gate.status == "inconclusive":
            self.inconclusive.append(st_id)
            word = "inconclusive"
        if self.keep_going:
            self.echo(
                f"--keep-going: going on past the {word} {st_id} gate (diagnosis only; the verdict stays NO-DEPLOY)"
            )
            return False
        self.echo(f"The pipeline stops at {st_id}. Details: {self.rd.stage_dir(st_id) / 'gate.json'}")
        _write_report(self.root, self.echo)
        self.echo(stop_detail(st_id, gate))
        self.echo(f"verdict: NO-DEPLOY ({stop_reason(st_id, gate)})")
        return True


def run_pipeline(
    cfg: RunConfig,
    *,
    from_stage: str | None = None,
    until: str | None = None,
    force: bool = False,
    keep_going: bool = False,
    echo: Callable[[str], None] | None = None,
    stages: tuple[Stage, ...] = STAGES,
) -> int:
    """Run the stages of the table in order, skipping the ones that are already done.

    Args:
        cfg: the resolved run config.
        from_stage: re-run from this stage on, even if done (earlier stages must be done or will run).
        until: stop after this stage.
        force: re-run every selected stage even if its inputs are unchanged.
        keep_going: after a failed gate, run the later stages anyway (diagnosis only: the exit code is
            still 1 and the verdict NO-DEPLOY).
        echo: where progress lines go; None (the CLI): the `personatune.pipeline` logger, so they reach the
            console and the run's log.txt, from the main rank only under a launcher (personatune.logs).
        stages: the stage table (tests pass their own).

    Returns:
        Exit code: 0 when every selected stage passed (or the table ends at an unimplemented stage),
        1 when a gate failed (with keep_going: when any gate failed).

    Raises:
        PersonatuneError: bad input found by a stage (shown as one line by the CLI).
        KeyboardInterrupt: re-raised after the stage is marked interrupted.
    """
    # log.txt receives the run's events in every case; the console handler only when the lines are not sent elsewhere.
    with run_logging(Path(cfg.run_dir) / cfg.name, console=echo is None):
        return _run_stages(cfg, from_stage, until, force, keep_going, echo or log.info, stages)


def _run_stages(
    cfg: RunConfig,
    from_stage: str | None,
    until: str | None,
    force: bool,
    keep_going: bool,
    echo: Callable[[str], None],
    stages: tuple[Stage, ...],
) -> int:
    """`run_pipeline` with its progress lines going to `echo`."""
    root = Path(cfg.run_dir) / cfg.name
    rd = RunDir(root)
    rd.check_writable()
    # The resolved config is written before any work, so a run can always be reproduced.
    atomic_write_text(root / "config.yaml", to_yaml(cfg))
    _event(f"run started: stages {from_stage or 'first'}..{until or 'last'} force={force}")
    start_i = find_stage(from_stage, stages) if from_stage else 0
    stop_i = find_stage(until, stages) if until else len(stages) - 1
    echo(f"run directory: {root}")
    t_run = time.time()
    stops = _GateStops(rd, root, keep_going, echo)

    for i, st in enumerate(stages):
        if i > stop_i:
            break
        n = f"[{i + 1}/{len(stages)}] {st.title}"
        if st.run is None:
            missing = ", ".join(
                f"{int(s.id[:2])} {s.title} (issue #{s.issue})" for s in stages[i : stop_i + 1] if s.run is None
            )
            echo(f"{n}: not implemented yet — the run stops here. Missing stages: {missing}.")
            _event(f"stopped at unimplemented stage {st.id}")
            _write_report(root, echo)
            return 1 if stops.failed else 0
        key = stage_cache_key(cfg, st)
        inputs = {f"{up}:{name}": rd.record(up).outputs.get(name, {}).get("hash", "missing") for up, name in st.inputs}
        rec = rd.record(st.id)
        rerun = force or i >= start_i and from_stage is not None
        same_config = rec.config_hash == key or rec.config_hash == legacy_stage_cache_key(cfg, st)
        unchanged = not rerun and same_config and rec.inputs == inputs and rd.outputs_intact(rec)
        if not unchanged and not rerun and same_config and rec.inputs == inputs and rec.status == "done":
            # Outputs edited by hand: kept when --from is past this stage, else the run stops (never overwritten).
            if edited := rd.keep_edited_outputs(st.id, rec, before_from=i < start_i):
                _event(f"{st.id} outputs edited by hand, kept: {', '.join(edited)}")
                echo(
                    f"  {st.id}: {', '.join(edited)} edited by hand since the stage ran — kept; later stages read the edits"
                )
                unchanged = True
        if unchanged and rec.config_hash != key:
            rec.config_hash = key  # a legacy key: recorded again in today's form
            rd.set_record(st.id, rec)
        if unchanged and rec.status == "done":
            echo(f"{n}: done earlier, inputs unchanged — skipped" + (f" ({rec.message})" if rec.message else ""))
            continue
        if unchanged and rec.status in ("gate_failed", "gate_inconclusive"):
            # Same config, same inputs: the stage would end the same way. --force or --from re-runs it.
            word = "was INCONCLUSIVE" if rec.status == "gate_inconclusive" else "FAILED"
            echo(
                f"{n}: its gate {word} earlier with these inputs — not re-run (--force re-runs it)"
                + (f" ({rec.message})" if rec.message else "")
            )
            recorded = _recorded_gate(rd.stage_dir(st.id) / "gate.json")
            echo(
                recorded.summary()
                if recorded is not None
                else f"  ({st.id}/gate.json is missing or unreadable; --force re-runs the stage and writes it again)"
            )
            if stops.stop_here(st.id, recorded):
                return 1
            continue
        world = _world_size()
        if world > 1 and not st.multi_process:
            # Every rank would run it at once and write the same files; stages 5 and 6 coordinate their ranks, no other does.
            multi = [int(s.id[:2]) for s in stages if s.multi_process]
            raise ConfigError(
                f"stage {st.id} must run in one process, but this is one of {world} launched processes (WORLD_SIZE={world}) and the "
                f"stage is not done with this config (a changed key=value such as model.device counts as a change); fix: run stages "
                f"1-{min(multi) - 1} before the launch and {max(multi) + 1}- after it without the launcher (`personatune run CONFIG "
                f"--until {min(multi) - 1}`, `--from {max(multi) + 1}`), with the same config and overrides; only stages "
                f"{', '.join(map(str, multi))} run under accelerate launch"
            )
        echo(f"{n}: running …")
        rec, cpu0 = StageRecord(status="running", config_hash=key, inputs=inputs, started=time.time()), cpu_times()
        rd.set_record(st.id, rec)
        _event(f"{st.id} started")
        try:
            result = st.run(cfg, rd)
            rec.finished = time.time()
            rec.seconds = round(rec.finished - (rec.started or rec.finished), 3)
            rec.cpu_steal = steal_share(cpu0, cpu_times())
            rec.outputs = rd.hash_outputs(result.outputs)
            rec.message = result.message
            if result.gate is not None:
                # The gate result reaches disk before the pipeline goes on or stops.
                write_record(rd.stage_dir(st.id) / "gate.json", GateRecord, result.gate.to_dict())
                rec.gate = GateRecord.of(result.gate).manifest_summary()
        except KeyboardInterrupt:
            _record_end(rd, st.id, rec, "interrupted", "KeyboardInterrupt")
            raise
        except Exception as e:  # noqa: BLE001 - whatever went wrong, the manifest says "failed", never "running"; re-raised for the CLI
            _record_end(
                rd, st.id, rec, "failed", str(e) if isinstance(e, PersonatuneError) else f"{type(e).__name__}: {e}"
            )
            raise
        passed = result.gate is None or result.gate.passed
        rec.status = "done" if result.gate is None else gate_record_status(result.gate)
        rd.set_record(st.id, rec)
        _event(f"{st.id} {rec.status} in {rec.seconds}s: {result.message}")
        if result.gate is not None:
            echo(result.gate.summary())
        word = {"done": "done", "gate_inconclusive": "GATE INCONCLUSIVE"}.get(rec.status, "GATE FAILED")
        echo(f"{n}: {word} in {rec.seconds:.1f}s{steal_note(rec.cpu_steal)} — {result.message}")
        if not passed and stops.stop_here(st.id, result.gate):
            return 1
    echo(f"finished stages up to {stages[stop_i].id} in {time.time() - t_run:.1f}s")
    _write_report(root, echo)
    if stops.failed:
        which = ", ".join(f"{s} (inconclusive)" if s in stops.inconclusive else s for s in stops.failed)
        head = "gates not passed" if stops.inconclusive else "gates failed"
        echo(f"{head}: {which} (details: each stage's gate.json)")
        echo(f"verdict: NO-DEPLOY ({head}: {which})")
        return 1
    final = rd.record(stages[-1].id)
    if stop_i == len(stages) - 1 and final.message:
        echo(f"verdict: {final.message}")
    return 0
