"""Stage 6 — iterative training.

Unit tier: the pure pair/selection/stop logic over lists of round dicts (no model).
Stage tier: a tiny run through stage 5 (the tiny in-process model as baseline, hand-made stage-3 data, the real
stage-5 trainer), then stage 6 on copies of it. The scorer is scripted (a deterministic hash of the text), because
the tiny model's random text would never be consistent under the real persona scorer and no round could form pairs.
Slow tier (PERSONATUNE_SLOW=1): stages 1-5 in this process, then stage 6 under `accelerate launch` with 2 CPU processes.
"""

from __future__ import annotations

import json
import math
import shutil
import textwrap
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest

from personatune.config import IterationArgs, OptimGateArgs
from personatune.expert_iteration import ROW_KEYS, build_pairs, improved, round_passes, select_round, stop_reason
from personatune.rundir import RunDir, file_hash, read_jsonl
from personatune.scoring import factory
from personatune.stages import s5_optimization, s6_iterations
from tests.helpers import PERSONA, heldout_rows, mark_done, tiny_config, tiny_run_through_stage3
from tests.launch import launch_two_cpu

G = OptimGateArgs(max_kl=0.1, consistency=0.85, adherence=0.9, max_style_variance=0.15)


def row(n, kl, c, a=0.95, s=0.1, pairs=5):
    return {"round": n, "kl": kl, "consistency": c, "adherence": a, "style_variance": s, "pairs": pairs}


# --- unit: pure logic -------------------------------------------------------------------------------
def test_select_round_prefers_passing_then_within_budget_then_lowest_kl():
    rows = [row(0, 0.05, 0.86), row(1, 0.08, 0.90), row(2, 0.09, 0.95, a=0.5), row(3, 0.2, 0.99)]
    assert select_round(rows, G)[0]["round"] == 1  # round 2 is higher but fails adherence; round 3 is over budget
    # Tie on consistency: lower KL wins, then the earlier round.
    assert select_round([row(0, 0.05, 0.9), row(1, 0.04, 0.9)], G)[0]["round"] == 1
    assert select_round([row(0, 0.05, 0.9), row(1, 0.05, 0.9)], G)[0]["round"] == 0
    # A KL lower only by float rounding (a round that changed nothing) is a tie: the earlier round stays.
    assert select_round([row(0, 0.0067451, 0.9), row(1, 0.0067449, 0.9)], G)[0]["round"] == 0
    best, why = select_round([row(0, 0.05, 0.5), row(1, 0.09, 0.6), row(2, 0.3, 0.9)], G)
    assert best["round"] == 1 and "no round passes" in why
    best, why = select_round([row(0, 0.3, 0.5), row(1, 0.2, 0.1)], G)
    assert best["round"] == 1 and "lowest KL" in why
    # A round that found no pairs has no measurement and is never kept.
    assert select_round([row(0, 0.05, 0.5), {"round": 1, "kl": None, "pairs": 0}], G)[0]["round"] == 0


def test_round_passes_with_margin():
    r = row(1, 0.05, 0.91, a=0.96, s=0.1)
    assert round_passes(r, G) and round_passes(r, G, 0.05)
    assert not round_passes(r, G, 0.07)  # consistency 0.91 < 0.85 + 0.07
    assert not round_passes(row(1, 0.096, 0.99, a=0.99, s=0.01), G, 0.05)  # KL 0.096 > 0.1 * 0.95
    assert not round_passes(row(1, 0.05, 0.99, a=0.99, s=None), G)  # style variance not measured fails


