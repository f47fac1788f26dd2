"""Stage 3 — consistency data: scenarios, in-persona responses, contrasting inconsistent ones.

Steps:
1. Scenarios from the built-in prompt bank (personatune.scenarios): six contexts, each prompt with
   the traits it targets, near-duplicates dropped, a held-out split kept apart for stages 4-7.
2. The teacher writes `best_of` in-persona candidates per prompt (persona rendered as a system
   prompt, its example interactions as few-shot turns). The scorer scores them with their prompts; a
   candidate is eligible as chosen only when it is consistent AND on task (`eligible`: on_task >= 0.5, so
   in-voice babble that ignores the request never becomes chosen); a prompt is kept only if a candidate is
   eligible, and among its eligible candidates the chosen one is, by default, the one nearest the teacher's
   typical voice (`data.select`, see `typical_voice`), else the most consistent.
3. Contrast ("rejected"), each labelled with what it violates:
   (a) baseline: the model with no persona prompt — what training must move away from;
   (b) trait_flipped: the persona with one targeted trait inverted — a targeted negative;
   (c) style_broken: the persona's content in the opposite voice.
4. Output in TRL's formats: `sft` (messages) and `pairs` (prompt / chosen / rejected, conversational),
   with metadata columns, a dataset card, and the gate of METRICS.md.

Generation is resumable: every finished chunk is appended to `generations.jsonl`, keyed by a hash of
the conversation and sampling parameters, so an interrupted run does not start over.

The selection of chosen responses and the pair rows are personatune.consistency_pairs, the resumable generation
personatune.generation.resumable; their names are re-exported here.
"""

from __future__ import annotations

from typing import Any

from personatune.config import RunConfig

# Re-exported: benchmarks and tests reach stage 3's building blocks through this module.
from personatune.consistency_pairs import (  # noqa: F401
    ON_TASK_LINE,
    build_pairs,
    choose_candidate,
    eligible,
    on_task,
    score_candidates,
    typical_voice,
    voice_distance,
)
from personatune.errors import DataError
from personatune.evidence import prompts_key, rate_min_n_for
from personatune.gates import GateReport, GateSpec, Measurement, check_gates
from personatune.generation.resumable import _job_key, _load_generations, generate_resumable  # noqa: F401
from personatune.persona import PersonaSpec, load_persona
from personatune.persona_prompt import persona_conversation
from personatune.rundir import RunDir, atomic_write_jsonl, atomic_write_text
from personatune.scenarios import (
    CONTEXT_DESCRIPTIONS,
    Scenario,
    build_scenarios,
    coverage,
    expanded_scenarios,
    expansion_request,
)
from personatune.stage import StageResult
from personatune.stages.s1_baseline import baseline_model_path

STAGE = "03_consistency_data"


# --- backends ------------------------------------------------------------------------------------
def make_teacher(config: RunConfig, run_dir: RunDir) -> tuple[Any, Any]:
    """(teacher backend, baseline backend). The baseline is always the in-process baseline model."""
    import torch

    from personatune import models
    from personatune.generation.hf import HFBackend

    t = config.data.teacher
    model, tok = models.load_configured_model(baseline_model_path(run_dir), config.model)
    if config.threads:
        torch.set_num_threads(config.threads)
    # The weights stay frozen for the whole stage: keep prefix KV caches (persona prompt + few-shot turns) between calls.
    base = HFBackend(model, tok, batch_size=t.batch_size, prefix_cache=PREFIX_CACHES)
    if t.backend == "openai":
        from personatune.generation.cache import ResponseCache
        from personatune.generation.openai_compat import OpenAIBackend

        if not t.base_url or not t.model:
            raise DataError("data.teacher.backend=openai needs data.teacher.base_url and data.teacher.model; set both (e.g. base_url=http://127.0.0.1:8000/v1)")
        teacher = OpenAIBackend(t.base_url, t.model, api_key_env=t.api_key_env, concurrency=t.concurrency, max_retries=t.max_retries,
                                cache=ResponseCache(run_dir.stage_dir(STAGE) / "openai_cache"))
        return teacher, base
    if t.model and t.model != config.model.name:
        tm, tt = models.load_configured_model(t.model, config.model)
        return HFBackend(tm, tt, batch_size=t.batch_size, prefix_cache=PREFIX_CACHES), base
    return base, base


PREFIX_CACHES = 4
"""Prefix KV caches an HF teacher keeps between calls: the shared persona part and the current context (benchmarks/bench_teacher.py)."""


