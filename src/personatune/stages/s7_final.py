"""Stage 7 — final evaluation: the final model against the baseline, and the DEPLOY / NO-DEPLOY verdict.

1. Load the baseline (stage 1) and the final model (stage 6's kept model), the persona, the held-out prompts
   (stage 3, ALL of them) and the fitted evaluator (stage 4).
2. Sample both models on every held-out prompt with no system prompt and the same decoding: the `eval:`
   max_new_tokens / temperature / top_p / batch_size (data.teacher's where unset) and the run seed, exactly as
   stage 4 sampled the baseline.
   Stage 4's `baseline_samples.json` is reused when its sampling fingerprint matches the config
   (`baseline_samples.reusable_baseline_texts`), else the baseline is sampled again. Both sets are scored by the same evaluator.
3. Persona figures, baseline vs final: consistency rate, adherence (overall, per trait, per context), style
   variance, and robustness (consistency on the "adversarial" context, Wilson intervals; reported, not gated).
   Persona improvement = consistency(final) - consistency(baseline), paired bootstrap 95% interval over prompts
   (B = aggregate.N_RESAMPLES = 1000 percentile resamples, numpy generator seeded with the run seed).
4. Capability retention = suite score(final) / suite score(baseline), same items, greedy, same template, same
   batch size as stage 1 (16); the baseline's suite comes from stage 1's capability.json when it exists. A task
   fails when its accuracy drops by more than the baseline's own 95% interval on it: drop > accuracy - Wilson
   lower bound (capability.retention). Held-out perplexity of both is reported beside it. The optional
   lm-eval tasks (`lm_eval` section, personatune.lm_harness) are scored on the final model too and compared
   with the baseline's (stage 1's lm_eval.json when its settings match): a task fails when its primary metric
   moves the wrong way by more than 1.96 x the baseline's standard error; skipped tasks are listed, not gated.
5. Drift KL and persona shift of the final model (personatune.kl.measure_drift: its own samples at temperature 1,
   no system prompt, train.kl_max_new_tokens tokens; METRICS.md): drift KL against the baseline given the persona
   context c (persona_prompt.persona_context: the rendered system prompt, plus the few-shot turns when
   data.few_shot), persona shift against the baseline without it, both in nats/token; reported, not gated here
   (stages 5-6 gate drift KL).
   The baseline is also sampled WITH c before each held-out prompt (same decoding, same evaluator): the persona-
   prompted baseline is the target of context distillation, so `prompted_baseline` in final.json shows how close
   the final model, without a system prompt, came to it (consistency, on-task rate, adherence).
6. Gate (METRICS.md): improvement interval lower end > gates.final.min_improvement, retention >=
   gates.final.min_retention, on-task retention (on-task rate final / baseline, same prompts and decoding) >=
   gates.final.min_on_task_retention, no task drop beyond its interval (suite and lm-eval), no earlier stage
   recorded with a failed or inconclusive gate. Minimum samples (METRICS.md "Evidence"): the improvement needs
   `rate_min_n(gates.optimization.consistency)` prompts (the final consistency rate known to about ±0.06, 137 at
   0.85), on-task retention `rate_min_n(gates.final.min_on_task_retention)` (51 at 0.95); fewer: inconclusive.
   Verdict: DEPLOY iff all pass, else NO-DEPLOY with one line per failed gate (value, threshold, likely
   cause, what to change). Writes final.json, final.md and samples.json (per prompt: the baseline without a system
   prompt, the baseline with the persona context, the final model without one, each with its consistency).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from typing import Any

from personatune import evidence
from personatune.baseline_samples import decoding as eval_decoding
from personatune.baseline_samples import reusable_baseline_texts
from personatune.config import RunConfig
from personatune.errors import DataError, RunDirError
from personatune.gates import GateReport, GateSpec, Measurement, check_gates, fmt_metric
from personatune.records import DRIFT_REFERENCE_LABEL, FinalRecord
from personatune.rundir import RunDir, atomic_write_json, atomic_write_text, read_jsonl
from personatune.stage import StageResult
# Re-exported: the figures are stage 7's, kept in their own module so `run` reads in one sitting.
from personatune.stages.s7_figures import ADVERSARIAL, compare_persona, final_markdown, prompted_baseline_figures  # noqa: F401

STAGE = "07_final_eval"
CAPABILITY_BATCH = 16
"""Batch size of capability-suite generation; stage 1 uses the same, so padding is identical."""
EARLIER = ("01_baseline", "02_persona", "03_consistency_data", "04_evaluation", "05_optimization", "06_iterations")
STAGE3_FIX = "re-run stage 3 (personatune run CONFIG --from 3)"
KL_REFERENCE = DRIFT_REFERENCE_LABEL
"""What final.json's `kl` is measured against (the same label as stages 5-6 write as `kl_reference`)."""


