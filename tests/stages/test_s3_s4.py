"""Stages 1-4 end to end on the tiny model, with the teacher behind a real OpenAI-compatible HTTP
server on 127.0.0.1 (tests/fake_openai_server.py) that writes scripted persona responses.

The scripted teacher (tests/helpers.py) answers like the persona (its positive exemplars and signature
phrases) when the system prompt is the persona's, like the flipped trait's negatives when a trait is
inverted, and in the wrong voice when the style is broken — so every code path of stages 3 and 4 sees
real data.
"""

from __future__ import annotations

import json

import pytest

from personatune.persona import load_persona
from personatune.pipeline import run_pipeline
from tests.fake_openai_server import FakeOpenAIServer
from tests.helpers import PERSONA, scripted_teacher, teacher_config


def test_stages_1_to_4_with_scripted_teacher(tmp_path):
    spec = load_persona(PERSONA)
    with FakeOpenAIServer() as srv:
        srv.responder = scripted_teacher(spec)
        cfg = teacher_config(tmp_path, srv.base_url)
        lines: list[str] = []
        rc = run_pipeline(cfg, until="4", echo=lines.append)
        n_requests = len(srv.requests)
    out = "\n".join(lines)
    run = tmp_path / "t"
    m = json.loads((run / "manifest.json").read_text())
    assert m["stages"]["03_consistency_data"]["status"] == "done", out
    pairs = [json.loads(x) for x in (run / "03_consistency_data" / "train" / "pairs.jsonl").read_text().splitlines()]
    assert pairs and {p["rejected_kind"] for p in pairs} == {"baseline", "trait_flipped", "style_broken"}
    assert all(p["prompt"][0]["role"] != "system" for p in pairs)  # the persona goes into the weights, not the prompt
    # Every rejected answer carries its measured on_task, which stage 4 reads to leave off-task flips out.
    assert all(0.0 <= p["rejected_on_task"] <= 1.0 for p in pairs)
    # The dataset loads with `datasets` in TRL's conversational preference format.
    import datasets

    ds = datasets.load_dataset(
        "json", data_files=str(run / "03_consistency_data" / "train" / "pairs.jsonl"), split="train"
    )
    assert {"prompt", "chosen", "rejected", "context", "violated_traits"} <= set(ds.column_names)
    card = (run / "03_consistency_data" / "README.md").read_text()
    assert "Coverage" in card and "optimistic" in card
    # Stage 4 ran: the evaluator exists and the gate result is on disk, pass or fail.
    assert (run / "04_evaluation" / "evaluator").is_dir()
    gate4 = json.loads((run / "04_evaluation" / "gate.json").read_text())
    assert any(r["metric"].startswith("auroc[") for r in gate4["results"])
    report = json.loads((run / "04_evaluation" / "report.json").read_text())
    assert "baseline_persona" in report and report["n_heldout"] > 0
    # The answers behind each trait's AUROC are written out to read, one section per trait with its measured AUROC.
    errors = (run / "04_evaluation" / "detector_errors.md").read_text()
    for t in spec.trait_ids:
        a = report["auroc"][t]["auroc"]
        assert f"## {t}: " + (f"AUROC {a:.3f}" if a is not None else "AUROC not measured") in errors
        assert report["auroc"][t]["n_off_task"] >= 0
    # The baseline's samples carry their sampling fingerprint, so stages 5-7 reuse them while it matches the config.
    from personatune.baseline_samples import reusable_baseline_texts
    from personatune.rundir import RunDir, read_jsonl

    held = read_jsonl(run / "03_consistency_data" / "heldout" / "prompts.jsonl")
    texts = reusable_baseline_texts(cfg, RunDir(run), held)
    assert texts == [r["response"] for r in json.loads((run / "04_evaluation" / "baseline_samples.json").read_text())]
    assert reusable_baseline_texts(cfg.model_copy(update={"seed": cfg.seed + 1}), RunDir(run), held) is None
    assert rc in (0, 1)
    assert n_requests > 0
    # A held-out pair edited by hand that lost its rejected answer: stage 4, re-run, names the file, line and field
    # before any model work, and leaves the file as it was.
    from personatune.errors import DataError

    held_pairs = run / "03_consistency_data" / "heldout" / "pairs.jsonl"
    rows = held_pairs.read_text().splitlines()
    del (broken := json.loads(rows[1]))["rejected"]
    held_pairs.write_text("\n".join([rows[0], json.dumps(broken), *rows[2:]]) + "\n")
    before = held_pairs.read_bytes()
    with pytest.raises(DataError, match=rf"{held_pairs} line 2: field 'rejected' is missing .* fix: correct or"):
        run_pipeline(cfg, from_stage="4", until="4", echo=lines.append)
    assert held_pairs.read_bytes() == before


