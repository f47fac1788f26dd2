"""Stage 6's rules as pure functions over plain rows (no model): which sampled answers to keep, which pairs to form,
which round to keep, and when to stop. Stage 6 (`stages/s6_iterations.py`) runs the rounds; these decide.

A round's row: {"round", "kl", "consistency", "adherence", "style_variance", "pairs", ...} (see
`ROW_KEYS`); `kl` is drift KL in nats/token, None for a round that found no pairs (nothing was trained).
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Mapping, Sequence

from personatune.config import IterationArgs, OptimGateArgs

ROW_KEYS = (  # the columns of rounds.jsonl, in order
    "round",
    "kl",
    "kl_stderr",
    "persona_shift",
    "yield",
    "consistency",
    "consistency_ci",
    "adherence",
    "style_variance",
    "on_task",
    "pairs",
    "steps",
    "passed",
    "kept",
    "seconds",
)


def kept(rec: Any) -> bool:
    """Expert iteration's keep rule: the answer is consistent with the persona and on task (on_task >= 0.5, or not measured)."""
    ot = getattr(rec, "on_task", None)
    return bool(rec.consistent) and (ot is None or ot >= 0.5)


def build_pairs(
    items: Sequence[Mapping[str, Any]],
    samples: Sequence[Sequence[str]],
    scores: Sequence[Sequence[Any]],
    min_margin: float,
) -> list[dict[str, Any]]:
    """New pairs: per prompt, the best kept sample (consistent and on task: `kept`) against the worst one (rejected).
    SFT rounds train on the chosen side only.

    Args:
        items: one training prompt per entry: {"prompt": messages, "context", "targets", "scenario_id"}.
        samples: per item, its sampled responses.
        scores: per item, a ResponseScore-like record (`.consistent`, `.consistency`) per response.
        min_margin: a pair needs consistency(chosen) - consistency(rejected) >= this.

    Returns:
        Stage-3-shaped pair rows; prompts without a consistent sample or without the margin give none.

    >>> from types import SimpleNamespace as S
    >>> p = build_pairs([{"prompt": [{"role": "user", "content": "Hi"}]}], [["Ahoy!", "hi", "meh"]],
    ...                 [[S(consistent=True, consistency=0.9), S(consistent=False, consistency=0.2), S(consistent=False, consistency=0.4)]], 0.2)
    >>> p[0]["chosen"][0]["content"], p[0]["rejected"][0]["content"]
    ('Ahoy!', 'hi')
    """
    pairs = []
    for item, texts, recs in zip(items, samples, scores):
        ranked = sorted(zip(texts, recs), key=lambda tr: tr[1].consistency)
        good = [tr for tr in ranked if kept(tr[1])]
        if not good:
            continue  # nothing in persona to prefer: such a prompt teaches only what to avoid, which DPO cannot use alone
        (best_t, best), (worst_t, worst) = good[-1], ranked[0]
        if best_t == worst_t or best.consistency - worst.consistency < min_margin:
            continue
        pairs.append(
            {
                "prompt": item["prompt"],
                "chosen": [{"role": "assistant", "content": best_t}],
                "rejected": [{"role": "assistant", "content": worst_t}],
                "context": item.get("context"),
                "targets": list(item.get("targets") or []),
                "scenario_id": item.get("scenario_id"),
                "chosen_consistency": best.consistency,
                "rejected_consistency": worst.consistency,
                "rejected_consistent": worst.consistent,
            }
        )
    return pairs


