"""Stage 5 — KL-bounded optimization: put the persona into the weights, within a KL budget.

1. Load the baseline (stage 1) as the policy, the persona (stage 2), the stage-3 training pairs (no system
   prompt: the persona must end up in the weights) and the held-out prompts, and the scorer: the fitted
   evaluator of stage 4 when present, else a scorer built from the persona alone.
2. Train with TRL (`train.algorithm`: DPO on the pairs, or GRPO/RLOO online with the scorer's consistency as
   reward), LoRA or full, KL penalty `train.beta` > 0. Every `train.eval_every` steps PersonaEvalCallback samples
   the policy on held-out prompts, measures the exact per-token KL to the fixed reference (personatune.kl),
   scores the samples, appends the record to `metrics.jsonl`, saves a checkpoint, and the KL-budget controller
   decides whether to continue, stop or raise beta (`train.kl_control`).
3. Select the best checkpoint within the KL budget (personatune.kl_budget.select_checkpoint) — never simply
   the last — and re-measure it on ALL held-out prompts for the gate (METRICS.md): KL <= max_kl nats/token,
   consistency >= 0.85, adherence >= 0.90, style variance < 0.15, on-task retention >= 0.95 (on-task rate of the
   policy's samples / the stage-1 baseline's, no system prompt, same held-out prompts and decoding; the baseline's
   responses are stage 4's `baseline_samples.json` when they provably match, else sampled again), all on the
   policy's own samples, no system prompt. Each rate needs `rate_min_n(threshold)` samples, style variance
   gates.evaluation.min_style_variance_n; fewer: inconclusive (METRICS.md "Evidence").
4. Save it (LoRA merged when `train.merge_lora`) with its tokenizer and chat template to `05_optimization/model/`,
   with a model card README.md.

Multi-process (accelerate launch / torchrun): every rank trains; the main rank does steps 3-4 and writes
`result.json`, the others wait at a barrier and return the same result. Outputs: model, metrics, card.
"""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path
from typing import Any

from personatune.config import RunConfig
from personatune.errors import DataError, RunDirError
from personatune import evidence
from personatune.gates import GateReport, GateSpec, Measurement, check_gates, fmt_metric
from personatune.kl_budget import Selection, select_checkpoint
from personatune.persona import load_persona
from personatune.rundir import RunDir, atomic_write_json, atomic_write_text, read_jsonl
from personatune.stage import StageResult
from personatune.training import TrainArgs

STAGE = "05_optimization"
STAGE3_FIX = "re-run stage 3 (personatune run CONFIG --from 3)"


