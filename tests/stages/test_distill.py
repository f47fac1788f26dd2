"""train.algorithm=gkd on the tiny in-process model: TRL's GKD with the persona-prompted baseline as teacher.

Checked against brute force: the teacher's distribution at every answer token is the baseline's given the persona
context c + prompt (what drift KL measures against), and the first logged loss is the forward KL(teacher || student)
computed here independently; one step moves the weights; stage 5 runs the recipe end to end.
"""

from __future__ import annotations

import json

import pytest
import torch

from personatune.training import TrainerRun, reference_of
from tests.helpers import heldout_rows, persona_config, tiny_run_through_stage3
from tests.stages.test_training import CONTEXT, PAIRS, STAGE5_TINY, args, lora_snapshot, pair_dataset

datasets = pytest.importorskip("datasets")
models = pytest.importorskip("personatune.models")
distill = pytest.importorskip("personatune.training.distill")


def sft_rows():
    return [
        {"prompt": [{"role": "user", "content": p}], "completion": [{"role": "assistant", "content": c}]}
        for p, c, _ in PAIRS
    ]


def brute_force_logprobs(model, tok, messages, answer):
    """log model(. | messages rendered + answer[:t]) for each answer token t, one plain forward, float64."""
    from personatune.models import encode_chat

    prefix = encode_chat(tok, messages, add_generation_prompt=True)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prefix + answer])).logits[0].double()
    return torch.log_softmax(logits, -1)[len(prefix) - 1 : len(prefix) - 1 + len(answer)]


def answer_positions(batch, b, row):
    """Padded positions whose logits predict row b's answer tokens (TRL's collator pads on the left)."""
    start = int((batch["attention_mask"][b] == 0).sum())
    k = row["completion_mask"].index(1)
    return start + k - 1, row["input_ids"][k:]


