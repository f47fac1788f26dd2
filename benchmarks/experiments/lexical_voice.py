"""Experiment (issue 14, "Other personas"): lexical evidence of a persona's voice against the instrument's voice head.

A persona's lexicon: the smoothed log-odds (add 0.5) of each word of its voice sentences (positive exemplars,
example assistant turns, signature phrases) against a background of plain register — the package's neutral
sentences and the generic answers of the training corpus (benchmarks/scorer_corpus/, never the dev gold sets).
A response's lexical voice score is the sum of its words' positive log-odds divided by its word count. Printed per
dev gold set: AUROC of gold answers against the other dev personas' gold answers and against generic answers, for
the lexical score and for the instrument's voice probability. With `--run RUN_DIR`: the same two scores on the
run's stage-7 samples, persona-prompted baseline against unprompted baseline (AUROC; the unprompted model is not
the persona).

Run: python benchmarks/experiments/lexical_voice.py [--instrument DIR] [--run RUN_DIR]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from personatune.persona import load_persona
from personatune.scoring.gold import load_gold
from personatune.scoring.instrument import Instrument, instrument_dir
from personatune.scoring.lexical import (
    BANK_FILE,
    LexicalBank,
    lexical_score,
    log_odds,
    voice_counts,
)
from personatune.scoring.scorer import Scorer

ROOT = Path(__file__).resolve().parents[2]


def background() -> Counter:
    """The plain-register background: the shipped lexical bank's (neutral sentences and the corpus's generic answers)."""
    return LexicalBank.load(instrument_dir() / BANK_FILE).background


def lexicon(spec, bg: Counter) -> dict[str, float]:
    return log_odds(voice_counts(spec), bg)


def auroc(pos: list[float], neg: list[float]) -> float:
    return float(roc_auc_score([1] * len(pos) + [0] * len(neg), list(pos) + list(neg)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instrument", help="instrument weights folder (default: the shipped one)")
    ap.add_argument("--run", help="a run directory with 07_final_eval/samples.json")
    args = ap.parse_args()
    inst = Instrument(args.instrument) if args.instrument else Instrument.default()
    bg = background()
    dev = {}
    for d in sorted((ROOT / "benchmarks/gold").glob("*/persona.yaml")):
        spec = load_persona(d)
        dev[d.parent.name] = (spec, load_gold(d.parent / "responses.jsonl", spec.trait_ids)[0])
    rows = []
    for name, (spec, items) in dev.items():
        lex, scorer = lexicon(spec, bg), Scorer(spec, instrument=inst)
        texts = {
            "gold": [it.answers["gold"] for it in items],
            "generic": [it.answers["generic"] for it in items],
            "other": [it.answers["gold"] for n, (_, its) in dev.items() if n != name for it in its],
        }
        lx = {k: [lexical_score(lex, t) for t in v] for k, v in texts.items()}
        vo = {k: [r.style["voice"] for r in scorer.score(v)] for k, v in texts.items()}
        r = (
            auroc(lx["gold"], lx["other"]),
            auroc(vo["gold"], vo["other"]),
            auroc(lx["gold"], lx["generic"]),
            auroc(vo["gold"], vo["generic"]),
        )
        rows.append(r)
        print(
            f"{name:8s} gold vs other personas: lexical {r[0]:.3f}, voice head {r[1]:.3f}; gold vs generic: lexical {r[2]:.3f}, voice head {r[3]:.3f}"
        )
    m = np.mean(rows, axis=0)
    print(
        f"MEAN     gold vs other personas: lexical {m[0]:.3f}, voice head {m[1]:.3f}; gold vs generic: lexical {m[2]:.3f}, voice head {m[3]:.3f}"
    )
    if args.run:
        run = Path(args.run)
        spec = load_persona(run / "02_persona" / "persona.yaml")
        samples = json.loads((run / "07_final_eval" / "samples.json").read_text(encoding="utf-8"))
        lex, scorer = lexicon(spec, bg), Scorer(spec, instrument=inst)
        p, u = [s["baseline_prompted"] for s in samples], [s["baseline"] for s in samples]
        vp, vu = [r.style["voice"] for r in scorer.score(p)], [r.style["voice"] for r in scorer.score(u)]
        print(
            f"{run}: prompted vs unprompted baseline ({len(samples)} prompts): lexical "
            f"{auroc([lexical_score(lex, t) for t in p], [lexical_score(lex, t) for t in u]):.3f}, voice head {auroc(vp, vu):.3f}"
        )


if __name__ == "__main__":
    main()
