"""Stage-5 training on a tiny in-process model: a few steps each, parameters must move, KL must be measured.

The tiny model comes from personatune.models.build_tiny_model (random weights, tiny vocabulary), so each
trainer runs in a few seconds on 2 CPU cores.
"""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from personatune.errors import ConfigError
from personatune.gates import Measurement
from personatune.kl import measure_kl
from personatune.training import (
    EvalResult,
    PersonaEvalCallback,
    TrainArgs,
    TrainerRun,
    build_dpo_trainer,
    build_grpo_trainer,
    check_beta,
    read_history,
    reference_of,
)
from tests.helpers import PERSONA, heldout_rows, persona_config, tiny_run_through_stage3
from tests.launch import launch_two_cpu

datasets = pytest.importorskip("datasets")
models = pytest.importorskip("personatune.models")

PAIRS = [
    ("How is the weather today?", "Ahoy! Clear skies, friend!", "It is fine."),
    ("Can you help me fix my code?", "Aye, let us chart that bug!", "No."),
    ("I feel sad today.", "Steady now, friend, we sail on together!", "Ok."),
    ("What is two plus two?", "Four, by the stars, friend!", "4"),
    ("Tell me a joke.", "Why did the comet blush? It saw a star, friend!", "No jokes."),
    ("Where should I travel?", "To the far moons, friend, ahoy!", "Anywhere."),
    ("Recommend a book.", "Starlog of the Nova, friend, a grand tale!", "Any book."),
    ("Good morning!", "Ahoy and good morning, friend!", "Morning."),
]
HELD = [[{"role": "user", "content": q}] for q in ("Say hello.", "What do you like?", "Any advice?", "How are you?")]


def pair_dataset():
    rows = [
        {
            "prompt": [{"role": "user", "content": p}],
            "chosen": [{"role": "assistant", "content": c}],
            "rejected": [{"role": "assistant", "content": r}],
        }
        for p, c, r in PAIRS
    ]
    return datasets.Dataset.from_list(rows)


def prompt_dataset():
    return datasets.Dataset.from_list(
        [{"prompt": [{"role": "user", "content": p}], "context": "casual"} for p, _, _ in PAIRS]
    )


# train.* values every tiny-model training here shares: small batches, a high rate, a small adapter.
TINY_TRAIN = dict(per_device_batch_size=4, learning_rate=5e-3, lora_r=4, lora_alpha=8, max_length=96)

# train.* overrides for a stage-5 run on the tiny model: 4 steps, an eval every 2 (test_distill.py uses them too).
STAGE5_TINY = dict(
    TINY_TRAIN, max_steps=4, eval_every=2, kl_eval_prompts=4, kl_max_new_tokens=8, eval_batch_size=8, logging_steps=2
)


def args(**kw):
    base = dict(TINY_TRAIN, max_steps=3, logging_steps=1, eval_every=0, eval_at_start=False)
    base.update(kw)
    return TrainArgs(**base)


def lora_snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def test_train_args_every_field_documented_and_strict():
    for name, f in TrainArgs.model_fields.items():
        assert f.description and len(f.description) > 10, name
    with pytest.raises(Exception):
        TrainArgs(bogus=1)


def test_beta_zero_with_kl_gate_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="train.beta"):
        check_beta(0.0, 0.1)
    check_beta(0.0, None)  # no KL gate: allowed
    model, tok = models.build_tiny_model(seed=0)
    with pytest.raises(ConfigError, match="train.beta=0.0"):
        build_grpo_trainer(
            model,
            tok,
            prompt_dataset(),
            args(algorithm="grpo", beta=0.0),
            TrainerRun(tmp_path),
            reward_funcs=[lambda completions, **k: [0.0] * len(completions)],
            max_kl=0.1,
        )
    with pytest.raises(ConfigError, match="train.beta"):
        build_dpo_trainer(model, tok, pair_dataset(), args(beta=0.0), TrainerRun(tmp_path), max_kl=0.1)


def test_dpo_lora_changes_parameters_and_kl_goes_from_zero_to_positive(tmp_path):
    torch.manual_seed(0)
    model, tok = models.build_tiny_model(seed=0)
    a = args(eval_every=2)
    cb = PersonaEvalCallback(None, tmp_path, a, max_kl=0.1)
    trainer = build_dpo_trainer(
        model, tok, pair_dataset(), a, TrainerRun(tmp_path / "trl", callbacks=[cb.hooks()]), max_kl=0.1
    )
    cb.bind(trainer)
    ref = reference_of(trainer)
    before = lora_snapshot(trainer.model)
    assert before, "LoRA adapters were not applied"
    kl0 = measure_kl(trainer.model, ref, tok, HELD, max_new_tokens=12, seed=0, batch_size=4)
    assert kl0.tokens > 0 and abs(kl0.per_token) < 1e-6  # LoRA B starts at zero: policy == reference
    trainer.train()
    after = lora_snapshot(trainer.model)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    kl1 = measure_kl(trainer.model, ref, tok, HELD, max_new_tokens=12, seed=0, batch_size=4)
    assert kl1.per_token > 1e-6 and kl1.stderr >= 0
    # The callback saved the adapter at step 2 and at the end (step 3); without an evaluator nothing is measured.
    hist = read_history(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in hist] == [2, 3]
    assert all((tmp_path / r["checkpoint"] / "adapter_model.safetensors").exists() for r in hist)


