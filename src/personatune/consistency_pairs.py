"""Stage 3's chosen and rejected responses: which candidate is chosen, and the TRL rows built from them.

A teacher candidate is eligible as chosen only when it is consistent AND on task (`eligible`); among a prompt's
eligible candidates the chosen one is, by default, one with the fewest traits that do not adhere
(`traits_not_adhering`) and among those the one nearest the teacher's typical voice (`typical_voice`,
`choose_candidate`). `build_pairs` scores the contrast responses, labels each with the
traits it violates, and returns the `sft` and `pairs` rows with the counts the stage-3 gate needs.
"""

from __future__ import annotations

from typing import Any

from personatune.persona import PersonaSpec
from personatune.scenarios import Scenario

ON_TASK_LINE = 0.5
"""A response is on task when its on_task probability is at least this (METRICS.md on-task rate)."""


def on_task(r: Any) -> bool | None:
    """Whether a scored response addresses the user's request; None when on_task was not measured."""
    return None if r.on_task is None else r.on_task >= ON_TASK_LINE


def eligible(r: Any) -> bool:
    """A candidate may become chosen when it is consistent and on task. An unmeasured on_task (no prompt)
    does not exclude it; the gate counts only measured ones (`chosen_on_task_rate`)."""
    return bool(r.consistent) and on_task(r) is not False


def score_candidates(scenarios: list[Scenario], candidates: list[list[str]], scorer: Any) -> list[list[Any]]:
    """Score every teacher candidate in one batched call; per scenario, its candidates' ResponseScores."""
    flat = [(s, c) for s, cands in zip(scenarios, candidates) for c in cands]
    scores = scorer.score(
        [c for _, c in flat],
        prompts=[s.prompt for s, _ in flat],
        contexts=[s.context for s, _ in flat],
        targets=[s.targets for s, _ in flat],
        ids=[f"{s.id}:c{i}" for i, (s, _) in enumerate(flat)],
    )
    out, i = [], 0
    for cands in candidates:
        out.append(list(scores[i : i + len(cands)]))
        i += len(cands)
    return out


def typical_voice(
    scenarios: list[Scenario], candidate_scores: list[list[Any]]
) -> tuple[dict[str, float], dict[str, float]] | None:
    """The teacher's typical in-persona voice: per style feature, the mean over every consistent candidate
    of the TRAINING split (held-out candidates do not shape it), and the scale each feature's distance is
    divided by — max(|mean|, the feature's style-variance floor), the normalisation of style variance.

    Returns:
        (means, scales) keyed by feature, or None when no training-split candidate is consistent.
    """
    from personatune.scoring.aggregate import VARIANCE_FLOORS

    rows = [r.style for s, cs in zip(scenarios, candidate_scores) if s.split == "train" for r in cs if r.consistent]
    if not rows:
        return None
    feats = [f for f in VARIANCE_FLOORS if all(f in r for r in rows)]
    means = {f: sum(float(r[f]) for r in rows) / len(rows) for f in feats}
    return means, {f: max(abs(means[f]), VARIANCE_FLOORS[f]) for f in feats}


def voice_distance(style: dict[str, float], voice: tuple[dict[str, float], dict[str, float]]) -> float:
    """Mean over features of |feature - typical| / scale: how far a response's voice is from the typical one."""
    means, scales = voice
    return sum(abs(float(style[f]) - m) / scales[f] for f, m in means.items()) / max(len(means), 1)


def choose_candidate(
    good: list[Any], select: str, voice: tuple[dict[str, float], dict[str, float]] | None, score: Any = lambda c: c
) -> Any:
    """The chosen one among a prompt's consistent candidates (config data.select).

    Args:
        good: the consistent candidates (non-empty).
        select: "adherent_voice" (the candidates with the fewest traits not adhering — `traits_not_adhering` — and among
            them typical_voice), "typical_voice" (nearest `voice`, ties by higher consistency; falls back to
            max_consistency when `voice` is None) or "max_consistency".
        voice: the result of `typical_voice`.
        score: maps a candidate to its ResponseScore (identity when the candidates are scores).
    """
    if select == "adherent_voice":
        misses = [traits_not_adhering(score(c)) for c in good]
        fewest = min(misses)
        good = [c for c, m in zip(good, misses) if m == fewest]
        select = "typical_voice"
    if select == "typical_voice" and voice is not None:
        return min(good, key=lambda c: (voice_distance(score(c).style, voice), -score(c).consistency))
    return max(good, key=lambda c: score(c).consistency)


def traits_not_adhering(r: Any) -> int:
    """How many of a scored response's traits do not adhere (METRICS.md trait adherence: a targeted trait must be
    expressed and not violated, any other trait not violated). `consistent` asks only that the targeted traits'
    MEAN expression reach 0.5, so a consistent candidate can leave one targeted trait unexpressed; this count
    tells such a candidate from one that shows every trait the prompt asks for."""
    from personatune.scoring.aggregate import adherence_pairs

    return sum(not ok for ok in adherence_pairs(r).values())


