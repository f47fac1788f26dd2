"""The final model's measurement, handed from stage 6 to stage 7 instead of being taken twice.

Stage 6 measures its kept model on every held-out prompt, with no system prompt: one sample per prompt at the eval
decoding (what the persona metrics score) and drift KL / persona shift on the model's own temperature-1 samples.
Stage 7 took the same two measurements of the same model again (85 s of sampling and the KL samples of 164 prompts on
the main job). Stage 6 now writes, beside its kept model,

    06_iterations/final_measurement.json   records `FinalMeasurement`: the texts, both KL results, and the
                                           fingerprint of what decided them (`fingerprint`)

and stage 7 reuses the texts (scored again by its own scorer) and the KL results when the fingerprint its config
gives is the recorded one and `06_iterations/model` is the folder that was measured (its hash); otherwise it samples
and measures the final model itself. What decides the measurement: the stage-1 baseline weights (the KL reference),
the `model` loading section, the decoding with its batch size (batching changes padding and the order in which the
sampler's random numbers are drawn), the KL sample length, the seed, the held-out prompts and the persona context.
Stages 5-6 sample with `train.eval_batch_size` and `train.seed` (the run seed when unset), stage 7 with the `eval:`
batch size and the run seed: with those equal the two measurements are the same computation, and
tests/stages/test_pipeline_e2e.py checks that stage 7 measuring again reproduces the reused figures.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from personatune.baseline_samples import baseline_identity, prompts_hash
from personatune.records import Record, RecordError, read_record, write_record
from personatune.rundir import RunDir, file_hash

STAGE = "06_iterations"
FILE = "final_measurement.json"


class FinalMeasurement(Record):
    """06_iterations/final_measurement.json: stage 6's measurement of its kept model, for stage 7.

    Attributes:
        fingerprint: what decided the measurement (`fingerprint`).
        model_hash: `rundir.file_hash` of 06_iterations/model when it was written.
        texts: one response per held-out prompt, in the prompts' order, at the eval decoding.
        kl, persona_shift: `KLResult.to_dict()` of drift KL and of persona shift (nats/token).
    """

    fingerprint: dict[str, Any] = Field(default_factory=dict)
    model_hash: str | None = None
    texts: list[str] = Field(default_factory=list)
    kl: dict[str, Any] = Field(default_factory=dict)
    persona_shift: dict[str, Any] = Field(default_factory=dict)


@dataclass
class Reused:
    """A measurement stage 7 may take over: the texts and the DriftResult (context_tokens left 0)."""

    texts: list[str]
    drift: Any


def fingerprint(
    config: Any,
    run_dir: RunDir,
    rows: list[dict[str, Any]],
    decoding: dict[str, Any],
    seed: int,
    context: list[dict[str, str]],
) -> dict[str, Any]:
    """What decides a measurement of a model on the held-out prompt `rows`.

    Args:
        config: the run config (its `model` section and train.kl_max_new_tokens).
        run_dir: the run directory (its stage-1 record identifies the baseline weights, the KL reference).
        rows: held-out prompt rows in measurement order (their ids and messages are hashed).
        decoding: max_new_tokens, temperature, top_p and batch_size of the scored samples (the KL samples use the
            same batch size).
        seed: the sampling seed of both sample sets.
        context: the persona context of drift KL.
    """
    return {
        "baseline": baseline_identity(run_dir),
        "model": config.model.model_dump(mode="json"),
        "decoding": {k: decoding[k] for k in ("max_new_tokens", "temperature", "top_p", "batch_size")},
        "kl_max_new_tokens": config.train.kl_max_new_tokens,
        "seed": seed,
        "prompts": prompts_hash(rows),
        "context": hashlib.sha256(json.dumps(context, sort_keys=True).encode()).hexdigest()[:16],
    }


def write(run_dir: RunDir, fp: dict[str, Any], texts: list[str], eval_record: dict[str, Any]) -> None:
    """Write stage 6's measurement of its kept model (call after 06_iterations/model is in place).

    Args:
        fp: `fingerprint` of the settings the measurement used.
        texts: the scored samples, one per prompt.
        eval_record: the round's `EvalResult.to_record()` (its `kl` and `persona_shift`).
    """
    out = run_dir.root / STAGE
    write_record(
        out / FILE,
        FinalMeasurement,
        {
            "fingerprint": fp,
            "model_hash": file_hash(out / "model"),
            "texts": texts,
            "kl": eval_record["kl"],
            "persona_shift": eval_record["persona_shift"],
        },
    )


def discard(run_dir: RunDir) -> None:
    """Remove a measurement left by an earlier run of stage 6 (called before the stage writes its model)."""
    (run_dir.root / STAGE / FILE).unlink(missing_ok=True)


def reusable(run_dir: RunDir, fp: dict[str, Any], model_dir: Path, n: int) -> Reused | None:
    """Stage 6's measurement of `model_dir`, when it was taken with the fingerprint `fp` on n prompts; else None."""
    from personatune.kl import DriftResult, KLResult

    try:
        rec = read_record(FinalMeasurement, run_dir.root / STAGE / FILE)
    except RecordError:
        return None
    if rec.fingerprint != fp or len(rec.texts) != n or not rec.kl or not rec.persona_shift:
        return None
    if rec.model_hash != file_hash(model_dir):
        return None
    return Reused(list(rec.texts), DriftResult(KLResult.from_dict(rec.kl), KLResult.from_dict(rec.persona_shift)))