def _sample(model: Any, tok: Any, convs: list[list[dict[str, str]]], config: RunConfig, who: str,
            prefix: list[dict[str, str]] | None = None) -> list[str]:
    """One response per conversation at the eval decoding and the run seed, `prefix` (the persona context) before each."""
    from personatune.generation.hf import HFBackend
    from personatune.progress import EtaLine

    d = eval_decoding(config)
    eta = EtaLine(f"stage 7: sampling the {who} on {len(convs)} held-out prompts")
    outs = HFBackend(model, tok, batch_size=d["batch_size"], progress=eta).generate([list(prefix or []) + list(c) for c in convs],
                                                                                    max_new_tokens=d["max_new_tokens"], temperature=d["temperature"],
                                                                                    top_p=d["top_p"], n=1, seed=config.seed)
    return [o[0] for o in outs]


def lm_eval_figures(config: RunConfig, run_dir: RunDir, base_model: Any, base_tok: Any, final_model: Any, final_tok: Any) -> dict[str, Any]:
    """The configured lm-eval tasks on the final model, compared with the baseline's.

    The baseline's results come from stage 1's lm_eval.json when it was scored with the same `lm_eval` settings;
    otherwise the baseline is scored again here, so both sides always share tasks, limit, shots and template.
    """
    from personatune import lm_harness

    want = config.lm_eval.model_dump(mode="json")
    base, source = None, "scored in stage 7"
    try:
        saved = json.loads(run_dir.output_path("01_baseline", "lm_eval").read_text(encoding="utf-8"))
        if saved.get("settings") == want and saved.get("lm_eval_version") == lm_harness.installed_version():
            base, source = saved, "01_baseline/lm_eval.json"
    except (RunDirError, ValueError):
        pass
    if base is None:
        base = lm_harness.evaluate(base_model, base_tok, config.lm_eval, seed=config.seed)
    final = lm_harness.evaluate(final_model, final_tok, config.lm_eval, seed=config.seed)
    cmp = lm_harness.compare(final, base)
    return {**cmp, "baseline_source": source, "settings": want, "lm_eval_version": final.get("lm_eval_version"),
            "rule": "a task fails when its primary metric moves the wrong way by more than 1.96 x the baseline's standard error"}


