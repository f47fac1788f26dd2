"""Experiment (issue 14, "Other personas"): shift an instrument's voice bias so that a given share of the training
corpus's gold answers is in voice.

Instruments trained with `scripts/train_instrument.py --cross 1` judge only ~57 % of the corpus's own gold answers
in voice at the head's 0.5 line (the other-persona negatives make the voice strict). This sets the bias of the
head's voice logit so that `--gold-rate` of the corpus gold answers (benchmarks/scorer_corpus/, the training data:
never the dev gold sets) score above 0, and writes the result as a new instrument folder; check it with
`python benchmarks/bench_gold.py --instrument OUT`.

Run: python benchmarks/experiments/calibrate_voice.py IN_DIR OUT_DIR [--gold-rate 0.9]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from personatune.persona import load_persona
from personatune.scoring.gold import load_gold
from personatune.scoring.instrument import FEATURE_SCALE, Instrument, centroid, sentence_weights, split_sentences
from personatune.scoring.traits import voice_sentences

CORPUS = Path(__file__).resolve().parents[1] / "scorer_corpus"


def voice_logit(inst: Instrument, S, w, V) -> float:
    """The head's voice logit of one response: S its sentence embeddings, w their weights, V the voice centroid."""
    G = inst.neutral_centroid
    W = torch.nn.functional.normalize((w[:, None] * S).sum(0), dim=0)
    f = torch.stack([W @ V, W @ G, W @ V - W @ G, (S @ V).max(), (S @ G).max()])
    return float(inst.head.voice(FEATURE_SCALE * f))


def voice_logits(inst: Instrument, texts: list[str], V) -> np.ndarray:
    """The head's voice logit of each text against voice centroid V (as PersonaProfile.score computes it)."""
    sents = [split_sentences(t) for t in texts]
    _, ps = inst.encode_both([s for ss in sents for s in ss])
    out, off = [], 0
    with torch.inference_mode():
        for ss in sents:
            S = torch.from_numpy(ps[off : off + len(ss)])
            off += len(ss)
            out.append(voice_logit(inst, S, torch.from_numpy(sentence_weights(ss)), V))
    return np.array(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--gold-rate", type=float, default=0.9)
    args = ap.parse_args()
    from safetensors.torch import load_file, save_file

    inst = Instrument(args.src)
    gold = []
    for d in sorted(CORPUS.glob("*/persona.yaml")):
        spec = load_persona(d)
        items, _ = load_gold(d.parent / "responses.jsonl", spec.trait_ids)
        _, ps = inst.encode_both(voice_sentences(spec))
        gold.append(voice_logits(inst, [it.answers["gold"] for it in items], centroid(torch.from_numpy(ps))))
    g = np.concatenate(gold)
    shift = -float(np.quantile(g, 1.0 - args.gold_rate))
    print(
        f"corpus gold answers in voice: {np.mean(g > 0):.3f} at the trained bias; shift {shift:+.3f} for {args.gold_rate}"
    )
    out = Path(args.out)
    shutil.copytree(args.src, out, dirs_exist_ok=True)
    t = load_file(str(out / "instrument.safetensors"))
    t["head.voice.bias"] = t["head.voice.bias"] + shift
    save_file(t, str(out / "instrument.safetensors"))
    meta = json.loads((out / "instrument.json").read_text(encoding="utf-8"))
    meta["voice_bias_shift"] = {"shift": shift, "corpus_gold_rate": args.gold_rate}
    (out / "instrument.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
