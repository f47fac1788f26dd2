"""Experiment harness: persistent embedding cache + gold data + metrics for detector variants."""
import json, os, pickle, sys, time
from pathlib import Path
import numpy as np
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from personatune.embeddings import Embedder
from personatune.persona import load_persona
from personatune.scoring.gold import load_gold, KINDS
from personatune.scoring.traits import split_sentences
from personatune.scoring.style import style_features, style_match

CACHE = Path("/tmp/personatune_exp_emb_cache.pkl")

class CachedEmbedder:
    model_path = "minilm-cached"
    def __init__(self):
        self.e = Embedder.default()
        self.cache = pickle.loads(CACHE.read_bytes()) if CACHE.exists() else {}
        self.dirty = False
    def encode(self, texts):
        miss = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if miss:
            v = self.e.encode(miss)
            self.cache.update(zip(miss, v)); self.dirty = True
        return np.stack([self.cache[t] for t in texts]) if texts else np.zeros((0, 384), np.float32)
    def save(self):
        if self.dirty:
            CACHE.write_bytes(pickle.dumps(self.cache)); self.dirty = False

ROOT = Path(str(__import__("pathlib").Path(__file__).resolve().parents[2]) + "/benchmarks/gold")
def sets():
    out = {}
    for d in sorted(p.parent for p in ROOT.glob("*/responses.jsonl")):
        spec = load_persona(d / "persona.yaml")
        items, _ = load_gold(d / "responses.jsonl", spec.trait_ids)
        out[d.name] = (spec, items)
    return out

def auroc(s, y):
    s = np.asarray(s, float); y = np.asarray(y, int)
    p, n = s[y == 1], s[y == 0]
    return float(((p[:, None] > n[None]).sum() + 0.5 * (p[:, None] == n[None]).sum()) / (len(p) * len(n)))

def evaluate(name, spec, items, score_fn, verbose=False):
    """score_fn(texts, prompts, contexts, targets) -> list of dicts with traits, violations, (on_task), consistency, consistent."""
    res = {}
    for kind in KINDS:
        texts = [it.answers[kind] for it in items]
        res[kind] = score_fn(texts, [list(it.messages) for it in items], [it.context for it in items], [list(it.targets) for it in items])
    T = spec.trait_ids
    g, gen, fl, bab = res["gold"], res["generic"], res["flipped"], res["babble"]
    m = {}
    m["gold_cons"] = np.mean([r["consistent"] for r in g])
    m["gen_cons"] = np.mean([r["consistent"] for r in gen])
    m["flip_cons"] = np.mean([r["consistent"] for r in fl])
    m["bal_acc"] = (m["gold_cons"] + 1 - np.mean([r["consistent"] for r in gen + fl])) / 2
    m["auroc"] = auroc([r["consistency"] for r in g + gen + fl], [1] * len(g) + [0] * (len(gen) + len(fl)))
    m["caught"] = np.mean([r["violations"][it.flipped_trait] >= 0.5 for r, it in zip(fl, items)])
    m["gold_anyviol"] = np.mean([max(r["violations"].values()) >= 0.5 for r in g])
    m["gold_tgt_expr"] = np.mean([r["traits"][t] >= 0.5 for r, it in zip(g, items) for t in it.targets])
    m["gen_tgt_expr"] = np.mean([r["traits"][t] >= 0.5 for r, it in zip(gen, items) for t in it.targets])
    if "on_task" in g[0] and g[0]["on_task"] is not None:
        m["ot_auroc"] = auroc([r["on_task"] for r in g + bab], [1] * len(g) + [0] * len(bab))
        m["ot_bal"] = (np.mean([r["on_task"] >= 0.5 for r in g]) + np.mean([r["on_task"] < 0.5 for r in bab])) / 2
        m["ot_generic"] = np.mean([r["on_task"] >= 0.5 for r in gen])
        m["ot_flipped"] = np.mean([r["on_task"] >= 0.5 for r in fl])
    return m, res

def table(all_m):
    keys = list(next(iter(all_m.values())).keys())
    print("set      " + " ".join(f"{k[:9]:>9s}" for k in keys))
    for n, m in all_m.items():
        print(f"{n:8s} " + " ".join(f"{m[k]:9.3f}" for k in keys))
    print(f"{'MEAN':8s} " + " ".join(f"{np.mean([m[k] for m in all_m.values()]):9.3f}" for k in keys))
