"""M2: MiniLM with trainable top layers + a universal persona-relative head, trained on answer sets.

python m2.py --train SET,SET --test SET,SET [--epochs N] [--top K]
Sets are folder names under benchmarks/gold or benchmarks/scorer_corpus.
"""
import argparse, copy, math, random, sys, time
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))  # harness.py
import numpy as np, torch, yaml
from pathlib import Path
from transformers import AutoModel, AutoTokenizer
from personatune.embeddings import minilm_path
from personatune.persona import load_persona
from personatune.scoring.gold import load_gold, KINDS
from personatune.scoring.traits import split_sentences
from harness import auroc
REPO = __import__("pathlib").Path(__file__).resolve().parents[2]

torch.set_num_threads(2)
ROOTS = [Path(str(REPO) + "/benchmarks/gold"), Path(str(REPO) + "/benchmarks/scorer_corpus")]
NEUTRAL = [s for v in yaml.safe_load(open(str(REPO) + "/src/personatune/data/neutral_sentences.yaml"))["sentences"].values() for s in v]


def find(name):
    for r in ROOTS:
        if (r / name / "responses.jsonl").exists():
            return r / name
    raise SystemExit(f"no set {name}")


def load_set(name):
    d = find(name)
    spec = load_persona(d / "persona.yaml")
    items, probs = load_gold(d / "responses.jsonl", spec.trait_ids)
    return spec, items


class Bottom:
    """Frozen embeddings + bottom layers; caches per-text hidden states (fp16)."""

    def __init__(self, model, tok, k_bottom, max_len=64):
        self.m, self.tok, self.k, self.max_len = model, tok, k_bottom, max_len
        self.cache = {}

    def fill(self, texts, bs=128):
        todo = sorted({t for t in texts if t not in self.cache}, key=len)
        with torch.no_grad():
            for i in range(0, len(todo), bs):
                chunk = todo[i:i + bs]
                enc = self.tok(chunk, padding=True, truncation=True, max_length=self.max_len, return_tensors="pt")
                h = self.m.embeddings(input_ids=enc["input_ids"], token_type_ids=enc["token_type_ids"])
                am = enc["attention_mask"]
                mask4 = (1.0 - am[:, None, None, :].float()) * torch.finfo(torch.float32).min
                for L in self.m.encoder.layer[:self.k]:
                    h = L(h, attention_mask=mask4)
                for t, hs, a in zip(chunk, h, am):
                    n = int(a.sum())
                    self.cache[t] = hs[:n].to(torch.float16)


def top_encode(bottom, top_layers, texts):
    hs = [bottom.cache[t] for t in texts]
    L = max(h.shape[0] for h in hs)
    H = torch.zeros(len(hs), L, hs[0].shape[1])
    am = torch.zeros(len(hs), L)
    for i, h in enumerate(hs):
        H[i, :h.shape[0]] = h.float(); am[i, :h.shape[0]] = 1
    mask4 = (1.0 - am[:, None, None, :]) * torch.finfo(torch.float32).min
    for layer in top_layers:
        H = layer(H, attention_mask=mask4)
    pooled = (H * am[..., None]).sum(1) / am.sum(1, keepdim=True)
    return torch.nn.functional.normalize(pooled, dim=-1)


class Head(torch.nn.Module):
    """Universal persona-relative head: violation, expression, on-task, voice logits."""

    def __init__(self):
        super().__init__()
        self.viol = torch.nn.Linear(16, 1)
        self.expr = torch.nn.Linear(16, 1)
        self.ot = torch.nn.Linear(4, 1)
        self.voice = torch.nn.Linear(5, 1)
        self.beta = torch.nn.Parameter(torch.tensor(10.0))

    def trait_feats(self, S, W, P, N, PE, NE):
        """S: (n_sent, d) sentence embs of one answer; W: (d,) whole; P,N: (T,d) poles; PE/NE: lists of (k,d)."""
        sp, sn = S @ P.T, S @ N.T  # (n, T)
        mp = torch.stack([torch.logsumexp(self.beta * (S @ e.T), 1) / self.beta for e in PE], 1)
        mn = torch.stack([torch.logsumexp(self.beta * (S @ e.T), 1) / self.beta for e in NE], 1)
        F = torch.stack([sp, sn, mp, mn, sn - sp, mn - mp], -1)  # (n, T, 6)
        wp, wn = W @ P.T, W @ N.T
        agg = torch.cat([F.max(0).values, F.mean(0), torch.stack([wp, wn, wn - wp, wp], -1)[:, :4]], -1)  # (T, 16)
        return 10 * agg

    def forward(self, S, W, P, N, PE, NE, V, G):
        f = self.trait_feats(S, W, P, N, PE, NE)
        v = self.viol(f).squeeze(-1)
        e = self.expr(f).squeeze(-1)
        vs = S @ V
        vo = self.voice(10 * torch.stack([W @ V, W @ G, W @ V - W @ G, vs.max(), (S @ G).max()]))
        return v, e, vo.squeeze()


