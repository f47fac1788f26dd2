"""Stage 6 — iterative training as expert iteration: sample the policy, keep what is in persona and on task, train on it.

Round 0 is the stage-5 model, measured like every round (stage 5's own final measurement of it,
`05_optimization/final_eval.json`, is that measurement: reused when its key matches). Each round n = 1, 2, … then does, in order:

1. sample `iterations.samples_per_prompt` responses per stage-3 training prompt (no system prompt) from the
   current policy = the model of round n-1;
2. score them with the persona scorer (stage 4's evaluator, as in stage 5) and keep the answers that are
   consistent AND on task (`expert_iteration.kept`); the kept share of all samples is the round's `yield` (rounds.md);
3. per prompt, the best kept answer (chosen) against the worst sample (rejected), when their consistency
   differs by at least `iterations.min_margin`;
4. train from the current policy (a fresh LoRA on top of it, or full) with `iterations.algorithm`: 'dpo' on the
   pairs, its reference log-probs those of the FIXED stage-1 baseline given the persona context (the drift-KL
   reference, METRICS.md), 'sft' on the chosen answers (distillation of the policy's own best), or 'gkd' on them with
   that same fixed reference as teacher (training/distill.py). In-round evals,
   the KL-budget controller and checkpoint selection are those of stage 5 (`optimization_common`);
5. evaluate the round's model on all held-out prompts: drift KL against the persona-prompted baseline (persona
   shift beside it) via personatune.kl, consistency, adherence, style variance, on-task — the stage-5 gate metrics.

Stop at the round budget, when a round does not improve held-out consistency within the KL budget by more than
`iterations.min_improvement`, when the best round passes every gate with `iterations.stop_margin` room, or when
a round finds no new pairs. Keep the best round (`select_round`); `06_iterations/model` is its model (a copy of
the stage-5 model when round 0 is kept). The rules are pure functions in `personatune.expert_iteration`; steps 1-5
of a round are `stages/s6_round.py`.
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
import logging
import shutil
import uuid
from functools import partial
from pathlib import Path
from typing import Any

from personatune import final_measurement
from personatune.config import RunConfig
from personatune.errors import RunDirError
from personatune.expert_iteration import ROW_KEYS, round_key, select_round, stop_reason
from personatune.gates import GateReport, Measurement, fmt_metric
from personatune.logs import logged_stage
from personatune.ranks import Ranks
from personatune.records import IterationMetrics, RoundResult, RoundRow, write_record
from personatune.rundir import RunDir, atomic_write_text
from personatune.stage import StageResult
from personatune.stages.optimization_common import (
    baseline_on_task,
    eval_settings,
    load_inputs,
    optimization_gate,
    read_stage_result,
    training_seed,
    write_stage_result,
)
from personatune.stages.s6_round import (
    SAMPLES,
    RoundSetup,
    load_finished_round,
    measure_round_0,
    round_prompts,
    train_round,
)
from personatune.training import EvalResult

log = logging.getLogger(__name__)

STAGE = "06_iterations"


def final_model_path(run_dir: RunDir) -> Path:
    """The model later stages use: stage 6's kept model."""
    return run_dir.output_path(STAGE, "model")


def stage5_final_eval(run_dir: RunDir) -> Path | None:
    """Stage 5's final measurement (its output `final_eval`), None for a run directory made before it had one."""
    try:
        return run_dir.output_path("05_optimization", "final_eval")
    except RunDirError:
        return None


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


# --- the gate, the table, the card ------------------------------------------------------------------------------------------
def iteration_gate(
    config: RunConfig,
    kept: dict[str, Any],
    rows: list[dict[str, Any]],
    stop: str,
    reason: str,
    baseline_on_task: Measurement | None = None,
) -> GateReport:
    """The stage-5 gate (same specs, `optimization_common.optimization_gate`) on the kept round, with a round-level diagnosis.

    Args:
        baseline_on_task: the baseline's on-task rate on the held-out prompts (for on-task retention); None fails that gate.
    """
    ev = EvalResult.from_record(kept["eval"])
    # Only the results (specs, values, intervals) and next steps are taken; the diagnosis is one about rounds. The kept
    # model was not chosen among checkpoints, so there is no selection to describe (None).
    g5 = optimization_gate(config, ev, None, [], baseline_on_task=baseline_on_task)
    k = kept["row"]["round"]
    diagnosis = [f"kept round {k} of {rows[-1]['round']} (stop: {stop}); {reason}"]
    row_key = {
        "kl_per_token": "kl",
        "consistency_rate": "consistency",
        "adherence": "adherence",
        "style_variance": "style_variance",
        "on_task_retention": "on_task",
    }
    for r in g5.results:
        if not r.passed:
            measured = [x for x in rows if x.get("kl") is not None]
            key = row_key[r.metric]
            per = ", ".join(
                f"r{x['round']} {x[key]:.3g}" if x.get(key) is not None else f"r{x['round']} n/a" for x in measured
            )
            state = "is inconclusive" if r.inconclusive else f"fails {r.direction} {r.threshold:g}"
            diagnosis.append(
                f"{r.metric} {fmt_metric(r.value, 4)} {state} in round {k}; per round ({key}): {per}"
                + (f" — {r.note}" if r.note else "")
            )
    steps = list(g5.next_steps)
    if stop == "no new pairs":
        steps.append(
            "no sample was consistent enough to pair: lower iterations.min_margin or raise iterations.samples_per_prompt"
        )
    return GateReport(STAGE, g5.results, diagnosis=diagnosis, next_steps=steps)