def test_stop_reasons():
    it = IterationArgs(rounds=3, min_improvement=0.0, stop_margin=0.05)
    assert stop_reason([row(0, 0.05, 0.5)], it, G) is None
    assert stop_reason([row(0, 0.05, 0.5)], IterationArgs(rounds=0), G) == "round budget"
    assert stop_reason([row(0, 0.05, 0.5), row(1, 0.06, 0.6)], it, G) is None
    assert stop_reason([row(0, 0.05, 0.5), row(1, 0.06, 0.5)], it, G) == "no improvement"  # equal is not better
    # better but over the KL budget
    assert stop_reason([row(0, 0.05, 0.5), row(1, 0.2, 0.7)], it, G) == "no improvement"
    assert (
        stop_reason([row(0, 0.05, 0.5), row(1, 0.06, 0.6), row(2, 0.07, 0.7), row(3, 0.08, 0.8)], it, G)
        == "round budget"
    )
    assert stop_reason([row(0, 0.05, 0.5), row(1, 0.06, 0.95, a=0.99, s=0.05)], it, G) == "gates passed with margin"
    assert stop_reason([row(0, 0.05, 0.5), {"round": 1, "kl": None, "pairs": 0}], it, G) == "no new pairs"
    # stage 5 already good: no round
    assert stop_reason([row(0, 0.05, 0.95, a=0.99, s=0.01)], it, G) == "gates passed with margin"
    # min_improvement: +0.05 is not enough when 0.1 is asked for.
    assert not improved(row(1, 0.06, 0.55), [row(0, 0.05, 0.5)], G, 0.1) and improved(
        row(1, 0.06, 0.65), [row(0, 0.05, 0.5)], G, 0.1
    )


def test_build_pairs_best_consistent_against_worst_with_margin():
    S = SimpleNamespace
    items = [
        {"prompt": [{"role": "user", "content": q}], "context": "casual", "targets": ["t"], "scenario_id": q}
        for q in "abcd"
    ]
    samples = [["x1", "x2", "x3"], ["y1", "y2"], ["z1", "z2"], ["w", "w"]]
    scores = [
        [
            S(consistent=False, consistency=0.3),
            S(consistent=True, consistency=0.8),
            S(consistent=True, consistency=0.6),
        ],
        [S(consistent=False, consistency=0.4), S(consistent=False, consistency=0.1)],  # nothing consistent: no pair
        [S(consistent=True, consistency=0.6), S(consistent=False, consistency=0.45)],  # margin 0.15 < 0.2: no pair
        [S(consistent=True, consistency=0.9), S(consistent=True, consistency=0.9)],  # same text: no pair
    ]
    pairs = build_pairs(items, samples, scores, 0.2)
    assert len(pairs) == 1
    p = pairs[0]
    assert (
        p["chosen"][0]["content"] == "x2"
        and p["rejected"][0]["content"] == "x1"
        and p["scenario_id"] == "a"
        and p["targets"] == ["t"]
    )
    assert p["chosen_consistency"] - p["rejected_consistency"] >= 0.2
    assert len(build_pairs(items, samples, scores, 0.1)) == 2


def test_build_pairs_keeps_only_answers_that_are_consistent_and_on_task():
    S = SimpleNamespace
    items = [{"prompt": [{"role": "user", "content": "q"}], "scenario_id": "a"}]
    # The most consistent sample ignores the request (on_task 0.1): expert iteration must not keep it.
    recs = [
        [
            S(consistent=True, consistency=0.95, on_task=0.1),
            S(consistent=True, consistency=0.7, on_task=0.9),
            S(consistent=False, consistency=0.2, on_task=0.9),
        ]
    ]
    p = build_pairs(items, [["babble", "answer", "plain"]], recs, 0.2)
    assert [x["chosen"][0]["content"] for x in p] == ["answer"] and p[0]["rejected"][0]["content"] == "plain"
    assert (
        build_pairs(
            items,
            [["babble", "x", "y"]],
            [
                [
                    recs[0][0],
                    S(consistent=False, consistency=0.1, on_task=0.9),
                    S(consistent=False, consistency=0.3, on_task=0.2),
                ]
            ],
            0.2,
        )
        == []
    )


# --- stage tier: a tiny run -----------------------------------------------------------------------------
class ScriptedScorer:
    """Consistency = a fixed hash of the text in [0, 1): varied samples give varied scores, the same text the same score."""

    def __init__(self, spec):
        from personatune.scoring.style import style_features_batch

        self.spec, self.features = spec, style_features_batch

    def score(self, texts, prompts=None, contexts=None, targets=None, ids=None):
        from personatune.scoring.record import ResponseScore

        feats = self.features(list(texts), self.spec.style)
        out = []
        for i, t in enumerate(texts):
            c = (zlib.crc32(t.encode()) % 1000) / 1000
            out.append(
                ResponseScore(
                    id=str(ids[i]) if ids else str(i),
                    traits={k: c for k in self.spec.trait_ids},
                    violations={k: 0.0 for k in self.spec.trait_ids},
                    style=feats[i],
                    style_match=1.0,
                    rules={},
                    consistent=c >= 0.5,
                    consistency=c,
                    targets=list(targets[i]) if targets else [],
                    context=contexts[i] if contexts else None,
                )
            )
        return out


