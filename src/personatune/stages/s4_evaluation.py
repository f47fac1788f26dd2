"""Stage 4 — persona evaluation: fit the evaluator, validate it, and measure adherence and style.

1. Fit per-trait detectors on the TRAINING split of the stage-3 data: chosen responses express their
   targeted traits; trait-flipped rejected responses violate their flipped trait (`flip_took`); the persona's own
   exemplars are added (positive = expressed, negative = violated). The fitted scorer is written to
   `04_evaluation/evaluator/` (safetensors + JSON).
2. Validate on the HELD-OUT split (never used for fitting or training):
   - per-trait detector AUROC of traits[t]: held-out chosen responses targeting t (label 1) against
     held-out trait-flipped responses for t (label 0) — those whose flip took and that answer the request,
     the same labelling rule as for fitting (`flip_took`: a flipped response the stage-3 scorer found
     consistent, or one that is off task, is no example of t violated);
   - trait adherence of held-out chosen responses, overall and per context;
   - their style variance across contexts.
   The answers behind each AUROC are written out to read (`detector_errors.md`: per trait the chosen answers
   scored lowest and the trait-flipped ones scored highest).
3. Record the baseline model's persona metrics on the held-out prompts, with no system prompt: the
   "before" numbers that stage 7 compares against. The baseline's responses are kept in
   `baseline_samples.json`, with the settings that produced them in `baseline_sampling.json`
   (personatune.baseline_samples), so stages 5-7 reuse them only while those settings hold.
"""

from __future__ import annotations

from typing import Any

from personatune.baseline_samples import sample_baseline, write_baseline_samples
from personatune.config import RunConfig
from personatune.config_args import MAX_HELDOUT_FRACTION
from personatune.consistency_pairs import ON_TASK_LINE
from personatune.evidence import heldout_key, rate_min_n_for
from personatune.gates import GateReport, GateSpec, Measurement, check_gates
from personatune.persona import PersonaSpec, load_persona
from personatune.records import EvaluationReport, write_record
from personatune.rundir import RunDir, atomic_write_text
from personatune.scoring.aggregate import auroc, auroc_ci
from personatune.stage import StageResult
from personatune.stage3_rows import SFT_NEEDS, STAGE3_FIX, read_stage3

STAGE = "04_evaluation"


def auroc_advice(t: str, a: dict) -> tuple[list[str], list[str]]:
    """The diagnosis and the fixes for trait t's failed held-out AUROC `a` (auroc, n_pos, n_neg, ci)."""
    if a["auroc"] is None:
        why = f"trait {t}: no held-out examples of both classes ({a['n_pos']} expressed, {a['n_neg']} trait-flipped)"
        return [why], ["raise data.heldout_fraction or the number of prompts so every trait has held-out contrast"]
    ci = f", 95% CI {a['ci'][0]:.2f}-{a['ci'][1]:.2f}" if a.get("ci") else ""
    steps = []
    if min(a["n_pos"], a["n_neg"]) < 10:  # one swapped pair moves AUROC by 1/(n_pos*n_neg): mostly noise
        steps.append(
            "raise data.max_prompts or data.heldout_fraction: with fewer than 10 held-out responses per side the AUROC is noisy"
        )
    steps.append(
        f"read {t}'s hardest answers in 04_evaluation/detector_errors.md: flips that say nothing about {t} mean the teacher "
        "cannot write its contradiction (use a stronger data.teacher, e.g. backend=openai; docs/benchmarks.md measured this "
        f"for SmolLM2-135M); detector errors: give {t} sharper exemplars or an explicit `inverse`, or add a judge (scorer.judge.backend=openai)"
    )
    return [f"trait {t}: detector AUROC {a['auroc']:.3f} on {a['n_pos']}+{a['n_neg']} held-out responses{ci}"], steps


def flip_took(pair: dict) -> bool:
    """Whether a stage-3 pair's rejected answer is an example of its flipped trait being violated: a trait-flipped
    answer the stage-3 scorer found inconsistent (the flip took) AND on task (`rejected_on_task` >= ON_TASK_LINE,
    recorded by stage 3 or measured by `with_flip_on_task`).

    Why on task: the chosen side is on task by construction, and METRICS.md's flipped answer is an answer to the
    request that contradicts the trait. Stage 3 keeps the first inconsistent try, which favours text that answers
    nothing ("No, no sir, no sir, …" to a question about a free day; "Here's your mission completed." to "Stop
    being so cheerful"): on the main job's data 24 % of the held-out flips (benchmarks/experiments/s4_on_task.py).
    Such an answer contradicts no trait; as a negative it made the detector AUROC measure the teacher's failures.
    """
    return inconsistent_flip(pair) and not off_task_flip(pair)


