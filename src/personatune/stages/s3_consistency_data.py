"""Stage 3 — consistency data: scenarios, in-persona responses, contrasting inconsistent ones.

Steps:
1. Scenarios from the built-in prompt bank (personatune.scenarios): six contexts, each prompt with
   the traits it targets, near-duplicates dropped, a held-out split kept apart for stages 4-7.
2. The teacher writes `best_of` in-persona candidates per prompt (persona rendered as a system
   prompt, its example interactions as few-shot turns). The scorer scores them with their prompts; a
   candidate is eligible as chosen only when it is consistent AND on task (`eligible`: on_task >= 0.5, so
   in-voice babble that ignores the request never becomes chosen); a prompt is kept only if a candidate is
   eligible, and among its eligible candidates the chosen one is, by default, one with the fewest traits that do
   not adhere and, among those, the one nearest the teacher's typical voice (`data.select`, see `choose_candidate`).
3. Contrast ("rejected"), each labelled with what it violates:
   (a) baseline: the model with no persona prompt — what training must move away from;
   (b) trait_flipped: the persona with one targeted trait inverted — a targeted negative;
   (c) style_broken: the persona's content in the opposite voice.
4. Output in TRL's formats: `sft` (messages) and `pairs` (prompt / chosen / rejected, conversational),
   with metadata columns, a dataset card, and the gate of METRICS.md.

Generation is resumable: every finished chunk is appended to `generations.jsonl`, keyed by a hash of
the conversation and sampling parameters, so an interrupted run does not start over.

The selection of chosen responses and the pair rows are personatune.consistency_pairs, the gate and the dataset
card personatune.consistency_gate, the resumable generation personatune.generation.resumable; their names are
re-exported here. This module holds the teacher, the generation jobs and `run`.
"""

from __future__ import annotations

import logging
from typing import Any

from personatune.config import RunConfig

# Re-exported (noqa: F401): benchmarks and tests reach stage 3's building blocks through this module.
from personatune.consistency_gate import STAGE, _rate, data_gate, dataset_card  # noqa: F401
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
from personatune.generation.resumable import _job_key, _load_generations, generate_resumable  # noqa: F401
from personatune.logs import logged_stage
from personatune.persona import PersonaSpec, load_persona
from personatune.persona_prompt import persona_conversation
from personatune.rundir import RunDir, atomic_write_jsonl, atomic_write_text
from personatune.scenarios import (
    CONTEXT_DESCRIPTIONS,
    Scenario,
    build_scenarios,
    expanded_scenarios,
    expansion_request,
)
from personatune.stage import StageResult
from personatune.stages.s1_baseline import baseline_model_path

log = logging.getLogger(__name__)


# --- backends ------------------------------------------------------------------------------------
def make_teacher(config: RunConfig, run_dir: RunDir) -> tuple[Any, Any]:
    """(teacher backend, baseline backend). The baseline is always the in-process baseline model."""
    import torch

    from personatune import models
    from personatune.generation.hf import HFBackend

    t = config.data.teacher
    # Sampling data, not measuring: bfloat16 where it is native (data.teacher.dtype; teacher step 1.45x, contrast step 1.48x on AMX).
    margs = config.model.model_copy(update={"dtype": models.sampling_dtype(t.dtype, config.model)})
    model, tok = models.load_configured_model(baseline_model_path(run_dir), margs)
    log.info(f"  stage-3 sampling in {model.dtype} (data.teacher.dtype={t.dtype})")
    if config.threads:
        torch.set_num_threads(config.threads)
    # The weights stay frozen for the whole stage: keep prefix KV caches (persona prompt + few-shot turns) between calls.
    base = HFBackend(model, tok, batch_size=t.batch_size, prefix_cache=PREFIX_CACHES)
    if t.backend == "openai":
        from personatune.generation.cache import ResponseCache
        from personatune.generation.openai_compat import OpenAIBackend

        teacher = OpenAIBackend(
            t.base_url,
            t.model,
            api_key_env=t.api_key_env,
            concurrency=t.concurrency,
            max_retries=t.max_retries,
            cache=ResponseCache(run_dir.stage_dir(STAGE) / "openai_cache"),
        )
        return teacher, base
    if t.model and t.model != config.model.name:
        tm, tt = models.load_configured_model(t.model, margs)
        return HFBackend(tm, tt, batch_size=t.batch_size, prefix_cache=PREFIX_CACHES), base
    return base, base


