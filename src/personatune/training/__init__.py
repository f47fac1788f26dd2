"""Stage-5 and 6 training: TRL trainers configured (never subclassed), plus the persona/KL eval callback.

- `args.py`: `TrainArgs`, every knob of the optimization stage, one documented field each (nested in the run config
  as `train:`), and `check_beta`.
- `trainers.py`: `build_dpo_trainer`, `build_sft_trainer`, `build_sdft_trainer`, `build_grpo_trainer`,
  `build_rloo_trainer` from TrainArgs and a `TrainerRun` (folder, seed, callbacks); the DPO reference given the
  persona context (`use_prompted_reference`); the fixed reference of a built trainer (`reference_of`).
- `evaluation.py`: held-out prompts (`EvalSet`), one eval's decoding (`EvalSettings`), its samples (`eval_samples`), `evaluate_policy` ->
  `EvalResult` (exact drift KL and persona metrics of the policy's own samples), `metrics.jsonl` helpers.
- `callback.py`: `PersonaEvalCallback`, eval + checkpoint + KL-budget control every `train.eval_every` steps.

The reference: with LoRA it is the policy itself with its adapters disabled (exactly the base weights, no
second copy in memory; TRL's DPO/GRPO/RLOO use the same reference under PEFT). With full fine-tuning it is
the trainer's own frozen reference model (`trainer.ref_model`; for DPO we hand TRL a frozen copy we made).

These modules import only pydantic (and light personatune modules) at import time, so the run config can nest
`TrainArgs` without loading torch; everything heavy is imported inside the functions that need it.
"""

from personatune.training.args import DPOLoss, TrainArgs, check_beta
from personatune.training.callback import PersonaEvalCallback
from personatune.training.evaluation import (
    EvalResult,
    EvalSet,
    EvalSettings,
    append_jsonl,
    eval_samples,
    evaluate_policy,
    read_history,
)
from personatune.training.trainers import (
    AdapterDisabledReference,
    TrainerRun,
    _common,  # noqa: F401  (benchmarks/bench_dpo_overhead.py builds plain TRL with the same values)
    build_dpo_trainer,
    build_grpo_trainer,
    build_rloo_trainer,
    build_sdft_trainer,
    build_sft_trainer,
    lora_config,
    prompted_reference_logps,
    reference_of,
    resolve_bf16,
    use_prompted_reference,
)

__all__ = [
    "AdapterDisabledReference",
    "DPOLoss",
    "EvalResult",
    "EvalSet",
    "EvalSettings",
    "PersonaEvalCallback",
    "TrainArgs",
    "TrainerRun",
    "append_jsonl",
    "build_dpo_trainer",
    "build_grpo_trainer",
    "build_rloo_trainer",
    "build_sdft_trainer",
    "build_sft_trainer",
    "check_beta",
    "eval_samples",
    "evaluate_policy",
    "lora_config",
    "prompted_reference_logps",
    "read_history",
    "reference_of",
    "resolve_bf16",
    "use_prompted_reference",
]