def test_dpo_with_an_sft_term_trains_and_the_weights_must_match(tmp_path):
    # train.dpo_loss / dpo_loss_weights are TRL's loss_type / loss_weights (here DPO + NLL on the chosen, RPO).
    model, tok = models.build_tiny_model(seed=0)
    a = args(dpo_loss=["sigmoid", "sft"], dpo_loss_weights=[1.0, 0.5])
    trainer = build_dpo_trainer(model, tok, pair_dataset(), a, TrainerRun(tmp_path / "trl"), max_kl=0.1)
    assert list(trainer.args.loss_type) == ["sigmoid", "sft"] and list(trainer.args.loss_weights) == [1.0, 0.5]
    before = lora_snapshot(trainer.model)
    trainer.train()
    after = lora_snapshot(trainer.model)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    # A wrong number of weights is refused when the config loads, before any stage runs.
    from personatune.config import load_config

    with pytest.raises(ConfigError, match="dpo_loss_weights has 1 entries"):
        load_config(None, ["train.dpo_loss=[sigmoid, sft]", "train.dpo_loss_weights=[1.0]"])


def test_grpo_full_finetune_with_reward_changes_parameters_and_has_kl_term(tmp_path):
    model, tok = models.build_tiny_model(seed=1)
    path = tmp_path / "tiny"
    models.save_model(model, tok, path)  # full fine-tuning: TRL reloads the reference from the model's path
    model, tok = models.load_model_and_tokenizer(str(path), for_training=True)

    def reward_len(completions, **kwargs):
        # Longer answers score higher: varied within a group, so advantages are non-zero.
        return [float(len(c[0]["content"] if isinstance(c, list) else c)) / 50.0 for c in completions]

    a = args(
        algorithm="grpo",
        peft="full",
        beta=0.05,
        num_generations=4,
        max_completion_length=8,
        learning_rate=1e-3,
        max_steps=2,
    )
    trainer = build_grpo_trainer(
        model, tok, prompt_dataset(), a, TrainerRun(tmp_path / "trl"), reward_funcs=[reward_len], max_kl=0.1
    )
    assert trainer.beta == 0.05 and trainer.ref_model is not None
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p.detach())]
    assert changed
    kl = measure_kl(trainer.model, reference_of(trainer), tok, HELD, max_new_tokens=10, seed=0, batch_size=4)
    assert kl.per_token > 0


def test_rloo_lora_with_reward_changes_adapters_and_kl_goes_from_zero_to_positive(tmp_path):
    from personatune.training import build_rloo_trainer

    model, tok = models.build_tiny_model(seed=4)

    def reward_len(completions, **kwargs):
        assert kwargs["context"] == ["casual"] * len(completions)  # extra dataset columns reach the reward, as for GRPO
        return [float(len(c[0]["content"] if isinstance(c, list) else c)) / 50.0 for c in completions]

    a = args(algorithm="rloo", beta=0.05, num_generations=4, max_completion_length=8, learning_rate=5e-3, max_steps=2)
    trainer = build_rloo_trainer(
        model, tok, prompt_dataset(), a, TrainerRun(tmp_path / "trl"), reward_funcs=[reward_len], max_kl=0.1
    )
    assert trainer.beta == 0.05
    kl0 = measure_kl(trainer.model, reference_of(trainer), tok, HELD, max_new_tokens=10, seed=0, batch_size=4)
    before = lora_snapshot(trainer.model)
    assert before
    trainer.train()
    after = lora_snapshot(trainer.model)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    kl1 = measure_kl(trainer.model, reference_of(trainer), tok, HELD, max_new_tokens=10, seed=0, batch_size=4)
    assert abs(kl0.per_token) < 1e-6 and kl1.per_token > 0
    with pytest.raises(ConfigError, match="beta"):
        build_rloo_trainer(
            model,
            tok,
            prompt_dataset(),
            args(algorithm="rloo", beta=0.0, num_generations=4),
            TrainerRun(tmp_path / "trl2"),
            reward_funcs=[reward_len],
            max_kl=0.1,
        )