QUESTIONS = [
    "How is the weather?",
    "Can you help me fix my code?",
    "I feel sad today.",
    "What is two plus two?",
    "Tell me a joke.",
    "Where should I travel?",
    "Recommend a book.",
    "Good morning!",
]
TRAIN = {
    "learning_rate": 5e-3,
    "max_steps": 2,
    "eval_every": 0,
    "eval_at_start": False,
    "kl_eval_prompts": 4,
    "kl_max_new_tokens": 8,
    "eval_batch_size": 16,
    "per_device_batch_size": 4,
    "lora_r": 4,
    "lora_alpha": 8,
    "max_length": 64,
    "logging_steps": 1,
}


def make_config(tmp, **iters):
    it = {"rounds": 1, "samples_per_prompt": 3, "min_margin": 0.1, "max_steps": 2} | iters
    return tiny_config(
        tmp,
        "data.teacher.max_new_tokens=8",
        "eval.min_per_context=2",
        "data.few_shot=false",
        *[f"train.{k}={v}" for k, v in TRAIN.items()],
        *[f"iterations.{k}={v}" for k, v in it.items()],
    )


HELD = [
    "Say hello.",
    "What do you like?",
    "Any advice?",
    "How are you?",
    "Explain a loop.",
    "What is a file?",
    "Cheer me up.",
    "Name a star.",
]


@pytest.fixture(scope="module")
def stage5_run(tmp_path_factory):
    """A run directory with stages 1-5 done: tiny baseline, persona, 8 training scenarios, 8 held-out prompts, stage-5 model."""
    root = tmp_path_factory.mktemp("s6") / "run"
    pairs = [
        {
            "prompt": [{"role": "user", "content": q}],
            "chosen": [{"role": "assistant", "content": "Ahoy, friend! Aye, we sail on!"}],
            "rejected": [{"role": "assistant", "content": "No."}],
            "context": ["casual", "technical"][i % 2],
            "targets": ["optimistic"],
            "scenario_id": f"s{i}",
        }
        for i, q in enumerate(QUESTIONS)
    ]
    rd = tiny_run_through_stage3(root, pairs, heldout_rows(HELD))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(factory, "scorer_for_run", lambda config, run_dir, spec, **kw: (ScriptedScorer(spec), "scripted"))
        res = s5_optimization.run(make_config(root.parent), rd)
    mark_done(rd, "05_optimization", res.outputs)
    return root


@pytest.fixture()
def run_copy(stage5_run, tmp_path, monkeypatch):
    """A private copy of the stage-5 run (each test may write stage 6), with the scripted scorer."""
    monkeypatch.setattr(
        factory, "scorer_for_run", lambda config, run_dir, spec, **kw: (ScriptedScorer(spec), "scripted")
    )
    shutil.copytree(stage5_run, tmp_path / "run")
    return tmp_path / "run"


def weights_hash(folder: Path) -> str:
    return file_hash(folder / "model.safetensors")


