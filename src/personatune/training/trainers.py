"""TRL trainers configured from TrainArgs (never subclassed), and the fixed reference they train against.

- `TrainerRun`: where a trainer writes, its seed and its callbacks (TrainArgs holds the rest).
- `build_dpo_trainer`, `build_sft_trainer`, `build_sdft_trainer`, `build_grpo_trainer`, `build_rloo_trainer`.
  The KL penalty `beta` is always set explicitly and must be > 0 while a KL gate exists (TRL's GRPO default is 0 =
  no KL term and no reference model at all).
- `use_prompted_reference`: DPO's reference log-probs from the baseline given the persona context (drift-KL reference).
- `reference_of`: with LoRA the policy itself with its adapters disabled (exactly the base weights, no second copy in
  memory; TRL's DPO/GRPO/RLOO use the same reference under PEFT); with full fine-tuning the trainer's own frozen
  reference model (`trainer.ref_model`; for DPO we hand TRL a frozen copy we made).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from personatune.errors import ConfigError
from personatune.training.args import TrainArgs, check_beta, online_batch_problem, sdft_peft_problem


@dataclass
class TrainerRun:
    """The per-run part of a trainer build (TrainArgs is the per-config part).

    Attributes:
        output_dir: TRL's working folder.
        seed: the run seed, used unless `TrainArgs.seed` is set (None = 0).
        callbacks: TrainerCallbacks (e.g. PersonaEvalCallback(...).hooks()).
    """

    output_dir: str | Path
    seed: int | None = None
    callbacks: list[Any] = field(default_factory=list)


def resolve_bf16(setting: Literal["auto"] | bool, device: Any) -> bool:
    """bf16 mixed precision on or off: 'auto' turns it on where the device multiplies bfloat16 natively
    (`models.native_bf16`: a CUDA GPU with bf16, a CPU with AMX or AVX512-BF16); where it is emulated, off.

    Mixed precision keeps float32 master weights and runs the forward and backward products in bfloat16 under
    torch.autocast (accelerate wraps the prepared models' forward, the GKD teacher's too); every measurement (the
    in-training evals, KL, the gates) runs off that wrapper, in model.dtype (`evaluation.measured_in_model_dtype`).
    Measured on stage 5's GKD steps: benchmarks/bench_train_precision.py.
    """
    from personatune.models import native_bf16

    if setting != "auto":
        return bool(setting)
    return native_bf16(str(device))


def lora_config(args: TrainArgs) -> Any:
    """peft.LoraConfig from TrainArgs, or None for full fine-tuning."""
    if args.peft != "lora":
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=args.target_modules,
        task_type="CAUSAL_LM",
    )


def _common(args: TrainArgs, model: Any, output_dir: str | Path, seed: int) -> dict[str, Any]:
    """TrainingArguments shared by every TRL config (the same values for DPO, GRPO and RLOO)."""
    device = next(model.parameters()).device
    import inspect

    from transformers import TrainingArguments

    # transformers 5.x renamed gradient_checkpointing to activation_checkpointing (the old name warns).
    ckpt_key = (
        "activation_checkpointing"
        if "activation_checkpointing" in inspect.signature(TrainingArguments).parameters
        else "gradient_checkpointing"
    )
    return dict(
        output_dir=str(output_dir),
        learning_rate=args.learning_rate,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps if args.max_steps else -1,
        per_device_train_batch_size=args.per_device_batch_size,
        gradient_accumulation_steps=args.grad_accum,
        logging_steps=args.logging_steps,
        # Checkpoints are written by PersonaEvalCallback at eval steps only: the KL budget decides which to keep.
        save_strategy="no",
        report_to=args.report_to,
        seed=seed,
        bf16=resolve_bf16(args.bf16, device),
        use_cpu=(device.type == "cpu"),
        disable_tqdm=True,
        **{ckpt_key: args.gradient_checkpointing},
    )


def _seed(args: TrainArgs, seed: int | None) -> int:
    return args.seed if args.seed is not None else (seed or 0)


def _callbacks(run: TrainerRun) -> list[Any] | None:
    return list(run.callbacks) or None


# --- trainer builders ----------------------------------------------------------------------------
def build_dpo_trainer(
    model: Any,
    tokenizer: Any,
    train_dataset: Any,
    args: TrainArgs,
    run: TrainerRun,
    *,
    max_kl: float | None,
    ref_model: Any = None,
    reference_context: list[dict[str, str]] | None = None,
) -> Any:
    """A TRL DPOTrainer on conversational preference data (prompt / chosen / rejected).

    Args:
        model: the policy (a plain causal LM; LoRA is applied by TRL from `peft_config`).
        tokenizer: its tokenizer, with a chat template.
        train_dataset: a datasets.Dataset with prompt / chosen / rejected columns (prompts carry no system turn).
        args: TrainArgs (algorithm is not read here).
        run: TRL's working folder, the run seed (used unless args.seed is set), the callbacks.
        max_kl: the KL gate (nats/token), or None when no KL gate exists.
        ref_model: the frozen reference; default a frozen copy of `model` (full fine-tuning) or the policy with its
            adapters off (LoRA).
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
        raise ConfigError(
            f"train.dpo_loss_weights has {len(args.dpo_loss_weights)} entries for {len(args.dpo_loss)} train.dpo_loss "
            f"entries {args.dpo_loss}; fix: give one weight per loss, or leave it unset"
        )
    cfg = DPOConfig(
        **_common(args, model, run.output_dir, _seed(args, run.seed)),
        beta=args.beta,
        max_length=args.max_length,
        loss_type=list(args.dpo_loss),
        loss_weights=args.dpo_loss_weights,
    )
    peft_config = lora_config(args)
    if peft_config is None and ref_model is None:
        # TRL would reload the reference from model.config's path; a copy also works for in-memory models.
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    trainer = DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=cfg,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=_callbacks(run),
    )
    if reference_context is not None:
        use_prompted_reference(trainer, reference_context, ref_model=ref_model)
    return trainer


