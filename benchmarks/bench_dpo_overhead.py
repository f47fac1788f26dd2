"""Overhead of personatune's DPO path over a plain TRL DPOTrainer script, same model, data and hyperparameters.

    python benchmarks/bench_dpo_overhead.py [--model smollm2-135m-instruct|tiny] [--steps 8] [--rounds 2]

Both sides train LoRA DPO for `--steps` optimizer steps on the same pairs, with identical DPOConfig values:
- plain:       DPOConfig(...) + DPOTrainer(model, args, train_dataset, processing_class, peft_config) — a typical script;
- personatune: training.build_dpo_trainer(...) with PersonaEvalCallback attached, its evaluation DISABLED
               (evaluate=None, eval_every=0): the callback then only saves the end-of-training adapter checkpoint,
               which is inside the timed region. In-training evals (KL + persona metrics) are extra work by design,
               priced separately in docs/optimization.md, not here.
After one untimed warm-up round, rounds alternate plain/personatune so drift on a shared machine hits both; the median of the rounds is reported.
Tokens/s = (prompt + chosen + rejected tokens of the pairs consumed) / wall time of `trainer.train()`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

PAIRS = [
    ("How is the weather today?", "Ahoy, crew! Clear skies ahead and a fair wind for us all.", "It is fine."),
    ("Can you help me fix my code?", "Aye, let us chart that bug together, step by step, crew!", "No."),
    ("I feel sad today.", "Steady now, friend. Every storm passes, and we sail on together.", "Ok."),
    ("What is two plus two?", "Four, by the stars! Simple navigation, crew.", "4"),
    ("Tell me a joke.", "Why did the comet blush? It saw a star, crew!", "No jokes."),
    ("Where should I travel?", "To the far moons, friend. Adventure waits beyond the horizon!", "Anywhere."),
    ("Recommend a book.", "The Starlog of the Nova, crew: a grand tale of brave explorers.", "Any book."),
    ("Good morning!", "Ahoy and good morning, crew! Ready for a bright new day?", "Morning."),
]


def dataset(n: int):
    from datasets import Dataset

    rows = [
        {
            "prompt": [{"role": "user", "content": p}],
            "chosen": [{"role": "assistant", "content": c}],
            "rejected": [{"role": "assistant", "content": r}],
        }
        for p, c, r in PAIRS
    ]
    return Dataset.from_list([rows[i % len(rows)] for i in range(n)])


def pair_tokens(tok, ds) -> list[int]:
    from personatune.models import encode_chat

    out = []
    for r in ds:
        p = len(encode_chat(tok, r["prompt"], add_generation_prompt=True))
        c = len(encode_chat(tok, r["prompt"] + r["chosen"], add_generation_prompt=False)) - p
        j = len(encode_chat(tok, r["prompt"] + r["rejected"], add_generation_prompt=False)) - p
        out.append(p + c + p + j)  # DPO runs prompt+chosen and prompt+rejected
    return out


def run_plain(model, tok, ds, a, out_dir: Path) -> float:
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from personatune.training import _common

    cfg = DPOConfig(**_common(a, model, out_dir, 0), beta=a.beta, max_length=a.max_length)  # identical values
    tr = DPOTrainer(
        model=model,
        args=cfg,
        train_dataset=ds,
        processing_class=tok,
        peft_config=LoraConfig(
            r=a.lora_r,
            lora_alpha=a.lora_alpha,
            lora_dropout=a.lora_dropout,
            target_modules=a.target_modules,
            task_type="CAUSAL_LM",
        ),
    )
    t0 = time.perf_counter()
    tr.train()
    return time.perf_counter() - t0


def run_ours(model, tok, ds, a, out_dir: Path) -> float:
    from personatune.training import PersonaEvalCallback, TrainerRun, build_dpo_trainer

    cb = PersonaEvalCallback(None, out_dir, a.model_copy(update={"eval_every": 0, "eval_at_start": False}), max_kl=0.1)
    tr = build_dpo_trainer(model, tok, ds, a, TrainerRun(out_dir / "trl", 0, [cb.hooks()]), max_kl=0.1)
    cb.bind(tr)
    t0 = time.perf_counter()
    tr.train()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    a_ = ap.parse_args(argv)
    import torch
    import transformers

    from personatune import models
    from personatune.training import TrainArgs

    transformers.logging.set_verbosity_error()
    if a_.threads:
        torch.set_num_threads(a_.threads)
    args = TrainArgs(
        max_steps=a_.steps,
        per_device_batch_size=a_.batch,
        lora_r=16,
        lora_alpha=32,
        learning_rate=5e-5,
        logging_steps=1000,
        max_length=256,
    )
    ds = dataset(a_.steps * a_.batch)
    _, tok = models.load_model_and_tokenizer(a_.model)
    tokens = sum(pair_tokens(tok, ds))
    times: dict[str, list[float]] = {"plain TRL": [], "personatune": []}
    with tempfile.TemporaryDirectory() as tmp:
        # Round 0 is an untimed warm-up of both paths (first-call costs: imports, kernels, dataset caching).
        for r in range(a_.rounds + 1):
            for name, fn in (("plain TRL", run_plain), ("personatune", run_ours)):
                model, tok = models.load_model_and_tokenizer(a_.model, for_training=True)
                torch.manual_seed(0)
                t = fn(model, tok, ds, args, Path(tmp) / f"{name.split()[0]}{r}")
                if r:
                    times[name].append(t)
                print(f"  round {r}{' (warm-up)' if not r else ''} {name:12s} {t:7.2f} s", file=sys.stderr)
    print(
        f"model={a_.model} LoRA r=16 DPO steps={a_.steps} batch={a_.batch} tokens/run={tokens} torch threads={torch.get_num_threads()} rounds={a_.rounds}"
    )
    print(f"{'path':14s} {'median s':>9s} {'tokens/s':>9s}  runs (s)")
    tps = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        tps[name] = tokens / med
        print(f"{name:14s} {med:9.2f} {tps[name]:9.1f}  {', '.join(f'{t:.2f}' for t in ts)}")
    print(f"ratio personatune / plain = {tps['personatune'] / tps['plain TRL']:.3f}x (target >= 0.9x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
