"""M4: frozen MiniLM sentence embeddings + a learned residual adapter + universal persona-relative head.

python m4.py --train A,B --test C,D [--epochs N]
"""
import argparse, random, sys, time
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))  # harness.py
import numpy as np, torch, yaml
from pathlib import Path
from harness import CachedEmbedder, auroc
REPO = __import__("pathlib").Path(__file__).resolve().parents[2]
from personatune.persona import load_persona
from personatune.scoring.gold import load_gold, KINDS
from personatune.scoring.traits import split_sentences

torch.set_num_threads(2)
ROOTS = [Path(str(REPO) + "/benchmarks/gold"), Path(str(REPO) + "/benchmarks/scorer_corpus")]
NEUTRAL = [s for v in yaml.safe_load(open(str(REPO) + "/src/personatune/data/neutral_sentences.yaml"))["sentences"].values() for s in v]


def find(name):
    for r in ROOTS:
        if (r / name / "responses.jsonl").exists():
            return r / name
    raise SystemExit(name)


def persona_texts(spec):
    out = []
    for t in spec.traits:
        out += [t.description, *t.positive, *([t.inverse] if t.inverse else []), *t.negative]
    out += [x for e in spec.examples for m in e.messages if m.role == "assistant" for x in split_sentences(m.content)]
    return out


class SetData:
    """All frozen embeddings of one set, as tensors."""

    def __init__(self, name, E):
        d = find(name)
        self.name = name
        self.spec = spec = load_persona(d / "persona.yaml")
        self.items, _ = load_gold(d / "responses.jsonl", spec.trait_ids)
        self.T = spec.trait_ids
        self.X = torch.tensor(E.encode(persona_texts(spec)))
        self.layout = []
        i = 0
        for t in spec.traits:
            npos = 1 + len(t.positive); nneg = (1 if t.inverse else 0) + len(t.negative)
            self.layout.append((i, i + npos, i + npos + nneg)); i += npos + nneg
        self.n_traitrows = i
        self.ans = []  # (item idx, kind, S tensor, weights)
        for j, it in enumerate(self.items):
            for kind in KINDS:
                ss = split_sentences(it.answers[kind]) or [it.answers[kind]]
                self.ans.append((j, kind, torch.tensor(E.encode(ss)), torch.tensor([max(len(s.split()), 1) for s in ss], dtype=torch.float32)))


class Adapter(torch.nn.Module):
    def __init__(self, d=384, h=256):
        super().__init__()
        self.a = torch.nn.Linear(d, h)
        self.b = torch.nn.Linear(h, d)
        torch.nn.init.zeros_(self.b.weight); torch.nn.init.zeros_(self.b.bias)

    def forward(self, x):
        return torch.nn.functional.normalize(x + self.b(torch.nn.functional.gelu(self.a(x))), dim=-1)


class Head(torch.nn.Module):
    NF = 16

    def __init__(self):
        super().__init__()
        self.viol = torch.nn.Linear(self.NF, 1)
        self.expr = torch.nn.Linear(self.NF, 1)
        self.voice = torch.nn.Linear(5, 1)
        self.beta = torch.nn.Parameter(torch.tensor(10.0))

    def poles(self, Z, layout, n_traitrows):
        P, N, PE, NE, allpos = [], [], [], [], []
        for a, b, c in layout:
            pe, ne = Z[a:b], Z[b:c]
            PE.append(pe); NE.append(ne)
            P.append(torch.nn.functional.normalize(pe.mean(0), dim=0)); N.append(torch.nn.functional.normalize(ne.mean(0), dim=0))
            allpos.append(pe[1:])
        if n_traitrows < len(Z):
            allpos.append(Z[n_traitrows:])
        V = torch.nn.functional.normalize(torch.cat(allpos).mean(0), dim=0)
        return torch.stack(P), torch.stack(N), PE, NE, V

    def forward(self, S, W, poles, G):
        P, N, PE, NE, V = poles
        sp, sn = S @ P.T, S @ N.T
        mp = torch.stack([torch.logsumexp(self.beta * (S @ e.T), 1) / self.beta for e in PE], 1)
        mn = torch.stack([torch.logsumexp(self.beta * (S @ e.T), 1) / self.beta for e in NE], 1)
        F = torch.stack([sp, sn, mp, mn, sn - sp, mn - mp], -1)
        wp, wn = W @ P.T, W @ N.T
        f = 10 * torch.cat([F.max(0).values, F.mean(0), torch.stack([wp, wn, wn - wp, wp * 0], -1)], -1)
        vs = S @ V
        vo = self.voice(10 * torch.stack([W @ V, W @ G, W @ V - W @ G, vs.max(), (S @ G).max()]))
        return self.viol(f).squeeze(-1), self.expr(f).squeeze(-1), vo.squeeze()