def test_two_rounds_measure_kl_against_baseline_keep_best_and_resume(run_copy, tmp_path, monkeypatch):
    import torch

    from personatune import models, training
    from personatune.kl import measure_drift
    from personatune.persona import load_persona
    from personatune.persona_prompt import persona_context

    cfg = make_config(tmp_path, rounds=2)
    rd = RunDir(run_copy)
    res = s6_iterations.run(cfg, rd)
    out = run_copy / "06_iterations"
    rows = read_jsonl(out / "rounds.jsonl")
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in rows] == list(range(len(rows))) and 2 <= len(rows) <= 3
    assert all(set(r) == set(ROW_KEYS) for r in rows)
    # after round 2 both can hold ("no improvement" is checked first); stopping after round 1 needs it
    assert metrics["stop_reason"] in (("round budget", "no improvement") if len(rows) == 3 else ("no improvement",))
    r1 = rows[1]
    assert r1["pairs"] > 0 and r1["steps"] == 2 and r1["kl"] > 0
    # The kept round is select_round's choice, flagged once, and its model folder loads.
    kept = [r["round"] for r in rows if r["kept"]]
    assert kept == [select_round(rows, cfg.gates.optimization)[0]["round"]] == [metrics["best_round"]]
    m, tok = models.load_model_and_tokenizer(str(res.outputs["model"]))
    assert tok.chat_template and f"round {kept[0]}" in (res.outputs["model"] / "README.md").read_text()
    src = run_copy / "05_optimization" / "model" if kept[0] == 0 else out / f"round_{kept[0]}" / "model"
    assert weights_hash(res.outputs["model"]) == weights_hash(src)
    assert res.gate.stage == "06_iterations" and {g.metric for g in res.gate.results} == {
        "kl_per_token",
        "consistency_rate",
        "adherence",
        "style_variance",
        "on_task_retention",
    }
    assert f"kept round {kept[0]}" in res.gate.diagnosis[0]
    # KL of round 1 is drift KL(round-1 model || baseline given the persona context), re-measured here from the saved folders,
    # not KL to the stage-5 model; persona shift is the same against the unprompted baseline.
    held = training.EvalSet.from_rows(read_jsonl(run_copy / "03_consistency_data" / "heldout" / "prompts.jsonl"))
    pol, tok = models.load_model_and_tokenizer(str(out / "round_1" / "model"))
    base, _ = models.load_model_and_tokenizer(str(run_copy / "01_baseline" / "model"))
    s5m, _ = models.load_model_and_tokenizer(str(run_copy / "05_optimization" / "model"))
    kw = dict(max_new_tokens=cfg.train.kl_max_new_tokens, seed=cfg.seed, batch_size=cfg.train.eval_batch_size)
    ctx = persona_context(load_persona(PERSONA), few_shot=cfg.data.few_shot)
    vs_base = measure_drift(pol, base, tok, held.prompts, ctx, **kw)
    vs_s5 = measure_drift(pol, s5m, tok, held.prompts, ctx, **kw).drift.per_token
    # equal to the baseline-referenced KL within 1e-4 relative; the stage-5-referenced one differs by far more (>= 10x that
    # tolerance; how much more depends on the draws of round 1's data)
    assert vs_base.drift.per_token == pytest.approx(r1["kl"], rel=1e-4, abs=1e-7)
    assert abs(vs_s5 - r1["kl"]) > 10 * max(1e-4 * r1["kl"], 1e-7)
    assert vs_base.shift.per_token == pytest.approx(r1["persona_shift"], rel=1e-4, abs=1e-7)
    assert 0 <= r1["yield"] <= 1 and "yield" in (out / "rounds.md").read_text()
    assert torch.is_tensor(next(pol.parameters()))

    # Resume: finished rounds are not redone (training would raise), and the table is the same.
    def no_training(*a, **k):
        raise AssertionError("a finished round was trained again")

    monkeypatch.setattr(training, "build_dpo_trainer", no_training)
    before = (out / "round_1" / "result.json").read_bytes()
    s6_iterations.run(cfg, RunDir(run_copy))
    assert read_jsonl(out / "rounds.jsonl") == rows and (out / "round_1" / "result.json").read_bytes() == before
    assert "round 1/2: done earlier, skipped" in (run_copy / "log.txt").read_text()
    # A damaged round model is detected: the round would be redone.
    (out / "round_1" / "model" / "model.safetensors").write_bytes(b"broken")
    with pytest.raises(AssertionError, match="trained again"):
        s6_iterations.run(cfg, RunDir(run_copy))


