"""Where does the stage-5 model's drift KL come from? Training prompts against held-out prompts, and by position.

Drift KL of reference-sample SFT stops near 0.215 nats/token whatever the budget or the number of samples per prompt
(docs/benchmarks.md, "Stage 5: more training, then more data"). This diagnostic separates four explanations:

- generalization: the student matches the persona-prompted reference on the prompts it was trained on, not on new
  ones -> drift KL on the training prompts far below the held-out figure;
- position: the gap sits in the first response tokens (how an answer opens) or in long tails (loops);
- a few sequences: a heavy tail of degenerate samples carries the mean;
- the end of the answer: the part of the KL in the end-of-answer token, p(EOS) log(p(EOS)/q(EOS)) summed over
  positions ("EOS term", nats/token), and the share of samples that end before the 64-token cap.

For each policy (the stage-1 baseline without the persona context = step 0, and RUN_DIR/05_optimization/model) and each
prompt set (stage 3's training prompts, the held-out prompts), it samples one response per prompt at temperature 1 with
no system prompt and measures drift KL exactly as `personatune.kl.measure_drift` (same sampling and reference code):
mean per token, by response position, and the share of the total carried by the top 10 % of sequences.

Run: python benchmarks/experiments/drift_split.py RUN_DIR [--prompts 48] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path


def drift_tokens(policy, reference, tok, prompts, context, seed, max_new_tokens=64, batch_size=8):
    """Per-token drift KL tensors (one per sequence), as `kl.measure_drift` computes them (its loop, kept here because
    measure_drift returns only the summaries), with each sequence's end-of-answer term and whether it ended."""
    import torch

    from personatune.kl import _sample_responses, kl_from_logprobs, response_logprobs
    from personatune.models import encode_chat

    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out, eos_terms, ended = [], [], []
    eos = tok.eos_token_id
    with torch.inference_mode():
        for s in range(0, len(prompts), batch_size):
            chunk = prompts[s : s + batch_size]
            plain = [encode_chat(tok, p, add_generation_prompt=True) for p in chunk]
            prompted = [encode_chat(tok, list(context) + list(p), add_generation_prompt=True) for p in chunk]
            responses, lp = _sample_responses(policy, tok, plain, max_new_tokens=max_new_tokens, gen=gen, pad=pad)
            lq = response_logprobs(reference, prompted, responses, pad)
            out += [kl_from_logprobs(a, b) for a, b in zip(lp, lq)]
            # The end-of-answer part of the KL: p(EOS) log(p(EOS)/q(EOS)) at every position.
            eos_terms += [float((a[:, eos].exp() * (a[:, eos] - b[:, eos])).sum()) for a, b in zip(lp, lq)]
            ended += [r[-1] == eos for r in responses]
    return out, eos_terms, ended


BUCKETS = [(0, 1), (1, 4), (4, 16), (16, 64)]


def describe(kls, eos_terms, ended) -> str:
    tokens = sum(int(k.numel()) for k in kls)
    total = sum(float(k.sum()) for k in kls)
    parts = [f"drift {total / tokens:.3f} ({tokens} tok)"]
    for a, b in BUCKETS:
        vals = [float(v) for k in kls for v in k[a:b]]
        parts.append(f"pos {a}-{b - 1}: {sum(vals) / max(1, len(vals)):.3f}")
    seq = sorted((float(k.sum()) for k in kls), reverse=True)
    top = max(1, len(seq) // 10)
    parts.append(f"top 10% seq share {sum(seq[:top]) / max(1e-9, sum(seq)):.2f}")
    parts.append(f"EOS term {sum(eos_terms) / tokens:.3f}")
    parts.append(f"ended before the cap {sum(ended) / len(ended):.2f}")
    return " | ".join(parts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="run directory with stages 1-5 done")
    ap.add_argument("--prompts", type=int, default=48, help="prompts per set (count)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sets", default="train,heldout", help="prompt sets to measure (comma-separated)")
    ap.add_argument(
        "--model", type=Path, default=None, help="the trained model (default RUN_DIR/05_optimization/model)"
    )
    a = ap.parse_args()

    from personatune import models
    from personatune.config import load_config
    from personatune.rundir import RunDir
    from personatune.stages.optimization_common import load_inputs
    from personatune.stages.reference_sft import training_prompts
    from personatune.training import EvalSet

    model_dir = a.model or a.run / "05_optimization" / "model"
    if not (a.run / "config.yaml").is_file() or not model_dir.is_dir():
        print(
            f"drift_split: error: {a.run} has no config.yaml or no {model_dir}; fix: pass a run directory with stage 5 done"
        )
        return 2
    config = load_config(str(a.run / "config.yaml"), [])
    rd = RunDir(a.run)
    inp = load_inputs(config, rd)
    reference, tok = models.load_configured_model(inp.baseline, config.model)
    student, _ = models.load_configured_model(str(model_dir), config.model)
    sets = {
        "train": [s.messages for s in training_prompts(rd)][: a.prompts],
        "heldout": EvalSet.from_rows(inp.held_rows, a.prompts).prompts,
    }
    for pname, policy in (("baseline (step 0)", reference), ("stage-5 model", student)):
        for sname, prompts in ((k, v) for k, v in sets.items() if k in a.sets.split(",")):
            measured = drift_tokens(
                policy, reference, tok, prompts, inp.context, a.seed, config.train.kl_max_new_tokens
            )
            print(f"{pname:18s} {sname:8s} n={len(prompts)} | {describe(*measured)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