def persona_texts(spec):
    out = []
    for t in spec.traits:
        out += [t.description, *t.positive, *([t.inverse] if t.inverse else []), *t.negative]
    for ex in spec.examples:
        for m in ex.messages:
            if m.role == "assistant":
                out += split_sentences(m.content)
    return out


def persona_texts_ordered(spec):
    out = []
    for t in spec.traits:
        out += [t.description, *t.positive, *([t.inverse] if t.inverse else []), *t.negative]
    out += [x for e in spec.examples for m in e.messages if m.role == "assistant" for x in split_sentences(m.content)]
    return out


def poles_from(spec, Z):
    P, N, PE, NE, allpos = [], [], [], [], []
    i = 0
    for t in spec.traits:
        npos = 1 + len(t.positive); nneg = (1 if t.inverse else 0) + len(t.negative)
        pe = Z[i:i + npos]; ne = Z[i + npos:i + npos + nneg]; i += npos + nneg
        PE.append(pe); NE.append(ne)
        P.append(torch.nn.functional.normalize(pe.mean(0), dim=0)); N.append(torch.nn.functional.normalize(ne.mean(0), dim=0))
        allpos.append(pe[1:])
    if i < len(Z):
        allpos.append(Z[i:])
    V = torch.nn.functional.normalize(torch.cat(allpos).mean(0), dim=0)
    return torch.stack(P), torch.stack(N), PE, NE, V


def persona_poles(spec, emb):
    P, N, PE, NE = [], [], [], []
    allpos = []
    for t in spec.traits:
        pe = emb([t.description, *t.positive]); ne = emb([*([t.inverse] if t.inverse else []), *t.negative])
        PE.append(pe); NE.append(ne)
        P.append(torch.nn.functional.normalize(pe.mean(0), dim=0)); N.append(torch.nn.functional.normalize(ne.mean(0), dim=0))
        allpos.append(pe[1:])
    ex = [s for e in spec.examples for m in e.messages if m.role == "assistant" for s in split_sentences(m.content)]
    if ex:
        allpos.append(emb(ex))
    V = torch.nn.functional.normalize(torch.cat(allpos).mean(0), dim=0)
    return torch.stack(P), torch.stack(N), PE, NE, V


def answer_inputs(it, kind):
    text = it.answers[kind]
    return split_sentences(text) or [text]


def last_user(it):
    return it.messages[-1][1]


