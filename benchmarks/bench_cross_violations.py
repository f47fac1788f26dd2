"""Cross-trait false violations: does a persona's own positive exemplar read as violating another trait?

For each persona file, the persona-only scorer (detectors fitted from the file alone) scores the first
`--first` positive exemplars of every trait, each on its own, and counts those with any
`violations[t] >= 0.5`. These are in-persona sentences, so every such violation is a false alarm;
each one makes an in-persona response "inconsistent" (lower teacher yield) and makes contrast
responses look inconsistent for the wrong reason. Passing the same `--first` for every file compares
them on the same sentences.

With `--unseen FILE` it measures on sentences the detectors never saw: detectors are fitted on the
(single) persona given, for each `--other-trait-weight` value, and score the exemplars of FILE (a
variant of the same persona with more exemplars) that the persona does not contain. Printed: unseen
positives whose own trait is expressed (traits >= 0.5), unseen positives that get a violation of another
trait (false alarms), and unseen negatives whose own trait is violated.

Run: python benchmarks/bench_cross_violations.py examples/personas/captain_nova.yaml \
         benchmarks/trait_specs/captain_nova_20x20_rejected.yaml --first 10
     python benchmarks/bench_cross_violations.py examples/personas/captain_nova.yaml \
         --unseen benchmarks/trait_specs/captain_nova_20x20_rejected.yaml --other-trait-weight 0,0.1,0.2,0.5
     python benchmarks/bench_cross_violations.py examples/personas/captain_nova.yaml \
         --unseen benchmarks/trait_specs/captain_nova_20x20_rejected.yaml --other-positive-weight 0,0.5,1
"""

from __future__ import annotations

import argparse

from personatune.embeddings import Embedder
from personatune.persona import load_persona
from personatune.scoring.scorer import Scorer
from personatune.scoring.traits import fit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("personas", nargs="+", help="persona YAML files")
    ap.add_argument("--first", type=int, default=None, help="score only the first N positives of each trait (default: all)")
    ap.add_argument("--unseen", help="a variant of the persona with more exemplars: score those the persona lacks")
    ap.add_argument("--other-trait-weight", default="0", help="comma-separated values of fit's other_trait_weight (with --unseen)")
    ap.add_argument("--other-positive-weight", default="0", help="comma-separated values of fit's other_positive_weight (with --unseen)")
    args = ap.parse_args()
    emb = Embedder.default()
    if args.unseen:
        spec, big = load_persona(args.personas[0]), load_persona(args.unseen)
        known = {x for t in spec.traits for x in (*t.positive, *t.negative)}
        pos = [(t.id, x) for t in big.traits for x in t.positive if x not in known]
        neg = [(t.id, x) for t in big.traits for x in t.negative if x not in known]
        print(f"{args.personas[0]} fitted; {len(pos)} unseen positives, {len(neg)} unseen negatives from {args.unseen}")
        grid = [(float(w), float(o)) for w in args.other_trait_weight.split(",") for o in args.other_positive_weight.split(",")]
        for w, o in grid:
            sc = Scorer(spec, embedder=emb, detectors=fit(spec, (), embedder=emb, other_trait_weight=w, other_positive_weight=o))
            rp, rn = sc.score([x for _, x in pos]), sc.score([x for _, x in neg])
            ex = sum(r.traits[tid] >= 0.5 for (tid, _), r in zip(pos, rp))
            fv = sum(any(v >= 0.5 for k, v in r.violations.items() if k != tid) for (tid, _), r in zip(pos, rp))
            vi = sum(r.violations[tid] >= 0.5 for (tid, _), r in zip(neg, rn))
            print(f"other_trait_weight {w:g}, other_positive_weight {o:g}: positives expressed {ex}/{len(pos)}, positives with another trait violated "
                  f"{fv}/{len(pos)}, negatives violated {vi}/{len(neg)}")
        return
    for path in args.personas:
        spec = load_persona(path)
        scorer = Scorer(spec, embedder=emb)
        rows = [(t.id, p) for t in spec.traits for p in t.positive[:args.first]]
        recs = scorer.score([p for _, p in rows])
        flagged = [(tid, p, {k: v for k, v in r.violations.items() if v >= 0.5}) for (tid, p), r in zip(rows, recs)
                   if any(v >= 0.5 for v in r.violations.values())]
        print(f"{path}: {len(flagged)}/{len(rows)} positive exemplars get a violation >= 0.5 "
              f"({sum(len(t.positive) for t in spec.traits) // len(spec.traits)} positives per trait in the file)")
        for tid, p, v in flagged:
            print(f"  {tid}: {p[:70]!r} -> " + ", ".join(f"{k} {x:.2f}" for k, x in v.items()))


if __name__ == "__main__":
    main()
