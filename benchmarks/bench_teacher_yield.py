"""Teacher yield of stage 3: share of prompts whose best-of-k candidate the scorer finds consistent.

Side by side on the same prompts, model, decoding and seed: the persona system prompt (+ few-shot turns)
with and without the targeted-trait reminder (`data.focus_targets`, persona_prompt.render_system_prompt
`focus=`). The prompts are the first N scenarios stage 3 builds for the persona (round-robin over
contexts, the same targets). Also prints which part of `consistent` fails most often per candidate.

Run: python benchmarks/bench_teacher_yield.py [--persona P.yaml] [--model smollm2-135m-instruct] [--prompts 36]
     [--best-of 4] [--max-new-tokens 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path

import torch

from personatune import models
from personatune.embeddings import Embedder
from personatune.generation.hf import HFBackend
from personatune.persona import load_persona
from personatune.persona_prompt import persona_conversation
from personatune.scenarios import build_scenarios
from personatune.scoring.scorer import Scorer
from personatune.stages.s3_consistency_data import cap_scenarios

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--persona", default=str(HERE.parent / "examples" / "personas" / "captain_nova.yaml"))
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=36)
    ap.add_argument("--best-of", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec = load_persona(args.persona)
    emb = Embedder.default()
    scorer = Scorer(spec)
    scenarios = cap_scenarios(build_scenarios(spec, emb, seed=0), args.prompts)
    model, tok = models.load_model_and_tokenizer(args.model)
    backend = HFBackend(model, tok, batch_size=16)
    print(
        f"{args.model}, {len(scenarios)} prompts x best of {args.best_of}, {args.max_new_tokens} new tokens, T=0.8 top_p=0.95, seed 0"
    )
    print(f"{'system prompt':28s} {'yield':>12s} {'cand. consistent':>17s} {'gen s':>7s}  failing part per candidate")
    for label, focus in (("persona + few-shot", False), ("+ targeted-trait reminder", True)):
        convs = [
            persona_conversation(spec, s.messages, few_shot=True, focus=s.targets if focus else None) for s in scenarios
        ]
        t0 = time.perf_counter()
        outs = backend.generate(
            convs, max_new_tokens=args.max_new_tokens, temperature=0.8, top_p=0.95, n=args.best_of, seed=0
        )
        gen_s = time.perf_counter() - t0
        kept, cons, total, fails = 0, 0, 0, collections.Counter()
        for s, cands in zip(scenarios, outs):
            recs = scorer.score(list(cands), contexts=[s.context] * len(cands), targets=[s.targets] * len(cands))
            kept += any(r.consistent for r in recs)
            for r in recs:
                total += 1
                cons += r.consistent
                fails["violation"] += max(r.violations.values()) >= 0.5
                fails["targets not expressed"] += sum(r.traits[t] for t in s.targets) / len(s.targets) < 0.5
                fails["style"] += r.style_match < 0.5
                fails["hard rule"] += not all(r.rules.get(b, True) for b in scorer.rules.hard_ids)
        print(
            f"{label:28s} {kept:4d}/{len(scenarios):<3d} {kept / len(scenarios):4.2f} {cons / total:17.2f} {gen_s:7.1f}  "
            + ", ".join(f"{k} {v}/{total}" for k, v in fails.items())
        )


if __name__ == "__main__":
    main()