def contrast_jobs(spec: PersonaSpec, scenarios: list[Scenario], config: RunConfig
                  ) -> tuple[list[tuple[list[dict[str, str]], dict[str, Any]]], list[tuple[str, str, str | None]]]:
    """The contrast jobs of data.contrast for these scenarios, one response each: (jobs, per job (scenario id, kind,
    flipped trait or None)). baseline: the scenario alone (for the baseline model); trait_flipped: the persona with
    each targeted trait inverted; style_broken: the persona in the opposite voice."""
    d, t = config.data, config.data.teacher
    p = {"max_new_tokens": t.max_new_tokens, "temperature": t.temperature, "top_p": t.top_p, "seed": config.seed, "n": 1}
    jobs, meta = [], []
    for s in scenarios:
        if "baseline" in d.contrast:
            jobs.append(([dict(m) for m in s.messages], dict(p)))
            meta.append((s.id, "baseline", None))
        if "trait_flipped" in d.contrast:
            for tr in s.targets:
                jobs.append((persona_conversation(spec, s.messages, flip=tr), dict(p)))
                meta.append((s.id, "trait_flipped", tr))
        if "style_broken" in d.contrast:
            jobs.append((persona_conversation(spec, s.messages, break_style=True), dict(p)))
            meta.append((s.id, "style_broken", None))
    return jobs, meta


def teacher_jobs(spec: PersonaSpec, scenarios: list[Scenario], config: RunConfig) -> list[tuple[list[dict[str, str]], dict[str, Any]]]:
    """The teacher's best-of jobs: per scenario, the persona conversation (system prompt, few-shot turns when
    data.few_shot, trait reminders when data.focus_targets) and the sampling parameters with n = data.best_of."""
    d, t = config.data, config.data.teacher
    p = {"max_new_tokens": t.max_new_tokens, "temperature": t.temperature, "top_p": t.top_p, "seed": config.seed, "n": d.best_of}
    return [(persona_conversation(spec, s.messages, few_shot=d.few_shot, focus=s.targets if d.focus_targets else None), dict(p))
            for s in scenarios]


# --- the stage -----------------------------------------------------------------------------------
def cap_scenarios(scenarios: list[Scenario], n: int | None) -> list[Scenario]:
    """At most n scenarios, taken round-robin over contexts so every context stays represented."""
    if n is None or n >= len(scenarios):
        return scenarios
    by: dict[str, list[Scenario]] = {}
    for s in scenarios:
        by.setdefault(s.context, []).append(s)
    out: list[Scenario] = []
    while len(out) < n:
        for ctx in list(by):
            if by[ctx] and len(out) < n:
                out.append(by[ctx].pop(0))
    return out


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
        GateSpec("chosen_consistency_rate", g.chosen_consistency, ">=", "fraction of chosen responses",
                 "share of the dataset's chosen responses the scorer finds consistent (best-of-k keeps a prompt only when its best candidate is consistent)",
                 min_n=rate_min_n_for(config, g.chosen_consistency), n_key=key),
        GateSpec("chosen_on_task_rate", g.chosen_on_task, ">=", "fraction of chosen responses",
                 "share of the chosen responses (on_task measured) that address the user's request (on_task >= 0.5)",
                 min_n=rate_min_n_for(config, g.chosen_on_task), n_key=key),
        GateSpec("rejected_inconsistency_rate", g.rejected_inconsistency, ">=", "fraction of rejected responses", "share of rejected responses the scorer finds inconsistent",
                 min_n=rate_min_n_for(config, g.rejected_inconsistency), n_key=key),
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
        specs.append(GateSpec(f"contexts[{t}]", g.min_contexts_per_trait, ">=", "contexts", f"contexts in which {t} is targeted"))
        measured[f"contexts[{t}]"] = Measurement(float(len(per)))
        specs.append(GateSpec(f"violated_pairs[{t}]", g.min_pairs_per_violated_trait, ">=", "pairs", f"pairs whose rejected response violates {t}"))
        measured[f"violated_pairs[{t}]"] = Measurement(float(stats["violated_pairs"].get(t, 0)))
    results = check_gates(specs, measured)
    for r in results:
        if r.passed:
            continue
        if r.inconclusive:
            diagnosis.append(f"{r.metric}: {r.note}")
            steps.append(f"more prompts ({key}), a higher data.best_of or a stronger teacher raise the number of kept prompts")
            if r.meets_threshold():
                continue
        if r.metric == "chosen_on_task_rate":
            diagnosis.append(f"{k_ot}/{n_ot} chosen responses address the user's request; {stats.get('off_task_only', 0)} prompts had only "
                             "off-task consistent candidates (in-voice babble)")
            steps.append("use a stronger teacher (data.teacher), turn off data.focus_targets if the trait reminders pull the teacher off the "
                         "question, or raise data.best_of")
        elif r.metric == "chosen_consistency_rate":
            diagnosis.append(f"{k}/{n} chosen responses are consistent: only {yield_k}/{yield_n} prompts got a consistent teacher response (best of {config.data.best_of})")
            steps.append("use a stronger teacher (data.teacher.backend=openai with a larger model), raise data.best_of, or check that the persona's style targets (words range, formality) are reachable")
        elif r.metric == "rejected_inconsistency_rate":
            kinds = ", ".join(f"{kk}: {v['inconsistent']}/{v['n']}" for kk, v in stats["by_kind"].items())
            diagnosis.append(f"too many rejected responses are consistent with the persona (inconsistent per kind: {kinds})")
            steps.append("drop the kind that fails from data.contrast, or make the persona's traits more distinctive so contrast responses differ")
        elif r.metric.startswith("violated_pairs["):
            diagnosis.append(f"trait {r.metric[15:-1]} is the violated trait of only {int(r.value or 0)} pairs "
                             f"(teacher yield {yield_k}/{yield_n} prompts with a consistent best-of-{config.data.best_of} candidate)")
            steps.append("more prompts (data.max_prompts), a higher data.best_of or a stronger teacher raise the number of kept prompts")
            steps.append(f"give trait {r.metric[15:-1]} an explicit `inverse` description and sharper negative exemplars, or add prompts that target it")
        else:
            diagnosis.append(f"{r.metric} = {r.value} below {r.threshold}")
            steps.append("add prompts (more contexts, a larger data.max_prompts) or raise data.targets_per_prompt")
    info = (f"teacher yield: {yield_k}/{yield_n} prompts had a consistent, on-task best-of-{config.data.best_of} candidate (only those are kept; "
            f"{stats.get('off_task_only', 0)} more had only off-task consistent ones)")
    return GateReport(STAGE, results, diagnosis=[info, *diagnosis], next_steps=list(dict.fromkeys(steps)))