def inconsistent_flip(pair: dict) -> bool:
    """A trait-flipped answer with its trait named that the stage-3 scorer found inconsistent (the flip took)."""
    return (
        pair.get("rejected_kind") == "trait_flipped"
        and bool(pair.get("flipped_trait"))
        and not pair.get("rejected_consistent", False)
    )


def off_task_flip(pair: dict) -> bool:
    """A flip that took but does not answer the request (`rejected_on_task` measured and below ON_TASK_LINE)."""
    ot = pair.get("rejected_on_task")
    return inconsistent_flip(pair) and ot is not None and ot < ON_TASK_LINE


def with_flip_on_task(spec: PersonaSpec, *pair_lists: list[dict]) -> list[list[dict]]:
    """The pair lists, each trait-flipped pair carrying `rejected_on_task`: stage 3 records it; for a run written
    before it did, it is measured here with a persona-only scorer's `on_task` (the frozen relevance to the prompt
    times the repetition factor, the measure stage 3 uses; it does not depend on the trait detectors)."""
    from personatune.scoring.factory import build_scorer

    todo = [
        (k, i)
        for k, ps in enumerate(pair_lists)
        for i, p in enumerate(ps)
        if p.get("rejected_kind") == "trait_flipped" and "rejected_on_task" not in p
    ]
    out = [list(ps) for ps in pair_lists]
    if todo:
        vals = build_scorer(spec).on_task(
            [pair_lists[k][i]["rejected"][-1]["content"] for k, i in todo],
            [pair_lists[k][i]["prompt"] for k, i in todo],
        )
        for (k, i), v in zip(todo, vals):
            out[k][i] = {**pair_lists[k][i], "rejected_on_task": v}
    return out


def labelled_examples(spec: PersonaSpec, sft: list[dict], pairs: list[dict]) -> list[dict[str, str]]:
    """Training examples for the detectors: {text, trait, label in expressed|violated|neutral}."""
    ex: list[dict[str, str]] = []
    for t in spec.traits:
        ex += [{"text": p, "trait": t.id, "label": "expressed"} for p in t.positive]
        ex += [{"text": n, "trait": t.id, "label": "violated"} for n in t.negative]
    for r in sft:
        text = r["messages"][-1]["content"]
        ex += [{"text": text, "trait": t, "label": "expressed"} for t in r.get("targets", [])]
    for p in pairs:
        if flip_took(p):
            ex.append({"text": p["rejected"][-1]["content"], "trait": p["flipped_trait"], "label": "violated"})
        elif p.get("rejected_kind") == "baseline":
            ex += [{"text": p["rejected"][-1]["content"], "trait": t, "label": "neutral"} for t in p.get("targets", [])]
    return ex


def auroc_examples(sft: list[dict], pairs: list[dict]) -> tuple[list[str], list[str], list[int]]:
    """(texts, trait of each, label) for the detector AUROC: chosen responses once per targeted trait (label 1),
    trait-flipped responses for their flipped trait (label 0).

    Trait-flipped responses whose flip did not take, or that are off task, are left out, as in fitting (`flip_took`).
    """
    texts, trait_of, labels = [], [], []
    for r in sft:
        for t in r.get("targets", []):
            texts.append(r["messages"][-1]["content"])
            trait_of.append(t)
            labels.append(1)
    for p in pairs:
        # The same labelling rule as for fitting (labelled_examples, flip_took).
        if flip_took(p):
            texts.append(p["rejected"][-1]["content"])
            trait_of.append(p["flipped_trait"])
            labels.append(0)
    return texts, trait_of, labels


def heldout_auroc(
    scorer: Any, spec: PersonaSpec, sft: list[dict], pairs: list[dict]
) -> tuple[dict[str, dict[str, Any]], list[tuple[str, int, float, str]]]:
    """Per trait: AUROC of traits[t] on held-out chosen (t targeted, label 1) vs trait-flipped for t (label 0),
    labelled by `auroc_examples`; and the scored examples, (trait, label, traits[trait], text) each."""
    texts, trait_of, labels = auroc_examples(sft, pairs)
    scores = scorer.score(texts) if texts else []
    rows = [(t, y, float(r.traits[t]), x) for t, y, r, x in zip(trait_of, labels, scores, texts)]
    out = {}
    for t in spec.trait_ids:
        s = [r[2] for r in rows if r[0] == t]
        y = [r[1] for r in rows if r[0] == t]
        ci = auroc_ci(s, y)
        out[t] = {
            "auroc": auroc(s, y),
            "ci": list(ci) if ci else None,
            "n_pos": int(sum(y)),
            "n_neg": int(len(y) - sum(y)),
            "n_off_task": sum(off_task_flip(p) and p["flipped_trait"] == t for p in pairs),
        }
    return out, rows