def test_round_0_is_stage_5s_own_final_measurement_unless_the_settings_changed(run_copy, tmp_path, monkeypatch):
    from personatune.expert_iteration import round_key
    from personatune.stages import s6_round

    cfg = make_config(tmp_path, rounds=0)
    s5 = run_copy / "05_optimization"
    rec5 = json.loads((s5 / "final_eval.json").read_text())
    m5 = json.loads((s5 / "metrics.json").read_text())["final"]
    assert rec5["key"] == round_key(cfg, 0, file_hash(s5 / "model")) and rec5["model_hash"] == file_hash(s5 / "model")
    assert (rec5["row"]["kl"], rec5["row"]["consistency"], rec5["row"]["adherence"]) == (
        m5["kl"],
        m5["consistency"],
        m5["adherence"],
    )
    calls = []
    real = s6_round.RoundSetup.evaluate
    monkeypatch.setattr(s6_round.RoundSetup, "evaluate", lambda self, *a: calls.append(1) or real(self, *a))
    s6_iterations.run(cfg, RunDir(run_copy))
    rows = read_jsonl(run_copy / "06_iterations" / "rounds.jsonl")
    assert calls == [] and rows[0]["kl"] == rec5["row"]["kl"] and rows[0]["consistency"] == rec5["row"]["consistency"]
    assert "stage 5's final measurement of the same model and settings, reused" in (run_copy / "log.txt").read_text()
    # Handed to stage 7 (final_measurement.json): stage 5's responses and KLs, with the settings they were taken with.
    hand = json.loads((run_copy / "06_iterations" / "final_measurement.json").read_text())
    assert hand["texts"] == [r["response"] for r in json.loads((s5 / "samples.json").read_text())]
    assert (hand["kl"], hand["persona_shift"]) == (rec5["eval"]["kl"], rec5["eval"]["persona_shift"])
    assert hand["model_hash"] == file_hash(run_copy / "06_iterations" / "model")
    assert hand["fingerprint"]["decoding"]["batch_size"] == cfg.train.eval_batch_size
    # Another decoding is another measurement: round 0 is measured here, and that measurement is handed on.
    shutil.rmtree(run_copy / "06_iterations")
    other = make_config(tmp_path, rounds=0).model_copy(
        update={"eval": cfg.eval.model_copy(update={"temperature": 0.5})}
    )
    s6_iterations.run(other, RunDir(run_copy))
    assert calls == [1]
    hand = json.loads((run_copy / "06_iterations" / "final_measurement.json").read_text())
    r0 = json.loads((run_copy / "06_iterations" / "round_0" / "result.json").read_text())
    assert hand["fingerprint"]["decoding"]["temperature"] == 0.5 and hand["kl"] == r0["eval"]["kl"]
    assert len(hand["texts"]) == len(json.loads((s5 / "samples.json").read_text()))
    # Stage 5's record reused without its responses on disk: the last run's round-0 responses (another decoding) are
    # not handed on in their place; stage 7 will measure.
    (s5 / "samples.json").unlink()
    s6_iterations.run(cfg, RunDir(run_copy))
    assert calls == [1] and not (run_copy / "06_iterations" / "final_measurement.json").exists()
    assert "stage 7 will sample and measure the model again" in (run_copy / "log.txt").read_text()


def test_lone_end_eval_is_one_eval_at_the_last_step():
    from personatune.stages.s6_round import lone_end_eval
    from personatune.training.args import TrainArgs

    def a(**kw):
        return TrainArgs(**({"eval_at_start": False, "max_steps": 50, "eval_every": 50} | kw))

    assert lone_end_eval(a()) and lone_end_eval(a(eval_every=0)) and lone_end_eval(a(eval_every=80))
    assert not lone_end_eval(a(eval_every=25))  # steps 25 and 50: two candidates
    assert not lone_end_eval(a(eval_at_start=True))  # step 0 is a candidate too
    assert not lone_end_eval(a(eval_every_seconds=30.0))
    assert not lone_end_eval(a(max_steps=None))  # epochs: the step count is not known