PREFIX_CACHES = 4
"""Prefix KV caches an HF teacher keeps between calls: the shared persona part and the current context (benchmarks/bench_teacher.py)."""


def contrast_jobs(
    spec: PersonaSpec, scenarios: list[Scenario], config: RunConfig
) -> tuple[list[tuple[list[dict[str, str]], dict[str, Any]]], list[tuple[str, str, str | None]]]:
    """The contrast jobs of data.contrast for these scenarios, one response each: (jobs, per job (scenario id, kind,
    flipped trait or None)). baseline: the scenario alone (for the baseline model); trait_flipped: the persona with
    each targeted trait inverted; style_broken: the persona in the opposite voice."""
    d, t = config.data, config.data.teacher
    p = {
        "max_new_tokens": t.max_new_tokens,
        "temperature": t.temperature,
        "top_p": t.top_p,
        "seed": config.seed,
        "n": 1,
    }
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


def contrast_try(
    job: tuple[list[dict[str, str]], dict[str, Any]], a: int
) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """Try a (0-based) of a contrast job: the same conversation with seed + a (try 0 is the job itself)."""
    return job[0], {**job[1], "seed": job[1]["seed"] + a}


def sample_contrast(
    jobs: list[tuple[list[dict[str, str]], dict[str, Any]]],
    meta: list[tuple[str, str, str | None]],
    scenarios: dict[str, Scenario],
    backends: dict[str, Any],
    scorer: Any,
    path: Any,
    config: RunConfig,
) -> tuple[list[str], list[Any], dict[str, list[int]]]:
    """Rejection sampling on the rejected side: each contrast job gets up to `data.contrast_best_of` tries, and the
    first response the scorer finds inconsistent — for a trait flip, inconsistent and on task — is kept (the mirror of
    best-of-k on the chosen side; `contrast_rank`).

    Try a (0-based) samples only the jobs without such a response yet, with seed + a (try 0 is the single-try job of
    earlier versions, so a resumed run reuses it). A trait flip that is never on task keeps its first inconsistent
    try; a job that never yields an inconsistent response keeps its least consistent one, which the gate then counts
    against `rejected_inconsistency_rate`.
    Baseline jobs go to the baseline model (`backends["baseline"]`), the other kinds to the teacher.

    Returns:
        (text per job, its ResponseScore, per kind [inconsistent on the first try, jobs, tries used]).
    """
    d, echo = config.data, log.info
    texts: list[str] = [""] * len(jobs)
    scores: list[Any] = [None] * len(jobs)
    pending = list(range(len(jobs)))
    tries: dict[str, list[int]] = {}
    for a in range(d.contrast_best_of):
        if not pending:
            break
        if a:
            echo(
                f"  contrast try {a + 1}/{d.contrast_best_of}: {len(pending)} responses were consistent "
                "(or trait flips off task), sampling again"
            )
        outs: dict[int, str] = {}
        for who, idx in (
            ("baseline", [i for i in pending if meta[i][1] == "baseline"]),
            ("teacher", [i for i in pending if meta[i][1] != "baseline"]),
        ):
            if not idx:
                continue
            label = "contrast (baseline model)" if who == "baseline" else "contrast (teacher)"
            res = generate_resumable(
                backends[who],
                [contrast_try(jobs[i], a) for i in idx],
                path,
                chunk=d.teacher.batch_size,
                echo=echo,
                label=label if not a else f"{label}, try {a + 1}",
            )
            outs.update({i: r[0] for i, r in zip(idx, res)})
        sc = scorer.score(
            [outs[i] for i in pending],
            prompts=[scenarios[meta[i][0]].prompt for i in pending],
            contexts=[scenarios[meta[i][0]].context for i in pending],
            targets=[scenarios[meta[i][0]].targets for i in pending],
            ids=[f"{meta[i][0]}:r{i}:t{a}" for i in pending],
        )
        still = []
        for i, r in zip(pending, sc):
            t = tries.setdefault(meta[i][1], [0, 0, 0])
            t[1] += a == 0
            t[0] += a == 0 and not r.consistent
            t[2] += 1
            if contrast_rank(r, meta[i][1]) < contrast_rank(scores[i], meta[i][1]):
                texts[i], scores[i] = outs[i], r
            if contrast_rank(scores[i], meta[i][1])[0] > 0:
                still.append(i)
        pending = still
    return texts, scores, tries