ERRORS_SHOWN = 5
"""Answers per side and trait in `detector_errors.md`."""


def detector_errors(
    rows: list[tuple[str, int, float, str]], aucs: dict[str, dict[str, Any]], k: int = ERRORS_SHOWN
) -> str:
    """`04_evaluation/detector_errors.md`: per trait, the k held-out chosen answers the evaluator scores lowest for it
    and the k trait-flipped answers it scores highest — the answers behind a low auroc[t], to read before trusting
    or fixing that gate."""
    lines = [
        "# Stage 4: the detector's hardest held-out answers",
        "",
        f"Per trait, the {k} held-out chosen answers that target it with the lowest traits[t] (they should express it) "
        f"and the {k} trait-flipped answers for it with the highest (they should contradict it). A flipped answer that "
        "still holds the trait is a flip the teacher did not make (a label error: a stronger teacher, "
        "`data.teacher.backend=openai`, helps); a chosen answer that is in persona but scored low, or a short or odd "
        "answer scored high, is the detector's error (sharper exemplars for the trait, or a judge, "
        "`scorer.judge.backend=openai`, helps).",
        "",
    ]
    for t, a in aucs.items():
        head = f"AUROC {a['auroc']:.3f}" if a["auroc"] is not None else "AUROC not measured"
        off = f"; {a['n_off_task']} off-task flips left out" if a.get("n_off_task") else ""
        lines += [f"## {t}: {head} ({a['n_pos']} chosen, {a['n_neg']} trait-flipped{off})", ""]
        low = sorted((s, x) for tt, y, s, x in rows if tt == t and y == 1)[:k]
        high = sorted(((s, x) for tt, y, s, x in rows if tt == t and y == 0), reverse=True)[:k]
        for title, items in (("chosen, lowest first", low), ("trait-flipped, highest first", high)):
            lines.append(f"{title}:")
            lines += [f"- {s:.3f} {' '.join(x.split())[:300]}" for s, x in items] or ["- (none)"]
            lines.append("")
    return "\n".join(lines)


def heldout_size_hint(
    n_prompts: int,
    n_chosen: int,
    n_contexts: int,
    min_per_context: int,
    heldout_fraction: float,
    max_prompts: int | None,
) -> str | None:
    """How much larger the held-out split must be for `min_per_context` chosen responses per context, on average.

    At the held-out teacher yield y = n_chosen / n_prompts a context needs about ceil(min_per_context / y)
    held-out prompts; the factor over the current prompts per context scales data.heldout_fraction (capped
    at its maximum MAX_HELDOUT_FRACTION) or data.max_prompts. None when nothing can be said (no prompt or no chosen response).
    """
    import math

    if n_prompts <= 0 or n_chosen <= 0 or n_contexts <= 0:
        return None
    y = n_chosen / n_prompts
    need = math.ceil(min_per_context / y)
    now = n_prompts / n_contexts
    factor = need / now
    if factor <= 1:
        return None
    opts = []
    if heldout_fraction * factor <= MAX_HELDOUT_FRACTION:
        opts.append(f"data.heldout_fraction={heldout_fraction * factor:.2f}")
    if max_prompts is not None:
        opts.append(f"data.max_prompts={math.ceil(max_prompts * factor)}")
    how = " or ".join(opts) if opts else "more prompts (data.max_prompts) and a higher data.heldout_fraction"
    return (
        f"at the held-out teacher yield {y:.0%} ({n_chosen}/{n_prompts}), {min_per_context} chosen responses per context take about "
        f"{need} held-out prompts per context (now {now:.1f}): {factor:.1f}x as many, e.g. {how}"
    )


