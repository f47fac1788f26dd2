"""Stage 6 — iterative training as expert iteration: sample the policy, keep what is in persona and on task, train on it.

Round 0 is the stage-5 model, measured like every round. Each round n = 1, 2, … then does, in order:

1. sample `iterations.samples_per_prompt` responses per stage-3 training prompt (no system prompt) from the
   current policy = the model of round n-1;
2. score them with the persona scorer (stage 4's evaluator, as in stage 5) and keep the answers that are
   consistent AND on task (`kept`); the kept share of all samples is the round's `yield` (rounds.md);
3. per prompt, the best kept answer (chosen) against the worst sample (rejected), when their consistency
   differs by at least `iterations.min_margin`;
4. train from the current policy (a fresh LoRA on top of it, or full) with `iterations.algorithm`: 'dpo' on the
   pairs, its reference log-probs those of the FIXED stage-1 baseline given the persona context (the drift-KL
   reference, METRICS.md), or 'sft' on the chosen answers (distillation of the policy's own best). In-round evals,
   the KL-budget controller and checkpoint selection are those of stage 5 (`optimization_common`);
5. evaluate the round's model on all held-out prompts: drift KL against the persona-prompted baseline (persona
   shift beside it) via personatune.kl, consistency, adherence, style variance, on-task — the stage-5 gate metrics.

Stop at the round budget, when a round does not improve held-out consistency within the KL budget by more than
`iterations.min_improvement`, when the best round passes every gate with `iterations.stop_margin` room, or when
a round finds no new pairs. Keep the best round (`select_round`); `06_iterations/model` is its model (a copy of
the stage-5 model when round 0 is kept). The rules are pure functions in `personatune.expert_iteration`.
Resumable: a round is finished when `round_<n>/result.json` is written (last, atomically, after its model); on
re-run a finished round whose key (config, start model) and model hash still match is not redone. Outputs: model,
rounds (rounds.jsonl), metrics (metrics.json); also rounds.md.

Multi-process (accelerate launch / torchrun): every rank trains each round's DPO; the main rank alone samples,
scores, builds and writes the pairs, evaluates, selects, saves and deletes (`with ranks.on_main()`, personatune.ranks).
The other ranks wait in a broadcast for its result (or its error, which they raise too), read the round's pairs.jsonl
and model from disk, and return the StageResult the main rank wrote to `06_iterations/result.json`, so every rank takes
the same decisions (round skipped as done, stop reason, number of rounds) and leaves the stage together.
"""

from __future__ import annotations

import gc
import json
import random
import shutil
import time
import uuid
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

from personatune.config import RunConfig
from personatune.errors import ConfigError, DataError
from personatune.expert_iteration import (build_pairs, improved, kept, round_key, round_passes, round_row, select_round, stop_reason,
                                          within_budget)
from personatune.gates import GateReport, Measurement, fmt_metric
from personatune.ranks import Ranks
from personatune.rundir import RunDir, atomic_write_json, atomic_write_jsonl, atomic_write_text, file_hash, read_jsonl
from personatune.stage import StageResult
from personatune.stages.optimization_common import (STAGE3_FIX, DriftReference, OptimizeInputs, baseline_on_task, build_trainer, eval_settings,
                                                    load_checkpoint, load_inputs, load_policy, optimization_gate, select_in_budget,
                                                    training_seed)

__all__ = ["ROW_KEYS", "STAGE", "build_pairs", "final_model_path", "improved", "iteration_gate", "kept", "round_passes", "rounds_table", "run",
           "select_round", "stop_reason", "within_budget"]

STAGE = "06_iterations"
ROW_KEYS = ("round", "kl", "kl_stderr", "persona_shift", "yield", "consistency", "consistency_ci", "adherence", "style_variance", "on_task", "pairs", "steps", "passed", "kept", "seconds")


def final_model_path(run_dir: RunDir) -> Path:
    """The model later stages use: stage 6's kept model."""
    return run_dir.output_path(STAGE, "model")