@pytest.mark.parametrize("peft", ["lora", "full"])
def test_the_gkd_teacher_is_the_persona_prompted_baseline_and_one_step_trains(tmp_path, peft):
    model, tok = models.build_tiny_model(seed=7)
    base, _ = models.build_tiny_model(seed=7)
    for m in (model, base):  # sharper distributions than random init gives, so forward and reverse KL differ clearly
        with torch.no_grad():
            m.model.norm.weight.mul_(20.0)
    rows = sft_rows()
    ds = distill.gkd_dataset(tok, rows, CONTEXT, cap=None)
    # float32 training: the teacher is compared with a float32 brute force (bf16 mixed precision has its own test below)
    a = args(algorithm="gkd", peft=peft, max_steps=1, per_device_batch_size=len(rows), logging_steps=1, bf16=False)
    trainer = distill.build_gkd_trainer(model, tok, ds, a, TrainerRun(tmp_path / "trl"), context=CONTEXT)
    batch = trainer.data_collator([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        teacher = trainer.teacher_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        student = torch.log_softmax(
            trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double(), -1
        )
    kl_sum, tokens, context_matters = 0.0, 0, 0.0
    for b, r in enumerate(rows):
        at, answer = answer_positions(batch, b, ds[b])
        want = brute_force_logprobs(base, tok, CONTEXT + r["prompt"], answer)
        got = teacher[b, at : at + len(answer)].double()
        assert torch.allclose(got, want, atol=1e-4), f"row {b}: max diff {(got - want).abs().max():.3g}"
        plain = brute_force_logprobs(base, tok, r["prompt"], answer)
        context_matters = max(context_matters, float((want - plain).abs().max()))
        s = student[b, at : at + len(answer)]
        kl_sum += float((want.exp() * (want - s)).sum())
        tokens += len(answer)
    assert context_matters > 0.05  # the teacher sees c, or the test proves nothing
    before = (
        lora_snapshot(trainer.model)
        if peft == "lora"
        else {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    )
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert before and any(not torch.equal(before[n], after[n].detach()) for n in before)
    # The first logged loss is the mean forward KL(teacher || student) per answer token, at the untrained student.
    first = next(h for h in trainer.state.log_history if "loss" in h)["loss"]
    # (forward, beta=0: reverse KL here is ~3x larger, so a trainer that computed it would fail this)
    assert abs(first - kl_sum / tokens) < 1e-3 * kl_sum / tokens
    # The reference the gate uses (without c) is the baseline, not the trained policy.
    ref = reference_of(trainer)
    ids = batch["input_ids"][:1]
    with torch.no_grad():
        assert torch.allclose(ref(input_ids=ids).logits, base(input_ids=ids).logits, atol=1e-5)


def test_the_teacher_keeps_the_persona_context_across_steps_with_the_same_target(monkeypatch):
    """The frozen baseline runs c once: later steps reuse its keys and values and get the very same log-probabilities
    as running c again; a new autocast state (bf16 mixed precision) or a new reference runs it afresh."""
    from personatune import kl

    model, tok = models.build_tiny_model(seed=7)
    ds = distill.gkd_dataset(tok, sft_rows(), CONTEXT, cap=None)
    ps, pt = distill.template_prefixes(tok, CONTEXT)
    assert len(pt) - 1 >= kl.MIN_SHARED_PREFIX  # c is long enough to be shared, or the test proves nothing
    runs = []
    real = kl._run_prefix
    monkeypatch.setattr(kl, "_run_prefix", lambda *a, **k: runs.append(len(a[2])) or real(*a, **k))
    kept = distill.PromptedTeacher(model, ps, pt, tok.pad_token_id, model.config)
    plain = distill.PromptedTeacher(model, ps, pt, tok.pad_token_id, model.config)
    plain.keep_prefix = False
    rows = [ds[i] for i in range(len(ds))]
    pad = tok.pad_token_id
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r["input_ids"])) + r["input_ids"] for r in rows])
    am = (torch.arange(width)[None, :] >= torch.tensor([width - len(r["input_ids"]) for r in rows])[:, None]).long()
    with torch.no_grad():
        want = plain(input_ids=ids, attention_mask=am).logits
        assert len(runs) == 1
        for step in range(3):  # three steps, with batches of other sizes
            n = len(rows) - step % 2
            got = kept(input_ids=ids[:n], attention_mask=am[:n]).logits
            assert torch.equal(got, want[:n])
        assert len(runs) == 2  # plain's one run + kept's first
        with torch.autocast("cpu", dtype=torch.bfloat16):
            cast = kept(input_ids=ids, attention_mask=am).logits
        assert len(runs) == 3 and not torch.equal(cast, want)
        kept.reference, _ = models.build_tiny_model(seed=8)
        kept(input_ids=ids, attention_mask=am)
        assert len(runs) == 4


def test_answers_cut_at_the_sampling_cap_get_no_end_of_answer_token():
    model, tok = models.build_tiny_model(seed=7)
    short = tok("Aye.", add_special_tokens=False).input_ids
    long_text = "Ahoy friend " * 20
    n_long = len(tok(long_text, add_special_tokens=False).input_ids)
    rows = [
        {"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": t}]}
        for t in ("Aye.", long_text)
    ]
    ds = distill.gkd_dataset(tok, rows, CONTEXT, cap=n_long)
    ends = [r["input_ids"][-1] for r in ds]
    assert ends[0] == tok.eos_token_id and ends[1] != tok.eos_token_id
    assert sum(ds[0]["completion_mask"]) == len(short) + 1 and sum(ds[1]["completion_mask"]) == n_long
    # without a cap every answer ends with one
    assert all(r["input_ids"][-1] == tok.eos_token_id for r in distill.gkd_dataset(tok, rows, CONTEXT, cap=None))


