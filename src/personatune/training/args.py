"""Stage-5 training: TRL trainers configured (never subclassed), plus the persona/KL eval callback.

- `TrainArgs`: every knob of the optimization stage, one documented field each (nested in the run config as `train:`).
- `build_dpo_trainer`, `build_grpo_trainer`, `build_rloo_trainer`: build a TRL trainer from TrainArgs. The KL
  penalty `beta` is always set explicitly and must be > 0 while a KL gate exists (TRL's GRPO default is 0 =
  no KL term and no reference model at all).
- `PersonaEvalCallback`: every `eval_every` steps, samples the policy on held-out prompts (no system prompt),
  measures the exact per-token KL to the fixed reference with `personatune.kl.measure_kl`, scores the samples
  (consistency, adherence, style variance), appends the record to `metrics.jsonl`, logs it to the trainer (so
  `report_to` trackers get it), saves a checkpoint for that step, and asks the KL-budget controller
  (`personatune.kl_budget.decide`) whether to continue, stop, or raise beta.

The reference: with LoRA it is the policy itself with its adapters disabled (exactly the base weights, no
second copy in memory; TRL's DPO/GRPO/RLOO use the same reference under PEFT). With full fine-tuning it is
the trainer's own frozen reference model (`trainer.ref_model`; for DPO we hand TRL a frozen copy we made).

This module imports only pydantic at import time, so the run config can nest `TrainArgs` without loading
torch; everything heavy is imported inside the functions that need it.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

from pydantic import Field, model_validator

from personatune import limits
from personatune.config_section import ConfigSection
from personatune.errors import ConfigError
from personatune.gates import fmt_metric
from personatune.rundir import jsonl_lines

if TYPE_CHECKING:  # pragma: no cover - typing only
    from personatune.gates import Measurement
    from personatune.kl import KLResult


# TRL's DPO loss types (DPOConfig.loss_type); TRL only rejects an unknown one once training starts.
DPOLoss = Literal["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
                  "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"]


class TrainArgs(ConfigSection):
    """Stage 5: KL-bounded persona optimization with TRL."""

    algorithm: Literal["dpo", "sft", "sdft", "grpo", "rloo"] = Field(
        "dpo", description="the recipe: 'dpo' on the stage-3 pairs (reference log-probs from the persona-prompted baseline); 'sft' on the stage-3 "
                           "chosen answers (consistent and on task: rejection-sampling fine-tuning); 'sdft' on-policy context distillation "
                           "(TRL SDFT, the persona as privileged context); 'grpo'/'rloo' online with the persona x on-task reward")
    peft: Literal["lora", "full"] = Field("lora", description="'lora' adapters (reference = base with adapters off) or 'full' fine-tuning (reference = frozen copy)")
    lora_r: int = Field(16, ge=1, description="LoRA rank (count, >= 1)")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator; the update is scaled by lora_alpha / lora_r (>= 1)")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LoRA input (probability, 0-1)")
    target_modules: str | list[str] = Field("all-linear", description="modules that get adapters: 'all-linear' or a list of module names (e.g. [q_proj, v_proj])")
    learning_rate: float = Field(5e-5, gt=0, description="AdamW peak learning rate (> 0)")
    epochs: float = Field(1.0, gt=0, description="passes over the training data (> 0); ignored when max_steps is set")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps to run (count); None = use epochs")
    per_device_batch_size: int = Field(4, ge=1, description="sequences (DPO: pairs; GRPO/RLOO: completions) per device per forward (count)")
    grad_accum: int = Field(1, ge=1, description="gradient accumulation steps per optimizer step (count)")
    max_length: int = Field(512, ge=16, description="DPO: prompt + response tokens per sequence; longer ones are truncated (tokens)")
    dpo_loss: list[DPOLoss] = Field(default_factory=lambda: ["sigmoid"], min_length=1,
                                description="DPO: TRL loss_type list, e.g. [sigmoid] (DPO) or [sigmoid, sft] (DPO + NLL on the chosen response, RPO)")
    dpo_loss_weights: list[float] | None = Field(None, description="DPO: TRL loss_weights, one per dpo_loss entry (None = all 1.0)")
    beta: float = Field(0.1, ge=0, description="KL penalty: DPO beta, GRPO/RLOO KL coefficient (> 0 while a KL gate exists; 0 is refused); "
                                                "not used by 'sft'/'sdft', whose loss is itself a divergence to the persona-prompted baseline")
    sdft_alpha: float = Field(1.0, ge=0, le=1, description="sdft: TRL distillation_alpha; 1.0 = reverse KL(student || persona-prompted teacher), "
                                                           "the drift KL the gate measures; 0.0 = forward KL")
    sdft_template: str = Field("{privileged_context}\n\n{prompt}", description="sdft: TRL teacher_prompt_template; the teacher's user turn is this "
                                                                              "text with the rendered persona as {privileged_context}")
    max_train_seconds: float | None = Field(None, gt=0, description="stop training once this much wall-clock time (seconds) was spent "
                                                                  "training, evals excluded; the last state is then evaluated (None = no limit)")
    eval_every_seconds: float | None = Field(None, gt=0, description="also evaluate+checkpoint whenever this much training time (seconds, "
                                                                   "evals excluded) has passed since the last eval; compares recipes whose steps "
                                                                   "differ in cost (None = by steps only)")
    eval_every: int = Field(25, ge=0, description="optimizer steps between eval+checkpoint (count); 0 = only at the end")
    eval_at_start: bool = Field(True, description="also evaluate before the first step (the step-0 record; KL ~ 0 by construction)")
    kl_eval_prompts: int = Field(32, ge=2, description="held-out prompts sampled at each in-training eval (count); the final gate uses all of them")
    kl_max_new_tokens: int = Field(64, ge=1, description="response length cap for the KL samples (tokens)")
    eval_batch_size: int = Field(16, ge=1, description="sequences generated together during evals (count)")
    num_generations: int = Field(4, ge=2, description="GRPO/RLOO: completions sampled per prompt (count, >= 2)")
    max_completion_length: int = Field(64, ge=1, description="GRPO/RLOO: completion length cap during training (tokens)")
    report_to: Literal["none", "tensorboard", "trackio", "mlflow", "wandb"] = Field("none", description="experiment tracker passed to TRL/transformers (its package must be installed)")
    logging_steps: int = Field(10, ge=1, description="optimizer steps between TRL log lines (count)")
    kl_control: Literal["stop", "raise_beta"] = Field("stop", description="when an eval finds KL > max_kl: 'stop' training, or 'raise_beta' (x beta_raise_factor, at most max_beta_raises times, then stop)")
    beta_raise_factor: float = Field(2.0, gt=1, description="raise_beta: multiplier applied to beta per raise (> 1)")
    max_beta_raises: int = Field(3, ge=0, description="raise_beta: raises allowed before stopping (count)")
    merge_lora: bool = Field(True, description="merge LoRA adapters into the saved model (True) or save the adapter only (False)")
    bf16: Literal["auto"] | bool = Field("auto", description="bf16 mixed precision: 'auto' = on for CUDA GPUs that support it, off on CPU; or true/false")
    gradient_checkpointing: bool = Field(False, description="trade compute for memory (TRL's default is on; off here because small models train faster without it)")
    seed: int | None = Field(None, ge=0, le=limits.SEED_MAX, description=f"training seed (0-{limits.SEED_MAX}); None = the run's global seed")

    @model_validator(mode="after")
    def _one_weight_per_loss(self) -> "TrainArgs":
        # Checked when the config loads, not when stage 5 builds its trainer after stages 1-4 have run.
        if self.dpo_loss_weights is not None and len(self.dpo_loss_weights) != len(self.dpo_loss):
            raise ValueError(f"dpo_loss_weights has {len(self.dpo_loss_weights)} entries for {len(self.dpo_loss)} dpo_loss entries "
                             f"{list(self.dpo_loss)}; fix: give one weight per loss, or leave it unset")
        return self


# --- checks and small helpers --------------------------------------------------------------------
def check_beta(beta: float, max_kl: float | None) -> None:
    """Refuse a zero KL penalty while a KL gate exists.

    Raises:
        ConfigError: beta <= 0 and max_kl is a finite bound.
    """
    if max_kl is not None and math.isfinite(max_kl) and not beta > 0:
        raise ConfigError(f"train.beta={beta!r}: the KL penalty must be > 0 while the KL gate gates.optimization.max_kl={max_kl:g} exists "
                          f"(beta 0 trains with no KL term at all); fix: set train.beta=0.1 (DPO) or 0.04 (GRPO/RLOO)")


def resolve_bf16(setting: Literal["auto"] | bool, device: Any) -> bool:
    """bf16 on or off: 'auto' turns it on only for a CUDA device that supports it."""
    import torch

    if setting != "auto":
        return bool(setting)
    return str(device).startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def lora_config(args: TrainArgs) -> Any:
    """peft.LoraConfig from TrainArgs, or None for full fine-tuning."""
    if args.peft != "lora":
        return None
    from peft import LoraConfig

    return LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout, target_modules=args.target_modules,
                      task_type="CAUSAL_LM")


def _common(args: TrainArgs, model: Any, output_dir: str | Path, seed: int) -> dict[str, Any]:
    """TrainingArguments shared by every TRL config (the same values for DPO, GRPO and RLOO)."""
    device = next(model.parameters()).device
    import inspect

    from transformers import TrainingArguments

    # transformers 5.x renamed gradient_checkpointing to activation_checkpointing (the old name warns).
    ckpt_key = "activation_checkpointing" if "activation_checkpointing" in inspect.signature(TrainingArguments).parameters else "gradient_checkpointing"
    return dict(output_dir=str(output_dir), learning_rate=args.learning_rate, num_train_epochs=args.epochs,
                max_steps=args.max_steps if args.max_steps else -1, per_device_train_batch_size=args.per_device_batch_size,
                gradient_accumulation_steps=args.grad_accum, logging_steps=args.logging_steps,
                # Checkpoints are written by PersonaEvalCallback at eval steps only: the KL budget decides which to keep.
                save_strategy="no", report_to=args.report_to, seed=seed, bf16=resolve_bf16(args.bf16, device),
                use_cpu=(device.type == "cpu"), disable_tqdm=True, **{ckpt_key: args.gradient_checkpointing})


def _seed(args: TrainArgs, seed: int | None) -> int:
    return args.seed if args.seed is not None else (seed or 0)


# --- trainer builders ----------------------------------------------------------------------------
def build_dpo_trainer(model: Any, tokenizer: Any, train_dataset: Any, args: TrainArgs, *, output_dir: str | Path, max_kl: float | None,
                      seed: int | None = None, ref_model: Any = None, callbacks: list[Any] | None = None,
                      reference_context: list[dict[str, str]] | None = None) -> Any:
    """A TRL DPOTrainer on conversational preference data (prompt / chosen / rejected).

    Args:
        model: the policy (a plain causal LM; LoRA is applied by TRL from `peft_config`).
        tokenizer: its tokenizer, with a chat template.
        train_dataset: a datasets.Dataset with prompt / chosen / rejected columns (prompts carry no system turn).
        args: TrainArgs (algorithm is not read here).
        output_dir: TRL's working folder.
        max_kl: the KL gate (nats/token), or None when no KL gate exists.
        seed: run seed (used unless args.seed is set).
        ref_model: full fine-tuning only: the frozen reference; default a frozen copy of `model`.
        callbacks: TrainerCallbacks (e.g. PersonaEvalCallback(...).hooks()).
        reference_context: the persona context c; given, the DPO reference is the baseline given c + prompt
            (`use_prompted_reference`), as METRICS.md asks; None = TRL's own reference on the prompt alone.

    Returns:
        The configured trainer (call `.train()`).

    Raises:
        ConfigError: beta is 0 while a KL gate exists.
    """
    import copy

    from trl import DPOConfig, DPOTrainer

    check_beta(args.beta, max_kl)
    if args.dpo_loss_weights is not None and len(args.dpo_loss_weights) != len(args.dpo_loss):
        raise ConfigError(f"train.dpo_loss_weights has {len(args.dpo_loss_weights)} entries for {len(args.dpo_loss)} train.dpo_loss "
                          f"entries {args.dpo_loss}; fix: give one weight per loss, or leave it unset")
    cfg = DPOConfig(**_common(args, model, output_dir, _seed(args, seed)), beta=args.beta, max_length=args.max_length,
                    loss_type=list(args.dpo_loss), loss_weights=args.dpo_loss_weights)
    peft_config = lora_config(args)
    if peft_config is None and ref_model is None:
        # TRL would reload the reference from model.config's path; a copy also works for in-memory models.
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=cfg, train_dataset=train_dataset, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=callbacks)
    if reference_context is not None:
        use_prompted_reference(trainer, reference_context, ref_model=ref_model)
    return trainer


def prompted_reference_logps(reference: Any, tokenizer: Any, prompts: list[list[dict[str, str]]], completions: list[list[int]],
                             context: list[dict[str, str]], *, batch_size: int = 8) -> list[float]:
    """Summed log-probabilities of each completion's tokens under `reference` given the persona context c before the prompt.

    `completions` are token ids exactly as the trainer tokenized them (TRL's `chosen_ids` / `rejected_ids`), so the
    reference scores the same tokens the policy does; only the prefix differs (c + prompt instead of the prompt).
    """
    import torch

    from personatune.kl import response_logprobs
    from personatune.models import encode_chat

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[float] = []
    with torch.inference_mode():
        for i in range(0, len(prompts), batch_size):
            prefixes = [encode_chat(tokenizer, list(context) + list(p), add_generation_prompt=True) for p in prompts[i:i + batch_size]]
            resp = [list(c) or [pad] for c in completions[i:i + batch_size]]
            for lp, r, c in zip(response_logprobs(reference, prefixes, resp, pad), resp, completions[i:i + batch_size]):
                tok = torch.tensor(r, device=lp.device)
                out.append(float(lp.gather(-1, tok[:, None]).squeeze(-1)[: len(c)].sum()))
    return out


def use_prompted_reference(trainer: Any, context: list[dict[str, str]], *, ref_model: Any = None, batch_size: int = 8) -> Any:
    """Make a built DPOTrainer compare the policy with the persona-prompted baseline (METRICS.md drift-KL reference).

    TRL's documented route: the dataset carries `ref_chosen_logps` / `ref_rejected_logps` columns and the trainer
    reads them instead of running its own reference (`precompute_ref_logps`). They are computed here on TRL's own
    tokenization of each pair (truncated as its collator truncates to max_length), with the reference (the
    baseline: the policy with its adapters off under LoRA, else the frozen copy) given c + prompt.

    Returns:
        The trainer's new train dataset (with the two columns).
    """
    ds = trainer.train_dataset
    reference = AdapterDisabledReference(trainer.model) if ref_model is None else ref_model
    max_len = trainer.args.max_length
    prompts = list(ds["prompt"])

    def kept(prompt_ids: list[int], ids: list[int]) -> list[int]:
        # TRL's collator keeps the start of prompt + completion up to max_length (truncation_mode "keep_start").
        if max_len is None:
            return list(ids)
        return list(ids)[: max(0, max_len - len(prompt_ids))]

    chosen = [kept(p, c) for p, c in zip(ds["prompt_ids"], ds["chosen_ids"])]
    rejected = [kept(p, r) for p, r in zip(ds["prompt_ids"], ds["rejected_ids"])]
    tok = trainer.processing_class
    ref_c = prompted_reference_logps(reference, tok, prompts, chosen, context, batch_size=batch_size)
    ref_r = prompted_reference_logps(reference, tok, prompts, rejected, context, batch_size=batch_size)
    for name in ("ref_chosen_logps", "ref_rejected_logps"):
        if name in ds.column_names:
            ds = ds.remove_columns(name)
    ds = ds.add_column("ref_chosen_logps", ref_c).add_column("ref_rejected_logps", ref_r)
    trainer.train_dataset = ds
    # The trainer then reads the columns (its own reference forward is skipped), exactly as after TRL's precompute.
    trainer.precompute_ref_logps = True
    return ds


def build_sft_trainer(model: Any, tokenizer: Any, train_dataset: Any, args: TrainArgs, *, output_dir: str | Path, seed: int | None = None,
                      callbacks: list[Any] | None = None) -> Any:
    """A TRL SFTTrainer on prompt/completion rows: rejection-sampling fine-tuning on the stage-3 chosen answers.

    The chosen answers are the persona-prompted teacher's own samples that the scorer found consistent and on task,
    so cross-entropy on them is (sequence-level) distillation towards the persona-prompted model: its loss is the
    forward KL to that distribution up to a constant, and the drift budget is held by the eval callback.

    Args:
        train_dataset: a datasets.Dataset with conversational `prompt` (no system turn) and `completion` columns;
            the loss is on the completion only (TRL's completion_only_loss).
        Other arguments as in `build_dpo_trainer`.
    """
    from trl import SFTConfig, SFTTrainer

    cfg = SFTConfig(**_common(args, model, output_dir, _seed(args, seed)), max_length=args.max_length, completion_only_loss=True)
    return SFTTrainer(model=model, args=cfg, train_dataset=train_dataset, processing_class=tokenizer, peft_config=lora_config(args),
                      callbacks=callbacks)


def build_sdft_trainer(model: Any, tokenizer: Any, train_dataset: Any, args: TrainArgs, *, output_dir: str | Path, seed: int | None = None,
                       callbacks: list[Any] | None = None) -> Any:
    """TRL's on-policy self-distillation (`trl.experimental.sdft`) with the persona as the privileged context.

    The student samples answers to the prompt alone; the teacher is the baseline (`teacher_model_kind="base"`: the
    policy with its adapters off under LoRA) given the rendered persona and the prompt; the loss is the exact
    divergence over the vocabulary at every sampled token (`distillation_mode="full_logits"`), reverse KL
    (student || teacher) at `train.sdft_alpha` = 1: the drift KL of METRICS.md, up to the teacher's prompt layout
    (TRL puts the privileged context in the user turn, `train.sdft_template`; the gate measures drift against the
    persona system prompt + few-shot turns).

    Args:
        train_dataset: a datasets.Dataset with conversational `prompt` (no system turn) and `privileged_context`
            (the rendered persona text) columns.
        Other arguments as in `build_dpo_trainer`.

    Raises:
        ConfigError: full fine-tuning (the SDFT teacher would be reloaded from the model's path; use train.peft=lora).
    """
    from trl.experimental.sdft import SDFTConfig, SDFTTrainer

    if args.peft != "lora":
        raise ConfigError("train.algorithm=sdft with train.peft=full: TRL's SDFT would reload its teacher from the model's path instead of "
                          "using the stage-1 baseline in memory; fix: set train.peft=lora (the teacher is then the policy with adapters off)")
    common = _common(args, model, output_dir, _seed(args, seed))
    cfg = SDFTConfig(**common, max_prompt_length=args.max_length, max_completion_length=args.max_completion_length, num_generations=1,
                     temperature=1.0, top_p=1.0, distillation_mode="full_logits", distillation_alpha=args.sdft_alpha, teacher_model_kind="base",
                     teacher_prompt_template=args.sdft_template)
    return SDFTTrainer(model=model, args=cfg, train_dataset=train_dataset, processing_class=tokenizer, peft_config=lora_config(args),
                       callbacks=callbacks)


def _online_config(cls: Any, args: TrainArgs, model: Any, output_dir: str | Path, seed: int, max_kl: float | None) -> Any:
    check_beta(args.beta, max_kl)
    if (args.per_device_batch_size * args.grad_accum) % args.num_generations:
        raise ConfigError(f"train.per_device_batch_size x train.grad_accum = {args.per_device_batch_size * args.grad_accum} must be a multiple of "
                          f"train.num_generations={args.num_generations} (each prompt's completions are compared together); "
                          f"fix: e.g. train.per_device_batch_size={args.num_generations}")
    # beta is passed explicitly: TRL's GRPO default (0) would silently drop the KL term and the reference model.
    return cls(**_common(args, model, output_dir, seed), beta=args.beta, num_generations=args.num_generations,
               max_completion_length=args.max_completion_length)


def build_grpo_trainer(model: Any, tokenizer: Any, train_dataset: Any, args: TrainArgs, *, reward_funcs: list[Callable[..., list[float]]],
                       output_dir: str | Path, max_kl: float | None, seed: int | None = None, callbacks: list[Any] | None = None) -> Any:
    """A TRL GRPOTrainer with the persona reward and an explicit, non-zero KL coefficient.

    Args:
        model: the policy. Full fine-tuning needs a model loadable from `model.config._name_or_path`
            (TRL reloads the reference from there).
        train_dataset: a datasets.Dataset with a conversational `prompt` column (no system turn); extra
            columns (context, targets) reach the reward functions as keyword arguments.
        reward_funcs: e.g. [personatune.scoring.reward.make_reward_fn(scorer)].
        Other arguments as in `build_dpo_trainer`.

    Raises:
        ConfigError: beta is 0 while a KL gate exists, or the batch is not a multiple of num_generations.
    """
    from trl import GRPOConfig, GRPOTrainer

    cfg = _online_config(GRPOConfig, args, model, output_dir, _seed(args, seed), max_kl)
    return GRPOTrainer(model=model, reward_funcs=reward_funcs, args=cfg, train_dataset=train_dataset, processing_class=tokenizer,
                       peft_config=lora_config(args), callbacks=callbacks)


def build_rloo_trainer(model: Any, tokenizer: Any, train_dataset: Any, args: TrainArgs, *, reward_funcs: list[Callable[..., list[float]]],
                       output_dir: str | Path, max_kl: float | None, seed: int | None = None, callbacks: list[Any] | None = None) -> Any:
    """A TRL RLOOTrainer (TRL 1.x: same data and reward interface as GRPO). Arguments as in `build_grpo_trainer`.

    Raises:
        ConfigError: beta is 0 while a KL gate exists, or the batch is not a multiple of num_generations.
    """
    from trl import RLOOConfig, RLOOTrainer

    cfg = _online_config(RLOOConfig, args, model, output_dir, _seed(args, seed), max_kl)
    return RLOOTrainer(model=model, reward_funcs=reward_funcs, args=cfg, train_dataset=train_dataset, processing_class=tokenizer,
                       peft_config=lora_config(args), callbacks=callbacks)


# --- the reference --------------------------------------------------------------------------------
class AdapterDisabledReference:
    """The reference for LoRA training: the PEFT policy called with its adapters disabled (= the base weights).

    `measure_kl` calls the reference with keyword arguments only, so this callable stands in for a model
    without a second copy of the weights in memory.
    """

    def __init__(self, peft_model: Any) -> None:
        self.model = peft_model

    def __call__(self, **kwargs: Any) -> Any:
        with self.model.disable_adapter():
            return self.model(**kwargs)

    def parameters(self) -> Any:
        return self.model.parameters()


def reference_of(trainer: Any) -> Any:
    """The fixed reference of a built trainer: base-with-adapters-off for PEFT, else the trainer's frozen ref model.

    Raises:
        ConfigError: a full fine-tuning trainer without a reference model (beta 0 in GRPO/RLOO).
    """
    from peft import PeftModel

    model = trainer.model
    if isinstance(model, PeftModel):
        return AdapterDisabledReference(model)
    ref = getattr(trainer, "ref_model", None)
    if ref is None:
        raise ConfigError("the trainer has no reference model (train.beta is 0?); fix: set train.beta > 0")
    return trainer.accelerator.unwrap_model(ref)


# --- evaluation -----------------------------------------------------------------------------------
@dataclass
class EvalSet:
    """Held-out prompts for evals: conversations ending in a user turn, with no system prompt."""

    prompts: list[list[dict[str, str]]]
    contexts: list[str | None]
    targets: list[list[str]]
    ids: list[str]

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]], n: int | None = None) -> "EvalSet":
        """From stage-3 `heldout/prompts.jsonl` rows; at most n, taken round-robin over contexts so each stays represented.

        Raises:
            DataError: a row has a system turn (the persona must come from the weights, not a prompt).
        """
        from personatune.errors import DataError

        for r in rows:
            if any(m.get("role") == "system" for m in r["messages"]):
                raise DataError(f"held-out prompt {r.get('id')!r} has a system turn; stage-5 prompts must have none (re-run stage 3)")
        if n is not None and n < len(rows):
            by: dict[Any, list[dict[str, Any]]] = {}
            for r in rows:
                by.setdefault(r.get("context"), []).append(r)
            picked: list[dict[str, Any]] = []
            while len(picked) < n:
                for ctx in list(by):
                    if by[ctx] and len(picked) < n:
                        picked.append(by[ctx].pop(0))
            rows = picked
        return cls([r["messages"] for r in rows], [r.get("context") for r in rows], [list(r.get("targets") or []) for r in rows],
                   [str(r.get("id", i)) for i, r in enumerate(rows)])


@dataclass
class EvalResult:
    """One evaluation of a policy: exact KL plus persona metrics of its own samples."""

    kl: "KLResult"
    consistency: "Measurement"
    adherence: "Measurement"
    style_variance: float | None
    texts: list[str] = field(default_factory=list)
    records: list[Any] = field(default_factory=list)
    seconds: float = 0.0
    adherence_per_trait: dict[str, float] = field(default_factory=dict)
    on_task: "Measurement | None" = None
    style_variance_n: int | None = None
    persona_shift: "KLResult | None" = None

    def summary(self) -> dict[str, Any]:
        """The flat numbers written to metrics.jsonl and logged to trackers. `kl` is drift KL (against the persona-prompted
        baseline, the gate); `persona_shift` is the KL to the unprompted baseline on the same samples (information)."""
        sh = self.persona_shift
        return {"kl": self.kl.per_token, "kl_stderr": self.kl.stderr, "kl_per_sequence": self.kl.per_sequence_mean, "kl_tokens": self.kl.tokens,
                "kl_reference": "persona-prompted baseline" if sh is not None else "unprompted baseline",
                "persona_shift": None if sh is None else sh.per_token, "persona_shift_stderr": None if sh is None else sh.stderr,
                "consistency": self.consistency.value, "adherence": self.adherence.value, "style_variance": self.style_variance,
                "on_task": None if self.on_task is None else self.on_task.value, "n": len(self.texts), "eval_seconds": round(self.seconds, 2)}


def evaluate_policy(model: Any, reference: Any, tokenizer: Any, evalset: EvalSet, scorer: Any, *, kl_max_new_tokens: int, max_new_tokens: int,
                    temperature: float, top_p: float, seed: int, batch_size: int, min_per_context: int = 5,
                    context: list[dict[str, str]] | None = None) -> EvalResult:
    """Measure a policy on held-out prompts, no system prompt.

    KL: `measure_drift` (its own samples, temperature 1, exact over the vocabulary, nats/token): drift KL against
    `reference` given the persona `context` (the gate) and persona shift against `reference` alone; with
    context None only the plain KL is measured (persona_shift None). Persona metrics:
    the policy's samples at the given decoding (stage 4 and 7 use the same, data.teacher's), scored by `scorer`.
    The global RNG state is restored afterwards so evals do not change the training run's randomness.

    Returns:
        EvalResult.
    """
    import torch

    from personatune.generation.hf import HFBackend
    from personatune.kl import measure_drift, measure_kl
    from personatune.scoring.aggregate import consistency_rate, on_task_rate, style_variance, trait_adherence

    t0 = time.time()
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    was_training = model.training
    model.eval()
    try:
        shift = None
        if context is None:
            kl = measure_kl(model, reference, tokenizer, evalset.prompts, max_new_tokens=kl_max_new_tokens, seed=seed, batch_size=batch_size)
        else:
            dr = measure_drift(model, reference, tokenizer, evalset.prompts, context, max_new_tokens=kl_max_new_tokens, seed=seed, batch_size=batch_size)
            kl, shift = dr.drift, dr.shift
        outs = HFBackend(model, tokenizer, batch_size=batch_size).generate(evalset.prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                                                                          top_p=top_p, n=1, seed=seed)
    finally:
        if was_training:
            model.train()
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    texts = [o[0] for o in outs]
    recs = scorer.score(texts, prompts=[list(p) for p in evalset.prompts], contexts=evalset.contexts, targets=evalset.targets, ids=evalset.ids)
    sv = style_variance(recs, min_per_context=min_per_context)
    adh = trait_adherence(recs)
    return EvalResult(kl, consistency_rate(recs), adh.overall, sv.value, texts, recs, time.time() - t0,
                      {k: v.value for k, v in adh.per_trait.items()}, on_task=on_task_rate(recs), style_variance_n=sv.n, persona_shift=shift)


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON line and fsync it (a crash loses at most the line being written; readers skip a torn last line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_history(path: Path) -> list[dict[str, Any]]:
    """The eval records of metrics.jsonl (a torn last line is skipped)."""
    rows = []
    if path.exists():
        for line in jsonl_lines(path.read_text(encoding="utf-8")):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


# --- the eval callback ----------------------------------------------------------------------------
class PersonaEvalCallback:
    """Eval + checkpoint + KL control every `eval_every` optimizer steps (composition: TRL trainers are not subclassed).

    Register with `trainer.add_callback(cb.hooks())` after `cb.bind(trainer)` (or pass `callbacks=[cb.hooks()]` to a
    builder and bind afterwards). Under multi-process training every rank saves the checkpoint (a collective under
    DeepSpeed/FSDP), the main process evaluates, and its decision is broadcast so all ranks stop or raise beta together.
    With parameters sharded (ZeRO-3, FSDP) a single rank cannot generate, so evals are deferred: the records carry only
    the checkpoint and `s5_optimization` evaluates them after training.

    Args:
        evaluate: model, reference -> EvalResult (e.g. a partial of `evaluate_policy`); None = checkpoints only.
        out_dir: stage folder; writes `metrics.jsonl` and `checkpoints/step-N/`.
        eval_every: optimizer steps between evals; 0 = only at the end of training.
        max_kl: the KL budget (nats/token) for the controller.
        kl_control: "stop" or "raise_beta".
        beta_raise_factor, max_beta_raises: see TrainArgs.
        eval_at_start: also evaluate and checkpoint at step 0 (the starting point: a candidate within any KL budget).
    """

    def __init__(self, evaluate: Callable[[Any, Any], EvalResult] | None, out_dir: str | Path, *, eval_every: int, max_kl: float,
                 kl_control: Literal["stop", "raise_beta"] = "stop", beta_raise_factor: float = 2.0, max_beta_raises: int = 3,
                 eval_at_start: bool = True, echo: Callable[[str], None] = print, max_train_seconds: float | None = None,
                 eval_every_seconds: float | None = None) -> None:
        self.evaluate = evaluate
        self.eval_every_seconds = eval_every_seconds
        self._last_eval_train_s = 0.0
        self.max_train_seconds = max_train_seconds
        self.eval_seconds = 0.0
        self.t_begin: float | None = None
        self.out_dir = Path(out_dir)
        self.metrics_path = self.out_dir / "metrics.jsonl"
        self.eval_every = eval_every
        self.max_kl = max_kl
        self.kl_control = kl_control
        self.beta_raise_factor = beta_raise_factor
        self.max_beta_raises = max_beta_raises
        self.eval_at_start = eval_at_start
        self.echo = echo
        self.history: list[dict[str, Any]] = []
        self.trainer: Any = None
        self._last_step = -1

    def bind(self, trainer: Any) -> "PersonaEvalCallback":
        """Attach the trainer whose model is evaluated, saved and whose beta may be raised."""
        self.trainer = trainer
        return self

    @property
    def sharded(self) -> bool:
        t = self.trainer
        ds = getattr(t.accelerator.state, "deepspeed_plugin", None)
        return bool(getattr(t, "is_fsdp_enabled", False) or (ds is not None and getattr(ds, "zero_stage", 0) == 3))

    def hooks(self) -> Any:
        """A transformers TrainerCallback that forwards step events here (built lazily: transformers is heavy to import)."""
        from transformers import TrainerCallback

        outer = self

        class PersonaEvalHooks(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                outer.t_begin = time.time()
                if outer.eval_at_start and outer.evaluate is not None and state.global_step == 0:
                    # Saved like any other step: when every trained checkpoint exceeds the KL budget, the
                    # starting point (KL 0) is the one within it, and the stage must not fall back to the last.
                    outer.step(0, control)

            def on_step_end(self, args, state, control, **kwargs):
                by_time = outer.eval_every_seconds is not None and outer.training_seconds() - outer._last_eval_train_s >= outer.eval_every_seconds
                if (outer.eval_every and state.global_step % outer.eval_every == 0) or by_time:
                    outer.step(state.global_step, control)
                if outer.over_time_budget():
                    control.should_training_stop = True  # on_train_end then evaluates this last state

            def on_train_end(self, args, state, control, **kwargs):
                # The last state is a candidate too, even when it does not fall on an eval step.
                if state.global_step != outer._last_step and state.global_step > 0:
                    outer.step(state.global_step, control)

        return PersonaEvalHooks()

    def training_seconds(self) -> float:
        """Wall-clock seconds since training began, evals excluded."""
        return 0.0 if self.t_begin is None else time.time() - self.t_begin - self.eval_seconds

    def over_time_budget(self) -> bool:
        return self.max_train_seconds is not None and self.training_seconds() >= self.max_train_seconds

    def step(self, step: int, control: Any, *, save: bool = True) -> dict[str, Any] | None:
        """Save a checkpoint (all ranks), evaluate (main rank), record, log, and apply the controller's decision."""
        t_eval = time.time()
        self._last_eval_train_s = self.training_seconds()
        try:
            return self._step(step, control, save=save)
        finally:
            self.eval_seconds += time.time() - t_eval

    def _step(self, step: int, control: Any, *, save: bool = True) -> dict[str, Any] | None:
        import torch

        from personatune.kl_budget import decide

        if self.trainer is None:
            raise RuntimeError("PersonaEvalCallback.bind(trainer) was not called")
        t = self.trainer
        self._last_step = step
        ckpt = None
        if save:
            ckpt_dir = self.out_dir / "checkpoints" / f"step-{step}"
            t.save_model(str(ckpt_dir))
            ckpt = str(ckpt_dir.relative_to(self.out_dir))
        main = t.accelerator.is_main_process
        # SFT/SDFT trainers have no beta (their loss is the divergence itself): raise_beta then stops instead.
        beta = getattr(t, "beta", None)
        row: dict[str, Any] = {"step": step, "checkpoint": ckpt, "beta": None if beta is None else float(beta), "time": round(time.time(), 3),
                               "train_seconds": round(self.training_seconds(), 2)}
        action, new_beta = 0, float("nan") if beta is None else float(beta)
        if self.evaluate is not None and not self.sharded:
            if main:
                res = self.evaluate(t.model, reference_of(t))
                row.update(res.summary())
                d = decide(self.history + [row], self.max_kl, self.kl_control, beta=None if beta is None else float(beta), raise_factor=self.beta_raise_factor,
                           max_raises=self.max_beta_raises)
                row["decision"], row["reason"] = d.action, d.reason
                action = {"continue": 0, "stop": 1, "raise_beta": 2}[d.action]
                new_beta = d.new_beta if d.new_beta is not None else new_beta
                shift = "" if res.persona_shift is None else f" (persona shift {res.persona_shift.per_token:.4g})"
                self.echo(f"  eval step {step}: drift KL {res.kl.per_token:.4g}±{res.kl.stderr:.2g} nats/token{shift}, consistency {res.consistency.value:.3f}, "
                          f"adherence {res.adherence.value:.3f}, style variance {fmt_metric(res.style_variance)} -> {d.action}")
            if t.accelerator.num_processes > 1:
                # Every rank must take the same decision, or one would wait forever in the next all-reduce.
                msg = torch.tensor([float(action), new_beta], dtype=torch.float64, device=t.accelerator.device)
                torch.distributed.broadcast(msg, src=0)
                action, new_beta = int(msg[0].item()), float(msg[1].item())
        else:
            row["decision"] = "deferred" if self.evaluate is not None else "not_evaluated"
        if step > 0 and action == 1:
            control.should_training_stop = True
        elif step > 0 and action == 2:
            # TRL's DPO/GRPO/RLOO losses read `trainer.beta` at every step, so a new value takes effect at the next one.
            t.beta = new_beta
            t.args.beta = new_beta
        self.history.append(row)
        if main:
            append_jsonl(self.metrics_path, row)
            # Logged through transformers' Trainer.log (not TRL's override, which would flush TRL's running averages),
            # so the tracker in `report_to` receives the persona metrics next to the loss.
            from transformers import Trainer

            # CallbackHandler.on_log clears control.should_log; restore it, or this rank would skip the loss all-gather
            # that the other ranks enter at a logging step (a deadlock under DDP).
            should_log = control.should_log
            Trainer.log(t, {f"persona/{k}": v for k, v in row.items() if isinstance(v, (int, float)) and v is not None and k not in ("step", "time")})
            control.should_log = t.control.should_log = should_log
        return row
