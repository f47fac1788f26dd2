"""Rejection-sampling context distillation data for stage 5 (`train.sft_source: reference`).

The drift-KL reference is the stage-1 baseline given the persona context c. Sampling it on the stage-3 training
prompts and keeping the answers the scorer finds consistent and on task gives an SFT target that is in persona
and, by construction, close to the reference: conditioning on "consistent" costs -log P(consistent) nats per
sequence (docs/optimization.md, "SFT on reference samples").

With `train.anchor_samples` > 0 the same reference also answers the capability anchors (checkable arithmetic and
facts, data/capability_anchors.yaml, disjoint from the capability suite) and its correct answers join the data: the
persona is learned on prompts where being right is checked, too (docs/benchmarks.md, "Capability anchors").
"""

from __future__ import annotations

import json
import logging
from typing import Any

from personatune.config import RunConfig
from personatune.errors import DataError
from personatune.rundir import RunDir
from personatune.stage3_rows import read_stage3
from personatune.stages.optimization_common import STAGE3_FIX

log = logging.getLogger(__name__)

STAGE = "05_optimization"


def reference_sft_rows(
    config: RunConfig, run_dir: RunDir, spec: Any, context: list[dict[str, str]], model: Any, tok: Any, scorer: Any
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rejection-sampling context distillation data (train.sft_source=reference): `train.reference_samples` responses
    per stage-3 training prompt from the drift-KL reference itself — the stage-1 baseline (`model`, before any
    adapter) given the persona context c — at temperature 1 and top_p 1, `train.kl_max_new_tokens` long, kept when the
    scorer finds them consistent and on task. Conditioning the reference on "consistent" costs -log P(consistent)
    nats per sequence, so the target is both in persona and close to the reference (docs/optimization.md). They are
    drawn by a copy in `train.reference_dtype` (bfloat16 where native, as stage 3's teacher): training data, not a
    measurement; every KL stays in model.dtype (the GKD target is the weights in model.dtype, run in bfloat16
    products during training when train.bf16 mixed precision is on).

    Generation is resumable (`05_optimization/reference_samples.jsonl`); the kept rows go to
    `05_optimization/reference_sft.jsonl`.

    Returns:
        (sft rows with messages/context/targets/scenario_id, {"prompts", "sampled", "consistent", "kept", "kept_prompts"},
        plus "anchors" (anchor_rows' info) with train.anchor_samples > 0; the anchor rows come after the persona rows).

    Raises:
        DataError: no training prompt, or no sample was consistent and on task.
    """
    from personatune import models
    from personatune.consistency_pairs import eligible, score_candidates
    from personatune.generation.hf import HFBackend
    from personatune.generation.resumable import generate_resumable
    from personatune.rundir import atomic_write_jsonl

    args, out = config.train, run_dir.stage_dir(STAGE)
    scen = training_prompts(run_dir)
    params = {
        "max_new_tokens": args.kl_max_new_tokens,
        "temperature": 1.0,
        "top_p": 1.0,
        "seed": config.seed,
        "n": args.reference_samples,
    }
    jobs = [(list(context) + [dict(m) for m in s.messages], dict(params)) for s in scen]
    bs = config.data.teacher.batch_size
    backend = HFBackend(
        sampling_copy(model, models.sampling_dtype(args.reference_dtype, config.model)),
        tok,
        batch_size=bs,
        prefix_cache=1,
    )
    log.info(f"  reference samples drawn in {backend.model.dtype} (train.reference_dtype={args.reference_dtype})")
    texts = generate_resumable(
        backend,
        jobs,
        out / "reference_samples.jsonl",
        chunk=max(1, bs // args.reference_samples),
        echo=log.info,
        label="reference samples (baseline + persona context)",
    )
    scores = score_candidates(scen, texts, scorer)
    rows: list[dict[str, Any]] = []
    for s, ts, rs in zip(scen, texts, scores):
        for t, r in zip(ts, rs):
            if eligible(r):
                rows.append(
                    {
                        "messages": [dict(m) for m in s.messages] + [{"role": "assistant", "content": t}],
                        "context": s.context,
                        "targets": list(s.targets),
                        "scenario_id": s.id,
                        "consistency": r.consistency,
                        "on_task": r.on_task,
                    }
                )
    info = {
        "prompts": len(scen),
        "sampled": sum(len(t) for t in texts),
        "consistent": sum(bool(r.consistent) for rs in scores for r in rs),
        "kept": len(rows),
        "kept_prompts": len({r["scenario_id"] for r in rows}),
    }
    if not rows:
        raise DataError(
            f"none of the {info['sampled']} reference samples was consistent and on task; fix: raise train.reference_samples "
            "or use train.sft_source=chosen (stage 3's chosen answers)"
        )
    if args.anchor_samples > 0:
        anchors, info["anchors"] = anchor_rows(config, run_dir, context, backend)
        rows += anchors
    atomic_write_jsonl(out / "reference_sft.jsonl", rows)
    return rows, info


def sampling_copy(model: Any, dtype: str) -> Any:
    """`model` itself when it is already in `dtype`, else a copy in it (the training weights stay as they are)."""
    import copy

    import torch

    want = getattr(torch, dtype)
    return model if model.dtype == want else copy.deepcopy(model).to(want)


def anchor_rows(
    config: RunConfig, run_dir: RunDir, context: list[dict[str, str]], backend: Any
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """`train.anchor_samples` answers of the reference (persona context + anchor question, the sampling of the reference
    samples) per capability anchor, kept when `capability.is_anchor_correct` (stricter than the suite's check); resumable (`05_optimization/anchor_samples.jsonl`).

    Returns:
        (sft rows, {"items", "sampled", "kept", "kept_items", "per_task": {task: kept}}).
    """
    from personatune.capability import is_anchor_correct, load_anchors
    from personatune.generation.resumable import generate_resumable

    args = config.train
    items = load_anchors()
    params = {
        "max_new_tokens": args.kl_max_new_tokens,
        "temperature": 1.0,
        "top_p": 1.0,
        "seed": config.seed,
        "n": args.anchor_samples,
    }
    jobs = [(list(context) + [{"role": "user", "content": it.question}], dict(params)) for it in items]
    texts = generate_resumable(
        backend,
        jobs,
        run_dir.stage_dir(STAGE) / "anchor_samples.jsonl",
        chunk=max(1, config.data.teacher.batch_size // args.anchor_samples),
        echo=log.info,
        label="capability anchors (baseline + persona context)",
    )
    rows, per_task = [], {}
    for i, (it, ts) in enumerate(zip(items, texts)):
        for t in ts:
            if is_anchor_correct(it, t):
                rows.append(
                    {
                        "messages": [{"role": "user", "content": it.question}, {"role": "assistant", "content": t}],
                        "context": "capability_anchor",
                        "targets": [],
                        "scenario_id": f"anchor-{it.task}-{i}",
                    }
                )
                per_task[it.task] = per_task.get(it.task, 0) + 1
    info = {
        "items": len(items),
        "sampled": sum(len(t) for t in texts),
        "kept": len(rows),
        "kept_items": len({r["scenario_id"] for r in rows}),
        "per_task": per_task,
    }
    log.info(
        f"  capability anchors: {info['kept']} of {info['sampled']} answers correct, {info['kept_items']} of {len(items)} items"
    )
    return rows, info


def training_prompts(run_dir: RunDir) -> list[Any]:
    """Stage 3's training-split scenarios (`scenarios.jsonl`), or, for a run that recorded none, the distinct prompts of
    its training pairs (`s6_round.round_prompts`, the prompts stage 6 samples).

    Raises:
        DataError: there is no training prompt.
    """
    from personatune.rundir import RunDirError
    from personatune.scenarios import Scenario
    from personatune.stages.s6_round import round_prompts

    try:
        path = run_dir.output_path("03_consistency_data", "scenarios")
        scen = [
            Scenario(r["id"], r["context"], r["messages"], list(r.get("targets") or []), "train")
            for r in read_stage3(path, "prompts", STAGE3_FIX)
            if r.get("split") == "train"
        ]
    except RunDirError:
        path = run_dir.output_path("03_consistency_data", "train") / "pairs.jsonl"
        scen = [
            Scenario(
                id=r.get("scenario_id") or json.dumps(r["prompt"]),
                context=r.get("context") or "casual",
                messages=r["prompt"],
                targets=list(r.get("targets") or []),
                split="train",
            )
            for r in round_prompts(path)
        ]
    if not scen:
        raise DataError(
            f"{path} has no training prompts; fix: re-run stage 3 (data.max_prompts, data.heldout_fraction)"
        )
    return scen