def build_pairs(
    spec: PersonaSpec,
    scenarios: list[Scenario],
    candidates: list[list[str]],
    contrast: dict[str, list[tuple[str, str | None, str]]],
    scorer: Any,
    candidate_scores: list[list[Any]] | None = None,
    select: str = "typical_voice",
    contrast_scores: dict[str, list[Any]] | None = None,
) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """Score candidates and contrast responses; build sft rows, pair rows and gate counts.

    Args:
        contrast: scenario id -> list of (kind, flipped trait or None, text).
        candidate_scores: the candidates' scores from `score_candidates`, when the caller has them already.
        select: which eligible (consistent and on-task) candidate is chosen (config data.select): "max_consistency" (highest
            consistency score) or "typical_voice" (nearest `typical_voice`, ties by consistency). Either way
            a prompt without an eligible candidate yields nothing.
        contrast_scores: scenario id -> the scores of its contrast responses, in the order of `contrast` (stage 3
            scores them while it samples them); scored here when None.

    Returns:
        (sft rows, pair rows, stats) — stats hold the counts the gate needs: chosen, chosen_consistent, chosen_on_task
        (of chosen_on_task_measured), off_task_only (prompts whose only consistent candidates were off task),
        rejected, rejected_inconsistent, violated_pairs, by_kind.
    """
    if candidate_scores is None:
        candidate_scores = score_candidates(scenarios, candidates, scorer)
    voice = typical_voice(scenarios, candidate_scores) if select in ("typical_voice", "adherent_voice") else None
    rej = [(s, kind, flip, text) for s in scenarios for kind, flip, text in contrast.get(s.id, [])]
    rej_scores = (
        [sc for s in scenarios for sc in contrast_scores.get(s.id, [])]
        if contrast_scores is not None
        else scorer.score(
            [r[3] for r in rej],
            prompts=[r[0].prompt for r in rej],
            contexts=[r[0].context for r in rej],
            targets=[r[0].targets for r in rej],
            ids=[f"{r[0].id}:r{i}" for i, r in enumerate(rej)],
        )
        if rej
        else []
    )
    if len(rej_scores) != len(rej):
        raise ValueError(f"contrast_scores hold {len(rej_scores)} scores for {len(rej)} contrast responses")
    by_s: dict[str, dict[str, list]] = {
        s.id: {"cands": [(c, "candidate", None, sc) for c, sc in zip(cands, cs)], "rej": []}
        for s, cands, cs in zip(scenarios, candidates, candidate_scores)
    }
    for (s, kind, flip, text), sc in zip(rej, rej_scores):
        by_s[s.id]["rej"].append((text, kind, flip, sc))
    sft, pairs = [], []
    stats = {
        "scenarios": 0,
        "chosen": 0,
        "chosen_consistent": 0,
        "chosen_on_task": 0,
        "chosen_on_task_measured": 0,
        "off_task_only": 0,
        "rejected": 0,
        "rejected_inconsistent": 0,
        "violated_pairs": {t: 0 for t in spec.trait_ids},
        "by_kind": {},
    }
    for s in scenarios:
        d = by_s.get(s.id, {"cands": [], "rej": []})
        stats["scenarios"] += 1
        # The rejected-inconsistency rate is measured on every contrast response, paired or not.
        labelled = []
        for text, kind, flip, sc in d["rej"]:
            stats["rejected"] += 1
            k = stats["by_kind"].setdefault(kind, {"n": 0, "inconsistent": 0})
            k["n"] += 1
            if not sc.consistent:
                stats["rejected_inconsistent"] += 1
                k["inconsistent"] += 1
            violated = sorted(
                {t for t, v in sc.violations.items() if v >= 0.5} | ({flip} if flip and not sc.consistent else set())
            )
            labelled.append((text, kind, flip, sc, violated))
        if not d["cands"]:
            continue
        good = [c for c in d["cands"] if eligible(c[3])]
        if not good:
            # rejection sampling: a prompt without a consistent, on-task candidate yields no chosen response
            stats["off_task_only"] += any(c[3].consistent for c in d["cands"])
            continue
        best_text, _, _, best = choose_candidate(good, select, voice, score=lambda x: x[3])
        stats["chosen"] += 1
        stats["chosen_consistent"] += 1
        stats["chosen_on_task"] += on_task(best) is True
        stats["chosen_on_task_measured"] += on_task(best) is not None
        sft.append(
            {
                "messages": s.messages + [{"role": "assistant", "content": best_text}],
                "context": s.context,
                "targets": s.targets,
                "scenario_id": s.id,
                "split": s.split,
                "consistency": best.consistency,
                "on_task": best.on_task,
            }
        )
        for text, kind, flip, sc, violated in labelled:
            for t in violated:
                stats["violated_pairs"][t] = stats["violated_pairs"].get(t, 0) + 1
            pairs.append(
                {
                    "prompt": s.messages,
                    "chosen": [{"role": "assistant", "content": best_text}],
                    "rejected": [{"role": "assistant", "content": text}],
                    "context": s.context,
                    "targets": s.targets,
                    "violated_traits": violated,
                    "rejected_kind": kind,
                    "flipped_trait": flip,
                    "scenario_id": s.id,
                    "split": s.split,
                    "chosen_consistency": best.consistency,
                    "rejected_consistency": sc.consistency,
                    "rejected_consistent": sc.consistent,
                    "rejected_on_task": sc.on_task,
                }
            )
    return sft, pairs, stats