def test_a_round_with_one_candidate_skips_its_in_round_eval(run_copy, tmp_path, monkeypatch):
    from personatune.stages import s6_round

    calls = []
    real = s6_round.RoundSetup.evaluate
    monkeypatch.setattr(
        s6_round.RoundSetup, "evaluate", lambda self, m, r, t, es: calls.append(len(es.ids)) or real(self, m, r, t, es)
    )
    cfg = make_config(tmp_path, rounds=1)  # iterations.max_steps 2, train.eval_every 0: one candidate, the last step
    s6_iterations.run(cfg, RunDir(run_copy))
    r1 = json.loads((run_copy / "06_iterations" / "round_1" / "result.json").read_text())
    n_full = len(read_jsonl(run_copy / "03_consistency_data" / "heldout" / "prompts.jsonl"))
    assert calls == [n_full] and r1["row"]["kl"] is not None
    assert r1["selection"] == {"reason": s6_round.LONE_EVAL_SKIPPED, "within_budget": None, "step": 2}
    # Evals every step: two candidates (steps 1 and 2), each evaluated on the small set, then the full measurement
    # (round 0 is measured first: another train.eval_every is another round key, so stage 5's record is not reused).
    shutil.rmtree(run_copy / "06_iterations")
    calls.clear()
    every = cfg.model_copy(update={"train": cfg.train.model_copy(update={"eval_every": 1})})
    s6_iterations.run(every, RunDir(run_copy))
    r1 = json.loads((run_copy / "06_iterations" / "round_1" / "result.json").read_text())
    small = cfg.train.kl_eval_prompts
    assert calls == [n_full, small, small, n_full] and r1["selection"]["step"] in (1, 2)


def test_round_that_changes_nothing_does_not_improve_and_keeps_round_0(run_copy, tmp_path):
    # A learning rate of 1e-30 moves LoRA B from 0 to ~1e-30: merged into float32 weights it changes nothing, so round 1
    # measures what round 0 does (KL up to float rounding: the policy's log-probs come from its sampling pass); equal is
    # not an improvement, and the tie keeps the earlier round.
    cfg = make_config(tmp_path, rounds=3)
    cfg.train.learning_rate = 1e-30
    res = s6_iterations.run(cfg, RunDir(run_copy))
    out = run_copy / "06_iterations"
    rows = read_jsonl(out / "rounds.jsonl")
    assert [r["round"] for r in rows] == [0, 1] and rows[1]["steps"] == 2 and rows[1]["pairs"] > 0
    assert rows[1]["consistency"] == rows[0]["consistency"] and rows[1]["kl"] == pytest.approx(rows[0]["kl"], abs=1e-6)
    m = json.loads((out / "metrics.json").read_text())
    assert m["stop_reason"] == "no improvement" and m["best_round"] == 0 and [r["kept"] for r in rows] == [True, False]
    assert weights_hash(res.outputs["model"]) == weights_hash(run_copy / "05_optimization" / "model")
    assert "no round improved" in (res.outputs["model"] / "README.md").read_text()


def test_zero_rounds_copies_stage5_model(run_copy, tmp_path):
    cfg = make_config(tmp_path, rounds=0)
    res = s6_iterations.run(cfg, RunDir(run_copy))
    out = run_copy / "06_iterations"
    rows = read_jsonl(out / "rounds.jsonl")
    assert [r["round"] for r in rows] == [0] and rows[0]["kept"] and rows[0]["kl"] > 0
    assert json.loads((out / "metrics.json").read_text())["stop_reason"] == "round budget"
    assert weights_hash(res.outputs["model"]) == weights_hash(run_copy / "05_optimization" / "model")
    assert "iterations.rounds=0" in (res.outputs["model"] / "README.md").read_text() and (
        out / "rounds.md"
    ).read_text().startswith("| round")
    assert set(res.outputs) == {"model", "rounds", "metrics"} and not res.gate.passed  # a random tiny model cannot pass


# --- slow tier: stage 6 under accelerate launch, 2 CPU processes (gloo) ---------------------------------------
class RisingScorer(ScriptedScorer):
    """ScriptedScorer whose held-out evaluations (calls with ids) get better each time: the e-th evaluation of a prompt
    set of a given size marks its first 2e responses consistent (0.9) and the rest not (0.1).

    A test device: each round's held-out consistency rate then beats the last (2/7, 4/7, 6/7 on 7 prompts), so stage 6
    runs its whole round budget and the test knows the rows to expect. Sampling (no ids) keeps the text hash, so rounds
    still form pairs. Only the rank that scores counts (the main rank).
    """

    evals: dict[int, int] = {}

    def score(self, texts, prompts=None, contexts=None, targets=None, ids=None):
        out = super().score(texts, prompts, contexts, targets, ids)
        if ids is not None:
            e = RisingScorer.evals[len(ids)] = RisingScorer.evals.get(len(ids), 0) + 1
            for i, r in enumerate(out):
                r.on_task = 1.0  # answers the request (the gate's on-task retention needs a measured rate)
                r.consistent = i < 2 * e
                r.consistency = 0.9 if r.consistent else 0.1
                r.traits = {k: r.consistency for k in r.traits}
        return out


