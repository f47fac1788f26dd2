import json
import os

import pytest

from personatune.config import RunConfig
from personatune.errors import RunDirError
from personatune.gates import GateReport, GateSpec, Measurement, check_gates
from personatune.pipeline import find_stage, run_pipeline
from personatune.rundir import RunDir, atomic_write_json, atomic_write_text
from personatune.stage import Stage, StageResult


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    p = tmp_path / "f.json"
    atomic_write_json(p, {"a": 1})

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(p, "new")
    assert json.loads(p.read_text()) == {"a": 1}
    assert [q.name for q in tmp_path.iterdir()] == ["f.json"]  # no temp file left behind


def test_corrupt_manifest_is_a_clear_error(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(RunDirError, match="corrupt"):
        RunDir(tmp_path)


def _table(calls, fail_in=None, gate_value=1.0):
    def mk(sid, upstream=()):
        def run(cfg, rd):
            calls.append(sid)
            if fail_in == sid:
                raise KeyboardInterrupt
            p = rd.stage_dir(sid) / "out.txt"
            atomic_write_text(p, f"{sid} seed={cfg.seed}")
            gate = GateReport(sid, check_gates([GateSpec("g", 0.5, ">=", "fraction")], {"g": gate_value}))
            return StageResult(outputs={"out": p}, gate=gate, message="ok")

        return Stage(sid, sid, run, config_keys=("seed",), inputs=tuple((u, "out") for u in upstream))

    return (mk("01_a"), mk("02_b", ["01_a"]), mk("03_c", ["02_b"]), Stage("04_d", "d", None, issue=99))


def test_resume_skips_done_stages_after_interrupt(tmp_path):
    cfg = RunConfig(persona="p.yaml", run_dir=str(tmp_path), name="r")
    calls: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, stages=_table(calls, fail_in="02_b"), echo=lambda s: None)
    m = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert m["stages"]["01_a"]["status"] == "done"
    assert m["stages"]["02_b"]["status"] == "interrupted"
    calls.clear()
    lines: list[str] = []
    rc = run_pipeline(cfg, stages=_table(calls), echo=lines.append)
    assert rc == 0
    assert calls == ["02_b", "03_c"]  # 01_a skipped: nothing lost but the stage in progress
    assert any("not implemented yet" in ln and "issue #99" in ln for ln in lines)
    assert (tmp_path / "r" / "config.yaml").exists()


def test_changed_config_or_damaged_output_reruns(tmp_path):
    cfg = RunConfig(persona="p.yaml", run_dir=str(tmp_path), name="r")
    calls: list[str] = []
    run_pipeline(cfg, stages=_table(calls), echo=lambda s: None)
    calls.clear()
    run_pipeline(cfg, stages=_table(calls), echo=lambda s: None)
    assert calls == []
    out = tmp_path / "r" / "02_b" / "out.txt"
    out.unlink()
    run_pipeline(cfg, stages=_table(calls), echo=lambda s: None)
    # Its own output is gone, so 02_b re-runs; it writes the same content again, so 03_c (whose
    # inputs are content hashes) is still up to date and skipped.
    assert calls == ["02_b"]
    calls.clear()
    run_pipeline(cfg.model_copy(update={"seed": 1}), stages=_table(calls), echo=lambda s: None)
    assert calls == ["01_a", "02_b", "03_c"]
    run_pipeline(cfg, stages=_table(calls), echo=lambda s: None)
    calls.clear()
    run_pipeline(cfg, stages=_table(calls), echo=lambda s: None, from_stage="3")
    assert calls == ["03_c"]  # --from re-runs that stage on; earlier done stages stay
    calls.clear()
    run_pipeline(cfg, stages=_table(calls), echo=lambda s: None, force=True, until="1")
    assert calls == ["01_a"]


