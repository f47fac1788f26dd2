"""Detector settings on OUR OWN data (a dev set), never on the third-party test files.

For each stage-3 run directory given, per trait: AUROC and accuracy at the 0.5 line of traits[t] on the
held-out chosen responses that target t (label 1) against the held-out trait-flipped responses for t
(label 0; flips that did not take are left out, as in stage 4), for detectors fitted
  - "fitted": on the training split's labelled examples (what stage 4 does), and
  - "persona-only": from the persona file alone (what stage 3 and `personatune score` without --evaluator use).
Means over traits, then over runs. Settings compared: the L2 strength (--l2) and an optional transform of
the embeddings (--variant: base; center = subtract the mean embedding of a generic corpus, the built-in
neutral bank and prompt bank; pcK = also remove its top K principal directions), applied to every text.

Run: python benchmarks/bench_detector_dev.py runs/quickstart runs/qs_v3 ... [--l2 0.03,0.3,1.0] [--variant base,center,pc2]
The labels are SmolLM2's own stage-3 outputs (noisy: a "trait-flipped" response may not contradict the
trait), so only differences between settings on the same runs mean anything.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import yaml

from personatune.embeddings import Embedder
from personatune.persona import load_persona
from personatune.rundir import read_jsonl
from personatune.scoring import traits as T
from personatune.scoring.aggregate import auroc
from personatune.scoring.trait_bank import NEUTRAL_UTTERANCES
from personatune.stages.s4_evaluation import labelled_examples

BANK = Path(__file__).resolve().parents[1] / "src" / "personatune" / "data" / "prompt_bank.yaml"


class Transformed:
    """An embedder whose vectors are centred (and optionally stripped of top principal directions), renormalised."""

    def __init__(self, base: Embedder, mu: np.ndarray, P: np.ndarray | None) -> None:
        self.base, self.mu, self.P = base, mu, P

    def encode(self, texts: list[str]) -> np.ndarray:
        E = np.asarray(self.base.encode(texts), dtype=np.float64) - self.mu
        if self.P is not None:
            E = E - (E @ self.P.T) @ self.P
        return E / np.linalg.norm(E, axis=1, keepdims=True)


def generic_corpus() -> list[str]:
    out: list[str] = []

    def walk(o: object) -> None:
        if isinstance(o, str) and len(o.split()) > 3:
            out.append(o)
        elif isinstance(o, dict):
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    walk(yaml.safe_load(BANK.read_text(encoding="utf-8")))
    return list(NEUTRAL_UTTERANCES) + out


def make_embedder(base: Embedder, variant: str):
    if variant == "base":
        return base
    C = np.asarray(base.encode(generic_corpus()), dtype=np.float64)
    mu = C.mean(0)
    if variant == "center":
        return Transformed(base, mu, None)
    k = int(variant.removeprefix("pc"))
    return Transformed(base, mu, np.linalg.svd(C - mu, full_matrices=False)[2][:k])


def evaluate(run: Path, emb, persona_only: bool, l2: float) -> tuple[float, float] | None:
    spec = load_persona(run / "02_persona" / "persona.yaml")
    tr, ho = run / "03_consistency_data" / "train", run / "03_consistency_data" / "heldout"
    ex = [] if persona_only else labelled_examples(spec, read_jsonl(tr / "sft.jsonl"), read_jsonl(tr / "pairs.jsonl"))
    det = T.fit(spec, ex, embedder=emb, l2=l2)
    texts, trait_of, y = [], [], []
    for r in read_jsonl(ho / "sft.jsonl"):
        for t in r.get("targets", []):
            texts.append(r["messages"][-1]["content"]), trait_of.append(t), y.append(1)
    for p in read_jsonl(ho / "pairs.jsonl"):
        if p.get("rejected_kind") == "trait_flipped" and p.get("flipped_trait") and not p.get("rejected_consistent", False):
            texts.append(p["rejected"][-1]["content"]), trait_of.append(p["flipped_trait"]), y.append(0)
    if not texts:
        return None
    tv, _ = det.score(texts, emb)
    aucs, accs = [], []
    for t in spec.trait_ids:
        idx = [i for i, tt in enumerate(trait_of) if tt == t]
        yy = [y[i] for i in idx]
        if 0 < sum(yy) < len(yy):
            aucs.append(auroc([tv[i][t] for i in idx], yy))
            accs.append(float(np.mean([(tv[i][t] >= 0.5) == (y[i] == 1) for i in idx])))
    return (float(np.mean(aucs)), float(np.mean(accs))) if aucs else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run directories with stages 2-3 done")
    ap.add_argument("--l2", default=str(T.DEFAULT_L2), help="comma-separated L2 strengths")
    ap.add_argument("--variant", default="base", help="comma-separated: base, center, pcK")
    args = ap.parse_args()
    base = Embedder.default()
    runs = [Path(r) for r in args.runs]
    print(f"{'variant':8s} {'l2':>6s} | {'fitted AUROC':>12s} {'acc':>6s} | {'persona-only AUROC':>18s} {'acc':>6s} | per-run persona-only AUROC")
    for v in args.variant.split(","):
        emb = make_embedder(base, v)
        for l2 in [float(x) for x in args.l2.split(",")]:
            f = [r for r in (evaluate(run, emb, False, l2) for run in runs) if r]
            p = [r for r in (evaluate(run, emb, True, l2) for run in runs) if r]
            fm, pm = np.mean(f, axis=0), np.mean(p, axis=0)
            print(f"{v:8s} {l2:6g} | {fm[0]:12.3f} {fm[1]:6.3f} | {pm[0]:18.3f} {pm[1]:6.3f} | " + " ".join(f"{r[0]:.3f}" for r in p), flush=True)


if __name__ == "__main__":
    main()
