"""Evidence behind the gates (METRICS.md "Evidence", "Over a set of responses").

- Which config key buys more samples, named in an inconclusive gate's note: `prompts_key`, `heldout_key`.
- On-task retention = on-task rate of a candidate / that of the stage-1 baseline without a system prompt, on
  the same held-out prompts and decoding: `on_task_retention` (pure arithmetic, Katz log interval) and
  `baseline_on_task_records` (the baseline's responses, reused from stage 4 when they provably match).

>>> m, note = on_task_retention(Measurement(0.9, n=100), Measurement(0.95, n=100))
>>> round(m.value, 4), m.n, note
(0.9474, 100, '')
>>> on_task_retention(Measurement(0.9, n=100), Measurement(0.0, n=100))[0] is None
True
"""

from __future__ import annotations

import math
from typing import Any

from personatune.baseline_samples import reusable_baseline_texts, sample_baseline
from personatune.config_args import MAX_HELDOUT_FRACTION
from personatune.gates import Z95, Measurement, rate_min_n


def prompts_key(config: Any) -> str:
    """The config key that raises the number of stage-3 prompts: data.max_prompts while it caps them, else
    data.expand_per_trait (the built-in bank is then used whole; only teacher-written prompts add more)."""
    return "data.max_prompts" if config.data.max_prompts is not None else "data.expand_per_trait"


def heldout_key(config: Any) -> str:
    """The config key(s) that raise the number of held-out prompts (stages 4, 5 and 7 evaluate on all of them)."""
    keys = ["data.heldout_fraction"] if config.data.heldout_fraction < MAX_HELDOUT_FRACTION else []
    return " or ".join([*keys, prompts_key(config)])


def rate_min_n_for(config: Any, threshold: float) -> int:
    """The minimum sample size of a rate gate with this threshold under the run's gates.rate_half_width (`gates.rate_min_n`)."""
    return rate_min_n(threshold, config.gates.rate_half_width)


def on_task_retention(candidate: Measurement | None, baseline: Measurement | None) -> tuple[Measurement | None, str]:
    """On-task retention = candidate on-task rate / baseline on-task rate, with a 95% interval.

    The interval is Katz's log interval for a ratio of two independent proportions:
    exp(log r ± 1.96 · sqrt((1-p1)/(n1·p1) + (1-p0)/(n0·p0))); None when the candidate's rate is 0 (log undefined).
    n is the candidate's number of responses with a measured on_task (what the gate's minimum counts).

    Args:
        candidate: the candidate's on-task rate (aggregate.on_task_rate), or None when not measured.
        baseline: the baseline's on the same prompts and decoding, or None when not measured.

    Returns:
        (Measurement or None, note). None, with a note saying why, when either rate is unmeasured or the
        baseline's is 0 (the ratio is undefined: never a division by zero); the gate then fails.
    """
    if candidate is None or not candidate.n:
        return (
            None,
            "not measured: the candidate's on-task rate is unknown (its responses were scored without their prompts)",
        )
    if baseline is None or not baseline.n:
        return (
            None,
            "not measured: the baseline's on-task rate is unknown (no baseline responses scored with their prompts)",
        )
    p1, n1, p0, n0 = float(candidate.value), int(candidate.n), float(baseline.value), int(baseline.n)
    if p0 <= 0:
        return None, (
            f"not measured: the baseline is on task in 0 of {n0} responses, so retention (a ratio to it) is undefined; "
            "check the baseline model and the held-out prompts"
        )
    r = p1 / p0
    ci = None
    if p1 > 0:
        se = math.sqrt((1 - p1) / (n1 * p1) + (1 - p0) / (n0 * p0))
        ci = (r * math.exp(-Z95 * se), r * math.exp(Z95 * se))
    return Measurement(r, n=n1, ci=ci), ""


def baseline_on_task_records(
    config: Any, run_dir: Any, scorer: Any, rows: list[dict[str, Any]]
) -> tuple[list[Any], str]:
    """The stage-1 baseline's responses to held-out prompt rows (no system prompt, stage 4's decoding), scored with their prompts.

    Stage 4's `baseline_samples.json` is reused when `baseline_samples.reusable_baseline_texts` accepts it (its
    sampling fingerprint matches the config); otherwise the baseline is sampled again exactly as stage 4 samples it.

    Returns:
        (ResponseScore per row, in order; where the responses came from).
    """
    texts = reusable_baseline_texts(config, run_dir, rows)
    source = "04_evaluation/baseline_samples.json (reused)"
    if texts is None:
        texts, source = sample_baseline(config, run_dir, rows), "sampled again (stage 4's samples did not match)"
    recs = scorer.score(
        texts,
        prompts=[r["messages"] for r in rows],
        contexts=[r.get("context") for r in rows],
        targets=[list(r.get("targets") or []) for r in rows],
        ids=[str(r.get("id", i)) for i, r in enumerate(rows)],
    )
    return recs, source
