"""Stage 6's round: sample the current policy, keep and pair, train, measure, save (`train_round`); round 0 is the
stage-5 model measured alike (`measure_round_0`). `stages/s6_iterations.py` runs the rounds and decides with
`personatune.expert_iteration`; the steps are numbered as in its docstring.

Multi-process: every rank trains; the main rank alone samples, scores, evaluates, saves and deletes, inside
`with ranks.on_main()` blocks (personatune.ranks), so every rank returns the same round record.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from personatune.config import RunConfig
from personatune.errors import ConfigError, DataError
from personatune.expert_iteration import build_pairs, kept, round_key, round_row
from personatune.ranks import Ranks
from personatune.records import RecordError, RoundResult, parse_record, write_record
from personatune.rundir import atomic_write_json, atomic_write_jsonl, file_hash, read_jsonl
from personatune.stage3_rows import read_stage3
from personatune.stages.optimization_common import (
    STAGE3_FIX,
    DriftReference,
    OptimizeInputs,
    build_trainer,
    load_checkpoint,
    load_policy,
    select_in_budget,
    training_seed,
)
from personatune.training import EvalResult, EvalSet, EvalSettings, evaluate_policy

SAMPLES = "samples.json"
"""A measured round's responses (`write_samples`); stage 5 writes its own final measurement's under the same name."""


def load_finished_round(rdir: Path, key: str, name: str = "result.json") -> dict[str, Any] | None:
    """A finished round's record (`rdir/name`), if it fits `records.RoundResult`, its key matches and its model (when
    it has one) is intact; else None (the round is redone)."""
    p = rdir / name
    try:
        rec = json.loads(p.read_text(encoding="utf-8"))
        parse_record(RoundResult, rec, f"{rdir.name}/{name}")
    except (OSError, json.JSONDecodeError, RecordError):
        return None
    if rec.get("key") != key:
        return None
    if rec.get("model"):  # a round that trained: its saved model must be the one recorded
        model = rdir / "model"
        if not model.is_dir() or file_hash(model) != rec.get("model_hash"):
            return None
    return rec


@dataclass
class RoundSetup:
    """What every round shares, built once by `run` (the same on every rank, except `scorer`).

    Attributes:
        config: the run config.
        inputs: the stage-5/6 inputs (persona, held-out rows, baseline, persona context).
        items: the round prompts: one stage-3 training scenario each, no system turn.
        scorer: the persona scorer; None on the ranks other than the main one (they never score).
        small, full: the held-out EvalSets of in-round evals and of a round's final measurement.
        settings: the eval decoding, the same in every round (as stage 5), so rounds differ only by their weights.
        ranks: this process among the launched ones.
        echo: one console and log line per event (the main rank's).
    """

    config: RunConfig
    inputs: OptimizeInputs
    items: list[dict[str, Any]]
    scorer: Any
    small: EvalSet
    full: EvalSet
    settings: EvalSettings
    ranks: Ranks
    echo: Callable[[str], None]

    def evaluate(self, model: Any, reference: Any, tokenizer: Any, evalset: EvalSet) -> EvalResult:
        """`training.evaluate_policy` with this stage's scorer and settings (main rank only)."""
        return evaluate_policy(model, reference, tokenizer, evalset, self.scorer, self.settings)


def round_prompts(pairs_path: Path) -> list[dict[str, Any]]:
    """The round prompts: the stage-3 training scenarios, one per scenario (first pair row of each).

    Raises:
        DataError: a prompt has a system turn, or the file has no pairs.
    """
    items: dict[str, dict[str, Any]] = {}
    for i, r in enumerate(read_stage3(pairs_path, "pairs", STAGE3_FIX), 1):
        if any(m.get("role") == "system" for m in r.get("prompt", [])):
            raise DataError(
                f"{pairs_path} line {i}: the prompt has a system turn; fix: remove system turns (the persona must come from the weights)"
            )
        items.setdefault(r.get("scenario_id") or json.dumps(r["prompt"]), r)
    if not items:
        raise DataError(f"{pairs_path} has no pairs; fix: {STAGE3_FIX}")
    return list(items.values())


def write_samples(rdir: Path, full: EvalSet, ev: EvalResult) -> None:
    """`rdir/samples.json`: the scored responses of a round's measurement, one per held-out prompt, in order."""
    rdir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        rdir / SAMPLES,
        [
            {"id": i, "context": c, "prompt": p[-1]["content"], "response": x, "consistent": r.consistent}
            for i, c, p, x, r in zip(full.ids, full.contexts, full.prompts, ev.texts, ev.records)
        ],
    )