def test_eval_callback_stops_when_kl_over_budget_and_logs(tmp_path):
    model, tok = models.build_tiny_model(seed=2)

    def evaluate(policy, reference):
        kl = measure_kl(policy, reference, tok, HELD, max_new_tokens=8, seed=0, batch_size=4)
        return EvalResult(kl, Measurement(0.5, n=4), Measurement(0.9, n=4), 0.1, texts=["x"] * 4)

    # A budget of 1e-6 nats/token: above the float rounding of the untrained start (its KL is ~1e-7: the policy's
    # log-probs come from the sampling pass, the reference's from a full forward), below the first trained eval's,
    # so the controller stops training there.
    budget = 1e-6
    a = args(max_steps=5, eval_every=1, kl_control="stop", eval_at_start=True)
    cb = PersonaEvalCallback(evaluate, tmp_path, a, max_kl=budget)
    trainer = build_dpo_trainer(
        model, tok, pair_dataset(), a, TrainerRun(tmp_path / "trl", callbacks=[cb.hooks()]), max_kl=budget
    )
    cb.bind(trainer)
    trainer.train()
    hist = read_history(tmp_path / "metrics.jsonl")
    assert hist[0]["step"] == 0 and hist[0]["checkpoint"] == "checkpoints/step-0" and abs(hist[0]["kl"]) < 1e-6
    assert hist[1]["step"] == 1 and hist[1]["decision"] == "stop" and hist[1]["kl"] > budget
    assert trainer.state.global_step == 1
    # Nothing trained is within the budget: the selection falls back to the starting point, never to the last step.
    from personatune.kl_budget import select_checkpoint

    assert select_checkpoint(hist, budget).record["step"] == 0
    assert any("persona/kl" in r for r in trainer.state.log_history)


def test_first_eval_over_budget_goes_on_from_an_untrained_start_without_a_step0_eval(tmp_path):
    """Stage 5 without `train.eval_at_start`: its untrained start is over the drift budget by construction, so the
    first eval over the budget is no reason to stop (`untrained_start`); a run that began inside the budget stops."""
    _, tok = models.build_tiny_model(seed=2)

    def evaluate(policy, reference):
        kl = measure_kl(policy, reference, tok, HELD, max_new_tokens=8, seed=0, batch_size=4)
        return EvalResult(kl, Measurement(0.5, n=4), Measurement(0.9, n=4), 0.1, texts=["x"] * 4)

    budget = 1e-6
    a = args(max_steps=2, eval_every=1, kl_control="stop", eval_at_start=False)
    steps = {}
    for untrained in (True, False):
        out = tmp_path / str(untrained)
        cb = PersonaEvalCallback(evaluate, out, a, max_kl=budget, untrained_start=untrained)
        trainer = build_dpo_trainer(
            models.build_tiny_model(seed=2)[0],
            tok,
            pair_dataset(),
            a,
            TrainerRun(out / "trl", callbacks=[cb.hooks()]),
            max_kl=budget,
        )
        cb.bind(trainer)
        trainer.train()
        hist = read_history(out / "metrics.jsonl")
        assert hist[0]["step"] == 1 and hist[0]["kl"] > budget
        steps[untrained] = (trainer.state.global_step, hist[0]["decision"], hist[0]["reason"])
    assert steps[True][:2] == (2, "continue") and "first eval" in steps[True][2]
    assert steps[False][:2] == (1, "stop")