def train_dataset(pairs_path: Path, algorithm: str, privileged_context: str | None = None) -> Any:
    """The TRL dataset from stage-3 data: DPO gets prompt/chosen/rejected; SFT prompt/completion from the chosen answers
    (`sft.jsonl` beside the pairs: consistent and on task); GRPO/RLOO/SDFT one row per prompt (context, targets; SDFT
    also `privileged_context`, the rendered persona).

    Raises:
        DataError: the file is missing or empty, or a prompt carries a system turn (the persona must come from the weights).
    """
    from datasets import Dataset

    if algorithm == "sft":
        sft_path = pairs_path.parent / "sft.jsonl"
        rows = read_jsonl(sft_path, fix=STAGE3_FIX)
        if not rows:
            raise DataError(f"{sft_path} has no chosen answers; fix: check the stage-3 gate and data (data.max_prompts, data.best_of)")
        for i, r in enumerate(rows, 1):
            if any(m.get("role") == "system" for m in r["messages"]):
                raise DataError(f"{sft_path} line {i}: the prompt has a system turn; stage-5 prompts must have none so the persona is learned "
                                f"into the weights; fix: remove system turns from the prompts")
        return Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows])
    rows = read_jsonl(pairs_path, fix=STAGE3_FIX)
    if not rows:
        raise DataError(f"{pairs_path} has no pairs; fix: check the stage-3 gate and data (data.max_prompts, data.contrast)")
    for i, r in enumerate(rows, 1):
        if any(m.get("role") == "system" for m in r.get("prompt", [])):
            raise DataError(f"{pairs_path} line {i}: the prompt has a system turn; stage-5 prompts must have none so the persona is learned "
                            f"into the weights; fix: remove system turns from the prompts")
    if algorithm == "dpo":
        # A pair whose rejected response the scorer finds consistent would teach the model away from the persona
        # (stage 3 keeps such pairs, flagged, so its gate can count them): DPO trains only on the others.
        usable = [r for r in rows if not r.get("rejected_consistent", False)]
        if not usable:
            raise DataError(f"{pairs_path}: every pair's rejected response is consistent with the persona, so no pair can be trained on; "
                            f"fix: check data.contrast and the stage-3 gate (rejected_inconsistency_rate)")
        return Dataset.from_list([{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in usable])
    seen: dict[str, dict[str, Any]] = {}
    extra = {} if privileged_context is None else {"privileged_context": privileged_context}
    for r in rows:
        seen.setdefault(r.get("scenario_id") or json.dumps(r["prompt"]),
                        {"prompt": r["prompt"], "context": r.get("context"), "targets": list(r.get("targets") or []), **extra})
    return Dataset.from_list(list(seen.values()))


def reference_context(config: RunConfig, spec: Any, baseline: str, prompts: list[list[dict[str, str]]]) -> list[dict[str, str]]:
    """The persona context c of drift KL (persona system prompt + few-shot turns when data.few_shot), checked to fit the
    baseline's window with every prompt and the KL samples, from the tokenizer and config alone (before any model work).

    Raises:
        ConfigError: c + the longest prompt + train.kl_max_new_tokens exceed the model's max_position_embeddings.
    """
    from transformers import AutoConfig, AutoTokenizer

    from personatune.errors import ConfigError
    from personatune.models import encode_chat
    from personatune.persona_prompt import persona_context

    context = persona_context(spec, few_shot=config.data.few_shot)
    try:
        tok = AutoTokenizer.from_pretrained(baseline)
        window = getattr(AutoConfig.from_pretrained(baseline), "max_position_embeddings", None)
    except (OSError, ValueError) as e:
        raise RunDirError(f"the stage-1 baseline at {baseline} cannot be read to build the drift-KL reference ({str(e).splitlines()[0]}); "
                          f"fix: re-run stage 1 (personatune run CONFIG --from 1)") from None
    if not window or not prompts:
        return context
    longest = max(prompts, key=lambda m: sum(len(x.get("content", "")) for x in m))
    need_ctx = len(encode_chat(tok, context + list(longest)))
    need = need_ctx + config.train.kl_max_new_tokens
    if need > window:
        n_ctx = need_ctx - len(encode_chat(tok, list(longest)))
        raise ConfigError(f"data.few_shot={str(config.data.few_shot).lower()}: the persona context is {n_ctx} tokens; with the longest held-out "
                          f"prompt and train.kl_max_new_tokens={config.train.kl_max_new_tokens} the reference needs {need} tokens, more than the "
                          f"model's window of {window} (max_position_embeddings); fix: "
                          + ("set data.few_shot=false, shorten the persona's examples and trait descriptions" if config.data.few_shot else
                             "shorten the persona's trait descriptions and style rules, or lower train.kl_max_new_tokens")
                          + ", or use a model with a longer window")
    return context


def _make_scorer(spec: Any, run_dir: RunDir, config: RunConfig) -> tuple[Any, str]:
    """The stage-4 evaluator (with the configured judge, if any), or the persona-only scorer when stage 4 left none."""
    from personatune.scoring.factory import scorer_for_run

    return scorer_for_run(config, run_dir, spec)


def _load_checkpoint(trainer: Any, ckpt: Path, peft: str) -> None:
    """Put the weights of a saved checkpoint into the trainer's model, in place."""
    from safetensors.torch import load_file

    if peft == "lora":
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(trainer.model, load_file(str(ckpt / "adapter_model.safetensors")))
    else:
        # Tied weights (e.g. lm_head = embeddings) are saved once; strict=False leaves the tie in place.
        trainer.model.load_state_dict(load_file(str(ckpt / "model.safetensors")), strict=False)


def optimization_specs(config: RunConfig) -> list[GateSpec]:
    """The stage-5 (and 6) gate specs. n counts the policy's samples (one per held-out prompt; pairs for adherence);
    the minimums are `rate_min_n` at each rate's threshold (137 at 0.85, 97 at 0.90, 51 at 0.95) and
    gates.evaluation.min_style_variance_n for style variance; KL has none. More held-out prompts: `evidence.heldout_key`."""
    g, key = config.gates.optimization, evidence.heldout_key(config)
    return [GateSpec("kl_per_token", g.max_kl, "<=", "nats/token", "drift KL: mean per-token KL(policy(.|x) || baseline(.|persona context, x)) on the "
                                                             "policy's samples, held-out prompts x without a system prompt"),
            GateSpec("consistency_rate", g.consistency, ">=", "fraction of responses", "consistency rate of the policy's own samples",
                     min_n=evidence.rate_min_n_for(config, g.consistency), n_key=key),
            GateSpec("adherence", g.adherence, ">=", "fraction of (response, trait) pairs", "trait adherence of the policy's own samples; n = pairs",
                     min_n=evidence.rate_min_n_for(config, g.adherence), n_key=key),
            GateSpec("style_variance", g.max_style_variance, "<", "relative std across contexts",
                     "style variance of the policy's own samples; n = responses in qualifying context groups",
                     min_n=config.gates.evaluation.min_style_variance_n, n_key=key),
            GateSpec("on_task_retention", g.min_on_task_retention, ">=", "ratio (on-task rate policy / baseline)",
                     "on-task rate of the policy's samples / the stage-1 baseline's without a system prompt, same prompts and decoding; n = policy samples",
                     min_n=evidence.rate_min_n_for(config, g.min_on_task_retention), n_key=key)]


def optimization_gate(config: RunConfig, ev: Any, sel: Selection, history: list[dict[str, Any]], baseline_on_task: Measurement | None = None) -> GateReport:
    """The METRICS.md stage-5 gate on the selected model's held-out samples, with the diagnosis.

    Args:
        baseline_on_task: the stage-1 baseline's on-task rate on the same held-out prompts (`evidence.baseline_on_task_records`);
            None (not measured) fails the on-task retention gate with a note.
    """
    g = config.gates.optimization
    kl = ev.kl
    kl_ci = (kl.per_token - 1.96 * kl.stderr, kl.per_token + 1.96 * kl.stderr) if math.isfinite(kl.stderr) else None
    retention, why = evidence.on_task_retention(getattr(ev, "on_task", None), baseline_on_task)
    sv_n = getattr(ev, "style_variance_n", None)
    measured = {"kl_per_token": Measurement(kl.per_token, n=kl.sequences, ci=kl_ci), "consistency_rate": ev.consistency, "adherence": ev.adherence,
                "style_variance": Measurement(ev.style_variance, n=len(ev.texts) if sv_n is None else sv_n) if ev.style_variance is not None else None,
                "on_task_retention": retention}
    results = check_gates(optimization_specs(config), measured)
    last = sel.last_within_budget
    where = (f"the last checkpoint within the KL budget is step {last['step']} (KL {last['kl']:.4g}, consistency {fmt_metric(last.get('consistency'))})"
             if last else "no checkpoint was within the KL budget")
    diagnosis, steps = [], []
    for r in results:
        if r.passed:
            continue
        if r.inconclusive:
            diagnosis.append(f"{r.metric} {fmt_metric(r.value)}: {r.note}")
            steps.append(f"hold out more prompts ({evidence.heldout_key(config)}) so the gate can decide")
            if r.meets_threshold():
                continue
        if r.metric == "kl_per_token":
            shift = getattr(ev, "persona_shift", None)
            diagnosis.append(f"drift KL {kl.per_token:.4g} ± {kl.stderr:.2g} nats/token exceeds {g.max_kl:g}"
                             + ("" if shift is None else f" (persona shift {shift.per_token:.4g})") + f"; {where}")
            steps.append("the policy drifts beyond the persona-prompted baseline: use a distillation recipe (train.algorithm=sdft or sft), raise train.beta, "
                         "lower train.learning_rate or train.max_steps, or evaluate more often (train.eval_every) so an in-budget checkpoint exists")
        elif r.metric == "consistency_rate":
            diagnosis.append(f"consistency {r.value:.3f} of the selected model (selection: {sel.reason}); {where}")
            steps.append("if KL has headroom: train longer or with a higher train.learning_rate; else improve the stage-3 pairs (data.best_of, a stronger teacher)")
        elif r.metric == "adherence":
            worst = sorted(ev.adherence_per_trait.items(), key=lambda kv: kv[1])[:2]
            diagnosis.append(f"adherence {r.value:.3f}" + (" (lowest traits: " + ", ".join(f"{t} {v:.2f}" for t, v in worst) + ")" if worst else ""))
            steps.append("add pairs whose rejected response violates the weak traits (stage 3), or train longer within the KL budget")
        elif r.metric == "on_task_retention":
            if r.value is None:
                r.note = why
                diagnosis.append(f"on-task retention {why}")
                steps.append("check stage 4's baseline_samples.json and the held-out prompts; re-run stage 4 (personatune run CONFIG --from 4)")
            else:
                diagnosis.append(f"on-task retention {r.value:.3f}: the policy answers the request less often than the baseline "
                                 f"(on-task rate {fmt_metric(ev.on_task.value)} vs {fmt_metric(baseline_on_task.value if baseline_on_task else None)})")
                steps.append("the reward/pairs buy persona with helpfulness: use GRPO/RLOO (the reward multiplies on_task), raise train.beta, "
                             "or check that stage 3's chosen responses are on task (gates.data.chosen_on_task)")
        else:
            if r.value is None:
                diagnosis.append(f"style variance not measured: fewer than two contexts have {config.gates.evaluation.min_per_context} held-out prompts")
                steps.append("raise data.heldout_fraction or data.max_prompts so each context has enough held-out prompts")
            else:
                diagnosis.append(f"style variance {r.value:.3f}: the policy's voice moves between contexts")
                steps.append("tighten the persona's style targets, or add stage-3 pairs whose rejected response is style-broken")
    if not history:
        diagnosis.append("no in-training eval ran (train.eval_every=0 and too few steps); the final weights were gated")
    return GateReport(STAGE, results, diagnosis=diagnosis, next_steps=list(dict.fromkeys(steps)))


def model_card(config: RunConfig, args: TrainArgs, spec: Any, data_info: dict[str, Any], sel: Selection, summary: dict[str, Any], gate: GateReport) -> str:
    lines = [f"# {spec.name} — persona model (personatune stage 5)", "",
             f"Base: `{data_info['baseline']}`. Trained with TRL {args.algorithm.upper()} ({args.peft}"
             f"{', merged' if args.peft == 'lora' and args.merge_lora else ''})"
             + (f", KL penalty beta={args.beta:g}" if args.algorithm not in ("sft", "sdft") else ", distillation towards the persona-prompted baseline")
             + ". The persona is in the weights: prompts carry no system prompt.", "",
             "KL units: nats/token. `kl` is **drift KL**, against the stage-1 baseline given the persona context (system prompt"
             + (" + few-shot turns" if config.data.few_shot else "") + "); `persona_shift` is the KL against the baseline without it "
             "(how far the persona moved the model; information, not a gate).", "",
             "## Data", "", f"- training rows: {data_info['rows']} from `{data_info['pairs']}`", f"- held-out prompts for the gate: {data_info['heldout']}",
             f"- scorer: {data_info['scorer']}", "", "## Checkpoint selection", "", sel.reason or "final weights (no in-budget checkpoint evaluated)", "",
             "## Metrics (held-out prompts, no system prompt)", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary.items()]
    lines += ["", "## Gate", "", "```", gate.summary(), "```", "", "## Training config", "", "```json",
              json.dumps(args.model_dump(mode="json"), indent=2), "```", ""]
    return "\n".join(lines)


def run(config: RunConfig, run_dir: RunDir) -> StageResult:
    """Train, select the best checkpoint within the KL budget, gate it, save it.

    Raises:
        ConfigError: train.beta is 0 while the KL gate exists, or a bad batch/num_generations combination.
        DataError: stage-3 data missing, empty, or with system prompts.
        RunDirError: an earlier stage has not finished.
    """
    import torch

    from personatune import models, training
    from personatune.scoring.aggregate import on_task_rate
    from personatune.stages.s1_baseline import baseline_model_path

    args: TrainArgs = getattr(config, "train", None) or TrainArgs()
    g = config.gates.optimization
    if args.algorithm in ("dpo", "grpo", "rloo"):
        training.check_beta(args.beta, g.max_kl)  # before any loading (the config validator already refuses it at load time)
    out = run_dir.stage_dir(STAGE)
    if config.threads:
        torch.set_num_threads(config.threads)
    seed = args.seed if args.seed is not None else config.seed

    # 1. Inputs, all found through the manifest.
    spec = load_persona(run_dir.output_path("02_persona", "persona"))
    pairs_path = run_dir.output_path("03_consistency_data", "train") / "pairs.jsonl"
    held_rows = read_jsonl(run_dir.output_path("03_consistency_data", "heldout") / "prompts.jsonl", fix=STAGE3_FIX)
    if not held_rows:
        raise DataError("03_consistency_data/heldout/prompts.jsonl is empty; fix: raise data.heldout_fraction or data.max_prompts and re-run stage 3")
    baseline = baseline_model_path(run_dir)
    # The drift-KL reference: the baseline given the persona context c (checked to fit the window before any model work).
    context = reference_context(config, spec, baseline, [r["messages"] for r in held_rows])
    privileged = None
    if args.algorithm == "sdft":
        from personatune.persona_prompt import persona_context_text

        privileged = persona_context_text(spec, few_shot=config.data.few_shot)
    ds = train_dataset(pairs_path, args.algorithm, privileged)
    model, tok = models.load_configured_model(baseline, config.model, for_training=True)
    scorer, scorer_desc = _make_scorer(spec, run_dir, config)
    print(f"  persona metrics scored by: {scorer_desc}")
    run_dir.log(f"{STAGE} scorer: {scorer_desc}")
    t = config.data.teacher
    min_ctx = config.gates.evaluation.min_per_context
    # Persona metrics use stage 4's decoding (data.teacher), so baseline and trained model are compared alike.
    evaluate = partial(training.evaluate_policy, tokenizer=tok, scorer=scorer, kl_max_new_tokens=args.kl_max_new_tokens, max_new_tokens=t.max_new_tokens,
                       temperature=t.temperature, top_p=t.top_p, seed=seed, batch_size=args.eval_batch_size, min_per_context=min_ctx,
                       context=context)
    small = training.EvalSet.from_rows(held_rows, args.kl_eval_prompts)
    full = training.EvalSet.from_rows(held_rows)

    # 2. Train. Old metrics/checkpoints of an earlier attempt would mix into the selection, so they go first.
    metrics_path = out / "metrics.jsonl"
    if metrics_path.exists():
        metrics_path.unlink()
    cb = training.PersonaEvalCallback(lambda m, r: evaluate(m, r, evalset=small), out, eval_every=args.eval_every, max_kl=g.max_kl,
                                      kl_control=args.kl_control, beta_raise_factor=args.beta_raise_factor, max_beta_raises=args.max_beta_raises,
                                      eval_at_start=args.eval_at_start, echo=lambda s: (print(s), run_dir.log(s.strip())),
                                      max_train_seconds=args.max_train_seconds, eval_every_seconds=args.eval_every_seconds)
    common = dict(output_dir=out / "trainer", max_kl=g.max_kl, seed=seed, callbacks=[cb.hooks()])
    if args.algorithm == "dpo":
        trainer = training.build_dpo_trainer(model, tok, ds, args, reference_context=context, **common)
    elif args.algorithm in ("sft", "sdft"):
        build = training.build_sft_trainer if args.algorithm == "sft" else training.build_sdft_trainer
        trainer = build(model, tok, ds, args, output_dir=common["output_dir"], seed=seed, callbacks=common["callbacks"])
    else:
        from personatune.scoring.reward import make_reward_fn

        build = training.build_grpo_trainer if args.algorithm == "grpo" else training.build_rloo_trainer
        trainer = build(model, tok, ds, args, reward_funcs=[make_reward_fn(scorer)], **common)
    cb.bind(trainer)
    trainer.train()
    acc = trainer.accelerator
    if not acc.is_main_process:
        # 3-4 run on the main rank only; the others return what it wrote.
        acc.wait_for_everyone()
        saved = json.loads((out / "result.json").read_text(encoding="utf-8"))
        return StageResult(outputs={k: run_dir.root / v for k, v in saved["outputs"].items()}, gate=GateReport.from_dict(saved["gate"]),
                           metrics=saved["metrics"], message=saved["message"])

    # 3. Select within the KL budget and gate on all held-out prompts.
    model_u = acc.unwrap_model(trainer.model)
    reference = training.reference_of(trainer)
    history = cb.history
    if cb.sharded:  # deferred evals: measure each saved checkpoint now
        for row in history:
            if row.get("checkpoint"):
                _load_checkpoint(trainer, out / row["checkpoint"], args.peft)
                row.update(evaluate(model_u, reference, evalset=small).summary())
        training.append_jsonl(out / "metrics_deferred.jsonl", {"records": history})
    sel = select_checkpoint(history, g.max_kl, min_consistency=g.consistency, min_adherence=g.adherence, max_style_variance=g.max_style_variance)
    if sel.record is not None:
        _load_checkpoint(trainer, out / sel.record["checkpoint"], args.peft)
    ev = evaluate(model_u, reference, evalset=full)
    base_recs, base_source = evidence.baseline_on_task_records(config, run_dir, scorer, held_rows)
    base_on_task = on_task_rate(base_recs)
    gate = optimization_gate(config, ev, sel, history, baseline_on_task=base_on_task)
    retention = next(r for r in gate.results if r.metric == "on_task_retention")
    summary = {**ev.summary(), "selected_step": sel.record["step"] if sel.record else None, "steps_trained": trainer.state.global_step,
               "final_beta": None if getattr(trainer, "beta", None) is None else float(trainer.beta), "baseline_on_task": None if base_on_task is None else base_on_task.value,
               "on_task_retention": retention.value}
    atomic_write_json(out / "samples.json", [{"id": i, "context": c, "prompt": p[-1]["content"], "response": x, "consistent": r.consistent,
                                              "on_task": r.on_task}
                                             for i, c, p, x, r in zip(full.ids, full.contexts, full.prompts, ev.texts, ev.records)])

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
    data_info = {"baseline": baseline, "rows": len(ds), "pairs": str(pairs_path.relative_to(run_dir.root)), "heldout": len(full.ids), "scorer": scorer_desc}
    atomic_write_text(model_dir / "README.md", model_card(config, args, spec, data_info, sel, summary, gate))
    metrics = {"selection": {"reason": sel.reason, "within_budget": sel.within_budget, "record": sel.record}, "final": summary,
               "kl": ev.kl.to_dict(), "persona_shift": None if ev.persona_shift is None else ev.persona_shift.to_dict(),
               "consistency": ev.consistency.__dict__, "adherence": ev.adherence.__dict__,
               "on_task": {"policy": getattr(ev.on_task, "__dict__", None), "baseline": getattr(base_on_task, "__dict__", None),
                           "retention": {"value": retention.value, "n": retention.n, "ci": retention.ci, "note": retention.note},
                           "baseline_samples": base_source, "unit": "fraction of responses with on_task >= 0.5; retention: ratio"},
               "history": history}
    atomic_write_json(out / "metrics.json", metrics)
    outputs = {"model": model_dir, "metrics": out / "metrics.json", "card": model_dir / "README.md"}
    shift_txt = "" if ev.persona_shift is None else f" (persona shift {ev.persona_shift.per_token:.4g})"
    message = (f"{args.algorithm} {trainer.state.global_step} steps; selected step {summary['selected_step']}: drift KL {ev.kl.per_token:.4g} "
               f"nats/token{shift_txt}, "
               f"consistency {ev.consistency.value:.3f}, adherence {ev.adherence.value:.3f}, style variance {fmt_metric(ev.style_variance)}, "
               f"on-task retention {fmt_metric(retention.value)}")
    small_metrics = {k: summary[k] for k in ("kl", "persona_shift", "consistency", "adherence", "style_variance", "on_task", "on_task_retention", "selected_step", "steps_trained")}
    atomic_write_json(out / "result.json", {"outputs": {k: str(v.relative_to(run_dir.root)) for k, v in outputs.items()}, "gate": gate.to_dict(),
                                            "metrics": small_metrics, "message": message})
    if acc.num_processes > 1:
        acc.wait_for_everyone()
    return StageResult(outputs=outputs, gate=gate, metrics=small_metrics, message=message)
