"""Does stage 4's refit help? The profile with and without labelled answers, on clean labels.

Stage 4 fits its evaluator by adding the stage-3 training split to the persona's profile: chosen answers join
the positive side of each trait they target, trait-flipped answers the negative side of their flipped trait
(`s4_evaluation.labelled_examples`). Whether that helps is measured here on the hand-written dev gold sets, whose
labels are right by construction: each set's prompts are split in two folds (alternate items in file order);
the profile is fitted on one fold's answers and the other fold is scored, then the other way round. Variants:

- `none`: the persona file only (what stage 3 uses);
- `pos`: + the fold's gold answers, expressed for their targets;
- `neg`: + the fold's flipped answers, violated for their flipped trait;
- `both`: + both (what stage 4 does).

Printed per variant, means over the six sets: per-trait AUROC of traits[t] (gold answers targeting t against
flipped answers for t, the stage-4 gate's score, scores of both folds pooled per trait), and on the scored folds:
gold / generic / flipped judged consistent, balanced accuracy of `consistent` (gold against generic + flipped).

With `--run RUN` the same variants on a run's stage-3 data (fitted on its training split, scored on its held-out
split, labelled by stage 4's own rules): the per-trait AUROC of the stage-4 gate.

Run: python benchmarks/experiments/s4_augment.py [--run RUN_DIR] [--no-gold]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from personatune.persona import load_persona
from personatune.scoring.aggregate import auroc
from personatune.scoring.gold import load_gold
from personatune.scoring.instrument import Instrument
from personatune.scoring.scorer import Scorer
from personatune.scoring.traits import fit

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = ("none", "pos", "neg", "both")


def examples_of(items, variant):
    ex = []
    if variant in ("pos", "both"):
        ex += [{"text": it.answers["gold"], "trait": t, "label": "expressed"} for it in items for t in it.targets]
    if variant in ("neg", "both"):
        ex += [{"text": it.answers["flipped"], "trait": it.flipped_trait, "label": "violated"} for it in items]
    return ex


def gold_set(folder: Path, variant: str, inst: Instrument) -> dict:
    spec = load_persona(folder / "persona.yaml")
    items, _ = load_gold(folder / "responses.jsonl", spec.trait_ids)
    folds = [items[0::2], items[1::2]]
    per_trait: dict[str, tuple[list, list]] = {t: ([], []) for t in spec.trait_ids}
    cons = {"gold": [], "generic": [], "flipped": []}
    for k in (0, 1):
        train, test = folds[1 - k], folds[k]
        scorer = Scorer(spec, instrument=inst, profile=fit(spec, examples_of(train, variant), instrument=inst))
        kinds = list(cons)
        recs = scorer.score(
            [it.answers[kind] for kind in kinds for it in test],
            prompts=[[{"role": r, "content": c} for r, c in it.messages] for _ in kinds for it in test],
        )
        n = len(test)
        for j, kind in enumerate(kinds):
            cons[kind] += [r.consistent for r in recs[j * n : (j + 1) * n]]
        gold, flipped = recs[:n], recs[2 * n : 3 * n]
        for it, g, f in zip(test, gold, flipped):
            for t in it.targets:
                per_trait[t][0].append(g.traits[t])
                per_trait[t][1].append(1)
            per_trait[it.flipped_trait][0].append(f.traits[it.flipped_trait])
            per_trait[it.flipped_trait][1].append(0)
    aucs = [a for s, y in per_trait.values() if (a := auroc(s, y)) is not None]
    rate = {k: float(np.mean(v)) for k, v in cons.items()}
    bal = 0.5 * (rate["gold"] + 1 - (sum(cons["generic"]) + sum(cons["flipped"])) / (len(cons["generic"]) * 2))
    return {"aucs": aucs, "rate": rate, "bal": bal}


def gold_sets(inst: Instrument) -> None:
    folders = sorted(p.parent for p in (ROOT / "benchmarks/gold").glob("*/responses.jsonl"))
    print("variant | per-trait AUROC: mean, min, >=0.90 | consistent gold / generic / flipped | balanced acc.")
    for v in VARIANTS:
        res = [gold_set(f, v, inst) for f in folders]
        aucs = np.array([a for r in res for a in r["aucs"]])
        rate = {k: np.mean([r["rate"][k] for r in res]) for k in ("gold", "generic", "flipped")}
        bal = np.mean([r["bal"] for r in res])
        per_set = " ".join(f"{f.name}:{np.mean(r['aucs']):.3f}" for f, r in zip(folders, res))
        print(
            f"{v:5s} | {aucs.mean():.3f}, {aucs.min():.3f}, {int((aucs >= 0.9).sum())}/{len(aucs)} | "
            f"{rate['gold']:.3f} / {rate['generic']:.3f} / {rate['flipped']:.3f} | {bal:.3f}   ({per_set})",
            flush=True,
        )


def run_split(run: Path, inst: Instrument) -> None:
    from personatune.rundir import read_jsonl
    from personatune.stages.s4_evaluation import heldout_auroc, labelled_examples

    spec = load_persona(next((run / "02_persona").glob("persona*.yaml")))
    d = run / "03_consistency_data"
    full = labelled_examples(spec, read_jsonl(d / "train" / "sft.jsonl"), read_jsonl(d / "train" / "pairs.jsonl"))
    ho_sft, ho_pairs = read_jsonl(d / "heldout" / "sft.jsonl"), read_jsonl(d / "heldout" / "pairs.jsonl")
    keep = {"none": (), "pos": ("expressed",), "neg": ("violated",), "both": ("expressed", "violated")}
    print(f"run {run}: per-trait AUROC of traits[t] on the held-out split")
    for v in VARIANTS:
        ex = [e for e in full if e["label"] in keep[v]]
        scorer = Scorer(spec, instrument=inst, profile=fit(spec, ex, instrument=inst))
        row = {t: a["auroc"] for t, a in heldout_auroc(scorer, spec, ho_sft, ho_pairs)[0].items()}
        vals = np.array([a for a in row.values() if a is not None])
        print(
            f"{v:5s} | mean {vals.mean():.3f}, min {vals.min():.3f}, >=0.90 {int((vals >= 0.9).sum())}/{len(vals)} | "
            + " ".join(f"{t} {a:.3f}" for t, a in row.items() if a is not None),
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a run folder with stage-3 data (train and held-out splits)")
    ap.add_argument("--no-gold", action="store_true")
    args = ap.parse_args()
    inst = Instrument.default()
    if not args.no_gold:
        gold_sets(inst)
    if args.run:
        run_split(Path(args.run), inst)


if __name__ == "__main__":
    main()
