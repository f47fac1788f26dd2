"""Do very short answers get overconfident trait scores? Shrinking the trait evidence of short answers towards 0.5.

Stage 4's `detector_errors.md` on the main job's data shows three- and four-word answers at the top of the
trait-flipped side ("Incredible, the sky." 0.999 adventurous, "My love is bees." 0.971): a few words carry little
evidence, yet the detector's probability is as extreme as for a paragraph. The candidate rule, fixed before measuring:

    traits'[t] = 0.5 + (traits[t] - 0.5) * n / (n + K)      n = the answer's word count, K a constant

It keeps every probability on its side of 0.5, so `consistent`, adherence and the stage-2/3 decisions cannot
change (consistency_of and adherence_pairs threshold at 0.5); only rankings across answers of different length move
(AUROC, the continuous consistency score, rewards). Measured per-trait AUROC of traits[t] (answers targeting t
against flipped answers for t) for K in 0 (today), 5, 10, 20:

- on the dev gold sets (hand-written, labels right by construction), with the persona file only and with stage 4's
  refit (two folds of prompts, fitted on one fold's gold and flipped answers, the other fold scored);
- with `--run RUN`: on a run's held-out stage-3 split with stage 4's own refit and labels (`flip_took`).

Run: python benchmarks/experiments/short_answer_shrinkage.py [--run RUN_DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from personatune.persona import load_persona
from personatune.rundir import read_jsonl
from personatune.scoring.aggregate import auroc
from personatune.scoring.gold import load_gold
from personatune.scoring.instrument import Instrument
from personatune.scoring.lexical import words
from personatune.scoring.scorer import Scorer
from personatune.scoring.traits import fit

ROOT = Path(__file__).resolve().parents[2]
KS = (0, 5, 10, 20)


def shrink(p: float, text: str, k: int) -> float:
    n = len(words(text))
    return p if k == 0 else 0.5 + (p - 0.5) * n / (n + k)


def aucs_of(rows: list[tuple[str, int, float, str]], traits: list[str], k: int) -> list[float]:
    """Per-trait AUROC of rows (trait, label, traits[trait], text) with shrinkage K."""
    out = []
    for t in traits:
        s = [shrink(p, x, k) for tt, _, p, x in rows if tt == t]
        y = [lab for tt, lab, _, _ in rows if tt == t]
        if (a := auroc(s, y)) is not None:
            out.append(a)
    return out


def gold_rows(folder: Path, refit: bool, inst: Instrument) -> tuple[list, list[str]]:
    spec = load_persona(folder / "persona.yaml")
    items, _ = load_gold(folder / "responses.jsonl", spec.trait_ids)
    folds = [items[0::2], items[1::2]]
    rows = []
    for k in (0, 1):
        train, test = folds[1 - k], folds[k]
        ex = []
        if refit:
            ex += [{"text": it.answers["gold"], "trait": t, "label": "expressed"} for it in train for t in it.targets]
            ex += [{"text": it.answers["flipped"], "trait": it.flipped_trait, "label": "violated"} for it in train]
        scorer = Scorer(spec, instrument=inst, profile=fit(spec, ex, instrument=inst))
        texts = [it.answers["gold"] for it in test] + [it.answers["flipped"] for it in test]
        recs = scorer.score(texts)
        n = len(test)
        for it, g in zip(test, recs[:n]):
            rows += [(t, 1, g.traits[t], it.answers["gold"]) for t in it.targets]
        for it, f in zip(test, recs[n:]):
            rows.append((it.flipped_trait, 0, f.traits[it.flipped_trait], it.answers["flipped"]))
    return rows, spec.trait_ids


def run_rows(run: Path, inst: Instrument) -> tuple[list, list[str]]:
    from personatune.stages.s4_evaluation import heldout_auroc, labelled_examples, with_flip_on_task

    spec = load_persona(next((run / "02_persona").glob("persona*.yaml")))
    d = run / "03_consistency_data"
    tr_sft, ho_sft = read_jsonl(d / "train" / "sft.jsonl"), read_jsonl(d / "heldout" / "sft.jsonl")
    tr_pairs, ho_pairs = with_flip_on_task(
        spec, read_jsonl(d / "train" / "pairs.jsonl"), read_jsonl(d / "heldout" / "pairs.jsonl")
    )
    scorer = Scorer(
        spec, instrument=inst, profile=fit(spec, labelled_examples(spec, tr_sft, tr_pairs), instrument=inst)
    )
    return heldout_auroc(scorer, spec, ho_sft, ho_pairs)[1], spec.trait_ids


def line(name: str, per_k: dict[int, list[float]]) -> str:
    return f"{name:28s} | " + " | ".join(
        f"K={k}: {np.mean(v):.3f}, min {np.min(v):.3f}, {int((np.array(v) >= 0.9).sum())}/{len(v)}"
        for k, v in per_k.items()
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a run folder with stage-3 data")
    args = ap.parse_args()
    inst = Instrument.default()
    print("per-trait AUROC: mean, min, traits >= 0.90")
    folders = sorted(p.parent for p in (ROOT / "benchmarks/gold").glob("*/responses.jsonl"))
    for refit in (False, True):
        per_k: dict[int, list[float]] = {k: [] for k in KS}
        lengths: list[int] = []
        for f in folders:
            rows, traits = gold_rows(f, refit, inst)
            lengths += [len(words(x)) for *_, x in rows]
            for k in KS:
                per_k[k] += aucs_of(rows, traits, k)
        print(line("gold dev, " + ("stage-4 refit" if refit else "persona file only"), per_k), flush=True)
    print(f"gold answers: words median {np.median(lengths):.0f}, min {np.min(lengths)}")
    if args.run:
        rows, traits = run_rows(Path(args.run), inst)
        per_k = {k: aucs_of(rows, traits, k) for k in KS}
        print(line("run held-out, stage 4", per_k))
        for k in KS:
            print(f"  K={k}: " + " ".join(f"{t} {a:.3f}" for t, a in zip(traits, aucs_of(rows, traits, k))))
        w = np.array([len(words(x)) for *_, x in rows])
        print(f"run answers: words median {np.median(w):.0f}, share under 10 words {np.mean(w < 10):.3f}")


if __name__ == "__main__":
    main()
