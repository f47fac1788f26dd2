"""Does the instrument overrate very short answers? (a lead from reading stage 4's errors, 2026-12-01)

Stage 4's highest-scored "flipped for adventurous" answers on a main-job run included "Incredible, the sky."
(P(adventurous) 0.998) and "My love is bees." (0.986). Here: every sentence of the dev gold sets' *generic*
answers (plain assistant text that expresses no persona trait; never training data) is scored alone as a
response against its set's persona, and also the gold answers' sentences (whole answers included). Per length
bucket (words): mean of max_t traits[t], the share with some traits[t] >= 0.5 (generic: a false expression; gold:
an expression) or >= 0.9, and the mean of traits[t] over all traits.

Run: python benchmarks/experiments/short_answers.py [--instrument DIR]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from personatune.persona import load_persona
from personatune.scoring.gold import load_gold
from personatune.scoring.instrument import split_sentences
from personatune.scoring.lexical import words
from personatune.scoring.scorer import Scorer

ROOT = Path(__file__).resolve().parents[2]
BUCKETS = [(1, 5), (6, 10), (11, 20), (21, 10_000)]


def main() -> None:
    import argparse

    from personatune.scoring.instrument import Instrument

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instrument", help="instrument weights folder (default: the shipped one)")
    args = ap.parse_args()
    inst = Instrument(args.instrument) if args.instrument else Instrument.default()
    rows = {"generic": [], "gold": []}
    for folder in sorted(p.parent for p in (ROOT / "benchmarks/gold").glob("*/responses.jsonl")):
        spec = load_persona(folder / "persona.yaml")
        items, _ = load_gold(folder / "responses.jsonl", spec.trait_ids)
        sc = Scorer(spec, instrument=inst)
        for kind in rows:
            sents = sorted({s for it in items for s in split_sentences(it.answers[kind])})
            whole = [it.answers[kind] for it in items]
            for text, rec in zip(sents + whole, sc.score(sents + whole)):
                rows[kind].append(
                    (len(words(text)), max(rec.traits.values()), float(np.mean(list(rec.traits.values()))))
                )
    for kind, r in rows.items():
        n = np.array([a for a, _, _ in r])
        m = np.array([b for _, b, _ in r])
        mu = np.array([c for _, _, c in r])
        print(f"{kind} answers and their sentences, scored alone ({len(r)} texts):")
        for lo, hi in BUCKETS:
            k = (n >= lo) & (n <= hi)
            if k.any():
                print(
                    f"  {lo:>3}-{hi if hi < 10_000 else '':<3} words: n={int(k.sum()):5d}  mean max_t traits {m[k].mean():.3f}  "
                    f"share with a trait >= 0.5: {(m[k] >= 0.5).mean():.3f}  >= 0.9: {(m[k] >= 0.9).mean():.3f}  "
                    f"mean over traits {mu[k].mean():.3f}"
                )


if __name__ == "__main__":
    main()
