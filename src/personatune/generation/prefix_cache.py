"""The prompt-prefix KV caches HFBackend keeps: one per distinct prefix, least recently used dropped first.

A batch whose prompts share a long token prefix (stage 3: the persona system prompt with its few-shot turns) has
that prefix prefilled once, at batch size 1 and without padding (personatune.generation.hf, step 3). The caches
live for one `generate` call, or between calls while the model's weights are unchanged (`keep` > 0); a new prefix
extends the longest part it shares with a kept one instead of running it all again.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any


def common_prefix(rows: list[list[int]]) -> int:
    """Length of the longest token prefix every row shares."""
    first, n = rows[0], min(len(r) for r in rows)
    for r in rows[1:]:
        n = next((k for k in range(n) if r[k] != first[k]), n)
    return n


class PrefixCache:
    """KV caches (batch 1, no padding) of prompt prefixes, keyed by their token ids.

    Args:
        keep: how many caches to keep BETWEEN calls (0: none; `check` then empties it, so a call never reuses KV
            from an earlier one). Within a call at least two are kept, so a batch can extend the previous prefix.
    """

    def __init__(self, keep: int = 0) -> None:
        self.keep = keep
        self._caches: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        self._weights_key: tuple | None = None

    def __len__(self) -> int:
        return len(self._caches)

    def clear(self) -> None:
        """Drop every kept cache."""
        self._caches.clear()

    def check(self, model: Any, device: Any) -> None:
        """Drop kept caches when the model, its device or any parameter changed since they were made.

        A parameter's in-place version counter moves with an optimizer step or loaded weights, so caches made
        before either are never reused.
        """
        if not self.keep:
            self._caches.clear()
            return
        key = (id(model), str(device), sum(p._version for p in model.parameters()))
        if key != self._weights_key:
            self._caches.clear()
            self._weights_key = key

    def get(self, model: Any, device: Any, prefix: tuple[int, ...], min_shared: int) -> tuple[Any, int]:
        """The KV cache of `prefix`, and how many tokens had to be run through the model for it.

        A kept cache is reused as is, or its longest common part with `prefix` (at least `min_shared` tokens) is
        extended: e.g. the persona prompt before its per-scenario trait reminders.

        Args:
            model: the causal LM the caches belong to.
            device: where its inputs go.
            prefix: the prefix's token ids.
            min_shared: shortest common part (tokens) of a kept prefix worth extending.

        Returns:
            (a transformers DynamicCache of the prefix, prompt tokens run through the model for it).
        """
        import torch
        from transformers import DynamicCache

        if prefix in self._caches:
            self._caches.move_to_end(prefix)
            return self._caches[prefix], 0
        base, start = None, 0
        for key in self._caches:
            c = common_prefix([list(key), list(prefix)])
            if c > start and c >= min_shared:
                base, start = key, c
        cache = DynamicCache(config=model.config)
        if base is not None:
            self._caches.move_to_end(base)
            for li, layer in enumerate(self._caches[base].layers):
                cache.update(layer.keys[:, :, :start], layer.values[:, :, :start], li)
        if start < len(prefix):
            rest = torch.tensor([prefix[start:]], device=device)
            pos = torch.arange(start, len(prefix), device=device)[None, :]
            model(
                input_ids=rest,
                attention_mask=torch.ones(1, len(prefix), dtype=torch.long, device=device),
                position_ids=pos,
                cache=cache,
                use_cache=True,
            )
        self._caches[prefix] = cache
        while len(self._caches) > max(self.keep, 2):
            self._caches.popitem(last=False)
        return cache, len(prefix) - start