def evaluation_specs(config: RunConfig, trait_ids: list[str], contexts: list[str]) -> list[GateSpec]:
    """The stage-4 gate specs, with their minimum sample sizes (METRICS.md "Evidence").

    - auroc[t]: n = min(held-out expressed, held-out trait-flipped) responses for t; at least
      gates.evaluation.min_auroc_per_side (30) per side.
    - adherence, adherence[context]: n = (response, trait) pairs; at least `rate_min_n(threshold)` (97 at 0.90).
    - style_variance: n = responses in qualifying context groups; at least gates.evaluation.min_style_variance_n (30).
    Every minimum is bought with more held-out prompts (`heldout_key`).
    """
    g, key = config.gates.evaluation, heldout_key(config)
    pairs = "fraction of (response, trait) pairs"
    specs = [
        GateSpec(
            f"auroc[{t}]",
            g.min_auroc,
            ">=",
            "AUROC",
            f"held-out detector AUROC for {t} on labels stage 3's scorer chose; n = responses on the smaller side",
            min_n=g.min_auroc_per_side,
            n_key=key,
        )
        for t in trait_ids
    ]
    specs.append(
        GateSpec(
            "adherence",
            g.adherence,
            ">=",
            pairs,
            "adherence of held-out chosen responses; n = pairs",
            min_n=rate_min_n_for(config, g.adherence),
            n_key=key,
        )
    )
    specs += [
        GateSpec(
            f"adherence[{c}]",
            g.adherence,
            ">=",
            pairs,
            f"adherence in context {c}; n = pairs",
            min_n=rate_min_n_for(config, g.adherence),
            n_key=key,
        )
        for c in contexts
    ]
    specs.append(
        GateSpec(
            "style_variance",
            g.max_style_variance,
            "<",
            "relative std across contexts",
            "style variance of held-out chosen responses; n = responses in qualifying context groups",
            min_n=g.min_style_variance_n,
            n_key=key,
        )
    )
    return specs


def auroc_measurement(a: dict[str, Any]) -> Measurement | None:
    """A trait's AUROC as a gate Measurement whose n is the smaller side (the minimum is per side), or None."""
    if a["auroc"] is None:
        return None
    return Measurement(a["auroc"], n=min(a["n_pos"], a["n_neg"]), ci=tuple(a["ci"]) if a["ci"] else None)


