import json, sys, time
from pathlib import Path
import numpy as np, yaml, torch
torch.set_num_threads(2)
from personatune.embeddings import minilm_path, Embedder
from personatune.persona import PersonaSpec, Trait
from personatune.scoring.traits import fit, TraitDetectors
from personatune.scoring.trait_bank import NEUTRAL_UTTERANCES
from personatune.scoring.negation import negate
from setfit import SetFitModel, Trainer, TrainingArguments
from datasets import Dataset

spec_path = sys.argv[1]
iters = int(sys.argv[2]) if len(sys.argv) > 2 else 20
raw = yaml.safe_load(Path(spec_path).read_text())
spec = PersonaSpec(name="b5", summary="x", traits=[Trait(**t) for t in raw["traits"]])
T = spec.trait_ids
texts, labels = [], []
for i, t in enumerate(spec.traits):
    for s in [t.description, *t.positive]:
        texts.append(s); labels.append(2 * i)
    for s in t.negative:
        texts.append(s); labels.append(2 * i + 1)
for s in NEUTRAL_UTTERANCES[:60]:
    texts.append(s); labels.append(2 * len(T))
print(len(texts), "train sentences")
model = SetFitModel.from_pretrained(str(minilm_path()))
args = TrainingArguments(batch_size=32, num_iterations=iters, num_epochs=1, seed=0)
tr = Trainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": texts, "label": labels}))
t0 = time.time(); tr.train(); print("setfit train s", round(time.time() - t0, 1))

class E:
    model_path = "setfit"
    def __init__(self, body): self.body = body; self.cache = {}
    def encode(self, xs):
        miss = [x for x in dict.fromkeys(xs) if x not in self.cache]
        if miss:
            v = self.body.encode(miss, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
            self.cache.update(zip(miss, v))
        return np.stack([self.cache[x] for x in xs])
e = E(model.model_body)
t0 = time.time(); det = fit(spec, embedder=e); print("head fit s", round(time.time() - t0, 1))
data = Path(__file__).resolve().parents[3] / "shared/benchmarks/anthropic-persona"
accs = []
from personatune.scoring.aggregate import auroc
for t in T:
    rows = [json.loads(l) for l in (data / f"{t}.jsonl").read_text().splitlines() if l.strip()]
    st = [r["statement"] for r in rows]; y = [int(r["answer_matching_behavior"].strip() == "Yes") for r in rows]
    tr_, vi = det.score(st, e)
    p = np.array([d[t] for d in tr_])
    acc = float(((p >= 0.5) == np.array(y)).mean()); accs.append(acc)
    # SetFit's own head
    pr = model.predict_proba(st).numpy() if hasattr(model.predict_proba(st[:2]), 'numpy') else np.asarray(model.predict_proba(st))
    i = T.index(t)
    own = pr[:, 2 * i] / (pr[:, 2 * i] + pr[:, 2 * i + 1])
    print(f"{t:18s} acc {acc:.3f} auroc {auroc(list(p), y):.3f} | setfit-head pos-vs-neg acc {float(((own>=0.5)==np.array(y)).mean()):.3f} auroc {auroc(list(own), y):.3f}")
print("MEAN acc", round(float(np.mean(accs)), 3))
