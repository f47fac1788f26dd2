"""What a sampled decoding step costs with transformers' sampler and with NucleusSampler (generation/sampler.py).

Plain `model.generate` on the default model (SmolLM2-135M), S sequences of stage-3-like persona prompts, T new tokens
(min_new_tokens = T, so every run decodes the same number of steps), one process, in the order greedy, transformers'
sampler (`do_sample=True`, T 0.8, top-p 0.95, top_k off), NucleusSampler (same T and top-p), then the three again in
reverse; each reported by its median, in ms per step. Then, on NucleusSampler's steps: how wide the nucleus was (tokens),
and the share of steps in which some row's nucleus was wider than 256 and than 4,096 candidates (the sampler's first
two search widths). The draws differ between the samplers; their distribution is the same (tests/unit/test_sampler.py).

Run: python benchmarks/bench_sampler.py [--sequences 32] [--tokens 64] [--threads 2] [--dtype float32]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
from transformers import LogitsProcessorList

from personatune import models
from personatune.generation import sampler as nucleus_sampler
from personatune.models import encode_chat

QUESTIONS = [
    "How do I fix a flat bicycle tyre?",
    "What's your favourite food?",
    "I feel a bit sad today.",
    "Can you explain recursion?",
    "Tell me a joke.",
    "What is 12 times 12?",
    "Should I quit my job to travel?",
    "Describe the sea at night.",
]
SYSTEM = (
    "You are Captain Nova, the cheerful captain of a starship who talks like an old sailor: optimistic, adventurous, "
    "protective of the crew, encouraging and warmly funny. Answer the user's request in a few sentences."
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sequences", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = models.load_model_and_tokenizer(models.DEFAULT_MODEL, dtype=args.dtype, device="cpu")
    model.eval()
    rows = [
        encode_chat(
            tok,
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
        )
        for i in range(args.sequences)
    ]
    width = max(map(len, rows))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    common = {"max_new_tokens": args.tokens, "min_new_tokens": args.tokens, "top_k": None, "pad_token_id": pad}
    widths: list[list[int]] = []

    class Recording(nucleus_sampler.NucleusSampler):
        def __call__(self, input_ids, scores):  # noqa: ANN001, ANN204 - the LogitsProcessor protocol
            probs = torch.softmax(scores.float() / self.temperature, dim=-1).sort(-1, descending=True).values
            widths.append(((probs.cumsum(-1) - probs) < self.top_p).sum(-1).tolist())
            return super().__call__(input_ids, scores)

    variants = {
        "greedy (no sampling)": {"do_sample": False},
        "transformers' sampler (do_sample=True)": {"do_sample": True, "temperature": 0.8, "top_p": 0.95},
        "NucleusSampler": {
            "do_sample": False,
            "logits_processor": LogitsProcessorList([nucleus_sampler.NucleusSampler(0.8, 0.95)]),
        },
    }
    one, five, _ = os.getloadavg()
    print(
        f"{models.DEFAULT_MODEL} ({model.dtype}), {platform.machine()}, {args.threads} threads, torch {torch.__version__}; "
        f"{args.sequences} sequences, prompt {width} tokens, {args.tokens} new tokens; load average {one:.2f} / {five:.2f}"
    )
    times: dict[str, list[float]] = {k: [] for k in variants}
    with torch.inference_mode():
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, do_sample=False, pad_token_id=pad)
        for order in (list(variants), list(reversed(variants))):
            for name in order:
                torch.manual_seed(0)
                t0 = time.perf_counter()
                model.generate(input_ids=ids, attention_mask=mask, **common, **variants[name])
                times[name].append((time.perf_counter() - t0) / args.tokens * 1000)
        model.generate(
            input_ids=ids,
            attention_mask=mask,
            **common,
            do_sample=False,
            logits_processor=LogitsProcessorList([Recording(0.8, 0.95)]),
        )
    print()
    print("| variant | ms per step (median) | runs | ratio to transformers' sampler |")
    print("|---|---|---|---|")
    ref = statistics.median(times["transformers' sampler (do_sample=True)"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med:.0f} | {', '.join(f'{t:.0f}' for t in ts)} | {ref / med:.2f}x |")
    flat = sorted(w for step in widths for w in step)
    print()
    print(
        f"nucleus width over {len(flat)} (step, sequence) draws: median {statistics.median(flat):.0f} tokens, "
        f"90th percentile {flat[int(0.9 * (len(flat) - 1))]}, max {flat[-1]}; steps where some sequence's nucleus was "
        f"wider than 256: {sum(max(s) > 256 for s in widths)}/{len(widths)}, wider than 4096: "
        f"{sum(max(s) > 4096 for s in widths)}/{len(widths)}"
    )


if __name__ == "__main__":
    main()
