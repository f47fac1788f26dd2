"""The KL-budget controller: which checkpoint to keep, and whether training may go on.

Training writes one eval record every `train.eval_every` steps (see training.PersonaEvalCallback):

    {"step": 40, "kl": 0.07, "kl_stderr": 0.01, "consistency": 0.81, "adherence": 0.93,
     "style_variance": 0.11, "checkpoint": "checkpoints/step-40", "beta": 0.1, "decision": "continue"}

`kl` is the exact mean per-token KL(policy || reference) in nats/token (personatune.kl), never TRL's
logged KL. Two pure functions read that history:

- `select_checkpoint` picks the BEST checkpoint within the KL budget, never simply the last one.
  Best = among checkpoints with kl <= max_kl: first those that also pass every persona gate given,
  then the highest consistency rate, ties broken by higher adherence, then lower KL, then the earlier step.
- `decide` tells the trainer what to do after an eval: "continue", "stop", or "raise_beta".

>>> h = [{"step": 10, "kl": 0.02, "consistency": 0.70, "adherence": 0.9, "checkpoint": "a"},
...      {"step": 20, "kl": 0.06, "consistency": 0.88, "adherence": 0.9, "checkpoint": "b"},
...      {"step": 30, "kl": 0.15, "consistency": 0.95, "adherence": 0.9, "checkpoint": "c"}]
>>> select_checkpoint(h, max_kl=0.1).record["checkpoint"]
'b'
>>> decide(h, max_kl=0.1, policy="stop").action
'stop'
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

Action = Literal["continue", "stop", "raise_beta"]


def _num(x: Any) -> float | None:
    """A finite float, or None for missing / NaN values (which never count as within budget)."""
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


@dataclass
class Selection:
    """The outcome of `select_checkpoint`.

    Attributes:
        record: the chosen eval record, or None when no checkpoint is within the KL budget.
        reason: one line: why this one, or why none.
        within_budget: steps of every checkpoint with kl <= max_kl, in step order.
        last_within_budget: the latest record within the budget (for the gate diagnosis), or None.
        passes_persona_gates: whether the chosen record also met the persona thresholds that were given.
    """

    record: dict[str, Any] | None
    reason: str
    within_budget: list[int] = field(default_factory=list)
    last_within_budget: dict[str, Any] | None = None
    passes_persona_gates: bool = False


def _passes(
    r: Mapping[str, Any], min_consistency: float | None, min_adherence: float | None, max_style_variance: float | None
) -> bool:
    c, a, s = _num(r.get("consistency")), _num(r.get("adherence")), _num(r.get("style_variance"))
    if min_consistency is not None and (c is None or c < min_consistency):
        return False
    if min_adherence is not None and (a is None or a < min_adherence):
        return False
    if max_style_variance is not None and (s is None or s >= max_style_variance):
        return False
    return True


def select_checkpoint(
    history: Sequence[Mapping[str, Any]],
    max_kl: float,
    *,
    min_consistency: float | None = None,
    min_adherence: float | None = None,
    max_style_variance: float | None = None,
) -> Selection:
    """Pick the best checkpoint whose KL is within the budget.

    Args:
        history: eval records (dicts with step, kl, consistency, adherence, style_variance, checkpoint).
            Records without a checkpoint are never chosen (stage 5 checkpoints step 0 too, so the starting
            point is a candidate).
        max_kl: the KL budget (nats/token); a record is within it when kl <= max_kl.
        min_consistency, min_adherence, max_style_variance: the persona gate thresholds; a checkpoint
            meeting all of them ranks above any that does not (None = that gate is not considered).

    Returns:
        A Selection; `record` is None (with the reason) when no checkpoint is within the budget.
    """
    cands = [dict(r) for r in history if r.get("checkpoint") and _num(r.get("kl")) is not None]
    if not cands:
        return Selection(
            None,
            "no evaluated checkpoint in the history (set train.eval_every > 0 and train for at least that many steps)",
        )
    inside = sorted((r for r in cands if _num(r["kl"]) <= max_kl), key=lambda r: int(r.get("step", 0)))
    if not inside:
        lowest = min(cands, key=lambda r: _num(r["kl"]))
        return Selection(
            None,
            f"no checkpoint within the KL budget {max_kl:g} nats/token; the lowest was {_num(lowest['kl']):.4g} at step "
            f"{lowest.get('step')} (raise train.beta, lower train.learning_rate, or evaluate more often with train.eval_every)",
        )

    def key(r: Mapping[str, Any]) -> tuple:
        # Higher is better for every component, so the max is the best; NaN/missing metrics rank lowest.
        c, a = _num(r.get("consistency")), _num(r.get("adherence"))
        return (
            _passes(r, min_consistency, min_adherence, max_style_variance),
            -math.inf if c is None else c,
            -math.inf if a is None else a,
            -_num(r["kl"]),
            -int(r.get("step", 0)),
        )

    best = max(inside, key=key)
    ok = _passes(best, min_consistency, min_adherence, max_style_variance)
    cons = _num(best.get("consistency"))
    reason = (
        f"step {best.get('step')}: highest consistency {'n/a' if cons is None else format(cons, '.4g')} among {len(inside)} checkpoint(s) with "
        f"KL <= {max_kl:g} (its KL {_num(best['kl']):.4g} nats/token)"
        + ("" if ok else "; it does not meet every persona threshold")
    )
    return Selection(
        best,
        reason,
        within_budget=[int(r.get("step", 0)) for r in inside],
        last_within_budget=inside[-1],
        passes_persona_gates=ok,
    )


@dataclass
class Decision:
    """What the trainer should do after an eval: `action`, why, and the new beta for raise_beta."""

    action: Action
    reason: str
    new_beta: float | None = None


def decide(
    history: Sequence[Mapping[str, Any]],
    max_kl: float,
    policy: Literal["stop", "raise_beta"],
    *,
    beta: float | None = None,
    raise_factor: float = 2.0,
    max_raises: int = 3,
    untrained_start: bool = False,
) -> Decision:
    """Decide from the latest eval record whether training goes on.

    Rules: while the latest KL is within the budget (kl <= max_kl), continue; at step 0 (the untrained start),
    and at the first eval of a run from the untrained baseline that has no step-0 eval (`untrained_start`), continue;
    over it but not significantly above the lowest
    earlier eval's KL (drift KL falling towards the budget from the unprompted start; "significantly": by more than
    two standard errors of the difference, from the records' `kl_stderr`, 0 where absent), continue. Otherwise, once it is over:
    policy "stop" stops (the best earlier checkpoint is kept by `select_checkpoint`); policy
    "raise_beta" multiplies the KL penalty by `raise_factor` and continues, at most `max_raises` times
    (counted from records whose "decision" is "raise_beta"), then stops.

    Args:
        history: eval records in step order; the last one is the newest.
        max_kl: KL budget (nats/token).
        policy: "stop" or "raise_beta" (train.kl_control).
        beta: the current KL penalty (needed for "raise_beta").
        raise_factor: multiplier applied to beta on each raise (> 1).
        max_raises: raises allowed before the controller stops.
        untrained_start: training began at the untrained baseline (stage 5), whose drift KL is over the budget by
            construction; a run that began inside the budget (a stage-6 round) leaves it False, so its first eval over
            the budget is read as drifting out of it.

    Returns:
        A Decision.
    """
    if not history:
        return Decision("continue", "no eval yet")
    last = history[-1]
    kl = _num(last.get("kl"))
    if kl is None:
        return Decision("continue", f"step {last.get('step')}: KL not measured")
    if kl <= max_kl:
        return Decision("continue", f"step {last.get('step')}: KL {kl:.4g} <= {max_kl:g} nats/token")
    if last.get("step") == 0:
        # The untrained starting point: drift KL is over the budget there by construction (the unprompted baseline
        # against the persona-prompted reference); training is what brings it in, so it never stops here.
        return Decision("continue", f"step 0: KL {kl:.4g} > {max_kl:g} nats/token at the start; training moves it")
    # Drift KL starts above the budget (the unprompted baseline is not the persona-prompted reference): while training
    # brings it down — not significantly above the lowest earlier eval's — it is moving into the budget, so it goes on.
    earlier = [r for r in history[:-1] if _num(r.get("kl")) is not None]
    if not earlier and untrained_start:
        # The first eval of a run that started from the untrained baseline without a step-0 eval
        # (train.eval_at_start false): that start is over the budget by construction, and one measurement is no
        # trend, so it goes on; the next eval is compared with this one.
        return Decision(
            "continue",
            f"step {last.get('step')}: KL {kl:.4g} > {max_kl:g} nats/token at the first eval of a run from the untrained "
            "baseline; no earlier eval to compare it with, so training goes on",
        )
    if earlier:
        low = min(earlier, key=lambda r: _num(r.get("kl")))
        low_kl = _num(low.get("kl"))
        # Not significantly above the lowest earlier eval: two standard errors of the difference (0 when the records
        # carry no stderr). A rise smaller than the estimate's own noise is no evidence that KL stopped falling.
        se = math.hypot(_num(last.get("kl_stderr")) or 0.0, _num(low.get("kl_stderr")) or 0.0)
        if kl < low_kl + 2.0 * se:
            return Decision(
                "continue",
                f"step {last.get('step')}: KL {kl:.4g} > {max_kl:g} nats/token but not above the lowest earlier eval "
                f"({low_kl:.4g}) by more than 2 standard errors ({2.0 * se:.2g}): moving into the budget",
            )
    over = f"step {last.get('step')}: KL {kl:.4g} > {max_kl:g} nats/token"
    if policy == "stop":
        return Decision("stop", over + "; stopping (the best checkpoint within budget is kept)")
    raises = sum(1 for r in history if r.get("decision") == "raise_beta")
    if raises >= max_raises or beta is None:
        return Decision("stop", over + f"; beta already raised {raises} time(s) (limit {max_raises}); stopping")
    new = beta * raise_factor
    return Decision("raise_beta", over + f"; raising beta {beta:g} -> {new:g}", new_beta=new)