def test_outputs_edited_by_hand_are_never_overwritten_silently(tmp_path):
    cfg = RunConfig(persona="p.yaml", run_dir=str(tmp_path), name="r")
    calls: list[str] = []
    run_pipeline(cfg, stages=_table(calls), echo=lambda s: None)
    out = tmp_path / "r" / "02_b" / "out.txt"
    out.write_text("edited by hand")
    calls.clear()
    # A plain run would re-run 02_b and overwrite the edit: it stops instead, naming the file and both fixes.
    with pytest.raises(
        RunDirError, match=r"02_b/out.txt changed since stage 2 \(02_b\) wrote it.* --from 3` .* `--from 2`"
    ):
        run_pipeline(cfg, stages=_table(calls), echo=lambda s: None)
    assert calls == [] and out.read_text() == "edited by hand"
    # --from 3 keeps the edit: 02_b is not re-run, 03_c runs on the edited output, and the kept edit is recorded.
    lines: list[str] = []
    assert run_pipeline(cfg, stages=_table(calls), echo=lines.append, from_stage="3") == 0
    assert calls == ["03_c"] and out.read_text() == "edited by hand"
    assert any("02_b/out.txt edited by hand since the stage ran — kept" in ln for ln in lines)
    m = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert m["stages"]["02_b"]["message"] == "ok (outputs edited by hand, kept)"
    calls.clear()
    run_pipeline(cfg, stages=_table(calls), echo=lambda s: None)
    assert calls == []  # the kept edit is now the stage's recorded output: nothing to redo
    # --from 2 discards it: the stage writes its own output again.
    out.write_text("edited again")
    run_pipeline(cfg, stages=_table(calls), echo=lambda s: None, from_stage="2")
    assert calls == ["02_b", "03_c"] and out.read_text() == "02_b seed=0"


def test_failed_gate_stops_with_exit_1_and_gate_json(tmp_path):
    cfg = RunConfig(persona="p.yaml", run_dir=str(tmp_path), name="r")
    calls: list[str] = []
    rc = run_pipeline(cfg, stages=_table(calls, gate_value=0.1), echo=lambda s: None)
    assert rc == 1 and calls == ["01_a"]
    gate = json.loads((tmp_path / "r" / "01_a" / "gate.json").read_text())
    assert gate["passed"] is False and gate["results"][0]["value"] == 0.1
    m = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert m["stages"]["01_a"]["status"] == "gate_failed"


def test_find_stage_names():
    assert find_stage("2") == 1 and find_stage("s3") == 2 and find_stage("04_evaluation") == 3
    assert find_stage("consistency_data") == 2
    from personatune.errors import ConfigError

    with pytest.raises(ConfigError, match="valid stages"):
        find_stage("9")


def test_relative_run_dir(tmp_path, monkeypatch):
    # A relative run_dir (the examples use `runs`) must work: outputs are recorded relative to the run.
    monkeypatch.chdir(tmp_path)
    cfg = RunConfig(persona="p.yaml", run_dir="runs", name="r")
    calls: list[str] = []
    assert run_pipeline(cfg, stages=_table(calls), echo=lambda s: None) == 0
    m = json.loads((tmp_path / "runs" / "r" / "manifest.json").read_text())
    assert m["stages"]["01_a"]["outputs"]["out"]["path"] == "01_a/out.txt"
    calls.clear()
    run_pipeline(cfg, stages=_table(calls), echo=lambda s: None)
    assert calls == []


def test_failed_gate_with_unchanged_inputs_is_not_rerun(tmp_path):
    cfg = RunConfig(persona="p.yaml", run_dir=str(tmp_path), name="r")
    calls: list[str] = []
    assert run_pipeline(cfg, stages=_table(calls, gate_value=0.1), echo=lambda s: None) == 1
    calls.clear()
    lines: list[str] = []
    assert run_pipeline(cfg, stages=_table(calls, gate_value=0.1), echo=lines.append) == 1
    assert calls == []  # same config and inputs: the recorded failed gate is reported, the stage is not re-run
    assert any("FAILED earlier" in ln for ln in lines) and any(ln.startswith("[01_a] gate FAILED") for ln in lines)
    assert run_pipeline(cfg, stages=_table(calls, gate_value=0.1), echo=lambda s: None, force=True, until="1") == 1
    assert calls == ["01_a"]  # --force re-runs it
    calls.clear()
    assert (
        run_pipeline(cfg.model_copy(update={"seed": 3}), stages=_table(calls, gate_value=0.9), echo=lambda s: None) == 0
    )
    assert calls == ["01_a", "02_b", "03_c"]  # a changed config re-runs


def test_keep_going_runs_past_failed_gates_and_still_exits_1(tmp_path):
    cfg = RunConfig(persona="p.yaml", run_dir=str(tmp_path), name="r")
    calls: list[str] = []
    lines: list[str] = []
    rc = run_pipeline(cfg, stages=_table(calls, gate_value=0.1)[:3], echo=lines.append, keep_going=True)
    assert rc == 1 and calls == ["01_a", "02_b", "03_c"]
    assert lines[-1] == "verdict: NO-DEPLOY (gates failed: 01_a, 02_b, 03_c)"
    m = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert [m["stages"][s]["status"] for s in ("01_a", "02_b", "03_c")] == ["gate_failed"] * 3
    calls.clear()
    # With the unimplemented stage at the end of the table the exit code is still 1.
    assert (
        run_pipeline(cfg, stages=_table(calls, gate_value=0.1), echo=lambda s: None, keep_going=True) == 1
        and calls == []
    )


