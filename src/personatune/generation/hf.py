"""In-process batched generation with a transformers causal LM (CPU or CUDA).

What `HFBackend.generate` does, in order:
1. Render each conversation with the tokenizer's chat template as text, then tokenize it with
   `add_special_tokens=False` (the template already holds BOS; tokenizing with special tokens
   would double it): `personatune.models.encode_chat`, the project's one implementation.
2. Sort conversations by prompt length (longest first) and cut them into batches of
   `batch_size`: neighbours have similar lengths, so little compute goes to padding. With
   `share_prefix` (default) conversations with the same context (every message but the last) are
   sorted next to each other first, so a batch's prompts share a long token prefix, and a batch
   also ends where the next prompt would more than halve that shared prefix (between two system
   prompts, say).
3. LEFT-pad each batch (decoder-only models continue from the last position, so every prompt
   must end at the same column) with an attention mask; position ids follow the mask.
   With `share_prefix`, the batch's longest common token prefix (in stage 3 the persona system
   prompt with its few-shot turns, ~700 of ~720 tokens) is prefilled ONCE, at batch size 1 and
   without padding; only the rest of each prompt is prefilled, padded in the middle (prefix, pad,
   rest) with the mask and position ids following the mask, so each row sees the positions it would
   see alone. Prefix caches live for the call (with `prefix_cache` > 0 also for later calls, while
   the weights are unchanged); a new prefix extends the longest part it shares with a kept one.
   With `shared_attention` (default; Llama/Mistral/Qwen-type models) the prefix's keys and values
   are not copied to the rows at all: every query is scored against the ONE prefix copy and against
   its row's own keys, under one softmax ("cascade" attention; the same attention up to float
   rounding). On a CPU, decoding over ~700 copied prefix positions per sequence, not the prefill,
   was most of stage 3's time (benchmarks/bench_teacher.py, docs/benchmarks.md).
4. Decode greedily when `temperature == 0`, otherwise sample with `temperature`/`top_p`
   (personatune.generation.sampler.NucleusSampler: transformers' distribution, drawn over the nucleus only), n draws
   per prompt, the RNG seeded from `seed` in a forked RNG state so the caller's global RNG is
   untouched. With n > 1 the prompt is prefilled ONCE and its KV cache repeated n times
   (`share_prefill`): `num_return_sequences = n` would prefill every copy, and with a long persona
   system prompt prefill is most of the cost on a CPU (benchmarks/bench_generation.py measures it).
   The draws are the same sequences as with `num_return_sequences` (same batch order, same RNG use),
   up to float rounding; the shared-prefix path always repeats the cache this way. Decoding uses
   exactly these parameters: the model's own generation_config defaults (top_k, repetition_penalty,
   ...) are not applied, so the HF and OpenAI-compatible backends mean the same thing by the same
   parameters.
5. Stop each sequence at its first EOS (the tokenizer's and the model's EOS ids), drop special
   tokens, strip whitespace, and put results back in the caller's order.

Greedy output is the same whether a prompt is decoded alone or in a padded batch, with or without a
shared prefix (tested), up to float rounding in reduced precision.

`share_prefix`, `shared_attention` and `share_prefill` are the fields of `PrefillOptions` (all on by default); the
kept prefix caches are personatune.generation.prefix_cache, the shared-prefix attention
personatune.generation.shared_attention.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from personatune.generation import BackendError, Conversation, SamplingParams, check_conversations
from personatune.generation.prefix_cache import PrefixCache, common_prefix
from personatune.generation.sampler import NucleusSampler
from personatune.generation.shared_attention import shared_prefix_attention, suffix_layer_class
from personatune.models import encode_chat


def _as_list(x: Any) -> list[int]:
    if x is None:
        return []
    return [int(v) for v in x] if isinstance(x, (list, tuple)) else [int(x)]


@dataclass(frozen=True)
class PrefillOptions:
    """The prefill shortcuts of `HFBackend` (steps 3 and 4 of the module docstring). Each gives the same text up to
    float rounding, so all are on by default; tests and benchmarks turn one off to compare with the plain path.

    Attributes:
        share_prefill: with n > 1 draws, prefill each prompt once and repeat its KV cache (step 4).
        share_prefix: prefill a batch's common token prefix once (step 3) when it is at least
            `HFBackend.MIN_SHARED_PREFIX` tokens long; only for models whose cache is plain full attention
            (`DynamicLayer`), else the per-prompt path is used.
        shared_attention: with a shared prefix, attend to one copy of its keys and values (step 3,
            personatune.generation.shared_attention) instead of a copy per sequence; only for the model types in
            `HFBackend.SHARED_ATTENTION_MODELS` with sdpa or eager attention, else the prefix cache is copied to every row.

    >>> HFBackend(model, tokenizer, prefill=PrefillOptions(share_prefix=False))   # doctest: +SKIP
    """

    share_prefill: bool = True
    share_prefix: bool = True
    shared_attention: bool = True


class HFBackend:
    """A `GenerationBackend` around a loaded transformers model and tokenizer.

    Args:
        model: a causal LM (`AutoModelForCausalLM`-like, with `.generate`).
        tokenizer: its tokenizer, with a chat template.
        batch_size: prompts per forward batch (>= 1); with sampling, `batch_size * n` sequences run together.
        device: where to run ("cpu", "cuda", "cuda:1", a torch.device) or None for the model's
            current device. A different device moves the model there.
        progress: called as progress(prompts done, prompts in the call) after each batch, e.g. a
            personatune.progress.EtaLine, so a long generate call shows a rate and an ETA.
        prefix_cache: how many prefix KV caches to keep BETWEEN calls (0: none; a call never reuses
            KV from an earlier one). Kept caches are dropped when the model or its parameters change
            (a parameter's in-place version counter moves, as with an optimizer step or loaded weights);
            set it only where the weights are frozen, e.g. stage 3's teacher.
        prefill: which prefill shortcuts to take (`PrefillOptions`; default: all of them).

    Attributes:
        nucleus_sampling: draw with personatune.generation.sampler.NucleusSampler (True, the default: the same
            distribution as transformers' sampler at 0.67x the time of a CPU decoding step, bench_sampler.py) or with transformers' own
            `do_sample=True` (False: for comparisons, benchmarks/bench_teacher.py).

    Raises:
        BackendError: batch_size < 1, prefix_cache < 0, or the tokenizer has neither a pad nor an EOS token.

    >>> backend = HFBackend(model, tokenizer, batch_size=16)                       # doctest: +SKIP
    >>> backend.generate([[{"role": "user", "content": "Hi"}]], max_new_tokens=16, temperature=0.0)  # doctest: +SKIP
    [['Hello! How can I help you today?']]
    """

    MIN_SHARED_PREFIX = 32
    """Shortest common prefix (tokens) worth a separate prefill; below it the batch is prefilled as a whole."""
    SHARED_ATTENTION_MODELS = ("llama", "mistral", "qwen2", "qwen3")
    """Model types whose attention is plain scaled dot-product over RoPE'd keys (no soft-capping, sinks or
    sliding windows), for which `shared_attention` is exact."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        batch_size: int = 16,
        device: Any = None,
        *,
        progress: Callable[[int, int], object] | None = None,
        prefix_cache: int = 0,
        prefill: PrefillOptions | None = None,
    ) -> None:
        import torch

        if not isinstance(batch_size, int) or batch_size < 1:
            raise BackendError(f"batch_size={batch_size!r} must be an integer >= 1")
        if not isinstance(prefix_cache, int) or prefix_cache < 0:
            raise BackendError(f"prefix_cache={prefix_cache!r} must be an integer >= 0")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        current = next(model.parameters()).device
        self.device = torch.device(device) if device is not None else current
        if self.device != current:
            model.to(self.device)
        self.eos_ids = sorted(
            set(_as_list(tokenizer.eos_token_id))
            | set(_as_list(getattr(model.generation_config, "eos_token_id", None)))
        )
        pad = (
            tokenizer.pad_token_id
            if tokenizer.pad_token_id is not None
            else (self.eos_ids[0] if self.eos_ids else None)
        )
        if pad is None:
            raise BackendError("the tokenizer has neither a pad token nor an EOS token; fix: set tokenizer.pad_token")
        self.pad_id = int(pad)
        prefill = prefill if prefill is not None else PrefillOptions()
        self.share_prefill = prefill.share_prefill
        self.share_prefix = prefill.share_prefix
        self.prefix_cache = prefix_cache
        self.shared_attention = prefill.shared_attention
        self.progress = progress
        self.last_stats: dict[str, float] = {}
        self._prefixes = PrefixCache(keep=prefix_cache)
        self._plain: bool | None = None
        self.nucleus_sampling = True

    def __repr__(self) -> str:
        name = getattr(getattr(self.model, "config", None), "_name_or_path", "") or type(self.model).__name__
        return f"HFBackend(model={name!r}, batch_size={self.batch_size}, device={str(self.device)!r})"

    def generate(
        self,
        conversations: list[Conversation],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float = 1.0,
        n: int = 1,
        seed: int | None = None,
    ) -> list[list[str]]:
        """`n` completions per conversation, in the caller's order, special tokens stripped.

        Raises:
            BackendError: bad parameters or conversations.
            PersonatuneError: the tokenizer has no chat template (ConfigError from personatune.models).
        """
        ids = self.generate_ids(
            conversations, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, n=n, seed=seed
        )
        return [[self.tokenizer.decode(s, skip_special_tokens=True).strip() for s in per] for per in ids]

    def generate_ids(
        self,
        conversations: list[Conversation],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float = 1.0,
        n: int = 1,
        seed: int | None = None,
    ) -> list[list[list[int]]]:
        """Like `generate`, but returns the new token ids of each completion, cut before the first EOS.

        `last_stats` afterwards holds `new_tokens` (tokens actually produced, EOS excluded), `seconds`
        (wall time), `prefill_tokens` (prompt tokens run through the model, shared prefixes counted once)
        and `decode_slots` (sequences x decoding steps: a finished sequence still occupies its row until
        the batch ends), for throughput figures.
        """
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        params = SamplingParams(max_new_tokens, temperature, top_p, n, seed)
        check_conversations(conversations)
        encoded = [encode_chat(self.tokenizer, c, add_generation_prompt=True) for c in conversations]
        if self.share_prefix:
            # Same context (all but the last message) next to each other, then longest first.
            ctx = [json.dumps(c[:-1], sort_keys=True) for c in conversations]
            order = sorted(range(len(encoded)), key=lambda i: (ctx[i], -len(encoded[i])))
        else:
            order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        draws = 1 if params.greedy else n
        shared = self.share_prefill and draws > 1

        hf_draws = not params.greedy and not self.nucleus_sampling  # transformers' own sampler (for comparisons)

        def config(k: int) -> Any:
            return GenerationConfig(
                max_new_tokens=max_new_tokens,
                do_sample=hf_draws,
                num_return_sequences=k,
                temperature=temperature if hf_draws else None,
                top_p=top_p if hf_draws else None,
                top_k=None,
                pad_token_id=self.pad_id,
                eos_token_id=self.eos_ids or None,
            )

        # NucleusSampler draws inside a logits processor under greedy decoding, which has no num_return_sequences:
        # without a shared prefill its rows are repeated here, as transformers repeats them (repeat_interleave).
        expand = 1 if shared or hf_draws else draws
        gen_cfg, cached_cfg = config(1 if shared or not hf_draws else draws), config(1)
        sampler = (
            {}
            if params.greedy or hf_draws
            else {"logits_processor": LogitsProcessorList([NucleusSampler(temperature, top_p)])}
        )
        results: list[list[list[int]] | None] = [None] * len(encoded)
        eos = set(self.eos_ids)
        produced = prefilled = slots = 0
        was_training = self.model.training
        self.model.eval()
        t0 = time.perf_counter()
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        rng = torch.random.fork_rng(devices=cuda) if seed is not None else contextlib.nullcontext()
        self._prefixes.check(self.model, self.device)
        try:
            with torch.inference_mode(), rng:
                if seed is not None:
                    torch.manual_seed(seed)
                done = 0
                for idx in self._batches(order, encoded):
                    rows = [encoded[i] for i in idx]
                    common = common_prefix(rows) if self.share_prefix else 0
                    if common >= self.MIN_SHARED_PREFIX and self._plain_cache():
                        cascade = self.shared_attention and self._cascade_ok()
                        input_ids, mask, cache, width, work = self._prefill_shared(rows, common, draws, cascade)
                        with self._cascade(cache) if cascade else contextlib.nullcontext():
                            out = self.model.generate(
                                input_ids=input_ids,
                                attention_mask=mask,
                                cache=cache,
                                generation_config=cached_cfg,
                                **sampler,
                            )
                    else:
                        width = max(len(r) for r in rows)
                        input_ids = torch.tensor(
                            [[self.pad_id] * (width - len(r)) + r for r in rows], device=self.device
                        )
                        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device)
                        work = len(rows) * (width - 1 + draws) if shared else len(rows) * width * draws
                        if shared:
                            input_ids, mask, cache = self._prefill(input_ids, mask, draws)
                            out = self.model.generate(
                                input_ids=input_ids,
                                attention_mask=mask,
                                cache=cache,
                                generation_config=gen_cfg,
                                **sampler,
                            )
                        else:
                            out = self.model.generate(
                                input_ids=input_ids.repeat_interleave(expand, 0),
                                attention_mask=mask.repeat_interleave(expand, 0),
                                generation_config=gen_cfg,
                                **sampler,
                            )
                    prefilled += work
                    new = out[:, width:].tolist()
                    slots += len(new) * (len(new[0]) if new else 0)
                    for j, i in enumerate(idx):
                        seqs = []
                        for row in new[j * draws : (j + 1) * draws]:
                            cut = next((p for p, t in enumerate(row) if t in eos), len(row))
                            seqs.append(row[:cut])
                            produced += cut
                        results[i] = seqs * n if draws == 1 else seqs
                    done += len(idx)
                    if self.progress is not None:
                        self.progress(done, len(order))
        finally:
            self.model.train(was_training)
            if not self.prefix_cache:
                self._prefixes.clear()
        self.last_stats = {
            "new_tokens": float(produced),
            "seconds": time.perf_counter() - t0,
            "prefill_tokens": float(prefilled),
            "decode_slots": float(slots),
        }
        return results  # type: ignore[return-value]

    def _batches(self, order: list[int], encoded: list[list[int]]) -> list[list[int]]:
        """Cut the sorted prompts into batches of at most `batch_size`. With `share_prefix`, a batch also ends
        where the next prompt would cut its shared prefix (at least `MIN_SHARED_PREFIX` tokens) by more than
        half, e.g. between two system prompts: two batches that each share ~all of their prompt beat one that
        shares a few tokens."""
        if not self.share_prefix:
            return [order[s : s + self.batch_size] for s in range(0, len(order), self.batch_size)]
        out: list[list[int]] = []
        cur: list[int] = []
        common = 0
        for i in order:
            if cur:
                new = common_prefix([encoded[cur[0]][:common], encoded[i]])
                if len(cur) >= self.batch_size or (
                    len(cur) > 1 and common >= self.MIN_SHARED_PREFIX and new < common / 2
                ):
                    out.append(cur)
                    cur = []
                else:
                    common = new
            if not cur:
                common = len(encoded[i])
            cur.append(i)
        return out + [cur] if cur else out

    def _prefill(self, input_ids: Any, mask: Any, draws: int) -> tuple[Any, Any, Any]:
        """KV cache of every prompt but its last token, computed once and repeated `draws` times.

        `generate` then sees a cache covering all but the last prompt token and processes only that
        token before sampling, exactly as after its own prefill. Position ids follow the left-padding mask.

        Returns:
            (input ids, attention mask, cache), each repeated `draws` times along the batch.
        """
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        self.model(
            input_ids=input_ids[:, :-1],
            attention_mask=mask[:, :-1],
            position_ids=pos[:, :-1],
            cache=cache,
            use_cache=True,
        )
        cache.batch_repeat_interleave(draws)
        return input_ids.repeat_interleave(draws, 0), mask.repeat_interleave(draws, 0), cache

    # --- shared prefixes ---------------------------------------------------------------------------
    def _plain_cache(self) -> bool:
        """Whether the model's KV cache is plain full attention, the only kind a prefix cache is copied for."""
        if self._plain is None:
            from transformers import DynamicCache
            from transformers.cache_utils import DynamicLayer

            layers = DynamicCache(config=self.model.config).layers
            self._plain = bool(layers) and all(type(layer) is DynamicLayer for layer in layers)
        return self._plain

    def _cascade_ok(self) -> bool:
        """Whether shared attention (one prefix copy for every row) is exact for this model."""
        cfg = self.model.config
        return (
            getattr(cfg, "model_type", None) in self.SHARED_ATTENTION_MODELS
            and cfg._attn_implementation in ("sdpa", "eager")
            and getattr(cfg, "sliding_window", None) is None
            and self._plain_cache()
        )

    def _cascade(self, cache: Any) -> Any:
        """Run the model with shared-prefix attention over `cache` (a cache made by `_prefill_shared`)."""
        return shared_prefix_attention(self.model, cache)

    def _prefill_shared(
        self, rows: list[list[int]], common: int, draws: int, cascade: bool = False
    ) -> tuple[Any, Any, Any, int, int]:
        """A batch whose prompts share their first `common` tokens: the prefix's cache given to every row
        (one shared copy with `cascade`, else copied per row), then the rest of each prompt but its last
        token prefilled, padded between prefix and rest.

        Returns:
            (input ids, attention mask, cache, width of the prompt columns, prompt tokens run through the model),
            the first three repeated `draws` times along the batch.
        """
        import torch
        from transformers import DynamicCache

        cut = min(common, min(len(r) for r in rows) - 1)  # every row keeps at least its last token for generate
        prefix = tuple(rows[0][:cut])
        base, computed = self._prefixes.get(self.model, self.device, prefix, self.MIN_SHARED_PREFIX)
        rest = [r[cut:] for r in rows]
        w = max(len(r) for r in rest)
        input_ids = torch.tensor([list(prefix) + [self.pad_id] * (w - len(r)) + r for r in rest], device=self.device)
        mask = torch.tensor([[1] * cut + [0] * (w - len(r)) + [1] * len(r) for r in rest], device=self.device)
        cache = DynamicCache(config=self.model.config)
        if cascade:
            cache.layers = [suffix_layer_class()(layer.keys, layer.values) for layer in base.layers]
        else:
            for li, layer in enumerate(base.layers):
                cache.update(layer.keys.expand(len(rows), -1, -1, -1), layer.values.expand(len(rows), -1, -1, -1), li)
        if w > 1:
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            with self._cascade(cache) if cascade else contextlib.nullcontext():
                self.model(
                    input_ids=input_ids[:, cut:-1],
                    attention_mask=mask[:, :-1],
                    position_ids=pos[:, cut:-1],
                    cache=cache,
                    use_cache=True,
                )
        if draws > 1:
            cache.batch_repeat_interleave(draws)
            input_ids, mask = input_ids.repeat_interleave(draws, 0), mask.repeat_interleave(draws, 0)
        return input_ids, mask, cache, cut + w, computed + len(rows) * (w - 1 + draws)
