"""Experiment (issue 14, option 3): a likelihood-ratio trait feature from the chat model itself.

For every answer of a gold set and every trait t of its persona: the mean per-token log-probability of the
answer under SmolLM2-135M-Instruct given the system prompt "You are NAME. <t's description>" minus the same given
"You are NAME. <t's inverse>" (`--mode exemplars`: each side also quotes its first five exemplars). A flipped
answer should score low on its flipped trait. Prints, per trait, the AUROC of flipped(t) against the gold answers
on this feature (the instrument's equivalent figure: "violation AUROC"), and how often the flipped trait is the
lowest after standardising each trait over the gold answers.

Run (unlike the other experiments, on the current tree): python benchmarks/experiments/likelihood_ratio.py nova
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from personatune.models import encode_chat, load_model_and_tokenizer
from personatune.persona import load_persona
from personatune.scoring.gold import load_gold

GOLD = Path(__file__).resolve().parents[1] / "gold"


def context(spec, t, side: str, mode: str) -> str:
    text = t.description if side == "pos" else (t.inverse or "")
    if mode == "exemplars":
        ex = t.positive if side == "pos" else t.negative
        text += " For example: " + " ".join(f'"{e}"' for e in ex[:5])
    return f"You are {spec.name}. {text}"


@torch.no_grad()
def mean_logprobs(model, tok, rows, batch: int = 16) -> list[float]:
    """Mean log-prob of each response given (system, messages), response truncated to 160 tokens."""
    out = []
    for i in range(0, len(rows), batch):
        ids, starts = [], []
        for system, messages, response in rows[i : i + batch]:
            a = encode_chat(tok, [{"role": "system", "content": system}, *messages])
            ids.append(a + tok(response, add_special_tokens=False)["input_ids"][:160])
            starts.append(len(a))
        L = max(map(len, ids))
        x = torch.full((len(ids), L), tok.pad_token_id or 0)
        m = torch.zeros((len(ids), L), dtype=torch.long)
        for j, s in enumerate(ids):
            x[j, : len(s)], m[j, : len(s)] = torch.tensor(s), 1
        lp = torch.log_softmax(model(input_ids=x, attention_mask=m).logits[:, :-1].float(), -1)
        tl = lp.gather(-1, x[:, 1:, None])[..., 0]
        out += [tl[j, starts[j] - 1 : len(s) - 1].mean().item() for j, s in enumerate(ids)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("set", help="a gold set name in benchmarks/gold/")
    ap.add_argument("--mode", choices=("description", "exemplars"), default="description")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    args = ap.parse_args()
    torch.manual_seed(0)
    model, tok = load_model_and_tokenizer(args.model, device="cpu")
    model.eval()
    spec = load_persona(GOLD / args.set / "persona.yaml")
    items, _ = load_gold(GOLD / args.set / "responses.jsonl", spec.trait_ids)
    t0 = time.time()
    keys, rows = [], []
    for i, it in enumerate(items):
        msgs = [{"role": r, "content": c} for r, c in it.messages]
        for kind in ("gold", "flipped"):
            for t in spec.traits:
                for side in ("pos", "neg"):
                    keys.append((i, kind, t.id, side))
                    rows.append((context(spec, t, side, args.mode), msgs, it.answers[kind]))
    lp = dict(zip(keys, mean_logprobs(model, tok, rows)))
    delta = {(i, k, t): lp[(i, k, t, "pos")] - lp[(i, k, t, "neg")] for i, k, t, _ in keys}
    aucs = {}
    for t in spec.trait_ids:
        f = [delta[(i, "flipped", t)] for i, it in enumerate(items) if it.flipped_trait == t]
        g = [delta[(i, "gold", t)] for i in range(len(items))]
        if f:
            aucs[t] = roc_auc_score([0] * len(g) + [1] * len(f), [-x for x in g + f])
    gold = {t: np.array([delta[(i, "gold", t)] for i in range(len(items))]) for t in spec.trait_ids}
    caught = 0
    for i, it in enumerate(items):
        z = {t: (delta[(i, "flipped", t)] - gold[t].mean()) / (gold[t].std() + 1e-6) for t in spec.trait_ids}
        caught += min(z, key=z.get) == it.flipped_trait
    print(f"{args.set} ({args.mode}): violation AUROC per trait " + ", ".join(f"{t} {a:.3f}" for t, a in aucs.items()))
    print(
        f"mean {np.mean(list(aucs.values())):.3f}; flipped trait caught {caught / len(items):.3f}; {time.time() - t0:.0f} s"
    )


if __name__ == "__main__":
    main()