def test_corrupt_gate_json_of_a_failed_stage_is_no_traceback(tmp_path):
    cfg = RunConfig(persona="p.yaml", run_dir=str(tmp_path), name="r")
    calls: list[str] = []
    assert run_pipeline(cfg, stages=_table(calls, gate_value=0.1), echo=lambda s: None) == 1
    for corrupt in ("{not json", "[]", '{"stage": "01_a", "results": 5}'):
        (tmp_path / "r" / "01_a" / "gate.json").write_text(corrupt)
        lines: list[str] = []
        assert run_pipeline(cfg, stages=_table(calls, gate_value=0.1), echo=lines.append) == 1
        assert any("gate.json is missing or unreadable; --force re-runs the stage" in ln for ln in lines), lines


def test_any_stage_exception_marks_the_stage_failed_not_running(tmp_path):
    cfg = RunConfig(persona="p.yaml", run_dir=str(tmp_path), name="r")

    def boom(cfg, rd):
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):
        run_pipeline(cfg, stages=(Stage("01_a", "a", boom),), echo=lambda s: None)
    rec = json.loads((tmp_path / "r" / "manifest.json").read_text())["stages"]["01_a"]
    assert rec["status"] == "failed" and rec["error"] == "ZeroDivisionError: a bug"

    def escapes(cfg, rd):  # an output outside the run directory is refused, and the stage is failed
        return StageResult(outputs={"out": tmp_path})

    with pytest.raises(RunDirError, match="outside the run directory"):
        run_pipeline(cfg, stages=(Stage("01_a", "a", escapes),), echo=lambda s: None, force=True)
    assert json.loads((tmp_path / "r" / "manifest.json").read_text())["stages"]["01_a"]["status"] == "failed"


@pytest.mark.parametrize(
    "entry,expected",
    [
        ("done", "stages.01_a is 'done', not an object"),
        ({"status": 3}, "stages.01_a.status is not text"),
        (
            {"status": "done", "outputs": {"out": {"path": "/etc/passwd", "hash": "h"}}},
            "outputs.out.path '/etc/passwd' is outside the run directory",
        ),
        ({"status": "done", "outputs": {"out": {"path": "../../x", "hash": "h"}}}, "is outside the run directory"),
        ({"status": "done", "outputs": {"out": "x"}}, "stages.01_a.outputs.out needs text 'path' and 'hash'"),
        ({"inputs": [1]}, "stages.01_a.inputs is not an object of hashes"),
    ],
)
def test_damaged_manifest_entries_are_one_clear_error(tmp_path, entry, expected):
    (tmp_path / "manifest.json").write_text(json.dumps({"version": 1, "stages": {"01_a": entry}}))
    with pytest.raises(RunDirError, match="is damaged") as e:
        RunDir(tmp_path)
    assert expected in str(e.value) and "delete that file" in str(e.value)


def test_output_symlinked_out_of_the_run_dir_is_refused(tmp_path):
    rd = RunDir(tmp_path / "run")
    (rd.root / "01_a").mkdir()
    (rd.root / "01_a" / "out").symlink_to(tmp_path)
    rd.set_record("01_a", rd.record("01_a"))
    rd.manifest["stages"]["01_a"].update(status="done", outputs={"out": {"path": "01_a/out", "hash": "h"}})
    with pytest.raises(RunDirError, match="points outside the run directory"):
        rd.output_path("01_a", "out")


def test_unwritable_run_dir_is_found_before_any_stage(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match="is a file, not a folder"):
        RunDir(tmp_path / "file")
    with pytest.raises(RunDirError, match="cannot be created: .* is a file, not a folder"):
        RunDir(tmp_path / "file" / "run")
    rd = RunDir(tmp_path / "ok")
    rd.check_writable()  # no error, and no file left behind
    assert list(rd.root.iterdir()) == []


def test_jsonl_lines_split_on_newline_only_and_json_line_escapes_separators():
    from personatune.rundir import json_line, jsonl_lines

    text = '{"t": "a\u2028b"}\r\n{"t": "c\u0085d\u2029"}\n'
    assert [json.loads(x)["t"] for x in jsonl_lines(text) if x] == ["a\u2028b", "c\u0085d\u2029"]
    line = json_line({"t": "é\u2028\u2029\u0085\ud800"})
    assert line == '{"t": "é\\u2028\\u2029\\u0085\\ud800"}\n' and line.encode("utf-8") and len(line.splitlines()) == 1
    assert json.loads(line) == {"t": "é\u2028\u2029\u0085\ud800"}


