"""Experiment (issue 14, "Other personas"): what would `consistent` become with a lexical voice condition added?

Builds on lexical_voice.py. Per persona, a response's lexical ratio is its lexical voice score divided by the
median leave-one-out score of the persona's own positive exemplars (each scored against the lexicon built without
it), so one threshold serves every persona. The threshold is set on the training corpus (benchmarks/scorer_corpus/,
never the dev gold sets): the ratio above which `--gold-rate` of the corpus's gold answers lie. Then, on the dev gold
sets, `consistent` AND ratio >= threshold is compared with `consistent` alone: consistent rate per kind, balanced
accuracy (gold vs generic + flipped), other personas' gold judged consistent; and with `--run RUN_DIR`, the run's
stage-7 samples (unprompted / prompted baseline / final).

Run: python benchmarks/experiments/lexical_gate.py [--gold-rate 0.95] [--run RUN_DIR]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_run_samples import score_run_samples  # noqa: E402
from lexical_voice import ROOT, background, lexicon  # noqa: E402

from personatune.persona import load_persona  # noqa: E402
from personatune.scoring.gold import KINDS, load_gold  # noqa: E402
from personatune.scoring.instrument import Instrument  # noqa: E402
from personatune.scoring.lexical import lexical_score, log_odds, voice_counts, words  # noqa: E402
from personatune.scoring.scorer import Scorer  # noqa: E402


def scale(spec, bg: Counter) -> float:
    """Median leave-one-out lexical score of the persona's positive exemplars."""
    full = voice_counts(spec)
    return float(
        np.median([lexical_score(log_odds(full - Counter(words(s)), bg), s) for t in spec.traits for s in t.positive])
    )


def ratios(spec, bg: Counter, texts: list[str]) -> np.ndarray:
    lex, sc = lexicon(spec, bg), scale(spec, bg)
    return np.array([lexical_score(lex, t) / max(sc, 1e-9) for t in texts])


def load_sets(folder: Path) -> dict:
    out = {}
    for d in sorted(folder.glob("*/persona.yaml")):
        spec = load_persona(d)
        out[d.parent.name] = (spec, load_gold(d.parent / "responses.jsonl", spec.trait_ids)[0])
    return out


def dev_consistent(dev: dict, inst: Instrument) -> dict[tuple[str, str], tuple[list[str], np.ndarray]]:
    """(set, kind) -> (texts, `consistent` flags) for every kind of each dev set and for "other": the other sets'
    gold answers under this set's persona (targets: all traits). Scored without the shipped lexical-bank
    condition: these experiments add their own conditions to `consistent` as it was before it."""
    out = {}
    for name, (spec, items) in dev.items():
        scorer = Scorer(spec, instrument=inst, lexical=False)
        for kind in (*KINDS, "other"):
            its = [it for n, (_, x) in dev.items() if n != name for it in x] if kind == "other" else items
            texts = [it.answers["gold" if kind == "other" else kind] for it in its]
            recs = scorer.score(
                texts,
                prompts=[[{"role": r, "content": c} for r, c in it.messages] for it in its],
                contexts=[it.context for it in its],
                targets=[[] if kind == "other" else list(it.targets) for it in its],
            )
            out[(name, kind)] = (texts, np.array([r.consistent for r in recs]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gold-rate", type=float, default=0.95)
    ap.add_argument("--run")
    args = ap.parse_args()
    bg = background()
    corpus = load_sets(ROOT / "benchmarks/scorer_corpus")
    g = np.concatenate([ratios(spec, bg, [it.answers["gold"] for it in items]) for spec, items in corpus.values()])
    thr = float(np.quantile(g, 1.0 - args.gold_rate))
    print(f"threshold on the corpus's gold answers ({args.gold_rate} above it): lexical ratio {thr:.3f}")
    inst = Instrument.default()
    dev = load_sets(ROOT / "benchmarks/gold")
    scored, table = dev_consistent(dev, inst), []
    for name, (spec, _) in dev.items():
        row = {}
        for kind in (*KINDS, "other"):
            texts, ok = scored[(name, kind)]
            row[kind] = (ok.mean(), (ok & (ratios(spec, bg, texts) >= thr)).mean())
        table.append(row)
        print(f"{name:8s} " + "  ".join(f"{k} {a:.2f}->{b:.2f}" for k, (a, b) in row.items()))
    for j, label in ((0, "consistent alone"), (1, "with the lexical condition")):
        m = {k: float(np.mean([r[k][j] for r in table])) for k in table[0]}
        bal = np.mean([(r["gold"][j] + 1 - (r["generic"][j] + r["flipped"][j]) / 2) / 2 for r in table])
        print(f"MEAN {label:27s} " + "  ".join(f"{k} {v:.3f}" for k, v in m.items()) + f"  balanced accuracy {bal:.3f}")
    if args.run:
        run = Path(args.run)
        spec, samples, by_source = score_run_samples(run, inst, lexical=False)
        for src, recs in by_source.items():
            ok = np.array([r.consistent for r in recs])
            lx = ratios(spec, bg, [s[src] for s in samples]) >= thr
            print(f"{run.name} {src:18s} consistent {ok.mean():.3f} -> {(ok & lx).mean():.3f}")


if __name__ == "__main__":
    main()