def _tensorboard_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the TensorBoard event files under `folder` (TFRecord framing: length, crc, event, crc)."""
    import struct

    from tensorboardX.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    for f in sorted(folder.rglob("events.out.tfevents*")):
        data = f.read_bytes()
        i = 0
        while i + 12 <= len(data):
            (n,) = struct.unpack("<Q", data[i : i + 8])
            ev = event_pb2.Event.FromString(data[i + 12 : i + 12 + n])
            i += 12 + n + 4
            for v in ev.summary.value:
                out.setdefault(v.tag, []).append((ev.step, v.simple_value))
    return out


def test_report_to_tensorboard_receives_the_persona_metrics(tmp_path):
    """`train.report_to=tensorboard` is passed to TRL: the tracker gets KL, consistency, adherence next to the loss."""
    pytest.importorskip("tensorboardX", reason="tensorboardX is part of the dev extra")
    model, tok = models.build_tiny_model(seed=3)

    def evaluate(policy, reference):
        kl = measure_kl(policy, reference, tok, HELD, max_new_tokens=6, seed=0, batch_size=4)
        return EvalResult(kl, Measurement(0.25, n=4), Measurement(0.75, n=4), 0.125, texts=["x"] * 4)

    a = args(max_steps=2, report_to="tensorboard", eval_every=1, kl_control="stop", eval_at_start=False)
    cb = PersonaEvalCallback(evaluate, tmp_path, a, max_kl=10.0)
    trainer = build_dpo_trainer(
        model, tok, pair_dataset(), a, TrainerRun(tmp_path / "trl", callbacks=[cb.hooks()]), max_kl=10.0
    )
    cb.bind(trainer)
    trainer.train()
    scalars = _tensorboard_scalars(tmp_path)
    hist = read_history(tmp_path / "metrics.jsonl")
    # transformers' TensorBoardCallback files training logs under "train/".
    assert [s for s, _ in scalars["train/persona/consistency"]] == [1, 2], sorted(scalars)
    assert [v for _, v in scalars["train/persona/consistency"]] == [0.25, 0.25] and [
        v for _, v in scalars["train/persona/adherence"]
    ] == [0.75, 0.75]
    assert [v for _, v in scalars["train/persona/kl"]] == pytest.approx([r["kl"] for r in hist], rel=1e-5) and hist[-1][
        "kl"
    ] > 0
    assert [s for s, _ in scalars["train/loss"]] == [1, 2]


def deepspeed_cpu_config(repo_root, zero, folder):
    """The shipped configs/accelerate/deepspeed_zero{2,3}.yaml cut to 2 CPU processes (run with DS_ACCELERATOR=cpu:
    DeepSpeed's CPU accelerator over gloo). Skips the test without deepspeed (not a personatune dependency)."""
    pytest.importorskip("deepspeed")
    shipped = (repo_root / f"configs/accelerate/deepspeed_zero{zero}.yaml").read_text()
    cpu = shipped.replace("num_processes: 8", "num_processes: 2").replace("use_cpu: false", "use_cpu: true")
    cpu = cpu.replace("mixed_precision: bf16", 'mixed_precision: "no"')
    assert cpu.count("num_processes: 2") == 1 and "use_cpu: true" in cpu  # the shipped file still has these keys
    path = folder / f"zero{zero}_cpu.yaml"
    path.write_text(cpu)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("launch", ["ddp", "deepspeed_zero2", "deepspeed_zero3"])
def test_two_process_cpu_dpo(tmp_path, repo_root, launch):
    """accelerate launch with 2 CPU processes trains the tiny model with DPO: configs/accelerate/cpu_2proc.yaml (DDP over
    gloo), or the shipped deepspeed_zero{2,3}.yaml cut to the CPU (a ZeRO engine; skipped without deepspeed). The eval
    callback runs and the adapter checkpoints are whole (ZeRO-3 gathers them)."""
    zero = None if launch == "ddp" else int(launch[-1])
    config = None if zero is None else deepspeed_cpu_config(repo_root, zero, tmp_path)
    script = tmp_path / "dpo.py"
    script.write_text(
        textwrap.dedent(f"""
        import json, torch
        from tests.stages.test_training import pair_dataset, args
        from personatune import models
        from personatune.training import PersonaEvalCallback, TrainerRun, build_dpo_trainer
        model, tok = models.build_tiny_model(seed=0)
        a = args(max_steps=4, per_device_batch_size=2, eval_every=2)
        cb = PersonaEvalCallback(None, {str(tmp_path)!r}, a, max_kl=0.1)
        tr = build_dpo_trainer(model, tok, pair_dataset(), a, TrainerRun({str(tmp_path / "trl")!r}, callbacks=[cb.hooks()]), max_kl=0.1)
        cb.bind(tr)
        tr.train()
        acc = tr.accelerator
        if acc.is_main_process:
            ds = acc.state.deepspeed_plugin
            print("RESULT", json.dumps({{"world": acc.num_processes, "backend": str(torch.distributed.get_backend()),
                                         "type": acc.distributed_type.value, "zero": ds.zero_stage if ds else None,
                                         "steps": tr.state.global_step}}))
    """)
    )
    env = None if zero is None else {"DS_ACCELERATOR": "cpu"}
    rc, out, err = launch_two_cpu(script, [], repo_root, timeout=600, config=config, env=env)
    assert rc == 0, err[-3000:]
    res = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT"))[7:])
    kind = "MULTI_CPU" if zero is None else "DEEPSPEED"
    assert res == {"world": 2, "backend": "gloo", "type": kind, "zero": zero, "steps": 4}
    adapters = load_file(tmp_path / "checkpoints/step-4/adapter_model.safetensors")
    assert adapters and all(t.numel() > 0 for t in adapters.values())  # gathered, not ZeRO-3's empty shards


@pytest.mark.slow
@pytest.mark.parametrize("zero", [2, 3])
def test_stage5_under_deepspeed_on_two_cpu_processes(tmp_path, repo_root, zero):
    """Stage 5 on the tiny model under the shipped ZeRO-2 / ZeRO-3 config cut to 2 CPU processes: every rank trains, the
    main one measures (ZeRO-3: each saved checkpoint after training, loaded whole; the trainer's model is a shard there),
    gates and saves a whole model once. Under ZeRO-3 the main rank's deferred evals first failed (a shard cannot merge)
    and then hung (transformers loaded the whole copy partitioned, a collective call)."""
    config = deepspeed_cpu_config(repo_root, zero, tmp_path)
    rd = tiny_run_through_stage3(
        tmp_path / "run", pair_dataset().to_list(), heldout_rows([m[0]["content"] for m in HELD * 2])
    )
    script = tmp_path / "stage5.py"
    script.write_text(
        textwrap.dedent(f"""
        import json, os
        from personatune.rundir import RunDir
        from personatune.stages import s5_optimization
        from tests.helpers import persona_config
        from tests.stages.test_training import STAGE5_TINY
        cfg = persona_config("model.name=tiny", "data.teacher.max_new_tokens=8", "eval.min_per_context=2",
                             "data.few_shot=false", *[f"train.{{k}}={{v}}" for k, v in STAGE5_TINY.items()])
        res = s5_optimization.run(cfg, RunDir({str(rd.root)!r}))
        print("RESULT", json.dumps({{"rank": int(os.environ["RANK"]), "gates": len(res.gate.results)}}))
    """)
    )
    rc, out, err = launch_two_cpu(script, [], repo_root, timeout=900, config=config, env={"DS_ACCELERATOR": "cpu"})
    assert rc == 0, err[-3000:]
    ranks = sorted(json.loads(line[7:])["rank"] for line in out.splitlines() if line.startswith("RESULT"))
    assert ranks == [0, 1]
    out5 = rd.root / "05_optimization"
    m = json.loads((out5 / "metrics.json").read_text())
    assert [r["step"] for r in m["history"]] == [0, 2, 4] and all(r["kl"] is not None for r in m["history"])
    assert (out5 / "metrics_deferred.jsonl").exists() == (zero == 3)
    model, _ = models.load_model_and_tokenizer(str(out5 / "model"))
    tiny, _ = models.build_tiny_model(seed=0)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in tiny.parameters())  # whole, not a shard