def rounds_table(rows: list[dict[str, Any]]) -> str:
    """The per-round metrics as a markdown table."""
    f = lambda v: "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = ["| " + " | ".join(ROW_KEYS) + " |", "|" + "---|" * len(ROW_KEYS)]
    for r in rows:
        ci = r.get("consistency_ci")
        lines.append(
            "| "
            + " | ".join(f"{ci[0]:.3f}–{ci[1]:.3f}" if k == "consistency_ci" and ci else f(r.get(k)) for k in ROW_KEYS)
            + " |"
        )
    return "\n".join(lines) + "\n"


def _card(
    spec: Any, kept: dict[str, Any], rows: list[dict[str, Any]], stop: str, reason: str, gate: GateReport, baseline: str
) -> str:
    k = kept["row"]["round"]
    origin = (
        "This is a copy of the stage-5 model: "
        + ("no round was run (iterations.rounds=0)." if len(rows) == 1 else "no round improved on it.")
        if k == 0
        else f"Round {k} of stage 6: DPO on pairs of its predecessor's own samples (best consistent vs worst), from round {k - 1}."
    )
    return "\n".join(
        [
            f"# {spec.name} — persona model (personatune stage 6, round {k})",
            "",
            origin,
            "",
            f"`kl` is drift KL (nats/token) against the fixed reference, the stage-1 baseline `{baseline}` given the persona context, in every "
            f"round; `persona_shift` is the KL to the same baseline without it; `yield` is the share of the round's samples kept "
            f"(consistent and on task); prompts carry no system prompt.",
            "",
            f"Stop: {stop}. Kept: {reason}.",
            "",
            "## Rounds (held-out prompts)",
            "",
            rounds_table(rows),
            "## Gate",
            "",
            "```",
            gate.summary(),
            "```",
            "",
        ]
    )


# --- the stage ------------------------------------------------------------------------------------------
def hand_to_stage_7(setup: RoundSetup, run_dir: RunDir, kept_rec: dict[str, Any]) -> bool:
    """Write `06_iterations/final_measurement.json` (personatune.final_measurement) from the kept round's measurement,
    so stage 7 need not sample and measure the same model again; False (nothing written) when that round's responses
    are not on disk (a round of a run directory from before they were kept: stage 7 then measures itself)."""
    import json

    st, full = setup.settings, setup.full
    try:
        rows = json.loads((run_dir.root / STAGE / f"round_{kept_rec['round']}" / SAMPLES).read_text(encoding="utf-8"))
        texts = [r["response"] for r in rows]
        ids = [str(r["id"]) for r in rows]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if ids != full.ids or not kept_rec["eval"].get("persona_shift"):
        return False
    decoding = {"max_new_tokens": st.max_new_tokens, "temperature": st.temperature, "top_p": st.top_p}
    fp = final_measurement.fingerprint(
        setup.config, run_dir, setup.inputs.held_rows, decoding | {"batch_size": st.batch_size}, st.seed, st.context
    )
    final_measurement.write(run_dir, fp, texts, kept_rec["eval"])
    return True


