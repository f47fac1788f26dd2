"""What stages 5 and 6 share: their inputs, the drift-KL reference, eval settings, trainer building, checkpoint
loading and selection, and the gate (METRICS.md, stage 5; stage 6 gates its kept round with the same specs).

Both stages train a policy against the same fixed reference — the stage-1 baseline given the persona context — and
measure every candidate alike, so these pieces exist once:

1. `load_inputs`: the persona, the stage-3 pairs and held-out prompts, the baseline, the persona context (checked to fit
   the model's window before any model work).
2. `eval_settings`: the decoding and seed of every eval (`eval:`, as stage 4), so candidates differ only by weights.
3. `build_trainer`: the TRL trainer of `args.algorithm`, its DPO reference and GKD teacher the persona-prompted baseline.
4. `select_in_budget` and `load_checkpoint`: the best checkpoint within the KL budget, put back into the trainer.
5. `optimization_specs`, `optimization_gate`: the gate on the chosen model's held-out samples.
6. `write_record`, `read_stage_result`: their files, checked against `personatune.records` (one schema for the
   writer and every reader).

The scorer is `personatune.scoring.factory.scorer_for_run` (the stage-4 evaluator, else the persona-only profile).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personatune import evidence
from personatune.config import OptimGateArgs, RunConfig
from personatune.errors import DataError, RunDirError
from personatune.gates import GateReport, GateSpec, Measurement, check_gates, fmt_metric
from personatune.kl_budget import Selection, select_checkpoint
from personatune.persona import load_persona
from personatune.records import StageResultRecord, read_record, write_record
from personatune.rundir import RunDir
from personatune.stage import StageResult
from personatune.stage3_rows import STAGE3_FIX, read_stage3  # noqa: F401 (STAGE3_FIX re-exported)
from personatune.training import EvalSettings, TrainArgs, TrainerRun

STAGE5 = "05_optimization"


# --- 1. inputs --------------------------------------------------------------------------------------------
@dataclass
class OptimizeInputs:
    """The inputs of stages 5 and 6, all found through the manifest.

    Attributes:
        spec: the persona (stage 2).
        pairs_path: stage 3's `train/pairs.jsonl`.
        held_rows: stage 3's held-out prompt rows (non-empty).
        baseline: the stage-1 baseline's model folder.
        context: the persona context c of drift KL (persona system prompt + few-shot turns when data.few_shot).
    """

    spec: Any
    pairs_path: Path
    held_rows: list[dict[str, Any]]
    baseline: str
    context: list[dict[str, str]]


def load_inputs(config: RunConfig, run_dir: RunDir) -> OptimizeInputs:
    """Read the persona, the stage-3 data and the baseline path; build and check the persona context.

    Raises:
        DataError: the held-out prompts are missing or empty.
        RunDirError: an earlier stage has not finished, or the baseline cannot be read.
        ConfigError: the persona context does not fit the baseline's window (see `reference_context`).
    """
    from personatune.stages.s1_baseline import baseline_model_path

    spec = load_persona(run_dir.output_path("02_persona", "persona"))
    pairs_path = run_dir.output_path("03_consistency_data", "train") / "pairs.jsonl"
    held = run_dir.output_path("03_consistency_data", "heldout")
    held_rows = read_stage3(held / "prompts.jsonl", "prompts", STAGE3_FIX)
    if not held_rows:
        raise DataError(
            "03_consistency_data/heldout/prompts.jsonl is empty; fix: raise data.heldout_fraction or data.max_prompts and re-run stage 3"
        )
    baseline = baseline_model_path(run_dir)
    # The drift-KL reference: the baseline given the persona context c (checked to fit the window before any model work).
    context = reference_context(config, spec, baseline, [r["messages"] for r in held_rows])
    return OptimizeInputs(spec, pairs_path, held_rows, baseline, context)


def reference_context(
    config: RunConfig, spec: Any, baseline: str, prompts: list[list[dict[str, str]]]
) -> list[dict[str, str]]:
    """The persona context c of drift KL (persona system prompt + few-shot turns when data.few_shot), checked to fit the
    baseline's window with every prompt and the KL samples, from the tokenizer and config alone (before any model work).

    Raises:
        ConfigError: c + the longest prompt + train.kl_max_new_tokens exceed the model's max_position_embeddings.
        RunDirError: the baseline's tokenizer or config cannot be read.
    """
    from transformers import AutoConfig, AutoTokenizer

    from personatune.errors import ConfigError
    from personatune.models import encode_chat
    from personatune.persona_prompt import persona_context

    context = persona_context(spec, few_shot=config.data.few_shot)
    try:
        tok = AutoTokenizer.from_pretrained(baseline)
        window = getattr(AutoConfig.from_pretrained(baseline), "max_position_embeddings", None)
    except (OSError, ValueError) as e:
        raise RunDirError(
            f"the stage-1 baseline at {baseline} cannot be read to build the drift-KL reference ({str(e).splitlines()[0]}); "
            f"fix: re-run stage 1 (personatune run CONFIG --from 1)"
        ) from None
    if not window or not prompts:
        return context
    longest = max(prompts, key=lambda m: sum(len(x.get("content", "")) for x in m))
    need_ctx = len(encode_chat(tok, context + list(longest)))
    need = need_ctx + config.train.kl_max_new_tokens
    if need > window:
        n_ctx = need_ctx - len(encode_chat(tok, list(longest)))
        raise ConfigError(
            f"data.few_shot={str(config.data.few_shot).lower()}: the persona context is {n_ctx} tokens; with the longest held-out "
            f"prompt and train.kl_max_new_tokens={config.train.kl_max_new_tokens} the reference needs {need} tokens, more than the "
            f"model's window of {window} (max_position_embeddings); fix: "
            + (
                "set data.few_shot=false, shorten the persona's examples and trait descriptions"
                if config.data.few_shot
                else "shorten the persona's trait descriptions and style rules, or lower train.kl_max_new_tokens"
            )
            + ", or use a model with a longer window"
        )
    return context


# --- 2. models and evals -----------------------------------------------------------------------------------
def training_seed(config: RunConfig) -> int:
    """train.seed, else the run's global seed."""
    return config.train.seed if config.train.seed is not None else config.seed


