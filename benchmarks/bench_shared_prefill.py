"""Stage-3 sampling: best-of-n with the prompt prefilled once (HFBackend share_prefill) vs n times.

Stage 3 asks the teacher for n candidates per prompt behind a long persona system prompt with few-shot
turns (~680 tokens for Captain Nova). `num_return_sequences = n` prefills every copy of the prompt;
`share_prefill` prefills each prompt once and repeats its KV cache. Same prompts, model, sampling
parameters and seed, side by side, in alternating order; also checks the draws are identical.

Run: python benchmarks/bench_shared_prefill.py [--prompts 12] [--n 4] [--max-new-tokens 64] [--batch-size 16] [--threads 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from personatune import models
from personatune.embeddings import Embedder
from personatune.generation.hf import HFBackend, PrefillOptions
from personatune.models import encode_chat
from personatune.persona import load_persona
from personatune.persona_prompt import persona_conversation
from personatune.scenarios import build_scenarios
from personatune.stages.s3_consistency_data import cap_scenarios

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--persona", default=str(HERE.parent / "examples" / "personas" / "captain_nova.yaml"))
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument(
        "--batch-size",
        type=int,
        default=16,
        help="sequences per forward, as stage 3 (prompts per batch = batch_size // n)",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec = load_persona(args.persona)
    scen = cap_scenarios(build_scenarios(spec, Embedder.default(), seed=0), args.prompts)
    convs = [persona_conversation(spec, s.messages, few_shot=True, focus=s.targets) for s in scen]
    model, tok = models.load_model_and_tokenizer(args.model)
    lens = [len(encode_chat(tok, c, add_generation_prompt=True)) for c in convs]
    print(
        f"{args.model}, {platform.processor() or platform.machine()}, {args.threads} threads; {len(convs)} prompts "
        f"(mean {statistics.mean(lens):.0f} tokens) x n={args.n}, {args.max_new_tokens} new tokens, T=0.8, top_p=0.95, seed 0"
    )
    per = max(1, args.batch_size // args.n)
    times: dict[bool, list[float]] = {False: [], True: []}
    outs: dict[bool, list] = {}
    for r in range(args.repeats):
        for share in (False, True) if r % 2 == 0 else (True, False):
            b = HFBackend(model, tok, batch_size=per, prefill=PrefillOptions(share_prefill=share))
            t0 = time.perf_counter()
            outs[share] = b.generate(
                convs, max_new_tokens=args.max_new_tokens, temperature=0.8, top_p=0.95, n=args.n, seed=0
            )
            times[share].append(time.perf_counter() - t0)
    same = sum(a == b for x, y in zip(outs[False], outs[True]) for a, b in zip(x, y))
    total = sum(len(x) for x in outs[True])
    a, b = statistics.median(times[False]), statistics.median(times[True])
    print(
        f"num_return_sequences (prefill x{args.n}): median {a:.1f} s  runs {', '.join(f'{t:.1f}' for t in times[False])}"
    )
    print(f"share_prefill (prefill x1):            median {b:.1f} s  runs {', '.join(f'{t:.1f}' for t in times[True])}")
    print(f"speed-up {a / b:.2f}x; identical draws {same}/{total}")


if __name__ == "__main__":
    main()