def test_stage5_run_selects_checkpoint_within_budget_and_writes_gate(tmp_path):
    """s5_optimization.run on a hand-made run dir (tiny baseline, a few pairs, held-out prompts): trains, selects, gates, saves."""
    from personatune.config import RunConfig
    from personatune.stages import s5_optimization

    held = heldout_rows([m[0]["content"] for m in HELD * 2])
    rd = tiny_run_through_stage3(tmp_path / "run", pair_dataset().to_list(), held)
    over = STAGE5_TINY
    base = [
        "model.name=tiny",
        "data.teacher.max_new_tokens=8",
        "eval.min_per_context=2",
        "data.few_shot=false",
    ]
    if "train" in RunConfig.model_fields:
        cfg = persona_config(*base, *[f"train.{k}={v}" for k, v in over.items()])
    else:  # until the lead nests TrainArgs in RunConfig
        cfg = persona_config(*base)
        cfg.__dict__["train"] = TrainArgs(**over)
    res = s5_optimization.run(cfg, rd)
    hist = read_history(rd.root / "05_optimization" / "metrics.jsonl")
    assert [r["step"] for r in hist] == [0, 2, 4] and all(r["kl"] is not None for r in hist)
    # Step 0 is the baseline itself: no persona shift, but drift KL > 0 (the reference sees the persona system prompt).
    assert (
        hist[0]["checkpoint"] == "checkpoints/step-0" and abs(hist[0]["persona_shift"]) < 1e-6 and hist[0]["kl"] > 1e-4
    )
    assert all(r["kl_reference"] == "persona-prompted baseline" for r in hist)
    m = json.loads((rd.root / "05_optimization" / "metrics.json").read_text())
    within = [r["step"] for r in hist if r["checkpoint"] and r["kl"] <= cfg.gates.optimization.max_kl]
    assert m["final"]["selected_step"] == (m["selection"]["record"] or {}).get("step") and (
        m["final"]["selected_step"] in within or not within
    )
    assert {g.metric for g in res.gate.results} == {
        "kl_per_token",
        "consistency_rate",
        "adherence",
        "style_variance",
        "on_task_retention",
    }
    # the baseline's on-task rate beside the policy's
    assert m["on_task"]["baseline_samples"] and "retention" in m["on_task"]
    kl_gate = next(g for g in res.gate.results if g.metric == "kl_per_token")
    assert kl_gate.unit == "nats/token" and kl_gate.n == len(held) and kl_gate.value == m["kl"]["kl_per_token"]
    assert "persona context" in m["kl"]["reference"] and "without" in m["persona_shift"]["reference"]
    assert (
        "drift KL" in kl_gate.description
        and "persona_shift" in (rd.root / "05_optimization" / "model" / "README.md").read_text()
    )
    assert set(res.outputs) == {"model", "metrics", "card", "final_eval"}
    # The saved model is merged (no adapter files) and loads with its chat template.
    assert not (rd.root / "05_optimization" / "model" / "adapter_config.json").exists()
    m2, t2 = models.load_model_and_tokenizer(str(rd.root / "05_optimization" / "model"))
    assert (
        t2.chat_template and "Checkpoint selection" in (rd.root / "05_optimization" / "model" / "README.md").read_text()
    )


