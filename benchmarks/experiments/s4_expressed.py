"""Stage 4's positives: every trait a chosen answer targets, or only the targets stage 3's scorer found expressed?

Stage 4's detector AUROC for trait t compares held-out chosen answers that target t (label 1) with trait-flipped
answers for t (label 0). The negative side is labelled by stage 3's scorer: a flip counts when that scorer found
it inconsistent (for any reason, not necessarily t violated) and on task (`s4_evaluation.flip_took`). The positive side is labelled by
the scenario: a chosen answer is `consistent` when its targets' MEAN expression reaches 0.5, so it can leave a
targeted trait unexpressed in stage 3's own reading, and still count as an expression of that trait — the teacher's
failure counted against the evaluator, as off-task flips were before `flip_took`.

This measures, with stage 3's scorer (the persona file only, as stage 3 fits it) deciding which targets a chosen
answer expresses (traits[t] >= 0.5):

1. on the dev gold sets (labels right by construction; two folds as in `s4_augment.py`): does fitting the
   evaluator with only the expressed targets' positives make it better or worse at the right labels (every gold
   answer a positive for every target)? This is the validity check of the fitting rule;
2. with `--run RUN`, on a run's stage-3 data: stage 4's per-trait AUROC with positives and/or fitting restricted,
   and how many held-out positives each trait loses.

Run: python benchmarks/experiments/s4_expressed.py [--run RUN_DIR] [--no-gold]
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


def expressed_targets(scorer: Scorer, texts: list[str], targets: list[list[str]]) -> list[list[str]]:
    """Per answer, the targets the scorer finds expressed (traits[t] >= 0.5)."""
    recs = scorer.score(texts) if texts else []
    return [[t for t in ts if r.traits[t] >= 0.5] for r, ts in zip(recs, targets)]


def gold_set(folder: Path, inst: Instrument) -> dict[str, list[float]]:
    spec = load_persona(folder / "persona.yaml")
    items, _ = load_gold(folder / "responses.jsonl", spec.trait_ids)
    plain = Scorer(spec, instrument=inst, profile=fit(spec, [], instrument=inst))
    folds = [items[0::2], items[1::2]]
    out: dict[str, list[float]] = {}
    for variant in ("all targets", "expressed targets"):
        per_trait: dict[str, tuple[list, list]] = {t: ([], []) for t in spec.trait_ids}
        for k in (0, 1):
            train, test = folds[1 - k], folds[k]
            if variant == "all targets":
                pos = [it.targets for it in train]
            else:
                pos = expressed_targets(plain, [it.answers["gold"] for it in train], [it.targets for it in train])
            ex = [
                {"text": it.answers["gold"], "trait": t, "label": "expressed"} for it, ts in zip(train, pos) for t in ts
            ]
            ex += [{"text": it.answers["flipped"], "trait": it.flipped_trait, "label": "violated"} for it in train]
            scorer = Scorer(spec, instrument=inst, profile=fit(spec, ex, instrument=inst))
            recs = scorer.score([it.answers["gold"] for it in test] + [it.answers["flipped"] for it in test])
            n = len(test)
            for it, g, f in zip(test, recs[:n], recs[n:]):
                for t in it.targets:
                    per_trait[t][0].append(g.traits[t])
                    per_trait[t][1].append(1)
                per_trait[it.flipped_trait][0].append(f.traits[it.flipped_trait])
                per_trait[it.flipped_trait][1].append(0)
        out[variant] = [a for s, y in per_trait.values() if (a := auroc(s, y)) is not None]
    return out


def gold_sets(inst: Instrument) -> None:
    folders = sorted(p.parent for p in (ROOT / "benchmarks/gold").glob("*/responses.jsonl"))
    res = [gold_set(f, inst) for f in folders]
    print("dev gold sets, two folds; per-trait AUROC on right labels (every gold answer for every target)")
    for v in ("all targets", "expressed targets"):
        a = np.array([x for r in res for x in r[v]])
        per_set = " ".join(f"{f.name}:{np.mean(r[v]):.3f}" for f, r in zip(folders, res))
        print(
            f"  fit positives: {v:18s} | mean {a.mean():.3f}, min {a.min():.3f}, >=0.90 {int((a >= 0.9).sum())}/{len(a)}"
            f"   ({per_set})",
            flush=True,
        )


def stage3_splits(run: Path):
    """A run's persona and its stage-3 rows read as stage 4 reads them: (spec, train sft, held-out sft, train pairs,
    held-out pairs), every trait-flipped pair carrying `rejected_on_task` (s4_learning_curve.py uses it too)."""
    from personatune.stage3_rows import SFT_NEEDS, STAGE3_FIX, read_stage3
    from personatune.stages.s4_evaluation import with_flip_on_task

    spec = load_persona(next((run / "02_persona").glob("persona*.yaml")))
    d = run / "03_consistency_data"
    tr_sft, ho_sft = (
        read_stage3(d / s / "sft.jsonl", "sft", STAGE3_FIX, spec.trait_ids, SFT_NEEDS) for s in ("train", "heldout")
    )
    tr_pairs, ho_pairs = with_flip_on_task(
        spec, *(read_stage3(d / s / "pairs.jsonl", "pairs", STAGE3_FIX, spec.trait_ids) for s in ("train", "heldout"))
    )
    return spec, tr_sft, ho_sft, tr_pairs, ho_pairs


def run_split(run: Path, inst: Instrument) -> None:
    from personatune.stages.s4_evaluation import flip_took, labelled_examples

    spec, tr_sft, ho_sft, tr_pairs, ho_pairs = stage3_splits(run)
    plain = Scorer(spec, instrument=inst, profile=fit(spec, [], instrument=inst))
    tr_exp = expressed_targets(plain, [r["messages"][-1]["content"] for r in tr_sft], [r["targets"] for r in tr_sft])
    ho_exp = expressed_targets(plain, [r["messages"][-1]["content"] for r in ho_sft], [r["targets"] for r in ho_sft])
    fits = {
        "all targets": labelled_examples(spec, tr_sft, tr_pairs),
        "expressed targets": labelled_examples(spec, [{**r, "targets": e} for r, e in zip(tr_sft, tr_exp)], tr_pairs),
    }
    neg = [(p["rejected"][-1]["content"], p["flipped_trait"]) for p in ho_pairs if flip_took(p)]
    print(f"run {run}: stage 4's per-trait AUROC of traits[t] on the held-out split")
    for fname, ex in fits.items():
        scorer = Scorer(spec, instrument=inst, profile=fit(spec, ex, instrument=inst))
        chosen = scorer.score([r["messages"][-1]["content"] for r in ho_sft])
        flips = scorer.score([x for x, _ in neg])
        for mname in ("all targets", "expressed targets"):
            row = {}
            for t in spec.trait_ids:
                pos_idx = [
                    i for i, r in enumerate(ho_sft) if t in (r["targets"] if mname == "all targets" else ho_exp[i])
                ]
                s = [chosen[i].traits[t] for i in pos_idx] + [f.traits[t] for f, (_, tt) in zip(flips, neg) if tt == t]
                y = [1] * len(pos_idx) + [0] * (len(s) - len(pos_idx))
                row[t] = (auroc(s, y), len(pos_idx), len(s) - len(pos_idx))
            vals = np.array([a for a, _, _ in row.values() if a is not None])
            print(
                f"  fit {fname:18s} measure {mname:18s} | mean {vals.mean():.3f}, min {vals.min():.3f}, "
                f">=0.90 {int((vals >= 0.9).sum())}/{len(vals)} | "
                + " ".join(f"{t} {a:.3f} ({p}+{n})" for t, (a, p, n) in row.items() if a is not None),
                flush=True,
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a run folder with stage-3 data (train and held-out splits)")
    ap.add_argument("--no-gold", action="store_true")
    args = ap.parse_args()
    inst = Instrument.default()
    if args.run:
        run_split(Path(args.run), inst)
    if not args.no_gold:
        gold_sets(inst)


if __name__ == "__main__":
    main()
