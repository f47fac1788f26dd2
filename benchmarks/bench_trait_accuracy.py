"""Trait-detection accuracy on third-party labelled statements (Anthropic persona evals, Big Five).

For each of the five traits, the persona profile is built from OUR OWN trait specs
(benchmarks/trait_specs/big_five.yaml, or --spec big_five_facets.yaml: descriptions and exemplars written for
this project, never taken from the test files) on the shipped instrument (scoring/instrument.py), and
scores every statement of ../shared/benchmarks/anthropic-persona/<trait>.jsonl (500 " Yes" = someone with
the trait would say it, 500 " No"). The five traits form one persona, as in a real persona file.

traits[t] and violations[t] are the scorer's: the instrument's head plus, as the scorer does, the per-trait lexical
evidence of scoring/trait_lexicon.py for the traits whose lexicon separates their exemplars (--trait-lexicon-weight,
default 10; 0 = the head alone; --every-trait applies it to every trait, as measured before 2026-12-02).
Reported per trait: accuracy of traits[t] >= 0.5 against Yes/No, AUROC of traits[t] - violations[t],
the share of Yes statements not read as violating t, and the nearest-centroid baseline on frozen MiniLM
(statement closer to the mean positive-exemplar embedding than to the mean negative one). Nothing is
tuned on these files.

Run: python benchmarks/bench_trait_accuracy.py [--data DIR] [--spec YAML]
     python benchmarks/bench_trait_accuracy.py --judge hf [--judge-model NAME] [--judge-limit 60]
(an LLM judge on a label-stratified random sample of --judge-limit statements per trait, seed 0: accuracy and AUROC
of the instrument alone, the judge's P(expressed) alone, and the scorer's 50/50 combination, on the same statements.)
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
from personatune.scoring.instrument import Instrument
from personatune.scoring.lexical import bank_of
from personatune.scoring.trait_lexicon import SELECT_AUROC, WEIGHT, TraitLexicons
from personatune.scoring.traits import build_profile

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data",
        default=str(HERE.parent.parent / "shared" / "benchmarks" / "anthropic-persona"),
        help="the anthropic-persona folder (default: ../shared beside the repo)",
    )
    ap.add_argument("--spec", default=str(HERE / "trait_specs" / "big_five.yaml"))
    ap.add_argument("--instrument", help="instrument weights folder (default: the shipped one)")
    ap.add_argument(
        "--trait-lexicon-weight",
        type=float,
        default=WEIGHT,
        help="weight of the per-trait lexical evidence (scoring/trait_lexicon.py; default 10, the scorer's; 0 = off)",
    )
    ap.add_argument(
        "--every-trait", action="store_true", help="apply the lexical evidence to every trait (no per-trait selection)"
    )
    ap.add_argument(
        "--judge", choices=["hf", "openai"], help="also measure an LLM judge (and the 50/50 combination) on a sample"
    )
    ap.add_argument(
        "--judge-model", help="hf: model name/path (default smollm2-135m-instruct); openai: served model name"
    )
    ap.add_argument("--judge-url", help="openai: server URL ending in /v1")
    ap.add_argument(
        "--judge-limit", type=int, default=60, help="statements per trait judged (half Yes, half No; seeded sample)"
    )
    args = ap.parse_args()

    raw = yaml.safe_load(Path(args.spec).read_text(encoding="utf-8"))
    spec = PersonaSpec(
        name="big_five",
        summary="benchmark persona holding the five Big-Five traits",
        traits=[Trait(**t) for t in raw["traits"]],
    )
    emb = Embedder.default()
    inst = Instrument(args.instrument) if args.instrument else Instrument.default()
    t0 = time.perf_counter()
    det = build_profile(spec, inst)
    bank = bank_of(inst.weights_dir)
    use = bank is not None and args.trait_lexicon_weight
    lexicons = (
        TraitLexicons.build(
            spec, bank.background, args.trait_lexicon_weight, select=None if args.every_trait else SELECT_AUROC
        )
        if use
        else None
    )
    print(
        f"profile built from the spec alone in {time.perf_counter() - t0:.2f} s (instrument {inst.meta.get('weights_sha256', '')[:12]})"
    )
    print(
        f"{'trait':18s} {'n':>5s} {'acc@0.5':>8s} {'AUROC':>7s} {'oracle acc':>10s} {'viol<0.5|Yes':>12s} | {'base acc':>8s} {'base AUROC':>10s}"
    )
    rows = []
    for t in spec.traits:
        path = Path(args.data) / f"{t.id}.jsonl"
        items = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        texts = [d["statement"] for d in items]
        y = np.array([d["answer_matching_behavior"].strip() == "Yes" for d in items])
        sc = det.score(texts, inst)
        if lexicons is not None:  # as Scorer(trait_lexicon_weight=W) does
            lexicons.apply(texts, sc.traits, sc.violations)
        p = np.array([r[t.id] for r in sc.traits])
        v = np.array([r[t.id] for r in sc.violations])
        acc, auc = float(((p >= 0.5) == y).mean()), auroc(p - v, y)
        # the best single threshold on these very labels: an upper bound on what re-calibration could give
        oracle = max(float(((p >= th) == y).mean()) for th in np.unique(p))
        # nearest-centroid baseline on the same embeddings
        X = emb.encode(texts)
        mp, mn = emb.encode(t.positive).mean(0), emb.encode(t.negative).mean(0)
        b = X @ (mp / np.linalg.norm(mp)) - X @ (mn / np.linalg.norm(mn))
        bacc, bauc = float(((b > 0) == y).mean()), auroc(b, y)
        no_viol_yes = float((v[y] < 0.5).mean())
        rows.append((acc, auc, oracle, bacc, bauc))
        print(
            f"{t.id:18s} {len(y):5d} {acc:8.3f} {auc:7.3f} {oracle:10.3f} {no_viol_yes:12.3f} | {bacc:8.3f} {bauc:10.3f}"
        )
    m = np.mean(rows, axis=0)
    print(f"{'MEAN':18s} {'':5s} {m[0]:8.3f} {m[1]:7.3f} {m[2]:10.3f} {'':12s} | {m[3]:8.3f} {m[4]:10.3f}")
    if args.judge:
        judge_sample(args, spec, det, inst)


def judge_sample(args: argparse.Namespace, spec: PersonaSpec, det, inst: Instrument) -> None:
    """Detectors vs judge vs their 50/50 mix (the scorer's default rule) on a seeded, label-balanced sample."""
    from personatune.config import JudgeArgs
    from personatune.scoring.judges import build_judge, rubric_messages
    from personatune.scoring.scorer import DEFAULT_JUDGE_WEIGHT

    ja = JudgeArgs(backend=args.judge, model=args.judge_model, base_url=args.judge_url)
    judge = build_judge(ja)
    rng = np.random.default_rng(0)
    w = DEFAULT_JUDGE_WEIGHT
    print(
        f"\njudge {args.judge} {args.judge_model or 'smollm2-135m-instruct'}: {args.judge_limit} statements per trait "
        f"(seeded, half Yes / half No); combination p = {1 - w} * detector + {w} * judge"
    )
    print(
        f"{'trait':18s} {'n':>4s} | {'det acc':>7s} {'AUROC':>6s} | {'judge acc':>9s} {'AUROC':>6s} | {'mix acc':>7s} {'AUROC':>6s}"
    )
    rows, t0, n_total = [], time.perf_counter(), 0
    for t in spec.traits:
        items = [
            json.loads(line)
            for line in (Path(args.data) / f"{t.id}.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
        yes = [d for d in items if d["answer_matching_behavior"].strip() == "Yes"]
        no = [d for d in items if d["answer_matching_behavior"].strip() != "Yes"]
        k = args.judge_limit // 2
        pick = [yes[i] for i in rng.choice(len(yes), k, replace=False)] + [
            no[i] for i in rng.choice(len(no), k, replace=False)
        ]
        texts = [d["statement"] for d in pick]
        y = np.array([d["answer_matching_behavior"].strip() == "Yes" for d in pick])
        pd = np.array([r[t.id] for r in det.score(texts, inst).traits])
        # Only the question the benchmark needs (is trait t expressed?), the scorer's rubric for it.
        conv = [rubric_messages(spec, t, x, None, "expressed", judge.exemplars) for x in texts]
        if hasattr(judge, "yes_probabilities"):
            pj = np.array(judge.yes_probabilities(conv))
        else:
            pj = np.array(
                [v[t.id][0] if t.id in v else 0.5 for v in judge.judge(spec.model_copy(update={"traits": [t]}), texts)]
            )
        pm = (1 - w) * pd + w * pj
        n_total += len(texts)
        r = [float(((p >= 0.5) == y).mean()) for p in (pd, pj, pm)]
        a = [auroc(p, y) for p in (pd, pj, pm)]
        rows.append(r + a)
        print(
            f"{t.id:18s} {len(y):4d} | {r[0]:7.3f} {a[0]:6.3f} | {r[1]:9.3f} {a[1]:6.3f} | {r[2]:7.3f} {a[2]:6.3f}",
            flush=True,
        )
    m = np.mean(rows, axis=0)
    print(f"{'MEAN':18s} {'':4s} | {m[0]:7.3f} {m[3]:6.3f} | {m[1]:9.3f} {m[4]:6.3f} | {m[2]:7.3f} {m[5]:6.3f}")
    print(f"judged {n_total} statements in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