@pytest.mark.slow
def test_stage6_under_accelerate_launch_two_cpu_processes(tmp_path, repo_root, monkeypatch):
    """Stages 1-5 in one process (tiny model, scripted teacher), then `personatune run CONFIG --from 6 --until 6 model.device=cpu`
    under accelerate launch with 2 processes: every round trains with world size 2, the main rank alone writes, and a
    second launch resumes (every round skipped, same table).

    The launched script is `personatune.cli.main` with RisingScorer patched in for the stage-4 evaluator: under the real
    scorer the tiny model's samples are never consistent, so no round would form pairs and none would train."""
    from personatune.config import load_config, to_yaml
    from personatune.persona import load_persona
    from personatune.pipeline import run_pipeline
    from tests.fake_openai_server import FakeOpenAIServer
    from tests.helpers import LOOSE_GATES, scripted_teacher, teacher_config

    # One config file for both runs (the stage-6 command line repeats model.device=cpu, so stages 1-5 stay "done").
    # stop_margin 2 can never be met, so only the round budget or the stop rules end the rounds.
    over = {
        **LOOSE_GATES,
        "threads": 1,
        "model.device": "cpu",
        "iterations.rounds": 2,
        "iterations.samples_per_prompt": 3,
        "iterations.max_prompts": 8,
        "iterations.max_steps": 2,
        "iterations.min_margin": 0.1,
        "iterations.stop_margin": 2,
        "train.eval_every": 1,
    }
    cfg_file = tmp_path / "config.yaml"
    # Stages 1-5 are this test's set-up. The random tiny model never answers on task, so stage 5's on-task retention
    # (a ratio to the baseline's on-task rate) would be undefined and its gate would fail before stage 6: every
    # response counts as on task here.
    from personatune.scoring.scorer import Scorer

    real_score = Scorer.score

    def on_task_score(self, *args, **kwargs):
        out = real_score(self, *args, **kwargs)
        for r in out:
            r.on_task = 1.0
        return out

    monkeypatch.setattr(Scorer, "score", on_task_score)
    with FakeOpenAIServer() as srv:
        srv.responder = scripted_teacher(load_persona(PERSONA))
        cfg_file.write_text(to_yaml(teacher_config(tmp_path, srv.base_url, **over)))
        cfg = load_config(cfg_file, [])
        assert run_pipeline(cfg, until="5", echo=lambda s: None) == 0
    run = tmp_path / "t"
    out = run / "06_iterations"
    script = tmp_path / "launch_cli.py"
    script.write_text(
        textwrap.dedent("""
        import sys
        from tests.stages.test_s6 import RisingScorer
        from personatune.cli import main
        from personatune.scoring import factory
        factory.scorer_for_run = lambda config, run_dir, spec, **kw: (RisingScorer(spec), "scripted (rising)")
        sys.exit(main(sys.argv[1:]))
    """)
    )
    args = ["run", str(cfg_file), "--from", "6", "--until", "6", "model.device=cpu"]

    rc, stdout, stderr = launch_two_cpu(script, args, repo_root)
    assert rc in (0, 1), stderr[-3000:]
    gate = json.loads((out / "gate.json").read_text())
    assert rc == (0 if gate["passed"] else 1) and "Traceback" not in stderr + stdout, stderr[-3000:]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["06_iterations"]["status"] == {"pass": "done", "inconclusive": "gate_inconclusive"}.get(
        gate["status"], "gate_failed"
    )
    # skipped, not re-run
    assert [manifest["stages"][s]["status"] for s in ("01_baseline", "05_optimization")] == ["done", "done"]
    rows = read_jsonl(out / "rounds.jsonl")
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in rows] == [0, 1, 2] and all(set(r) == set(ROW_KEYS) for r in rows)
    assert metrics["stop_reason"] == "round budget" and metrics["rounds_run"] == 2
    # RisingScorer on the 7 held-out prompts
    assert [r["consistency"] for r in rows] == pytest.approx([2 / 7, 4 / 7, 6 / 7])
    # Every round trained DPO with 2 processes. The accelerator's world size is recorded, and checked independently: the
    # epoch counter comes from each rank's share of the batches, ceil(ceil(pairs / batch) / 2), which 2 ranks halve.
    bs = cfg.train.per_device_batch_size * cfg.train.grad_accum
    for n in (1, 2):
        rec = json.loads((out / f"round_{n}" / "result.json").read_text())
        assert rec["row"]["pairs"] > 0 and rec["row"]["steps"] == 2, rec["row"]
        assert (
            rec["training"]["num_processes"] == 2
            and rec["training"]["distributed_type"] == "MULTI_CPU"
            and rec["training"]["global_batch"] == 2 * bs
        )
        assert rec["training"]["epoch"] == pytest.approx(2 / math.ceil(math.ceil(rec["row"]["pairs"] / bs) / 2))
        assert len(read_jsonl(out / f"round_{n}" / "pairs.jsonl")) == rec["row"]["pairs"]
        assert (out / f"round_{n}" / "model" / "model.safetensors").is_file() and not (
            out / f"round_{n}" / "checkpoints"
        ).exists()
    assert [(d["training"] or {}).get("num_processes") for d in metrics["rounds_detail"]] == [None, 2, 2]
    # The kept model: select_round's choice, one copy, written by the main rank; the stage result all ranks returned.
    kept = metrics["best_round"]
    assert [r["round"] for r in rows if r["kept"]] == [kept] == [select_round(rows, cfg.gates.optimization)[0]["round"]]
    src = run / "05_optimization" / "model" if kept == 0 else out / f"round_{kept}" / "model"
    assert (out / "model" / "README.md").is_file() and weights_hash(out / "model") == weights_hash(src)
    assert json.loads((out / "result.json").read_text())["num_processes"] == 2
    # One log line per event: only the main rank samples, scores and reports.
    log = (run / "log.txt").read_text()
    assert (
        log.count("round 1/2: sampling") == 1
        and log.count("round 2/2: sampling") == 1
        and log.count("stage 6: kept round") == 1
    )

    # Resume under the same launch: round 0 and both rounds are recognised as done on every rank, nothing is redone.
    before = {n: (out / f"round_{n}" / "result.json").read_bytes() for n in (0, 1, 2)}
    rc2, stdout2, stderr2 = launch_two_cpu(script, args, repo_root)
    assert rc2 == rc and "Traceback" not in stderr2 + stdout2, stderr2[-3000:]
    assert read_jsonl(out / "rounds.jsonl") == rows
    assert {n: (out / f"round_{n}" / "result.json").read_bytes() for n in (0, 1, 2)} == before
    log2 = (run / "log.txt").read_text()[len(log) :]
    assert (
        "round 0: measured earlier, skipped" in log2
        and "round 1/2: done earlier, skipped" in log2
        and "round 2/2: done earlier, skipped" in log2
    )
    assert "sampling" not in log2


def test_an_sft_expert_iteration_round_keeps_consistent_on_task_answers_and_trains_on_them(run_copy, tmp_path):
    """One expert-iteration round with iterations.algorithm=sft: sample, keep (scripted scorer), SFT on the kept answers."""
    cfg = make_config(tmp_path, rounds=1, algorithm="sft")
    res = s6_iterations.run(cfg, RunDir(run_copy))
    out = run_copy / "06_iterations"
    rows = read_jsonl(out / "rounds.jsonl")
    r1 = rows[1]
    assert r1["pairs"] > 0 and r1["steps"] == 2 and r1["yield"] is not None and 0 < r1["yield"] < 1
    pairs = read_jsonl(out / "round_1" / "pairs.jsonl")
    assert all(p["chosen_consistency"] >= 0.5 for p in pairs)  # the scripted scorer's consistent answers
    assert (
        "SFT steps" in (run_copy / "log.txt").read_text()
        and "kept (consistent and on task)" in (run_copy / "log.txt").read_text()
    )
    assert res.gate.stage == "06_iterations"
