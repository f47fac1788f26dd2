"""A cross-encoder (NLI-style) trait detector: MiniLM reads (trait description, answer) together.

The shipped instrument is a bi-encoder: answer sentences and a persona's exemplars are embedded apart and compared
(scoring/instrument.py). A cross-encoder attends across the trait and the answer, the usual remedy when a sentence and
its negation embed close together. This trains one on the hand-written answer corpus (benchmarks/scorer_corpus/, the
24 personas the instrument is trained on) and checks it on the six development gold sets (benchmarks/gold/, personas
it never saw):

- input: "[CLS] trait description [SEP] answer [SEP]" (max 256 tokens), MiniLM's layers above `--freeze` fine-tuned,
  a linear head on the mean-pooled output with three classes, NLI-style: expressed / neutral / violated (the model of
  cross_encoder_judge.py; `--save DIR` writes the tensors training changed, which `CrossEncoderJudge(DIR)` reads as a
  scorer judge: ../bench_gold.py --cross-encoder DIR, s4_judge.py --cross-encoder DIR);
- training rows per corpus prompt: the gold answer, expressed, for each targeted trait; the flipped answer, violated,
  for its flipped trait, and expressed for the other targeted traits; the generic answer, neutral, for each targeted
  trait (the babble answer is left out: being on task is the on-task detector's job).

Printed after each epoch, on the dev gold sets (per-trait figures pooled over the 36 traits):
- per-trait AUROC of s = P(expressed) - P(violated), gold answers targeting t against flipped answers for t (the
  figure stage 4 gates on), beside the shipped instrument's traits[t] on the same answers and their mean (ensemble);
- flipped trait caught: P(violated) >= 0.5 for the flipped trait of a flipped answer;
- false violations: gold answers with some trait at P(violated) >= 0.5;
- generic answers read as expressing: mean P(expressed) over the targets >= 0.5;
- throughput: answers scored per second against all six traits, as a ratio to plain MiniLM encoding of the same
  answers in the same process (the scorer budget is >= 0.75x).

Run: python benchmarks/experiments/cross_encoder.py [--epochs 2] [--lr 3e-5] [--balanced] [--freeze N] [--save DIR] [--max-rows N]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from personatune.embeddings import minilm_path
from personatune.persona import load_persona
from personatune.scoring.aggregate import auroc
from personatune.scoring.gold import load_gold

from cross_encoder_judge import LABELS as CLASSES
from cross_encoder_judge import MAX_LEN, class_probs, make_model, save_weights  # this folder

ROOT = Path(__file__).resolve().parents[2]
LABELS = {k: i for i, k in enumerate(CLASSES)}  # expressed 0, neutral 1, violated 2


def load_sets(folder: Path):
    out = []
    for d in sorted(p.parent for p in folder.glob("*/responses.jsonl")):
        spec = load_persona(d / "persona.yaml")
        items, _ = load_gold(d / "responses.jsonl", spec.trait_ids)
        out.append((d.name, spec, items))
    return out


def training_rows(sets) -> list[tuple[str, str, int]]:
    rows = []
    for _, spec, items in sets:
        desc = {t.id: t.description for t in spec.traits}
        for it in items:
            for t in it.targets:
                rows.append((desc[t], it.answers["gold"], LABELS["expressed"]))
                rows.append((desc[t], it.answers["generic"], LABELS["neutral"]))
                if t != it.flipped_trait:
                    rows.append((desc[t], it.answers["flipped"], LABELS["expressed"]))
            rows.append((desc[it.flipped_trait], it.answers["flipped"], LABELS["violated"]))
    return rows


def evaluate(model, tok, dev, inst_scores) -> None:
    cross_auc, inst_auc, ens_auc = [], [], []
    caught, false_v, generic_e, n_flip, n_gold, n_gen = 0, 0, 0, 0, 0, 0
    t0 = time.time()
    n_answers = 0
    for name, spec, items in dev:
        ids = spec.trait_ids
        desc = {t.id: t.description for t in spec.traits}
        kinds = ("gold", "generic", "flipped")
        answers = [it.answers[k] for k in kinds for it in items]
        n_answers += len(answers)
        P = class_probs(model, tok, [(desc[t], a) for a in answers for t in ids]).reshape(len(answers), len(ids), 3)
        n = len(items)
        gold, generic, flipped = P[:n], P[n : 2 * n], P[2 * n :]
        inst = inst_scores[name]
        for j, t in enumerate(ids):
            s, si, y = [], [], []
            for i, it in enumerate(items):
                if t in it.targets:
                    s.append(gold[i, j, 0] - gold[i, j, 2]), si.append(inst["gold"][i][t]), y.append(1)
                if it.flipped_trait == t:
                    s.append(flipped[i, j, 0] - flipped[i, j, 2]), si.append(inst["flipped"][i][t]), y.append(0)
            if 0 < sum(y) < len(y):
                cross_auc.append(auroc(s, y))
                inst_auc.append(auroc(si, y))
                ens_auc.append(auroc([(a + 1) / 2 + b for a, b in zip(s, si)], y))
        for i, it in enumerate(items):
            caught += flipped[i, ids.index(it.flipped_trait), 2] >= 0.5
            false_v += (gold[i, :, 2] >= 0.5).any()
            generic_e += np.mean([generic[i, ids.index(t), 0] for t in it.targets]) >= 0.5
        n_flip, n_gold, n_gen = n_flip + n, n_gold + n, n_gen + n
    secs = time.time() - t0
    c, i_, e = np.array(cross_auc), np.array(inst_auc), np.array(ens_auc)
    print(
        f"  per-trait AUROC (36 dev traits) mean / min / >=0.90: cross {c.mean():.3f} / {c.min():.3f} / {(c >= 0.9).sum()}"
        f"   instrument {i_.mean():.3f} / {i_.min():.3f} / {(i_ >= 0.9).sum()}   mean of both {e.mean():.3f} / {e.min():.3f} / {(e >= 0.9).sum()}"
    )
    print(
        f"  flipped trait caught {caught / n_flip:.3f}; gold with a false violation {false_v / n_gold:.3f}; "
        f"generic read as expressing {generic_e / n_gen:.3f}; {n_answers / secs:.1f} answers/s against every trait",
        flush=True,
    )


def exemplar_separability(model, tok, files) -> None:
    """Per trait: AUROC of P(expressed) - P(violated) between the trait's positive and negative exemplars, read
    against its description (no exemplar is in the model: nothing to hold out); the lowest per persona."""
    for f in files:
        spec = load_persona(f)
        low = []
        for t in spec.traits:
            P = class_probs(model, tok, [(t.description, x) for x in [*t.positive, *t.negative]])
            s = P[:, 0] - P[:, 2]
            low.append((auroc(list(s), [1] * len(t.positive) + [0] * len(t.negative)), t.id))
        a, t = min(low, key=lambda x: -1 if x[0] is None else x[0])
        print(f"  {f.parent.name if f.name == 'persona.yaml' else f.stem:18s} lowest exemplar AUROC {a:.2f} ({t})")


def separability_files() -> list[Path]:
    return [
        *sorted(ROOT.glob("benchmarks/gold/*/persona.yaml")),
        *sorted(ROOT.glob("examples/personas/*.yaml")),
        *(ROOT / "tests/data/broken_personas" / f"{n}.yaml" for n in ("vague", "inseparable", "redundant")),
    ]


def instrument_scores(dev):
    from personatune.scoring.scorer import Scorer

    out = {}
    for name, spec, items in dev:
        sc = Scorer(spec)
        out[name] = {k: [r.traits for r in sc.score([it.answers[k] for it in items])] for k in ("gold", "flipped")}
    return out


def minilm_rate(tok, dev) -> float:
    from transformers import AutoModel

    m = AutoModel.from_pretrained(str(minilm_path())).eval()
    texts = [it.answers[k] for _, _, items in dev for it in items for k in ("gold", "generic", "flipped")]
    t0 = time.time()
    with torch.inference_mode():
        for i in range(0, len(texts), 64):
            m(**tok(texts[i : i + 64], truncation=True, max_length=MAX_LEN, padding=True, return_tensors="pt"))
    return len(texts) / (time.time() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-rows", type=int, default=None, help="train on the first N shuffled rows (smoke runs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", help="write the trained cross-encoder (safetensors) into this folder")
    ap.add_argument("--balanced", action="store_true", help="weight the loss by inverse class frequency")
    ap.add_argument("--freeze", type=int, default=0, help="keep the embeddings and the bottom N layers frozen")
    args = ap.parse_args()
    from transformers import AutoTokenizer, get_linear_schedule_with_warmup

    torch.manual_seed(args.seed)
    corpus, dev = load_sets(ROOT / "benchmarks/scorer_corpus"), load_sets(ROOT / "benchmarks/gold")
    rows = training_rows(corpus)
    random.Random(args.seed).shuffle(rows)
    rows = rows[: args.max_rows] if args.max_rows else rows
    counts = {k: sum(r[2] == v for r in rows) for k, v in LABELS.items()}
    print(f"corpus {len(corpus)} sets, {len(rows)} training rows {counts}; dev {len(dev)} sets", flush=True)
    path = str(minilm_path())
    tok = AutoTokenizer.from_pretrained(path)
    model = make_model(path)
    if args.freeze:
        for m in [model.enc.embeddings, *model.enc.encoder.layer[: args.freeze]]:
            m.requires_grad_(False)
    inst = instrument_scores(dev)
    rate = minilm_rate(tok, dev)
    print(f"plain MiniLM encoding: {rate:.1f} answers/s", flush=True)
    weight = torch.tensor([len(rows) / (3 * max(1, counts[k])) for k in LABELS]) if args.balanced else None
    steps = args.epochs * ((len(rows) + args.batch - 1) // args.batch)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.01)
    sched = get_linear_schedule_with_warmup(opt, int(0.1 * steps), steps)
    for ep in range(1, args.epochs + 1):
        model.train()
        t0, losses = time.time(), []
        for i in range(0, len(rows), args.batch):
            a, b, y = zip(*rows[i : i + args.batch])
            enc = tok(list(a), list(b), truncation="only_second", max_length=MAX_LEN, padding=True, return_tensors="pt")
            loss = torch.nn.functional.cross_entropy(model(enc), torch.tensor(y), weight=weight)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
        print(f"epoch {ep}: mean loss {np.mean(losses):.3f}, {time.time() - t0:.0f} s", flush=True)
        evaluate(model, tok, dev, inst)
    print("exemplar separability (stage 2's question, no hold-out needed):")
    exemplar_separability(model, tok, separability_files())
    if args.save:
        meta = {
            "command": "python benchmarks/experiments/cross_encoder.py " + " ".join(sys.argv[1:]),
            "training_rows": len(rows),
            "corpus_sets": len(corpus),
        }
        save_weights(model, path, args.save, meta)


if __name__ == "__main__":
    main()
