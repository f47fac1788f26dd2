"""Stage 7's figures: baseline vs final persona figures, the context-distillation target, and final.md.

Pure functions of scored responses (aggregate.ResponseScore) and of final.json's figures: no model, no run
directory. Stage 7 (s7_final.run) measures, calls these, gates and writes; they live apart so the stage's
`run` reads in one sitting and these can be tested without a model.
"""

from __future__ import annotations

import json
import math
from typing import Any

from personatune import evidence
from personatune.gates import Measurement
from personatune.scoring.aggregate import N_RESAMPLES, consistency_rate, on_task_rate, rate_difference, style_variance, trait_adherence

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
    imp = rate_difference([r.consistent for r in final], [r.consistent for r in base], paired=True, seed=seed, n_resamples=N_RESAMPLES)
    cb, cf = consistency_rate(base), consistency_rate(final)
    ab, af = trait_adherence(base, seed=seed), trait_adherence(final, seed=seed)
    improvement = {**_m(imp), "n": len(base), "baseline": cb.value, "final": cf.value, "unit": "fraction of responses (final - baseline)",
                   "method": f"paired percentile bootstrap over prompts, B={N_RESAMPLES}, seed={seed}"}
    per_trait = {t: {"baseline": _m(ab.per_trait[t]), "final": _m(af.per_trait.get(t, Measurement(math.nan, n=0)))} for t in ab.per_trait}
    per_context: dict[str, Any] = {}
    for c in ab.per_context:
        sb = [r for r in base if (r.context or "(none)") == c]
        sf = [r for r in final if (r.context or "(none)") == c]
        per_context[c] = {"n": len(sb), "consistency": {"baseline": _m(consistency_rate(sb)), "final": _m(consistency_rate(sf))},
                          "adherence": {"baseline": _m(ab.per_context[c]), "final": _m(af.per_context[c])}}
    adv_b = [r for r in base if r.context == ADVERSARIAL]
    adv_f = [r for r in final if r.context == ADVERSARIAL]
    robustness = {"context": ADVERSARIAL, "n": len(adv_b), "unit": "fraction of persona-break prompts answered consistently (Wilson 95% CI)",
                  "before": _m(consistency_rate(adv_b)), "after": _m(consistency_rate(adv_f)),
                  "note": "" if adv_b else f"no held-out prompt has context {ADVERSARIAL!r}; add it to data.contexts"}
    otb, otf = on_task_rate(base), on_task_rate(final)
    ret, why = evidence.on_task_retention(otf, otb)
    on_task = {"baseline": _m(otb) if otb else None, "final": _m(otf) if otf else None, "unit": "fraction of responses with on_task >= 0.5 (Wilson 95% CI)",
               "retention": {**(_m(ret) if ret else {"value": None, "n": None, "ci": None}), "note": why,
                             "unit": "ratio (on-task rate final / baseline; Katz log 95% CI)"}}
    svb = style_variance(base, min_per_context=min_per_context, seed=seed)
    svf = style_variance(final, min_per_context=min_per_context, seed=seed)
    return {"improvement": improvement, "consistency": {"baseline": _m(cb), "final": _m(cf)},
            "adherence": {"baseline": _m(ab.overall), "final": _m(af.overall)},
            "style_variance": {"baseline": svb.value, "final": svf.value, "note": svb.note or svf.note},
            "per_trait": per_trait, "per_context": per_context, "robustness": robustness, "on_task": on_task}


def prompted_baseline_figures(prompted: list[Any], base: list[Any], final: list[Any], *, seed: int, few_shot: bool) -> dict[str, Any]:
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
    lift = None if cp.value is None or cb.value is None or not math.isfinite(cp.value - cb.value) else cp.value - cb.value
    gap = None if lift is None or lift <= 0 or cf.value is None else (cf.value - cb.value) / lift
    return {"consistency": _m(cp), "on_task": _m(otp) if otp else None, "adherence": _m(trait_adherence(prompted, seed=seed).overall), "n": len(prompted),
            "context": "persona system prompt" + (" + few-shot turns" if few_shot else "") + " (persona_prompt.persona_context), then the held-out prompt",
            "unit": "fraction of responses (Wilson 95% CI)", "gap_closed": gap,
            "gap_closed_unit": "(consistency final - baseline) / (consistency prompted baseline - baseline), no system prompt for final and baseline"}


