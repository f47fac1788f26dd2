"""Stage 7 — final evaluation: the final model against the baseline, and the DEPLOY / NO-DEPLOY verdict.

1. Load the baseline (stage 1) and the final model (stage 6's kept model), the persona, the held-out prompts
   (stage 3, ALL of them) and the fitted evaluator (stage 4).
2. Sample both models on every held-out prompt with no system prompt and the same decoding: the `eval:`
   max_new_tokens / temperature / top_p / batch_size (data.teacher's where unset) and the run seed, exactly as
   stage 4 sampled the baseline.
   Stage 4's `baseline_samples.json` is reused when its sampling fingerprint matches the config
   (`baseline_samples.reusable_baseline_texts`), else the baseline is sampled again; so is stage 6's measurement of the
   final model (`06_iterations/final_measurement.json`: these samples and the KLs of step 5) when it was taken with
   the same prompts, decoding, batch size, seed and persona context (`final_measurement.reusable`), else the final
   model is sampled and measured here. All sets are scored by the same evaluator.
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

from personatune import final_measurement
from personatune.baseline_samples import decoding as eval_decoding
from personatune.baseline_samples import reusable_baseline_texts, sample_eval
from personatune.config import RunConfig
from personatune.errors import DataError, RunDirError
from personatune.records import DRIFT_REFERENCE_LABEL, FINAL_STAGE, FinalRecord, write_record
from personatune.rundir import RunDir, atomic_write_json, atomic_write_text
from personatune.stage import StageResult
from personatune.stage3_rows import STAGE3_FIX, read_stage3

# Re-exported: the figures and the gate built from them are stage 7's, kept in their own module so `run` reads in one sitting.
from personatune.stages.s7_figures import (  # noqa: F401
    ADVERSARIAL,
    compare_persona,
    final_gate,
    final_markdown,
    prompted_baseline_figures,
)

STAGE = FINAL_STAGE
CAPABILITY_BATCH = 16
"""Batch size of capability-suite generation; stage 1 uses the same, so padding is identical."""
EARLIER = ("01_baseline", "02_persona", "03_consistency_data", "04_evaluation", "05_optimization", "06_iterations")
KL_REFERENCE = DRIFT_REFERENCE_LABEL
"""What final.json's `kl` is measured against (the same label as stages 5-6 write as `kl_reference`)."""