def _rate(k: int, n: int) -> Measurement | None:
    """k of n as a Measurement with its Wilson 95% interval; None when n is 0 (the gate then fails: not measured)."""
    from personatune.scoring.aggregate import wilson_ci

    return Measurement(k / n, n=n, ci=wilson_ci(k, n)) if n else None


def dataset_card(spec: PersonaSpec, scenarios: list[Scenario], sft: list[dict], pairs: list[dict], gate: GateReport) -> str:
    cov = coverage(scenarios, spec.trait_ids)
    ctxs = sorted({s.context for s in scenarios})
    lines = [f"# Consistency data for {spec.name}", "", "Made by personatune stage 3. Load with",
             "`datasets.load_dataset('json', data_files='train/pairs.jsonl')`.", "",
             f"- scenarios: {len(scenarios)} ({sum(s.split == 'heldout' for s in scenarios)} held out)",
             f"- sft rows (train / held-out): {sum(r['split'] == 'train' for r in sft)} / {sum(r['split'] == 'heldout' for r in sft)}",
             f"- pairs (train / held-out): {sum(r['split'] == 'train' for r in pairs)} / {sum(r['split'] == 'heldout' for r in pairs)}", "",
             "## Coverage (prompts targeting each trait, per context)", "", "| trait | " + " | ".join(ctxs) + " | total |",
             "|---|" + "---|" * (len(ctxs) + 1)]
    for t in spec.trait_ids:
        row = [str(cov.get(t, {}).get(c, 0)) for c in ctxs]
        lines.append(f"| {t} | " + " | ".join(row) + f" | {sum(cov.get(t, {}).values())} |")
    lines += ["", "## Gate", "", "```", gate.summary(), "```", ""]
    return "\n".join(lines)