# --- round records on disk --------------------------------------------------------------------------
def _load_done(rdir: Path, key: str) -> dict[str, Any] | None:
    """A finished round's record, if its key matches and its model (when it has one) is intact; else None."""
    p = rdir / "result.json"
    try:
        rec = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if rec.get("key") != key:
        return None
    if rec.get("model"):  # a round that trained: its saved model must be the one recorded
        model = rdir / "model"
        if not model.is_dir() or file_hash(model) != rec.get("model_hash"):
            return None
    return rec


def _copy_model(src: Path, dst: Path, card: str) -> None:
    """Copy a model folder to `dst` with a new card, via a sibling temp folder renamed into place (never half-written)."""
    tmp = dst.with_name(f".tmp-{dst.name}-{uuid.uuid4().hex[:8]}")
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("README.md"))
    atomic_write_text(tmp / "README.md", card)
    if dst.exists():
        old = dst.with_name(f".tmp-old-{dst.name}-{uuid.uuid4().hex[:8]}")
        dst.rename(old)
        tmp.rename(dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(dst)



# --- one round ----------------------------------------------------------------------------------------
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
    small: Any
    full: Any
    settings: Any
    ranks: Ranks
    echo: Callable[[str], None]

    def evaluate(self, model: Any, reference: Any, tokenizer: Any, evalset: Any) -> Any:
        """`training.evaluate_policy` with this stage's scorer and settings (main rank only)."""
        from personatune.training import evaluate_policy

        return evaluate_policy(model, reference, tokenizer, evalset, self.scorer, self.settings)


def _say(ranks: Ranks, run_dir: RunDir, line: str) -> None:
    if ranks.is_main:  # one console line and one log line per event, whatever the number of processes
        print(line, flush=True)
        run_dir.log(line)


def round_prompts(pairs_path: Path) -> list[dict[str, Any]]:
    """The round prompts: the stage-3 training scenarios, one per scenario (first pair row of each).

    Raises:
        DataError: a prompt has a system turn, or the file has no pairs.
    """
    items: dict[str, dict[str, Any]] = {}
    for i, r in enumerate(read_jsonl(pairs_path, fix=STAGE3_FIX), 1):
        if any(m.get("role") == "system" for m in r.get("prompt", [])):
            raise DataError(f"{pairs_path} line {i}: the prompt has a system turn; fix: remove system turns (the persona must come from the weights)")
        items.setdefault(r.get("scenario_id") or json.dumps(r["prompt"]), r)
    if not items:
        raise DataError(f"{pairs_path} has no pairs; fix: {STAGE3_FIX}")
    return list(items.values())


def measure_round_0(setup: RoundSetup, s5_model: Path, rdir: Path) -> dict[str, Any]:
    """Main rank: round 0's record (written to `rdir/result.json`): the stage-5 model measured exactly like the rounds,
    or the record of an earlier run when its key and model still match."""
    from personatune import models

    config, g = setup.config, setup.config.gates.optimization
    start_hash = file_hash(s5_model)
    key = round_key(config, 0, start_hash)
    rec = _load_done(rdir, key)
    if rec is not None:
        setup.echo("round 0: measured earlier, skipped")
        return rec
    t0 = time.time()
    policy, tok = load_policy(s5_model, config, setup.inputs.baseline, for_training=False)
    reference, _ = models.load_configured_model(setup.inputs.baseline, config.model)
    ev = setup.evaluate(policy, reference, tok, setup.full)
    rec = {"round": 0, "key": key, "row": round_row(0, ev, g, 0, 0, time.time() - t0), "eval": ev.to_record(), "model": None, "model_hash": start_hash}
    atomic_write_json(rdir / "result.json", rec)
    return rec


def sample_and_pair(setup: RoundSetup, n: int, rdir: Path, policy: Any, tok: Any, seed: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Main rank, steps 1-3: sample k responses per round prompt from the current policy, score them, build and write
    the new pairs (`rdir/pairs.jsonl`).

    Returns:
        (the round's sampling record: sample consistency, yield, samples; the pairs).
    """
    from personatune.generation.hf import HFBackend

    it, t = setup.config.iterations, setup.config.data.teacher
    t0 = time.time()
    for stale in ("checkpoints", "trainer", "metrics.jsonl", "model"):  # a crashed attempt of this round must not mix in
        p = rdir / stale
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    rdir.mkdir(parents=True, exist_ok=True)
    picked = list(setup.items)
    random.Random(seed).shuffle(picked)  # a different subset each round when iterations.max_prompts caps it
    picked = picked[: it.max_prompts] if it.max_prompts else picked
    k = it.samples_per_prompt
    setup.echo(f"round {n}/{it.rounds}: sampling {len(picked)} prompts x {k} …")
    backend = HFBackend(policy, tok, batch_size=max(1, setup.config.train.eval_batch_size // k))
    samples = backend.generate([x["prompt"] for x in picked], max_new_tokens=t.max_new_tokens, temperature=it.temperature, top_p=t.top_p, n=k,
                               seed=seed)
    flat = [s for per in samples for s in per]
    recs = setup.scorer.score(flat, prompts=[x["prompt"][-1]["content"] for x in picked for _ in range(k)],
                              contexts=[x.get("context") for x in picked for _ in range(k)],
                              targets=[list(x.get("targets") or []) for x in picked for _ in range(k)])
    scores = [recs[i * k:(i + 1) * k] for i in range(len(picked))]
    t_sample = time.time() - t0
    pairs = build_pairs(picked, samples, scores, it.min_margin)
    atomic_write_jsonl(rdir / "pairs.jsonl", pairs)
    sample_rate = sum(r.consistent for r in recs) / max(1, len(recs))
    yield_rate = sum(kept(r) for r in recs) / max(1, len(recs))
    setup.echo(f"round {n}/{it.rounds}: {len(flat)} samples in {t_sample:.1f}s, {sample_rate:.1%} consistent, {yield_rate:.1%} kept (consistent "
               f"and on task) -> {len(pairs)} {'pairs' if it.algorithm == 'dpo' else 'answers'} (min margin {it.min_margin:g})")
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
        return base | {"row": {"round": n, "pairs": 0, "steps": 0, "kl": None, "yield": base.get("yield"), "passed": False, "kept": False,
                               "seconds": round(time.time() - t0, 2)}}

    # 4 (every rank). Train from the current policy against the fixed baseline reference (explicit: under LoRA the
    # policy with adapters off would be round n-1, not the baseline).
    reference, _ = models.load_configured_model(setup.inputs.baseline, config.model)
    reference.eval().requires_grad_(False)
    # No step-0 eval (the start, round n-1, is measured in full already) and no wall-clock budget: a round is bounded
    # by iterations.max_steps.
    rargs = args.model_copy(update={"algorithm": it.algorithm, "max_steps": it.max_steps or args.max_steps, "eval_at_start": False,
                                    "max_train_seconds": None, "eval_every_seconds": None})
    if it.algorithm == "dpo":
        ds = Dataset.from_list([{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs])
    else:
        ds = Dataset.from_list([{"prompt": p["prompt"], "completion": p["chosen"]} for p in pairs])
    # The callback hands evaluate TRL's view of the reference (adapters off = round n-1); the gate's reference is the baseline.
    # It evaluates on the main rank only and broadcasts the KL controller's decision to the others.
    cb = training.PersonaEvalCallback(lambda m, _r: setup.evaluate(m, reference, tok, setup.small), rdir, rargs, max_kl=g.max_kl,
                                      echo=lambda s: echo(s.strip()))
    trainer = build_trainer(policy, tok, ds, rargs, training.TrainerRun(rdir / "trainer", seed, [cb.hooks()]), max_kl=g.max_kl,
                            reference=DriftReference(setup.inputs.context, reference))
    cb.bind(trainer)
    if cb.sharded:  # the same launch config on every rank, so every rank refuses alike
        raise ConfigError("stage 6 under ZeRO-3/FSDP: the parameters are sharded, so the main rank cannot sample, evaluate, merge and save a "
                          "round alone; fix: run stage 6 in one process or with configs/accelerate/cpu_2proc.yaml (DDP) or deepspeed_zero2.yaml")
    t1 = time.time()
    trainer.train()
    steps = trainer.state.global_step
    acc = trainer.accelerator
    launch = {"num_processes": acc.num_processes, "distributed_type": str(acc.distributed_type).split(".")[-1],
              "global_batch": rargs.per_device_batch_size * rargs.grad_accum * acc.num_processes, "epoch": trainer.state.epoch}

    # 5 (main rank). Select, merge, evaluate on all held-out prompts against the baseline, save the model; the record is written by the caller.
    with ranks.on_main() as shared:
        if shared.here:
            echo(f"round {n}/{it.rounds}: {steps} {it.algorithm.upper()} steps on {len(pairs)} {'pairs' if it.algorithm == 'dpo' else 'answers'} "
                 f"in {time.time() - t1:.1f}s" + (f" ({acc.num_processes} processes, {launch['distributed_type']})" if acc.num_processes > 1 else ""))
            sel = select_in_budget(cb.history, g)
            if sel.record is not None:
                load_checkpoint(trainer, rdir / sel.record["checkpoint"], args.peft)
            final = acc.unwrap_model(trainer.model)
            if args.peft == "lora":
                final = final.merge_and_unload()  # the next round trains a fresh LoRA on top, so rounds are saved merged
            ev = setup.evaluate(final, reference, tok, setup.full)
            models.save_model(final, tok, rdir / "model")
            full = setup.full
            atomic_write_json(rdir / "samples.json", [{"id": i, "context": c, "prompt": p[-1]["content"], "response": x, "consistent": r.consistent}
                                                      for i, c, p, x, r in zip(full.ids, full.contexts, full.prompts, ev.texts, ev.records)])
            shutil.rmtree(rdir / "checkpoints", ignore_errors=True)  # the selected one is merged into model/; keeps disk use to one model per round
            shutil.rmtree(rdir / "trainer", ignore_errors=True)
            row = round_row(n, ev, g, len(pairs), steps, time.time() - t0) | {"yield": base.get("yield")}
            selection = {"reason": sel.reason, "within_budget": sel.within_budget, "step": (sel.record or {}).get("step")}
            shared.value = base | {"row": row, "eval": ev.to_record(), "selection": selection, "model": str(Path(rdir.name) / "model"),
                                   "model_hash": file_hash(rdir / "model"), "training": launch}
    return shared.value


# --- the gate, the table, the card ------------------------------------------------------------------------------------------
def iteration_gate(config: RunConfig, kept: dict[str, Any], rows: list[dict[str, Any]], stop: str, reason: str,
                   baseline_on_task: Measurement | None = None) -> GateReport:
    """The stage-5 gate (same specs, `optimization_common.optimization_gate`) on the kept round, with a round-level diagnosis.

    Args:
        baseline_on_task: the baseline's on-task rate on the held-out prompts (for on-task retention); None fails that gate.
    """
    from personatune.training import EvalResult

    ev = EvalResult.from_record(kept["eval"])
    # Only the results (specs, values, intervals) and next steps are taken; the diagnosis is one about rounds. The kept
    # model was not chosen among checkpoints, so there is no selection to describe (None).
    g5 = optimization_gate(config, ev, None, [], baseline_on_task=baseline_on_task)
    k = kept["row"]["round"]
    diagnosis = [f"kept round {k} of {rows[-1]['round']} (stop: {stop}); {reason}"]
    row_key = {"kl_per_token": "kl", "consistency_rate": "consistency", "adherence": "adherence", "style_variance": "style_variance",
               "on_task_retention": "on_task"}
    for r in g5.results:
        if not r.passed:
            measured = [x for x in rows if x.get("kl") is not None]
            key = row_key[r.metric]
            per = ", ".join(f"r{x['round']} {x[key]:.3g}" if x.get(key) is not None else f"r{x['round']} n/a" for x in measured)
            state = "is inconclusive" if r.inconclusive else f"fails {r.direction} {r.threshold:g}"
            diagnosis.append(f"{r.metric} {fmt_metric(r.value, 4)} {state} in round {k}; per round ({key}): {per}" + (f" — {r.note}" if r.note else ""))
    steps = list(g5.next_steps)
    if stop == "no new pairs":
        steps.append("no sample was consistent enough to pair: lower iterations.min_margin or raise iterations.samples_per_prompt")
    return GateReport(STAGE, g5.results, diagnosis=diagnosis, next_steps=steps)


def rounds_table(rows: list[dict[str, Any]]) -> str:
    """The per-round metrics as a markdown table."""
    f = lambda v: "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = ["| " + " | ".join(ROW_KEYS) + " |", "|" + "---|" * len(ROW_KEYS)]
    for r in rows:
        ci = r.get("consistency_ci")
        lines.append("| " + " | ".join(f"{ci[0]:.3f}–{ci[1]:.3f}" if k == "consistency_ci" and ci else f(r.get(k)) for k in ROW_KEYS) + " |")
    return "\n".join(lines) + "\n"


def _card(spec: Any, kept: dict[str, Any], rows: list[dict[str, Any]], stop: str, reason: str, gate: GateReport, baseline: str) -> str:
    k = kept["row"]["round"]
    origin = ("This is a copy of the stage-5 model: " + ("no round was run (iterations.rounds=0)." if len(rows) == 1 else "no round improved on it.")
              if k == 0 else f"Round {k} of stage 6: DPO on pairs of its predecessor's own samples (best consistent vs worst), from round {k - 1}.")
    return "\n".join([f"# {spec.name} — persona model (personatune stage 6, round {k})", "", origin, "",
                      f"`kl` is drift KL (nats/token) against the fixed reference, the stage-1 baseline `{baseline}` given the persona context, in every "
                      f"round; `persona_shift` is the KL to the same baseline without it; `yield` is the share of the round's samples kept "
                      f"(consistent and on task); prompts carry no system prompt.",
                      "", f"Stop: {stop}. Kept: {reason}.", "", "## Rounds (held-out prompts)", "", rounds_table(rows), "## Gate", "", "```",
                      gate.summary(), "```", ""])



# --- the stage ------------------------------------------------------------------------------------------
def run(config: RunConfig, run_dir: RunDir) -> StageResult:
    """Run the rounds, keep the best, gate it, write the table and the kept model.

    Under accelerate launch / torchrun every rank runs this; see the module docstring for who does what.

    Raises:
        ConfigError: train.beta is 0 while the KL gate exists; a bad model.device; a sharded launch (ZeRO-3, FSDP).
        DataError: stage-3 data missing, empty, or with system prompts.
        RunDirError: an earlier stage has not finished.
    """
    import torch

    from personatune import training
    from personatune.scoring.factory import scorer_for_run

    it, args, g = config.iterations, config.train, config.gates.optimization
    if it.algorithm == "dpo":
        training.check_beta(args.beta, g.max_kl)
    ranks = Ranks.current(config, what=f"stage {STAGE}")
    out = run_dir.stage_dir(STAGE)
    if config.threads:
        torch.set_num_threads(config.threads)
    echo = partial(_say, ranks, run_dir)

    # 1. Inputs, through the manifest (read by every rank: the same files give every rank the same answer or error).
    inp = load_inputs(config, run_dir)
    items = round_prompts(inp.pairs_path)
    s5_model = run_dir.output_path("05_optimization", "model")
    scorer = None
    with ranks.on_main() as shared:  # the scorer scores on the main rank only
        if shared.here:
            scorer, shared.value = scorer_for_run(config, run_dir, inp.spec)
            echo(f"persona metrics scored by: {shared.value}")
    scorer_desc = shared.value
    setup = RoundSetup(config, inp, items, scorer, training.EvalSet.from_rows(inp.held_rows, args.kl_eval_prompts),
                       training.EvalSet.from_rows(inp.held_rows), eval_settings(config, training_seed(config), inp.context), ranks, echo)

    # 2. Round 0 (main rank): the stage-5 model, measured exactly like the rounds.
    rec = ranks.main_only(partial(measure_round_0, setup, s5_model, out / "round_0"))
    recs, rows = [rec], [rec["row"]]
    start, start_hash = s5_model, rec["model_hash"]
    echo(f"round 0 (stage-5 model): drift KL {rec['row']['kl']:.4g} nats/token, consistency {rec['row']['consistency']:.3f} "
         f"({rec['row']['seconds']:.1f}s)")

    # 3. Rounds. Every rank computes the stop reason from the same (broadcast) rows, so all go on or stop together.
    stop = stop_reason(rows, it, g)
    while stop is None:
        n = len(recs)
        rdir = out / f"round_{n}"
        key = round_key(config, n, start_hash)
        rec = ranks.main_only(partial(_load_done, rdir, key))  # main rank: is the round finished already?
        if rec is not None:
            echo(f"round {n}/{it.rounds}: done earlier, skipped")
        else:
            rec = train_round(setup, n, rdir, start) | {"key": key}
            # The round's models are out of scope now: free them before the next round loads its own.
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if ranks.is_main:
                atomic_write_json(rdir / "result.json", rec)  # last: it marks the round finished
        r = rec["row"]
        recs.append(rec)
        rows.append(r)
        if r.get("kl") is not None:
            echo(f"round {n}/{it.rounds}: drift KL {r['kl']:.4g} nats/token, consistency {r['consistency']:.3f}, adherence {r['adherence']:.3f}, "
                 f"style variance {fmt_metric(r['style_variance'])}, {'passes' if r['passed'] else 'fails'} the gate ({r['seconds']:.1f}s)")
            start, start_hash = rdir / "model", rec["model_hash"]
        stop = stop_reason(rows, it, g)
        if ranks.is_main:
            atomic_write_jsonl(out / "rounds.jsonl", [{k: x.get(k) for k in ROW_KEYS} for x in rows])  # progress, rewritten at the end

    # 4. Keep the best round and gate it (every rank: same rows, same decision).
    best, reason = select_round(rows, g)
    kept_rec = next(x for x in recs if x["row"]["round"] == best["round"])
    for x in rows:
        x["kept"] = x["round"] == best["round"]
    table = [{k: x.get(k) for k in ROW_KEYS} for x in rows]
    base_on_task = ranks.main_only(lambda: baseline_on_task(config, run_dir, scorer, inp.held_rows)[0])
    gate = iteration_gate(config, kept_rec, rows, stop, reason, baseline_on_task=base_on_task)
    outputs = {"model": out / "model", "rounds": out / "rounds.jsonl", "metrics": out / "metrics.json"}
    message = (f"{rows[-1]['round']} round(s), stop: {stop}; kept round {best['round']}: drift KL {best['kl']:.4g} nats/token, "
               f"consistency {best['consistency']:.3f}, adherence {best['adherence']:.3f}, style variance {fmt_metric(best['style_variance'])}")
    small_metrics = {"best_round": best["round"], "stop_reason": stop, "rounds_run": rows[-1]["round"],
                     **{k: best[k] for k in ("kl", "consistency", "adherence", "style_variance")}}

    # 5. Write the table, the kept model, the metrics and the result (main rank; the others return what it wrote).
    with ranks.on_main() as shared:
        if shared.here:
            atomic_write_jsonl(out / "rounds.jsonl", table)
            atomic_write_text(out / "rounds.md", rounds_table(table))
            src = s5_model if best["round"] == 0 else out / f"round_{best['round']}" / "model"
            _copy_model(src, out / "model", _card(inp.spec, kept_rec, rows, stop, reason, gate, inp.baseline))
            metrics = {"best_round": best["round"], "stop_reason": stop, "kept_reason": reason, "reference": inp.baseline, "scorer": scorer_desc,
                       "rounds_run": rows[-1]["round"], "rounds": table, "kept_eval": kept_rec["eval"],
                       "rounds_detail": [{k: x.get(k) for k in ("round", "sample_consistency", "yield", "samples", "selection", "training")}
                                         for x in recs]}
            atomic_write_json(out / "metrics.json", metrics)
            echo(f"stage 6: kept round {best['round']} ({reason}); stop: {stop}")
            atomic_write_json(out / "result.json", {"outputs": {k: str(v.relative_to(run_dir.root)) for k, v in outputs.items()},
                                                    "gate": gate.to_dict(), "metrics": small_metrics, "message": message,
                                                    "num_processes": ranks.num_processes})
    if not ranks.is_main:  # the result the main rank wrote (it is also what this rank computed: same rows, same decisions)
        saved = json.loads((out / "result.json").read_text(encoding="utf-8"))
        return StageResult(outputs={k: run_dir.root / v for k, v in saved["outputs"].items()}, gate=GateReport.from_dict(saved["gate"]),
                           metrics=saved["metrics"], message=saved["message"])
    return StageResult(outputs=outputs, gate=gate, metrics=small_metrics, message=message)
