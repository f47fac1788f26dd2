"""Trait-detection accuracy on third-party labelled statements (Anthropic persona evals, Big Five).

For each of the five traits, the detectors are built from OUR OWN trait specs
(benchmarks/trait_specs/big_five.yaml: descriptions and exemplars written for this project, never
taken from the test files) and score every statement of /work/shared/benchmarks/anthropic-persona/<trait>.jsonl
(500 " Yes" = someone with the trait would say it, 500 " No"). The five traits form one persona, so each
trait's detector also sees the other four as "neutral" contrast, as in a real persona.

Reported per trait: accuracy of traits[t] >= 0.5 against Yes/No, AUROC of traits[t], and the same for
the nearest-centroid baseline (statement closer to the mean positive-exemplar embedding than to the mean
negative one). Nothing is tuned on these files.

Run: python benchmarks/bench_trait_accuracy.py [--data DIR] [--spec YAML] [--l2 X] [--other-positive-weight W]
(--l2: the detectors' L2 strength, default the library's DEFAULT_L2 — a sensitivity check only: a value
picked on these labels would be tuned on the test set.)
     python benchmarks/bench_trait_accuracy.py --cv-l2 0.03,0.1,0.3,1.0
(prints, per trait, the out-of-fold NLL on the spec's own exemplars for each L2 value — what a
cross-validated choice of the penalty would pick without looking at the test labels.)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import yaml

from personatune.embeddings import Embedder
from personatune.persona import PersonaSpec, Trait
from personatune.scoring.aggregate import auroc
from personatune.scoring.traits import DEFAULT_L2, DEFAULT_OTHER_POSITIVE_WEIGHT, fit

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(HERE.parent.parent / "shared" / "benchmarks" / "anthropic-persona"), help="the anthropic-persona folder (default: ../shared beside the repo)")
    ap.add_argument("--spec", default=str(HERE / "trait_specs" / "big_five.yaml"))
    ap.add_argument("--l2", type=float, default=DEFAULT_L2, help="L2 strength of the detectors (sensitivity check)")
    ap.add_argument("--other-positive-weight", type=float, default=DEFAULT_OTHER_POSITIVE_WEIGHT,
                    help="weight of the other traits' positives as the partial label 'not violated' (fit's other_positive_weight)")
    ap.add_argument("--cv-l2", help="comma-separated L2 values: print each trait's out-of-fold NLL on its own exemplars and exit")
    args = ap.parse_args()

    raw = yaml.safe_load(Path(args.spec).read_text(encoding="utf-8"))
    spec = PersonaSpec(name="big_five", summary="benchmark persona holding the five Big-Five traits",
                       traits=[Trait(**t) for t in raw["traits"]])
    emb = Embedder.default()
    if args.cv_l2:
        cv_l2(spec, emb, [float(x) for x in args.cv_l2.split(",")])
        return
    t0 = time.perf_counter()
    det = fit(spec, (), embedder=emb, l2=args.l2, other_positive_weight=args.other_positive_weight)
    fit_s = time.perf_counter() - t0
    print(f"detectors (l2 {args.l2}) fitted from the spec alone in {fit_s:.2f} s; temperatures "
          + ", ".join(f"{t}={T:.2f}" for t, T in zip(det.trait_ids, det.temperatures)))
    print(f"{'trait':18s} {'n':>5s} {'acc@0.5':>8s} {'AUROC':>7s} {'oracle acc':>10s} {'viol<0.5|Yes':>12s} | {'base acc':>8s} {'base AUROC':>10s}")
    rows = []
    for t in spec.traits:
        path = Path(args.data) / f"{t.id}.jsonl"
        items = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        texts = [d["statement"] for d in items]
        y = np.array([d["answer_matching_behavior"].strip() == "Yes" for d in items])
        traits, viols = det.score(texts, emb)
        p = np.array([r[t.id] for r in traits])
        v = np.array([r[t.id] for r in viols])
        acc, auc = float(((p >= 0.5) == y).mean()), auroc(p, y)
        # the best single threshold on these very labels: an upper bound on what re-calibration could give
        oracle = max(float(((p >= th) == y).mean()) for th in np.unique(p))
        # nearest-centroid baseline on the same embeddings
        X = emb.encode(texts)
        mp, mn = emb.encode(t.positive).mean(0), emb.encode(t.negative).mean(0)
        b = X @ (mp / np.linalg.norm(mp)) - X @ (mn / np.linalg.norm(mn))
        bacc, bauc = float(((b > 0) == y).mean()), auroc(b, y)
        no_viol_yes = float((v[y] < 0.5).mean())
        rows.append((acc, auc, oracle, bacc, bauc))
        print(f"{t.id:18s} {len(y):5d} {acc:8.3f} {auc:7.3f} {oracle:10.3f} {no_viol_yes:12.3f} | {bacc:8.3f} {bauc:10.3f}")
    m = np.mean(rows, axis=0)
    print(f"{'MEAN':18s} {'':5s} {m[0]:8.3f} {m[1]:7.3f} {m[2]:10.3f} {'':12s} | {m[3]:8.3f} {m[4]:10.3f}")


def cv_l2(spec: PersonaSpec, emb: Embedder, grid: list[float], seed: int = 0) -> None:
    """Out-of-fold weighted NLL (after temperature calibration) per trait and L2 value, same folds as `fit`."""
    from personatune.scoring import traits as T

    print(f"{'trait':18s} " + " ".join(f"{'l2=' + str(g):>9s}" for g in grid) + "  picked")
    for t in spec.traits:
        rows = T._trait_examples(spec, t.id, [], T.DEFAULT_OTHER_TRAIT_WEIGHT)
        texts = [e.text for e in rows]
        F = T._features(np.asarray(emb.encode(texts), dtype=np.float64), np.array([T.has_negation(x) for x in texts]))
        y = np.array([e.label for e in rows])
        w = np.array([e.weight for e in rows]) * len(rows)
        groups = np.array([e.group for e in rows])
        ug = np.unique(groups)
        fold_of = dict(zip(ug, np.random.default_rng(seed).permutation(len(ug)) % T.N_FOLDS))
        folds = np.array([fold_of[g] for g in groups])
        nlls = []
        for lam in grid:
            oof = np.zeros((len(rows), 3))
            for k in range(T.N_FOLDS):
                te = folds == k
                oof[te] = F[te] @ T._fit_multinomial(F[~te], y[~te], w[~te], lam).T
            p = T._softmax(oof / T._fit_temperature(oof, y, w))
            nlls.append(float(-(w * np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0))).sum() / w.sum()))
        print(f"{t.id:18s} " + " ".join(f"{v:9.4f}" for v in nlls) + f"  {grid[int(np.argmin(nlls))]}")


if __name__ == "__main__":
    main()
