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
     python benchmarks/bench_trait_accuracy.py --judge hf [--judge-model NAME] [--judge-limit 60]
(an LLM judge on a label-stratified random sample of --judge-limit statements per trait, seed 0: accuracy and AUROC
of the detectors alone, the judge's P(expressed) alone, and the scorer's 50/50 combination, on the same statements.)
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
    ap.add_argument("--judge", choices=["hf", "openai"], help="also measure an LLM judge (and the 50/50 combination) on a sample")
    ap.add_argument("--judge-model", help="hf: model name/path (default smollm2-135m-instruct); openai: served model name")
    ap.add_argument("--judge-url", help="openai: server URL ending in /v1")
    ap.add_argument("--judge-limit", type=int, default=60, help="statements per trait judged (half Yes, half No; seeded sample)")
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
    if args.judge:
        judge_sample(args, spec, det, emb)


def judge_sample(args: argparse.Namespace, spec: PersonaSpec, det, emb: Embedder) -> None:
    """Detectors vs judge vs their 50/50 mix (the scorer's default rule) on a seeded, label-balanced sample."""
    from personatune.config import JudgeArgs
    from personatune.scoring.judges import build_judge, rubric_messages
    from personatune.scoring.scorer import DEFAULT_JUDGE_WEIGHT

    ja = JudgeArgs(backend=args.judge, model=args.judge_model, base_url=args.judge_url)
    judge = build_judge(ja)
    rng = np.random.default_rng(0)
    w = DEFAULT_JUDGE_WEIGHT
    print(f"\njudge {args.judge} {args.judge_model or 'smollm2-135m-instruct'}: {args.judge_limit} statements per trait "
          f"(seeded, half Yes / half No); combination p = {1 - w} * detector + {w} * judge")
    print(f"{'trait':18s} {'n':>4s} | {'det acc':>7s} {'AUROC':>6s} | {'judge acc':>9s} {'AUROC':>6s} | {'mix acc':>7s} {'AUROC':>6s}")
    rows, t0, n_total = [], time.perf_counter(), 0
    for t in spec.traits:
        items = [json.loads(line) for line in (Path(args.data) / f"{t.id}.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
        yes = [d for d in items if d["answer_matching_behavior"].strip() == "Yes"]
        no = [d for d in items if d["answer_matching_behavior"].strip() != "Yes"]
        k = args.judge_limit // 2
        pick = [yes[i] for i in rng.choice(len(yes), k, replace=False)] + [no[i] for i in rng.choice(len(no), k, replace=False)]
        texts = [d["statement"] for d in pick]
        y = np.array([d["answer_matching_behavior"].strip() == "Yes" for d in pick])
        pd = np.array([r[t.id] for r in det.score(texts, emb)[0]])
        # Only the question the benchmark needs (is trait t expressed?), the scorer's rubric for it.
        conv = [rubric_messages(spec, t, x, None, "expressed", judge.exemplars) for x in texts]
        if hasattr(judge, "yes_probabilities"):
            pj = np.array(judge.yes_probabilities(conv))
        else:
            pj = np.array([v[t.id][0] if t.id in v else 0.5 for v in judge.judge(spec.model_copy(update={"traits": [t]}), texts)])
        pm = (1 - w) * pd + w * pj
        n_total += len(texts)
        r = [float(((p >= 0.5) == y).mean()) for p in (pd, pj, pm)]
        a = [auroc(p, y) for p in (pd, pj, pm)]
        rows.append(r + a)
        print(f"{t.id:18s} {len(y):4d} | {r[0]:7.3f} {a[0]:6.3f} | {r[1]:9.3f} {a[1]:6.3f} | {r[2]:7.3f} {a[2]:6.3f}", flush=True)
    m = np.mean(rows, axis=0)
    print(f"{'MEAN':18s} {'':4s} | {m[0]:7.3f} {m[3]:6.3f} | {m[1]:9.3f} {m[4]:6.3f} | {m[2]:7.3f} {m[5]:6.3f}")
    print(f"judged {n_total} statements in {time.perf_counter() - t0:.1f} s")


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
