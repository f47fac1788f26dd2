"""Are stage 4's trait-flipped negatives answers at all? The detector AUROC with and without off-task flips.

The stage-4 gate's per-trait AUROC ranks held-out chosen answers (label 1) against held-out trait-flipped answers
(label 0). The chosen side is on task by construction (stage 3 keeps a candidate only when it is consistent and on
task); the flipped side is whatever the teacher wrote with the trait inverted, and stage 3's contrast sampling keeps
the first try the scorer finds inconsistent, which favours broken text. METRICS.md's flipped answer is "an in-voice
answer that contradicts one named trait": an answer to the request. This script measures how many flipped answers
are off task (`on_task` < 0.5: relevance to the prompt, times the repetition factor; no trait detector involved)
and what the stage-4 AUROC is when off-task flips are left out of (a) the held-out negatives only, (b) also the
fitting examples.

Printed: per kind (chosen, trait-flipped held-out, trait-flipped train) the on-task rate; per trait the AUROC for
`all` (stage 4 today), `ho` (held-out off-task flips dropped) and `both` (also dropped from fitting), with n per side.

Run: python benchmarks/experiments/s4_on_task.py --run RUN_DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from personatune.consistency_pairs import ON_TASK_LINE
from personatune.persona import load_persona
from personatune.rundir import read_jsonl
from personatune.scoring.instrument import Instrument
from personatune.scoring.scorer import Scorer
from personatune.scoring.traits import fit
from personatune.stages.s4_evaluation import heldout_auroc, labelled_examples, off_task_flip, with_flip_on_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a run folder with stage-3 data")
    args = ap.parse_args()
    run = Path(args.run)
    inst = Instrument.default()
    spec = load_persona(next((run / "02_persona").glob("persona*.yaml")))
    d = run / "03_consistency_data"
    tr_sft, ho_sft = read_jsonl(d / "train" / "sft.jsonl"), read_jsonl(d / "heldout" / "sft.jsonl")
    plain = Scorer(spec, instrument=inst)
    tr_pairs, ho_pairs = with_flip_on_task(
        spec, read_jsonl(d / "train" / "pairs.jsonl"), read_jsonl(d / "heldout" / "pairs.jsonl")
    )
    chosen = plain.score([r["messages"][-1]["content"] for r in ho_sft], prompts=[r["messages"][:-1] for r in ho_sft])
    for name, vals in (
        ("held-out chosen", [r.on_task for r in chosen]),
        ("held-out trait-flipped", [p["rejected_on_task"] for p in ho_pairs if "rejected_on_task" in p]),
        ("train trait-flipped", [p["rejected_on_task"] for p in tr_pairs if "rejected_on_task" in p]),
    ):
        v = np.array(vals, dtype=float)
        print(f"{name}: {len(v)} answers, on task {np.mean(v >= ON_TASK_LINE):.3f}, median on_task {np.median(v):.3f}")

    def drop_off_task(pairs: list[dict]) -> list[dict]:
        return [p for p in pairs if not off_task_flip(p)]

    def unmeasured(pairs: list[dict]) -> list[dict]:  # as stage 4 read them before stage 3 recorded on_task
        return [{k: v for k, v in p.items() if k != "rejected_on_task"} for p in pairs]

    variants = {
        "all": (unmeasured(tr_pairs), unmeasured(ho_pairs)),
        "ho": (unmeasured(tr_pairs), drop_off_task(ho_pairs)),
        "both": (drop_off_task(tr_pairs), drop_off_task(ho_pairs)),
    }
    print("variant | mean, min, >=0.90 | per trait: AUROC (n chosen + n flipped)")
    for v, (trp, hop) in variants.items():
        scorer = Scorer(spec, instrument=inst, profile=fit(spec, labelled_examples(spec, tr_sft, trp), instrument=inst))
        aucs, _ = heldout_auroc(scorer, spec, ho_sft, hop)
        vals = np.array([a["auroc"] for a in aucs.values() if a["auroc"] is not None])
        print(
            f"{v:4s} | {vals.mean():.3f}, {vals.min():.3f}, {int((vals >= 0.9).sum())}/{len(vals)} | "
            + " ".join(f"{t} {a['auroc']:.3f} ({a['n_pos']}+{a['n_neg']})" for t, a in aucs.items() if a["auroc"]),
            flush=True,
        )


if __name__ == "__main__":
    main()