LONE_EVAL_SKIPPED = (
    "the round's last step, its only candidate: no in-round eval (train.eval_every is 0 or >= the round's steps); "
    "measured on all held-out prompts"
)


def lone_end_eval(a: Any) -> bool:
    """Whether a round's in-round evals (TrainArgs `a`) would be one eval at its last step: no step-0 eval, no
    time-based evals, a known step count and `eval_every` 0 or >= it. Such an eval measures on a few prompts the model
    the round's final measurement then measures on all of them, and selects among one candidate: it is skipped
    (~45 s per round on the main job's data), and nothing a gate reads changes."""
    return (
        not a.eval_at_start
        and a.eval_every_seconds is None
        and a.max_steps is not None
        and (not a.eval_every or a.eval_every >= a.max_steps)
    )


def measure_round_0(setup: RoundSetup, s5_model: Path, rdir: Path, s5_eval: Path | None = None) -> dict[str, Any]:
    """Main rank: round 0's record (written to `rdir/result.json`): the stage-5 model measured exactly like the rounds.

    Taken, in order, from an earlier run of this stage, or from stage 5's own final measurement (`s5_eval`,
    `05_optimization/final_eval.json`: the same prompts, decoding, seed, reference and scorer), when the key (config
    and model hash) matches; otherwise measured here.
    """
    from personatune import models

    config, g = setup.config, setup.config.gates.optimization
    start_hash = file_hash(s5_model)
    key = round_key(config, 0, start_hash)
    rec = load_finished_round(rdir, key)
    if rec is not None:
        setup.echo("round 0: measured earlier, skipped")
        return rec
    rec = None if s5_eval is None else load_finished_round(s5_eval.parent, key, s5_eval.name)
    if rec is not None:  # its key holds the saved model's hash: a match is this model
        setup.echo("round 0: stage 5's final measurement of the same model and settings, reused")
        rdir.mkdir(parents=True, exist_ok=True)
        if (s5_eval.parent / SAMPLES).is_file():  # its responses (stage 7 may take them over with the KL figures)
            shutil.copyfile(s5_eval.parent / SAMPLES, rdir / SAMPLES)
        else:  # none to hand on: no earlier run's responses may stand in for them
            (rdir / SAMPLES).unlink(missing_ok=True)
        write_record(rdir / "result.json", RoundResult, rec)
        return rec
    t0 = time.time()
    policy, tok = load_policy(s5_model, config, setup.inputs.baseline, for_training=False)
    reference, _ = models.load_configured_model(setup.inputs.baseline, config.model)
    ev = setup.evaluate(policy, reference, tok, setup.full)
    write_samples(rdir, setup.full, ev)
    rec = {
        "round": 0,
        "key": key,
        "row": round_row(0, ev, g, 0, 0, time.time() - t0),
        "eval": ev.to_record(),
        "model": None,
        "model_hash": start_hash,
    }
    write_record(rdir / "result.json", RoundResult, rec)
    return rec