def final_gate(config: RunConfig, fig: dict[str, Any]) -> GateReport:
    """The stage-7 gate and the verdict from the figures of `final.json` (a pure function of its arguments).

    Args:
        config: the run config (gates.final thresholds).
        fig: the final.json figures: improvement, retention, on_task, kl, earlier_gates.

    Returns:
        GateReport whose diagnosis starts with "verdict: DEPLOY" or "verdict: NO-DEPLOY", followed by one
        line per failed gate (metric, value vs threshold, likely cause, what to change); next_steps holds the fixes.
    """
    g = config.gates.final
    imp, ret = fig["improvement"], fig["retention"]
    ot = (fig.get("on_task") or {}).get("retention") or {}
    ci = imp.get("ci")
    key = evidence.heldout_key(config)
    specs = [GateSpec("persona_improvement_ci_low", g.min_improvement, ">", "fraction of responses",
                      "lower end of the paired bootstrap 95% interval of consistency(final) - consistency(baseline), held-out prompts, no system prompt; "
                      "n = prompts", min_n=evidence.rate_min_n_for(config, config.gates.optimization.consistency), n_key=key),
             GateSpec("capability_retention", g.min_retention, ">=", "ratio", "capability-suite score of the final model / the baseline's, same items and decoding"),
             GateSpec("on_task_retention", g.min_on_task_retention, ">=", "ratio (on-task rate final / baseline)",
                      "on-task rate of the final model / the baseline's, both without a system prompt, same held-out prompts and decoding; n = responses",
                      min_n=evidence.rate_min_n_for(config, g.min_on_task_retention), n_key=key)]
    measured: dict[str, Measurement | None] = {
        "persona_improvement_ci_low": Measurement(ci[0], n=imp["n"], ci=tuple(ci)) if ci and ci[0] is not None else None,
        "capability_retention": Measurement(ret["value"], n=ret["n_items"]) if ret.get("value") is not None else None,
        "on_task_retention": Measurement(ot["value"], n=ot.get("n"), ci=tuple(ot["ci"]) if ot.get("ci") else None) if ot.get("value") is not None else None}
    for task, d in ret["tasks"].items():
        # Threshold = the baseline's own 95% interval below its estimate; 1e-12 absorbs float rounding of equal accuracies.
        specs.append(GateSpec(f"capability_drop[{task}]", d["allowed"] + 1e-12, "<=", "accuracy (fraction of items)",
                              f"accuracy drop on task {task}; allowed: baseline accuracy minus its Wilson 95% lower bound"))
        measured[f"capability_drop[{task}]"] = Measurement(d["drop"], n=d["n"])
    lm = fig.get("lm_eval") or {}
    for task, d in (lm.get("tasks") or {}).items():
        # lm-eval tasks (optional): the primary metric may not move the wrong way by more than 1.96 x the baseline's standard error.
        specs.append(GateSpec(f"lm_eval_drop[{task}]", d["allowed"] + 1e-12, "<=", f"{d['metric']} (lm-eval; drop in the worse direction)",
                              f"lm-eval task {task}: baseline {d['metric']} minus the final model's; allowed: 1.96 x the baseline's standard error"))
        measured[f"lm_eval_drop[{task}]"] = Measurement(d["drop"], n=d.get("n"))
    failed_earlier = [s for s, e in fig["earlier_gates"].items() if e.get("gate_passed") is False]
    specs.append(GateSpec("earlier_gates_failed", 0, "<=", "stages", "stages 1-6 whose recorded gate did not pass (failed or inconclusive)"))
    measured["earlier_gates_failed"] = Measurement(float(len(failed_earlier)), n=len(fig["earlier_gates"]))
    results = check_gates(specs, measured)
    kl = fig.get("kl", {}).get("kl_per_token")
    shift = (fig.get("persona_shift") or {}).get("kl_per_token")
    if not isinstance(kl, (int, float)):
        kl_txt = "KL not measured"
    elif isinstance(shift, (int, float)):
        kl_txt = f"drift KL {kl:.4g} nats/token, persona shift {shift:.4g} nats/token"
    else:
        kl_txt = f"KL to the baseline {kl:.4g} nats/token"
    reasons, steps = [], []
    for r in results:
        if r.passed:
            continue
        head = f"{r.metric} = {'not measured' if r.value is None else f'{r.value:.4g}'} (needs {r.direction} {r.threshold:.4g})"
        if r.metric == "on_task_retention":
            if r.value is None:
                r.note = ot.get("note") or "not measured"
                cause, fix = r.note, "check the held-out prompts and the baseline's replies in 07_final_eval/samples.json"
            else:
                on = fig["on_task"]
                cause = (f"the final model answers the request less often than the baseline (on-task rate "
                         f"{fmt_metric((on.get('baseline') or {}).get('value'))} -> {fmt_metric((on.get('final') or {}).get('value'))}): persona bought with helpfulness")
                fix = "train with GRPO/RLOO (the reward multiplies on_task) or a higher train.beta; check stage 3's chosen on-task rate (gates.data.chosen_on_task)"
        elif r.metric == "persona_improvement_ci_low":
            if imp.get("value") is None or imp["value"] <= g.min_improvement:
                cause = (f"the final model is no more consistent than the baseline without a system prompt "
                         f"({fmt_metric(imp.get('baseline'))} -> {fmt_metric(imp.get('final'))}): the persona did not reach the weights")
                fix = "train longer or with a higher train.learning_rate within the KL budget, raise iterations.rounds, or improve the stage-3 pairs (data.best_of, a stronger data.teacher)"
            else:
                cause = f"consistency rose by {imp['value']:.3f} but {imp['n']} held-out prompts cannot tell it from {g.min_improvement:g}"
                fix = "hold out more prompts (data.heldout_fraction, data.max_prompts) or train for a larger effect"
        elif r.metric == "capability_retention":
            if ret.get("value") is None:
                cause = "the baseline scores 0 on the capability suite, so retention cannot be measured"
                fix = "use a base model that answers the capability suite (the tiny test model cannot)"
            else:
                cause = f"general ability fell from {ret['baseline_score']:.3f} to {ret['final_score']:.3f} while training the persona ({kl_txt})"
                fix = "raise train.beta, lower train.learning_rate or train.max_steps, or mix general data into stage 1 (sft.dataset, sft.persona_mix)"
        elif r.metric.startswith("capability_drop["):
            d = ret["tasks"][r.metric[16:-1]]
            cause = f"task {r.metric[16:-1]} fell from {d['baseline']:.3f} to {d['candidate']:.3f}, beyond the baseline's interval ({d['allowed']:.3f}); {kl_txt}"
            fix = "raise train.beta or lower train.learning_rate; check which replies changed in 07_final_eval/final.json capability.final_replies"
        elif r.metric.startswith("lm_eval_drop["):
            task = r.metric[len("lm_eval_drop["):-1]
            d = lm["tasks"][task]
            cause = f"lm-eval task {task} ({d['metric']}) went from {d['baseline']:.4f} to {d['final']:.4f}, beyond the baseline's interval ({d['allowed']:.4f}); {kl_txt}"
            fix = "raise train.beta or lower train.learning_rate, or mix general data into stage 1 (sft.dataset, sft.persona_mix)"
        else:
            cause = f"stage(s) {', '.join(failed_earlier)} are recorded with a failed or inconclusive gate"
            fix = "re-run from the first of them (personatune run CONFIG --from N) until its gate passes"
        if r.inconclusive:  # too few samples; when the value also misses the threshold, its own cause follows
            more = f"hold out more prompts ({key})"
            cause, fix = ((f"too few samples to decide ({r.note})", more) if r.meets_threshold()
                          else (f"too few samples to decide ({r.note}), and {cause}", f"{more}; {fix}"))
        reasons.append(f"{head}: likely cause: {cause}; change: {fix}")
        steps.append(fix)
    verdict = "DEPLOY" if all(r.passed for r in results) else "NO-DEPLOY"
    head = "verdict: DEPLOY — every stage-7 gate passed" if verdict == "DEPLOY" else "verdict: NO-DEPLOY"
    return GateReport(STAGE, results, diagnosis=[head, *reasons], next_steps=list(dict.fromkeys(steps)))


