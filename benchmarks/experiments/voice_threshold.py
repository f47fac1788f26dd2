"""Experiment (issue 14, "Other personas"): can a voice threshold separate a persona's gold answers from other
personas' gold answers, globally or per persona?

For an instrument folder (e.g. one trained with `scripts/train_instrument.py --cross 1`) and each dev gold set:
the head's voice logit of the set's gold answers, of its generic answers and of the other dev sets' gold answers,
against the persona's voice centroid. Two thresholds: the global one of `calibrate_voice.py` (`--global-shift`,
the logit above which 90 % of the training corpus's gold answers lie: -1.17 for `--cross 1` epoch 2), and a
per-persona one from the persona file alone: 40 groups of five positive exemplars, each scored against the centroid
of the persona's other voice sentences, threshold at the `--quantile` of those logits.

Run: python benchmarks/experiments/voice_threshold.py INSTRUMENT_DIR [--quantile 0.1] [--global-shift 1.17]
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibrate_voice import voice_logit, voice_logits  # noqa: E402

from personatune.persona import load_persona  # noqa: E402
from personatune.scoring.gold import load_gold  # noqa: E402
from personatune.scoring.instrument import Instrument, centroid  # noqa: E402
from personatune.scoring.traits import voice_sentences  # noqa: E402

GOLD = Path(__file__).resolve().parents[1] / "gold"


def self_threshold(inst: Instrument, spec, rng: random.Random, q: float) -> float:
    rows = voice_sentences(spec)
    _, ps = inst.encode_both(rows)
    Z = torch.from_numpy(ps)
    pos = [s for t in spec.traits for s in t.positive]
    idx = {s: i for i, s in enumerate(rows)}
    out = []
    with torch.inference_mode():
        for _ in range(40):
            pick = {idx[pos[j]] for j in rng.sample(range(len(pos)), 5)}
            V = centroid(Z[[i for i in range(len(rows)) if i not in pick]])
            out.append(voice_logit(inst, Z[sorted(pick)], torch.ones(len(pick)), V))
    return float(np.quantile(out, q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("instrument")
    ap.add_argument("--quantile", type=float, default=0.1)
    ap.add_argument("--global-shift", type=float, default=1.17)
    args = ap.parse_args()
    inst = Instrument(args.instrument)
    dev = {}
    for d in sorted(GOLD.glob("*/persona.yaml")):
        spec = load_persona(d)
        dev[d.parent.name] = (spec, load_gold(d.parent / "responses.jsonl", spec.trait_ids)[0])
    rng, rows = random.Random(0), []
    for name, (spec, items) in dev.items():
        _, ps = inst.encode_both(voice_sentences(spec))
        V = centroid(torch.from_numpy(ps))
        tau = self_threshold(inst, spec, rng, args.quantile)
        g = voice_logits(inst, [it.answers["gold"] for it in items], V)
        ge = voice_logits(inst, [it.answers["generic"] for it in items], V)
        o = voice_logits(inst, [it.answers["gold"] for n, (_, its) in dev.items() if n != name for it in its], V)
        t0 = -args.global_shift
        r = {
            "gold_global": (g > t0).mean(),
            "other_global": (o > t0).mean(),
            "generic_global": (ge > t0).mean(),
            "self_threshold": tau,
            "gold_self": (g > tau).mean(),
            "other_self": (o > tau).mean(),
        }
        rows.append(r)
        print(f"{name:8s} " + "  ".join(f"{k} {v:.3f}" for k, v in r.items()))
    print("MEAN     " + "  ".join(f"{k} {np.mean([r[k] for r in rows]):.3f}" for k in rows[0]))


if __name__ == "__main__":
    main()