def run(config: RunConfig, run_dir: RunDir) -> StageResult:
    """Build the stage-3 dataset and check its gate."""
    from personatune.scoring.factory import scorer_for_run
    from personatune.scoring.instrument import Instrument

    out = run_dir.stage_dir(STAGE)
    spec = load_persona(run_dir.output_path("02_persona", "persona"))
    d = config.data
    # Near-duplicate prompts are found with plain MiniLM embeddings: the instrument's frozen ones, so the stage
    # loads MiniLM once (the scorer below shares the same instrument).
    embedder = Instrument.default()
    teacher, base = make_teacher(config, run_dir)
    t = d.teacher
    p = {"max_new_tokens": t.max_new_tokens, "temperature": t.temperature, "top_p": t.top_p, "seed": config.seed}
    echo = lambda m: (print(m, flush=True), run_dir.log(m.strip()))  # noqa: E731
    extra = []
    if d.expand_per_trait:
        # The teacher writes new prompts per (trait, context); resumable like every other generation.
        keys = [(tr, c) for tr in spec.trait_ids for c in d.contexts if c in CONTEXT_DESCRIPTIONS]
        ejobs = [(expansion_request(spec, tr, c, d.expand_per_trait), {**p, "max_new_tokens": 40 * d.expand_per_trait, "n": 1}) for tr, c in keys]
        echo(f"  expanding the prompt bank: {len(ejobs)} (trait, context) requests x {d.expand_per_trait} prompts")
        replies = generate_resumable(teacher, ejobs, out / "generations.jsonl", chunk=t.batch_size, echo=echo, label="prompt expansion")
        extra = expanded_scenarios(spec, {k: r[0] for k, r in zip(keys, replies)}, d.expand_per_trait)
    scenarios = cap_scenarios(build_scenarios(spec, embedder, contexts=tuple(d.contexts), targets_per_prompt=d.targets_per_prompt,
                                     heldout_fraction=d.heldout_fraction, max_similarity=d.max_prompt_similarity, seed=config.seed,
                                     extra=extra), d.max_prompts)
    if d.expand_per_trait:
        echo(f"  scenarios: {sum(s.source == 'teacher' for s in scenarios)} written by the teacher, {sum(s.source == 'bank' for s in scenarios)} from the bank")
    atomic_write_jsonl(out / "scenarios.jsonl", [s.to_dict() for s in scenarios])
    jobs = teacher_jobs(spec, scenarios, config)
    echo(f"  teacher: {len(scenarios)} prompts x {d.best_of} candidates")
    teacher_out = generate_resumable(teacher, jobs, out / "generations.jsonl", chunk=max(1, t.batch_size // max(1, d.best_of)), echo=echo,
                                     label="teacher")
    scorer, _ = scorer_for_run(config, run_dir, spec, use_evaluator=False)
    # Contrast is generated only for prompts that have an eligible (consistent, on-task) chosen response: the others yield no
    # pair, so their contrast would be wasted generation (about half of stage 3's time with a small teacher).
    echo(f"  scoring {sum(len(c) for c in teacher_out)} teacher candidates …")
    cand_scores = score_candidates(scenarios, teacher_out, scorer)
    kept = {s.id for s, cs in zip(scenarios, cand_scores) if any(eligible(r) for r in cs)}
    echo(f"  teacher yield: {len(kept)}/{len(scenarios)} prompts have a consistent, on-task candidate; contrast for those")
    cjobs, cmeta = contrast_jobs(spec, [s for s in scenarios if s.id in kept], config)
    # Baseline contrast comes from the baseline model itself; the other kinds from the teacher.
    base_idx = [i for i, m in enumerate(cmeta) if m[1] == "baseline"]
    other_idx = [i for i, m in enumerate(cmeta) if m[1] != "baseline"]
    couts: list[list[str]] = [[] for _ in cjobs]
    echo(f"  contrast: {len(base_idx)} baseline responses (baseline model), {len(other_idx)} trait-flipped / style-broken responses (teacher)")
    for idx, be, who in ((base_idx, base, "contrast (baseline model)"), (other_idx, teacher, "contrast (teacher)")):
        if idx:
            res = generate_resumable(be, [cjobs[i] for i in idx], out / "generations.jsonl", chunk=t.batch_size, echo=echo, label=who)
            for i, r in zip(idx, res):
                couts[i] = r
    contrast: dict[str, list[tuple[str, str | None, str]]] = {}
    for (sid, kind, flip), o in zip(cmeta, couts):
        contrast.setdefault(sid, []).append((kind, flip, o[0]))
    echo(f"  scoring {len(cjobs)} contrast responses and building pairs …")
    sft, pairs, stats = build_pairs(spec, scenarios, teacher_out, contrast, scorer, candidate_scores=cand_scores, select=d.select)
    gate = data_gate(spec, scenarios, stats, config)
    for split in ("train", "heldout"):
        atomic_write_jsonl(out / split / "sft.jsonl", [r for r in sft if r["split"] == split])
        atomic_write_jsonl(out / split / "pairs.jsonl", [r for r in pairs if r["split"] == split])
    atomic_write_jsonl(out / "heldout" / "prompts.jsonl", [s.to_dict() for s in scenarios if s.split == "heldout"])
    atomic_write_text(out / "README.md", dataset_card(spec, scenarios, sft, pairs, gate))
    return StageResult(
        outputs={"scenarios": out / "scenarios.jsonl", "train": out / "train", "heldout": out / "heldout", "card": out / "README.md"},
        gate=gate,
        metrics={"scenarios": stats["scenarios"], "chosen": stats["chosen_consistent"], "pairs": len(pairs), "chosen_on_task": stats["chosen_on_task"],
                 "chosen_on_task_measured": stats["chosen_on_task_measured"], "off_task_only": stats["off_task_only"]},
        message=f"{len(sft)} chosen of {stats['scenarios']} prompts, {len(pairs)} pairs",
    )
