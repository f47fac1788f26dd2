"""Generation throughput: batched HFBackend vs one-prompt-at-a-time `model.generate`, same prompts.

Both sides decode greedily with the same parameters (the backend's GenerationConfig), and both
count the new tokens actually produced (up to, not including, EOS), so tokens/s compares like
with like. The script also reports how many of the prompts got the identical greedy completion
both ways (padding changes float rounding a little, so a handful may differ in float32).

    python benchmarks/bench_generation.py                       # SmolLM2-135M-Instruct, 2 threads
    python benchmarks/bench_generation.py --batch-sizes 8,16,32 --threads 2 --prompts 32
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
import platform
import time

import torch
import yaml


def load_prompts(n: int) -> list[list[dict[str, str]]]:
    """The first `n` single-turn prompts of the built-in prompt bank, taken round-robin over contexts."""
    bank = yaml.safe_load(
        importlib.resources.files("personatune.data").joinpath("prompt_bank.yaml").read_text(encoding="utf-8")
    )
    pools = [[p for p in v if isinstance(p, str)] for v in bank.values()]
    out: list[str] = []
    while len(out) < n and any(pools):
        for pool in pools:
            if pool and len(out) < n:
                out.append(pool.pop(0))
    return [[{"role": "user", "content": p}] for p in out]


def sequential(model, tok, backend, convs, max_new_tokens: int) -> tuple[list[list[int]], int, float]:
    """Plain `model.generate` on one unpadded prompt at a time: (token lists, new tokens, seconds)."""
    from transformers import GenerationConfig

    from personatune.generation.hf import encode_chat

    cfg = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        pad_token_id=backend.pad_id,
        eos_token_id=backend.eos_ids,
    )
    eos = set(backend.eos_ids)
    outs, produced = [], 0
    t0 = time.perf_counter()
    with torch.inference_mode():
        for c in convs:
            ids = encode_chat(tok, c)
            x = torch.tensor([ids], device=backend.device)
            new = model.generate(input_ids=x, attention_mask=torch.ones_like(x), generation_config=cfg)[
                0, len(ids) :
            ].tolist()
            cut = next((i for i, t in enumerate(new) if t in eos), len(new))
            outs.append(new[:cut])
            produced += cut
    return outs, produced, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model", default="smollm2-135m-instruct", help="model name for personatune.models.load_model_and_tokenizer"
    )
    ap.add_argument("--prompts", type=int, default=32, help="number of chat prompts")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--batch-sizes", default="8,16,32", help="comma-separated HFBackend batch sizes to measure")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved passes per mode; the fastest is reported")
    args = ap.parse_args()

    from personatune import models
    from personatune.generation.hf import HFBackend

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, tok = models.load_model_and_tokenizer(args.model, device=args.device, dtype="float32")
    print(
        f"model {args.model} loaded in {time.perf_counter() - t0:.1f}s; torch {torch.__version__}, {args.threads} threads, "
        f"{platform.processor() or platform.machine()}, device {args.device}"
    )
    convs = load_prompts(args.prompts)
    backend = HFBackend(model, tok, batch_size=1)
    backend.generate(convs[:2], max_new_tokens=4, temperature=0.0)  # warm-up (allocations, kernels)
    sizes = [int(b) for b in args.batch_sizes.split(",")]

    # Interleaved repeats, best time per mode: on a shared 2-core machine another process can slow a
    # pass down many times over (OpenMP threads oversubscribed); the fastest pass is the least disturbed.
    best: dict[str, tuple[float, int, list]] = {}
    for r in range(args.repeats):
        out, n_tok, secs = sequential(model, tok, backend, convs, args.max_new_tokens)
        print(f"  pass {r + 1}: sequential {n_tok} tokens in {secs:.2f}s (load average {os.getloadavg()[0]:.2f})")
        if "seq" not in best or secs < best["seq"][0]:
            best["seq"] = (secs, n_tok, out)
        for bs in sizes:
            b = HFBackend(model, tok, batch_size=bs)
            out = b.generate_ids(convs, max_new_tokens=args.max_new_tokens, temperature=0.0)
            secs, n_tok = b.last_stats["seconds"], int(b.last_stats["new_tokens"])
            print(
                f"  pass {r + 1}: batched bs={bs} {n_tok} tokens in {secs:.2f}s (load average {os.getloadavg()[0]:.2f})"
            )
            if bs not in best or secs < best[bs][0]:
                best[bs] = (secs, n_tok, [o[0] for o in out])

    seq_s, seq_tokens, seq_out = best["seq"]
    seq_tps = seq_tokens / seq_s
    print(f"best of {args.repeats} passes, {len(convs)} prompts, max_new_tokens={args.max_new_tokens}, greedy:")
    print(f"sequential  : {seq_tokens} new tokens in {seq_s:.2f}s = {seq_tps:.1f} tokens/s")
    for bs in sizes:
        secs, tokens, out = best[bs]
        same = sum(o == s for o, s in zip(out, seq_out))
        print(
            f"batched bs={bs:<2d}: {tokens} new tokens in {secs:.2f}s = {tokens / secs:.1f} tokens/s; "
            f"speed-up {tokens / secs / seq_tps:.2f}x; identical greedy outputs {same}/{len(convs)}"
        )


if __name__ == "__main__":
    main()