@logged_stage
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
    ranks = Ranks.current(config, what=f"stage {STAGE}")
    out = run_dir.stage_dir(STAGE)
    if config.threads:
        torch.set_num_threads(config.threads)
    echo = log.info  # the main rank's records only (logs.MainRankFilter): one line per event, however many processes

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
    setup = RoundSetup(
        config,
        inp,
        items,
        scorer,
        training.EvalSet.from_rows(inp.held_rows, args.kl_eval_prompts),
        training.EvalSet.from_rows(inp.held_rows),
        eval_settings(config, training_seed(config), inp.context),
        ranks,
        echo,
    )

    # 2. Round 0 (main rank): the stage-5 model, measured exactly like the rounds.
    rec = ranks.main_only(partial(measure_round_0, setup, s5_model, out / "round_0", stage5_final_eval(run_dir)))
    recs, rows = [rec], [rec["row"]]
    start, start_hash = s5_model, rec["model_hash"]
    echo(
        f"round 0 (stage-5 model): drift KL {rec['row']['kl']:.4g} nats/token, consistency {rec['row']['consistency']:.3f} "
        f"({rec['row']['seconds']:.1f}s)"
    )

    # 3. Rounds. Every rank computes the stop reason from the same (broadcast) rows, so all go on or stop together.
    stop = stop_reason(rows, it, g)
    while stop is None:
        n = len(recs)
        rdir = out / f"round_{n}"
        key = round_key(config, n, start_hash)
        rec = ranks.main_only(partial(load_finished_round, rdir, key))  # main rank: is the round finished already?
        if rec is not None:
            echo(f"round {n}/{it.rounds}: done earlier, skipped")
        else:
            rec = train_round(setup, n, rdir, start) | {"key": key}
            # The round's models are out of scope now: free them before the next round loads its own.
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if ranks.is_main:
                write_record(rdir / "result.json", RoundResult, rec)  # last: it marks the round finished
        r = rec["row"]
        recs.append(rec)
        rows.append(r)
        if r.get("kl") is not None:
            echo(
                f"round {n}/{it.rounds}: drift KL {r['kl']:.4g} nats/token, consistency {r['consistency']:.3f}, adherence {r['adherence']:.3f}, "
                f"style variance {fmt_metric(r['style_variance'])}, {'passes' if r['passed'] else 'fails'} the gate ({r['seconds']:.1f}s)"
            )
            start, start_hash = rdir / "model", rec["model_hash"]
        stop = stop_reason(rows, it, g)
        if ranks.is_main:
            # Progress, rewritten at the end.
            write_record(out / "rounds.jsonl", RoundRow, [{k: x.get(k) for k in ROW_KEYS} for x in rows])

    # 4. Keep the best round and gate it (every rank: same rows, same decision).
    best, reason = select_round(rows, g)
    kept_rec = next(x for x in recs if x["row"]["round"] == best["round"])
    for x in rows:
        x["kept"] = x["round"] == best["round"]
    table = [{k: x.get(k) for k in ROW_KEYS} for x in rows]
    base_on_task = ranks.main_only(lambda: baseline_on_task(config, run_dir, scorer, inp.held_rows)[0])
    gate = iteration_gate(config, kept_rec, rows, stop, reason, baseline_on_task=base_on_task)
    outputs = {"model": out / "model", "rounds": out / "rounds.jsonl", "metrics": out / "metrics.json"}
    message = (
        f"{rows[-1]['round']} round(s), stop: {stop}; kept round {best['round']}: drift KL {best['kl']:.4g} nats/token, "
        f"consistency {best['consistency']:.3f}, adherence {best['adherence']:.3f}, style variance {fmt_metric(best['style_variance'])}"
    )
    small_metrics = {
        "best_round": best["round"],
        "stop_reason": stop,
        "rounds_run": rows[-1]["round"],
        **{k: best[k] for k in ("kl", "consistency", "adherence", "style_variance")},
    }

    # 5. Write the table, the kept model, the metrics and the result (main rank; the others return what it wrote).
    with ranks.on_main() as shared:
        if shared.here:
            write_record(out / "rounds.jsonl", RoundRow, table)
            atomic_write_text(out / "rounds.md", rounds_table(table))
            src = s5_model if best["round"] == 0 else out / f"round_{best['round']}" / "model"
            final_measurement.discard(run_dir)  # an earlier run's, of another model
            _copy_model(src, out / "model", _card(inp.spec, kept_rec, rows, stop, reason, gate, inp.baseline))
            if not hand_to_stage_7(setup, run_dir, kept_rec):
                echo(
                    "stage 6: the kept round's responses are not on disk: stage 7 will sample and measure the model again"
                )
            metrics = {
                "best_round": best["round"],
                "stop_reason": stop,
                "kept_reason": reason,
                "reference": inp.baseline,
                "scorer": scorer_desc,
                "rounds_run": rows[-1]["round"],
                "rounds": table,
                "kept_eval": kept_rec["eval"],
                "rounds_detail": [
                    {k: x.get(k) for k in ("round", "sample_consistency", "yield", "samples", "selection", "training")}
                    for x in recs
                ],
            }
            write_record(out / "metrics.json", IterationMetrics, metrics)
            echo(f"stage 6: kept round {best['round']} ({reason}); stop: {stop}")
            result = StageResult(outputs=outputs, gate=gate, metrics=small_metrics, message=message)
            write_stage_result(run_dir, out, result, num_processes=ranks.num_processes)
    if not ranks.is_main:
        # The result the main rank wrote (it is also what this rank computed: same rows, same decisions).
        return read_stage_result(run_dir, out)
    return StageResult(outputs=outputs, gate=gate, metrics=small_metrics, message=message)
