"""Stage-5 training settings: `TrainArgs` (nested in the run config as `train:`) and the KL-penalty check.

This module imports only pydantic at import time, so the run config can nest `TrainArgs` without loading torch.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from personatune import limits
from personatune.config_section import ConfigSection
from personatune.errors import ConfigError

# TRL's DPO loss types (DPOConfig.loss_type); TRL only rejects an unknown one once training starts.
DPOLoss = Literal[
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
]


class TrainArgs(ConfigSection):
    """Stage 5: KL-bounded persona optimization with TRL."""

    algorithm: Literal["dpo", "sft", "gkd", "sdft", "grpo", "rloo"] = Field(
        "dpo",
        description="the recipe: 'dpo' on the stage-3 pairs (reference log-probs from the persona-prompted baseline); 'sft' on the stage-3 "
        "chosen answers (consistent and on task: rejection-sampling fine-tuning); 'gkd' on the same answers with the "
        "persona-prompted baseline's whole next-token distribution as target (TRL GKD, dense context distillation); "
        "'sdft' on-policy context distillation (TRL SDFT, the persona as privileged context); 'grpo'/'rloo' online "
        "with the persona x on-task reward",
    )
    sft_source: Literal["chosen", "reference"] = Field(
        "chosen",
        description="sft and gkd: what they train on: 'chosen' = stage 3's chosen answers (rejection-sampling fine-tuning on the "
        "teacher's best candidates); 'reference' = responses this stage samples from the drift-KL reference itself (the "
        "stage-1 baseline given the persona context, temperature 1), kept when consistent and on task "
        "(rejection-sampling context distillation)",
    )
    reference_samples: int = Field(
        4, ge=1, description="sft/gkd with sft_source=reference: responses sampled per stage-3 training prompt (count)"
    )
    reference_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="sft/gkd with sft_source=reference: weights dtype of the copy that samples the reference answers (training "
        "data, not a measurement; every KL stays in model.dtype); auto = bfloat16 where the device multiplies "
        "it natively (a CPU with AMX or AVX512-BF16, a CUDA GPU with bf16), else model.dtype",
    )
    anchor_samples: int = Field(
        0,
        ge=0,
        description="sft/gkd with sft_source=reference: responses sampled from the same reference for each capability anchor "
        "(data/capability_anchors.yaml: checkable arithmetic and facts, disjoint from the capability suite), kept when "
        "correct and added to the training data (count; 0 = off)",
    )
    peft: Literal["lora", "full"] = Field(
        "lora",
        description="'lora' adapters (reference = base with adapters off) or 'full' fine-tuning (reference = frozen copy)",
    )
    lora_r: int = Field(16, ge=1, description="LoRA rank (count, >= 1)")
    lora_alpha: int = Field(
        32, ge=1, description="LoRA scaling numerator; the update is scaled by lora_alpha / lora_r (>= 1)"
    )
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LoRA input (probability, 0-1)")
    target_modules: str | list[str] = Field(
        "all-linear",
        description="modules that get adapters: 'all-linear' or a list of module names (e.g. [q_proj, v_proj])",
    )
    learning_rate: float = Field(5e-5, gt=0, description="AdamW peak learning rate (> 0)")
    epochs: float = Field(1.0, gt=0, description="passes over the training data (> 0); ignored when max_steps is set")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps to run (count); None = use epochs")
    per_device_batch_size: int = Field(
        4, ge=1, description="sequences (DPO: pairs; GRPO/RLOO: completions) per device per forward (count)"
    )
    grad_accum: int = Field(1, ge=1, description="gradient accumulation steps per optimizer step (count)")
    max_length: int = Field(
        512, ge=16, description="DPO: prompt + response tokens per sequence; longer ones are truncated (tokens)"
    )
    dpo_loss: list[DPOLoss] = Field(
        default_factory=lambda: ["sigmoid"],
        min_length=1,
        description="DPO: TRL loss_type list, e.g. [sigmoid] (DPO) or [sigmoid, sft] (DPO + NLL on the chosen response, RPO)",
    )
    dpo_loss_weights: list[float] | None = Field(
        None, description="DPO: TRL loss_weights, one per dpo_loss entry (None = all 1.0)"
    )
    beta: float = Field(
        0.1,
        ge=0,
        description="KL penalty: DPO beta, GRPO/RLOO KL coefficient (> 0 while a KL gate exists; 0 is refused); "
        "not used by 'sft'/'gkd'/'sdft', whose loss is itself a divergence to the persona-prompted baseline",
    )
    sdft_alpha: float = Field(
        1.0,
        ge=0,
        le=1,
        description="sdft: TRL distillation_alpha; 1.0 = reverse KL(student || persona-prompted teacher), "
        "the drift KL the gate measures; 0.0 = forward KL",
    )
    sdft_template: str = Field(
        "{privileged_context}\n\n{prompt}",
        description="sdft: TRL teacher_prompt_template; the teacher's user turn is this "
        "text with the rendered persona as {privileged_context}",
    )
    max_train_seconds: float | None = Field(
        None,
        gt=0,
        description="stop training once this much wall-clock time (seconds) was spent "
        "training, evals excluded; the last state is then evaluated (None = no limit)",
    )
    eval_every_seconds: float | None = Field(
        None,
        gt=0,
        description="also evaluate+checkpoint whenever this much training time (seconds, "
        "evals excluded) has passed since the last eval; compares recipes whose steps "
        "differ in cost (None = by steps only)",
    )
    eval_every: int = Field(
        25, ge=0, description="optimizer steps between eval+checkpoint (count); 0 = only at the end"
    )
    eval_at_start: bool = Field(
        True,
        description="also evaluate before the first step (the step-0 record: persona shift 0 by construction, drift KL "
        "the baseline's own distance from its persona-prompted self, ~0.33 nats/token on the main job: a learning curve's "
        "start, ~45 s on the main job); without it, stage 5's first eval, over the budget by construction, goes on "
        "and the next one is compared with it",
    )
    kl_eval_prompts: int = Field(
        32,
        ge=2,
        description="held-out prompts sampled at each in-training eval (count); the final gate uses all of them",
    )
    kl_max_new_tokens: int = Field(64, ge=1, description="response length cap for the KL samples (tokens)")
    eval_batch_size: int = Field(16, ge=1, description="sequences generated together during evals (count)")
    num_generations: int = Field(4, ge=2, description="GRPO/RLOO: completions sampled per prompt (count, >= 2)")
    max_completion_length: int = Field(
        64, ge=1, description="GRPO/RLOO: completion length cap during training (tokens)"
    )
    report_to: Literal["none", "tensorboard", "trackio", "mlflow", "wandb"] = Field(
        "none", description="experiment tracker passed to TRL/transformers (its package must be installed)"
    )
    logging_steps: int = Field(10, ge=1, description="optimizer steps between TRL log lines (count)")
    kl_control: Literal["stop", "raise_beta"] = Field(
        "stop",
        description="when an eval finds KL > max_kl: 'stop' training, or 'raise_beta' (x beta_raise_factor, at most max_beta_raises times, then stop)",
    )
    beta_raise_factor: float = Field(2.0, gt=1, description="raise_beta: multiplier applied to beta per raise (> 1)")
    max_beta_raises: int = Field(3, ge=0, description="raise_beta: raises allowed before stopping (count)")
    merge_lora: bool = Field(
        True, description="merge LoRA adapters into the saved model (True) or save the adapter only (False)"
    )
    bf16: Literal["auto"] | bool = Field(
        "auto",
        description="bf16 mixed precision (float32 master weights; evals stay in model.dtype): 'auto' = on where the "
        "device multiplies bfloat16 natively (a CUDA GPU with bf16, a CPU with AMX or AVX512-BF16), else off; or true/false",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="trade compute for memory (TRL's default is on; off here because small models train faster without it)",
    )
    seed: int | None = Field(
        None, ge=0, le=limits.SEED_MAX, description=f"training seed (0-{limits.SEED_MAX}); None = the run's global seed"
    )

    @model_validator(mode="after")
    def _one_weight_per_loss(self) -> "TrainArgs":
        # Checked when the config loads, not when stage 5 builds its trainer after stages 1-4 have run.
        if self.dpo_loss_weights is not None and len(self.dpo_loss_weights) != len(self.dpo_loss):
            raise ValueError(
                f"dpo_loss_weights has {len(self.dpo_loss_weights)} entries for {len(self.dpo_loss)} dpo_loss entries "
                f"{list(self.dpo_loss)}; fix: give one weight per loss, or leave it unset"
            )
        if self.sft_source == "reference" and self.algorithm not in ("sft", "gkd"):
            raise ValueError(
                f"sft_source='reference' applies to algorithm='sft' or 'gkd' only, not {self.algorithm!r}; fix: set "
                "train.algorithm=gkd (or sft), or leave train.sft_source at 'chosen'"
            )
        if self.anchor_samples > 0 and self.sft_source != "reference":
            raise ValueError(
                f"anchor_samples={self.anchor_samples} needs sft_source='reference' (the reference answers the anchors), "
                f"not {self.sft_source!r}; fix: set train.sft_source=reference, or train.anchor_samples=0"
            )
        return self


# --- checks ---------------------------------------------------------------------------------------
def check_beta(beta: float, max_kl: float | None) -> None:
    """Refuse a zero KL penalty while a KL gate exists.

    Raises:
        ConfigError: beta <= 0 and max_kl is a finite bound.
    """
    if max_kl is not None and math.isfinite(max_kl) and not beta > 0:
        raise ConfigError(
            f"train.beta={beta!r}: the KL penalty must be > 0 while the KL gate gates.optimization.max_kl={max_kl:g} exists "
            f"(beta 0 trains with no KL term at all); fix: set train.beta=0.1 (DPO) or 0.04 (GRPO/RLOO)"
        )


def sdft_peft_problem(args: TrainArgs) -> str | None:
    """Why TRL's SDFT cannot train with these args (full fine-tuning), or None. Checked by the run config when it loads
    (train.algorithm=sdft) and by `build_sdft_trainer`."""
    if args.peft == "lora":
        return None
    return (
        "train.algorithm=sdft with train.peft=full: TRL's SDFT would reload its teacher from the model's path instead of "
        "using the stage-1 baseline in memory; fix: set train.peft=lora (the teacher is then the policy with adapters off)"
    )


def online_batch_problem(args: TrainArgs) -> str | None:
    """Why a GRPO/RLOO batch cannot hold whole groups of completions, or None. Checked by the run config when it loads
    (train.algorithm=grpo|rloo) and by the GRPO/RLOO builders."""
    batch = args.per_device_batch_size * args.grad_accum
    if batch % args.num_generations == 0:
        return None
    return (
        f"train.per_device_batch_size x train.grad_accum = {batch} must be a multiple of "
        f"train.num_generations={args.num_generations} (each prompt's completions are compared together); "
        f"fix: e.g. train.per_device_batch_size={args.num_generations}"
    )