def contrast_rank(r: Any, kind: str) -> tuple[int, float]:
    """How good a contrast try is, lower better: (0, ·) inconsistent and, for a trait flip, on task — the kept kind,
    sampling stops; (1, ·) inconsistent but a trait flip off task (it answers nothing, so it is no contradiction of
    the trait: stage 4 leaves it out, `s4_evaluation.flip_took`); (2, consistency) consistent. The first try of the
    best rank is kept; among consistent ones the least consistent. None (no try yet) ranks last."""
    if r is None:
        return (3, 0.0)
    if r.consistent:
        return (2, float(r.consistency))
    return (1, 0.0) if kind == "trait_flipped" and on_task(r) is False else (0, 0.0)


def teacher_jobs(
    spec: PersonaSpec, scenarios: list[Scenario], config: RunConfig, n: int | None = None
) -> list[tuple[list[dict[str, str]], dict[str, Any]]]:
    """The teacher's best-of jobs: per scenario, the persona conversation (system prompt, few-shot turns when
    data.few_shot, trait reminders when data.focus_targets) and the sampling parameters with n candidates (default
    data.best_of)."""
    d, t = config.data, config.data.teacher
    p = {
        "max_new_tokens": t.max_new_tokens,
        "temperature": t.temperature,
        "top_p": t.top_p,
        "seed": config.seed,
        "n": d.best_of if n is None else n,
    }
    return [
        (
            persona_conversation(spec, s.messages, few_shot=d.few_shot, focus=s.targets if d.focus_targets else None),
            dict(p),
        )
        for s in scenarios
    ]