def _inconclusive_table(calls):
    """One stage whose gate value passes but rests on 12 of the 137 samples it needs: inconclusive."""

    def run(cfg, rd):
        calls.append("01_a")
        p = rd.stage_dir("01_a") / "out.txt"
        atomic_write_text(p, "a")
        spec = GateSpec("chosen_consistency_rate", 0.85, ">=", "fraction", min_n=137, n_key="data.max_prompts")
        return StageResult(
            outputs={"out": p},
            gate=GateReport("01_a", check_gates([spec], {"chosen_consistency_rate": Measurement(0.9, n=12)})),
        )

    return (Stage("01_a", "a", run, config_keys=("seed",)),)


def test_inconclusive_gate_stops_the_run_and_is_shown_as_its_own_state(tmp_path):
    cfg = RunConfig(persona="p.yaml", run_dir=str(tmp_path), name="r")
    calls: list[str] = []
    lines: list[str] = []
    assert run_pipeline(cfg, stages=_inconclusive_table(calls), echo=lines.append) == 1
    out = "\n".join(lines)
    assert (
        "[01_a] gate INCONCLUSIVE (too few samples to decide)" in out
        and "GATE INCONCLUSIVE" in out
        and "GATE FAILED" not in out
    )
    assert (
        lines[-1]
        == "verdict: NO-DEPLOY (inconclusive at stage 01_a: 125 more samples needed (raise data.max_prompts) for chosen_consistency_rate)"
    )
    gate = json.loads((tmp_path / "r" / "01_a" / "gate.json").read_text())
    assert (
        gate["status"] == "inconclusive" and gate["passed"] is False and gate["results"][0]["status"] == "inconclusive"
    )
    m = json.loads((tmp_path / "r" / "manifest.json").read_text())
    rec = m["stages"]["01_a"]
    assert rec["status"] == "gate_inconclusive" and rec["gate"]["status"] == "inconclusive"
    assert rec["gate"]["results"][0]["min_n"] == 137 and rec["gate"]["results"][0]["n"] == 12
    # Unchanged inputs: not re-run, reported again as inconclusive (not as failed).
    lines.clear()
    assert run_pipeline(cfg, stages=_inconclusive_table(calls), echo=lines.append) == 1 and calls == ["01_a"]
    assert any("was INCONCLUSIVE earlier" in ln for ln in lines) and lines[-1].startswith(
        "verdict: NO-DEPLOY (inconclusive at stage 01_a: 125 more"
    )
    # The report shows the same state and the same reason.
    page = (tmp_path / "r" / "report.html").read_text()
    assert "gate inconclusive" in page and ">INCONCLUSIVE<" in page and "inconclusive at stage 01_a" in page


def test_keep_going_lists_inconclusive_gates_apart(tmp_path):
    cfg = RunConfig(persona="p.yaml", run_dir=str(tmp_path), name="r")
    lines: list[str] = []
    assert run_pipeline(cfg, stages=_inconclusive_table([]), echo=lines.append, keep_going=True) == 1
    assert lines[-1] == "verdict: NO-DEPLOY (gates not passed: 01_a (inconclusive))"


def test_default_progress_lines_reach_the_console_and_log_txt(tmp_path, capsys, monkeypatch):
    # Without an `echo` (the CLI), the pipeline's lines go through logging: the console and the run's log.txt, with
    # the bookkeeping events in log.txt only; a second launched process (RANK=1) writes neither.
    monkeypatch.setattr("personatune.pipeline._write_report", lambda root, echo: None)
    cfg = RunConfig(persona="p.yaml", run_dir=str(tmp_path), name="r")
    assert run_pipeline(cfg, stages=_table([]), until="01_a") == 0
    out = capsys.readouterr().out
    log = (tmp_path / "r" / "log.txt").read_text(encoding="utf-8")
    assert f"run directory: {tmp_path / 'r'}" in out and "[01_a] gate PASSED" in out
    assert "run directory:" in log and "[01_a] gate PASSED\n" in log and "  PASS g = 1 >= 0.5" in log
    assert "01_a started" in log and "01_a started" not in out
    monkeypatch.setenv("RANK", "1")
    assert run_pipeline(cfg, stages=_table([]), until="01_a", force=True) == 0
    assert capsys.readouterr().out == "" and (tmp_path / "r" / "log.txt").read_text(encoding="utf-8") == log