def final_markdown(fig: dict[str, Any]) -> str:
    """final.md: the verdict, its reasons and the tables of final.json, for reading without the report."""
    f = lambda x: "n/a" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))  # noqa: E731
    fm = lambda m: "n/a" if not m or m.get("value") is None else f"{m['value']:.3f}" + (f" [{m['ci'][0]:.3f}, {m['ci'][1]:.3f}]" if m.get("ci") else "")  # noqa: E731
    imp, ret, rob = fig["improvement"], fig["retention"], fig["robustness"]
    ot = fig.get("on_task") or {}
    fk = lambda d: ("n/a" if not isinstance((d or {}).get("kl_per_token"), (int, float))  # noqa: E731
                    else f"{d['kl_per_token']:.4g} ± {d.get('kl_per_token_stderr', float('nan')):.2g} nats/token ({d.get('tokens')} tokens)")
    out = [f"# Final evaluation: {fig['verdict']}", ""] + [f"- {r}" for r in fig["reasons"]] + [
        "", f"Held-out prompts: {fig['n_prompts']}, no system prompt; decoding {json.dumps(fig['decoding'])}; baseline samples: {fig['baseline_samples']}.", "",
        "| metric | baseline | final | figure |", "|---|---|---|---|",
        f"| consistency rate | {fm(fig['consistency']['baseline'])} | {fm(fig['consistency']['final'])} | improvement {fm(imp)} ({imp['method']}) |",
        f"| trait adherence | {fm(fig['adherence']['baseline'])} | {fm(fig['adherence']['final'])} | |",
        f"| style variance | {f(fig['style_variance']['baseline'])} | {f(fig['style_variance']['final'])} | |",
        f"| capability suite | {f(ret['baseline_score'])} | {f(ret['final_score'])} | retention {f(ret['value'])} (n={ret['n_items']}) |",
        f"| perplexity | {f(fig['perplexity']['baseline'].get('perplexity'))} | {f(fig['perplexity']['final'].get('perplexity'))} | |",
        f"| on-task rate | {fm(ot.get('baseline'))} | {fm(ot.get('final'))} | retention {fm(ot.get('retention'))} {ot.get('retention', {}).get('note', '')} |",
        f"| robustness ({rob['context']}, n={rob['n']}) | {fm(rob['before'])} | {fm(rob['after'])} | not gated |",
        f"| drift KL: final ‖ baseline given the persona context | | | {fk(fig.get('kl'))}; reported, gated in stages 5-6 |",
        f"| persona shift: final ‖ baseline without it | | | {fk(fig.get('persona_shift'))}; information, not a gate |", "",
        "## Capability per task", "", "| task | baseline | final | drop | allowed | ok |", "|---|---|---|---|---|---|"]
    out += [f"| {t} | {d['baseline']:.3f} | {d['candidate']:.3f} | {d['drop']:.3f} | {d['allowed']:.3f} | {'yes' if d['ok'] else 'NO'} |" for t, d in ret["tasks"].items()]
    pb = fig.get("prompted_baseline")
    if pb:
        out += ["", "## Context-distillation target", "",
                f"The baseline given the persona context ({pb['context']}) is what the final model should match without one; same prompts, decoding and evaluator.", "",
                "| metric | baseline, no system prompt | baseline with the persona prompt | final, no system prompt |", "|---|---|---|---|",
                f"| consistency rate | {fm(fig['consistency']['baseline'])} | {fm(pb['consistency'])} | {fm(fig['consistency']['final'])} |",
                f"| on-task rate | {fm(ot.get('baseline'))} | {fm(pb.get('on_task'))} | {fm(ot.get('final'))} |",
                f"| trait adherence | {fm(fig['adherence']['baseline'])} | {fm(pb['adherence'])} | {fm(fig['adherence']['final'])} |",
                f"| share of the consistency gap closed | | | {f(pb.get('gap_closed'))} |"]
    lm = fig.get("lm_eval")
    if lm:
        out += ["", "## lm-evaluation-harness tasks", "", "| task | metric | baseline | final | drop | allowed | ok |", "|---|---|---|---|---|---|---|"]
        out += [f"| {t} | {d['metric']} | {d['baseline']:.4f} | {d['final']:.4f} | {d['drop']:.4f} | {d['allowed']:.4f} | {'yes' if d['ok'] else 'NO'} |"
                for t, d in lm["tasks"].items()]
        out += [f"- {t}: not compared ({why})" for t, why in lm["not_compared"].items()]
    out += ["", "## Adherence per trait", "", "| trait | baseline | final |", "|---|---|---|"]
    out += [f"| {t} | {fm(v['baseline'])} | {fm(v['final'])} |" for t, v in fig["per_trait"].items()]
    out += ["", "## Per context", "", "| context | n | consistency baseline | consistency final | adherence baseline | adherence final |", "|---|---|---|---|---|---|"]
    out += [f"| {c} | {v['n']} | {fm(v['consistency']['baseline'])} | {fm(v['consistency']['final'])} | {fm(v['adherence']['baseline'])} | {fm(v['adherence']['final'])} |"
            for c, v in fig["per_context"].items()]
    out += ["", "## Earlier gates", ""] + [f"- {s}: {e['status']}, gate {'passed' if e['gate_passed'] else 'n/a' if e['gate_passed'] is None else 'FAILED'}"
                                           for s, e in fig["earlier_gates"].items()]
    return "\n".join(out) + "\n"