def eval_settings(config: RunConfig, seed: int, context: list[dict[str, str]] | None) -> EvalSettings:
    """The decoding of every eval: persona metrics use the `eval:` decoding of stages 4-7 (data.teacher's when unset), so
    the baseline and every trained model are compared alike; KL samples are train.kl_max_new_tokens long; stages 5-6
    generate train.eval_batch_size sequences together."""
    e, args = config.eval, config.train
    return EvalSettings(
        kl_max_new_tokens=args.kl_max_new_tokens,
        max_new_tokens=e.max_new_tokens,
        temperature=e.temperature,
        top_p=e.top_p,
        seed=seed,
        batch_size=args.eval_batch_size,
        min_per_context=e.min_per_context,
        context=context,
    )


def load_policy(path: Path, config: RunConfig, baseline: str, for_training: bool) -> tuple[Any, Any]:
    """A model folder as a plain causal LM (model, tokenizer); an adapter-only folder (train.merge_lora=false) is merged
    into the baseline."""
    from personatune import models

    if (path / "adapter_config.json").is_file():
        from peft import PeftModel

        base, tok = models.load_configured_model(baseline, config.model, for_training=for_training)
        return PeftModel.from_pretrained(base, str(path)).merge_and_unload(), tok
    return models.load_configured_model(str(path), config.model, for_training=for_training)


# --- 3. trainers -----------------------------------------------------------------------------------------
@dataclass
class DriftReference:
    """What a DPO trainer compares the policy with, and a GKD trainer distills: the baseline given the persona context
    (METRICS.md drift KL).

    Attributes:
        context: the persona context c put before each prompt.
        model: the baseline in memory; None = the policy with its adapters off (LoRA) or a frozen copy (full), which is
            the baseline only when training starts from it (stage 5; stage 6 starts from a trained model).
    """

    context: list[dict[str, str]]
    model: Any = None


