"""Read stage 4's detector errors for one trait, and how much two runs' stage-3 generations agree.

For RUN_DIR and TRAIT: the held-out AUROC examples of stage 4 (`s4_evaluation.auroc_examples`) scored by the run's
fitted evaluator; prints the chosen answers (label 1) with traits[TRAIT] < 0.7 and the trait-flipped answers
(label 0) with traits[TRAIT] > 0.3, worst first — the answers behind a low auroc[TRAIT].
With --compare OTHER_RUN: of the generation keys both runs' 03_consistency_data/generations.jsonl hold, how many
drew the same outputs.

Run: python benchmarks/experiments/s4_errors.py RUN_DIR TRAIT [--compare OTHER_RUN] [--width 200]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from personatune.persona import load_persona
from personatune.rundir import read_jsonl
from personatune.scoring.scorer import Scorer
from personatune.stages.s4_evaluation import auroc_examples


def errors(run: Path, trait: str, width: int) -> None:
    spec = load_persona(next((run / "02_persona").glob("persona*.yaml")))
    held = run / "03_consistency_data" / "heldout"
    texts, trait_of, labels = auroc_examples(read_jsonl(held / "sft.jsonl"), read_jsonl(held / "pairs.jsonl"))
    idx = [i for i, t in enumerate(trait_of) if t == trait]
    recs = Scorer.from_evaluator_dir(spec, run / "04_evaluation" / "evaluator").score([texts[i] for i in idx])
    rows = sorted(zip([r.traits[trait] for r in recs], [labels[i] for i in idx], [texts[i] for i in idx]))
    print(f"chosen answers targeting {trait} scored lowest:")
    for s, y, t in rows:
        if y == 1 and s < 0.7:
            print(f"  {s:.3f} {t[:width]!r}")
    print(f"answers flipped for {trait} scored highest:")
    for s, y, t in rows[::-1]:
        if y == 0 and s > 0.3:
            print(f"  {s:.3f} {t[:width]!r}")


def generations(run: Path) -> dict:
    path = run / "03_consistency_data" / "generations.jsonl"
    return {d["key"]: d["outputs"] for d in map(json.loads, path.read_text(encoding="utf-8").splitlines()) if d}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("trait")
    ap.add_argument("--compare", help="another run directory: agreement of the stage-3 generations")
    ap.add_argument("--width", type=int, default=200, help="characters of each answer shown")
    args = ap.parse_args()
    errors(Path(args.run), args.trait, args.width)
    if args.compare:
        a, b = generations(Path(args.run)), generations(Path(args.compare))
        common = set(a) & set(b)
        same = sum(a[k] == b[k] for k in common)
        print(
            f"generation keys: {len(a)} here, {len(b)} there, {len(common)} shared, {same} of them with the same outputs"
        )


if __name__ == "__main__":
    main()
