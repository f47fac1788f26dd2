"""Stage 3's gate (METRICS.md) with its diagnosis, and the dataset card that carries its summary.

`data_gate` checks the counts `consistency_pairs.build_pairs` returns: the share of chosen responses that are
consistent and on task, the share of rejected ones that are inconsistent (each with its Wilson interval and the
sample size that makes it conclusive), and per trait the prompts, contexts and violated pairs; a failed line comes
with what to change. `dataset_card` is the README.md written beside the TRL files.
"""

from __future__ import annotations

from typing import Any

from personatune.config import RunConfig
from personatune.evidence import prompts_key, rate_min_n_for
from personatune.gates import GateReport, GateSpec, Measurement, check_gates
from personatune.persona import PersonaSpec
from personatune.scenarios import Scenario, coverage

STAGE = "03_consistency_data"
"""The stage whose gate this is (the id in gate.json)."""


def data_gate(spec: PersonaSpec, scenarios: list[Scenario], stats: dict[str, Any], config: RunConfig) -> GateReport:
    """The METRICS.md stage-3 gate with its diagnosis.

    The three rates need `rate_min_n(threshold)` responses each (137 at 0.85, a 95% interval of about ±0.06);
    below that they are inconclusive and the note names the key that buys more prompts (`prompts_key`).
    """
    g = config.gates.data
    n, k = stats["chosen"], stats["chosen_consistent"]
    n_ot, k_ot = stats.get("chosen_on_task_measured", 0), stats.get("chosen_on_task", 0)
    yield_n, yield_k = stats["scenarios"], stats["chosen_consistent"]
    nr, kr = stats["rejected"], stats["rejected_inconsistent"]
    cov = coverage(scenarios, spec.trait_ids)
    key = prompts_key(config)
    specs = [
        GateSpec(
            "chosen_consistency_rate",
            g.chosen_consistency,
            ">=",
            "fraction of chosen responses",
            "share of the dataset's chosen responses the scorer finds consistent (best-of-k keeps a prompt only when its best candidate is consistent)",
            min_n=rate_min_n_for(config, g.chosen_consistency),
            n_key=key,
        ),
        GateSpec(
            "chosen_on_task_rate",
            g.chosen_on_task,
            ">=",
            "fraction of chosen responses",
            "share of the chosen responses (on_task measured) that address the user's request (on_task >= 0.5)",
            min_n=rate_min_n_for(config, g.chosen_on_task),
            n_key=key,
        ),
        GateSpec(
            "rejected_inconsistency_rate",
            g.rejected_inconsistency,
            ">=",
            "fraction of rejected responses",
            "share of the rejected responses written that the scorer finds inconsistent (each gets up to "
            f"data.contrast_best_of = {config.data.contrast_best_of} tries; the first inconsistent one is kept)",
            min_n=rate_min_n_for(config, g.rejected_inconsistency),
            n_key=key,
        ),
    ]
    measured: dict[str, Measurement | None] = {
        "chosen_consistency_rate": _rate(k, n),
        "chosen_on_task_rate": _rate(k_ot, n_ot),
        "rejected_inconsistency_rate": _rate(kr, nr),
    }
    diagnosis, steps = [], []
    for t in spec.trait_ids:
        per = cov.get(t, {})
        specs.append(GateSpec(f"prompts[{t}]", g.min_prompts_per_trait, ">=", "prompts", f"prompts targeting {t}"))
        measured[f"prompts[{t}]"] = Measurement(float(sum(per.values())))
        specs.append(
            GateSpec(f"contexts[{t}]", g.min_contexts_per_trait, ">=", "contexts", f"contexts in which {t} is targeted")
        )
        measured[f"contexts[{t}]"] = Measurement(float(len(per)))
        specs.append(
            GateSpec(
                f"violated_pairs[{t}]",
                g.min_pairs_per_violated_trait,
                ">=",
                "pairs",
                f"pairs whose rejected response violates {t}",
            )
        )
        measured[f"violated_pairs[{t}]"] = Measurement(float(stats["violated_pairs"].get(t, 0)))
    results = check_gates(specs, measured)
    for r in results:
        if r.passed:
            continue
        if r.inconclusive:
            diagnosis.append(f"{r.metric}: {r.note}")
            steps.append(
                f"more prompts ({key}), a higher data.best_of or a stronger teacher raise the number of kept prompts"
            )
            if r.meets_threshold():
                continue
        if r.metric == "chosen_on_task_rate":
            diagnosis.append(
                f"{k_ot}/{n_ot} chosen responses address the user's request; {stats.get('off_task_only', 0)} prompts had only "
                "off-task consistent candidates (in-voice babble)"
            )
            steps.append(
                "use a stronger teacher (data.teacher), turn off data.focus_targets if the trait reminders pull the teacher off the "
                "question, or raise data.best_of"
            )
        elif r.metric == "chosen_consistency_rate":
            diagnosis.append(
                f"{k}/{n} chosen responses are consistent: only {yield_k}/{yield_n} prompts got a consistent teacher response (best of {config.data.best_of})"
            )
            steps.append(
                "use a stronger teacher (data.teacher.backend=openai with a larger model), raise data.best_of, or check that the persona's style targets (words range, formality) are reachable"
            )
        elif r.metric == "rejected_inconsistency_rate":
            kinds = ", ".join(f"{kk}: {v['inconsistent']}/{v['n']}" for kk, v in stats["by_kind"].items())
            diagnosis.append(
                f"too many rejected responses are consistent with the persona (inconsistent per kind: {kinds})"
            )
            steps.append(
                "raise data.contrast_best_of, use a stronger teacher (data.teacher) that can write the contradiction, drop the "
                "kind that fails from data.contrast, or make the persona's traits more distinctive so contrast responses differ"
            )
        elif r.metric.startswith("violated_pairs["):
            diagnosis.append(
                f"trait {r.metric[15:-1]} is the violated trait of only {int(r.value or 0)} pairs "
                f"(teacher yield {yield_k}/{yield_n} prompts with a consistent best-of-{config.data.best_of} candidate)"
            )
            steps.append(
                "more prompts (data.max_prompts), a higher data.best_of or a stronger teacher raise the number of kept prompts"
            )
            steps.append(
                f"give trait {r.metric[15:-1]} an explicit `inverse` description and sharper negative exemplars, or add prompts that target it"
            )
        else:
            diagnosis.append(f"{r.metric} = {r.value} below {r.threshold}")
            steps.append("add prompts (more contexts, a larger data.max_prompts) or raise data.targets_per_prompt")
    info = (
        f"teacher yield: {yield_k}/{yield_n} prompts had a consistent, on-task best-of-{config.data.best_of} candidate (only those are kept; "
        f"{stats.get('off_task_only', 0)} more had only off-task consistent ones)"
    )
    tries = stats.get("contrast_tries")
    lines = [info]
    if tries:
        first = ", ".join(f"{kk}: {v[0]}/{v[1]}" for kk, v in tries.items())
        used = sum(v[2] for v in tries.values())
        lines.append(
            f"contrast yield: inconsistent on the first try {first}; {used} contrast responses sampled for "
            f"{sum(v[1] for v in tries.values())} jobs (up to {config.data.contrast_best_of} tries each)"
        )
    return GateReport(STAGE, results, diagnosis=[*lines, *diagnosis], next_steps=list(dict.fromkeys(steps)))


