"""Stage 4's labels checked by hand: does a trait-flipped answer of the teacher contradict its trait?

Stage 4's per-trait detector AUROC compares held-out chosen answers that target trait t (label 1) with the
teacher's trait-flipped answers for t that stage 3's scorer found inconsistent and on task (label 0,
`s4_evaluation.flip_took`). Both labels are the pipeline's own: the scenario says which traits a chosen answer
targets, the teacher was asked to contradict t, and the scorer under test decided that it did.

`benchmarks/labels/stage4_quickstart_hand.jsonl` holds 372 of those items of the main job (the held-out split of
the three traits that failed stage 4 in sessions 44-46: optimistic, adventurous, protective), each labelled by
hand, blind (shuffled, side and scores hidden; rubric in benchmarks/labels/README.md), by two labellers
(`hand`: A, `hand_b`: B, who did not see A's labels):
  "+"  the answer expresses the trait, "-"  it contradicts the trait (shows the persona file's inverse),
  "0"  neither (an in-voice answer that says nothing about the trait).

This prints, per trait: the two labellers' agreement (raw and Cohen's kappa); per labeller, side x hand label and
the AUROC of traits[t] (stage 4's evaluator of the run, and the persona-only scorer that stage 3 uses) against stage
3's labels (chosen vs flipped, what stage 4 gates on), against the hand labels ("+" vs the rest) and on the items
the hand labels call clear ("+" vs "-").

Run: python benchmarks/experiments/s4_hand_labels.py [--run runs/quickstart] [--labels FILE]
(--run: a finished main job whose stage-3 data the labels were drawn from; items whose text is not in the run's
held-out split are left out and counted.)
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from s4_expressed import stage3_splits  # noqa: E402

from personatune.scoring.aggregate import auroc  # noqa: E402
from personatune.scoring.factory import build_scorer  # noqa: E402
from personatune.stages.s4_evaluation import flip_took  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
HAND = "+0-"
LABELLERS = ("hand", "hand_b")


def load_labels(path: Path) -> list[dict]:
    """The labelled items; a bad line is reported by number and skipped."""
    items = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            it = json.loads(line)
            ok = all(it[k] in HAND for k in LABELLERS) and it["side"] in ("chosen", "flipped")
            ok = ok and bool(it["text"]) and bool(it["trait"])
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            print(
                f"{path}:{n}: skipped (needs JSON with text, trait, side chosen|flipped, hand and hand_b one of + 0 -)"
            )
            continue
        items.append(it)
    return items


def in_split(run: Path, items: list[dict]) -> tuple:
    """The run's persona and the items whose (trait, side, text) is an item of the run's held-out split as stage 4 builds it."""
    spec, _, ho_sft, _, ho_pairs = stage3_splits(run)
    have = {(t, "chosen", r["messages"][-1]["content"]) for r in ho_sft for t in r["targets"]}
    have |= {(p["flipped_trait"], "flipped", p["rejected"][-1]["content"]) for p in ho_pairs if flip_took(p)}
    kept = [it for it in items if (it["trait"], it["side"], it["text"]) in have]
    print(f"{len(kept)} of {len(items)} labelled items are in {run}'s held-out split")
    return spec, kept


def fmt(a: float | None) -> str:
    return "  n/a" if a is None else f"{a:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "quickstart")
    ap.add_argument("--labels", type=Path, default=ROOT / "benchmarks" / "labels" / "stage4_quickstart_hand.jsonl")
    args = ap.parse_args()
    spec, items = in_split(args.run, load_labels(args.labels))
    traits = sorted({it["trait"] for it in items}, key=spec.trait_ids.index)

    print("\nagreement of the two labellers (A: hand, B: hand_b)")
    for t in traits:
        print(f"  {t:12s} {agreement([it for it in items if it['trait'] == t])}")
    scorers = {
        "stage-4 evaluator": build_scorer(spec, evaluator_dir=args.run / "04_evaluation" / "evaluator"),
        "persona only (stage 3)": build_scorer(spec),
    }
    scores = {name: scorer.score([it["text"] for it in items]) for name, scorer in scorers.items()}
    for key in LABELLERS:
        report(items, traits, key, scores)


def kappa(x: list[str], y: list[str]) -> tuple[float, float]:
    """Raw agreement and Cohen's kappa of two labellers' labels over the three classes."""
    n = len(x)
    po = sum(p == q for p, q in zip(x, y)) / n
    cx, cy = collections.Counter(x), collections.Counter(y)
    pe = sum(cx[h] * cy[h] for h in HAND) / n / n
    return po, (po - pe) / (1 - pe) if pe < 1 else float("nan")


def agreement(items: list[dict]) -> str:
    """Raw agreement and Cohen's kappa of labellers A and B."""
    po, k = kappa([it["hand"] for it in items], [it["hand_b"] for it in items])
    return f"agree {po:.3f}, Cohen's kappa {k:.3f} (n={len(items)})"


def report(items: list[dict], traits: list[str], key: str, scores: dict) -> None:
    """Side x label and the AUROCs for one labeller's labels."""
    print(f"\n[{key}] side x hand label (+ expresses the trait, 0 neither, - contradicts it)")
    for t in traits:
        c = collections.Counter((it["side"], it[key]) for it in items if it["trait"] == t)
        cells = "   ".join(f"{s}: " + " ".join(f"{h}:{c[(s, h)]:<3d}" for h in HAND) for s in ("chosen", "flipped"))
        print(f"  {t:12s} {cells}")
    flips = [it for it in items if it["side"] == "flipped"]
    n_contra = sum(it[key] == "-" for it in flips)
    print(f"  teacher flips that contradict their trait: {n_contra} of {len(flips)}")
    print(f"[{key}] AUROC of traits[t]: stage-3 labels (chosen vs flipped) | hand: + vs rest | hand: + vs - (n)")
    for name, recs in scores.items():
        for t in traits:
            rows = [(r.traits[t], it) for r, it in zip(recs, items) if it["trait"] == t]
            s = [x for x, _ in rows]
            side = auroc(s, [int(it["side"] == "chosen") for _, it in rows])
            hand = auroc(s, [int(it[key] == "+") for _, it in rows])
            clear = [(x, it) for x, it in rows if it[key] in "+-"]
            pm = auroc([x for x, _ in clear], [int(it[key] == "+") for _, it in clear])
            print(f"  {name:22s} {t:12s} {fmt(side)} | {fmt(hand)} | {fmt(pm)} ({len(clear)})")


if __name__ == "__main__":
    main()
