"""Style variance: the natural movement of well-written personas, and whether the gate separates mixed voices.

1. Natural movement (`NATURAL_MOVEMENT` in scoring/aggregate.py): for every set of benchmarks/scorer_corpus
   (the instrument's training corpus, hand-written), the sampling-corrected between-context standard deviation
   of each style feature over its gold answers; prints the median per feature (the unit the definition uses).
2. Check, on the development gold sets of benchmarks/gold (and the corpus sets): style variance of the gold
   answers (must pass, < 0.15), of the generic answers, and of every balanced mix of gold answers in three
   contexts and generic answers in the other three (must fail).

Run: python benchmarks/bench_style_variance.py [--corpus-only]
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

from personatune.persona import load_persona
from personatune.scoring.aggregate import NATURAL_MOVEMENT, _between_std, style_variance
from personatune.scoring.gold import load_gold, score_gold
from personatune.scoring.scorer import Scorer

HERE = Path(__file__).resolve().parent


def scored_sets(root: Path):
    for d in sorted(p.parent for p in root.glob("*/responses.jsonl")):
        spec = load_persona(d / "persona.yaml")
        items, _ = load_gold(d / "responses.jsonl", spec.trait_ids)
        yield d.name, items, score_gold(Scorer(spec), items)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus-only", action="store_true", help="only print the natural-movement medians")
    args = ap.parse_args()
    feats = list(NATURAL_MOVEMENT)
    natural, cache = [], {}
    for name, items, sc in scored_sets(HERE / "scorer_corpus"):
        cache[name] = (items, sc)
        groups = {}
        for r in sc.records["gold"]:
            groups.setdefault(r.context, []).append([r.style[f] for f in feats])
        natural.append(_between_std([np.array(g) for g in groups.values()]))
    med = np.median(np.array(natural), axis=0)
    print("natural movement (median over corpus sets of the between-context std beyond sampling noise):")
    for f, m in zip(feats, med):
        print(f"  {f:20s} {m:.4f}   (unit in use: {NATURAL_MOVEMENT[f]})")
    if args.corpus_only:
        return
    for name, items, sc in scored_sets(HERE / "gold"):
        cache["gold/" + name] = (items, sc)
    print(f"\n{'set':16s} gold    generic  mixed (min / mean over {20} balanced splits)")
    worst_gold, least_mixed = 0.0, 9.0
    for name, (items, sc) in cache.items():
        g = style_variance(sc.records["gold"], n_resamples=0).value
        p = style_variance(sc.records["generic"], n_resamples=0).value
        ctxs = sorted({it.context for it in items})
        mixes = []
        for chosen in itertools.combinations(ctxs, len(ctxs) // 2):
            mix = [
                a if it.context in chosen else b for a, b, it in zip(sc.records["gold"], sc.records["generic"], items)
            ]
            mixes.append(style_variance(mix, n_resamples=0).value)
        worst_gold, least_mixed = max(worst_gold, g), min(least_mixed, min(mixes))
        print(f"{name:16s} {g:.3f}   {p:.3f}    {min(mixes):.3f} / {np.mean(mixes):.3f}")
    print(f"\nhighest gold: {worst_gold:.3f} (gate < 0.15); lowest mixed: {least_mixed:.3f} (must be >= 0.15)")


if __name__ == "__main__":
    main()