def build_trainer(
    model: Any,
    tokenizer: Any,
    dataset: Any,
    args: TrainArgs,
    run: TrainerRun,
    *,
    max_kl: float,
    reference: DriftReference,
    scorer: Any = None,
) -> Any:
    """The TRL trainer of `args.algorithm`: DPO against `reference`, GKD with `reference` as teacher (`dataset` from
    `training.distill.gkd_dataset`), SFT/SDFT (distillation, no beta), or GRPO/RLOO with the scorer's persona x on-task
    reward.

    Raises:
        ConfigError: from the builders (train.beta 0 while the KL gate exists, a bad batch/num_generations combination).
    """
    from personatune import training

    if args.algorithm == "dpo":
        return training.build_dpo_trainer(
            model,
            tokenizer,
            dataset,
            args,
            run,
            max_kl=max_kl,
            ref_model=reference.model,
            reference_context=reference.context,
        )
    if args.algorithm == "gkd":
        from personatune.training.distill import build_gkd_trainer

        return build_gkd_trainer(
            model, tokenizer, dataset, args, run, context=reference.context, ref_model=reference.model
        )
    if args.algorithm in ("sft", "sdft"):
        build = training.build_sft_trainer if args.algorithm == "sft" else training.build_sdft_trainer
        return build(model, tokenizer, dataset, args, run)
    from personatune.scoring.reward import make_reward_fn

    build = training.build_grpo_trainer if args.algorithm == "grpo" else training.build_rloo_trainer
    return build(model, tokenizer, dataset, args, run, reward_funcs=[make_reward_fn(scorer)], max_kl=max_kl)


# --- 4. checkpoints ----------------------------------------------------------------------------------------
def select_in_budget(history: list[dict[str, Any]], g: OptimGateArgs) -> Selection:
    """The checkpoint to keep (one rule for stages 5 and 6): the best within gates.optimization.max_kl, those meeting
    every persona threshold first (`kl_budget.select_checkpoint`)."""
    return select_checkpoint(
        history,
        g.max_kl,
        min_consistency=g.consistency,
        min_adherence=g.adherence,
        max_style_variance=g.max_style_variance,
    )


def load_checkpoint(model: Any, ckpt: Path, peft: str) -> None:
    """Put the weights of a saved checkpoint into `model` (a trainer's, or a whole copy of it), in place."""
    from safetensors.torch import load_file

    if peft == "lora":
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(ckpt / "adapter_model.safetensors")))
    else:
        # Tied weights (e.g. lm_head = embeddings) are saved once; strict=False leaves the tie in place.
        model.load_state_dict(load_file(str(ckpt / "model.safetensors")), strict=False)


# --- 5. the gate -------------------------------------------------------------------------------------------
def baseline_on_task(
    config: RunConfig, run_dir: RunDir, scorer: Any, held_rows: list[dict[str, Any]]
) -> tuple[Measurement | None, str]:
    """The stage-1 baseline's on-task rate on the held-out prompts (stage 4's samples when they provably match), and
    where its responses came from (`evidence.baseline_on_task_records`)."""
    from personatune.scoring.aggregate import on_task_rate

    recs, source = evidence.baseline_on_task_records(config, run_dir, scorer, held_rows)
    return on_task_rate(recs), source


