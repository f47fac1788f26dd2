"""KL to the reference, exactly as METRICS.md defines it — the same code for every trainer.

KL = mean over all response tokens of KL(pi_theta(.|prefix) || pi_ref(.|prefix)), in nats/token,
computed exactly over the whole vocabulary at every position of responses that pi_theta samples
(temperature 1, no system prompt) for a fixed held-out prompt set. Reported with its standard error
(over sequences, since tokens within a sequence are correlated) and the per-sequence total.

TRL logs different quantities (summed per sequence in PPO, the k3 estimator per token in GRPO,
nothing in DPO), so gates never read TRL's numbers; they read `measure_kl`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class KLResult:
    """Mean per-token KL (nats/token) with its standard error and per-sequence totals."""

    per_token: float
    stderr: float
    per_sequence_mean: float
    tokens: int
    sequences: int
    per_sequence: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"kl_per_token": self.per_token, "kl_per_token_stderr": self.stderr, "kl_per_sequence_mean": self.per_sequence_mean,
                "tokens": self.tokens, "sequences": self.sequences, "unit": "nats/token"}


def token_kl(policy_logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """Exact KL(p || q) per position from two logit tensors of shape (..., vocab). Returns shape (...)."""
    logp = torch.log_softmax(policy_logits.float(), dim=-1)
    logq = torch.log_softmax(ref_logits.float(), dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1)


@torch.inference_mode()
def sequence_kls(policy: Any, reference: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor) -> list[torch.Tensor]:
    """Per-token KLs at the response positions of each sequence.

    Args:
        input_ids: (B, T) prompt + response tokens (right- or left-padded).
        attention_mask: (B, T) 1 for real tokens.
        response_mask: (B, T) 1 where the token is a response token (its distribution is compared).

    Returns:
        For each sequence, a 1-D tensor of the KL at each of its response tokens.
    """
    # Positions count real tokens only, as generate() does, so left padding does not shift them.
    pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    pl = policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos).logits
    rl = reference(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos).logits
    # The distribution over token t is predicted at position t-1.
    kl = token_kl(pl[:, :-1], rl[:, :-1])
    mask = response_mask[:, 1:].bool()
    return [kl[b][mask[b]] for b in range(kl.shape[0])]


def summarize_kls(per_seq: list[torch.Tensor]) -> KLResult:
    """Mean per-token KL over all tokens; standard error from per-sequence token-weighted means (ratio estimator)."""
    totals = [float(k.sum()) for k in per_seq]
    lens = [int(k.numel()) for k in per_seq]
    n_tok = sum(lens)
    mean = sum(totals) / n_tok if n_tok else float("nan")
    n = len(per_seq)
    if n > 1 and n_tok:
        lbar = n_tok / n
        # Ratio-estimator variance: var of (total_i - mean * len_i) / mean length.
        resid = [(t - mean * l) / lbar for t, l in zip(totals, lens)]
        var = sum(r * r for r in resid) / (n - 1) / n
        se = math.sqrt(var)
    else:
        se = float("nan")
    return KLResult(per_token=mean, stderr=se, per_sequence_mean=sum(totals) / n if n else float("nan"), tokens=n_tok, sequences=n, per_sequence=totals)


@torch.inference_mode()
def measure_kl(policy: Any, reference: Any, tokenizer: Any, prompts: list[list[dict[str, str]]], *, max_new_tokens: int = 64, seed: int = 0,
               batch_size: int = 8) -> KLResult:
    """Sample responses from `policy` (temperature 1, no system prompt added) and measure exact per-token KL.

    Args:
        policy, reference: causal LMs sharing `tokenizer`.
        prompts: held-out conversations ending with a user turn (no system prompt is added here).
        max_new_tokens: response length cap (tokens).
        seed: sampling seed (fixed, so before/after comparisons see the same randomness).

    Returns:
        KLResult in nats/token.
    """
    from personatune.models import encode_chat

    device = next(policy.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    gen = torch.Generator(device="cpu").manual_seed(seed)
    per_seq: list[torch.Tensor] = []
    for s in range(0, len(prompts), batch_size):
        batch = [encode_chat(tokenizer, p, add_generation_prompt=True) for p in prompts[s : s + batch_size]]
        width = max(len(b) for b in batch)
        ids = torch.tensor([[pad] * (width - len(b)) + b for b in batch], device=device)
        am = torch.tensor([[0] * (width - len(b)) + [1] * len(b) for b in batch], device=device)
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        out = policy.generate(input_ids=ids, attention_mask=am, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                              max_new_tokens=max_new_tokens, pad_token_id=pad)
        resp = out[:, width:]
        # Response tokens up to and including the first EOS count; padding after it does not.
        eos = tokenizer.eos_token_id
        rmask = torch.ones_like(resp)
        if eos is not None:
            ended = (resp == eos).int().cumsum(1)
            rmask = ((ended == 0) | ((ended == 1) & (resp == eos))).int()
        full_am = torch.cat([am, rmask], 1)
        resp_mask = torch.cat([torch.zeros_like(am), rmask], 1)
        per_seq += sequence_kls(policy, reference, out, full_am, resp_mask)
    return summarize_kls(per_seq)