def test_dpo_dataset_leaves_out_pairs_whose_rejected_is_consistent(tmp_path):
    from personatune.errors import DataError
    from personatune.stages.s5_optimization import train_dataset

    def row(i, rc):
        return {
            "prompt": [{"role": "user", "content": f"q{i}"}],
            "chosen": [{"role": "assistant", "content": f"good {i}"}],
            "rejected": [{"role": "assistant", "content": f"bad {i}"}],
            "rejected_consistent": rc,
        }

    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(row(i, i % 3 == 0)) for i in range(6)) + "\n")
    ds = train_dataset(path, "dpo")
    assert [r["prompt"][0]["content"] for r in ds] == ["q1", "q2", "q4", "q5"]
    path.write_text(json.dumps(row(0, True)) + "\n")
    with pytest.raises(DataError, match="rejected_inconsistency_rate"):
        train_dataset(path, "dpo")


CONTEXT = [{"role": "system", "content": "You are Captain Nova, a brave and upbeat starship captain. Say ahoy."}]


@pytest.mark.parametrize("peft", ["lora", "full"])
def test_dpo_against_the_persona_prompted_reference(tmp_path, peft):
    """The DPO reference log-probs are the baseline's given the persona context: TRL reads them from the dataset
    (no reference forward of its own), the adapters/weights move, and the first logged implicit reward equals
    beta x (policy log-prob without context - baseline log-prob with context), computed here independently."""
    from personatune.models import encode_chat

    model, tok = models.build_tiny_model(seed=5)
    base, _ = models.build_tiny_model(seed=5)
    a = args(peft=peft, max_steps=2, per_device_batch_size=8, beta=0.1)
    trainer = build_dpo_trainer(
        model, tok, pair_dataset(), a, TrainerRun(tmp_path / "trl"), max_kl=0.1, reference_context=CONTEXT
    )
    ds = trainer.train_dataset
    assert trainer.precompute_ref_logps and "ref_chosen_logps" in ds.column_names

    def logp(m, prefix, completion):
        ids = torch.tensor([prefix + completion])
        with torch.no_grad():
            lp = torch.log_softmax(m(input_ids=ids).logits[0].double(), -1)
        return sum(float(lp[len(prefix) + i - 1, t]) for i, t in enumerate(completion))

    want_ref, want_pol = [], []
    for row in ds:
        ctx_prefix = encode_chat(tok, CONTEXT + row["prompt"], add_generation_prompt=True)
        want_ref.append(logp(base, ctx_prefix, row["chosen_ids"]))
        want_pol.append(logp(base, row["prompt_ids"], row["chosen_ids"]))
    # The logged reference log-probs are the prompted baseline's, token for token.
    assert max(abs(a - b) for a, b in zip(ds["ref_chosen_logps"], want_ref)) < 1e-3
    assert any(abs(a - b) > 0.05 for a, b in zip(want_ref, want_pol))  # the context matters, or the test proves nothing
    before = (
        lora_snapshot(trainer.model)
        if peft == "lora"
        else {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    )
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(before[n], after[n].detach()) for n in before)
    first = next(h for h in trainer.state.log_history if "rewards/chosen" in h)
    expected = 0.1 * sum(p - r for p, r in zip(want_pol, want_ref)) / len(want_ref)
    assert abs(first["rewards/chosen"] - expected) < 2e-3 * max(1.0, abs(expected))


def test_sft_on_chosen_answers_trains_the_adapters(tmp_path):
    from personatune.training import build_sft_trainer

    model, tok = models.build_tiny_model(seed=6)
    rows = [
        {"prompt": [{"role": "user", "content": p}], "completion": [{"role": "assistant", "content": c}]}
        for p, c, _ in PAIRS
    ]
    trainer = build_sft_trainer(
        model, tok, datasets.Dataset.from_list(rows), args(algorithm="sft", max_steps=2), TrainerRun(tmp_path / "trl")
    )
    before = lora_snapshot(trainer.model)
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert before and any(not torch.equal(before[n], after[n].detach()) for n in before)
    # the loss is on the completion only: TRL masks the prompt
    assert trainer.args.completion_only_loss is True


def test_one_sdft_step_distills_towards_the_persona_prompted_baseline(tmp_path):
    from personatune.training import build_sdft_trainer

    model, tok = models.build_tiny_model(seed=7)
    rows = [
        {"prompt": [{"role": "user", "content": p}], "privileged_context": CONTEXT[0]["content"]}
        for p, _, _ in PAIRS[:4]
    ]
    a = args(algorithm="sdft", max_steps=1, per_device_batch_size=4, max_completion_length=8)
    trainer = build_sdft_trainer(model, tok, datasets.Dataset.from_list(rows), a, TrainerRun(tmp_path / "trl"))
    assert trainer.args.distillation_alpha == 1.0 and trainer.args.teacher_model_kind == "base"
    before = lora_snapshot(trainer.model)
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(before[n], after[n].detach()) for n in before)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and losses[0] > 0  # a non-zero divergence to the prompted teacher was minimized

    with pytest.raises(ConfigError, match="train.peft=lora"):
        build_sdft_trainer(
            models.build_tiny_model(seed=7)[0],
            tok,
            datasets.Dataset.from_list(rows),
            args(algorithm="sdft", peft="full"),
            TrainerRun(tmp_path / "trl2"),
        )


