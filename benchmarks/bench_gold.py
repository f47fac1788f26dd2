"""The scorer on the hand-written gold sets (benchmarks/gold/*/): is the instrument right?

For every set (a persona file and 48+ prompts, each with a gold, generic, flipped and babble answer;
format in benchmarks/gold/README.md) this prints what METRICS.md asks of the instrument: the `consistent`
rate per kind, balanced accuracy and AUROC of gold vs generic + flipped, how often the flipped trait is
caught, false violations per trait on gold answers, on-task separation of gold vs babble, and every
response-level gate on the gold and on the generic answers (scoring/gold.py, `gold_report`).

The detectors are fitted from the persona file alone, as stage 3's scorer is: the gold answers are never
training data. These sets are a development set; a separate held-out set of the same format is used to
check the result.

With two or more sets it also prints the **other-persona check**: every set's gold answers scored against every
other set's persona (targets: all of that persona's traits). A gold answer of another character is not this
persona, however colourful; the share judged `consistent` should be as low as for generic answers. Pairs that
share a signature phrase are left out (their voices overlap by construction).

Run: python benchmarks/bench_gold.py [SET_DIR ...] [--json OUT.json] [--cross-encoder DIR [--judge-weight W] [--class-probs]]
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
from personatune.scoring.trait_lexicon import WEIGHT as TRAIT_LEXICON_WEIGHT

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sets", nargs="*", help="gold-set folders (default: every folder in benchmarks/gold/)")
    ap.add_argument("--json", help="also write every report as JSON here")
    ap.add_argument(
        "--instrument",
        help="instrument weights folder (default: the shipped one; e.g. an epoch of scripts/train_instrument.py --keep-epochs)",
    )
    ap.add_argument(
        "--no-lexical-bank",
        action="store_true",
        help="score without the lexical-bank condition (scoring/lexical.py), as the scorer did before 2026-12-01",
    )
    ap.add_argument(
        "--trait-lexicon-weight",
        type=float,
        default=TRAIT_LEXICON_WEIGHT,
        help="weight of the per-trait lexical evidence for the selected traits (scoring/trait_lexicon.py; default: "
        "the scorer's, 10; 0 = off, as the scorer was before 2026-12-02)",
    )
    ap.add_argument(
        "--cross-encoder",
        metavar="DIR",
        help="mix the cross-encoder judge trained by experiments/cross_encoder.py --save DIR into the trait "
        "probabilities (experiments/cross_encoder_judge.py; not adopted)",
    )
    ap.add_argument("--judge-weight", type=float, default=0.5, help="the judge's share of each trait probability")
    ap.add_argument(
        "--class-probs",
        action="store_true",
        help="cross-encoder: mix its class probabilities P(e), P(v) instead of the margin form (CrossEncoderJudge)",
    )
    args = ap.parse_args()
    judge = None
    if args.cross_encoder:
        import sys

        sys.path.insert(0, str(HERE / "experiments"))
        from cross_encoder_judge import CrossEncoderJudge

        from personatune.errors import ModelNotFoundError

        try:
            judge = CrossEncoderJudge(args.cross_encoder, margin=not args.class_probs)
        except ModelNotFoundError as e:
            sys.exit(f"error: {e}")
    folders = [Path(s) for s in args.sets] or sorted(p.parent for p in (HERE / "gold").glob("*/responses.jsonl"))
    instrument = Instrument(args.instrument) if args.instrument else Instrument.default()
    reports, loaded = {}, {}
    for folder in folders:
        spec = load_persona(folder / "persona.yaml")
        items, problems = load_gold(folder / "responses.jsonl", spec.trait_ids)
        for p in problems:
            print(f"{folder.name}: line {p['line']} skipped: {p['reason']}")
        t0 = time.perf_counter()
        scorer = Scorer(
            spec,
            instrument=instrument,
            lexical=not args.no_lexical_bank,
            trait_lexicon_weight=args.trait_lexicon_weight,
            judge=judge,
            judge_weight=args.judge_weight,
        )
        t_fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        scores = score_gold(scorer, items)
        loaded[folder.name] = (spec, items, scorer)
        t_score = time.perf_counter() - t0
        rep = gold_report(scores)
        rep["seconds"] = {"fit": t_fit, "score": t_score}
        rep["unmet_targets"] = unmet_targets(rep)
        reports[folder.name] = rep
        print(format_gold_report(folder.name, rep))
        print(f"  (fit {t_fit:.1f} s, scoring {4 * len(items)} answers {t_score:.1f} s)")
    keys = ("balanced_accuracy", "auroc", "flipped_caught")
    ta = np.array([v for r in reports.values() for v in r["trait_auroc"].values() if v is not None])
    if ta.size:
        print(
            f"\nPER-TRAIT AUROC over {ta.size} traits (stage 4's figure): mean {ta.mean():.3f}, min {ta.min():.3f}, "
            f"traits >= 0.90: {(ta >= 0.9).sum()}"
        )
    print(
        "\nMEAN over sets: "
        + ", ".join(f"{k} {np.mean([r[k] for r in reports.values()]):.3f}" for k in keys)
        + f", gold consistent {np.mean([r['consistent_rate']['gold'] for r in reports.values()]):.3f}"
        + f", on-task balanced accuracy {np.mean([r['on_task'].get('balanced_accuracy', np.nan) for r in reports.values()]):.3f}"
    )
    met = [n for n, r in reports.items() if not r["unmet_targets"]]
    print(f"sets meeting every target: {len(met)}/{len(reports)}" + (f" ({', '.join(met)})" if met else ""))
    if len(loaded) > 1:
        cross = other_persona_check(loaded)
        reports["_other_persona_check"] = cross
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=2, default=str) + "\n", encoding="utf-8")


def other_persona_check(loaded: dict) -> dict:
    """Consistent rate of each set's gold answers under each other set's persona; prints the matrix and the mean."""
    names = list(loaded)
    rates: dict[str, dict[str, float]] = {}
    voiced: list[bool] = []
    for a in names:
        spec_a, _, scorer = loaded[a]
        sig_a = {x.lower() for x in spec_a.style.signature_phrases}
        for b in names:
            spec_b, items, _ = loaded[b]
            if b == a or sig_a & {x.lower() for x in spec_b.style.signature_phrases}:
                continue
            recs = scorer.score(
                [it.answers["gold"] for it in items],
                prompts=[[{"role": r, "content": c} for r, c in it.messages] for it in items],
                contexts=[it.context for it in items],
                targets=[[] for _ in items],
            )
            rates.setdefault(a, {})[b] = float(np.mean([r.consistent for r in recs]))
            voiced += [r.style.get("voice", 0.0) >= 0.5 for r in recs]
    print("\nOTHER-PERSONA CHECK: share of set B's gold answers judged consistent with persona A (lower is better)")
    print("A \\ B    " + " ".join(f"{b[:8]:>8s}" for b in names))
    for a in names:
        row = rates.get(a, {})
        print(f"{a[:8]:9s} " + " ".join(f"{row[b]:8.2f}" if b in row else f"{'-':>8s}" for b in names))
    allr = [v for row in rates.values() for v in row.values()]
    mean = float(np.mean(allr)) if allr else float("nan")
    voice = float(np.mean(voiced)) if voiced else float("nan")
    print(
        f"mean over {len(allr)} pairs: {mean:.3f} (max {max(allr, default=float('nan')):.2f}); "
        f"judged in the persona's voice (voice >= 0.5): {voice:.3f}"
    )
    return {"rates": rates, "mean": mean, "pairs": len(allr), "in_voice": voice}


if __name__ == "__main__":
    main()
