"""Stage 7's figures, gate and final.md: baseline vs final persona figures, the context-distillation target,
the gate and verdict decided from final.json's figures (`final_gate`), and final.md.

Pure functions of scored responses (aggregate.ResponseScore), of final.json's figures and of the config: no model,
no run directory. Stage 7 (s7_final.run) measures, calls these and writes; they live apart so the stage's `run`
reads in one sitting and these can be tested without a model.
"""

from __future__ import annotations

import json
import math
from typing import Any

from personatune import evidence
from personatune.config import RunConfig
from personatune.gates import GateReport, GateSpec, Measurement, check_gates, fmt_metric
from personatune.records import FINAL_STAGE as STAGE
from personatune.scoring.aggregate import (
    N_RESAMPLES,
    consistency_rate,
    on_task_rate,
    rate_difference,
    style_variance,
    trait_adherence,
)

ADVERSARIAL = "adversarial"
"""Context label of the persona-break prompts whose robustness is reported."""


def _m(m: Measurement) -> dict[str, Any]:
    """A Measurement as JSON (NaN -> None, tuple -> list)."""
    v = m.value if m.value is not None and math.isfinite(m.value) else None
    return {"value": v, "n": m.n, "ci": list(m.ci) if m.ci is not None else None}


def compare_persona(base: list[Any], final: list[Any], *, seed: int, min_per_context: int) -> dict[str, Any]:
    """Baseline vs final persona figures from scored responses to the same prompts, in the same order.

    Args:
        base: ResponseScore of the baseline's responses.
        final: ResponseScore of the final model's responses (same prompts, same order).
        seed: bootstrap seed.
        min_per_context: responses a context needs to count in style variance.

    Returns:
        {"improvement", "consistency", "adherence", "style_variance", "per_trait", "per_context", "robustness", "on_task"}.

    Raises:
        ValueError: the two lists differ in length or prompt ids (the bootstrap pairs them by prompt).
    """
    if [r.id for r in base] != [r.id for r in final]:
        raise ValueError("baseline and final records must score the same prompts in the same order")
    imp = rate_difference(
        [r.consistent for r in final], [r.consistent for r in base], paired=True, seed=seed, n_resamples=N_RESAMPLES
    )
    cb, cf = consistency_rate(base), consistency_rate(final)
    ab, af = trait_adherence(base, seed=seed), trait_adherence(final, seed=seed)
    improvement = {
        **_m(imp),
        "n": len(base),
        "baseline": cb.value,
        "final": cf.value,
        "unit": "fraction of responses (final - baseline)",
        "method": f"paired percentile bootstrap over prompts, B={N_RESAMPLES}, seed={seed}",
    }
    per_trait = {
        t: {"baseline": _m(ab.per_trait[t]), "final": _m(af.per_trait.get(t, Measurement(math.nan, n=0)))}
        for t in ab.per_trait
    }
    per_context: dict[str, Any] = {}
    for c in ab.per_context:
        sb = [r for r in base if (r.context or "(none)") == c]
        sf = [r for r in final if (r.context or "(none)") == c]
        per_context[c] = {
            "n": len(sb),
            "consistency": {"baseline": _m(consistency_rate(sb)), "final": _m(consistency_rate(sf))},
            "adherence": {"baseline": _m(ab.per_context[c]), "final": _m(af.per_context[c])},
        }
    adv_b = [r for r in base if r.context == ADVERSARIAL]
    adv_f = [r for r in final if r.context == ADVERSARIAL]
    robustness = {
        "context": ADVERSARIAL,
        "n": len(adv_b),
        "unit": "fraction of persona-break prompts answered consistently (Wilson 95% CI)",
        "before": _m(consistency_rate(adv_b)),
        "after": _m(consistency_rate(adv_f)),
        "note": "" if adv_b else f"no held-out prompt has context {ADVERSARIAL!r}; add it to data.contexts",
    }
    otb, otf = on_task_rate(base), on_task_rate(final)
    ret, why = evidence.on_task_retention(otf, otb)
    on_task = {
        "baseline": _m(otb) if otb else None,
        "final": _m(otf) if otf else None,
        "unit": "fraction of responses with on_task >= 0.5 (Wilson 95% CI)",
        "retention": {
            **(_m(ret) if ret else {"value": None, "n": None, "ci": None}),
            "note": why,
            "unit": "ratio (on-task rate final / baseline; Katz log 95% CI)",
        },
    }
    svb = style_variance(base, min_per_context=min_per_context, seed=seed)
    svf = style_variance(final, min_per_context=min_per_context, seed=seed)
    return {
        "improvement": improvement,
        "consistency": {"baseline": _m(cb), "final": _m(cf)},
        "adherence": {"baseline": _m(ab.overall), "final": _m(af.overall)},
        "style_variance": {"baseline": svb.value, "final": svf.value, "note": svb.note or svf.note},
        "per_trait": per_trait,
        "per_context": per_context,
        "robustness": robustness,
        "on_task": on_task,
    }