def run(config: RunConfig, run_dir: RunDir) -> StageResult:
    """Fit the evaluator on the training split; gate on the held-out split."""
    from personatune.scoring.aggregate import consistency_rate, on_task_rate, style_variance, trait_adherence
    from personatune.scoring.factory import scorer_for_run

    out = run_dir.stage_dir(STAGE)
    spec = load_persona(run_dir.output_path("02_persona", "persona"))
    train, held = (
        run_dir.output_path("03_consistency_data", "train"),
        run_dir.output_path("03_consistency_data", "heldout"),
    )
    tr_sft, ho_sft = (read_stage3(d / "sft.jsonl", "sft", STAGE3_FIX, spec.trait_ids, SFT_NEEDS) for d in (train, held))
    tr_pairs, ho_pairs = with_flip_on_task(
        spec, *(read_stage3(d / "pairs.jsonl", "pairs", STAGE3_FIX, spec.trait_ids) for d in (train, held))
    )
    scorer, _ = scorer_for_run(
        config, run_dir, spec, use_evaluator=False, examples=labelled_examples(spec, tr_sft, tr_pairs)
    )
    scorer.save(out / "evaluator")

    aucs, auc_rows = heldout_auroc(scorer, spec, ho_sft, ho_pairs)
    atomic_write_text(out / "detector_errors.md", detector_errors(auc_rows, aucs))
    records = scorer.score(
        [r["messages"][-1]["content"] for r in ho_sft],
        prompts=[r["messages"][:-1] for r in ho_sft],
        contexts=[r["context"] for r in ho_sft],
        targets=[r["targets"] for r in ho_sft],
        ids=[r["scenario_id"] for r in ho_sft],
    )
    adh = trait_adherence(records)
    sv = style_variance(records, min_per_context=config.eval.min_per_context)
    cons = consistency_rate(records)

    specs = evaluation_specs(config, spec.trait_ids, sorted(adh.per_context))
    measured: dict[str, Measurement | None] = {f"auroc[{t}]": auroc_measurement(a) for t, a in aucs.items()}
    measured["adherence"] = adh.overall
    measured.update({f"adherence[{ctx}]": m for ctx, m in adh.per_context.items()})
    measured["style_variance"] = sv.measurement()
    results = check_gates(specs, measured)
    diagnosis, steps = [], []
    for r in results:
        if r.passed:
            continue
        if r.inconclusive:
            diagnosis.append(f"{r.metric}: {r.note}")
            steps.append(f"hold out more prompts ({heldout_key(config)})")
            if r.meets_threshold():
                continue
        if r.metric.startswith("auroc["):
            why, fixes = auroc_advice(r.metric[6:-1], aucs[r.metric[6:-1]])
            diagnosis += why
            steps += fixes
        elif r.metric.startswith("adherence["):
            diagnosis.append(f"context {r.metric[10:-1]} drifts: adherence {r.value:.3f}")
            steps.append(f"add persona example interactions in context {r.metric[10:-1]}, or raise data.best_of")
        elif r.metric == "adherence" and not records:
            diagnosis.append("no held-out chosen responses: the teacher kept no held-out prompt")
            steps.append("improve the teacher (data.teacher), or raise data.max_prompts or data.heldout_fraction")
        elif r.metric == "adherence":
            worst = sorted(adh.per_trait.items(), key=lambda kv: kv[1].value)[:2]
            diagnosis.append("lowest traits: " + ", ".join(f"{t} {m.value:.2f}" for t, m in worst))
            steps.append("improve the teacher (data.teacher) or those traits' exemplars")
        elif sv.value is None:
            diagnosis.append(f"style variance not measured: {sv.note}")
            ho_prompts = (
                read_stage3(held / "prompts.jsonl", "prompts", STAGE3_FIX) if (held / "prompts.jsonl").exists() else []
            )
            hint = heldout_size_hint(
                len(ho_prompts),
                len(ho_sft),
                len({q["context"] for q in ho_prompts}),
                config.eval.min_per_context,
                config.data.heldout_fraction,
                config.data.max_prompts,
            )
            steps.append(
                hint
                or "raise data.max_prompts or data.heldout_fraction so contexts have enough held-out chosen responses"
            )
        else:
            top = ", ".join(sorted(sv.per_feature, key=sv.per_feature.get, reverse=True)[:3])
            diagnosis.append(
                f"style variance {sv.value:.3f} on {sv.n} held-out chosen responses (features that vary most: {top})"
            )
            steps.append(
                "tighten the persona's style (words range, signature phrases) so the voice holds across contexts"
            )
    gate = GateReport(STAGE, results, diagnosis=diagnosis, next_steps=list(dict.fromkeys(steps)))

    report = {
        "auroc": aucs,
        "adherence": {
            "overall": adh.overall.__dict__,
            "per_trait": {k: v.__dict__ for k, v in adh.per_trait.items()},
            "per_context": {k: v.__dict__ for k, v in adh.per_context.items()},
        },
        "style_variance": sv.value,
        "consistency_rate": cons.__dict__,
        "on_task_rate": getattr(on_task_rate(records), "__dict__", None),
        "n_heldout": len(records),
        "n_train_examples": len(labelled_examples(spec, tr_sft, tr_pairs)),
    }
    report["baseline_persona"] = baseline_persona_metrics(
        config, run_dir, scorer, min_per_context=config.eval.min_per_context
    )
    # Checked against the record the report reads (personatune.records), so a format change fails here, not there.
    write_record(out / "report.json", EvaluationReport, report)
    table = ["| context | adherence | n |", "|---|---|---|"] + [
        f"| {c} | {m.value:.3f} | {m.n} |" for c, m in sorted(adh.per_context.items())
    ]
    atomic_write_text(out / "per_context.md", "\n".join(table) + "\n")
    return StageResult(
        outputs={
            "evaluator": out / "evaluator",
            "report": out / "report.json",
            "detector_errors": out / "detector_errors.md",
        },
        gate=gate,
        metrics={"adherence": adh.overall.value, "style_variance": sv.value},
        message=f"evaluator fitted; held-out adherence {adh.overall.value:.3f}, style variance "
        + (f"{sv.value:.3f}" if sv.value is not None else "not measured"),
    )


def baseline_persona_metrics(config: RunConfig, run_dir: RunDir, scorer: Any, min_per_context: int) -> dict[str, Any]:
    """The baseline model's persona metrics and on-task rate on held-out prompts, no system prompt (the 'before' of stages 5-7)."""
    from personatune.scoring.aggregate import consistency_rate, on_task_rate, style_variance, trait_adherence

    prompts = read_stage3(
        run_dir.output_path("03_consistency_data", "heldout") / "prompts.jsonl", "prompts", STAGE3_FIX
    )
    texts = sample_baseline(config, run_dir, prompts)
    recs = scorer.score(
        texts,
        prompts=[p["messages"] for p in prompts],
        contexts=[p["context"] for p in prompts],
        targets=[p["targets"] for p in prompts],
        ids=[p["id"] for p in prompts],
    )
    # The samples and their fingerprint: stages 5-7 reuse them when the fingerprint still matches the config.
    write_baseline_samples(config, run_dir, prompts, texts)
    sv = style_variance(recs, min_per_context=min_per_context)
    return {
        "consistency_rate": consistency_rate(recs).__dict__,
        "adherence": trait_adherence(recs).overall.__dict__,
        "style_variance": sv.value,
        "on_task_rate": getattr(on_task_rate(recs), "__dict__", None),
        "n": len(recs),
    }
