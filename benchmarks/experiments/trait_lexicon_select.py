"""Which traits should get per-trait lexical evidence? Selection by the lexicon's own separability (issue 14).

`scoring/trait_lexicon.py` adds lexical evidence (W = 10) for the traits whose lexicon separates their own
exemplars, leave-one-out, at the stage-2 bar (`exemplar_auroc` ≥ SELECT_AUROC = 0.8, fixed a priori, not tuned).
This script prints what that selection does:

1. `exemplar_auroc` per trait for the quickstart persona, the dev gold personas and the Big-Five specs of
   bench_trait_accuracy.py (which traits are selected);
2. for folders of gold-format sets (default: the training corpus, then the dev gold sets), the per-trait AUROC
   of traits[t] between gold answers that target t and flipped answers that contradict t, for the head alone,
   for the evidence on every trait, and for the evidence on the traits selected at each threshold tau;
3. with --run RUN_DIR: the same three variants on a run's stage-4 split (the evaluator fitted on the training
   split's labelled answers, as stage 4 does; held-out chosen vs trait-flipped answers, `auroc_examples`).

Run: python benchmarks/experiments/trait_lexicon_select.py [--run runs/quickstart] [--no-sets]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import yaml

from personatune.persona import Trait, load_persona
from personatune.scoring.aggregate import auroc
from personatune.scoring.gold import load_gold, score_gold
from personatune.scoring.instrument import Instrument
from personatune.scoring.lexical import bank_of
from personatune.scoring.scorer import Scorer
from personatune.scoring.trait_lexicon import WEIGHT, TraitLexicons, exemplar_auroc, shift

REPO = Path(__file__).resolve().parents[2]
TAUS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.01)


def trait_table(bg) -> None:
    groups = [("quickstart", load_persona(REPO / "examples" / "personas" / "captain_nova.yaml").traits)]
    groups += [
        (p.parent.name, load_persona(p).traits) for p in sorted((REPO / "benchmarks" / "gold").glob("*/persona.yaml"))
    ]
    for name in ("big_five", "big_five_facets"):
        raw = yaml.safe_load((REPO / "benchmarks" / "trait_specs" / f"{name}.yaml").read_text(encoding="utf-8"))
        groups.append((name, [Trait(**d) for d in raw["traits"]]))
    print("exemplar_auroc per trait (selected at 0.8 marked *):")
    for name, traits in groups:
        cells = [(t.id, exemplar_auroc(t, bg)) for t in traits]
        print(f"  {name:16s} " + " ".join(f"{i}={a:.2f}{'*' if a >= 0.8 else ''}" for i, a in cells))


def variants(head: list[float], on: list[float], y: list[int]) -> tuple[float, float]:
    return auroc(head, y), auroc(on, y)


def gold_folder(root: Path, inst: Instrument, bg) -> None:
    rows = []
    for path in sorted(root.glob("*/persona.yaml")):
        spec = load_persona(path)
        items, _ = load_gold(path.parent / "responses.jsonl", spec.trait_ids)
        sc = score_gold(Scorer(spec, instrument=inst, trait_lexicon_weight=0), items)
        lx = TraitLexicons.build(spec, bg, WEIGHT, select=None)
        for t in spec.traits:
            pos = [(it.answers["gold"], r) for it, r in zip(sc.items, sc.records["gold"]) if t.id in it.targets]
            neg = [
                (it.answers["flipped"], r) for it, r in zip(sc.items, sc.records["flipped"]) if it.flipped_trait == t.id
            ]
            if not pos or not neg:
                continue
            y = [1] * len(pos) + [0] * len(neg)
            head = [r.traits[t.id] for _, r in pos + neg]
            on = [shift(r.traits[t.id], r.violations[t.id], lx.lex(x)[t.id], WEIGHT)[0] for x, r in pos + neg]
            rows.append((exemplar_auroc(t, bg), *variants(head, on, y)))
    sel, h, o = (np.array(c) for c in zip(*rows))
    print(
        f"\n{root.relative_to(REPO)}: {len(rows)} traits; per-trait AUROC head {h.mean():.4f}, every trait {o.mean():.4f}"
    )
    for tau in TAUS:
        v = np.where(sel >= tau, o, h)
        print(
            f"  tau {tau:.2f}: evidence for {int((sel >= tau).sum()):3d} traits, mean {v.mean():.4f}, >= 0.9: {int((v >= 0.9).sum())}"
        )


def run_split(run: Path, inst: Instrument, bg) -> None:
    from personatune.rundir import read_jsonl
    from personatune.scoring.traits import fit
    from personatune.stages.s4_evaluation import auroc_examples, labelled_examples

    spec = load_persona(run / "02_persona" / "persona.yaml")
    d3 = run / "03_consistency_data"
    tr_sft, tr_pairs = read_jsonl(d3 / "train" / "sft.jsonl"), read_jsonl(d3 / "train" / "pairs.jsonl")
    ho_sft, ho_pairs = read_jsonl(d3 / "heldout" / "sft.jsonl"), read_jsonl(d3 / "heldout" / "pairs.jsonl")
    prof = fit(spec, labelled_examples(spec, tr_sft, tr_pairs), inst)
    texts, trait_of, labels = auroc_examples(ho_sft, ho_pairs)
    sc = prof.score(texts, inst)
    lx = TraitLexicons.build(spec, bg, WEIGHT, select=None)
    print(f"\n{run}: stage-4 per-trait AUROC on the held-out split (head / every trait / selected at 0.8)")
    for t in spec.traits:
        idx = [i for i, tt in enumerate(trait_of) if tt == t.id]
        y = [labels[i] for i in idx]
        head = [sc.traits[i][t.id] for i in idx]
        on = [shift(sc.traits[i][t.id], sc.violations[i][t.id], lx.lex(texts[i])[t.id], WEIGHT)[0] for i in idx]
        a = exemplar_auroc(t, bg)
        hh, oo = variants(head, on, y)
        print(
            f"  {t.id:16s} exemplar_auroc {a:.2f}: {hh:.3f} / {oo:.3f} / {oo if a >= 0.8 else hh:.3f}  ({sum(y)}+{len(y) - sum(y)})"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="*", help="gold-format folders (default: scorer_corpus, then gold)")
    ap.add_argument("--run", help="a run directory (runs/NAME) with stages 1-3 done")
    ap.add_argument("--no-sets", action="store_true", help="skip parts 1-2 (only the run's split)")
    args = ap.parse_args()
    inst = Instrument.default()
    bg = bank_of(inst.weights_dir).background
    if not args.no_sets:
        trait_table(bg)
        for f in args.folders or [REPO / "benchmarks" / "scorer_corpus", REPO / "benchmarks" / "gold"]:
            gold_folder(Path(f).resolve(), inst, bg)
    if args.run:
        run_split(Path(args.run), inst, bg)


if __name__ == "__main__":
    main()