def prompted_baseline_figures(
    prompted: list[Any], base: list[Any], final: list[Any], *, seed: int, few_shot: bool
) -> dict[str, Any]:
    """Persona figures of the baseline given the persona context (the target of context distillation), beside the
    baseline and the final model without a system prompt, on the same prompts and decoding.

    Args:
        prompted: ResponseScore of the baseline's responses with the persona context before each prompt.
        base, final: ResponseScore of the baseline's and the final model's responses without a system prompt.
        seed: bootstrap seed (adherence interval).
        few_shot: whether the context held the few-shot turns (data.few_shot).

    Returns:
        {"consistency", "on_task", "adherence", "n", "context", "gap_closed", ...}; `gap_closed` = (consistency(final)
        - consistency(baseline)) / (consistency(prompted) - consistency(baseline)), None when the persona context
        does not raise the baseline's consistency.

    Raises:
        ValueError: the lists do not score the same prompts in the same order.
    """
    if not ([r.id for r in prompted] == [r.id for r in base] == [r.id for r in final]):
        raise ValueError("prompted baseline, baseline and final records must score the same prompts in the same order")
    cp, cb, cf = consistency_rate(prompted), consistency_rate(base), consistency_rate(final)
    otp = on_task_rate(prompted)
    lift = (
        None if cp.value is None or cb.value is None or not math.isfinite(cp.value - cb.value) else cp.value - cb.value
    )
    gap = None if lift is None or lift <= 0 or cf.value is None else (cf.value - cb.value) / lift
    return {
        "consistency": _m(cp),
        "on_task": _m(otp) if otp else None,
        "adherence": _m(trait_adherence(prompted, seed=seed).overall),
        "n": len(prompted),
        "context": "persona system prompt"
        + (" + few-shot turns" if few_shot else "")
        + " (persona_prompt.persona_context), then the held-out prompt",
        "unit": "fraction of responses (Wilson 95% CI)",
        "gap_closed": gap,
        "gap_closed_unit": "(consistency final - baseline) / (consistency prompted baseline - baseline), no system prompt for final and baseline",
    }


# A distillation recipe (no beta) brings the student towards the persona-prompted baseline, whose own capability score
# may be lower than the unprompted baseline's (0.588 of it for SmolLM2 + Captain Nova; docs/benchmarks.md).
DISTILLED_CAPABILITY_FIX = (
    "the student nears the persona-prompted baseline, which may itself score lower (benchmarks/bench_capability.py "
    "--prompted): use a stronger data.teacher or model, add train.anchor_samples, or lower train.learning_rate or "
    "train.max_steps"
)


# The same bound for answering the request: the persona prompt made SmolLM2-135M answer less often (0.683 against 0.768),
# and no closing instruction changed that (docs/benchmarks.md, "The persona context's on-task bound").
DISTILLED_ON_TASK_FIX = (
    "use a stronger data.teacher or model (one that answers the request as often given the persona prompt); "
    "benchmarks/experiments/context_on_task.py measures the target under other persona contexts"
)


DISTILLATION_RECIPES = ("gkd", "sft", "sdft")  # train.algorithm values that pull towards the prompted baseline