def run(config: RunConfig, run_dir: RunDir) -> StageResult:
    """Compare the final model with the baseline; gate; write final.json, final.md, samples.json.

    Raises:
        RunDirError: an earlier stage's output is missing.
        DataError: no held-out prompts, a held-out prompt with a system turn, or models with different vocabularies.
    """
    import torch

    from personatune import models
    from personatune.capability import perplexity, retention, score_suite
    from personatune.generation.hf import HFBackend
    from personatune.progress import EtaLine
    from personatune.kl import measure_drift
    from personatune.persona import load_persona
    from personatune.persona_prompt import persona_context
    from personatune.lm_harness import check_tasks
    from personatune.scoring.factory import scorer_for_run
    from personatune.stages.s1_baseline import baseline_model_path
    from personatune.stages.s6_iterations import final_model_path

    t_start = time.time()
    check_tasks(config.lm_eval)  # an unknown lm-eval task fails before any model work
    out = run_dir.stage_dir(STAGE)
    if config.threads:
        torch.set_num_threads(config.threads)

    # 1. Inputs, all through the manifest.
    spec = load_persona(run_dir.output_path("02_persona", "persona"))
    prompts = read_jsonl(run_dir.output_path("03_consistency_data", "heldout") / "prompts.jsonl", fix=STAGE3_FIX)
    if not prompts:
        raise DataError(f"03_consistency_data/heldout/prompts.jsonl is empty; fix: raise data.heldout_fraction or data.max_prompts and {STAGE3_FIX}")
    for p in prompts:
        if any(m.get("role") == "system" for m in p["messages"]):
            raise DataError(f"held-out prompt {p.get('id')!r} has a system turn; stage 7 compares models without one; fix: {STAGE3_FIX}")
    run_dir.output_path("04_evaluation", "evaluator")  # stage 7 requires the fitted evaluator, never the persona-only fallback
    scorer, scorer_desc = scorer_for_run(config, run_dir, spec)
    base_path, final_path = baseline_model_path(run_dir), final_model_path(run_dir)
    base_model, base_tok = models.load_configured_model(base_path, config.model)
    final_model, final_tok = models.load_configured_model(str(final_path), config.model)
    if len(base_tok) != len(final_tok):
        raise DataError(f"the final model's tokenizer ({len(final_tok)} tokens) differs from the baseline's ({len(base_tok)}); "
                        f"KL and a like-for-like comparison need the same vocabulary; fix: train from the stage-1 baseline")

    # 2. Both models on every held-out prompt, no system prompt, the same decoding (stage 4's).
    convs = [p["messages"] for p in prompts]
    decoding = {**eval_decoding(config), "seed": config.seed}
    context = persona_context(spec, few_shot=config.data.few_shot)
    base_texts = reusable_baseline_texts(config, run_dir, prompts)
    source = "04_evaluation/baseline_samples.json (reused: same model, prompts and decoding)"
    if base_texts is None:
        base_texts, source = _sample(base_model, base_tok, convs, config, "baseline model"), "sampled again in stage 7"
    # The context-distillation target: the baseline given the persona context, same prompts and decoding.
    prompted_texts = _sample(base_model, base_tok, convs, config, "baseline model with the persona prompt", context)
    final_texts = _sample(final_model, final_tok, convs, config, "final model")
    kw = dict(prompts=[c[-1]["content"] for c in convs], contexts=[p.get("context") for p in prompts],
              targets=[list(p.get("targets") or []) for p in prompts], ids=[str(p["id"]) for p in prompts])
    base_recs, prompted_recs, final_recs = scorer.score(base_texts, **kw), scorer.score(prompted_texts, **kw), scorer.score(final_texts, **kw)

    # 3. Persona figures. 4. Capability (stage 1's suite result for the baseline when it exists). 5. KL.
    fig: dict[str, Any] = compare_persona(base_recs, final_recs, seed=config.seed, min_per_context=config.gates.evaluation.min_per_context)
    fig["prompted_baseline"] = prompted_baseline_figures(prompted_recs, base_recs, final_recs, seed=config.seed, few_shot=config.data.few_shot)
    try:
        base_suite = json.loads(run_dir.output_path("01_baseline", "capability").read_text(encoding="utf-8"))
        suite_src = "01_baseline/capability.json"
    except RunDirError:
        base_suite, suite_src = score_suite(HFBackend(base_model, base_tok, batch_size=CAPABILITY_BATCH,
                                                      progress=EtaLine("stage 7: capability suite, baseline", unit="items"))), "scored in stage 7"
    final_suite = score_suite(HFBackend(final_model, final_tok, batch_size=CAPABILITY_BATCH,
                                        progress=EtaLine("stage 7: capability suite, final model", unit="items")))
    ret = retention(final_suite, base_suite)
    value = ret["retention"] if math.isfinite(ret["retention"]) else None
    tasks = {k: {**d, "n": base_suite["tasks"][k]["n"]} for k, d in ret["task_drops"].items()}
    fig["retention"] = {"value": value, "unit": "ratio (final / baseline suite score)", "baseline_score": base_suite["score"], "final_score": final_suite["score"],
                        "n_items": final_suite["n"], "baseline_source": suite_src, "tasks": tasks, "all_tasks_ok": ret["all_tasks_ok"],
                        "task_rule": "a task fails when baseline accuracy - final accuracy > baseline accuracy - its Wilson 95% lower bound",
                        "final_replies": final_suite["replies"]}
    if config.lm_eval.tasks:
        fig["lm_eval"] = lm_eval_figures(config, run_dir, base_model, base_tok, final_model, final_tok)
    base_info = json.loads(run_dir.output_path("01_baseline", "baseline").read_text(encoding="utf-8"))
    fig["perplexity"] = {"baseline": base_info.get("perplexity") or perplexity(base_model, base_tok), "final": perplexity(final_model, final_tok),
                         "unit": "exp(mean NLL, nats/token) on the suite's general text, no chat template"}
    kl_tokens = config.train.kl_max_new_tokens
    dr = measure_drift(final_model, base_model, final_tok, convs, context, max_new_tokens=kl_tokens, seed=config.seed, batch_size=decoding["batch_size"])
    kl, shift = dr.drift, dr.shift
    fig["kl"] = {**kl.to_dict(), "max_new_tokens": kl_tokens, "context_tokens": dr.context_tokens, "few_shot": config.data.few_shot,
                 "what": "drift KL: KL(final(.|x) || baseline(.|c, x)), c = the persona context, x = a held-out prompt; reported, gated in stages 5-6"}
    fig["persona_shift"] = {**shift.to_dict(), "max_new_tokens": kl_tokens,
                            "what": "persona shift: KL(final(.|x) || baseline(.|x)) on the same samples; information, not a gate"}
    fig["kl_reference"] = KL_REFERENCE
    fig["earlier_gates"] = {s: {"status": run_dir.record(s).status, "gate_passed": (run_dir.record(s).gate or {}).get("passed")} for s in EARLIER}

    # 6. Gate and verdict; everything reaches disk before the runner decides.
    gate = final_gate(config, fig)
    verdict = "DEPLOY" if gate.passed else "NO-DEPLOY"
    reasons = gate.diagnosis[1:] or [r.line() for r in gate.results]
    fig = {"verdict": verdict, "reasons": reasons, "n_prompts": len(prompts), "decoding": {**decoding, "system_prompt": None},
           "baseline_model": base_path, "final_model": str(final_path.relative_to(run_dir.root)), "scorer": scorer_desc, "baseline_samples": source,
           **fig, "gates": [asdict(r) for r in gate.results], "seconds": round(time.time() - t_start, 2)}
    # Validated against the record the report reads, so a writer change that breaks the format fails here, not there.
    atomic_write_json(out / "final.json", FinalRecord.model_validate(fig).to_json())
    atomic_write_text(out / "final.md", final_markdown(fig))
    atomic_write_json(out / "samples.json", [
        {"id": p["id"], "context": p.get("context"), "prompt": c[-1]["content"], "baseline": bt, "baseline_prompted": pt, "final": ft,
         "baseline_consistency": br.consistency, "baseline_prompted_consistency": pr.consistency, "final_consistency": fr.consistency,
         "baseline_consistent": br.consistent, "baseline_prompted_consistent": pr.consistent, "final_consistent": fr.consistent}
        for p, c, bt, pt, ft, br, pr, fr in zip(prompts, convs, base_texts, prompted_texts, final_texts, base_recs, prompted_recs, final_recs)])
    imp = fig["improvement"]
    ci_txt = f"[{imp['ci'][0]:+.3f}, {imp['ci'][1]:+.3f}]" if imp.get("ci") else "n/a"
    pb = fig["prompted_baseline"]["consistency"]["value"]
    msg = (f"{verdict}: consistency {imp['baseline']:.3f} -> {imp['final']:.3f} (improvement 95% CI {ci_txt}; "
           f"persona-prompted baseline {'n/a' if pb is None else f'{pb:.3f}'}), retention {'n/a' if value is None else f'{value:.3f}'}, "
           f"drift KL {kl.per_token:.4g} nats/token, persona shift {shift.per_token:.4g} nats/token")
    return StageResult(outputs={"final": out / "final.json", "samples": out / "samples.json"}, gate=gate,
                       metrics={"verdict": verdict, "improvement": imp["value"], "retention": value, "kl": kl.per_token,
                                "persona_shift": shift.per_token, "prompted_baseline_consistency": pb}, message=msg)
