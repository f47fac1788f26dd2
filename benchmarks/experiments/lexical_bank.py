"""Experiment (issue 14, "Other personas"): a lexical condition relative to a bank of other personas.

Builds on lexical_voice.py. Shipped on 2026-12-01 at M = -0.05 (scoring/lexical.py); "consistent alone" here is
the scorer without it (Scorer(lexical=False)). The bank: the lexicons of the 24 training-corpus personas (benchmarks/scorer_corpus/,
never the dev gold sets). A response is lexically this persona when its lexical score under this persona's lexicon
is at least its best score under any bank lexicon plus a margin M (nats per word; M < 0 is lenient). No
per-persona scale is needed. For each margin of `--margins`, prints the dev gold sets' `consistent` rates with the
condition added (consistent AND lexically this persona): per kind, other personas' gold answers, balanced accuracy;
and with `--run RUN_DIR`, the run's stage-7 samples (unprompted / prompted baseline / final), `consistent` alone
and with the condition.

Run: python benchmarks/experiments/lexical_bank.py [--margins=-0.05,-0.1] [--run RUN_DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_run_samples import score_run_samples  # noqa: E402
from lexical_gate import dev_consistent, load_sets  # noqa: E402
from lexical_voice import ROOT, background, lexicon  # noqa: E402

from personatune.scoring.gold import KINDS  # noqa: E402
from personatune.scoring.instrument import Instrument  # noqa: E402
from personatune.scoring.lexical import OwnVoice  # noqa: E402


def relative(lex, bank, texts: list[str]) -> np.ndarray:
    """This persona's lexical score minus the best bank persona's, per text (nats per word)."""
    return np.array([OwnVoice(lex, bank).relative(t) for t in texts])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--margins", default="0,-0.05,-0.1,-0.15")
    ap.add_argument("--run")
    args = ap.parse_args()
    margins = [float(m) for m in args.margins.split(",")]
    bg = background()
    bank = [lexicon(spec, bg) for spec, _ in load_sets(ROOT / "benchmarks/scorer_corpus").values()]
    dev = load_sets(ROOT / "benchmarks/gold")
    inst = Instrument.default()
    scored = dev_consistent(dev, inst)
    ok = {k: v[1] for k, v in scored.items()}
    rel = {(n, k): relative(lexicon(dev[n][0], bg), bank, texts) for (n, k), (texts, _) in scored.items()}
    print("dev gold sets, means over the 6 sets: consistent rate per kind (AND lexically this persona)")
    for m in [None, *margins]:
        rates = {}
        for kind in (*KINDS, "other"):
            rates[kind] = np.mean(
                [(ok[(n, kind)] & (rel[(n, kind)] >= m if m is not None else True)).mean() for n in dev]
            )
        per_set = [
            (
                (ok[(n, "gold")] & (rel[(n, "gold")] >= m if m is not None else True)).mean(),
                np.mean(
                    [
                        (ok[(n, k)] & (rel[(n, k)] >= m if m is not None else True)).mean()
                        for k in ("generic", "flipped")
                    ]
                ),
            )
            for n in dev
        ]
        bal = np.mean([(g + 1 - r) / 2 for g, r in per_set])
        label = "consistent alone" if m is None else f"margin {m:+.2f}"
        gold_by_set = " ".join(f"{n} {g:.2f}" for n, (g, _) in zip(dev, per_set))
        print(
            f"  {label:17s} "
            + "  ".join(f"{k} {v:.3f}" for k, v in rates.items())
            + f"  balanced accuracy {bal:.3f}  (gold: {gold_by_set})"
        )
    if args.run:
        run = Path(args.run)
        spec, samples, by_source = score_run_samples(run, inst, lexical=False)
        lex = lexicon(spec, bg)
        print(f"{run}: stage-7 samples, consistent alone -> with the condition at each margin")
        for src, recs in by_source.items():
            c, r = np.array([x.consistent for x in recs]), relative(lex, bank, [s[src] for s in samples])
            print(f"  {src:18s} {c.mean():.3f} -> " + ", ".join(f"{(c & (r >= m)).mean():.3f}" for m in margins))


if __name__ == "__main__":
    main()