def target_on_task_retention(fig: dict[str, Any]) -> float | None:
    """`evidence.on_task_retention` of the baseline with the persona prompt against it without (None: unmeasured)."""
    p = (fig.get("prompted_baseline") or {}).get("on_task")
    b = (fig.get("on_task") or {}).get("baseline")
    if not p or not b:
        return None
    ret, _ = evidence.on_task_retention(Measurement(p["value"], n=p.get("n")), Measurement(b["value"], n=b.get("n")))
    return None if ret is None else ret.value


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
    specs = [
        GateSpec(
            "persona_improvement_ci_low",
            g.min_improvement,
            ">",
            "fraction of responses",
            "lower end of the paired bootstrap 95% interval of consistency(final) - consistency(baseline), held-out prompts, no system prompt; "
            "n = prompts",
            min_n=evidence.rate_min_n_for(config, config.gates.optimization.consistency),
            n_key=key,
        ),
        GateSpec(
            "capability_retention",
            g.min_retention,
            ">=",
            "ratio",
            "capability-suite score of the final model / the baseline's, same items and decoding",
        ),
        GateSpec(
            "on_task_retention",
            g.min_on_task_retention,
            ">=",
            "ratio (on-task rate final / baseline)",
            "on-task rate of the final model / the baseline's, both without a system prompt, same held-out prompts and decoding; n = responses",
            min_n=evidence.rate_min_n_for(config, g.min_on_task_retention),
            n_key=key,
        ),
    ]
    measured: dict[str, Measurement | None] = {
        "persona_improvement_ci_low": Measurement(ci[0], n=imp["n"], ci=tuple(ci))
        if ci and ci[0] is not None
        else None,
        "capability_retention": Measurement(ret["value"], n=ret["n_items"]) if ret.get("value") is not None else None,
        "on_task_retention": Measurement(ot["value"], n=ot.get("n"), ci=tuple(ot["ci"]) if ot.get("ci") else None)
        if ot.get("value") is not None
        else None,
    }
    for task, d in ret["tasks"].items():
        # Threshold = the baseline's own 95% interval below its estimate; 1e-12 absorbs float rounding of equal accuracies.
        specs.append(
            GateSpec(
                f"capability_drop[{task}]",
                d["allowed"] + 1e-12,
                "<=",
                "accuracy (fraction of items)",
                f"accuracy drop on task {task}; allowed: baseline accuracy minus its Wilson 95% lower bound",
            )
        )
        measured[f"capability_drop[{task}]"] = Measurement(d["drop"], n=d["n"])
    lm = fig.get("lm_eval") or {}
    for task, d in (lm.get("tasks") or {}).items():
        # lm-eval tasks (optional): the primary metric may not move the wrong way by more than 1.96 x the baseline's standard error.
        specs.append(
            GateSpec(
                f"lm_eval_drop[{task}]",
                d["allowed"] + 1e-12,
                "<=",
                f"{d['metric']} (lm-eval; drop in the worse direction)",
                f"lm-eval task {task}: baseline {d['metric']} minus the final model's; allowed: 1.96 x the baseline's standard error",
            )
        )
        measured[f"lm_eval_drop[{task}]"] = Measurement(d["drop"], n=d.get("n"))
    failed_earlier = [s for s, e in fig["earlier_gates"].items() if e.get("gate_passed") is False]
    specs.append(
        GateSpec(
            "earlier_gates_failed",
            0,
            "<=",
            "stages",
            "stages 1-6 whose recorded gate did not pass (failed or inconclusive)",
        )
    )
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
                cause, fix = (
                    r.note,
                    "check the held-out prompts and the baseline's replies in 07_final_eval/samples.json",
                )
            else:
                on = fig["on_task"]
                cause = (
                    f"the final model answers the request less often than the baseline (on-task rate "
                    f"{fmt_metric((on.get('baseline') or {}).get('value'))} -> {fmt_metric((on.get('final') or {}).get('value'))}): persona bought with helpfulness"
                )
                fix = "train with GRPO/RLOO (the reward multiplies on_task) or a higher train.beta; check stage 3's chosen on-task rate (gates.data.chosen_on_task)"
                target = target_on_task_retention(fig)
                if target is not None and target < r.threshold and config.train.algorithm in DISTILLATION_RECIPES:
                    cause += (
                        f"; the distillation target, the baseline given the persona prompt, itself stands at on-task "
                        f"retention {target:.3f}, so a student that matches it cannot pass"
                    )
                    fix = DISTILLED_ON_TASK_FIX
        elif r.metric == "persona_improvement_ci_low":
            if imp.get("value") is None or imp["value"] <= g.min_improvement:
                cause = (
                    f"the final model is no more consistent than the baseline without a system prompt "
                    f"({fmt_metric(imp.get('baseline'))} -> {fmt_metric(imp.get('final'))}): the persona did not reach the weights"
                )
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
                fix = (
                    DISTILLED_CAPABILITY_FIX
                    if config.train.algorithm in DISTILLATION_RECIPES
                    else "raise train.beta, lower train.learning_rate or train.max_steps, or mix general data into stage 1 (sft.dataset, sft.persona_mix)"
                )
        elif r.metric.startswith("capability_drop["):
            d = ret["tasks"][r.metric[16:-1]]
            cause = f"task {r.metric[16:-1]} fell from {d['baseline']:.3f} to {d['candidate']:.3f}, beyond the baseline's interval ({d['allowed']:.3f}); {kl_txt}"
            fix = "raise train.beta or lower train.learning_rate; check which replies changed in 07_final_eval/final.json capability.final_replies"
        elif r.metric.startswith("lm_eval_drop["):
            task = r.metric[len("lm_eval_drop[") : -1]
            d = lm["tasks"][task]
            cause = f"lm-eval task {task} ({d['metric']}) went from {d['baseline']:.4f} to {d['final']:.4f}, beyond the baseline's interval ({d['allowed']:.4f}); {kl_txt}"
            fix = "raise train.beta or lower train.learning_rate, or mix general data into stage 1 (sft.dataset, sft.persona_mix)"
        else:
            cause = f"stage(s) {', '.join(failed_earlier)} are recorded with a failed or inconclusive gate"
            fix = "re-run from the first of them (personatune run CONFIG --from N) until its gate passes"
        if r.inconclusive:  # too few samples; when the value also misses the threshold, its own cause follows
            more = f"hold out more prompts ({key})"
            cause, fix = (
                (f"too few samples to decide ({r.note})", more)
                if r.meets_threshold()
                else (f"too few samples to decide ({r.note}), and {cause}", f"{more}; {fix}")
            )
        reasons.append(f"{head}: likely cause: {cause}; change: {fix}")
        steps.append(fix)
    verdict = "DEPLOY" if all(r.passed for r in results) else "NO-DEPLOY"
    head = "verdict: DEPLOY — every stage-7 gate passed" if verdict == "DEPLOY" else "verdict: NO-DEPLOY"
    return GateReport(STAGE, results, diagnosis=[head, *reasons], next_steps=list(dict.fromkeys(steps)))


