"""Dense context distillation (`train.algorithm: gkd`): TRL's GKD trainer with the persona-prompted baseline as teacher.

Reference-sample SFT learns from one sampled token per answer position; its drift KL stopped near 0.215-0.25
nats/token on the main job's data, on training and held-out prompts alike (docs/benchmarks.md, "Where the drift floor
sits"). GKD (`trl.experimental.gkd`) trains on the same answers with the teacher's whole next-token distribution at
every answer token. Configured, not subclassed:

- `lmbda=0`: the dataset's answers, no on-policy generation; `seq_kd=False`; `temperature=1`.
- `beta=0`: forward KL(teacher || student) summed over the vocabulary, the divergence whose minimum is the teacher
  itself (the gate's drift KL, KL(student || teacher), is 0 there too).
- the teacher is `PromptedTeacher`: TRL hands its teacher the student's input (the prompt without a system turn);
  this module swaps the student's chat-template prefix for the persona context c before the baseline runs (the
  drift-KL reference of METRICS.md), using the shared-prefix `kl.response_logprobs`, and returns the baseline's
  log-probabilities at the student's positions. The baseline is frozen, so the keys and values of c (~650 tokens for
  the quickstart, more than the rows' own prompt and answer tokens) are computed at the first step and kept for the
  rest of the run (`keep_prefix`): the same target, a shorter teacher forward at every step.

`gkd_dataset` pre-tokenizes prompt/completion rows (TRL's collator takes `input_ids` + `completion_mask` as they
are) and checks, for every row, that prefix swap gives exactly the tokens `encode_chat(c + prompt)` gives — the
reference the gate measures. An answer that re-tokenizes to `cap - 1` tokens or more was (almost surely) cut at the
sampling cap: it gets no end-of-answer token, so the student is not taught to stop where the teacher did not.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from personatune.errors import ConfigError
from personatune.training.args import TrainArgs

__all__ = ["PromptedTeacher", "build_gkd_trainer", "gkd_dataset", "sharded_launch_problem", "template_prefixes"]


def template_prefixes(tokenizer: Any, context: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """(student prefix, teacher prefix): the leading tokens that differ between a conversation rendered without and
    with the persona context c before it (what is left after the longest common ending)."""
    from personatune.models import encode_chat

    probe = [{"role": "user", "content": "Hello there, how are you?"}]
    a = encode_chat(tokenizer, probe, add_generation_prompt=True)
    b = encode_chat(tokenizer, list(context) + probe, add_generation_prompt=True)
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return a[: len(a) - n], b[: len(b) - n]


def _torch_module() -> type:
    import torch

    return torch.nn.Module


class PromptedTeacher(_torch_module()):  # type: ignore[misc]
    """The baseline given c, seen through the student's token layout (left-padded rows that start with `student_prefix`).

    Args:
        reference: the baseline (a model, or `AdapterDisabledReference` of the LoRA policy); may be set after the
            trainer is built (`.reference = ...`), before the first step.
        student_prefix, teacher_prefix: from `template_prefixes`.
        pad: the pad token id.
        config: the model config GKDTrainer checks the teacher's vocabulary against.

    Attributes:
        keep_prefix: keep c's keys and values across steps (default; `kl.response_logprobs(keep=...)`); False runs c
            at every step (benchmarks/bench_train_precision.py compares the two).
    """

    def __init__(
        self, reference: Any, student_prefix: list[int], teacher_prefix: list[int], pad: int, config: Any
    ) -> None:
        super().__init__()
        self.reference, self.pad, self.config = reference, pad, config
        self.student_prefix, self.teacher_prefix = list(student_prefix), list(teacher_prefix)
        self.keep_prefix = True
        self._kept: dict[Any, Any] = {}

    def forward(self, input_ids: Any, attention_mask: Any, **_: Any) -> Any:
        import torch

        from personatune.kl import response_logprobs

        rows = [ids[m.bool()].tolist() for ids, m in zip(input_ids, attention_mask)]
        k = len(self.student_prefix)
        if any(r[:k] != self.student_prefix for r in rows):
            raise ValueError("a GKD row does not start with the student's chat-template prefix (see gkd_dataset)")
        keep = self._kept if self.keep_prefix else None
        lp = response_logprobs(
            self.reference, [self.teacher_prefix] * len(rows), [r[k:] for r in rows], self.pad, keep=keep
        )
        out = torch.zeros(*input_ids.shape, lp[0].shape[-1], device=lp[0].device, dtype=lp[0].dtype)
        for b, (r, m) in enumerate(zip(rows, attention_mask)):
            start = int((m == 0).sum())  # left padding
            # Real token j (j >= k) is predicted at padded position start + j - 1; earlier positions are masked (and
            # with an empty student prefix, k = 0, nothing in the row predicts its first token).
            j0 = max(k, 1)
            out[b, start + j0 - 1 : start + len(r) - 1] = lp[b][j0 - k :]
        return SimpleNamespace(logits=out)


def gkd_dataset(tokenizer: Any, rows: Any, context: list[dict[str, str]], cap: int | None) -> Any:
    """Pre-tokenized GKD rows from conversational prompt/completion rows (the SFT dataset of stage 5 or 6).

    Args:
        rows: a datasets.Dataset (or list of dicts) with `prompt` (messages, no system turn) and `completion`
            ([assistant message]).
        context: the persona context c (the teacher's prefix).
        cap: the sampling cap of the answers in tokens; answers of cap - 1 tokens or more get no end-of-answer token
            (None: every answer gets one).

    Returns:
        A datasets.Dataset with input_ids, completion_mask and prompt (the rendered prompt text TRL's collator reads).

    Raises:
        ConfigError: the chat template renders c + prompt as other tokens than c's prefix + the prompt (the teacher
            would not be the gate's reference), naming the first such prompt.
    """
    from datasets import Dataset

    from personatune.models import encode_chat

    ps, pt = template_prefixes(tokenizer, context)
    eos = tokenizer.eos_token_id
    out = []
    for r in rows:
        prompt = list(r["prompt"])
        p = encode_chat(tokenizer, prompt, add_generation_prompt=True)
        if p[: len(ps)] != ps or pt + p[len(ps) :] != encode_chat(
            tokenizer, list(context) + prompt, add_generation_prompt=True
        ):
            raise ConfigError(
                f"train.algorithm=gkd: the chat template renders the persona context + the prompt "
                f"{prompt[-1]['content'][:60]!r} as other tokens than the context's prefix followed by the prompt, so the "
                f"GKD teacher would not be the drift-KL reference; fix: use train.algorithm=sft (sft_source=reference) "
                f"with this model"
            )
        a = tokenizer(r["completion"][-1]["content"], add_special_tokens=False).input_ids
        if eos is not None and (cap is None or len(a) < cap - 1):
            a = a + [eos]
        text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        out.append({"input_ids": p + a, "completion_mask": [0] * len(p) + [1] * len(a), "prompt": text})
    return Dataset.from_list(out)


def sharded_launch_problem() -> str | None:
    """Why GKD cannot run under this `accelerate launch` (DeepSpeed or FSDP), or None. TRL's GKD would wrap the teacher
    module as an engine of its own; ours holds no weights (under LoRA it is the policy with its adapters off), which is
    untested there, so it is refused in one line instead (one process and DDP are tested)."""
    import os

    for var, name in (("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"), ("ACCELERATE_USE_FSDP", "FSDP")):
        if os.environ.get(var, "").lower() == "true":
            return (
                f"train.algorithm=gkd (or iterations.algorithm=gkd) under {name}: the persona-prompted teacher is not "
                f"supported there; fix: run the stage in one process or with configs/accelerate/cpu_2proc.yaml (DDP), "
                f"or set train.algorithm=sft (and iterations.algorithm=sft) for this launch"
            )
    return None


def build_gkd_trainer(
    model: Any,
    tokenizer: Any,
    train_dataset: Any,
    args: TrainArgs,
    run: Any,
    *,
    context: list[dict[str, str]],
    ref_model: Any = None,
) -> Any:
    """TRL's GKDTrainer distilling the persona-prompted baseline into the policy (module docstring).

    Args:
        train_dataset: from `gkd_dataset` (input_ids, completion_mask, prompt).
        run: a `trainers.TrainerRun`.
        context: the persona context c the teacher is given.
        ref_model: the baseline in memory; None = the policy with its adapters off (LoRA) or a frozen copy of the
            policy (full fine-tuning), the baseline when training starts from it.

    Returns:
        The configured trainer; `reference_of(trainer)` is the same baseline (without c).

    Raises:
        ConfigError: launched under DeepSpeed or FSDP (`sharded_launch_problem`).
    """
    import copy

    from trl.experimental.gkd import GKDConfig, GKDTrainer

    problem = sharded_launch_problem()
    if problem:
        raise ConfigError(problem)

    from personatune.training.trainers import (
        AdapterDisabledReference,
        _callbacks,
        _common,
        _seed,
        lora_config,
    )

    peft_config = lora_config(args)
    if peft_config is None and ref_model is None:
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ps, pt = template_prefixes(tokenizer, context)
    teacher = PromptedTeacher(ref_model, ps, pt, pad, model.config)
    cfg = GKDConfig(
        **_common(args, model, run.output_dir, _seed(args, run.seed)),
        lmbda=0.0,
        beta=0.0,
        temperature=1.0,
        seq_kd=False,
        max_length=args.max_length,
    )
    trainer = GKDTrainer(
        model=model,
        teacher_model=teacher,
        args=cfg,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=_callbacks(run),
    )
    if ref_model is None:
        # The baseline is the PEFT policy with its adapters off, which exists only once the trainer has wrapped it.
        teacher.reference = AdapterDisabledReference(trainer.model)
    # reference_of(trainer) reads the frozen reference of a full fine-tuning trainer here (GKD has no ref_model).
    trainer.ref_model = ref_model
    return trainer
