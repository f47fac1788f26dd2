"""The stage-1 baseline's responses to the held-out prompts, and when they may be reused.

Stage 4 samples the baseline on every held-out prompt (no system prompt, the eval decoding, the run seed) and
writes two files side by side:

    04_evaluation/baseline_samples.json    one {id, context, prompt, response} per prompt, in order
    04_evaluation/baseline_sampling.json   records.SamplingFingerprint: what determined those samples

Stages 5-7 need the same responses (on-task retention, the "before" of stage 7). They reuse stage 4's when the
fingerprint the config gives now equals the recorded one (`reusable_baseline_texts`), and sample again otherwise.
The fingerprint is data, so this module needs neither the pipeline nor another stage to decide (before it,
stage 7 recomputed stage 4's cache key by importing pipeline.py: an import cycle).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from personatune.config import RunConfig
from personatune.records import RecordError, SamplingFingerprint, read_record, write_record
from personatune.rundir import RunDir, atomic_write_json, file_hash

STAGE = "04_evaluation"
SAMPLES = "baseline_samples.json"
FINGERPRINT = "baseline_sampling.json"


def decoding(config: RunConfig) -> dict[str, Any]:
    """The decoding of every baseline/final comparison in stages 4 and 7: the `eval:` section (each key left unset
    there is data.teacher's, what these stages used before the section existed)."""
    e = config.eval
    return {
        "max_new_tokens": e.max_new_tokens,
        "temperature": e.temperature,
        "top_p": e.top_p,
        "batch_size": e.batch_size,
    }


def prompts_hash(prompts: list[dict[str, Any]]) -> str:
    """Hash of held-out prompt rows (ids and messages, in order): which prompts a sampling or measurement ran on."""
    blob = json.dumps([[p.get("id"), p.get("messages")] for p in prompts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def baseline_identity(run_dir: RunDir) -> dict[str, Any]:
    """Stage 1's finish time and output hashes: they identify the baseline weights (a re-made baseline changes both)."""
    rec1 = run_dir.record("01_baseline")
    return {"finished": rec1.finished, "outputs": {k: v.get("hash") for k, v in sorted(rec1.outputs.items())}}


def sampling_fingerprint(config: RunConfig, run_dir: RunDir, prompts: list[dict[str, Any]]) -> SamplingFingerprint:
    """What decides the baseline's responses to `prompts` under this config (without the samples' hash).

    Args:
        config: the run config (model loading, decoding, seed).
        run_dir: the run directory (its stage-1 record identifies the baseline weights).
        prompts: the held-out prompt rows, in sampling order.

    Returns:
        The fingerprint; `samples` is left None (set when the samples are written).
    """
    return SamplingFingerprint(
        baseline=baseline_identity(run_dir),
        model=config.model.model_dump(mode="json"),
        decoding=decoding(config),
        seed=config.seed,
        prompts=prompts_hash(prompts),
    )


def sample_eval(model: Any, tok: Any, convs: list[list[dict[str, str]]], config: RunConfig, what: str) -> list[str]:
    """One response per conversation at the eval decoding (`decoding(config)`) and the run seed: every baseline/final
    comparison of stages 4 and 7 samples through here. `what` names the work in the progress line."""
    from personatune.generation.hf import HFBackend
    from personatune.progress import EtaLine

    d = decoding(config)
    outs = HFBackend(model, tok, batch_size=d["batch_size"], progress=EtaLine(what)).generate(
        convs, max_new_tokens=d["max_new_tokens"], temperature=d["temperature"], top_p=d["top_p"], n=1, seed=config.seed
    )
    return [o[0] for o in outs]


def sample_baseline(config: RunConfig, run_dir: RunDir, prompts: list[dict[str, Any]]) -> list[str]:
    """The stage-1 baseline's response to each held-out prompt row: no system prompt, `decoding(config)`, the run seed."""
    # Imported here: they load torch, and the report reads this module's neighbours without it.
    from personatune import models
    from personatune.stages.s1_baseline import baseline_model_path

    model, tok = models.load_configured_model(baseline_model_path(run_dir), config.model)
    convs = [p["messages"] for p in prompts]
    return sample_eval(model, tok, convs, config, f"sampling the baseline on {len(prompts)} held-out prompts")


def write_baseline_samples(config: RunConfig, run_dir: RunDir, prompts: list[dict[str, Any]], texts: list[str]) -> None:
    """Write stage 4's baseline_samples.json, then its fingerprint (last: a crash between the two leaves no fingerprint,
    so the samples are not reused)."""
    out = run_dir.stage_dir(STAGE)
    atomic_write_json(
        out / SAMPLES,
        [
            {"id": p["id"], "context": p["context"], "prompt": p["messages"][-1]["content"], "response": x}
            for p, x in zip(prompts, texts)
        ],
    )
    fp = sampling_fingerprint(config, run_dir, prompts)
    fp.samples = file_hash(out / SAMPLES)
    write_record(out / FINGERPRINT, SamplingFingerprint, fp.to_json())


def reusable_baseline_texts(config: RunConfig, run_dir: RunDir, prompts: list[dict[str, Any]]) -> list[str] | None:
    """Stage 4's baseline responses, when they provably came from the same weights, prompts, model loading and decoding.

    Reused only if stage 4's recorded fingerprint equals the one this config gives now and the samples file is
    the one it describes. A run directory written before fingerprints has none: its baseline is sampled again.

    Returns:
        One response per prompt, or None (the caller samples again).
    """
    out = run_dir.root / STAGE
    try:
        recorded = read_record(SamplingFingerprint, out / FINGERPRINT)
        if recorded.samples is None or recorded.samples != file_hash(out / SAMPLES):
            return None
        rows = json.loads((out / SAMPLES).read_text(encoding="utf-8"))
    except (RecordError, OSError, json.JSONDecodeError):
        return None
    if not recorded.same_sampling(sampling_fingerprint(config, run_dir, prompts)):
        return None
    if (
        not isinstance(rows, list)
        or len(rows) != len(prompts)
        or not all(isinstance(r, dict) and isinstance(r.get("response"), str) for r in rows)
    ):
        return None
    return [r["response"] for r in rows]
