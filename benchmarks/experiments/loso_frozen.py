import sys; sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from harness import *
from personatune.scoring.scorer import Scorer
from personatune.scoring.negation import has_negation
from sklearn.linear_model import LogisticRegression
E = CachedEmbedder(); S = sets()
def feats_for(spec, items, det):
    rows = []  # (set, kind, item idx, trait, feature vec, viol label, expr label)
    T = spec.trait_ids
    poles = {}
    for t in spec.traits:
        pe_ = E.encode([t.description, *t.positive]); ne_ = E.encode([*([t.inverse] if t.inverse else []), *t.negative])
        P = pe_.mean(0); P /= np.linalg.norm(P); N = ne_.mean(0); N /= np.linalg.norm(N)
        poles[t.id] = (P, N, pe_, ne_)
    out = []
    for kind in KINDS:
        for i, it in enumerate(items):
            text = it.answers[kind]; sents = split_sentences(text)
            se = E.encode(sents); we = E.encode([text])[0]
            neg = np.array([has_negation(s) for s in sents])
            pe, pv = det.probabilities(se.astype(np.float64), neg)
            wpe, wpv = det.probabilities(we[None].astype(np.float64), np.array([has_negation(text)]))
            for j, t in enumerate(T):
                P, N, PE, NE = poles[t]
                d = se @ P - se @ N; mp = (se @ PE.T).max(1); mn = (se @ NE.T).max(1)
                f = [d.max(), d.min(), d.mean(), mp.max(), mn.max(), (mn - mp).max(), we @ P - we @ N,
                     pv[:, j].max(), np.sort(pv[:, j])[-2:].mean(), pv[:, j].mean(), pe[:, j].max(), np.sort(pe[:, j])[-2:].mean(), pe[:, j].mean(),
                     wpe[0, j], wpv[0, j], (pv[:, j] * neg).max(), len(sents)]
                yv = int(kind == "flipped" and it.flipped_trait == t)
                ye = int(kind == "gold" and t in it.targets) if kind in ("gold", "flipped") else -1
                out.append((kind, i, t, np.array(f, float), yv, ye))
    return out
data = {}
for name, (spec, items) in S.items():
    det = Scorer(spec, embedder=E).detectors
    data[name] = feats_for(spec, items, det)
E.save()
res = {}
for test in data:
    tr = [r for n, rs in data.items() if n != test for r in rs]
    X = np.stack([r[3] for r in tr]); mu, sd = X.mean(0), X.std(0) + 1e-9
    clf = LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced").fit((X - mu) / sd, [r[4] for r in tr])
    # expression: gold-target vs (generic answers for that target as negative)
    te = data[test]
    Xt = (np.stack([r[3] for r in te]) - mu) / sd
    pv = clf.predict_proba(Xt)[:, 1]
    yv = np.array([r[4] for r in te]); kinds = np.array([r[0] for r in te])
    m = np.isin(kinds, ["gold", "flipped"])
    a = auroc(pv[m], yv[m])
    # per trait auroc
    per = [auroc(pv[m & (np.array([r[2] for r in te]) == t)], yv[m & (np.array([r[2] for r in te]) == t)]) for t in S[test][0].trait_ids]
    caught = np.mean(pv[(yv == 1)] >= 0.5); fpr_gold_any = np.mean([max(pv[(kinds == "gold") & (np.array([r[1] for r in te]) == i)]) >= 0.5 for i in range(len(S[test][1]))])
    res[test] = (a, np.mean(per), caught, fpr_gold_any)
    print(f"{test:8s} viol AUROC pooled {a:.3f} per-trait mean {np.mean(per):.3f} caught@0.5 {caught:.2f} gold-any-viol {fpr_gold_any:.2f}")