def _num(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def within_budget(row: Mapping[str, Any], g: OptimGateArgs) -> bool:
    """KL measured and <= gates.optimization.max_kl."""
    kl = _num(row.get("kl"))
    return kl is not None and kl <= g.max_kl


def round_passes(row: Mapping[str, Any], g: OptimGateArgs, margin: float = 0.0) -> bool:
    """Every stage-5 gate holds for a round's row, with `margin` room.

    The room is absolute for the rates (consistency, adherence >= gate + margin) and relative for the upper
    bounds (KL <= max_kl * (1 - margin), style variance < max * (1 - margin)); margin 0 is the gate itself.
    """
    kl, c, a, s = (_num(row.get(k)) for k in ("kl", "consistency", "adherence", "style_variance"))
    return (
        kl is not None
        and kl <= g.max_kl * (1 - margin)
        and c is not None
        and c >= g.consistency + margin
        and a is not None
        and a >= g.adherence + margin
        and s is not None
        and s < g.max_style_variance * (1 - margin)
    )


KL_TIE_DECIMALS = 4
"""KLs that agree to 1e-4 nats/token are a tie in `select_round`: a round that changes nothing measures its predecessor's
KL up to float rounding (~1e-9), far under any KL's standard error (~1e-3), and must not win on it."""


def select_round(rows: Sequence[Mapping[str, Any]], g: OptimGateArgs) -> tuple[dict[str, Any], str]:
    """The round to keep, and why.

    Best = highest held-out consistency among rounds that pass every stage-5 gate (ties: lower KL, to `KL_TIE_DECIMALS`
    decimals, then the earlier round); if none passes, the same among rounds within the KL budget; if none is within it,
    the lowest KL.

    Raises:
        ValueError: no row has a measured KL (round 0 always has one, so this is a programming error).

    >>> g = OptimGateArgs(max_kl=0.1, consistency=0.5, adherence=0.5, max_style_variance=1.0)
    >>> rows = [{"round": 0, "kl": 0.05, "consistency": 0.6, "adherence": 0.9, "style_variance": 0.1},
    ...         {"round": 1, "kl": 0.08, "consistency": 0.7, "adherence": 0.9, "style_variance": 0.1},
    ...         {"round": 2, "kl": 0.20, "consistency": 0.9, "adherence": 0.9, "style_variance": 0.1}]
    >>> select_round(rows, g)[0]["round"]
    1
    """
    cands = [dict(r) for r in rows if _num(r.get("kl")) is not None]
    if not cands:
        raise ValueError("no round has a measured KL")

    def key(r: Mapping[str, Any]) -> tuple[float, float, int]:
        c = _num(r.get("consistency"))
        return (-math.inf if c is None else c, -round(float(r["kl"]), KL_TIE_DECIMALS), -int(r["round"]))

    passing = [r for r in cands if round_passes(r, g)]
    inside = [r for r in cands if within_budget(r, g)]
    if passing:
        best = max(passing, key=key)
        return (
            best,
            f"round {best['round']}: highest consistency {best['consistency']:.4g} among {len(passing)} round(s) passing every gate",
        )
    if inside:
        best = max(inside, key=key)
        return best, (
            f"no round passes every gate; round {best['round']}: highest consistency {best['consistency']:.4g} among "
            f"{len(inside)} round(s) within the KL budget {g.max_kl:g}"
        )
    best = min(cands, key=lambda r: (float(r["kl"]), int(r["round"])))
    return (
        best,
        f"no round is within the KL budget {g.max_kl:g}; round {best['round']} has the lowest KL {float(best['kl']):.4g}",
    )


def improved(
    row: Mapping[str, Any], earlier: Sequence[Mapping[str, Any]], g: OptimGateArgs, min_improvement: float
) -> bool:
    """Whether a round beats every earlier round: within the KL budget and consistency > best earlier + min_improvement."""
    if not within_budget(row, g) or _num(row.get("consistency")) is None:
        return False
    prev = [float(r["consistency"]) for r in earlier if within_budget(r, g) and _num(r.get("consistency")) is not None]
    return not prev or float(row["consistency"]) > max(prev) + min_improvement


def stop_reason(rows: Sequence[Mapping[str, Any]], it: IterationArgs, g: OptimGateArgs) -> str | None:
    """Why the rounds stop after the latest row, or None to run another round.

    Reasons: "no new pairs" (the latest round found none to train on), "gates passed with margin" (the best round
    passes every gate with `it.stop_margin` room), "no improvement" (the latest round did not improve, see
    `improved`), "round budget" (`it.rounds` rounds done).

    >>> g = OptimGateArgs()
    >>> stop_reason([{"round": 0, "kl": 0.05, "consistency": 0.6, "adherence": 0.9, "style_variance": 0.1, "pairs": 0}],
    ...             IterationArgs(rounds=2), g) is None
    True
    """
    last = rows[-1]
    if int(last["round"]) > 0 and not last.get("pairs"):
        return "no new pairs"
    if round_passes(select_round(rows, g)[0], g, it.stop_margin):
        return "gates passed with margin"
    if int(last["round"]) > 0 and not improved(last, rows[:-1], g, it.min_improvement):
        return "no improvement"
    if int(last["round"]) >= it.rounds:
        return "round budget"
    return None


# --- a round's row and its resume key ---------------------------------------------------------------------
def round_row(n: int, ev: Any, g: OptimGateArgs, pairs: int, steps: int, seconds: float) -> dict[str, Any]:
    """Round n's row (`ROW_KEYS` of stage 6, but yield) from its EvalResult on all held-out prompts; `passed` = every gate holds."""
    shift = getattr(ev, "persona_shift", None)
    row = {
        "round": n,
        "kl": ev.kl.per_token,
        "kl_stderr": ev.kl.stderr,
        "persona_shift": None if shift is None else shift.per_token,
        "consistency": ev.consistency.value,
        "consistency_ci": list(ev.consistency.ci) if ev.consistency.ci else None,
        "adherence": ev.adherence.value,
        "style_variance": ev.style_variance,
        "on_task": None if getattr(ev, "on_task", None) is None else ev.on_task.value,
        "pairs": pairs,
        "steps": steps,
        "passed": False,
        "kept": False,
        "seconds": round(seconds, 2),
    }
    row["passed"] = round_passes(row, g)
    return row


def round_key(config: Any, n: int, start_hash: str) -> str:
    """What a finished round depends on: its number, the model it started from, and the config that shapes it
    (the measurement's decoding, `eval`, and scorer, `scorer`, included).

    The round budget and the stop rules only decide whether to go on, so raising `iterations.rounds` keeps the
    finished rounds.
    """
    dump = config.model_dump(mode="json")
    it = {k: v for k, v in dump["iterations"].items() if k not in ("rounds", "min_improvement", "stop_margin")}
    blob = json.dumps(
        {k: dump.get(k) for k in ("model", "train", "data", "gates", "seed", "eval", "scorer")}
        | {"iterations": it, "round": n, "start": start_hash},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def round_0_record(config: Any, ev: Any, g: OptimGateArgs, model_hash: str) -> dict[str, Any]:
    """Round 0's record (records.RoundResult) from stage 5's own final measurement of the model it saved.

    Stage 6 measures its starting point exactly as stage 5 measures its result (all held-out prompts, the same
    decoding, seed, reference and scorer), so stage 5 writes this (`05_optimization/final_eval.json`) and stage 6
    reads it instead of measuring the same model twice, when its key (`round_key` of that model's hash) matches.
    """
    return {
        "round": 0,
        "key": round_key(config, 0, model_hash),
        "row": round_row(0, ev, g, 0, 0, ev.seconds),
        "eval": ev.to_record(),
        "model": None,
        "model_hash": model_hash,
    }