def optimization_specs(config: RunConfig) -> list[GateSpec]:
    """The stage-5 (and 6) gate specs. n counts the policy's samples (one per held-out prompt; pairs for adherence);
    the minimums are `rate_min_n` at each rate's threshold (137 at 0.85, 97 at 0.90, 51 at 0.95) and
    gates.evaluation.min_style_variance_n for style variance; KL has none. More held-out prompts: `evidence.heldout_key`."""
    g, key = config.gates.optimization, evidence.heldout_key(config)
    return [
        GateSpec(
            "kl_per_token",
            g.max_kl,
            "<=",
            "nats/token",
            "drift KL: mean per-token KL(policy(.|x) || baseline(.|persona context, x)) on the "
            "policy's samples, held-out prompts x without a system prompt",
        ),
        GateSpec(
            "consistency_rate",
            g.consistency,
            ">=",
            "fraction of responses",
            "consistency rate of the policy's own samples",
            min_n=evidence.rate_min_n_for(config, g.consistency),
            n_key=key,
        ),
        GateSpec(
            "adherence",
            g.adherence,
            ">=",
            "fraction of (response, trait) pairs",
            "trait adherence of the policy's own samples; n = pairs",
            min_n=evidence.rate_min_n_for(config, g.adherence),
            n_key=key,
        ),
        GateSpec(
            "style_variance",
            g.max_style_variance,
            "<",
            "relative std across contexts",
            "style variance of the policy's own samples; n = responses in qualifying context groups",
            min_n=config.gates.evaluation.min_style_variance_n,
            n_key=key,
        ),
        GateSpec(
            "on_task_retention",
            g.min_on_task_retention,
            ">=",
            "ratio (on-task rate policy / baseline)",
            "on-task rate of the policy's samples / the stage-1 baseline's without a system prompt, same prompts and decoding; n = policy samples",
            min_n=evidence.rate_min_n_for(config, g.min_on_task_retention),
            n_key=key,
        ),
    ]


def optimization_gate(
    config: RunConfig,
    ev: Any,
    sel: Selection | None,
    history: list[dict[str, Any]],
    baseline_on_task: Measurement | None = None,
) -> GateReport:
    """The METRICS.md stage-5 gate on the chosen model's held-out samples, with the diagnosis.

    Args:
        ev: the chosen model's EvalResult on all held-out prompts.
        sel: the checkpoint selection the model came from (its diagnosis names it); None for a model not chosen among
            checkpoints (stage 6's kept round: its diagnosis speaks of rounds instead).
        history: the in-training eval records (empty with a selection: the note that no eval ran).
        baseline_on_task: the stage-1 baseline's on-task rate on the same held-out prompts (`baseline_on_task`);
            None (not measured) fails the on-task retention gate with a note.
    """
    g = config.gates.optimization
    kl = ev.kl
    kl_ci = (kl.per_token - 1.96 * kl.stderr, kl.per_token + 1.96 * kl.stderr) if math.isfinite(kl.stderr) else None
    retention, why = evidence.on_task_retention(getattr(ev, "on_task", None), baseline_on_task)
    sv_n = getattr(ev, "style_variance_n", None)
    measured = {
        "kl_per_token": Measurement(kl.per_token, n=kl.sequences, ci=kl_ci),
        "consistency_rate": ev.consistency,
        "adherence": ev.adherence,
        "style_variance": Measurement(ev.style_variance, n=len(ev.texts) if sv_n is None else sv_n)
        if ev.style_variance is not None
        else None,
        "on_task_retention": retention,
    }
    results = check_gates(optimization_specs(config), measured)
    # Where the budget left the checkpoints (stage 5's selection); nothing to say for a model not chosen among them.
    where = ""
    if sel is not None and sel.last_within_budget:
        last = sel.last_within_budget
        where = (
            f"; the last checkpoint within the KL budget is step {last['step']} (KL {last['kl']:.4g}, "
            f"consistency {fmt_metric(last.get('consistency'))})"
        )
    elif sel is not None:
        where = "; no checkpoint was within the KL budget"
    diagnosis, steps = [], []
    for r in results:
        if r.passed:
            continue
        if r.inconclusive:
            diagnosis.append(f"{r.metric} {fmt_metric(r.value)}: {r.note}")
            steps.append(f"hold out more prompts ({evidence.heldout_key(config)}) so the gate can decide")
            if r.meets_threshold():
                continue
        if r.metric == "kl_per_token":
            shift = getattr(ev, "persona_shift", None)
            diagnosis.append(
                f"drift KL {kl.per_token:.4g} ± {kl.stderr:.2g} nats/token exceeds {g.max_kl:g}"
                + ("" if shift is None else f" (persona shift {shift.per_token:.4g})")
                + where
            )
            steps.append(
                "the policy drifts beyond the persona-prompted baseline: use a distillation recipe (train.algorithm=gkd, sdft or sft), raise train.beta, "
                "lower train.learning_rate or train.max_steps, or evaluate more often (train.eval_every) so an in-budget checkpoint exists"
            )
        elif r.metric == "consistency_rate":
            diagnosis.append(
                f"consistency {r.value:.3f} of the selected model"
                + ("" if sel is None else f" (selection: {sel.reason})")
                + where
            )
            steps.append(
                "if KL has headroom: train longer or with a higher train.learning_rate; else improve the stage-3 pairs (data.best_of, a stronger teacher)"
            )
        elif r.metric == "adherence":
            worst = sorted(ev.adherence_per_trait.items(), key=lambda kv: kv[1])[:2]
            diagnosis.append(
                f"adherence {r.value:.3f}"
                + (" (lowest traits: " + ", ".join(f"{t} {v:.2f}" for t, v in worst) + ")" if worst else "")
            )
            steps.append(
                "add pairs whose rejected response violates the weak traits (stage 3), or train longer within the KL budget"
            )
        elif r.metric == "on_task_retention":
            if r.value is None:
                r.note = why
                diagnosis.append(f"on-task retention {why}")
                steps.append(
                    "check stage 4's baseline_samples.json and the held-out prompts; re-run stage 4 (personatune run CONFIG --from 4)"
                )
            else:
                diagnosis.append(
                    f"on-task retention {r.value:.3f}: the policy answers the request less often than the baseline "
                    f"(on-task rate {fmt_metric(ev.on_task.value)} vs {fmt_metric(baseline_on_task.value if baseline_on_task else None)})"
                )
                steps.append(
                    "the reward/pairs buy persona with helpfulness: use GRPO/RLOO (the reward multiplies on_task), raise train.beta, "
                    "or check that stage 3's chosen responses are on task (gates.data.chosen_on_task)"
                )
        else:
            if r.value is None:
                diagnosis.append(
                    f"style variance not measured: fewer than two contexts have {config.eval.min_per_context} held-out prompts"
                )
                steps.append(
                    "raise data.heldout_fraction or data.max_prompts so each context has enough held-out prompts"
                )
            else:
                diagnosis.append(f"style variance {r.value:.3f}: the policy's voice moves between contexts")
                steps.append(
                    "tighten the persona's style targets, or add stage-3 pairs whose rejected response is style-broken"
                )
    if sel is not None and not history:
        diagnosis.append("no in-training eval ran (train.eval_every=0 and too few steps); the final weights were gated")
    return GateReport(STAGE5, results, diagnosis=diagnosis, next_steps=list(dict.fromkeys(steps)))


