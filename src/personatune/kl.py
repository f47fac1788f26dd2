"""Drift KL and persona shift, exactly as METRICS.md defines them — the same code for every trainer.

Drift KL (the gate, "KL <= 0.1") = mean over all response tokens of KL(pi_theta(.|x) || pi_ref(.|c, x)) in
nats/token: the policy sees the held-out prompt x with no system prompt, the reference (the stage-1 baseline)
sees the persona context c (the rendered persona system prompt, plus the few-shot turns when data.few_shot)
before x. Both distributions are compared at the same response tokens, exactly over the whole vocabulary, for
responses that pi_theta samples (temperature 1). The persona-prompted model is the target (context
distillation), so drift KL charges the model for drifting beyond what the persona asks, not for the persona.

Persona shift = the same KL against the reference WITHOUT c (information, not a gate): how far the persona
moved the model. `measure_drift` returns both from one set of samples; `measure_kl` is the plain variant
(no context, as persona shift).

Reported with the standard error (over sequences, since tokens within a sequence are correlated) and the
per-sequence total. TRL logs different quantities (summed per sequence in PPO, the k3 estimator per token in
GRPO, nothing in DPO), so gates never read TRL's numbers.
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
    reference: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = {
            "kl_per_token": self.per_token,
            "kl_per_token_stderr": self.stderr,
            "kl_per_sequence_mean": self.per_sequence_mean,
            "tokens": self.tokens,
            "sequences": self.sequences,
            "unit": "nats/token",
        }
        return d | ({"reference": self.reference} if self.reference else {})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "KLResult":
        """The result `to_dict` wrote (the per-sequence values are not kept there)."""
        return cls(
            d["kl_per_token"],
            d["kl_per_token_stderr"],
            d["kl_per_sequence_mean"],
            d["tokens"],
            d["sequences"],
            reference=d.get("reference", ""),
        )


DRIFT_REFERENCE = "the stage-1 baseline given the persona context (drift KL)"
SHIFT_REFERENCE = "the stage-1 baseline without the persona context (persona shift)"


@dataclass
class DriftResult:
    """Drift KL (against the persona-prompted reference; the gate) and persona shift (against the unprompted one).

    Attributes:
        drift: KL(policy(.|x) || reference(.|c, x)), nats/token.
        shift: KL(policy(.|x) || reference(.|x)), nats/token, on the same samples.
        context_tokens: tokens the persona context c adds before each prompt (the longest).
    """

    drift: KLResult
    shift: KLResult
    context_tokens: int = 0


def token_kl(policy_logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """Exact KL(p || q) per position from two logit tensors of shape (..., vocab). Returns shape (...)."""
    logp = torch.log_softmax(policy_logits.float(), dim=-1)
    logq = torch.log_softmax(ref_logits.float(), dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1)


@torch.inference_mode()
def sequence_kls(
    policy: Any, reference: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor
) -> list[torch.Tensor]:
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
        resid = [(t - mean * n_i) / lbar for t, n_i in zip(totals, lens)]
        var = sum(r * r for r in resid) / (n - 1) / n
        se = math.sqrt(var)
    else:
        se = float("nan")
    return KLResult(
        per_token=mean,
        stderr=se,
        per_sequence_mean=sum(totals) / n if n else float("nan"),
        tokens=n_tok,
        sequences=n,
        per_sequence=totals,
    )


def _pad_aligned(
    prefixes: list[list[int]], responses: list[list[int]], pad: int, device: Any
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """[left pads][prefix][response][right pads] rows: every response starts at the same column (the longest prefix)."""
    wp, wr = max(len(p) for p in prefixes), max(len(r) for r in responses)
    ids = [[pad] * (wp - len(p)) + p + r + [pad] * (wr - len(r)) for p, r in zip(prefixes, responses)]
    am = [[0] * (wp - len(p)) + [1] * (len(p) + len(r)) + [0] * (wr - len(r)) for p, r in zip(prefixes, responses)]
    return torch.tensor(ids, device=device), torch.tensor(am, device=device), wr


MIN_SHARED_PREFIX = 32
"""Shortest common token prefix (tokens) that `response_logprobs` runs through the model once for all rows."""


def response_logprobs(
    model: Any,
    prefixes: list[list[int]],
    responses: list[list[int]],
    pad: int,
    *,
    share_prefix: bool = True,
    keep: dict[Any, Any] | None = None,
) -> list[torch.Tensor]:
    """Log-probabilities over the vocabulary at each response token: for row i, a (len(responses[i]), vocab) tensor
    whose row t is log model(. | prefixes[i] + responses[i][:t]). Only the response positions' logits are computed.

    With `share_prefix` (default), when the rows share a token prefix of at least `MIN_SHARED_PREFIX` tokens (drift
    KL: the persona context c before every prompt, ~650 of ~700 tokens for the quickstart) and the model's KV cache
    is plain full attention, that prefix is run through the model ONCE (batch 1) and its keys and values are given
    to every row; only the rest of each prefix and the response are computed per row, with the padding between
    them masked and positions following the mask. The same log-probabilities up to float rounding (tested);
    measured 3.5-4x less time for the reference given c (benchmarks/bench_eval_policy.py). A model whose forward
    does not fill the cache it is given (remote code with another signature) gets the plain path.

    `keep` (a dict the caller owns, for a model whose weights never change, e.g. GKD's frozen teacher): the shared
    prefix's keys and values are kept there and reused by later calls with the same prefix, model, device and autocast
    state, computed without gradients — the prefix then runs once per training run instead of once per step, with
    the same log-probabilities (the same forward of the same tokens).
    """
    device = next(model.parameters()).device
    cut = _shared_cut(prefixes) if share_prefix and (len(prefixes) > 1 or keep is not None) else 0
    cache = _prefix_cache(model, prefixes[0][:cut], len(prefixes), device, keep) if cut >= MIN_SHARED_PREFIX else None
    if cache is None:
        cut = 0
    ids, am, wr = _pad_aligned([p[cut:] for p in prefixes], responses, pad, device)
    full = torch.cat([torch.ones(len(prefixes), cut, dtype=am.dtype, device=device), am], dim=1)
    pos = (full.long().cumsum(-1) - 1).clamp(min=0)[:, cut:]
    kw = {} if cache is None else {"cache": cache, "use_cache": True}
    # The distribution over response token t is predicted one position earlier: the last wr + 1 columns hold them all.
    logits = model(input_ids=ids, attention_mask=full, position_ids=pos, logits_to_keep=wr + 1, **kw).logits[:, :wr]
    logp = torch.log_softmax(logits.float(), dim=-1)
    return [logp[b, : len(r)] for b, r in enumerate(responses)]


def _shared_cut(prefixes: list[list[int]]) -> int:
    """The rows' common token prefix, less one token so every row keeps at least one of its own."""
    from personatune.generation.prefix_cache import common_prefix

    return max(0, min(common_prefix(prefixes), min(len(p) for p in prefixes) - 1))


def _prefix_cache(model: Any, prefix: list[int], rows: int, device: Any, keep: dict[Any, Any] | None = None) -> Any:
    """A KV cache of `prefix` (run once, batch 1) repeated for `rows` rows; None when the model's cache is not plain
    full attention (sliding windows, hybrid layers: the copied cache would not be exact) or the model has no config.
    With `keep`, the batch-1 cache is taken from / left in it (`response_logprobs`)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    probe = DynamicCache(config=cfg).layers
    if not probe or any(type(layer) is not DynamicLayer for layer in probe):
        return None
    key = _keep_key(model, prefix, device)
    base = keep[key][1] if keep is not None and key in keep else None
    if base is None:
        base = _run_prefix(model, cfg, prefix, device, no_grad=keep is not None)
        if base is None:
            return None
        if keep is not None:
            keep.clear()  # one prefix at a time: a caller's context does not change within a run
            keep[key] = (model, base)  # the model held, so no other object takes its id while its cache is kept
    cache = DynamicCache(config=cfg)
    for li, layer in enumerate(base.layers):
        cache.update(layer.keys.expand(rows, -1, -1, -1), layer.values.expand(rows, -1, -1, -1), li)
    return cache


def _keep_key(model: Any, prefix: list[int], device: Any) -> tuple[Any, ...]:
    """What a kept prefix cache depends on besides the (frozen) weights: the model object, the tokens, the device and
    the autocast state (under bfloat16 autocast the keys and values are other numbers)."""
    kind = device.type
    cast = torch.is_autocast_enabled(kind)
    return (id(model), tuple(prefix), str(device), cast, torch.get_autocast_dtype(kind) if cast else None)


def _run_prefix(model: Any, cfg: Any, prefix: list[int], device: Any, *, no_grad: bool) -> Any:
    """The batch-1 DynamicCache of `prefix`, or None when the forward ignored the cache it was given."""
    from contextlib import nullcontext

    from transformers import DynamicCache

    base, n = DynamicCache(config=cfg), len(prefix)
    with torch.no_grad() if no_grad else nullcontext():
        model(
            input_ids=torch.tensor([prefix], device=device),
            attention_mask=torch.ones(1, n, dtype=torch.long, device=device),
            position_ids=torch.arange(n, device=device)[None, :],
            cache=base,
            use_cache=True,
            logits_to_keep=1,
        )
    # the forward ignored `cache`: sharing would drop the prefix, so do not share
    return base if base.get_seq_length() == n else None


def kl_from_logprobs(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Exact KL(p || q) per row of two (n, vocab) log-probability tensors, floored at 0: KL is never negative, and
    two passes of the same weights (the policy's log-probs come from its sampling pass) differ by float rounding
    only, which could print as a "persona shift of -3e-09"."""
    return (logp.exp() * (logp - logq)).sum(-1).clamp(min=0)


@torch.inference_mode()
def prefixed_kls(
    policy: Any,
    reference: Any,
    policy_prefixes: list[list[int]],
    reference_prefixes: list[list[int]],
    responses: list[list[int]],
    pad: int,
) -> list[torch.Tensor]:
    """Per-token KL(policy(.|policy prefix, r<t) || reference(.|reference prefix, r<t)) at every token of each response.

    The two prefixes may differ (drift KL: the reference's starts with the persona context); the comparison is
    aligned at the response tokens, which are the same for both.
    """
    return kls_against(
        response_logprobs(policy, policy_prefixes, responses, pad), reference, reference_prefixes, responses, pad
    )


def kls_against(
    logp: list[torch.Tensor], reference: Any, prefixes: list[list[int]], responses: list[list[int]], pad: int
) -> list[torch.Tensor]:
    """Per-token KL(p || reference(.|prefix, r<t)) of each response, from the policy's log-probabilities `logp` at its
    tokens (`response_logprobs`, or the sampling pass's)."""
    return [kl_from_logprobs(a, b) for a, b in zip(logp, response_logprobs(reference, prefixes, responses, pad))]


def _sample_responses(
    policy: Any, tokenizer: Any, prefixes: list[list[int]], *, max_new_tokens: int, gen: torch.Generator, pad: int
) -> tuple[list[list[int]], list[torch.Tensor]]:
    """One temperature-1 sample per prefix: the response tokens up to and including the first EOS, and the policy's
    log-probabilities over the vocabulary at each of them, from the logits generate sampled from (the same numbers a
    second forward pass would give, up to float rounding, without its cost; tested against `response_logprobs`)."""
    device = next(policy.parameters()).device
    width = max(len(b) for b in prefixes)
    ids = torch.tensor([[pad] * (width - len(b)) + b for b in prefixes], device=device)
    am = torch.tensor([[0] * (width - len(b)) + [1] * len(b) for b in prefixes], device=device)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    # The global RNG is forked, so that an eval inside training does not reseed the trainer's randomness (its data
    # order): with or without an eval at some step, training draws the same numbers.
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        out = policy.generate(
            input_ids=ids,
            attention_mask=am,
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad,
            return_dict_in_generate=True,
            output_logits=True,
        )
    eos = tokenizer.eos_token_id
    responses = []
    for row in out.sequences[:, width:].tolist():
        if eos is not None and eos in row:
            row = row[: row.index(eos) + 1]
        responses.append(row or [eos if eos is not None else pad])
    logits = torch.stack(out.logits, dim=1)  # (rows, steps, vocab): step t's logits chose response token t
    logp = [torch.log_softmax(logits[b, : len(r)].float(), dim=-1) for b, r in enumerate(responses)]
    return responses, logp


@torch.inference_mode()
def measure_drift(
    policy: Any,
    reference: Any,
    tokenizer: Any,
    prompts: list[list[dict[str, str]]],
    context: list[dict[str, str]],
    *,
    max_new_tokens: int = 64,
    seed: int = 0,
    batch_size: int = 8,
) -> DriftResult:
    """Drift KL and persona shift on the policy's own samples (temperature 1, no system prompt for the policy).

    Args:
        policy, reference: causal LMs sharing `tokenizer` (reference = the stage-1 baseline).
        prompts: held-out conversations ending with a user turn, no system turn.
        context: the persona context c (system prompt, then few-shot turns) the reference sees before each prompt.
        max_new_tokens: response length cap (tokens).
        seed: sampling seed (fixed, so before/after comparisons see the same randomness).

    Returns:
        DriftResult (both in nats/token).
    """
    from personatune.models import encode_chat

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    gen = torch.Generator(device="cpu").manual_seed(seed)
    drift: list[torch.Tensor] = []
    shift: list[torch.Tensor] = []
    ctx_tokens = 0
    for s in range(0, len(prompts), batch_size):
        chunk = prompts[s : s + batch_size]
        plain = [encode_chat(tokenizer, p, add_generation_prompt=True) for p in chunk]
        prompted = [encode_chat(tokenizer, list(context) + list(p), add_generation_prompt=True) for p in chunk]
        ctx_tokens = max([ctx_tokens] + [len(a) - len(b) for a, b in zip(prompted, plain)])
        responses, lp = _sample_responses(policy, tokenizer, plain, max_new_tokens=max_new_tokens, gen=gen, pad=pad)
        shift += kls_against(lp, reference, plain, responses, pad)
        drift += kls_against(lp, reference, prompted, responses, pad)
    d, sh = summarize_kls(drift), summarize_kls(shift)
    d.reference, sh.reference = DRIFT_REFERENCE, SHIFT_REFERENCE
    return DriftResult(d, sh, ctx_tokens)


def context_token_count(tokenizer: Any, prompts: list[list[dict[str, str]]], context: list[dict[str, str]]) -> int:
    """Tokens the persona context adds before a prompt, the longest over `prompts` (`DriftResult.context_tokens`)."""
    from personatune.models import encode_chat

    return max(
        [0]
        + [
            len(encode_chat(tokenizer, list(context) + list(p), add_generation_prompt=True))
            - len(encode_chat(tokenizer, p, add_generation_prompt=True))
            for p in prompts
        ]
    )


@torch.inference_mode()
def measure_kl(
    policy: Any,
    reference: Any,
    tokenizer: Any,
    prompts: list[list[dict[str, str]]],
    *,
    max_new_tokens: int = 64,
    seed: int = 0,
    batch_size: int = 8,
) -> KLResult:
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

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    gen = torch.Generator(device="cpu").manual_seed(seed)
    per_seq: list[torch.Tensor] = []
    for s in range(0, len(prompts), batch_size):
        plain = [encode_chat(tokenizer, p, add_generation_prompt=True) for p in prompts[s : s + batch_size]]
        responses, lp = _sample_responses(policy, tokenizer, plain, max_new_tokens=max_new_tokens, gen=gen, pad=pad)
        per_seq += kls_against(lp, reference, plain, responses, pad)
    return summarize_kls(per_seq)