def _md_number(x: Any) -> str:
    """A figure in final.md: 3 decimals for floats, "n/a" for None."""
    return "n/a" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))


def _md_measurement(m: dict[str, Any] | None) -> str:
    """A measurement in final.md: "0.720 [0.620, 0.820]", or "n/a"."""
    if not m or m.get("value") is None:
        return "n/a"
    return f"{m['value']:.3f}" + (f" [{m['ci'][0]:.3f}, {m['ci'][1]:.3f}]" if m.get("ci") else "")


def _md_kl(d: dict[str, Any] | None) -> str:
    """A KL figure in final.md: "0.061 ± 0.004 nats/token (900 tokens)", or "n/a"."""
    if not isinstance((d or {}).get("kl_per_token"), (int, float)):
        return "n/a"
    return f"{d['kl_per_token']:.4g} ± {d.get('kl_per_token_stderr', float('nan')):.2g} nats/token ({d.get('tokens')} tokens)"


def final_markdown(fig: dict[str, Any]) -> str:
    """final.md: the verdict, its reasons and the tables of final.json, for reading without the report."""
    f, fm, fk = _md_number, _md_measurement, _md_kl
    imp, ret, rob = fig["improvement"], fig["retention"], fig["robustness"]
    ot = fig.get("on_task") or {}
    out = (
        [f"# Final evaluation: {fig['verdict']}", ""]
        + [f"- {r}" for r in fig["reasons"]]
        + [
            "",
            f"Held-out prompts: {fig['n_prompts']}, no system prompt; decoding {json.dumps(fig['decoding'])}; baseline samples: {fig['baseline_samples']}; "
            f"final model's samples and KL: {fig.get('final_samples') or 'sampled in stage 7'}.",
            "",
            "| metric | baseline | final | figure |",
            "|---|---|---|---|",
            f"| consistency rate | {fm(fig['consistency']['baseline'])} | {fm(fig['consistency']['final'])} | improvement {fm(imp)} ({imp['method']}) |",
            f"| trait adherence | {fm(fig['adherence']['baseline'])} | {fm(fig['adherence']['final'])} | |",
            f"| style variance | {f(fig['style_variance']['baseline'])} | {f(fig['style_variance']['final'])} | |",
            f"| capability suite | {f(ret['baseline_score'])} | {f(ret['final_score'])} | retention {f(ret['value'])} (n={ret['n_items']}) |",
            f"| perplexity | {f(fig['perplexity']['baseline'].get('perplexity'))} | {f(fig['perplexity']['final'].get('perplexity'))} | |",
            f"| on-task rate | {fm(ot.get('baseline'))} | {fm(ot.get('final'))} | retention {fm(ot.get('retention'))} {ot.get('retention', {}).get('note', '')} |",
            f"| robustness ({rob['context']}, n={rob['n']}) | {fm(rob['before'])} | {fm(rob['after'])} | not gated |",
            f"| drift KL: final ‖ baseline given the persona context | | | {fk(fig.get('kl'))}; reported, gated in stages 5-6 |",
            f"| persona shift: final ‖ baseline without it | | | {fk(fig.get('persona_shift'))}; information, not a gate |",
            "",
            "## Capability per task",
            "",
            "| task | baseline | final | drop | allowed | ok |",
            "|---|---|---|---|---|---|",
        ]
    )
    out += [
        f"| {t} | {d['baseline']:.3f} | {d['candidate']:.3f} | {d['drop']:.3f} | {d['allowed']:.3f} | {'yes' if d['ok'] else 'NO'} |"
        for t, d in ret["tasks"].items()
    ]
    pb = fig.get("prompted_baseline")
    if pb:
        out += [
            "",
            "## Context-distillation target",
            "",
            f"The baseline given the persona context ({pb['context']}) is what the final model should match without one; same prompts, decoding and evaluator.",
            "",
            "| metric | baseline, no system prompt | baseline with the persona prompt | final, no system prompt |",
            "|---|---|---|---|",
            f"| consistency rate | {fm(fig['consistency']['baseline'])} | {fm(pb['consistency'])} | {fm(fig['consistency']['final'])} |",
            f"| on-task rate | {fm(ot.get('baseline'))} | {fm(pb.get('on_task'))} | {fm(ot.get('final'))} |",
            f"| trait adherence | {fm(fig['adherence']['baseline'])} | {fm(pb['adherence'])} | {fm(fig['adherence']['final'])} |",
            f"| share of the consistency gap closed | | | {f(pb.get('gap_closed'))} |",
        ]
    lm = fig.get("lm_eval")
    if lm:
        out += [
            "",
            "## lm-evaluation-harness tasks",
            "",
            "| task | metric | baseline | final | drop | allowed | ok |",
            "|---|---|---|---|---|---|---|",
        ]
        out += [
            f"| {t} | {d['metric']} | {d['baseline']:.4f} | {d['final']:.4f} | {d['drop']:.4f} | {d['allowed']:.4f} | {'yes' if d['ok'] else 'NO'} |"
            for t, d in lm["tasks"].items()
        ]
        out += [f"- {t}: not compared ({why})" for t, why in lm["not_compared"].items()]
    out += ["", "## Adherence per trait", "", "| trait | baseline | final |", "|---|---|---|"]
    out += [f"| {t} | {fm(v['baseline'])} | {fm(v['final'])} |" for t, v in fig["per_trait"].items()]
    out += [
        "",
        "## Per context",
        "",
        "| context | n | consistency baseline | consistency final | adherence baseline | adherence final |",
        "|---|---|---|---|---|---|",
    ]
    out += [
        f"| {c} | {v['n']} | {fm(v['consistency']['baseline'])} | {fm(v['consistency']['final'])} | {fm(v['adherence']['baseline'])} | {fm(v['adherence']['final'])} |"
        for c, v in fig["per_context"].items()
    ]
    out += ["", "## Earlier gates", ""] + [
        f"- {s}: {e['status']}, gate {'passed' if e['gate_passed'] else 'n/a' if e['gate_passed'] is None else 'FAILED'}"
        for s, e in fig["earlier_gates"].items()
    ]
    return "\n".join(out) + "\n"