def test_a_template_that_does_not_compose_with_the_context_is_one_line(monkeypatch):
    """When c + prompt renders as other tokens than c's prefix + the prompt's tokens, the GKD teacher would not be the
    drift-KL reference: refused before training, naming the recipe to use instead."""
    from personatune import models as m
    from personatune.errors import ConfigError

    model, tok = models.build_tiny_model(seed=7)
    real = m.encode_chat
    # A template that writes the persona context after the prompt instead of before it.
    monkeypatch.setattr(
        m,
        "encode_chat",
        lambda t, msgs, add_generation_prompt=True: real(
            t, [x for x in msgs if x["role"] != "system"] + [x for x in msgs if x["role"] == "system"], True
        ),
    )
    with pytest.raises(ConfigError, match=r"train.algorithm=gkd: .*fix: use train.algorithm=sft") as e:
        distill.gkd_dataset(tok, sft_rows(), CONTEXT, cap=None)
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_two_process_cpu_gloo_gkd(tmp_path, repo_root):
    """accelerate launch with configs/accelerate/cpu_2proc.yaml: 2 CPU processes (gloo) train the tiny model with GKD,
    the teacher being the policy with its adapters off given the persona context, on every rank."""
    import textwrap

    from tests.launch import launch_two_cpu

    script = tmp_path / "ddp_gkd.py"
    script.write_text(
        textwrap.dedent(f"""
        import json, math, torch
        from tests.stages.test_distill import sft_rows
        from tests.stages.test_training import CONTEXT, args, lora_snapshot
        from personatune import models
        from personatune.training import TrainerRun
        from personatune.training.distill import build_gkd_trainer, gkd_dataset
        model, tok = models.build_tiny_model(seed=0)
        ds = gkd_dataset(tok, sft_rows(), CONTEXT, cap=None)
        tr = build_gkd_trainer(model, tok, ds, args(algorithm="gkd", max_steps=2, per_device_batch_size=2),
                               TrainerRun({str(tmp_path / "trl")!r}), context=CONTEXT)
        before = lora_snapshot(tr.model)
        tr.train()
        after = dict(tr.model.named_parameters())
        moved = any(not torch.equal(before[n], after[n].detach()) for n in before)
        losses = [h["loss"] for h in tr.state.log_history if "loss" in h]
        if tr.accelerator.is_main_process:
            print("RESULT", json.dumps({{"world": tr.accelerator.num_processes, "steps": tr.state.global_step,
                                         "moved": moved, "finite": all(math.isfinite(x) for x in losses) and bool(losses)}}))
    """)
    )
    rc, out, err = launch_two_cpu(script, [], repo_root)
    assert rc == 0, err[-3000:]
    res = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT"))[7:])
    assert res == {"world": 2, "steps": 2, "moved": True, "finite": True}


@pytest.mark.parametrize("var", ["ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP"])
def test_gkd_under_deepspeed_or_fsdp_is_refused_in_one_line(tmp_path, monkeypatch, var):
    from personatune.errors import ConfigError

    model, tok = models.build_tiny_model(seed=7)
    monkeypatch.setenv(var, "true")
    with pytest.raises(ConfigError, match=r"train.algorithm=gkd .* under (DeepSpeed|FSDP).*fix: run the stage") as e:
        distill.build_gkd_trainer(model, tok, [], args(algorithm="gkd"), TrainerRun(tmp_path / "trl"), context=CONTEXT)
    assert "\n" not in str(e.value)
    monkeypatch.setenv(var, "false")
    assert distill.sharded_launch_problem() is None


def test_gkd_loads_without_beta_and_with_reference_samples():
    cfg = persona_config(
        "train.algorithm=gkd", "train.beta=0", "train.sft_source=reference", "iterations.algorithm=gkd"
    )
    assert cfg.train.algorithm == "gkd" and cfg.iterations.algorithm == "gkd"