def sample_and_pair(
    setup: RoundSetup, n: int, rdir: Path, policy: Any, tok: Any, seed: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Main rank, steps 1-3: sample k responses per round prompt from the current policy, score them, build and write
    the new pairs (`rdir/pairs.jsonl`).

    Returns:
        (the round's sampling record: sample consistency, yield, samples; the pairs).
    """
    from personatune.generation.hf import HFBackend

    it, t = setup.config.iterations, setup.config.data.teacher
    t0 = time.time()
    # A crashed attempt of this round must not mix in.
    for stale in ("checkpoints", "trainer", "metrics.jsonl", "model"):
        p = rdir / stale
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    rdir.mkdir(parents=True, exist_ok=True)
    picked = list(setup.items)
    random.Random(seed).shuffle(picked)  # a different subset each round when iterations.max_prompts caps it
    picked = picked[: it.max_prompts] if it.max_prompts else picked
    k = it.samples_per_prompt
    setup.echo(f"round {n}/{it.rounds}: sampling {len(picked)} prompts x {k} …")
    backend = HFBackend(policy, tok, batch_size=max(1, setup.config.train.eval_batch_size // k))
    samples = backend.generate(
        [x["prompt"] for x in picked],
        max_new_tokens=t.max_new_tokens,
        temperature=it.temperature,
        top_p=t.top_p,
        n=k,
        seed=seed,
    )
    flat = [s for per in samples for s in per]
    recs = setup.scorer.score(
        flat,
        prompts=[x["prompt"][-1]["content"] for x in picked for _ in range(k)],
        contexts=[x.get("context") for x in picked for _ in range(k)],
        targets=[list(x.get("targets") or []) for x in picked for _ in range(k)],
    )
    scores = [recs[i * k : (i + 1) * k] for i in range(len(picked))]
    t_sample = time.time() - t0
    pairs = build_pairs(picked, samples, scores, it.min_margin)
    atomic_write_jsonl(rdir / "pairs.jsonl", pairs)
    sample_rate = sum(r.consistent for r in recs) / max(1, len(recs))
    yield_rate = sum(kept(r) for r in recs) / max(1, len(recs))
    setup.echo(
        f"round {n}/{it.rounds}: {len(flat)} samples in {t_sample:.1f}s, {sample_rate:.1%} consistent, {yield_rate:.1%} kept (consistent "
        f"and on task) -> {len(pairs)} {'pairs' if it.algorithm == 'dpo' else 'answers'} (min margin {it.min_margin:g})"
    )
    return {"round": n, "sample_consistency": sample_rate, "yield": yield_rate, "samples": len(flat)}, pairs


def train_round(setup: RoundSetup, n: int, rdir: Path, start: Path) -> dict[str, Any]:
    """Run round n from the model in `start`; save its model to `rdir/model` and return its record (not yet written).

    Multi-process: every rank loads the policy and trains; the main rank alone samples, scores, writes the pairs,
    selects, evaluates, saves and deletes; the others read the pairs it wrote and get its record by broadcast
    (`Ranks.on_main`), so every rank returns the same record. The round's models are freed when it returns.

    Raises:
        ConfigError: from the trainer builder (train.beta 0 while the KL gate exists), or a launch that shards
            the parameters (ZeRO-3, FSDP).
    """
    from datasets import Dataset

    from personatune import models, training

    config, ranks, echo = setup.config, setup.ranks, setup.echo
    it, args, g = config.iterations, config.train, config.gates.optimization
    seed = training_seed(config) + n  # new samples each round, reproducible
    t0 = time.time()
    policy, tok = load_policy(start, config, setup.inputs.baseline, for_training=True)

    # 1-3 (main rank). Sample, score, build the new pairs; the other ranks read them from disk.
    pairs: list[dict[str, Any]] = []
    with ranks.on_main() as shared:
        if shared.here:
            shared.value, pairs = sample_and_pair(setup, n, rdir, policy, tok, seed)
    base = shared.value
    if not ranks.is_main:
        pairs = read_jsonl(rdir / "pairs.jsonl", fix="re-run the same command (the round is redone)")
    if not pairs:
        return base | {
            "row": {
                "round": n,
                "pairs": 0,
                "steps": 0,
                "kl": None,
                "yield": base.get("yield"),
                "passed": False,
                "kept": False,
                "seconds": round(time.time() - t0, 2),
            }
        }

    # 4 (every rank). Train from the current policy against the fixed baseline reference (explicit: under LoRA the
    # policy with adapters off would be round n-1, not the baseline).
    reference, _ = models.load_configured_model(setup.inputs.baseline, config.model)
    reference.eval().requires_grad_(False)
    # No step-0 eval (the start, round n-1, is measured in full already) and no wall-clock budget: a round is bounded
    # by iterations.max_steps.
    rargs = args.model_copy(
        update={
            "algorithm": it.algorithm,
            "max_steps": it.max_steps or args.max_steps,
            "eval_at_start": False,
            "max_train_seconds": None,
            "eval_every_seconds": None,
        }
    )
    if it.algorithm == "dpo":
        ds = Dataset.from_list(
            [{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs]
        )
    else:
        ds = Dataset.from_list([{"prompt": p["prompt"], "completion": p["chosen"]} for p in pairs])
    if it.algorithm == "gkd":
        from personatune.training.distill import gkd_dataset

        # The round's samples are data.teacher.max_new_tokens long (sample_and_pair).
        ds = gkd_dataset(tok, ds, setup.inputs.context, config.data.teacher.max_new_tokens)
    # The callback hands evaluate TRL's view of the reference (adapters off = round n-1); the gate's reference is the
    # baseline. It evaluates on the main rank only and broadcasts the KL controller's decision to the others.
    in_round_evals = not lone_end_eval(rargs)
    cb = training.PersonaEvalCallback(
        lambda m, _r: setup.evaluate(m, reference, tok, setup.small),
        rdir,
        rargs,
        max_kl=g.max_kl,
        echo=echo,
    )
    trainer = build_trainer(
        policy,
        tok,
        ds,
        rargs,
        training.TrainerRun(rdir / "trainer", seed, [cb.hooks()] if in_round_evals else []),
        max_kl=g.max_kl,
        reference=DriftReference(setup.inputs.context, reference),
    )
    cb.bind(trainer)
    if cb.sharded:  # the same launch config on every rank, so every rank refuses alike
        raise ConfigError(
            "stage 6 under ZeRO-3/FSDP: the parameters are sharded, so the main rank cannot sample, evaluate, merge and save a "
            "round alone; fix: run stage 6 in one process or with configs/accelerate/cpu_2proc.yaml (DDP) or deepspeed_zero2.yaml"
        )
    t1 = time.time()
    trainer.train()
    steps = trainer.state.global_step
    acc = trainer.accelerator
    launch = {
        "num_processes": acc.num_processes,
        "distributed_type": str(acc.distributed_type).split(".")[-1],
        "global_batch": rargs.per_device_batch_size * rargs.grad_accum * acc.num_processes,
        "epoch": trainer.state.epoch,
    }

    # 5 (main rank). Select, merge, evaluate on all held-out prompts against the baseline, save the model; the caller
    # writes the record.
    with ranks.on_main() as shared:
        if shared.here:
            echo(
                f"round {n}/{it.rounds}: {steps} {it.algorithm.upper()} steps on {len(pairs)} {'pairs' if it.algorithm == 'dpo' else 'answers'} "
                f"in {time.time() - t1:.1f}s"
                + (f" ({acc.num_processes} processes, {launch['distributed_type']})" if acc.num_processes > 1 else "")
            )
            sel = select_in_budget(cb.history, g) if in_round_evals else None
            if sel is not None and sel.record is not None:
                load_checkpoint(trainer.model, rdir / sel.record["checkpoint"], args.peft)
            final = acc.unwrap_model(trainer.model)
            if args.peft == "lora":  # the next round trains a fresh LoRA on top, so rounds are saved merged
                final = final.merge_and_unload()
            ev = setup.evaluate(final, reference, tok, setup.full)
            models.save_model(final, tok, rdir / "model")
            write_samples(rdir, setup.full, ev)
            # The selected checkpoint is merged into model/: one model per round on disk.
            shutil.rmtree(rdir / "checkpoints", ignore_errors=True)
            shutil.rmtree(rdir / "trainer", ignore_errors=True)
            row = round_row(n, ev, g, len(pairs), steps, time.time() - t0) | {"yield": base.get("yield")}
            selection = (
                {"reason": sel.reason, "within_budget": sel.within_budget, "step": (sel.record or {}).get("step")}
                if sel is not None
                else {"reason": LONE_EVAL_SKIPPED, "within_budget": None, "step": steps}
            )
            shared.value = base | {
                "row": row,
                "eval": ev.to_record(),
                "selection": selection,
                "model": str(Path(rdir.name) / "model"),
                "model_hash": file_hash(rdir / "model"),
                "training": launch,
            }
    return shared.value
