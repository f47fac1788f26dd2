"""How much does stage 3's selection favour the scorer that made it? Measured on hand-written labels.

Stage 4's per-trait AUROC is computed on answers stage 3 kept with the instrument: chosen answers are candidates the
instrument judged consistent, and a trait flip counts only when the instrument judged it inconsistent
(`s4_evaluation.flip_took`). This mimics that selection on the dev gold sets (benchmarks/gold/, labels written by
hand): per trait, AUROC of traits[t] between gold answers targeting t and answers flipped on t,

- on every answer (the fair comparison), and
- on the answers the instrument would have kept (gold judged consistent, flips judged inconsistent),

for the instrument alone and for the instrument with a second scorer mixed in (the cross-encoder judge of
cross_encoder_judge.py, margin form, weight 0.5). If selection favours the selecting scorer, the instrument gains
more from it than the mix does.

Run: python benchmarks/experiments/selection_bias.py --cross-encoder DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from personatune.persona import load_persona
from personatune.scoring.aggregate import auroc
from personatune.scoring.gold import load_gold, score_gold
from personatune.scoring.scorer import Scorer

ROOT = Path(__file__).resolve().parents[2]


def trait_aurocs(scores, items, keep) -> list[float]:
    """Per trait of the set: AUROC of traits[t], gold targeting t (label 1) vs flipped on t (label 0), over kept answers."""
    gold, flipped = scores.records["gold"], scores.records["flipped"]
    out = []
    for t in gold[0].traits:
        pos = [r.traits[t] for i, r in enumerate(gold) if t in r.targets and keep("gold", i)]
        neg = [
            r.traits[t] for i, (r, it) in enumerate(zip(flipped, items)) if it.flipped_trait == t and keep("flipped", i)
        ]
        if pos and neg:
            out.append(auroc(pos + neg, [1] * len(pos) + [0] * len(neg)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cross-encoder", metavar="DIR", required=True, help="weights of cross_encoder.py --save DIR")
    ap.add_argument("--weight", type=float, default=0.5, help="the judge's weight in the mix")
    args = ap.parse_args()
    from cross_encoder_judge import CrossEncoderJudge  # this folder

    judge = CrossEncoderJudge(args.cross_encoder)
    res = {k: [] for k in ("inst_all", "inst_kept", "mix_all", "mix_kept")}
    kept_share = []
    for d in sorted(p.parent for p in (ROOT / "benchmarks/gold").glob("*/responses.jsonl")):
        spec = load_persona(d / "persona.yaml")
        items, _ = load_gold(d / "responses.jsonl", spec.trait_ids)
        inst = score_gold(Scorer(spec), items)
        mix = score_gold(Scorer(spec, judge=judge, judge_weight=args.weight), items)
        # the instrument's selection, as stage 3 makes it: gold kept when consistent, a flip when inconsistent
        sel = {
            "gold": [r.consistent for r in inst.records["gold"]],
            "flipped": [not r.consistent for r in inst.records["flipped"]],
        }
        kept_share.append((np.mean(sel["gold"]), np.mean(sel["flipped"])))
        for name, sc in (("inst", inst), ("mix", mix)):
            res[f"{name}_all"] += trait_aurocs(sc, items, lambda k, i: True)
            res[f"{name}_kept"] += trait_aurocs(sc, items, lambda k, i, s=sel: s[k][i])
        print(f"{d.name}: instrument keeps gold {kept_share[-1][0]:.2f}, flips {kept_share[-1][1]:.2f}", flush=True)
    print("\nper-trait AUROC, pooled over the dev sets' traits: mean / min / traits >= 0.90")
    for k, v in res.items():
        a = np.array(v)
        print(f"  {k:10s} {a.mean():.3f} / {a.min():.3f} / {(a >= 0.9).sum()} of {a.size}")
    gi, gm = np.mean(res["inst_kept"]) - np.mean(res["inst_all"]), np.mean(res["mix_kept"]) - np.mean(res["mix_all"])
    print(f"gain from the instrument's selection: instrument {gi:+.3f}, mix {gm:+.3f}")


if __name__ == "__main__":
    main()