def test_stage5_trains_gkd_selects_within_budget_and_gates(tmp_path):
    """s5_optimization.run with train.algorithm=gkd on stage 3's chosen answers: trains, evaluates, selects, saves."""
    from personatune.stages import s5_optimization
    from personatune.training import read_history

    chosen = [{"messages": r["prompt"] + r["completion"]} for r in sft_rows()]
    held = heldout_rows([p for p, _, _ in PAIRS])
    rd = tiny_run_through_stage3(tmp_path / "run", pair_dataset().to_list(), held, sft=chosen)
    over = dict(STAGE5_TINY, algorithm="gkd")
    cfg = persona_config(
        "model.name=tiny",
        "data.teacher.max_new_tokens=8",
        "eval.min_per_context=2",
        "data.few_shot=false",
        *[f"train.{k}={v}" for k, v in over.items()],
    )
    res = s5_optimization.run(cfg, rd)
    hist = read_history(rd.root / "05_optimization" / "metrics.jsonl")
    assert [r["step"] for r in hist] == [0, 2, 4] and all(r["kl"] is not None for r in hist)
    m = json.loads((rd.root / "05_optimization" / "metrics.json").read_text())
    assert m["final"]["steps_trained"] == 4 and res.message.startswith("gkd 4 steps")
    card = (rd.root / "05_optimization" / "model" / "README.md").read_text()
    assert "Trained with TRL GKD" in card and "distillation towards the persona-prompted baseline" in card
    assert not (rd.root / "05_optimization" / "model" / "adapter_config.json").exists()


class PlainScorer:
    """Every response consistent and on task: this test reads the KL of an eval, not its persona figures."""

    def score(self, texts, *, prompts, contexts, targets, ids):
        from personatune.scoring.record import ResponseScore

        return [
            ResponseScore(
                id=i,
                traits={"brave": 1.0},
                violations={"brave": 0.0},
                style={},
                style_match=1.0,
                rules={},
                consistent=True,
                consistency=1.0,
                targets=list(t),
                context=c,
                on_task=1.0,
            )
            for i, c, t in zip(ids, contexts, targets)
        ]


def test_evals_measure_in_model_dtype_while_training_in_bf16_mixed_precision(tmp_path, monkeypatch):
    # train.bf16: accelerate runs the prepared model's forward under autocast (bfloat16 products); the evals of stages
    # 5-6 (drift KL, the samples the gates score) must stay in model.dtype, and training must keep its autocast.
    from personatune.training import EvalSet, EvalSettings, evaluation

    model, tok = models.build_tiny_model(seed=7)
    with torch.no_grad():  # sharper distributions, so bfloat16 rounding shows in the KL
        model.model.norm.weight.mul_(20.0)
    ds = distill.gkd_dataset(tok, sft_rows(), CONTEXT, cap=None)
    a = args(algorithm="gkd", peft="lora", max_steps=1, per_device_batch_size=len(ds), bf16=True)
    trainer = distill.build_gkd_trainer(model, tok, ds, a, TrainerRun(tmp_path / "trl"), context=CONTEXT)
    trainer.train()
    policy, ref = trainer.model, reference_of(trainer)
    assert "_original_forward" in vars(policy)  # accelerate wrapped the policy's forward in autocast
    rows = [
        {"id": f"p{i}", "messages": [{"role": "user", "content": p}], "context": "casual"}
        for i, (p, _, _) in enumerate(PAIRS)
    ]
    evalset = EvalSet.from_rows(rows)
    st = EvalSettings(
        kl_max_new_tokens=8, max_new_tokens=8, temperature=1.0, top_p=1.0, seed=3, batch_size=4, context=CONTEXT
    )
    got = evaluation.evaluate_policy(policy, ref, tok, evalset, PlainScorer(), st).kl.per_token
    assert "forward" in vars(policy)  # the wrapper is back: training goes on in mixed precision
    with monkeypatch.context() as m:  # the same eval through the wrapper: what the evals measured before
        m.setattr(evaluation, "measured_in_model_dtype", lambda *objs: __import__("contextlib").nullcontext())
        wrapped = evaluation.evaluate_policy(policy, ref, tok, evalset, PlainScorer(), st).kl.per_token
    trainer.accelerator.unwrap_model(policy, keep_fp32_wrapper=False)  # puts the plain forward back
    assert "_original_forward" not in vars(policy)
    plain = evaluation.evaluate_policy(policy, ref, tok, evalset, PlainScorer(), st).kl.per_token
    assert got == pytest.approx(plain, rel=1e-6, abs=1e-9)
    assert abs(wrapped - plain) > 1e-4 * max(plain, 1e-3)  # the wrapper would have changed the measurement