def lm_eval_figures(
    config: RunConfig, run_dir: RunDir, base_model: Any, base_tok: Any, final_model: Any, final_tok: Any
) -> dict[str, Any]:
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
    return {
        **cmp,
        "baseline_source": source,
        "settings": want,
        "lm_eval_version": final.get("lm_eval_version"),
        "rule": "a task fails when its primary metric moves the wrong way by more than 1.96 x the baseline's standard error",
    }


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
    from personatune.kl import context_token_count, measure_drift
    from personatune.lm_harness import check_tasks
    from personatune.persona import load_persona
    from personatune.persona_prompt import persona_context
    from personatune.progress import EtaLine
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
    prompts = read_stage3(
        run_dir.output_path("03_consistency_data", "heldout") / "prompts.jsonl", "prompts", STAGE3_FIX
    )
    if not prompts:
        raise DataError(
            f"03_consistency_data/heldout/prompts.jsonl is empty; fix: raise data.heldout_fraction or data.max_prompts and {STAGE3_FIX}"
        )
    for p in prompts:
        if any(m.get("role") == "system" for m in p["messages"]):
            raise DataError(
                f"held-out prompt {p.get('id')!r} has a system turn; stage 7 compares models without one; fix: {STAGE3_FIX}"
            )
    run_dir.output_path(
        "04_evaluation", "evaluator"
    )  # stage 7 requires the fitted evaluator, never the persona-only fallback
    scorer, scorer_desc = scorer_for_run(config, run_dir, spec)
    base_path, final_path = baseline_model_path(run_dir), final_model_path(run_dir)
    base_model, base_tok = models.load_configured_model(base_path, config.model)
    final_model, final_tok = models.load_configured_model(str(final_path), config.model)
    if len(base_tok) != len(final_tok):
        raise DataError(
            f"the final model's tokenizer ({len(final_tok)} tokens) differs from the baseline's ({len(base_tok)}); "
            f"KL and a like-for-like comparison need the same vocabulary; fix: train from the stage-1 baseline"
        )

    # 2. Both models on every held-out prompt, no system prompt, the same decoding (stage 4's).
    convs = [p["messages"] for p in prompts]
    decoding = {**eval_decoding(config), "seed": config.seed}
    context = persona_context(spec, few_shot=config.data.few_shot)
    on = f"on {len(convs)} held-out prompts"
    base_texts = reusable_baseline_texts(config, run_dir, prompts)
    source = "04_evaluation/baseline_samples.json (reused: same model, prompts and decoding)"
    if base_texts is None:
        base_texts = sample_eval(base_model, base_tok, convs, config, f"stage 7: sampling the baseline model {on}")
        source = "sampled again in stage 7"
    # The context-distillation target: the baseline given the persona context, same prompts and decoding.
    prompted = [list(context) + list(c) for c in convs]
    what = f"stage 7: sampling the baseline model with the persona prompt {on}"
    prompted_texts = sample_eval(base_model, base_tok, prompted, config, what)
    # Stage 6's measurement of this same model (its samples and both KLs), when it was taken exactly as here.
    fp = final_measurement.fingerprint(config, run_dir, prompts, decoding, config.seed, context)
    reused = final_measurement.reusable(run_dir, fp, final_path, len(prompts))
    if reused is None:
        final_texts = sample_eval(final_model, final_tok, convs, config, f"stage 7: sampling the final model {on}")
        final_source = "sampled in stage 7"
    else:
        final_texts = reused.texts
        final_source = f"{final_measurement.STAGE}/{final_measurement.FILE} (stage 6's measurement of the same model, prompts, decoding, batch size and seed)"
    kw = dict(
        prompts=[c[-1]["content"] for c in convs],
        contexts=[p.get("context") for p in prompts],
        targets=[list(p.get("targets") or []) for p in prompts],
        ids=[str(p["id"]) for p in prompts],
    )
    base_recs, prompted_recs, final_recs = (
        scorer.score(base_texts, **kw),
        scorer.score(prompted_texts, **kw),
        scorer.score(final_texts, **kw),
    )

    # 3. Persona figures. 4. Capability (stage 1's suite result for the baseline when it exists). 5. KL.
    fig: dict[str, Any] = compare_persona(
        base_recs, final_recs, seed=config.seed, min_per_context=config.eval.min_per_context
    )
    fig["prompted_baseline"] = prompted_baseline_figures(
        prompted_recs, base_recs, final_recs, seed=config.seed, few_shot=config.data.few_shot
    )
    try:
        base_suite = json.loads(run_dir.output_path("01_baseline", "capability").read_text(encoding="utf-8"))
        suite_src = "01_baseline/capability.json"
    except RunDirError:
        base_suite, suite_src = (
            score_suite(
                HFBackend(
                    base_model,
                    base_tok,
                    batch_size=CAPABILITY_BATCH,
                    progress=EtaLine("stage 7: capability suite, baseline", unit="items"),
                )
            ),
            "scored in stage 7",
        )
    final_suite = score_suite(
        HFBackend(
            final_model,
            final_tok,
            batch_size=CAPABILITY_BATCH,
            progress=EtaLine("stage 7: capability suite, final model", unit="items"),
        )
    )
    ret = retention(final_suite, base_suite)
    value = ret["retention"] if math.isfinite(ret["retention"]) else None
    tasks = {k: {**d, "n": base_suite["tasks"][k]["n"]} for k, d in ret["task_drops"].items()}
    fig["retention"] = {
        "value": value,
        "unit": "ratio (final / baseline suite score)",
        "baseline_score": base_suite["score"],
        "final_score": final_suite["score"],
        "n_items": final_suite["n"],
        "baseline_source": suite_src,
        "tasks": tasks,
        "all_tasks_ok": ret["all_tasks_ok"],
        "task_rule": "a task fails when baseline accuracy - final accuracy > baseline accuracy - its Wilson 95% lower bound",
        "final_replies": final_suite["replies"],
    }
    if config.lm_eval.tasks:
        fig["lm_eval"] = lm_eval_figures(config, run_dir, base_model, base_tok, final_model, final_tok)
    base_info = json.loads(run_dir.output_path("01_baseline", "baseline").read_text(encoding="utf-8"))
    fig["perplexity"] = {
        "baseline": base_info.get("perplexity") or perplexity(base_model, base_tok),
        "final": perplexity(final_model, final_tok),
        "unit": "exp(mean NLL, nats/token) on the suite's general text, no chat template",
    }
    kl_tokens = config.train.kl_max_new_tokens
    if reused is not None:
        dr = reused.drift
        dr.context_tokens = context_token_count(final_tok, convs, context)
    else:
        dr = measure_drift(
            final_model,
            base_model,
            final_tok,
            convs,
            context,
            max_new_tokens=kl_tokens,
            seed=config.seed,
            batch_size=decoding["batch_size"],
        )
    kl, shift = dr.drift, dr.shift
    fig["kl"] = {
        **kl.to_dict(),
        "max_new_tokens": kl_tokens,
        "context_tokens": dr.context_tokens,
        "few_shot": config.data.few_shot,
        "what": "drift KL: KL(final(.|x) || baseline(.|c, x)), c = the persona context, x = a held-out prompt; reported, gated in stages 5-6",
    }
    fig["persona_shift"] = {
        **shift.to_dict(),
        "max_new_tokens": kl_tokens,
        "what": "persona shift: KL(final(.|x) || baseline(.|x)) on the same samples; information, not a gate",
    }
    fig["kl_reference"] = KL_REFERENCE
    fig["earlier_gates"] = {
        s: {"status": run_dir.record(s).status, "gate_passed": (run_dir.record(s).gate or {}).get("passed")}
        for s in EARLIER
    }

    # 6. Gate and verdict; everything reaches disk before the runner decides.
    gate = final_gate(config, fig)
    verdict = "DEPLOY" if gate.passed else "NO-DEPLOY"
    reasons = gate.diagnosis[1:] or [r.line() for r in gate.results]
    fig = {
        "verdict": verdict,
        "reasons": reasons,
        "n_prompts": len(prompts),
        "decoding": {**decoding, "system_prompt": None},
        "baseline_model": base_path,
        "final_model": str(final_path.relative_to(run_dir.root)),
        "scorer": scorer_desc,
        "baseline_samples": source,
        "final_samples": final_source,
        **fig,
        "gates": [asdict(r) for r in gate.results],
        "seconds": round(time.time() - t_start, 2),
    }
    # Checked against the record the report reads, so a writer change that breaks the format fails here, not there.
    write_record(out / "final.json", FinalRecord, fig)
    atomic_write_text(out / "final.md", final_markdown(fig))
    atomic_write_json(
        out / "samples.json",
        [
            {
                "id": p["id"],
                "context": p.get("context"),
                "prompt": c[-1]["content"],
                "baseline": bt,
                "baseline_prompted": pt,
                "final": ft,
                "baseline_consistency": br.consistency,
                "baseline_prompted_consistency": pr.consistency,
                "final_consistency": fr.consistency,
                "baseline_consistent": br.consistent,
                "baseline_prompted_consistent": pr.consistent,
                "final_consistent": fr.consistent,
            }
            for p, c, bt, pt, ft, br, pr, fr in zip(
                prompts, convs, base_texts, prompted_texts, final_texts, base_recs, prompted_recs, final_recs
            )
        ],
    )
    imp = fig["improvement"]
    ci_txt = f"[{imp['ci'][0]:+.3f}, {imp['ci'][1]:+.3f}]" if imp.get("ci") else "n/a"
    pb = fig["prompted_baseline"]["consistency"]["value"]
    msg = (
        f"{verdict}: consistency {imp['baseline']:.3f} -> {imp['final']:.3f} (improvement 95% CI {ci_txt}; "
        f"persona-prompted baseline {'n/a' if pb is None else f'{pb:.3f}'}), retention {'n/a' if value is None else f'{value:.3f}'}, "
        f"drift KL {kl.per_token:.4g} nats/token, persona shift {shift.per_token:.4g} nats/token"
    )
    return StageResult(
        outputs={"final": out / "final.json", "samples": out / "samples.json"},
        gate=gate,
        metrics={
            "verdict": verdict,
            "improvement": imp["value"],
            "retention": value,
            "kl": kl.per_token,
            "persona_shift": shift.per_token,
            "prompted_baseline_consistency": pb,
        },
        message=msg,
    )