def _rate(k: int, n: int) -> Measurement | None:
    """k of n as a Measurement with its Wilson 95% interval; None when n is 0 (the gate then fails: not measured)."""
    from personatune.scoring.aggregate import wilson_ci

    return Measurement(k / n, n=n, ci=wilson_ci(k, n)) if n else None


def dataset_card(
    spec: PersonaSpec, scenarios: list[Scenario], sft: list[dict], pairs: list[dict], gate: GateReport
) -> str:
    cov = coverage(scenarios, spec.trait_ids)
    ctxs = sorted({s.context for s in scenarios})
    lines = [
        f"# Consistency data for {spec.name}",
        "",
        "Made by personatune stage 3. Load with",
        "`datasets.load_dataset('json', data_files='train/pairs.jsonl')`.",
        "",
        f"- scenarios: {len(scenarios)} ({sum(s.split == 'heldout' for s in scenarios)} held out)",
        f"- sft rows (train / held-out): {sum(r['split'] == 'train' for r in sft)} / {sum(r['split'] == 'heldout' for r in sft)}",
        f"- pairs (train / held-out): {sum(r['split'] == 'train' for r in pairs)} / {sum(r['split'] == 'heldout' for r in pairs)}",
        "",
        "## Coverage (prompts targeting each trait, per context)",
        "",
        "| trait | " + " | ".join(ctxs) + " | total |",
        "|---|" + "---|" * (len(ctxs) + 1),
    ]
    for t in spec.trait_ids:
        row = [str(cov.get(t, {}).get(c, 0)) for c in ctxs]
        lines.append(f"| {t} | " + " | ".join(row) + f" | {sum(cov.get(t, {}).values())} |")
    yields = [d for d in gate.diagnosis if d.startswith(("teacher yield", "contrast yield"))]
    if yields:
        lines += ["", "## Yield", ""] + [f"- {d}" for d in yields]
    lines += ["", "## Gate", "", "```", gate.summary(), "```", ""]
    return "\n".join(lines)
