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
`kl.response_logprobs`, and returns the teacher's log-probabilities at the student's positions.

Then it measures drift KL of the result on the held-out prompts exactly as `drift_split.py` (same seed and sampling).

Run: python benchmarks/experiments/dense_distill.py RUN_DIR --out DIR [--steps 60] [--lr 5e-5] [--beta 0]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def template_prefixes(tok, context):
    """(student prefix, teacher prefix): the tokens that differ between a conversation without and with c before it."""
    from personatune.models import encode_chat

    probe = [{"role": "user", "content": "Hello there, how are you?"}]
    a = encode_chat(tok, probe, add_generation_prompt=True)
    b = encode_chat(tok, list(context) + probe, add_generation_prompt=True)
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return a[: len(a) - n], b[: len(b) - n]


class PromptedTeacher(torch.nn.Module):
    """The reference given c, seen through the student's token layout (left-padded rows that start with `ps`)."""

    def __init__(self, reference, ps, pt, pad):
        super().__init__()
        self.reference, self.ps, self.pt, self.pad = reference, list(ps), list(pt), pad
        self.config = reference.config  # GKDTrainer checks the teacher's vocabulary against the student's

    def forward(self, input_ids, attention_mask, **_):
        from personatune.kl import response_logprobs

        rows = [ids[m.bool()].tolist() for ids, m in zip(input_ids, attention_mask)]
        k = len(self.ps)
        assert all(r[:k] == self.ps for r in rows), "a row does not start with the student's template prefix"
        lp = response_logprobs(self.reference, [self.pt] * len(rows), [r[k:] for r in rows], self.pad)
        out = torch.zeros(*input_ids.shape, lp[0].shape[-1])
        for b, (r, m) in enumerate(zip(rows, attention_mask)):
            start = int((m == 0).sum())  # left padding
            # Real token j (j >= k) is predicted at padded position start + j - 1.
            out[b, start + k - 1 : start + len(r) - 1] = lp[b]
        return SimpleNamespace(logits=out)


def rows_for_gkd(tok, path: Path, cap: int):
    """Pre-tokenized rows: prompt (template, no system turn) + answer tokens; EOS only for answers that ended before the
    sampling cap (`cap` tokens; the samples are stored as text, so an answer re-tokenized to cap - 1 or more counts as cut)."""
    from personatune.models import encode_chat

    eos = tok.eos_token_id
    rows = []
    for line in path.read_text().splitlines():
        r = json.loads(line)
        p = encode_chat(tok, r["messages"][:-1], add_generation_prompt=True)
        a = tok(r["messages"][-1]["content"], add_special_tokens=False).input_ids
        a = a + [eos] if len(a) < cap - 1 else a
        text = tok.apply_chat_template(r["messages"][:-1], add_generation_prompt=True, tokenize=False)
        rows.append({"input_ids": p + a, "completion_mask": [0] * len(p) + [1] * len(a), "prompt": text})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--beta", type=float, default=0.0, help="GKD beta: 0 forward KL, 1 reverse KL")
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--stage5-eval", action="store_true", help="also stage 5's evaluate_policy on the same prompts")
    ap.add_argument("--save", type=Path, default=None, help="save the merged model here (for bench_capability.py)")
    a = ap.parse_args()

    from datasets import Dataset
    from drift_split import describe, drift_tokens
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from personatune import models
    from personatune.config import load_config
    from personatune.rundir import RunDir
    from personatune.stages.optimization_common import load_inputs
    from personatune.training import EvalSet
    from personatune.training.trainers import _common, lora_config

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
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ps, pt = template_prefixes(tok, inp.context)
    ds = Dataset.from_list(rows_for_gkd(tok, rows_path, config.train.kl_max_new_tokens))
    # The run's TrainingArguments (scheduler, batch, LoRA, seed: training.trainers._common), at the given steps and rate.
    args = config.train.model_copy(update={"max_steps": a.steps, "learning_rate": a.lr})
    cfg = GKDConfig(
        **_common(args, student, a.out, config.seed),
        lmbda=0.0,
        beta=a.beta,
        temperature=1.0,
        seq_kd=False,
        max_length=args.max_length,
    )
    trainer = GKDTrainer(
        model=student,
        teacher_model=PromptedTeacher(reference, ps, pt, pad),
        args=cfg,
        train_dataset=ds,
        processing_class=tok,
        peft_config=lora_config(args),
    )
    t0 = time.time()
    trainer.train()
    secs = time.time() - t0
    model = trainer.model.merge_and_unload().eval()
    evalset = EvalSet.from_rows(inp.held_rows, a.prompts)
    held = evalset.prompts
    measured = drift_tokens(model, reference, tok, held, inp.context, 0, config.train.kl_max_new_tokens)
    print(
        f"GKD beta={a.beta} lr={a.lr} steps={a.steps} rows={len(ds)} train {secs:.0f}s | heldout n={len(held)} | "
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