def prompted_reference_logps(
    reference: Any,
    tokenizer: Any,
    prompts: list[list[dict[str, str]]],
    completions: list[list[int]],
    context: list[dict[str, str]],
    *,
    batch_size: int = 8,
) -> list[float]:
    """Summed log-probabilities of each completion's tokens under `reference` given the persona context c before the prompt.

    `completions` are token ids exactly as the trainer tokenized them (TRL's `chosen_ids` / `rejected_ids`), so the
    reference scores the same tokens the policy does; only the prefix differs (c + prompt instead of the prompt).
    """
    import torch

    from personatune.kl import response_logprobs
    from personatune.models import encode_chat

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[float] = []
    kept: dict = {}  # c's keys and values, run once for all batches (the reference is frozen)
    with torch.inference_mode():
        for i in range(0, len(prompts), batch_size):
            prefixes = [
                encode_chat(tokenizer, list(context) + list(p), add_generation_prompt=True)
                for p in prompts[i : i + batch_size]
            ]
            resp = [list(c) or [pad] for c in completions[i : i + batch_size]]
            for lp, r, c in zip(
                response_logprobs(reference, prefixes, resp, pad, keep=kept), resp, completions[i : i + batch_size]
            ):
                tok = torch.tensor(r, device=lp.device)
                out.append(float(lp.gather(-1, tok[:, None]).squeeze(-1)[: len(c)].sum()))
    return out


def use_prompted_reference(
    trainer: Any, context: list[dict[str, str]], *, ref_model: Any = None, batch_size: int = 8
) -> Any:
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
    from personatune.training.evaluation import measured_in_model_dtype

    with measured_in_model_dtype(reference):  # the baseline's log-probs in model.dtype, also under train.bf16
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


def build_sft_trainer(model: Any, tokenizer: Any, train_dataset: Any, args: TrainArgs, run: TrainerRun) -> Any:
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

    cfg = SFTConfig(
        **_common(args, model, run.output_dir, _seed(args, run.seed)),
        max_length=args.max_length,
        completion_only_loss=True,
    )
    return SFTTrainer(
        model=model,
        args=cfg,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        peft_config=lora_config(args),
        callbacks=_callbacks(run),
    )


def build_sdft_trainer(model: Any, tokenizer: Any, train_dataset: Any, args: TrainArgs, run: TrainerRun) -> Any:
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

    problem = sdft_peft_problem(args)
    if problem:
        raise ConfigError(problem)
    common = _common(args, model, run.output_dir, _seed(args, run.seed))
    cfg = SDFTConfig(
        **common,
        max_prompt_length=args.max_length,
        max_completion_length=args.max_completion_length,
        num_generations=1,
        temperature=1.0,
        top_p=1.0,
        distillation_mode="full_logits",
        distillation_alpha=args.sdft_alpha,
        teacher_model_kind="base",
        teacher_prompt_template=args.sdft_template,
    )
    return SDFTTrainer(
        model=model,
        args=cfg,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        peft_config=lora_config(args),
        callbacks=_callbacks(run),
    )


def _online_config(
    cls: Any, args: TrainArgs, model: Any, output_dir: str | Path, seed: int, max_kl: float | None
) -> Any:
    check_beta(args.beta, max_kl)
    problem = online_batch_problem(args)
    if problem:
        raise ConfigError(problem)
    # beta is passed explicitly: TRL's GRPO default (0) would silently drop the KL term and the reference model.
    return cls(
        **_common(args, model, output_dir, seed),
        beta=args.beta,
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
    )


def build_grpo_trainer(
    model: Any,
    tokenizer: Any,
    train_dataset: Any,
    args: TrainArgs,
    run: TrainerRun,
    *,
    reward_funcs: list[Callable[..., list[float]]],
    max_kl: float | None,
) -> Any:
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

    cfg = _online_config(GRPOConfig, args, model, run.output_dir, _seed(args, run.seed), max_kl)
    return GRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=cfg,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        peft_config=lora_config(args),
        callbacks=_callbacks(run),
    )


def build_rloo_trainer(
    model: Any,
    tokenizer: Any,
    train_dataset: Any,
    args: TrainArgs,
    run: TrainerRun,
    *,
    reward_funcs: list[Callable[..., list[float]]],
    max_kl: float | None,
) -> Any:
    """A TRL RLOOTrainer (TRL 1.x: same data and reward interface as GRPO). Arguments as in `build_grpo_trainer`.

    Raises:
        ConfigError: beta is 0 while a KL gate exists, or the batch is not a multiple of num_generations.
    """
    from trl import RLOOConfig, RLOOTrainer

    cfg = _online_config(RLOOConfig, args, model, run.output_dir, _seed(args, run.seed), max_kl)
    return RLOOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=cfg,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        peft_config=lora_config(args),
        callbacks=_callbacks(run),
    )


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

    @property
    def config(self) -> Any:
        """The base model's config (kl.response_logprobs reads it to share a prefix's KV cache across rows)."""
        return self.model.config


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