def forward_set(sd, adapter, head, Gx, idx=None):
    Z = adapter(sd.X)
    poles = head.poles(Z, sd.layout, sd.n_traitrows)
    G = torch.nn.functional.normalize(adapter(Gx).mean(0), dim=0)
    out = []
    for k in (idx if idx is not None else range(len(sd.ans))):
        j, kind, S0, w = sd.ans[k]
        S = adapter(S0)
        W = torch.nn.functional.normalize((w[:, None] * S).sum(0), dim=0)
        out.append((j, kind) + tuple(head(S, W, poles, G)))
    return out


def losses(sd, outs, args):
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    T = sd.T
    loss = 0.0
    by = {}
    for j, kind, v, e, vo in outs:
        it = sd.items[j]
        by[(j, kind)] = (v, e)
        yv = torch.zeros(len(T)); wv = torch.ones(len(T)); ye = torch.zeros(len(T)); we = torch.zeros(len(T))
        if kind == "flipped":
            jt = T.index(it.flipped_trait); yv[jt] = 1; wv[:] = args.w_other; wv[jt] = args.w_pos; we[jt] = 1.0
        elif kind == "gold":
            for t in it.targets:
                ye[T.index(t)] = 1; we[T.index(t)] = 1.0
        elif kind == "generic":
            wv[:] = 0.0
            for t in it.targets:
                we[T.index(t)] = args.w_gen_expr
        else:
            wv[:] = 0.5
        loss = loss + (bce(v, yv, weight=wv, reduction="sum") + bce(e, ye, weight=we, reduction="sum")) / len(T)
        if kind != "flipped":
            loss = loss + bce(vo, torch.tensor(0.0 if kind == "generic" else 1.0))
    # pairwise: same prompt, flipped trait: violation(flipped) > violation(gold), expression(gold) > expression(flipped)
    for j, it in enumerate(sd.items):
        if (j, "gold") in by and (j, "flipped") in by:
            jt = T.index(it.flipped_trait)
            vg, eg = by[(j, "gold")]; vf, ef = by[(j, "flipped")]
            loss = loss + args.w_rank * (torch.nn.functional.softplus(vg[jt] - vf[jt] + 1.0) + torch.nn.functional.softplus(ef[jt] - eg[jt] + 1.0))
    return loss / len(outs)


