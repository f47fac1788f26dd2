"""Best-of-4 on the chosen side, or sample 2 and 2 more only where needed: what stage 3 would save and lose.

Stage 3 samples `data.best_of` (4) teacher candidates for every prompt and keeps a prompt when one candidate is
consistent and on task (`eligible`); among the eligible ones `data.select` picks the chosen answer. An adaptive
scheme samples k first and the remaining 4 − k only for prompts with no eligible candidate yet: a prompt is kept
exactly when the 4-candidate scheme would keep it (the same candidates, in distribution), so the yield cannot change;
what changes is the number of candidates sampled (stage 3's chosen-side time is proportional to it) and the choice
among eligible candidates, which is made from k instead of up to 4 for the prompts that succeed early.

This script replays a finished run's stage-3 candidates (from its generation cache, in sampling order), scores them
as stage 3 does, and prints for k = 1, 2, 3, 4: candidates sampled (and the ratio to 4 per prompt), prompts kept, the
chosen answer identical to best-of-4's, and over the chosen answers the mean consistency, mean traits not adhering
(the first key of `adherent_voice`) and trait adherence; split by train / held-out. The first k candidates of a
4-candidate draw stand in for a k-candidate draw (same distribution, not the same tokens).

Run: python benchmarks/experiments/adaptive_best_of.py --run RUN_DIR/NAME
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from personatune.config import load_config
from personatune.consistency_pairs import (
    choose_candidate,
    eligible,
    score_candidates,
    traits_not_adhering,
    typical_voice,
)
from personatune.persona import load_persona
from personatune.rundir import RunDir, read_jsonl
from personatune.scenarios import Scenario
from personatune.scoring.aggregate import trait_adherence
from personatune.scoring.factory import scorer_for_run
from personatune.stages.s3_consistency_data import _job_key, _load_generations, teacher_jobs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a run folder with stage-3 data (…/runs/quickstart)")
    args = ap.parse_args()
    run = Path(args.run)
    config = load_config(run / "config.yaml")
    spec = load_persona(next((run / "02_persona").glob("persona*.yaml")))
    d = run / "03_consistency_data"
    scenarios = [Scenario(**r) for r in read_jsonl(d / "scenarios.jsonl")]
    cache = _load_generations(d / "generations.jsonl")
    outs = [cache[_job_key(*job)] for job in teacher_jobs(spec, scenarios, config)]
    n = len(outs[0])
    scorer, _ = scorer_for_run(config, RunDir(run), spec, use_evaluator=False)
    scores = score_candidates(scenarios, outs, scorer)
    print(f"{len(scenarios)} prompts x {n} candidates, select={config.data.select}")

    def chosen(k: int) -> tuple[list[int | None], int]:
        """Per prompt the index of the chosen candidate (None: not kept) and the candidates sampled."""
        avail = [cs[:k] if any(eligible(r) for r in cs[:k]) else cs for cs in scores]
        voice = typical_voice(scenarios, avail)
        picks = []
        for cs in avail:
            good = [i for i, r in enumerate(cs) if eligible(r)]
            picks.append(
                choose_candidate(good, config.data.select, voice, score=lambda i, cs=cs: cs[i]) if good else None
            )
        return picks, sum(len(a) for a in avail)

    full, total = chosen(n)
    print("k | candidates (ratio) | kept | chosen as best-of-4 | split: n, consistency, traits not adhering, adherence")
    for k in range(1, n + 1):
        picks, m = chosen(k)
        same = sum(p == f for p, f in zip(picks, full) if f is not None)
        parts = []
        for split in ("train", "heldout"):
            rs = [scores[j][p] for j, (s, p) in enumerate(zip(scenarios, picks)) if p is not None and s.split == split]
            adh = trait_adherence(rs).overall
            parts.append(
                f"{split} {len(rs)}, {np.mean([r.consistency for r in rs]):.3f}, "
                f"{np.mean([traits_not_adhering(r) for r in rs]):.3f}, {adh.value:.3f}"
            )
        kept = sum(p is not None for p in picks)
        print(f"{k} | {m} ({m / total:.3f}) | {kept} | {same}/{kept} | " + " | ".join(parts), flush=True)


if __name__ == "__main__":
    main()