def test_a_persona_context_longer_than_the_window_is_refused_before_model_work(tmp_path):
    from personatune.persona import load_persona
    from personatune.stages.optimization_common import reference_context

    spec = load_persona(PERSONA)
    model, tok = models.build_tiny_model(seed=0)
    model.config.max_position_embeddings = (
        1000  # the tiny tokenizer is character-level: ~1,100 tokens with few-shot turns, ~720 without
    )
    models.save_model(model, tok, tmp_path / "base")
    cfg = persona_config("model.name=tiny")
    with pytest.raises(
        ConfigError,
        match=r"data.few_shot=true: the persona context is \d+ tokens.*window of 1000.*fix: set data.few_shot=false",
    ):
        reference_context(cfg, spec, str(tmp_path / "base"), HELD)
    ctx = reference_context(
        cfg.model_copy(update={"data": cfg.data.model_copy(update={"few_shot": False})}),
        spec,
        str(tmp_path / "base"),
        HELD,
    )
    assert [m["role"] for m in ctx] == ["system"]


def test_a_wall_clock_budget_stops_training_and_evaluates_the_last_state(tmp_path):
    import time as _time

    model, tok = models.build_tiny_model(seed=2)

    def evaluate(policy, reference):
        _time.sleep(0.3)  # evals do not count against the training budget
        kl = measure_kl(policy, reference, tok, HELD[:2], max_new_tokens=4, seed=0, batch_size=2)
        return EvalResult(kl, Measurement(0.5, n=2), Measurement(0.9, n=2), 0.1, texts=["x"] * 2)

    a = args(max_steps=50, eval_every=1, eval_at_start=True, max_train_seconds=1e-3)
    cb = PersonaEvalCallback(evaluate, tmp_path, a, max_kl=10.0)
    trainer = build_dpo_trainer(
        model, tok, pair_dataset(), a, TrainerRun(tmp_path / "trl", callbacks=[cb.hooks()]), max_kl=10.0
    )
    cb.bind(trainer)
    trainer.train()
    hist = read_history(tmp_path / "metrics.jsonl")
    assert trainer.state.global_step == 1 and [r["step"] for r in hist] == [0, 1]
    assert cb.eval_seconds >= 0.6 and hist[-1]["train_seconds"] < cb.eval_seconds


def test_a_reference_that_cannot_be_built_is_one_line_naming_the_fix(tmp_path):
    from personatune.errors import RunDirError
    from personatune.persona import load_persona
    from personatune.stages.optimization_common import reference_context

    (tmp_path / "base").mkdir()  # a baseline folder without a tokenizer or config
    cfg = persona_config("model.name=tiny")
    with pytest.raises(RunDirError, match=r"cannot be read to build the drift-KL reference .*fix: re-run stage 1") as e:
        reference_context(cfg, load_persona(PERSONA), str(tmp_path / "base"), HELD)
    assert "\n" not in str(e.value)