def test_teacher_that_cannot_stay_in_persona_fails_stage_3_with_diagnosis(tmp_path):
    spec = load_persona(PERSONA)
    with FakeOpenAIServer() as srv:
        srv.responder = scripted_teacher(spec, good=False)
        lines: list[str] = []
        rc = run_pipeline(
            teacher_config(tmp_path, srv.base_url, **{"data.max_prompts": 18}), until="4", echo=lines.append
        )
    assert rc == 1
    gate = json.loads((tmp_path / "t" / "03_consistency_data" / "gate.json").read_text())
    assert gate["passed"] is False
    r = next(x for x in gate["results"] if x["metric"] == "chosen_consistency_rate")
    assert r["value"] is None  # no prompt kept: no chosen response to measure, and a missing measurement fails
    assert any("0/18 prompts got a consistent teacher response" in d for d in gate["diagnosis"])
    assert any("teacher yield: 0/18" in d for d in gate["diagnosis"])
    assert any("stronger teacher" in s for s in gate["next_steps"])
    assert not (tmp_path / "t" / "04_evaluation" / "gate.json").exists()  # stopped at stage 3


def test_interrupted_generation_resumes_from_cache(tmp_path):
    spec = load_persona(PERSONA)
    with FakeOpenAIServer() as srv:
        srv.responder = scripted_teacher(spec)
        srv.fail_after(10, 500)  # the server dies after 10 completions
        cfg = teacher_config(
            tmp_path,
            srv.base_url,
            **{"data.max_prompts": 12, "data.teacher.max_retries": 0, "data.contrast_best_of": 1},
        )
        from personatune.errors import PersonatuneError

        with pytest.raises(PersonatuneError):
            run_pipeline(cfg, until="3", echo=lambda s: None)
        first = srv.ok_count
        cache = tmp_path / "t" / "03_consistency_data" / "openai_cache" / "responses.jsonl"
        # What the client received and recorded before the crash (a response the server sent while the
        # client was already tearing down never arrived, so it is rightly asked for again).
        cached = len({ln for ln in cache.read_text().splitlines() if ln.strip()})
        srv.fail_after(None)
        srv.requests.clear()
        run_pipeline(cfg, until="3", echo=lambda s: None)
        resumed = len(srv.requests)
    m = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert m["stages"]["03_consistency_data"]["status"] in ("done", "gate_failed")
    assert first >= 10 and 1 <= cached <= first
    # Only the requests whose answers had not been recorded are sent again: 12 prompts x (2 candidates +
    # 2 trait flips + 1 style-broken) = 60 teacher requests in all (the baseline contrast is local).
    assert resumed == 60 - cached


def test_teacher_expands_the_prompt_bank(tmp_path):
    spec = load_persona(PERSONA)
    with FakeOpenAIServer() as srv:
        srv.responder = scripted_teacher(spec)
        rc = run_pipeline(
            teacher_config(
                tmp_path,
                srv.base_url,
                **{
                    "data.expand_per_trait": 2,
                    "data.contexts": "[casual,technical,multi_turn]",
                    "data.max_prompts": "null",
                },
            ),
            until="3",
            echo=lambda _: None,
        )
        asks = [r for r in srv.requests if r["messages"][0]["content"].startswith("You write realistic messages")]
    assert rc in (0, 1)
    # one request per (trait, expandable context): multi_turn is not expanded
    assert len(asks) == len(spec.traits) * 2
    rows = [
        json.loads(x) for x in (tmp_path / "t" / "03_consistency_data" / "scenarios.jsonl").read_text().splitlines()
    ]
    teacher_rows = [r for r in rows if r["source"] == "teacher"]
    assert teacher_rows and all(r["context"] in ("casual", "technical") for r in teacher_rows)
    assert all(
        len(r["messages"][0]["content"].split()) >= 3 and not r["messages"][0]["content"][0].isdigit()
        for r in teacher_rows
    )
    assert any(r["source"] == "bank" for r in rows) and all(r["targets"] for r in rows)


def test_configured_judge_is_used_by_stages_3_and_4(tmp_path):
    # scorer.judge.backend=openai: the same real HTTP server also judges (its evaluator system prompt), and
    # stages 3 and 4 must send it their responses and record the judge's weight with the evaluator.
    spec = load_persona(PERSONA)
    teacher = scripted_teacher(spec)
    judged: list[str] = []

    def respond(body):
        if body["messages"][0]["content"].startswith("You are a careful, strict evaluator"):
            judged.append(body["messages"][-1]["content"])
            return "No" if "Question: does the reply go against" in body["messages"][-1]["content"] else "Yes"
        return teacher(body)

    with FakeOpenAIServer() as srv:
        srv.responder = respond
        cfg = teacher_config(
            tmp_path,
            srv.base_url,
            **{
                "scorer.judge.backend": "openai",
                "scorer.judge.base_url": srv.base_url,
                "scorer.judge.model": "judge-m",
                "scorer.judge.weight": 0.25,
                "data.max_prompts": 24,
                "gates.data.min_prompts_per_trait": 4,
            },
        )
        lines: list[str] = []
        run_pipeline(cfg, until="4", echo=lines.append)
    run = tmp_path / "t"
    m = json.loads((run / "manifest.json").read_text())
    assert m["stages"].get("04_evaluation", {}).get("status") in ("done", "gate_failed"), "\n".join(lines)
    assert judged, "the configured judge was never asked"
    assert json.loads((run / "04_evaluation" / "evaluator" / "scorer.json").read_text())["judge_weight"] == 0.25
    assert (run / "judge_cache").exists()
