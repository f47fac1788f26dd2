"""Stage 2's measurability check on every hand-written persona: do clear personas pass, do vague ones fail?

For each persona file — the example personas (examples/personas), the development gold personas
(benchmarks/gold), the instrument's training-corpus personas (benchmarks/scorer_corpus; hand-written and clear,
but the instrument was trained on their answers) and the broken test personas meant to fail (vague, negated
copies, redundant) — this prints the lowest per-trait separability (persona_measures.loo_separability) under
both hold-out rules:

- `pair` (shipped): each exemplar held out together with its opposite twin (its nearest exemplar on the
  trait's other side);
- `single`: plain leave-one-out (before 2026-12-02).

and the whole stage-2 gate's verdict (`personatune validate`, with the shipped rule). The threshold is
`gates.persona.min_separability` (0.8). Text-only scoring with the shipped instrument; ~1 minute on 2 cores.

With `--gold-correlation` it also asks whether a trait's separability predicts how well the instrument detects
the trait in whole answers: for every trait of the development gold sets, the AUROC of traits[t] between gold
answers to prompts that target t and the flipped answers that contradict t, and its Spearman correlation with
the trait's separability under each rule (another minute).

Run: python benchmarks/bench_persona_gate.py [PERSONA.yaml ...] [--gold-correlation]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from personatune.persona import load_persona
from personatune.persona_measures import loo_separability
from personatune.scoring.instrument import Instrument
from personatune.stages.s2_persona import evaluate_persona_file

REPO = Path(__file__).resolve().parents[1]
THRESHOLD = 0.8


def persona_files() -> list[tuple[str, Path]]:
    """(group, path) of every persona this benchmark checks by default."""
    out = [("example", p) for p in sorted((REPO / "examples" / "personas").glob("*.yaml"))]
    out += [("dev gold", p) for p in sorted((REPO / "benchmarks" / "gold").glob("*/persona.yaml"))]
    out += [("corpus", p) for p in sorted((REPO / "benchmarks" / "scorer_corpus").glob("*/persona.yaml"))]
    broken = REPO / "tests" / "data" / "broken_personas"
    out += [("broken", broken / f"{n}.yaml") for n in ("vague", "inseparable", "redundant")]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", help="persona files (default: every group above)")
    ap.add_argument("--gold-correlation", action="store_true", help="also correlate separability with gold-set AUROC")
    args = ap.parse_args()
    files = [("given", Path(f)) for f in args.files] or persona_files()
    instrument = Instrument.default()
    print(f"{'group':9s} {'persona':22s} {'pair min':>8s} {'single min':>10s}  lowest trait (pair)      gate")
    tally: dict[str, dict[str, list[bool]]] = {}
    for group, path in files:
        spec = load_persona(path)
        mins = {}
        for rule, pairs in (("pair", True), ("single", False)):
            res = loo_separability(spec, instrument, pairs=pairs)
            aucs = [r["auroc"] if r["auroc"] is not None else np.nan for r in res]
            mins[rule] = (float(np.nanmin(aucs)), spec.trait_ids[int(np.nanargmin(aucs))])
        passed = evaluate_persona_file(path, instrument=instrument).passed
        name = path.parent.name if path.name == "persona.yaml" else path.stem
        print(
            f"{group:9s} {name:22s} {mins['pair'][0]:8.2f} {mins['single'][0]:10.2f}  {mins['pair'][1]:24s} "
            f"{'PASS' if passed else 'FAIL'}"
        )
        t = tally.setdefault(group, {"pair": [], "single": [], "gate": []})
        t["pair"].append(mins["pair"][0] >= THRESHOLD)
        t["single"].append(mins["single"][0] >= THRESHOLD)
        t["gate"].append(passed)
    print(f"\nseparability >= {THRESHOLD} on every trait (pair / single), and the whole gate passed:")
    for group, t in tally.items():
        n = len(t["gate"])
        print(f"  {group:9s} {sum(t['pair'])}/{n} / {sum(t['single'])}/{n}; gate passed {sum(t['gate'])}/{n}")
    if args.gold_correlation:
        gold_correlation(instrument)


def gold_correlation(instrument: Instrument) -> None:
    """Spearman correlation, over the dev gold sets' traits, of separability (both rules) with gold-vs-flipped AUROC."""
    from scipy.stats import spearmanr

    from personatune.scoring.aggregate import auroc
    from personatune.scoring.gold import load_gold, score_gold
    from personatune.scoring.scorer import Scorer

    sep: dict[str, list[float]] = {"pair": [], "single": []}
    gold: list[float] = []
    for path in sorted((REPO / "benchmarks" / "gold").glob("*/persona.yaml")):
        spec = load_persona(path)
        items, _ = load_gold(path.parent / "responses.jsonl", spec.trait_ids)
        sc = score_gold(Scorer(spec, instrument=instrument), items)
        for rule, pairs in (("pair", True), ("single", False)):
            sep[rule] += [r["auroc"] for r in loo_separability(spec, instrument, pairs=pairs)]
        for t in spec.trait_ids:
            pos = [r.traits[t] for it, r in zip(sc.items, sc.records["gold"]) if t in it.targets]
            neg = [r.traits[t] for it, r in zip(sc.items, sc.records["flipped"]) if it.flipped_trait == t]
            gold.append(auroc(pos + neg, [1] * len(pos) + [0] * len(neg)) if pos and neg else np.nan)
    ok = [i for i, g in enumerate(gold) if not np.isnan(g)]
    print(
        f"\nper-trait gold-vs-flipped AUROC on the dev gold sets: mean {np.mean([gold[i] for i in ok]):.3f}, {len(ok)} traits"
    )
    for rule, xs in sep.items():
        rho, p = spearmanr([xs[i] for i in ok], [gold[i] for i in ok])
        print(f"  Spearman(separability {rule}, gold AUROC) = {rho:.2f} (p {p:.2f})")


if __name__ == "__main__":
    main()
