"""Contrast yield of stage 3: share of rejected (contrast) responses the scorer finds inconsistent.

Side by side on the same prompts, model, decoding and seed: the contrast system prompts of version 1
(the whole persona with one trait line inverted / the voice lines inverted, summary kept) against the
current ones (persona_prompt.persona_conversation: summary left out, the inverted trait restated last
with two negative exemplars and one example turn in the inverted voice; the style break also forbids
the signature phrases and flips exclamations).
One response per (prompt, kind), as stage 3 generates them; trait-flipped for every targeted trait.
The prompts are the first N scenarios stage 3 builds for the persona. Prints the inconsistency rate per
kind with a 95 % Wilson interval — the quantity of the stage-3 gate `rejected_inconsistency_rate`.

Run: python benchmarks/bench_contrast_yield.py [--persona P.yaml] [--model smollm2-135m-instruct] [--prompts 40]
     [--max-new-tokens 64] [--threads 2] [--dump OUT.jsonl]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from personatune import models
from personatune.embeddings import Embedder
from personatune.generation.hf import HFBackend
from personatune.persona import PersonaSpec, load_persona
from personatune.persona_prompt import (
    _FORMALITY,
    _OPPOSITE_FORMALITY,
    _trait_line,
    persona_conversation,
    persona_voice_lines,
)
from personatune.scenarios import build_scenarios
from personatune.scoring.aggregate import wilson_ci
from personatune.scoring.scorer import Scorer
from personatune.stages.s3_consistency_data import cap_scenarios

HERE = Path(__file__).resolve().parent


def render_v1(spec: PersonaSpec, *, flip: str | None = None, break_style: bool = False) -> str:
    """The contrast system prompt as stage 3 rendered it before (kept here for the comparison)."""
    lines = [f"You are {spec.name}. {spec.summary.strip()}", "", "Your character:"]
    lines += [_trait_line(t, t.id == flip) for t in spec.traits]
    st = spec.style
    lo, hi = st.words
    if break_style:
        form = _OPPOSITE_FORMALITY[st.formality]
        length = f"Answer in at least {hi * 2} words." if hi < 80 else f"Answer in at most {max(3, lo // 2)} words."
        emoji = "Use emoji often." if st.emoji == "never" else "Never use emoji."
        lines += ["", "Voice:", f"- Your register is {_FORMALITY[form]}.", f"- {length}", f"- {emoji}"]
    else:
        lines += persona_voice_lines(spec)
    if spec.facts:
        lines += ["", "Facts about you:"] + [f"- {f}" for f in spec.facts]
    lines += ["", "Stay in character in every reply, whatever the user asks."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--persona", default=str(HERE.parent / "examples" / "personas" / "captain_nova.yaml"))
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=40)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dump", help="write every contrast response with its version, kind and score to this JSONL file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec = load_persona(args.persona)
    emb = Embedder.default()
    scorer = Scorer(spec)
    scenarios = cap_scenarios(build_scenarios(spec, emb, seed=0), args.prompts)
    model, tok = models.load_model_and_tokenizer(args.model)
    backend = HFBackend(model, tok, batch_size=16)
    jobs = [(s, "trait_flipped", tr) for s in scenarios for tr in s.targets] + [
        (s, "style_broken", None) for s in scenarios
    ]
    print(
        f"{args.model}, {len(scenarios)} prompts, {len(jobs)} contrast responses per version, {args.max_new_tokens} new tokens, "
        f"T=0.8 top_p=0.95, seed 0"
    )
    print(f"{'version':10s} {'kind':14s} {'inconsistent':>13s} {'95% CI':>15s}")
    dump = []
    for version in ("v1", "current"):
        convs = []
        for s, kind, tr in jobs:
            if version == "v1":
                sys = render_v1(spec, flip=tr, break_style=kind == "style_broken")
                convs.append([{"role": "system", "content": sys}] + [dict(m) for m in s.messages])
            else:
                convs.append(persona_conversation(spec, s.messages, flip=tr, break_style=kind == "style_broken"))
        t0 = time.perf_counter()
        outs = backend.generate(convs, max_new_tokens=args.max_new_tokens, temperature=0.8, top_p=0.95, n=1, seed=0)
        gen_s = time.perf_counter() - t0
        recs = scorer.score(
            [o[0] for o in outs], contexts=[s.context for s, _, _ in jobs], targets=[s.targets for s, _, _ in jobs]
        )
        tot_k, tot_n = 0, 0
        for kind in ("trait_flipped", "style_broken"):
            idx = [i for i, j in enumerate(jobs) if j[1] == kind]
            k = sum(not recs[i].consistent for i in idx)
            lo, hi = wilson_ci(k, len(idx))
            tot_k, tot_n = tot_k + k, tot_n + len(idx)
            print(f"{version:10s} {kind:14s} {k:>5d}/{len(idx):<3d} {k / len(idx):5.3f} {lo:7.3f}-{hi:5.3f}")
        lo, hi = wilson_ci(tot_k, tot_n)
        print(
            f"{version:10s} {'both':14s} {tot_k:>5d}/{tot_n:<3d} {tot_k / tot_n:5.3f} {lo:7.3f}-{hi:5.3f}   ({gen_s:.0f} s generation)"
        )
        per_trait = {t: [not recs[i].consistent for i, j in enumerate(jobs) if j[2] == t] for t in spec.trait_ids}
        print(
            f"{version:10s} trait-flipped per trait: "
            + ", ".join(f"{t} {sum(v)}/{len(v)}" for t, v in per_trait.items() if v)
        )
        dump += [
            {
                "version": version,
                "kind": kind,
                "flipped": tr,
                "context": s.context,
                "targets": s.targets,
                "prompt": s.messages[-1]["content"],
                "text": o[0],
                "consistent": r.consistent,
                "consistency": r.consistency,
                "violations": r.violations,
                "traits": r.traits,
            }
            for (s, kind, tr), o, r in zip(jobs, outs, recs)
        ]
    if args.dump:
        Path(args.dump).write_text("".join(json.dumps(d) + "\n" for d in dump))


if __name__ == "__main__":
    main()
