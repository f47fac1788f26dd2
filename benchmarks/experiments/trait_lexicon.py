"""Per-trait lexical evidence beside the instrument's trait head (issue 14: "lexical/style evidence for voice traits").

For trait t: lexicon+ = smoothed log-odds of the words of its description and positive exemplars against the
lexical bank's plain-register background; lexicon- = the same for its inverse and negative exemplars;
lex_t(text) = lexical_score(lexicon+, text) - lexical_score(lexicon-, text) (nats per word).

Per trait, AUROC of gold answers targeting t (label 1) vs answers flipped for t (label 0), for
traits[t], lex_t, and traits[t] shifted by W * lex_t (trait_lexicon.shift) over a few W; on the scorer corpus (the instrument's
training personas: where W would be chosen), the dev gold sets, and optionally a run's held-out split.

Run: python benchmarks/experiments/trait_lexicon.py [--run RUN_DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from personatune.persona import load_persona
from personatune.scoring.aggregate import auroc
from personatune.scoring.gold import load_gold
from personatune.scoring.instrument import Instrument
from personatune.scoring.lexical import bank_of
from personatune.scoring.scorer import Scorer
from personatune.scoring.trait_lexicon import TraitLexicons, shift

ROOT = Path(__file__).resolve().parents[2]
WS = (0.0, 2.0, 5.0, 10.0, 20.0, 50.0)


def per_trait(spec, recs, texts, trait_of, labels, background):
    lxs = TraitLexicons.build(spec, background)
    rows = {}
    for t in spec.trait_ids:
        idx = [i for i, tt in enumerate(trait_of) if tt == t]
        y = [labels[i] for i in idx]
        if len(set(y)) < 2:
            continue
        tr = [recs[i].traits[t] for i in idx]
        lx = [lxs.lex(texts[i])[t] for i in idx]
        row = {"traits": auroc(tr, y), "lex": auroc(lx, y)}
        for w in WS[1:]:
            row[f"W={w:g}"] = auroc([shift(a, 0.5, b, w)[0] for a, b in zip(tr, lx)], y)
        rows[t] = row
    return rows


def summary(rows, label):
    keys = list(next(iter(rows.values())))
    line = "  ".join(f"{k} {np.mean([r[k] for r in rows.values()]):.3f}" for k in keys)
    n9 = "  ".join(f"{int(sum(r[k] >= 0.9 for r in rows.values()))}" for k in keys)
    print(f"{label:24s} n={len(rows):3d}  {line}\n{'':24s} >=0.90: {n9}")


def set_rows(folder, background, corpus=False):
    spec = load_persona(folder / "persona.yaml")
    texts, trait_of, labels = [], [], []
    if corpus:
        from personatune.rundir import read_jsonl

        for r in read_jsonl(folder / "responses.jsonl"):
            for t in r.get("targets", []):
                texts.append(r["gold"]), trait_of.append(t), labels.append(1)
            if r.get("flipped"):
                texts.append(r["flipped"]["text"]), trait_of.append(r["flipped"]["trait"]), labels.append(0)
    else:
        items, _ = load_gold(folder / "responses.jsonl", spec.trait_ids)
        for it in items:
            for t in it.targets:
                texts.append(it.answers["gold"]), trait_of.append(t), labels.append(1)
            texts.append(it.answers["flipped"]), trait_of.append(it.flipped_trait), labels.append(0)
    recs = Scorer(spec, trait_lexicon_weight=0).score(texts)
    return per_trait(spec, recs, texts, trait_of, labels, background)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run")
    ap.add_argument("--no-corpus", action="store_true")
    args = ap.parse_args()
    background = bank_of(Instrument.default().weights_dir).background
    if not args.no_corpus:
        allr = {}
        for f in sorted(p.parent for p in (ROOT / "benchmarks/scorer_corpus").glob("*/responses.jsonl")):
            allr.update({f"{f.name}.{t}": r for t, r in set_rows(f, background, corpus=True).items()})
        summary(allr, "corpus (training)")
    allr = {}
    for f in sorted(p.parent for p in (ROOT / "benchmarks/gold").glob("*/responses.jsonl")):
        rows = set_rows(f, background)
        summary(rows, f.name)
        allr.update({f"{f.name}.{t}": r for t, r in rows.items()})
    summary(allr, "ALL dev gold")
    if args.run:
        from personatune.rundir import read_jsonl
        from personatune.stages.s4_evaluation import auroc_examples

        run = Path(args.run)
        spec = load_persona(next((run / "02_persona").glob("persona*.yaml")))
        held = run / "03_consistency_data" / "heldout"
        texts, trait_of, labels = auroc_examples(read_jsonl(held / "sft.jsonl"), read_jsonl(held / "pairs.jsonl"))
        sc = Scorer.from_evaluator_dir(spec, run / "04_evaluation" / "evaluator")
        sc.trait_lexicons = None  # the head alone; the lexical evidence is added below
        rows = per_trait(spec, sc.score(texts), texts, trait_of, labels, background)
        for t, r in rows.items():
            print(f"  {t:18s} " + "  ".join(f"{k} {v:.3f}" for k, v in r.items()))
        summary(rows, "run held-out (stage-4 fit)")


if __name__ == "__main__":
    main()
