import sys; sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))  # harness.py
from harness import *
REPO = __import__("pathlib").Path(__file__).resolve().parents[2]
from sklearn.linear_model import LogisticRegression
E = CachedEmbedder()
def load(root):
    out = {}
    for d in sorted(p.parent for p in Path(root).glob("*/responses.jsonl")):
        spec = load_persona(d / "persona.yaml"); items, _ = load_gold(d / "responses.jsonl", spec.trait_ids); out[d.name] = (spec, items)
    return out
def feats(items, kind):
    q = E.encode([it.prompt for it in items]); X = []
    for i, it in enumerate(items):
        ss = split_sentences(it.answers[kind]) or [it.answers[kind]]
        S = E.encode(ss); w = np.array([max(len(s.split()), 1) for s in ss], float)
        W = (w[:, None] * S).sum(0); W /= np.linalg.norm(W)
        c = S @ q[i]
        X.append([W @ q[i], c.max(), np.sort(c)[-2:].mean()])
    return np.array(X)
C, D = load(str(REPO) + "/benchmarks/scorer_corpus"), load(str(REPO) + "/benchmarks/gold")
Xtr, ytr = [], []
for n, (spec, items) in C.items():
    for k in KINDS:
        Xtr.append(feats(items, k)); ytr += [0 if k == "babble" else 1] * len(items)
Xtr = np.concatenate(Xtr); ytr = np.array(ytr)
w = np.where(ytr == 0, 3.0, 1.0)
for cols in ([0], [0, 1], [0, 1, 2]):
    clf = LogisticRegression(C=10.0).fit(Xtr[:, cols], ytr, sample_weight=w)
    print("features", cols, "coef", np.round(clf.coef_, 2), np.round(clf.intercept_, 2))
    for n, (spec, items) in D.items():
        p = {k: clf.predict_proba(feats(items, k)[:, cols])[:, 1] for k in KINDS}
        a = auroc(list(p["gold"]) + list(p["babble"]), [1] * len(items) + [0] * len(items))
        bal = (np.mean(p["gold"] >= 0.5) + np.mean(p["babble"] < 0.5)) / 2
        print(f"   {n:8s} AUROC {a:.3f} bal {bal:.3f} on-task rate gold {np.mean(p['gold']>=.5):.2f} generic {np.mean(p['generic']>=.5):.2f} flipped {np.mean(p['flipped']>=.5):.2f} babble {np.mean(p['babble']>=.5):.2f}")
E.save()
