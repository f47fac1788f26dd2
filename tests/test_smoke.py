"""End-to-end: the real `personatune` command, as a user runs it, on the tiny model."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fake_openai_server import FakeOpenAIServer
from tests.helpers import PERSONA, REPO
from tests.lm_eval_tasks import write_tasks

_SCRIPT = Path(sys.executable).parent / "personatune"
# The installed console script, exactly as a user calls it (module fallback for unusual layouts).
EXE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "personatune"]


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return subprocess.run([*EXE, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def test_run_tiny_until_stage_2_then_resume(tmp_path):
    r = cli("run", "examples/tiny.yaml", f"run_dir={tmp_path}", "--until", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    run = tmp_path / "tiny"
    assert (run / "config.yaml").exists()
    m = json.loads((run / "manifest.json").read_text())
    assert m["stages"]["01_baseline"]["status"] == "done"
    assert m["stages"]["02_persona"]["status"] == "done"
    assert json.loads((run / "02_persona" / "gate.json").read_text())["passed"] is True
    # Second run: nothing changed, both stages skipped.
    r2 = cli("run", "examples/tiny.yaml", f"run_dir={tmp_path}", "--until", "2")
    assert r2.returncode == 0 and r2.stdout.count("skipped") == 2, r2.stdout
    # Without --until the run goes on into stage 3, where the tiny model's noise cannot be consistent:
    # the gate fails, the run stops there with exit 1, the diagnosis, and the report.
    r3 = cli("run", "examples/tiny.yaml", f"run_dir={tmp_path}")
    assert r3.returncode == 1, r3.stdout + r3.stderr
    assert "GATE FAILED" in r3.stdout and "The pipeline stops at 03_consistency_data" in r3.stdout
    # The tiny model's noise is almost never a consistent, on-task answer (the instrument has let through 1 of 24).
    got = re.search(r"cause: teacher yield: (\d+)/24 prompts", r3.stdout)
    assert got and int(got.group(1)) <= 2, r3.stdout
    assert r3.stdout.rstrip().endswith("verdict: NO-DEPLOY (the 03_consistency_data gate failed)")
    assert (run / "report.html").exists()
    assert not (run / "04_evaluation").exists()
    # Re-running stage 1 on the same model leaves baseline.json byte-identical, so stage 3 is not re-run.
    before = (run / "01_baseline" / "baseline.json").read_bytes()
    r4 = cli("run", "examples/tiny.yaml", f"run_dir={tmp_path}", "--from", "1", "--until", "1")
    assert r4.returncode == 0 and (run / "01_baseline" / "baseline.json").read_bytes() == before, r4.stdout + r4.stderr
    r5 = cli("run", "examples/tiny.yaml", f"run_dir={tmp_path}")
    assert r5.returncode == 1 and "its gate FAILED earlier with these inputs — not re-run" in r5.stdout, r5.stdout


def test_stage1_scores_lm_eval_tasks_and_skips_offline_ones(tmp_path):
    """`lm_eval.tasks` through the CLI: a task with local data is scored; a hub task is skipped offline with its reason."""
    pytest.importorskip("lm_eval", reason="lm_eval is part of the dev extra")
    write_tasks(tmp_path / "cfg" / "tasks")
    cfg = tmp_path / "cfg" / "run.yaml"  # include_path relative to the config file's folder
    cfg.write_text(
        f"name: lme\nrun_dir: {tmp_path}\npersona: {PERSONA}\nmodel:\n  name: tiny\n"
        "sft:\n  capability: false\nlm_eval:\n  tasks: [pt_arith_mc, arc_easy]\n  include_path: tasks\n  limit: 4\n"
    )
    r0 = cli("run", str(cfg), "lm_eval.tasks=[]", "--until", "1")
    assert r0.returncode == 0 and "lm-eval" not in r0.stdout, r0.stdout + r0.stderr
    before = (tmp_path / "lme" / "01_baseline" / "baseline.json").read_bytes()
    r = cli("run", str(cfg), "--until", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    # Adding tasks re-runs stage 1 but leaves baseline.json (the input of stages 3-6) as it was.
    assert (tmp_path / "lme" / "01_baseline" / "baseline.json").read_bytes() == before
    assert (
        "lm-eval pt_arith_mc: acc,none" in r.stdout
        and "lm-eval task arc_easy skipped: its data could not be loaded" in r.stdout
    )
    assert "lm-eval 1/2 task(s) scored, skipped: arc_easy" in r.stdout and "Traceback" not in r.stdout + r.stderr
    lm = json.loads((tmp_path / "lme" / "01_baseline" / "lm_eval.json").read_text())
    assert lm["status"] == "partial" and lm["tasks"]["pt_arith_mc"]["n"] == 4 and "arc_easy" in lm["skipped"]
    man = json.loads((tmp_path / "lme" / "manifest.json").read_text())
    assert "lm_eval" in man["stages"]["01_baseline"]["outputs"]
    # A misspelt task is a one-line error before any model work.
    bad = cli("run", str(cfg), "lm_eval.tasks=[pt_arith_mcq]", "--until", "1", "--force")
    assert bad.returncode == 2 and "lm_eval.tasks: 'pt_arith_mcq' is not in lm-eval's task registry" in bad.stderr
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr


def test_under_a_launch_only_stages_5_and_6_run(tmp_path):
    """Under accelerate launch / torchrun (WORLD_SIZE > 1) a stage that is not done and cannot coordinate ranks is refused:
    every rank would run it at once and write the same files."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", WORLD_SIZE="2")
    r = subprocess.run(
        [*EXE, "run", "examples/tiny.yaml", f"run_dir={tmp_path}", "--until", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert (
        "stage 01_baseline must run in one process" in r.stderr
        and "WORLD_SIZE=2" in r.stderr
        and "`personatune run CONFIG --until 4`" in r.stderr
    )
    assert not (tmp_path / "tiny" / "01_baseline").exists()  # refused before any work or record
    # Done stages are skipped under a launch as before: stage 1 in one process, then the same command launched.
    assert cli("run", "examples/tiny.yaml", f"run_dir={tmp_path}", "--until", "1").returncode == 0
    r2 = subprocess.run(
        [*EXE, "run", "examples/tiny.yaml", f"run_dir={tmp_path}", "--until", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r2.returncode == 0 and "done earlier, inputs unchanged — skipped" in r2.stdout, r2.stdout + r2.stderr


def test_killed_run_resumes_at_the_stage_in_progress(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    p = subprocess.Popen(
        [*EXE, "run", "examples/tiny.yaml", f"run_dir={tmp_path}", "--until", "2"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    manifest = tmp_path / "tiny" / "manifest.json"
    deadline = time.time() + 240
    killed = False
    while time.time() < deadline and p.poll() is None:
        if manifest.exists():
            m = json.loads(manifest.read_text())  # atomic writes: always whole JSON
            if m["stages"].get("02_persona", {}).get("status") == "running":
                p.send_signal(signal.SIGKILL)
                killed = True
                break
        time.sleep(0.02)
    p.wait(timeout=60)
    if not killed:
        pytest.skip("stage 2 finished before it could be killed")
    m = json.loads(manifest.read_text())
    assert m["stages"]["01_baseline"]["status"] == "done"
    assert m["stages"]["02_persona"]["status"] == "running"
    r = cli("run", "examples/tiny.yaml", f"run_dir={tmp_path}", "--until", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SFT preparation (baseline model): done earlier" in r.stdout  # stage 1 not redone
    assert "Persona definition: running" in r.stdout


def test_bad_inputs_are_one_line_errors(tmp_path):
    r = cli("run", "examples/tiny.yaml", "modle.name=tiny")
    assert r.returncode == 2 and "did you mean 'model'" in r.stderr and "Traceback" not in r.stderr
    r = cli("run", "examples/tiny.yaml", f"run_dir={tmp_path}", "model.name=/no/such/model", "--until", "1")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "/no/such/model" in r.stderr
    r = cli("validate", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_overrides_after_options_are_applied(tmp_path):
    # `run CONFIG --from 6 --until 6 model.device=cpu` (the documented accelerate launch form): the key=value after the
    # options is an override (here it reaches stage 1, which names the model), not an unrecognized argument.
    r = cli("run", "examples/tiny.yaml", f"run_dir={tmp_path}", "--until", "1", "model.name=/no/such/model")
    assert (
        r.returncode == 2
        and "/no/such/model" in r.stderr
        and "unrecognized" not in r.stderr
        and "Traceback" not in r.stderr
    ), r.stderr
    r = cli("run", "examples/tiny.yaml", f"run_dir={tmp_path}", "--until", "1", "--bogus")
    assert r.returncode == 2 and "unrecognized arguments: --bogus" in r.stderr


@pytest.mark.parametrize("persona", sorted(p.name for p in (REPO / "examples" / "personas").glob("*.yaml")))
def test_validate_example_personas(persona):
    r = cli("validate", f"examples/personas/{persona}", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["passed"] is True


def test_env_and_config_commands():
    r = cli("env")
    assert r.returncode == 0 and "torch" in r.stdout, r.stderr
    r = cli("config", "examples/quickstart.yaml", "seed=5")
    assert r.returncode == 0 and "seed: 5" in r.stdout
    r = cli("config", "--keys")
    assert r.returncode == 0 and "gates.optimization.max_kl" in r.stdout


def test_score_command_reports_and_skips_bad_lines(tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text(
        json.dumps(
            {
                "id": "a",
                "text": "Aye, crewmate! Chin up, clear skies ahead. All hands on deck!",
                "context": "casual",
                "targets": ["optimistic"],
            }
        )
        + "\n"
        + "not json\n"
        + json.dumps({"id": "b"})
        + "\n"
        + json.dumps({"id": "c", "text": "This is hopeless. Please submit the form.", "context": "casual"})
        + "\n"
    )
    out = tmp_path / "out.jsonl"
    r = cli(
        "score", "--persona", "examples/personas/captain_nova.yaml", "--input", str(inp), "--output", str(out), "--json"
    )
    assert r.returncode == 0, r.stderr
    assert "line 2: not valid JSON" in r.stderr and "line 3: missing string field 'text'" in r.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["id"] for x in rows] == ["a", "c"]
    for x in rows:
        assert {"traits", "violations", "style", "rules", "consistent", "consistency"} <= set(x)
    summary = json.loads(r.stdout)
    assert summary["skipped"] == 2


def test_score_command_with_an_openai_judge_on_a_real_http_server(tmp_path):
    # The judge through the CLI: a real HTTP server on 127.0.0.1 answers every "expressed" question Yes and
    # every "violated" question No (text answers, no logprobs); the CLI must mix them 50/50 with the detectors.
    inp = tmp_path / "in.jsonl"
    inp.write_text(
        "".join(
            json.dumps({"id": str(i), "text": t}) + "\n"
            for i, t in enumerate(
                ["Aye, crewmate! Chin up, clear skies ahead.", "This is hopeless. Please submit the form."]
            )
        )
    )
    plain, judged = tmp_path / "plain.jsonl", tmp_path / "judged.jsonl"
    persona = "examples/personas/captain_nova.yaml"
    assert cli("score", "--persona", persona, "--input", str(inp), "--output", str(plain)).returncode == 0
    with FakeOpenAIServer() as srv:
        srv.responder = lambda body: (
            "No." if "Question: does the reply go against" in body["messages"][-1]["content"] else "Yes"
        )
        r = cli(
            "score",
            "--persona",
            persona,
            "--input",
            str(inp),
            "--output",
            str(judged),
            "--judge",
            "openai",
            "--judge-url",
            srv.base_url,
            "--judge-model",
            "judge-m",
            "--judge-cache",
            str(tmp_path / "cache"),
        )
        n_requests = len(srv.requests)
    assert r.returncode == 0, r.stderr
    assert n_requests == 2 * 6 * 2  # texts x traits x questions
    for a, b in zip(
        [json.loads(x) for x in plain.read_text().splitlines()],
        [json.loads(x) for x in judged.read_text().splitlines()],
    ):
        for t, p in a["traits"].items():
            assert abs(b["traits"][t] - (0.5 * p + 0.5)) < 1e-6  # float32 encoder noise between runs
            assert abs(b["violations"][t] - 0.5 * a["violations"][t]) < 1e-6
    # a judge without its server is a one-line error, exit 2
    bad = cli(
        "score", "--persona", persona, "--input", str(inp), "--output", str(tmp_path / "x.jsonl"), "--judge", "openai"
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "base_url" in bad.stderr, bad.stderr


def test_fit_command_then_score_with_the_evaluator(tmp_path):
    ex = tmp_path / "labelled.jsonl"
    ex.write_text(
        json.dumps(
            {
                "text": "Chin up, crew, the storm will pass and the stars will guide us home!",
                "trait": "optimistic",
                "label": "expressed",
            }
        )
        + "\n"
        + json.dumps({"text": "We are doomed, nothing will ever work out.", "trait": "optimistic", "label": "violated"})
        + "\n"
        + "{broken\n"
        + json.dumps({"text": "Fine.", "trait": "grumpy", "label": "expressed"})
        + "\n"
        + json.dumps({"text": "The form is on page two.", "trait": "optimistic", "label": "neutral"})
        + "\n"
    )
    ev = tmp_path / "evaluator"
    r = cli(
        "fit", "--persona", "examples/personas/captain_nova.yaml", "--examples", str(ex), "--output", str(ev), "--json"
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["n_examples"] == 3 and summary["skipped"] == 2
    assert summary["per_trait"]["optimistic"] == {"expressed": 1, "violated": 1, "neutral": 1}
    assert "line 3: not valid JSON" in r.stderr and "line 4: trait 'grumpy' is not in the persona" in r.stderr
    assert {p.name for p in ev.iterdir()} == {"profile.safetensors", "profile.json", "scorer.json"}
    assert json.loads((ev / "profile.json").read_text())["n_labelled_examples"] == 3
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"id": "a", "text": "Aye, the sun will rise again, crewmate!"}) + "\n")
    s = cli(
        "score",
        "--persona",
        "examples/personas/captain_nova.yaml",
        "--evaluator",
        str(ev),
        "--input",
        str(inp),
        "--output",
        str(tmp_path / "out.jsonl"),
    )
    assert s.returncode == 0, s.stderr
    # an evaluator fitted for one persona is refused for another, in one line
    o = cli(
        "score",
        "--persona",
        "examples/personas/concierge.yaml",
        "--evaluator",
        str(ev),
        "--input",
        str(inp),
        "--output",
        str(tmp_path / "o.jsonl"),
    )
    assert o.returncode == 2 and "different persona" in o.stderr and "Traceback" not in o.stderr
