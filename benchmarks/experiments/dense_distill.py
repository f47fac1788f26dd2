"""Is the sampled token the limit? Stage 5's data trained with the persona-prompted teacher's full distribution.

Reference-sample SFT (the shipped stage-5 recipe) learns from the sampled tokens of the persona-prompted baseline:
one token per position of ~150-500 answers. Its drift KL stops near 0.215-0.25 nats/token, on the training prompts as
on held-out ones and at every response position (`drift_split.py`). This experiment trains on the SAME rows
(RUN_DIR/05_optimization/reference_sft.jsonl), the same LoRA, schedule and batch, by default the quickstart's learning
rate and the steps its stage 5 ran on the measured run (`--lr 5e-5 --steps 60`), but with TRL's GKD trainer (`trl.experimental.gkd`, `lmbda=0`: the dataset's answers, no
on-policy generation; `beta=0`: forward KL over the whole vocabulary at every answer token) against the teacher
"baseline given the persona context c" — the drift-KL reference itself.

TRL's GKD gives the teacher the student's input. `PromptedTeacher` (composition: a module handed to GKDTrainer as
its teacher) swaps the student's template prefix for c before the reference runs, using the project's shared-prefix
`kl.response_logprobs`, and returns the teacher's log-probabilities at the student's positions. Since 2026-12-02 this
is the stage-5 recipe `train.algorithm: gkd` (src/personatune/training/distill.py); this script calls the same
`gkd_dataset` / `build_gkd_trainer`, with the reference loaded as a separate model and no in-training evals.

Then it measures drift KL of the result on the held-out prompts exactly as `drift_split.py` (same seed and sampling).

Run: python benchmarks/experiments/dense_distill.py RUN_DIR --out DIR [--steps 60] [--lr 5e-5] (GKD beta is 0: forward KL)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--stage5-eval", action="store_true", help="also stage 5's evaluate_policy on the same prompts")
    ap.add_argument("--save", type=Path, default=None, help="save the merged model here (for bench_capability.py)")
    a = ap.parse_args()

    from drift_split import describe, drift_tokens

    from personatune import models
    from personatune.config import load_config
    from personatune.rundir import RunDir, read_jsonl
    from personatune.stages.optimization_common import load_inputs
    from personatune.training import EvalSet, TrainerRun
    from personatune.training.distill import build_gkd_trainer, gkd_dataset

    rows_path = a.run / "05_optimization" / "reference_sft.jsonl"
    if not (a.run / "config.yaml").is_file() or not rows_path.is_file():
        print(
            f"dense_distill: error: {a.run} has no config.yaml or no {rows_path}; fix: run stage 5 with train.sft_source=reference"
        )
        return 2
    config = load_config(str(a.run / "config.yaml"), [])
    torch.manual_seed(config.seed)
    rd = RunDir(a.run)
    inp = load_inputs(config, rd)
    reference, tok = models.load_configured_model(inp.baseline, config.model)
    student, _ = models.load_configured_model(inp.baseline, config.model, for_training=True)
    rows = [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in read_jsonl(rows_path)]
    ds = gkd_dataset(tok, rows, inp.context, config.train.kl_max_new_tokens)
    # The run's TrainingArguments (scheduler, batch, LoRA, seed: training.trainers._common), at the given steps and rate.
    args = config.train.model_copy(
        update={"algorithm": "gkd", "sft_source": "reference", "max_steps": a.steps, "learning_rate": a.lr}
    )
    trainer = build_gkd_trainer(
        student, tok, ds, args, TrainerRun(a.out, config.seed), context=inp.context, ref_model=reference
    )
    t0 = time.time()
    trainer.train()
    secs = time.time() - t0
    model = trainer.model.merge_and_unload().eval()
    evalset = EvalSet.from_rows(inp.held_rows, a.prompts)
    held = evalset.prompts
    measured = drift_tokens(model, reference, tok, held, inp.context, 0, config.train.kl_max_new_tokens)
    print(
        f"GKD beta=0 lr={a.lr} steps={a.steps} rows={len(ds)} train {secs:.0f}s | heldout n={len(held)} | "
        f"{describe(*measured)}",
        flush=True,
    )
    if a.stage5_eval:
        # Stage 5's own measurement (its sampling seed, decoding and stage-4 evaluator) on the same held-out prompts.
        from personatune import training
        from personatune.scoring.factory import scorer_for_run
        from personatune.stages.optimization_common import eval_settings, training_seed

        scorer, _ = scorer_for_run(config, rd, inp.spec)
        settings = eval_settings(config, training_seed(config), inp.context)
        ev = training.evaluate_policy(model, reference, tok, evalset, scorer, settings)
        print("stage-5 evaluation:", json.dumps({k: v for k, v in ev.summary().items() if k != "kl_reference"}))
        for p, t in list(zip(held, ev.texts))[:12]:
            print(f"  {p[-1]['content'][:60]!r} -> {t[:160]!r}")
    if a.save:
        models.save_model(model, tok, a.save)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
