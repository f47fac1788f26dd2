"""Optional lm-evaluation-harness tasks (personatune.lm_harness) on the tiny model, with task files and data
written by the tests (tests/lm_eval_tasks.py): no hub, no download.

- the harness scores the model it is given: a loglikelihood task's perplexity equals a brute-force
  computation with that model;
- `compare`'s drop rule in both metric directions;
- skips: lm_eval not installed, a hub task offline; one-line ConfigErrors for an unknown task or include path;
- the stage-7 gate fails on an lm-eval task drop, with its diagnosis.
"""

from __future__ import annotations

import math
import sys

import pytest

from personatune import lm_harness
from personatune.config import LmEvalArgs, load_config
from personatune.errors import ConfigError
from tests.helpers import PERSONA, persona_config
from tests.lm_eval_tasks import LL_ROWS, write_tasks

pytest.importorskip("lm_eval", reason="lm_eval is part of the dev extra")


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    return write_tasks(tmp_path_factory.mktemp("lm_eval_tasks"))


@pytest.fixture(scope="module")
def tiny():
    from personatune import models

    return models.build_tiny_model(seed=0)


def _brute_perplexity(model, tok) -> float:
    import torch

    lls = []
    for row in LL_ROWS:
        whole = tok(row["context"] + row["continuation"]).input_ids
        ctx = tok(row["context"]).input_ids
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), -1)
        lls.append(sum(lp[i - 1, whole[i]].item() for i in range(len(ctx), len(whole))))
    return math.exp(-sum(lls) / len(lls))


@pytest.mark.stage
def test_scores_the_given_model_exactly(tasks_dir, tiny):
    model, tok = tiny
    args = LmEvalArgs(tasks=["pt_arith_mc", "pt_text_ll"], include_path=str(tasks_dir), limit=None)
    res = lm_harness.evaluate(model, tok, args, echo=lambda s: None)
    assert res["status"] == "ran" and res["skipped"] == {}
    mc, ll = res["tasks"]["pt_arith_mc"], res["tasks"]["pt_text_ll"]
    assert (
        mc["metric"] == "acc,none"
        and mc["higher_is_better"]
        and mc["n"] == 5
        and mc["value"] in {k / 5 for k in range(6)}
    )
    assert mc["stderr"] is not None and mc["stderr"] > 0
    assert ll["metric"] == "perplexity,none" and ll["higher_is_better"] is False and ll["n"] == 4
    assert ll["value"] == pytest.approx(_brute_perplexity(model, tok), rel=1e-6)
    # Another model gives another perplexity: the harness scores what it is given, not a model it loads itself.
    from personatune import models

    other, other_tok = models.build_tiny_model(seed=1)
    res2 = lm_harness.evaluate(
        other, other_tok, LmEvalArgs(tasks=["pt_text_ll"], include_path=str(tasks_dir), limit=2), echo=lambda s: None
    )
    assert res2["tasks"]["pt_text_ll"]["n"] == 2  # limit is passed through
    assert res2["tasks"]["pt_text_ll"]["value"] != pytest.approx(ll["value"], rel=1e-3)


def _res(metric, value, se, higher=True, n=100):
    return {"metric": metric, "value": value, "stderr": se, "higher_is_better": higher, "n": n}


def test_compare_drop_rule_both_directions():
    base = {
        "tasks": {
            "a": _res("acc,none", 0.60, 0.05),
            "p": _res("perplexity,none", 10.0, 1.0, higher=False),
            "z": _res("acc,none", 0.5, None),
        },
        "skipped": {"hub": "its data could not be loaded"},
    }
    final = {
        "tasks": {
            "a": _res("acc,none", 0.51, 0.05),
            "p": _res("perplexity,none", 12.5, 1.0, higher=False),
            "z": _res("acc,none", 0.5, None),
        },
        "skipped": {"hub": "its data could not be loaded"},
    }
    cmp = lm_harness.compare(final, base)
    a, p, z = cmp["tasks"]["a"], cmp["tasks"]["p"], cmp["tasks"]["z"]
    assert (
        a["drop"] == pytest.approx(0.09) and a["allowed"] == pytest.approx(1.959963984540054 * 0.05) and a["ok"]
    )  # 0.09 <= 0.098
    assert (
        p["drop"] == pytest.approx(2.5) and p["allowed"] == pytest.approx(1.96, abs=1e-3) and not p["ok"]
    )  # perplexity rose too far
    assert z["drop"] == 0 and z["allowed"] == 0 and z["ok"]  # no stderr: no drop allowed, equal is fine
    assert "hub" in cmp["not_compared"] and "not measured on the baseline" in cmp["not_compared"]["hub"]
    assert cmp["all_tasks_ok"] is False
    final["tasks"]["a"] = _res("acc,none", 0.49, 0.05)  # 0.11 > 0.098
    assert not lm_harness.compare(final, base)["tasks"]["a"]["ok"]


