"""Which per-trait score should stage 4's detector AUROC read? traits[t], -violations[t], or traits[t] - violations[t].

Stage 4 asks whether the evaluator tells a response that holds trait t (chosen, t targeted) from one that
contradicts it (trait-flipped for t). The instrument has a head for each side: `traits[t]` (expressed) and
`violations[t]` (violated). This compares the three scores:

1. on the dev gold sets (benchmarks/gold/): per trait, gold answers targeting t vs flipped answers for t
   (8 flipped per trait: pooled over the 36 traits; this is where the choice is made);
2. optionally on a run's stage-3 held-out split with its stage-4 evaluator (the check), labelled by stage 4's own
   `s4_evaluation.auroc_examples`.

Run: python benchmarks/experiments/s4_auroc_score.py [--run RUN_DIR] [--instrument DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from personatune.persona import load_persona
from personatune.scoring.aggregate import auroc
from personatune.scoring.gold import load_gold
from personatune.scoring.scorer import Scorer
from personatune.stages.s4_evaluation import auroc_examples

ROOT = Path(__file__).resolve().parents[2]
SCORES = {
    "traits": lambda r, t: r.traits[t],
    "-violations": lambda r, t: -r.violations[t],
    "traits-violations": lambda r, t: r.traits[t] - r.violations[t],
}


def per_trait(records, trait_of, labels, trait_ids):
    out = {}
    for t in trait_ids:
        idx = [i for i, tt in enumerate(trait_of) if tt == t]
        y = [labels[i] for i in idx]
        out[t] = {name: auroc([f(records[i], t) for i in idx], y) for name, f in SCORES.items()}
    return out


def summary(rows, label):
    for name in SCORES:
        v = np.array([r[name] for r in rows.values() if r[name] is not None])
        print(
            f"  {label:28s} {name:18s} mean {v.mean():.3f}  min {v.min():.3f}  >=0.90: {int((v >= 0.9).sum())}/{len(v)}"
        )


def gold_sets(inst=None):
    allrows = {}
    for folder in sorted(p.parent for p in (ROOT / "benchmarks/gold").glob("*/responses.jsonl")):
        spec = load_persona(folder / "persona.yaml")
        items, _ = load_gold(folder / "responses.jsonl", spec.trait_ids)
        texts, trait_of, labels = [], [], []
        for it in items:
            for t in it.targets:
                texts.append(it.answers["gold"]), trait_of.append(t), labels.append(1)
            texts.append(it.answers["flipped"]), trait_of.append(it.flipped_trait), labels.append(0)
        recs = Scorer(spec, instrument=inst).score(texts)
        rows = per_trait(recs, trait_of, labels, spec.trait_ids)
        summary(rows, folder.name)
        allrows.update({f"{folder.name}.{t}": r for t, r in rows.items()})
    summary(allrows, "ALL dev gold traits")


def run_heldout(run: Path, fitted: bool = True, inst=None):
    from personatune.rundir import read_jsonl

    spec = load_persona(next((run / "02_persona").glob("persona*.yaml")))
    held = run / "03_consistency_data" / "heldout"
    sft, pairs = read_jsonl(held / "sft.jsonl"), read_jsonl(held / "pairs.jsonl")
    texts, trait_of, labels = auroc_examples(sft, pairs)
    if fitted and inst is not None:  # the run's evaluator was fitted with its own instrument: refit as stage 4 does
        from personatune.scoring.traits import fit
        from personatune.stages.s4_evaluation import labelled_examples

        train = run / "03_consistency_data" / "train"
        ex = labelled_examples(spec, read_jsonl(train / "sft.jsonl"), read_jsonl(train / "pairs.jsonl"))
        scorer = Scorer(spec, instrument=inst, profile=fit(spec, ex, instrument=inst))
    elif fitted:
        scorer = Scorer.from_evaluator_dir(spec, run / "04_evaluation" / "evaluator")
    else:
        scorer = Scorer(spec, instrument=inst)
    rows = per_trait(scorer.score(texts), trait_of, labels, spec.trait_ids)
    for t, r in rows.items():
        print(f"  {t:18s} " + "  ".join(f"{k} {v:.3f}" for k, v in r.items()))
    summary(rows, f"run {run.name} held-out" + ("" if fitted else " (persona file only)"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a run folder with stages 3 and 4 (its held-out split and evaluator)")
    ap.add_argument("--no-gold", action="store_true")
    ap.add_argument(
        "--persona-only", action="store_true", help="score the run with the persona file alone, not stage 4's fit"
    )
    ap.add_argument("--instrument", help="instrument weights folder (default: the shipped one)")
    args = ap.parse_args()
    inst = None
    if args.instrument:
        from personatune.scoring.instrument import Instrument

        inst = Instrument(args.instrument)
    if not args.no_gold:
        gold_sets(inst)
    if args.run:
        print(json.dumps(run_heldout(Path(args.run), fitted=not args.persona_only, inst=inst), indent=1))


if __name__ == "__main__":
    main()
