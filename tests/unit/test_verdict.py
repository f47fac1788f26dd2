"""The run's verdict (personatune.verdict): one definition for `personatune run` and the report header.

The pure functions are tested on constructed gates; then small stage tables are run through the real pipeline
and the report of the run directory must show the verdict and reason the pipeline printed in its last line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from personatune import verdict
from personatune.config import RunConfig
from personatune.gates import GateReport, GateSpec, Measurement, check_gates
from personatune.pipeline import run_pipeline
from personatune.pipeline import stop_reason as pipeline_stop_reason
from personatune.report import render_report
from personatune.report.load import load_run
from personatune.rundir import atomic_write_text
from personatune.stage import Stage, StageResult


def _report(
    specs: list[GateSpec], measured: dict[str, Measurement | None], stage: str = "03_consistency_data"
) -> GateReport:
    return GateReport(stage, check_gates(specs, measured))


@pytest.mark.parametrize(
    "direction,threshold,value,shown",
    [
        (">=", 0.85, 0.624031, "0.624 < 0.85"),
        (">", 0.0, 0.0, "0 <= 0"),
        ("<=", 0.1, 0.1432, "0.1432 > 0.1"),
        ("<", 0.15, 0.2, "0.2 >= 0.15"),
    ],
)
def test_a_failed_result_says_how_it_misses(direction, threshold, value, shown):
    g = _report([GateSpec("m", threshold, direction, "unit")], {"m": Measurement(value, n=10)})
    assert verdict.gate_parts(g) == [f"gate m {shown}"] == verdict.gate_parts(g.to_dict())
    assert (
        verdict.gate_parts(
            _report(
                [GateSpec("m", threshold, direction, "unit")],
                {"m": Measurement(threshold - 1 if "<" in direction else threshold + 1)},
            )
        )
        == []
    )


def test_detail_lists_failed_then_inconclusive_and_counts_the_rest():
    specs = [
        GateSpec("a", 0.85, ">=", "f", min_n=137, n_key="data.max_prompts"),
        GateSpec("b", 0.85, ">=", "f"),
        GateSpec("c", 0.1, "<=", "nats/token"),
        GateSpec("d", 0.9, ">=", "f"),
        GateSpec("e", 0.9, ">=", "f"),
    ]
    g = _report(
        specs,
        {
            "a": Measurement(1.0, n=129),
            "b": Measurement(0.624, n=516),
            "c": None,
            "d": Measurement(0.5),
            "e": Measurement(0.95),
        },
    )
    assert verdict.gate_parts(g) == [
        "gate b 0.624 < 0.85",
        "gate c not measured",
        "gate d 0.5 < 0.9",
        "a inconclusive (n=129 < 137, raise data.max_prompts)",
    ]
    assert (
        verdict.stop_detail("03_consistency_data", g)
        == "stopped at stage 3: gate b 0.624 < 0.85; gate c not measured; gate d 0.5 < 0.9; 1 more"
    )
    assert verdict.stop_detail("x", None) == "stopped at x: gate failed (gate.json unreadable)"


def test_stop_reason_is_the_pipelines():
    failed = _report([GateSpec("b", 0.85, ">=", "f")], {"b": Measurement(0.6, n=500)})
    undecided = _report(
        [GateSpec("a", 0.85, ">=", "f", min_n=137, n_key="data.max_prompts")], {"a": Measurement(0.9, n=12)}
    )
    for g in (failed, undecided, None):
        assert verdict.stop_reason("03_consistency_data", g) == pipeline_stop_reason("03_consistency_data", g)
        if g is not None:  # the same words from the gate.json document as from the GateReport
            assert verdict.stop_reason("03_consistency_data", g.to_dict()) == pipeline_stop_reason(
                "03_consistency_data", g
            )
    assert (
        verdict.stop_reason("s", undecided)
        == "inconclusive at stage s: 125 more samples needed (raise data.max_prompts) for a"
    )
    # gate.json written before the status field: the status follows from the results.
    old = {k: v for k, v in undecided.to_dict().items() if k != "status"}
    assert verdict.gate_status(old) == "inconclusive" and verdict.stop_reason("s", old).startswith(
        "inconclusive at stage s: 125 more"
    )


def test_run_verdict_from_final_json_and_no_verdict_yet():
    ids = ["01_baseline", "07_final_eval"]
    done = {
        "01_baseline": {"status": "done"},
        "07_final_eval": {"status": "done", "message": "DEPLOY: consistency 0.30 -> 0.72"},
    }
    v = verdict.run_verdict(ids, done, {}, {"verdict": "DEPLOY"})
    assert (v.verdict, v.reason, v.headline()) == ("DEPLOY", "stage 7", "DEPLOY — consistency 0.30 -> 0.72")
    # A final.json left from an earlier attempt while stage 7 runs again (or crashed) decides nothing.
    for st in ("running", "failed", "interrupted"):
        assert (
            verdict.run_verdict(ids, {**done, "07_final_eval": {"status": st}}, {}, {"verdict": "DEPLOY"}).headline()
            == "no verdict yet"
        )
    assert verdict.run_verdict(ids, {}, {}, None).verdict is None
    assert verdict.run_verdict(ids, {"01_baseline": "junk"}, "junk", ["junk"]).verdict is None  # type: ignore[arg-type]


# --- agreement with `personatune run` ----------------------------------------------------------------
def _table(values: dict[str, float], *, min_n: int | None = None) -> tuple[Stage, ...]:
    """Stages 01_a, 02_b, 03_c; each gates metric `rate_<id>` at >= 0.5 on the value given (n = 12)."""

    def mk(sid: str) -> Stage:
        def run(cfg, rd):
            p = rd.stage_dir(sid) / "out.txt"
            atomic_write_text(p, sid)
            spec = GateSpec(
                f"rate_{sid}", 0.5, ">=", "fraction", min_n=min_n, n_key="data.max_prompts" if min_n else ""
            )
            return StageResult(
                outputs={"out": p},
                gate=GateReport(sid, check_gates([spec], {f"rate_{sid}": Measurement(values[sid], n=12)})),
                message=f"{sid} done",
            )

        return Stage(sid, sid, run, config_keys=("seed",))

    return tuple(mk(s) for s in ("01_a", "02_b", "03_c"))


def _agree(root: Path, last_line: str) -> str:
    """The report shows the verdict and reason of the pipeline's last line; returns its header's detail line."""
    v = load_run(root).verdict(None)
    assert last_line == f"verdict: {v.verdict} ({v.reason})"
    page = render_report(root)
    header = page[page.index("<header>") : page.index("</header>")]
    assert f'class="badge verdict b-fail">{v.verdict}<' in header and "no verdict yet" not in page
    return header


def test_report_agrees_with_the_cli_when_a_gate_stops_the_run(tmp_path):
    lines: list[str] = []
    cfg = RunConfig(persona="p.yaml", run_dir=str(tmp_path), name="r")
    assert run_pipeline(cfg, stages=_table({"01_a": 0.9, "02_b": 0.312, "03_c": 0.9}), echo=lines.append) == 1
    assert lines[-1] == "verdict: NO-DEPLOY (the 02_b gate failed)"
    header = _agree(tmp_path / "r", lines[-1])
    assert "<b>NO-DEPLOY</b> — stopped at stage 2: gate rate_02_b 0.312 &lt; 0.5</div>" in header
    # The report the pipeline itself wrote when it stopped says the same.
    assert "stopped at stage 2: gate rate_02_b 0.312 &lt; 0.5" in (tmp_path / "r" / "report.html").read_text()


def test_report_agrees_with_the_cli_on_an_inconclusive_gate(tmp_path):
    lines: list[str] = []
    cfg = RunConfig(persona="p.yaml", run_dir=str(tmp_path), name="r")
    assert run_pipeline(cfg, stages=_table({"01_a": 0.9, "02_b": 0.9, "03_c": 0.9}, min_n=30), echo=lines.append) == 1
    header = _agree(tmp_path / "r", lines[-1])
    assert lines[-1].startswith(
        "verdict: NO-DEPLOY (inconclusive at stage 01_a: 18 more samples needed (raise data.max_prompts)"
    )
    assert "stopped at stage 1: rate_01_a inconclusive (n=12 &lt; 30, raise data.max_prompts)</div>" in header


def test_report_agrees_with_the_cli_under_keep_going(tmp_path):
    lines: list[str] = []
    cfg = RunConfig(persona="p.yaml", run_dir=str(tmp_path), name="r")
    assert (
        run_pipeline(cfg, stages=_table({"01_a": 0.2, "02_b": 0.9, "03_c": 0.4}), echo=lines.append, keep_going=True)
        == 1
    )
    assert lines[-1] == "verdict: NO-DEPLOY (gates failed: 01_a, 03_c)"
    header = _agree(tmp_path / "r", lines[-1])
    assert "— gates failed: stage 1: gate rate_01_a 0.2 &lt; 0.5; stage 3: gate rate_03_c 0.4 &lt; 0.5</div>" in header
    # Fixed and re-run: stage 1 now fails alone and stops the run; stage 3's failed record is from before and does not count.
    lines.clear()
    assert (
        run_pipeline(
            cfg.model_copy(update={"seed": 1}),
            stages=_table({"01_a": 0.1, "02_b": 0.9, "03_c": 0.4}),
            echo=lines.append,
        )
        == 1
    )
    assert lines[-1] == "verdict: NO-DEPLOY (the 01_a gate failed)"
    assert json.loads((tmp_path / "r" / "manifest.json").read_text())["stages"]["03_c"]["status"] == "gate_failed"
    header = _agree(tmp_path / "r", lines[-1])
    assert "stopped at stage 1: gate rate_01_a 0.1 &lt; 0.5</div>" in header