def sample_chosen(
    teacher: Any, spec: PersonaSpec, scenarios: list[Scenario], scorer: Any, path: Any, config: RunConfig
) -> tuple[list[list[str]], list[list[Any]]]:
    """Best-of-n on the chosen side: `data.best_of_first` candidates per prompt, scored; the remaining
    best_of - best_of_first (seed + 1) only for prompts with no eligible (consistent, on-task) candidate yet. A prompt
    ends with an eligible candidate exactly when all best_of at once would give it one (the same draws, in
    distribution), so the kept prompts are the same; fewer candidates are sampled, and the choice among eligible ones
    is made from fewer (benchmarks/experiments/adaptive_best_of.py measures both).

    Returns:
        (candidates per scenario, their ResponseScores).
    """
    d, t, echo = config.data, config.data.teacher, log.info
    first = min(d.best_of_first or d.best_of, d.best_of)
    more = d.best_of - first
    echo(
        f"  teacher: {len(scenarios)} prompts x {first} candidates"
        + (f", {more} more for each prompt with no consistent, on-task one among them" if more else "")
    )
    jobs = teacher_jobs(spec, scenarios, config, n=first)
    outs = generate_resumable(teacher, jobs, path, chunk=max(1, t.batch_size // first), echo=echo, label="teacher")
    echo(f"  scoring {sum(len(c) for c in outs)} teacher candidates …")
    scores = score_candidates(scenarios, outs, scorer)
    rest = [i for i, cs in enumerate(scores) if not any(eligible(r) for r in cs)]
    if more and rest:
        echo(
            f"  teacher: {len(rest)} of {len(scenarios)} prompts have no consistent, on-task candidate yet: {more} more each"
        )
        jobs2 = [(jobs[i][0], {**jobs[i][1], "n": more, "seed": jobs[i][1]["seed"] + 1}) for i in rest]
        outs2 = generate_resumable(
            teacher, jobs2, path, chunk=max(1, t.batch_size // more), echo=echo, label="teacher, more candidates"
        )
        for i, o, s in zip(rest, outs2, score_candidates([scenarios[i] for i in rest], outs2, scorer)):
            outs[i], scores[i] = outs[i] + o, scores[i] + s
    return outs, scores


# --- scenarios -----------------------------------------------------------------------------------
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


def run_scenarios(
    spec: PersonaSpec, embedder: Any, config: RunConfig, extra: list[Scenario] | None = None
) -> list[Scenario]:
    """The stage's scenarios as the config asks (data.contexts, targets_per_prompt, heldout_fraction,
    max_prompt_similarity, max_prompts, seed), plus teacher-written `extra` ones; benchmarks take them from here."""
    d = config.data
    return cap_scenarios(
        build_scenarios(
            spec,
            embedder,
            contexts=tuple(d.contexts),
            targets_per_prompt=d.targets_per_prompt,
            heldout_fraction=d.heldout_fraction,
            max_similarity=d.max_prompt_similarity,
            seed=config.seed,
            extra=list(extra or []),
        ),
        d.max_prompts,
    )


# --- the stage -----------------------------------------------------------------------------------
@logged_stage
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
    echo = log.info
    extra = []
    if d.expand_per_trait:
        # The teacher writes new prompts per (trait, context); resumable like every other generation.
        keys = [(tr, c) for tr in spec.trait_ids for c in d.contexts if c in CONTEXT_DESCRIPTIONS]
        ejobs = [
            (
                expansion_request(spec, tr, c, d.expand_per_trait),
                {**p, "max_new_tokens": 40 * d.expand_per_trait, "n": 1},
            )
            for tr, c in keys
        ]
        echo(f"  expanding the prompt bank: {len(ejobs)} (trait, context) requests x {d.expand_per_trait} prompts")
        replies = generate_resumable(
            teacher, ejobs, out / "generations.jsonl", chunk=t.batch_size, echo=echo, label="prompt expansion"
        )
        extra = expanded_scenarios(spec, {k: r[0] for k, r in zip(keys, replies)}, d.expand_per_trait)
    scenarios = run_scenarios(spec, embedder, config, extra)
    if d.expand_per_trait:
        echo(
            f"  scenarios: {sum(s.source == 'teacher' for s in scenarios)} written by the teacher, {sum(s.source == 'bank' for s in scenarios)} from the bank"
        )
    atomic_write_jsonl(out / "scenarios.jsonl", [s.to_dict() for s in scenarios])
    scorer, _ = scorer_for_run(config, run_dir, spec, use_evaluator=False)
    teacher_out, cand_scores = sample_chosen(teacher, spec, scenarios, scorer, out / "generations.jsonl", config)
    # Contrast is generated only for prompts that have an eligible (consistent, on-task) chosen response: the others yield no
    # pair, so their contrast would be wasted generation (about half of stage 3's time with a small teacher).
    kept = {s.id for s, cs in zip(scenarios, cand_scores) if any(eligible(r) for r in cs)}
    echo(
        f"  teacher yield: {len(kept)}/{len(scenarios)} prompts have a consistent, on-task candidate; contrast for those"
    )
    by_id = {s.id: s for s in scenarios}
    cjobs, cmeta = contrast_jobs(spec, [s for s in scenarios if s.id in kept], config)
    texts, cscores, tries = sample_contrast(
        cjobs, cmeta, by_id, {"baseline": base, "teacher": teacher}, scorer, out / "generations.jsonl", config
    )
    contrast: dict[str, list[tuple[str, str | None, str]]] = {}
    contrast_scores: dict[str, list[Any]] = {}
    for (sid, kind, flip), text, sc in zip(cmeta, texts, cscores):
        contrast.setdefault(sid, []).append((kind, flip, text))
        contrast_scores.setdefault(sid, []).append(sc)
    echo(f"  building pairs from {len(cjobs)} contrast responses …")
    sft, pairs, stats = build_pairs(
        spec,
        scenarios,
        teacher_out,
        contrast,
        scorer,
        candidate_scores=cand_scores,
        select=d.select,
        contrast_scores=contrast_scores,
    )
    stats["contrast_tries"] = tries
    gate = data_gate(spec, scenarios, stats, config)
    for line in gate.diagnosis:
        if line.startswith("contrast yield"):
            echo(f"  {line}")
    for split in ("train", "heldout"):
        atomic_write_jsonl(out / split / "sft.jsonl", [r for r in sft if r["split"] == split])
        atomic_write_jsonl(out / split / "pairs.jsonl", [r for r in pairs if r["split"] == split])
    atomic_write_jsonl(out / "heldout" / "prompts.jsonl", [s.to_dict() for s in scenarios if s.split == "heldout"])
    atomic_write_text(out / "README.md", dataset_card(spec, scenarios, sft, pairs, gate))
    return StageResult(
        outputs={
            "scenarios": out / "scenarios.jsonl",
            "train": out / "train",
            "heldout": out / "heldout",
            "card": out / "README.md",
        },
        gate=gate,
        metrics={
            "scenarios": stats["scenarios"],
            "chosen": stats["chosen_consistent"],
            "pairs": len(pairs),
            "chosen_on_task": stats["chosen_on_task"],
            "chosen_on_task_measured": stats["chosen_on_task_measured"],
            "off_task_only": stats["off_task_only"],
        },
        message=f"{len(sft)} chosen of {stats['scenarios']} prompts, {len(pairs)} pairs",
    )