def run(args):
    random.seed(0); torch.manual_seed(0)
    p = str(minilm_path())
    tok = AutoTokenizer.from_pretrained(p)
    base = AutoModel.from_pretrained(p).eval()
    K = 6 - args.top
    bottom = Bottom(base, tok, K)
    top = torch.nn.ModuleList([copy.deepcopy(l) for l in base.encoder.layer[K:]])
    head = Head()
    train = {n: load_set(n) for n in args.train}
    test = {n: load_set(n) for n in args.test}
    alltexts = list(NEUTRAL)
    for spec, items in list(train.values()) + list(test.values()):
        alltexts += persona_texts(spec)
        for it in items:
            alltexts.append(last_user(it))
            for k in KINDS:
                alltexts += answer_inputs(it, k)
    cpath = Path(f"/tmp/personatune_exp_bottom_k{K}.pt")
    if cpath.exists():
        bottom.cache = torch.load(cpath)
    n0 = len(bottom.cache)
    t0 = time.time(); bottom.fill(alltexts)
    if len(bottom.cache) > n0:
        torch.save(bottom.cache, cpath); print(f"bottom states for {len(bottom.cache)} texts in {time.time()-t0:.0f}s", flush=True)
    params = list(top.parameters()) if args.top else []
    opt = torch.optim.AdamW([{"params": params, "lr": args.lr}, {"params": head.parameters(), "lr": 3e-3}], weight_decay=0.01)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    jobs = [(n, i) for n, (s, items) in train.items() for i in range(0, len(items), args.batch)]
    step = 0
    for ep in range(args.epochs):
        random.shuffle(jobs)
        t0 = time.time(); tot = 0.0
        for n, i0 in jobs:
            spec, items = train[n]
            batch = items[i0:i0 + args.batch]
            ptexts = persona_texts_ordered(spec)
            ans = [(it, kind, answer_inputs(it, kind)) for it in batch for kind in KINDS]
            neutral = random.sample(NEUTRAL, 48)
            flat = ptexts + [s for _, _, ss in ans for s in ss] + neutral
            Z = top_encode(bottom, top, flat)
            P, N, PE, NE, V = poles_from(spec, Z[:len(ptexts)])
            off = len(ptexts)
            G = torch.nn.functional.normalize(Z[-len(neutral):].mean(0), dim=0)
            loss = 0.0
            outs_v = []
            T = spec.trait_ids
            for it, kind, sents in ans:
                S = Z[off:off + len(sents)]; off += len(sents)
                wts = torch.tensor([max(len(x.split()), 1) for x in sents], dtype=torch.float32)
                W = torch.nn.functional.normalize((wts[:, None] * S).sum(0), dim=0)
                v, e, vo = head(S, W, P, N, PE, NE, V, G)
                outs_v.append((v, e))
                yv = torch.zeros(len(T)); wv = torch.ones(len(T))
                ye = torch.zeros(len(T)); we = torch.zeros(len(T))
                if kind == "flipped":
                    j = T.index(it.flipped_trait); yv[j] = 1; wv[:] = args.w_other; wv[j] = args.w_pos
                    we[j] = 1.0
                elif kind == "gold":
                    for t in it.targets:
                        ye[T.index(t)] = 1; we[T.index(t)] = 1.0
                elif kind == "generic":
                    wv[:] = 0.0
                    for t in it.targets:
                        we[T.index(t)] = args.w_gen_expr
                elif kind == "babble":
                    wv[:] = 0.5
                loss = loss + (bce(v, yv, weight=wv, reduction="sum") + bce(e, ye, weight=we, reduction="sum")) / len(T)
                if kind != "flipped":
                    loss = loss + bce(vo, torch.tensor(0.0 if kind == "generic" else 1.0))
            # pairwise, per prompt: the flipped answer violates its trait more than the gold answer does
            byk = {}
            for (it, kind, _), vv in zip(ans, outs_v):
                byk[(id(it), kind)] = vv
            for it in batch:
                if (id(it), "gold") in byk and (id(it), "flipped") in byk:
                    jt = T.index(it.flipped_trait)
                    (vg, eg), (vf, ef) = byk[(id(it), "gold")], byk[(id(it), "flipped")]
                    loss = loss + args.w_rank * (torch.nn.functional.softplus(vg[jt] - vf[jt] + 1.0) + torch.nn.functional.softplus(ef[jt] - eg[jt] + 1.0))
            loss = loss / len(ans)
            if step % 20 == 0:
                print(f"  step {step} loss {float(loss):.3f} {time.time() - t0:.0f}s", flush=True)
            opt.zero_grad(); loss.backward(); opt.step(); step += 1; tot += float(loss.detach())
        print(f"epoch {ep+1}: loss {tot/len(jobs):.4f} ({time.time()-t0:.0f}s, {len(jobs)} steps)", flush=True)
        if args.eval_every and (ep + 1) % args.eval_every == 0 or ep + 1 == args.epochs:
            evaluate(test, bottom, top, head)
    if args.save:
        torch.save({"top": top.state_dict(), "head": head.state_dict(), "K": K}, args.save)
    return bottom, top, head


