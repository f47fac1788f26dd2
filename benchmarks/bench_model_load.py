"""Model loading figures: GGUF load, one-off conversion, cached reload, greedy generation speed.

Prints, per repetition and as a median:
  (a) load from GGUF (transformers dequantizes every tensor),
  (b) conversion to a plain checkpoint (includes its own GGUF load; written into a fresh temp cache
      each repetition unless --cache-dir is given, so the conversion really runs),
  (c) reload of the converted checkpoint through `load_model_and_tokenizer`,
  (d) greedy generation tokens/s for one chat message, GGUF-loaded vs converted model,
and whether the GGUF-loaded and converted models produce identical greedy tokens.

    python benchmarks/bench_model_load.py --repeats 3 --max-new-tokens 64
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from personatune import models

PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper who finds a message in a bottle."}]


def greedy(model, tok, max_new_tokens: int) -> tuple[list[int], float]:
    """Greedy-generate a reply to PROMPT; return (new token ids, seconds)."""
    ids = torch.tensor([models.encode_chat(tok, PROMPT)])
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
    return out[0, ids.shape[1] :].tolist(), time.perf_counter() - t0


def fmt(xs: list[float], unit: str) -> str:
    return f"median {statistics.median(xs):7.2f} {unit}   runs: " + ", ".join(f"{x:.2f}" for x in xs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--model", default=models.DEFAULT_MODEL, help="a GGUF model name or .gguf path (default: %(default)s)"
    )
    p.add_argument("--max-new-tokens", type=int, default=64, help="greedy tokens to generate per run")
    p.add_argument("--repeats", type=int, default=3, help="repetitions of each measurement")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave torch's default)")
    p.add_argument(
        "--cache-dir", default=None, help="convert into this cache (default: a fresh temp folder per repetition)"
    )
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    source = models.resolve_model(a.model)
    if source.kind != "gguf":
        p.error(f"--model must resolve to a GGUF file, got kind {source.kind!r}")

    print(f"model {source.name}: {source.gguf_path} ({source.gguf_path.stat().st_size / 2**20:.1f} MiB)")
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, device cpu, max_new_tokens {a.max_new_tokens}, repeats {a.repeats}"
    )
    load_s, conv_s, reload_s, tps_gguf, tps_conv = [], [], [], [], []
    identical, n_tokens, text = [], 0, ""
    for r in range(a.repeats):
        t0 = time.perf_counter()
        gm, gtok = models.load_gguf(source)
        load_s.append(time.perf_counter() - t0)
        g_ids, g_s = greedy(gm, gtok, a.max_new_tokens)
        tps_gguf.append(len(g_ids) / g_s)
        del gm

        with tempfile.TemporaryDirectory() as tmp:
            cache = a.cache_dir or tmp
            t0 = time.perf_counter()
            path = models.ensure_converted(source, cache)
            conv_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            cm, ctok = models.load_model_and_tokenizer(a.model, dtype="float32", device="cpu", cache_dir=cache)
            reload_s.append(time.perf_counter() - t0)
            tied = cm.get_output_embeddings().weight.data_ptr() == cm.get_input_embeddings().weight.data_ptr()
            c_ids, c_s = greedy(cm, ctok, a.max_new_tokens)
            tps_conv.append(len(c_ids) / c_s)
            same_template = ctok.chat_template == gtok.chat_template
            size = sum(f.stat().st_size for f in Path(path).iterdir()) / 2**20
        identical.append(g_ids == c_ids)
        n_tokens, text = len(c_ids), ctok.decode(c_ids, skip_special_tokens=True)
        print(
            f"  run {r + 1}: gguf load {load_s[-1]:.2f}s, convert {conv_s[-1]:.2f}s, reload {reload_s[-1]:.2f}s, "
            f"gguf {tps_gguf[-1]:.1f} tok/s, converted {tps_conv[-1]:.1f} tok/s, identical={identical[-1]}, "
            f"tied_embeddings={tied}, chat_template_kept={same_template}, checkpoint {size:.0f} MiB"
        )

    print(f"(a) first load from GGUF (dequantize):   {fmt(load_s, 's')}")
    print(f"(b) conversion to plain checkpoint:      {fmt(conv_s, 's')}")
    print(f"(c) reload of converted checkpoint:      {fmt(reload_s, 's')}")
    print(
        f"(d) greedy tokens/s, GGUF-loaded model:  {fmt(tps_gguf, 'tok/s')}  ({n_tokens} new tokens, {torch.get_num_threads()} threads)"
    )
    print(f"    greedy tokens/s, converted model:    {fmt(tps_conv, 'tok/s')}")
    print(f"GGUF and converted greedy outputs identical: {all(identical)} ({sum(identical)}/{len(identical)} runs)")
    print(f"reply: {text[:200]!r}")
    return 0 if all(identical) else 1


if __name__ == "__main__":
    sys.exit(main())
