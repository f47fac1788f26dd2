"""The scorer on the hand-written gold sets (benchmarks/gold/*/): is the instrument right?

For every set (a persona file and 48+ prompts, each with a gold, generic, flipped and babble answer;
format in benchmarks/gold/README.md) this prints what METRICS.md asks of the instrument: the `consistent`
rate per kind, balanced accuracy and AUROC of gold vs generic + flipped, how often the flipped trait is
caught, false violations per trait on gold answers, on-task separation of gold vs babble, and every
response-level gate on the gold and on the generic answers (scoring/gold.py, `gold_report`).

The detectors are fitted from the persona file alone, as stage 3's scorer is: the gold answers are never
training data. These sets are a development set; a separate held-out set of the same format is used to
check the result.

Run: python benchmarks/bench_gold.py [SET_DIR ...] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from personatune.persona import load_persona
from personatune.scoring.gold import format_gold_report, gold_report, load_gold, score_gold, unmet_targets
from personatune.scoring.instrument import Instrument
from personatune.scoring.scorer import Scorer

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sets", nargs="*", help="gold-set folders (default: every folder in benchmarks/gold/)")
    ap.add_argument("--json", help="also write every report as JSON here")
    ap.add_argument(
        "--instrument",
        help="instrument weights folder (default: the shipped one; e.g. an epoch of scripts/train_instrument.py --keep-epochs)",
    )
    args = ap.parse_args()
    folders = [Path(s) for s in args.sets] or sorted(p.parent for p in (HERE / "gold").glob("*/responses.jsonl"))
    instrument = Instrument(args.instrument) if args.instrument else Instrument.default()
    reports = {}
    for folder in folders:
        spec = load_persona(folder / "persona.yaml")
        items, problems = load_gold(folder / "responses.jsonl", spec.trait_ids)
        for p in problems:
            print(f"{folder.name}: line {p['line']} skipped: {p['reason']}")
        t0 = time.perf_counter()
        scorer = Scorer(spec, instrument=instrument)
        t_fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        scores = score_gold(scorer, items)
        t_score = time.perf_counter() - t0
        rep = gold_report(scores)
        rep["seconds"] = {"fit": t_fit, "score": t_score}
        rep["unmet_targets"] = unmet_targets(rep)
        reports[folder.name] = rep
        print(format_gold_report(folder.name, rep))
        print(f"  (fit {t_fit:.1f} s, scoring {4 * len(items)} answers {t_score:.1f} s)")
    keys = ("balanced_accuracy", "auroc", "flipped_caught")
    print(
        "\nMEAN over sets: "
        + ", ".join(f"{k} {np.mean([r[k] for r in reports.values()]):.3f}" for k in keys)
        + f", gold consistent {np.mean([r['consistent_rate']['gold'] for r in reports.values()]):.3f}"
        + f", on-task balanced accuracy {np.mean([r['on_task'].get('balanced_accuracy', np.nan) for r in reports.values()]):.3f}"
    )
    met = [n for n, r in reports.items() if not r["unmet_targets"]]
    print(f"sets meeting every target: {len(met)}/{len(reports)}" + (f" ({', '.join(met)})" if met else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=2, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