@torch.no_grad()
def score_set(spec, items, bottom, top, head):
    emb = lambda xs: top_encode(bottom, top, xs)
    P, N, PE, NE, V = poles_from(spec, emb(persona_texts_ordered(spec)))
    G = torch.nn.functional.normalize(emb(NEUTRAL).mean(0), dim=0)
    out = {k: [] for k in KINDS}
    for it in items:
        ans = [(kind, answer_inputs(it, kind)) for kind in KINDS]
        Z = emb([x for _, ss in ans for x in ss]); off = 0
        for kind, sents in ans:
            S = Z[off:off + len(sents)]; off += len(sents)
            wts = torch.tensor([max(len(s.split()), 1) for s in sents], dtype=torch.float32)
            W = torch.nn.functional.normalize((wts[:, None] * S).sum(0), dim=0)
            v, e, vo = head(S, W, P, N, PE, NE, V, G)
            out[kind].append((torch.sigmoid(v).numpy(), torch.sigmoid(e).numpy(), 1.0, float(torch.sigmoid(vo))))
    return out


def evaluate(test, bottom, top, head):
    rows = []
    for name, (spec, items) in test.items():
        T = spec.trait_ids
        r = score_set(spec, items, bottom, top, head)
        per = []
        for j, t in enumerate(T):
            s, y = [], []
            for k in ("gold", "flipped"):
                for it, x in zip(items, r[k]):
                    s.append(x[0][j]); y.append(int(k == "flipped" and it.flipped_trait == t))
            per.append(auroc(s, y))
        caught = np.mean([x[0][T.index(it.flipped_trait)] >= 0.5 for it, x in zip(items, r["flipped"])])
        gold_fv = np.mean([x[0].max() >= 0.5 for x in r["gold"]])
        e_s, e_y = [], []
        for k in ("gold", "generic"):
            for it, x in zip(items, r[k]):
                for t in it.targets:
                    e_s.append(x[1][T.index(t)]); e_y.append(int(k == "gold"))
        gold_expr = np.mean([np.mean([x[1][T.index(t)] for t in it.targets]) >= 0.5 for it, x in zip(items, r["gold"])])
        ot = auroc([x[2] for x in r["gold"] + r["babble"]], [1] * len(items) + [0] * len(items))
        ot_bal = (np.mean([x[2] >= 0.5 for x in r["gold"]]) + np.mean([x[2] < 0.5 for x in r["babble"]])) / 2
        vo = auroc([x[3] for x in r["gold"] + r["generic"]], [1] * len(items) + [0] * len(items))

        def cons(it, x):
            return x[0].max() < 0.5 and np.mean([x[1][T.index(t)] for t in it.targets]) >= 0.5 and x[3] >= 0.5

        def cscore(it, x):
            return min(1 - x[0].max(), np.mean([x[1][T.index(t)] for t in it.targets]), x[3])
        cg = np.mean([cons(it, x) for it, x in zip(items, r["gold"])])
        cn = np.mean([cons(it, x) for k in ("generic", "flipped") for it, x in zip(items, r[k])])
        ca = auroc([cscore(it, x) for k in ("gold", "generic", "flipped") for it, x in zip(items, r[k])],
                   [1] * len(items) + [0] * (2 * len(items)))
        rows.append((name, np.mean(per), caught, gold_fv, auroc(e_s, e_y), gold_expr, ot, ot_bal, vo, cg, (cg + 1 - cn) / 2, ca))
    print(f"{'set':9s} violAUC caught goldFV exprAUC goldExp otAUC otBal voiceAUC goldCons balAcc consAUC")
    for r in rows:
        print(f"{r[0]:9s} " + " ".join(f"{x:7.3f}" for x in r[1:]))
    print(f"{'MEAN':9s} " + " ".join(f"{np.mean([r[i] for r in rows]):7.3f}" for i in range(1, len(rows[0]))), flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", required=True); ap.add_argument("--test", required=True)
    ap.add_argument("--epochs", type=int, default=3); ap.add_argument("--top", type=int, default=2)
    ap.add_argument("--lr", type=float, default=5e-5); ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--eval-every", type=int, default=0)
    ap.add_argument("--w-pos", type=float, default=3.0); ap.add_argument("--w-other", type=float, default=0.5)
    ap.add_argument("--w-gen-expr", type=float, default=0.5); ap.add_argument("--save")
    ap.add_argument("--w-rank", type=float, default=1.0)
    a = ap.parse_args(); a.train = a.train.split(","); a.test = a.test.split(",")
    run(a)
