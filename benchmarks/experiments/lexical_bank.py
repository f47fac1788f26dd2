"""Experiment (issue 14, "Other personas"): a lexical condition relative to a bank of other personas.

Builds on lexical_voice.py. The bank: the lexicons of the 24 training-corpus personas (benchmarks/scorer_corpus/,
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
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lexical_gate import load_sets  # noqa: E402
from lexical_voice import ROOT, background, lexical_score, lexicon  # noqa: E402

from personatune.persona import load_persona  # noqa: E402
from personatune.scoring.gold import KINDS  # noqa: E402
from personatune.scoring.instrument import Instrument  # noqa: E402
from personatune.scoring.scorer import Scorer  # noqa: E402


def relative(lex, bank, texts: list[str]) -> np.ndarray:
    """This persona's lexical score minus the best bank persona's, per text (nats per word)."""
    return np.array([lexical_score(lex, t) - max(lexical_score(b, t) for b in bank) for t in texts])


def run_targets(run: Path) -> dict[str, list[str]]:
    out = {}
    for split in ("train", "heldout"):
        path = run / "03_consistency_data" / split / "sft.jsonl"
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                out[row["scenario_id"]] = row["targets"]
    return out


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
    ok, rel = {}, {}
    for name, (spec, items) in dev.items():
        scorer, lex = Scorer(spec, instrument=inst), lexicon(spec, bg)
        for kind in (*KINDS, "other"):
            its = [it for n, (_, x) in dev.items() if n != name for it in x] if kind == "other" else items
            texts = [it.answers["gold" if kind == "other" else kind] for it in its]
            recs = scorer.score(
                texts,
                prompts=[[{"role": r, "content": c} for r, c in it.messages] for it in its],
                contexts=[it.context for it in its],
                targets=[[] if kind == "other" else list(it.targets) for it in its],
            )
            ok[(name, kind)] = np.array([r.consistent for r in recs])
            rel[(name, kind)] = relative(lex, bank, texts)
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
                    [(ok[(n, k)] & (rel[(n, k)] >= m if m is not None else True)).mean() for k in ("generic", "flipped")]
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
        spec = load_persona(run / "02_persona" / "persona.yaml")
        samples = json.loads((run / "07_final_eval" / "samples.json").read_text(encoding="utf-8"))
        targets, scorer, lex = run_targets(run), Scorer(spec, instrument=inst), lexicon(spec, bg)
        print(f"{run}: stage-7 samples, consistent alone -> with the condition at each margin")
        for src in ("baseline", "baseline_prompted", "final"):
            texts = [s[src] for s in samples]
            recs = scorer.score(
                texts,
                prompts=[s["prompt"] for s in samples],
                contexts=[s["context"] for s in samples],
                targets=[targets.get(s["id"], []) for s in samples],
            )
            c, r = np.array([x.consistent for x in recs]), relative(lex, bank, texts)
            print(f"  {src:18s} {c.mean():.3f} -> " + ", ".join(f"{(c & (r >= m)).mean():.3f}" for m in margins))


if __name__ == "__main__":
    main()
