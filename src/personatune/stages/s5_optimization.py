"""Stage 5 — KL-bounded optimization: put the persona into the weights, within a KL budget.

1. Load the baseline (stage 1) as the policy, the persona (stage 2), the stage-3 training pairs (no system
   prompt: the persona must end up in the weights) and the held-out prompts, and the scorer: the fitted
   evaluator of stage 4 when present, else a scorer built from the persona alone.
2. Train with TRL (`train.algorithm`: DPO on the pairs, SFT on stage 3's chosen answers or, with
   `train.sft_source: reference`, on consistent samples of the persona-prompted baseline (stages/reference_sft.py),
   GKD on the same answers against the persona-prompted baseline's whole distribution (training/distill.py), SDFT, or
   GRPO/RLOO online with the scorer's consistency as reward), LoRA or full, KL penalty `train.beta` > 0. Every `train.eval_every` steps PersonaEvalCallback samples
   the policy on held-out prompts, measures the exact per-token KL to the fixed reference (personatune.kl),
   scores the samples, appends the record to `metrics.jsonl`, saves a checkpoint, and the KL-budget controller
   decides whether to continue, stop or raise beta (`train.kl_control`).
3. Select the best checkpoint within the KL budget (optimization_common.select_in_budget, the rule stage 6 uses too) —
   never simply the last — and re-measure it on ALL held-out prompts for the gate (METRICS.md): KL <= max_kl nats/token,
   consistency >= 0.85, adherence >= 0.90, style variance < 0.15, on-task retention >= 0.95 (on-task rate of the
   policy's samples / the stage-1 baseline's, no system prompt, same held-out prompts and decoding; the baseline's
   responses are stage 4's `baseline_samples.json` when they provably match, else sampled again), all on the
   policy's own samples, no system prompt. Each rate needs `rate_min_n(threshold)` samples, style variance
   gates.evaluation.min_style_variance_n; fewer: inconclusive (METRICS.md "Evidence").
4. Save it (LoRA merged when `train.merge_lora`) with its tokenizer and chat template to `05_optimization/model/`,
   with a model card README.md, and the measurement of step 3 as `final_eval.json` (stage 6's round 0 is that same
   measurement of that same model: it reads it instead of measuring again).

Multi-process (accelerate launch / torchrun): every rank trains; the main rank does steps 3-4 and writes
`result.json`, the others wait at a barrier and return the same result. Under ZeRO-3 (parameters sharded) the main
rank evaluates the saved checkpoints after training, in a whole copy (`_whole_copy`, `_on_this_rank_alone`).
Outputs: model, metrics, card, final_eval.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from personatune.config import RunConfig
from personatune.errors import ConfigError, DataError
from personatune.expert_iteration import round_0_record
from personatune.gates import GateReport, fmt_metric
from personatune.kl_budget import Selection
from personatune.logs import logged_stage
from personatune.records import OptimizationMetrics, RoundResult, write_record
from personatune.rundir import RunDir, atomic_write_json, atomic_write_text, file_hash
from personatune.stage import StageResult
from personatune.stage3_rows import read_stage3
from personatune.stages.optimization_common import (
    STAGE3_FIX,
    DriftReference,
    baseline_on_task,
    build_trainer,
    eval_settings,
    load_checkpoint,
    load_inputs,
    optimization_gate,
    optimization_specs,
    read_stage_result,
    select_in_budget,
    training_seed,
    write_stage_result,
)
from personatune.stages.reference_sft import reference_sft_rows
from personatune.training import TrainArgs

log = logging.getLogger(__name__)

__all__ = ["STAGE", "model_card", "optimization_gate", "optimization_specs", "run", "train_dataset"]

STAGE = "05_optimization"


def train_dataset(
    pairs_path: Path, algorithm: str, privileged_context: str | None = None, sft_rows: list[dict] | None = None
) -> Any:
    """The TRL dataset from stage-3 data: DPO gets prompt/chosen/rejected; SFT and GKD prompt/completion from the chosen
    answers (`sft.jsonl` beside the pairs: consistent and on task; GKD's are tokenized by `training.distill.gkd_dataset`
    in `run`); GRPO/RLOO/SDFT one row per prompt (context, targets; SDFT
    also `privileged_context`, the rendered persona).

    Raises:
        DataError: the file is missing or empty, or a prompt carries a system turn (the persona must come from the weights).
    """
    from datasets import Dataset

    if algorithm in ("sft", "gkd"):
        sft_path = pairs_path.parent / "sft.jsonl"
        rows = sft_rows if sft_rows is not None else read_stage3(sft_path, "sft", STAGE3_FIX)
        if not rows:
            raise DataError(
                f"{sft_path} has no chosen answers; fix: check the stage-3 gate and data (data.max_prompts, data.best_of)"
            )
        for i, r in enumerate(rows, 1):
            if any(m.get("role") == "system" for m in r["messages"]):
                raise DataError(
                    f"{sft_path} line {i}: the prompt has a system turn; stage-5 prompts must have none so the persona is learned "
                    f"into the weights; fix: remove system turns from the prompts"
                )
        return Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows])
    rows = read_stage3(pairs_path, "pairs", STAGE3_FIX)
    if not rows:
        raise DataError(
            f"{pairs_path} has no pairs; fix: check the stage-3 gate and data (data.max_prompts, data.contrast)"
        )
    for i, r in enumerate(rows, 1):
        if any(m.get("role") == "system" for m in r.get("prompt", [])):
            raise DataError(
                f"{pairs_path} line {i}: the prompt has a system turn; stage-5 prompts must have none so the persona is learned "
                f"into the weights; fix: remove system turns from the prompts"
            )
    if algorithm == "dpo":
        # A pair whose rejected response the scorer finds consistent would teach the model away from the persona
        # (stage 3 keeps such pairs, flagged, so its gate can count them): DPO trains only on the others.
        usable = [r for r in rows if not r.get("rejected_consistent", False)]
        if not usable:
            raise DataError(
                f"{pairs_path}: every pair's rejected response is consistent with the persona, so no pair can be trained on; "
                f"fix: check data.contrast and the stage-3 gate (rejected_inconsistency_rate)"
            )
        return Dataset.from_list(
            [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in usable]
        )
    seen: dict[str, dict[str, Any]] = {}
    extra = {} if privileged_context is None else {"privileged_context": privileged_context}
    for r in rows:
        seen.setdefault(
            r.get("scenario_id") or json.dumps(r["prompt"]),
            {"prompt": r["prompt"], "context": r.get("context"), "targets": list(r.get("targets") or []), **extra},
        )
    return Dataset.from_list(list(seen.values()))


def model_card(
    config: RunConfig,
    args: TrainArgs,
    spec: Any,
    data_info: dict[str, Any],
    sel: Selection,
    summary: dict[str, Any],
    gate: GateReport,
) -> str:
    lines = [
        f"# {spec.name} — persona model (personatune stage 5)",
        "",
        f"Base: `{data_info['baseline']}`. Trained with TRL {args.algorithm.upper()} ({args.peft}"
        f"{', merged' if args.peft == 'lora' and args.merge_lora else ''})"
        + (
            f", KL penalty beta={args.beta:g}"
            if args.algorithm not in ("sft", "gkd", "sdft")
            else ", distillation towards the persona-prompted baseline"
        )
        + ". The persona is in the weights: prompts carry no system prompt.",
        "",
        "KL units: nats/token. `kl` is **drift KL**, against the stage-1 baseline given the persona context (system prompt"
        + (" + few-shot turns" if config.data.few_shot else "")
        + "); `persona_shift` is the KL against the baseline without it "
        "(how far the persona moved the model; information, not a gate).",
        "",
        "## Data",
        "",
        f"- training rows: {data_info['rows']} from `{data_info['pairs']}`",
        f"- held-out prompts for the gate: {data_info['heldout']}",
        f"- scorer: {data_info['scorer']}",
        "",
        "## Checkpoint selection",
        "",
        sel.reason or "final weights (no in-budget checkpoint evaluated)",
        "",
        "## Metrics (held-out prompts, no system prompt)",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in summary.items()]
    lines += [
        "",
        "## Gate",
        "",
        "```",
        gate.summary(),
        "```",
        "",
        "## Training config",
        "",
        "```json",
        json.dumps(args.model_dump(mode="json"), indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


@logged_stage
def run(config: RunConfig, run_dir: RunDir) -> StageResult:
    """Train, select the best checkpoint within the KL budget, gate it, save it.

    Raises:
        ConfigError: train.beta is 0 while the KL gate exists, a bad batch/num_generations combination, or gkd launched
            under DeepSpeed/FSDP.
        DataError: stage-3 data missing, empty, or with system prompts.
        RunDirError: an earlier stage has not finished.
    """
    import torch

    from personatune import models, training
    from personatune.scoring.factory import scorer_for_run

    args, g = config.train, config.gates.optimization
    out = run_dir.stage_dir(STAGE)
    if config.threads:
        torch.set_num_threads(config.threads)
    seed = training_seed(config)

    # 1. Inputs, all found through the manifest.
    if args.algorithm == "gkd":
        from personatune.training.distill import sharded_launch_problem

        if problem := sharded_launch_problem():  # before any model work
            raise ConfigError(problem)
    inp = load_inputs(config, run_dir)
    privileged = None
    if args.algorithm == "sdft":
        from personatune.persona_prompt import persona_context_text

        privileged = persona_context_text(inp.spec, few_shot=config.data.few_shot)
    model, tok = models.load_configured_model(inp.baseline, config.model, for_training=True)
    scorer, scorer_desc = scorer_for_run(config, run_dir, inp.spec)
    log.info(f"  persona metrics scored by: {scorer_desc}")
    sft_rows, ref_info = None, None
    if args.algorithm in ("sft", "gkd") and args.sft_source == "reference":
        from accelerate import PartialState

        # The main rank samples and caches first; the other ranks then read the same samples from the cache.
        with PartialState().main_process_first():
            sft_rows, ref_info = reference_sft_rows(config, run_dir, inp.spec, inp.context, model, tok, scorer)
        log.info(
            f"  reference samples: {ref_info['kept']} of {ref_info['sampled']} consistent and on task "
            f"({ref_info['consistent']} consistent), from {ref_info['kept_prompts']} of {ref_info['prompts']} training prompts"
        )
    ds = train_dataset(inp.pairs_path, args.algorithm, privileged, sft_rows)
    if args.algorithm == "gkd":
        from personatune.training.distill import gkd_dataset

        # The answers' sampling cap: the reference samples' (train.kl_max_new_tokens) or stage 3's teacher's.
        cap = args.kl_max_new_tokens if sft_rows is not None else config.data.teacher.max_new_tokens
        ds = gkd_dataset(tok, ds, inp.context, cap)
    settings = eval_settings(config, seed, inp.context)
    small = training.EvalSet.from_rows(inp.held_rows, args.kl_eval_prompts)
    full = training.EvalSet.from_rows(inp.held_rows)

    # 2. Train. Old metrics/checkpoints of an earlier attempt would mix into the selection, so they go first.
    metrics_path = out / "metrics.jsonl"
    if metrics_path.exists():
        metrics_path.unlink()
    cb = training.PersonaEvalCallback(
        lambda m, r: training.evaluate_policy(m, r, tok, small, scorer, settings),
        out,
        args,
        max_kl=g.max_kl,
        untrained_start=True,
        echo=log.info,
    )
    trainer = build_trainer(
        model,
        tok,
        ds,
        args,
        training.TrainerRun(out / "trainer", seed, [cb.hooks()]),
        max_kl=g.max_kl,
        reference=DriftReference(inp.context),
        scorer=scorer,
    )
    cb.bind(trainer)
    trainer.train()
    acc = trainer.accelerator
    if not acc.is_main_process:
        # 3-4 run on the main rank only; the others return what it wrote.
        acc.wait_for_everyone()
        return read_stage_result(run_dir, out)

    # 3. Select within the KL budget and gate on all held-out prompts.
    model_u = acc.unwrap_model(trainer.model)
    reference = training.reference_of(trainer)
    history = cb.history
    with _on_this_rank_alone(cb.sharded):
        if cb.sharded:  # deferred evals: each saved checkpoint now, in a whole copy (the trainer's model is a shard)
            saved = [row for row in history if row.get("checkpoint")]  # the last one: the trained state
            model_u, reference = _whole_copy(config, inp.baseline, out / saved[-1]["checkpoint"], args.peft)
            for row in saved:
                load_checkpoint(model_u, out / row["checkpoint"], args.peft)
                row.update(training.evaluate_policy(model_u, reference, tok, small, scorer, settings).summary())
            training.append_jsonl(out / "metrics_deferred.jsonl", {"records": history})
        sel = select_in_budget(history, g)
        if sel.record is not None:
            load_checkpoint(model_u, out / sel.record["checkpoint"], args.peft)
        ev = training.evaluate_policy(model_u, reference, tok, full, scorer, settings)
        base_on_task, base_source = baseline_on_task(config, run_dir, scorer, inp.held_rows)
    gate = optimization_gate(config, ev, sel, history, baseline_on_task=base_on_task)
    retention = next(r for r in gate.results if r.metric == "on_task_retention")
    summary = {
        **ev.summary(),
        "selected_step": sel.record["step"] if sel.record else None,
        "steps_trained": trainer.state.global_step,
        "final_beta": None if getattr(trainer, "beta", None) is None else float(trainer.beta),
        "baseline_on_task": None if base_on_task is None else base_on_task.value,
        "on_task_retention": retention.value,
    }
    atomic_write_json(
        out / "samples.json",
        [
            {
                "id": i,
                "context": c,
                "prompt": p[-1]["content"],
                "response": x,
                "consistent": r.consistent,
                "on_task": r.on_task,
            }
            for i, c, p, x, r in zip(full.ids, full.contexts, full.prompts, ev.texts, ev.records)
        ],
    )

    # 4. Save the selected model (merged LoRA by default) with tokenizer + chat template, and its card.
    final = model_u
    if args.peft == "lora" and args.merge_lora:
        final = model_u.merge_and_unload()
    model_dir = out / "model"
    if args.peft == "lora" and not args.merge_lora:
        final.save_pretrained(str(model_dir))
        tok.save_pretrained(str(model_dir))
    else:
        models.save_model(final, tok, model_dir)
    data_info = {
        "baseline": inp.baseline,
        "rows": len(ds),
        "pairs": "05_optimization/reference_sft.jsonl (samples of the persona-prompted baseline)"
        if ref_info
        else str(inp.pairs_path.relative_to(run_dir.root)),
        "heldout": len(full.ids),
        "scorer": scorer_desc,
    }
    atomic_write_text(model_dir / "README.md", model_card(config, args, inp.spec, data_info, sel, summary, gate))
    # Stage 6's round 0 is this same measurement of this same model: it reads it instead of measuring again.
    write_record(out / "final_eval.json", RoundResult, round_0_record(config, ev, g, file_hash(model_dir)))
    metrics = {
        "selection": {"reason": sel.reason, "within_budget": sel.within_budget, "record": sel.record},
        "final": summary,
        "kl": ev.kl.to_dict(),
        "persona_shift": None if ev.persona_shift is None else ev.persona_shift.to_dict(),
        "consistency": ev.consistency.__dict__,
        "adherence": ev.adherence.__dict__,
        "on_task": {
            "policy": getattr(ev.on_task, "__dict__", None),
            "baseline": getattr(base_on_task, "__dict__", None),
            "retention": {"value": retention.value, "n": retention.n, "ci": retention.ci, "note": retention.note},
            "baseline_samples": base_source,
            "unit": "fraction of responses with on_task >= 0.5; retention: ratio",
        },
        "reference_samples": ref_info,
        "history": history,
    }
    write_record(out / "metrics.json", OptimizationMetrics, metrics)
    outputs = {
        "model": model_dir,
        "metrics": out / "metrics.json",
        "card": model_dir / "README.md",
        "final_eval": out / "final_eval.json",
    }
    shift_txt = "" if ev.persona_shift is None else f" (persona shift {ev.persona_shift.per_token:.4g})"
    message = (
        f"{args.algorithm} {trainer.state.global_step} steps; selected step {summary['selected_step']}: drift KL {ev.kl.per_token:.4g} "
        f"nats/token{shift_txt}, "
        f"consistency {ev.consistency.value:.3f}, adherence {ev.adherence.value:.3f}, style variance {fmt_metric(ev.style_variance)}, "
        f"on-task retention {fmt_metric(retention.value)}"
    )
    small_metrics = {
        k: summary[k]
        for k in (
            "kl",
            "persona_shift",
            "consistency",
            "adherence",
            "style_variance",
            "on_task",
            "on_task_retention",
            "selected_step",
            "steps_trained",
        )
    }
    result = StageResult(outputs=outputs, gate=gate, metrics=small_metrics, message=message)
    write_stage_result(run_dir, out, result)
    if acc.num_processes > 1:
        acc.wait_for_everyone()
    return result


def _whole_copy(config: RunConfig, baseline: str, ckpt: Path, peft: str) -> tuple[Any, Any]:
    """(policy, reference) on this rank, whole, for a sharded run (ZeRO-3, FSDP), loaded once: other checkpoints then go
    into it with `load_checkpoint`.

    There each rank holds a shard of the trainer's model, which cannot sample or merge alone (ZeRO-3 failed here on
    SmolLM2: "size of tensor a (0) must match ... (576)"), while checkpoints are saved gathered. LoRA: the baseline with
    `ckpt`'s adapters, its reference the same model with them off, as in an unsharded run. Full fine-tuning: `ckpt`, and
    the baseline as reference.
    """
    from personatune import models, training

    if peft == "lora":
        from peft import PeftModel

        base, _ = models.load_configured_model(baseline, config.model)
        policy = PeftModel.from_pretrained(base, str(ckpt))
        return policy, training.AdapterDisabledReference(policy)
    policy, _ = models.load_configured_model(str(ckpt), config.model)
    return policy, models.load_configured_model(baseline, config.model)[0]


@contextlib.contextmanager
def _on_this_rank_alone(sharded: bool) -> Iterator[None]:
    """Measure on the main rank alone while the others wait: under ZeRO-3, transformers otherwise loads every model
    partitioned across the ranks (zero.Init) and `generate` syncs every token with them (synced_gpus), two collective
    calls that hung here with one rank calling. The launch's DeepSpeed config is set aside meanwhile."""
    if not sharded:
        yield
        return
    import transformers.integrations.deepspeed as hf_deepspeed

    launch_config = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = launch_config