# --- 6. records ------------------------------------------------------------------------------------------
def write_stage_result(run_dir: RunDir, stage_dir: Path, result: StageResult, **extra: Any) -> None:
    """Write `stage_dir/result.json` (records.StageResultRecord): what the other ranks and a re-run read back through
    `read_stage_result`. `extra`: more top-level fields (stage 6: num_processes)."""
    data = {
        "outputs": {k: str(Path(v).relative_to(run_dir.root)) for k, v in result.outputs.items()},
        "gate": None if result.gate is None else result.gate.to_dict(),
        "metrics": result.metrics,
        "message": result.message,
        **extra,
    }
    write_record(stage_dir / "result.json", StageResultRecord, data)


def read_stage_result(run_dir: RunDir, stage_dir: Path) -> StageResult:
    """The StageResult the main rank wrote to `stage_dir/result.json` (what the other ranks return).

    Raises:
        RecordError: the file is missing or does not fit `records.StageResultRecord`.
    """
    rec = read_record(StageResultRecord, stage_dir / "result.json", f"{stage_dir.name}/result.json")
    return StageResult(
        outputs={k: run_dir.root / v for k, v in rec.outputs.items()},
        gate=None if rec.gate is None else rec.gate.to_report(),
        metrics=rec.metrics,
        message=rec.message,
    )
