"""Shared-prefix ("cascade") attention: every row of a batch attends to ONE copy of a common prompt prefix.

Used by HFBackend (personatune.generation.hf, step 3) when a batch's prompts share a long token prefix (stage 3's
persona system prompt with its few-shot turns). The prefix's keys and values are kept once; each row's cache
(`suffix_layer_class`) holds only its own keys, and the registered attention function scores every query against
the one prefix copy and its row's own keys under one softmax: the same attention as over one concatenated
sequence, up to float rounding. On a CPU, decoding over ~700 copied prefix positions per sequence was most of
stage 3's time (benchmarks/bench_teacher.py).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator
from typing import Any

_SHARED_ATTENTION = "personatune_shared_prefix"
_ACTIVE_CACHE: contextvars.ContextVar[Any] = contextvars.ContextVar("personatune_shared_prefix_cache", default=None)


def _register_shared_attention() -> None:
    """Register `_shared_prefix_attention` (with sdpa's boolean masks) under `_SHARED_ATTENTION`, once."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    if _SHARED_ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(_SHARED_ATTENTION, _shared_prefix_attention)
        AttentionMaskInterface.register(_SHARED_ATTENTION, sdpa_mask)


@functools.cache
def suffix_layer_class() -> type:
    from transformers.cache_utils import DynamicLayer

    class SuffixLayer(DynamicLayer):
        """A DynamicLayer holding only a row's own keys (after a shared prefix) and, once, the prefix's.

        Lengths and mask sizes count the prefix, so generate and the mask code see the whole sequence;
        `update` returns the row's own keys only: `_shared_prefix_attention` adds the prefix.
        """

        def __init__(self, prefix_keys: Any, prefix_values: Any) -> None:
            super().__init__()
            self.prefix_keys, self.prefix_values = prefix_keys, prefix_values
            self.prefix_len = int(prefix_keys.shape[-2])

        def get_seq_length(self) -> int:
            return self.prefix_len + super().get_seq_length()

        def get_mask_sizes(self, query_length: int, *args: Any, **kwargs: Any) -> tuple[int, int]:
            return self.get_seq_length() + query_length, 0

        def batch_repeat_interleave(self, repeats: int) -> None:
            if self.is_initialized and self.keys.numel():
                super().batch_repeat_interleave(repeats)

        def batch_select_indices(self, indices: Any) -> None:
            if self.is_initialized and self.keys.numel():
                super().batch_select_indices(indices)

    return SuffixLayer


def _shared_prefix_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """Attention of every row's queries over one shared prefix plus the row's own keys.

    query: (rows, heads, q, d); key/value: the rows' own keys (rows, kv heads, S, d) as returned by a
    SuffixLayer; the prefix (1, kv heads, P, d) comes from the active cache. The mask covers P + S
    positions; its prefix part is all visible (the prefix has no padding and precedes every query), so
    only its last S columns are used. The scores against the prefix are computed for all rows with one
    read of the prefix, put beside the row's own scores for one softmax, and the two weighted sums
    added: the same attention as over one concatenated sequence, up to float rounding. Returns
    (rows, q, heads, d), as the sdpa integration does.
    """
    import torch

    active = _ACTIVE_CACHE.get()
    if active is None:  # a forward pass outside HFBackend's shared-prefix calls (another thread): plain sdpa
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    layer = active.layers[module.layer_idx]
    pk, pv = layer.prefix_keys[0], layer.prefix_values[0]  # (kv heads, P, d)
    rows, heads, q, d = query.shape
    hkv, s, p = key.shape[1], key.shape[2], pk.shape[-2]
    g = heads // hkv  # query heads per kv head (GQA): head h reads kv head h // g
    qs = query.reshape(rows, hkv, g * q, d) * (scaling if scaling is not None else d**-0.5)
    sp = torch.matmul(qs.transpose(0, 1).reshape(hkv, rows * g * q, d), pk.transpose(-1, -2))  # (kv heads, rows*g*q, P)
    ss = torch.matmul(qs, key.transpose(-1, -2))  # (rows, kv heads, g*q, S)
    if attention_mask is not None:
        m = attention_mask[..., -s:].unsqueeze(2)  # (rows, 1, 1, q, S)
        ss = ss.view(rows, hkv, g, q, s)
        ss = (ss.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else ss + m.to(ss.dtype)).view(
            rows, hkv, g * q, s
        )
    elif q > 1:
        causal = torch.arange(s, device=query.device)[None, :] <= torch.arange(s - q, s, device=query.device)[:, None]
        ss = ss.view(rows, hkv, g, q, s).masked_fill(~causal, float("-inf")).view(rows, hkv, g * q, s)
    scores = torch.cat([sp.view(hkv, rows, g * q, p).transpose(0, 1), ss], dim=-1)
    w = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    out_p = (
        torch.matmul(w[..., :p].transpose(0, 1).reshape(hkv, rows * g * q, p), pv)
        .view(hkv, rows, g * q, d)
        .transpose(0, 1)
    )
    out = out_p + torch.matmul(w[..., p:], value)
    return out.reshape(rows, heads, q, d).transpose(1, 2).contiguous(), None


@contextlib.contextmanager
def shared_prefix_attention(model: Any, cache: Any) -> Iterator[None]:
    """Run `model` with shared-prefix attention over `cache` (whose layers are `suffix_layer_class()` layers).

    The model's attention implementation is switched for the duration and restored after, even on error; the
    cache is found through a context variable, so other threads' forward passes fall back to plain sdpa.
    """
    _register_shared_attention()
    cfg = model.config
    old = cfg._attn_implementation
    token = _ACTIVE_CACHE.set(cache)
    cfg._attn_implementation = _SHARED_ATTENTION
    try:
        yield
    finally:
        cfg._attn_implementation = old
        _ACTIVE_CACHE.reset(token)