def test_reference_samples_are_drawn_from_the_persona_prompted_baseline_and_filtered(tmp_path, monkeypatch):
    """train.sft_source=reference: samples of the baseline GIVEN the persona context (temperature 1, top_p 1), kept
    when consistent and on task, without the context in the training rows; cached, so a re-run generates nothing."""
    from types import SimpleNamespace

    from personatune.errors import DataError
    from personatune.generation import hf
    from personatune.generation.resumable import _job_key, _load_generations
    from personatune.persona import load_persona
    from personatune.persona_prompt import persona_context
    from personatune.stages.reference_sft import reference_sft_rows
    from personatune.stages.s1_baseline import baseline_model_path
    from personatune.stages.s5_optimization import train_dataset

    rd = tiny_run_through_stage3(tmp_path / "run", pair_dataset().to_list(), heldout_rows(["Say hello."]))
    cfg = persona_config(
        "model.name=tiny", "data.few_shot=false", "train.reference_samples=2", "train.kl_max_new_tokens=6"
    )
    spec = load_persona(PERSONA)
    context = persona_context(spec, few_shot=False)
    model, tok = models.load_configured_model(baseline_model_path(rd), cfg.model)

    class Scorer:  # every second sample is consistent; on task unless it is the third of a batch
        def __init__(self, consistent=True):
            self.ok = consistent

        def score(self, texts, **kw):
            return [
                SimpleNamespace(consistent=self.ok and i % 2 == 0, on_task=0.2 if i % 3 == 2 else 0.9, consistency=0.7)
                for i in range(len(texts))
            ]

    rows, info = reference_sft_rows(cfg, rd, spec, context, model, tok, Scorer())
    n = len(PAIRS) * 2
    want = sum(1 for i in range(n) if i % 2 == 0 and i % 3 != 2)
    assert info == {"prompts": len(PAIRS), "sampled": n, "consistent": n // 2, "kept": want, "kept_prompts": want}
    assert len(rows) == want and all(r["messages"][0]["role"] == "user" for r in rows)  # no persona context in the data
    done = _load_generations(rd.root / "05_optimization" / "reference_samples.jsonl")
    params = {"max_new_tokens": 6, "temperature": 1.0, "top_p": 1.0, "seed": cfg.seed, "n": 2}
    for p, _, _ in PAIRS:  # the conversation sampled is the drift-KL reference's: persona context c, then the prompt
        assert _job_key(context + [{"role": "user", "content": p}], params) in done
    assert (rd.root / "05_optimization" / "reference_sft.jsonl").exists()
    ds = train_dataset(rd.root / "03_consistency_data" / "train" / "pairs.jsonl", "sft", sft_rows=rows)
    assert len(ds) == want and ds[0]["completion"][0]["role"] == "assistant"

    # resumed: every sample comes from the cache
    monkeypatch.setattr(hf.HFBackend, "generate", lambda *a, **k: pytest.fail("generated again"))
    assert reference_sft_rows(cfg, rd, spec, context, model, tok, Scorer())[0] == rows
    with pytest.raises(DataError, match="train.reference_samples"):
        reference_sft_rows(cfg, rd, spec, context, model, tok, Scorer(consistent=False))


def test_capability_anchors_join_the_reference_samples_when_correct(tmp_path, monkeypatch):
    """train.anchor_samples: the persona-prompted reference answers each capability anchor; the answers that pass the
    item's check are added after the persona rows (no persona context in them), the others are dropped; cached."""
    from types import SimpleNamespace

    from personatune import capability
    from personatune.generation import hf
    from personatune.generation.resumable import _job_key, _load_generations
    from personatune.persona import load_persona
    from personatune.persona_prompt import persona_context
    from personatune.stages.reference_sft import reference_sft_rows
    from personatune.stages.s1_baseline import baseline_model_path

    rd = tiny_run_through_stage3(tmp_path / "run", pair_dataset().to_list(), heldout_rows(["Say hello."]))
    cfg = persona_config(
        "model.name=tiny",
        "data.few_shot=false",
        "train.algorithm=sft",
        "train.sft_source=reference",
        "train.reference_samples=1",
        "train.anchor_samples=2",
        "train.kl_max_new_tokens=4",
    )
    spec = load_persona(PERSONA)
    context = persona_context(spec, few_shot=False)
    model, tok = models.load_configured_model(baseline_model_path(rd), cfg.model)
    # the tiny model's answers are random tokens: one anchor every answer passes (no check), one none can
    anchors = [
        capability.Item("instructions", "Say anything.", [], {}),
        capability.Item("arithmetic", "What is 2 + 2?", ["thiswordisnotinthetinyvocab"]),
    ]
    monkeypatch.setattr(capability, "load_anchors", lambda: anchors)

    class Scorer:
        def score(self, texts, **kw):
            return [SimpleNamespace(consistent=True, on_task=0.9, consistency=0.7) for _ in texts]

    rows, info = reference_sft_rows(cfg, rd, spec, context, model, tok, Scorer())
    assert info["anchors"] == {"items": 2, "sampled": 4, "kept": 2, "kept_items": 1, "per_task": {"instructions": 2}}
    assert len(rows) == info["kept"] + 2
    assert [r["messages"][0]["content"] for r in rows[-2:]] == ["Say anything."] * 2
    assert all(r["messages"][0]["role"] == "user" and r["context"] == "capability_anchor" for r in rows[-2:])
    done = _load_generations(rd.root / "05_optimization" / "anchor_samples.jsonl")
    params = {"max_new_tokens": 4, "temperature": 1.0, "top_p": 1.0, "seed": cfg.seed, "n": 2}
    assert _job_key(context + [{"role": "user", "content": "Say anything."}], params) in done
    monkeypatch.setattr(hf.HFBackend, "generate", lambda *a, **k: pytest.fail("generated again"))
    assert reference_sft_rows(cfg, rd, spec, context, model, tok, Scorer())[0] == rows


def test_the_shipped_capability_anchors_are_checkable_and_not_the_suite():
    from personatune.capability import load_anchors, load_suite

    anchors, suite = load_anchors(), load_suite()[0]
    assert len(anchors) >= 30 and {a.task for a in anchors} == {"arithmetic", "facts"}
    assert not {a.question.lower() for a in anchors} & {s.question.lower() for s in suite}
    assert all(a.answers for a in anchors)
