"""Would more stage-3 training data lift stage 4's per-trait AUROC? A learning curve on a run's own data.

Stage 4 fits its evaluator on the persona file plus the stage-3 TRAINING split (`s4_evaluation.labelled_examples`) and
gates each trait's AUROC on the held-out split. With the quickstart's `data.heldout_fraction: 0.6` the training split is
the smaller one (109 of 273 prompts on the session-44 main job). This refits the evaluator on random fractions of the
training split's prompts (all their chosen and trait-flipped answers; several draws per fraction) and scores the same
held-out split by stage 4's own rules (`heldout_auroc`): if the per-trait AUROC still rises steeply at the full split,
more training prompts (a larger `data.max_prompts`, a smaller `data.heldout_fraction`) are a lever; if it is flat,
they are not.

Run: python benchmarks/experiments/s4_learning_curve.py --run RUN_DIR [--fractions 0.25,0.5,0.75,1] [--draws 3]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np

from personatune.scoring.instrument import Instrument
from personatune.scoring.scorer import Scorer
from personatune.scoring.traits import fit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a run folder with stage-3 data (train and held-out splits)")
    ap.add_argument("--fractions", default="0.25,0.5,0.75,1")
    ap.add_argument("--draws", type=int, default=3)
    args = ap.parse_args()

    from personatune.stages.s4_evaluation import heldout_auroc, labelled_examples
    from s4_expressed import stage3_splits  # this folder

    run = Path(args.run)
    inst = Instrument.default()
    spec, tr_sft, ho_sft, tr_pairs, ho_pairs = stage3_splits(run)
    ids = sorted({r["scenario_id"] for r in tr_sft} | {p["scenario_id"] for p in tr_pairs})
    print(f"run {run}: {len(ids)} training prompts ({len(tr_sft)} chosen, {len(tr_pairs)} pairs); held-out: stage 4's rules")
    for frac in (float(f) for f in args.fractions.split(",")):
        rows = []
        for k in range(args.draws if frac < 1 else 1):
            keep = set(random.Random(k).sample(ids, max(1, round(frac * len(ids)))))
            ex = labelled_examples(
                spec,
                [r for r in tr_sft if r["scenario_id"] in keep],
                [p for p in tr_pairs if p["scenario_id"] in keep],
            )
            scorer = Scorer(spec, instrument=inst, profile=fit(spec, ex, instrument=inst))
            aucs = {t: a["auroc"] for t, a in heldout_auroc(scorer, spec, ho_sft, ho_pairs)[0].items()}
            rows.append(aucs)
        per_trait = {t: float(np.mean([r[t] for r in rows])) for t in spec.trait_ids}
        v = np.array(list(per_trait.values()))
        print(
            f"  {frac:4.2f} of the prompts ({len(rows)} draw(s)) | mean {v.mean():.3f}, min {v.min():.3f}, "
            f">=0.90 {int((v >= 0.9).sum())}/{len(v)} | " + " ".join(f"{t} {a:.3f}" for t, a in per_trait.items()),
            flush=True,
        )


if __name__ == "__main__":
    main()