@pytest.mark.stage
def test_skipped_when_lm_eval_is_not_installed(monkeypatch, tiny):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` now raises ImportError
    args = LmEvalArgs(tasks=["pt_arith_mc"])
    assert "not installed" in lm_harness.check_tasks(args)
    lines: list[str] = []
    res = lm_harness.evaluate(*tiny, args, echo=lines.append)
    assert res["status"] == "skipped" and res["tasks"] == {}
    assert (
        "lm_eval is not installed" in res["skipped"]["pt_arith_mc"]
        and "personatune[lmeval]" in res["skipped"]["pt_arith_mc"]
    )
    assert len(lines) == 1 and "\n" not in lines[0]


@pytest.mark.stage
def test_hub_task_offline_is_skipped_and_the_rest_runs(tasks_dir, tiny):
    # conftest sets HF_HUB_OFFLINE / HF_DATASETS_OFFLINE: arc_easy's data lives on the hub, so it cannot load.
    lines: list[str] = []
    res = lm_harness.evaluate(
        *tiny, LmEvalArgs(tasks=["arc_easy", "pt_arith_mc"], include_path=str(tasks_dir), limit=3), echo=lines.append
    )
    assert res["status"] == "partial" and list(res["tasks"]) == ["pt_arith_mc"]
    why = res["skipped"]["arc_easy"]
    assert "could not be loaded" in why and "include_path" in why and "\n" not in why
    assert any(line.startswith("  lm-eval task arc_easy skipped:") for line in lines)


@pytest.mark.stage
def test_unknown_task_and_bad_include_path_are_one_line_config_errors(tasks_dir, tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"lm_eval\.tasks: 'pt_arith_mcq' is not in lm-eval's task registry nor in lm_eval\.include_path",
    ):
        lm_harness.check_tasks(LmEvalArgs(tasks=["pt_arith_mcq"], include_path=str(tasks_dir)))
    with pytest.raises(ConfigError, match=r"lm_eval\.include_path .* is not a folder"):
        lm_harness.check_tasks(LmEvalArgs(tasks=["pt_arith_mc"], include_path=str(tmp_path / "nope")))
    assert lm_harness.check_tasks(LmEvalArgs(tasks=[])) is None


def test_include_path_resolves_against_the_config_folder(tmp_path):
    cfg_file = tmp_path / "cfg" / "run.yaml"
    cfg_file.parent.mkdir()
    (cfg_file.parent / "tasks").mkdir()
    cfg_file.write_text(f"persona: {PERSONA}\nlm_eval:\n  tasks: [pt_arith_mc]\n  include_path: tasks\n")
    cfg = load_config(cfg_file)
    assert cfg.lm_eval.include_path == str((cfg_file.parent / "tasks").resolve())


def test_stage7_gate_fails_on_an_lm_eval_drop():
    from personatune.stages.s7_final import final_gate

    cfg = persona_config()
    # n = 150 held-out prompts: above the minimum sample sizes, so only the lm-eval drop can decide.
    fig = {
        "improvement": {"value": 0.2, "ci": [0.1, 0.3], "n": 150, "baseline": 0.1, "final": 0.3},
        "retention": {"value": 1.0, "n_items": 36, "baseline_score": 0.5, "final_score": 0.5, "tasks": {}},
        "on_task": {
            "baseline": {"value": 0.9, "n": 150},
            "final": {"value": 0.9, "n": 150},
            "retention": {"value": 1.0, "n": 150, "ci": [0.9, 1.1]},
        },
        "earlier_gates": {},
        "kl": {"kl_per_token": 0.05},
        "lm_eval": lm_harness.compare(
            {"tasks": {"a": _res("acc,none", 0.40, 0.05)}}, {"tasks": {"a": _res("acc,none", 0.60, 0.05)}}
        ),
    }
    gate = final_gate(cfg, fig)
    assert not gate.passed and gate.diagnosis[0] == "verdict: NO-DEPLOY"
    r = next(r for r in gate.results if r.metric == "lm_eval_drop[a]")
    assert not r.passed and r.value == pytest.approx(0.2) and r.threshold == pytest.approx(0.098, abs=1e-3)
    assert any("lm-eval task a (acc,none) went from 0.6000 to 0.4000" in line for line in gate.diagnosis)
    fig["lm_eval"] = lm_harness.compare(
        {"tasks": {"a": _res("acc,none", 0.58, 0.05)}}, {"tasks": {"a": _res("acc,none", 0.60, 0.05)}}
    )
    assert final_gate(cfg, fig).passed
