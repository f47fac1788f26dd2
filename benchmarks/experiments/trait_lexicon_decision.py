"""Does the per-trait lexical evidence help the `consistent` decision, with separate weights for the two sides?

The shipped evidence (scoring/trait_lexicon.py) shifts traits[t] by +W*lex_t and violations[t] by -W*lex_t with
one W = 10, chosen on per-trait AUROC. This scores every answer of a set once with the head alone
(`Scorer(trait_lexicon_weight=0)`), then recomputes `consistent` (scorer.consistency_of, the same style match
and rules) for a grid of (W_expressed, W_violated), and prints per grid point the means over sets of:
balanced accuracy of `consistent` (gold vs generic + flipped), flipped trait caught (violations[flipped] >= 0.5),
gold answers consistent. On the training corpus (24 sets; where a choice would be made) and the dev gold sets.

Run: python benchmarks/experiments/trait_lexicon_decision.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from personatune.persona import load_persona
from personatune.scoring.gold import load_gold
from personatune.scoring.scorer import Scorer, consistency_of
from personatune.scoring.trait_lexicon import TraitLexicons, shift

ROOT = Path(__file__).resolve().parents[2]
GRID = [(0, 0), (10, 10), (0, 10), (10, 0), (0, 20), (10, 20), (20, 20), (10, 40), (20, 40), (40, 40)]


def scored(folder: Path):
    spec = load_persona(folder / "persona.yaml")
    items, _ = load_gold(folder / "responses.jsonl", spec.trait_ids)
    sc = Scorer(spec, trait_lexicon_weight=0)
    lx = TraitLexicons.build(spec, _background(sc))
    out = {}
    for kind in ("gold", "generic", "flipped"):
        texts = [it.answers[kind] for it in items]
        recs = sc.score(texts, targets=[list(it.targets) for it in items])
        lexes = [lx.lex(t) for t in texts]
        hard = [sc.rules.hard_pass(r.rules) for r in recs]
        out[kind] = (recs, lexes, hard)
    return items, out


def _background(sc):
    from personatune.scoring.lexical import bank_of

    return bank_of(sc.instrument.weights_dir).background


def decide(items, out, we, wv):
    res = {}
    for kind, (recs, lexes, hard) in out.items():
        cons, caught = [], []
        for it, r, lx, hp in zip(items, recs, lexes, hard):
            tr = {t: shift(r.traits[t], 0.5, lx[t], we)[0] for t in r.traits}
            vi = {t: shift(0.5, r.violations[t], lx[t], wv)[1] for t in r.violations}
            cons.append(consistency_of(tr, vi, r.style_match, hp, r.targets)[0])
            if kind == "flipped":
                caught.append(vi[it.flipped_trait] >= 0.5)
        res[kind] = (np.mean(cons), np.mean(caught) if caught else None)
    g, gen, fl = res["gold"][0], res["generic"][0], res["flipped"][0]
    bal = 0.5 * (g + 1 - (gen + fl) / 2)
    return bal, res["flipped"][1], g


def table(folders, label):
    data = [scored(f) for f in folders]
    print(f"\n{label} ({len(folders)} sets): W_expressed W_violated | balanced acc. | flipped caught | gold consistent")
    for we, wv in GRID:
        rows = np.array([decide(items, out, we, wv) for items, out in data])
        m = rows.mean(0)
        print(f"  {we:4g} {wv:6g}        | {m[0]:.3f}         | {m[1]:.3f}          | {m[2]:.3f}")


def main() -> None:
    table(sorted(p.parent for p in (ROOT / "benchmarks/scorer_corpus").glob("*/responses.jsonl")), "training corpus")
    table(sorted(p.parent for p in (ROOT / "benchmarks/gold").glob("*/responses.jsonl")), "dev gold sets")


if __name__ == "__main__":
    main()