@torch.no_grad()
def evaluate(tests, adapter, head, Gx, quiet=False):
    rows = []
    for sd in tests:
        outs = forward_set(sd, adapter, head, Gx)
        r = {k: [None] * len(sd.items) for k in KINDS}
        for j, kind, v, e, vo in outs:
            r[kind][j] = (torch.sigmoid(v).numpy(), torch.sigmoid(e).numpy(), float(torch.sigmoid(vo)))
        T, items = sd.T, sd.items
        per = []
        for jt, t in enumerate(T):
            s, y = [], []
            for k in ("gold", "flipped"):
                for it, x in zip(items, r[k]):
                    s.append(x[0][jt]); y.append(int(k == "flipped" and it.flipped_trait == t))
            per.append(auroc(s, y))
        caught = np.mean([x[0][T.index(it.flipped_trait)] >= 0.5 for it, x in zip(items, r["flipped"])])
        gold_fv = np.mean([x[0].max() >= 0.5 for x in r["gold"]])
        e_s, e_y = [], []
        for k in ("gold", "generic"):
            for it, x in zip(items, r[k]):
                for t in it.targets:
                    e_s.append(x[1][T.index(t)]); e_y.append(int(k == "gold"))
        vo = auroc([x[2] for x in r["gold"] + r["generic"]], [1] * len(items) + [0] * len(items))

        def ex(it, x):
            return np.mean([x[1][T.index(t)] for t in it.targets])

        def cons(it, x):
            return x[0].max() < 0.5 and ex(it, x) >= 0.5 and x[2] >= 0.5

        def cscore(it, x):
            return min(1 - x[0].max(), ex(it, x), x[2])
        cg = np.mean([cons(it, x) for it, x in zip(items, r["gold"])])
        cgen = np.mean([cons(it, x) for it, x in zip(items, r["generic"])])
        cfl = np.mean([cons(it, x) for it, x in zip(items, r["flipped"])])
        ca = auroc([cscore(it, x) for k in ("gold", "generic", "flipped") for it, x in zip(items, r[k])], [1] * len(items) + [0] * (2 * len(items)))
        rows.append((sd.name, np.mean(per), caught, gold_fv, auroc(e_s, e_y), np.mean([ex(it, x) >= .5 for it, x in zip(items, r["gold"])]), vo, cg, cgen, cfl,
                     (cg + 1 - (cgen + cfl) / 2) / 2, ca))
    if not quiet:
        print(f"{'set':9s} violAUC  caught  goldFV exprAUC goldExp voiceAUC goldCons genCons flipCons balAcc consAUC")
        for r_ in rows:
            print(f"{r_[0]:9s} " + " ".join(f"{x:7.3f}" for x in r_[1:]))
    m = [np.mean([r_[i] for r_ in rows]) for i in range(1, len(rows[0]))]
    print(f"{'MEAN':9s} " + " ".join(f"{x:7.3f}" for x in m), flush=True)
    return m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", required=True); ap.add_argument("--test", required=True)
    ap.add_argument("--epochs", type=int, default=20); ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--hidden", type=int, default=256); ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--w-pos", type=float, default=3.0); ap.add_argument("--w-other", type=float, default=0.5)
    ap.add_argument("--w-gen-expr", type=float, default=0.5); ap.add_argument("--w-rank", type=float, default=1.0)
    ap.add_argument("--no-adapter", action="store_true"); ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--wd", type=float, default=0.01); ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save")
    a = ap.parse_args()
    random.seed(a.seed); torch.manual_seed(a.seed)
    E = CachedEmbedder()
    t0 = time.time()
    train = [SetData(n, E) for n in a.train.split(",")]
    tests = [SetData(n, E) for n in a.test.split(",")]
    Gx = torch.tensor(E.encode(NEUTRAL))
    E.save()
    print(f"embeddings ready in {time.time() - t0:.0f}s", flush=True)
    adapter, head = Adapter(h=a.hidden), Head()
    params = list(head.parameters()) + ([] if a.no_adapter else list(adapter.parameters()))
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=a.wd)
    for ep in range(a.epochs):
        t0 = time.time(); tot = 0.0; n = 0
        jobs = [(sd, list(range(i, min(i + a.batch, len(sd.ans))))) for sd in train for i in range(0, len(sd.ans), a.batch)]
        random.shuffle(jobs)
        for sd, idx in jobs:
            # keep each prompt's 4 answers together (idx blocks of 4 consecutive answers)
            outs = forward_set(sd, adapter, head, Gx[torch.randint(0, len(Gx), (64,))], idx)
            loss = losses(sd, outs, a)
            opt.zero_grad(); loss.backward(); opt.step(); tot += float(loss.detach()); n += 1
        if (ep + 1) % a.eval_every == 0 or ep + 1 == a.epochs:
            print(f"epoch {ep + 1}: loss {tot / n:.4f} ({time.time() - t0:.1f}s/epoch)", flush=True)
            evaluate(tests, adapter, head, Gx, quiet=ep + 1 != a.epochs)
    if a.save:
        torch.save({"adapter": adapter.state_dict(), "head": head.state_dict(), "args": vars(a)}, a.save)


if __name__ == "__main__":
    main()
