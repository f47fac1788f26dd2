"""In-process batched generation with a transformers causal LM (CPU or CUDA).

What `HFBackend.generate` does, in order:
1. Render each conversation with the tokenizer's chat template as text, then tokenize it with
   `add_special_tokens=False` (the template already holds BOS; tokenizing with special tokens
   would double it): `personatune.models.encode_chat`, the project's one implementation.
2. Sort conversations by prompt length (longest first) and cut them into batches of
   `batch_size`: neighbours have similar lengths, so little compute goes to padding.
3. LEFT-pad each batch (decoder-only models continue from the last position, so every prompt
   must end at the same column) with an attention mask; position ids follow the mask.
4. Decode greedily when `temperature == 0`, otherwise sample with `temperature`/`top_p`, n draws
   per prompt, the RNG seeded from `seed` in a forked RNG state so the caller's global RNG is
   untouched. With n > 1 the prompt is prefilled ONCE and its KV cache repeated n times
   (`share_prefill`): `num_return_sequences = n` would prefill every copy, and with a long persona
   system prompt prefill is most of the cost on a CPU (benchmarks/bench_generation.py measures it).
   The draws are the same sequences as with `num_return_sequences` (same batch order, same RNG use),
   up to float rounding. Decoding uses exactly these parameters: the model's own
   generation_config defaults (top_k, repetition_penalty, ...) are not applied, so the HF and
   OpenAI-compatible backends mean the same thing by the same parameters.
5. Stop each sequence at its first EOS (the tokenizer's and the model's EOS ids), drop special
   tokens, strip whitespace, and put results back in the caller's order.

Greedy output is the same whether a prompt is decoded alone or in a padded batch (tested), up to
float rounding in reduced precision.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from personatune.generation import BackendError, Conversation, SamplingParams, check_conversations
from personatune.models import encode_chat


def _as_list(x: Any) -> list[int]:
    if x is None:
        return []
    return [int(v) for v in x] if isinstance(x, (list, tuple)) else [int(x)]


class HFBackend:
    """A `GenerationBackend` around a loaded transformers model and tokenizer.

    Args:
        model: a causal LM (`AutoModelForCausalLM`-like, with `.generate`).
        tokenizer: its tokenizer, with a chat template.
        batch_size: prompts per forward batch (>= 1); with sampling, `batch_size * n` sequences run together.
        device: where to run ("cpu", "cuda", "cuda:1", a torch.device) or None for the model's
            current device. A different device moves the model there.
        share_prefill: with n > 1 draws, prefill each prompt once and repeat its KV cache (step 4).
        progress: called as progress(prompts done, prompts in the call) after each batch, e.g. a
            personatune.progress.EtaLine, so a long generate call shows a rate and an ETA.

    Raises:
        BackendError: batch_size < 1, or the tokenizer has neither a pad nor an EOS token.

    >>> backend = HFBackend(model, tokenizer, batch_size=16)                       # doctest: +SKIP
    >>> backend.generate([[{"role": "user", "content": "Hi"}]], max_new_tokens=16, temperature=0.0)  # doctest: +SKIP
    [['Hello! How can I help you today?']]
    """

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 16, device: Any = None, share_prefill: bool = True,
                 progress: Callable[[int, int], object] | None = None) -> None:
        import torch

        if not isinstance(batch_size, int) or batch_size < 1:
            raise BackendError(f"batch_size={batch_size!r} must be an integer >= 1")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        current = next(model.parameters()).device
        self.device = torch.device(device) if device is not None else current
        if self.device != current:
            model.to(self.device)
        self.eos_ids = sorted(set(_as_list(tokenizer.eos_token_id)) | set(_as_list(getattr(model.generation_config, "eos_token_id", None))))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (self.eos_ids[0] if self.eos_ids else None)
        if pad is None:
            raise BackendError("the tokenizer has neither a pad token nor an EOS token; fix: set tokenizer.pad_token")
        self.pad_id = int(pad)
        self.share_prefill = share_prefill
        self.progress = progress
        self.last_stats: dict[str, float] = {}

    def __repr__(self) -> str:
        name = getattr(getattr(self.model, "config", None), "_name_or_path", "") or type(self.model).__name__
        return f"HFBackend(model={name!r}, batch_size={self.batch_size}, device={str(self.device)!r})"

    def generate(self, conversations: list[Conversation], *, max_new_tokens: int, temperature: float,
                 top_p: float = 1.0, n: int = 1, seed: int | None = None) -> list[list[str]]:
        """`n` completions per conversation, in the caller's order, special tokens stripped.

        Raises:
            BackendError: bad parameters or conversations.
            PersonatuneError: the tokenizer has no chat template (ConfigError from personatune.models).
        """
        ids = self.generate_ids(conversations, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, n=n, seed=seed)
        return [[self.tokenizer.decode(s, skip_special_tokens=True).strip() for s in per] for per in ids]

    def generate_ids(self, conversations: list[Conversation], *, max_new_tokens: int, temperature: float,
                     top_p: float = 1.0, n: int = 1, seed: int | None = None) -> list[list[list[int]]]:
        """Like `generate`, but returns the new token ids of each completion, cut before the first EOS.

        `last_stats` afterwards holds `new_tokens` (tokens actually produced, EOS excluded) and
        `seconds` (wall time), for throughput figures.
        """
        import torch
        from transformers import GenerationConfig

        params = SamplingParams(max_new_tokens, temperature, top_p, n, seed)
        check_conversations(conversations)
        encoded = [encode_chat(self.tokenizer, c, add_generation_prompt=True) for c in conversations]
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        draws = 1 if params.greedy else n
        shared = self.share_prefill and draws > 1
        gen_cfg = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=not params.greedy, num_return_sequences=1 if shared else draws,
            temperature=temperature if not params.greedy else None, top_p=top_p if not params.greedy else None, top_k=None,
            pad_token_id=self.pad_id, eos_token_id=self.eos_ids or None,
        )
        results: list[list[list[int]] | None] = [None] * len(encoded)
        eos = set(self.eos_ids)
        produced = 0
        was_training = self.model.training
        self.model.eval()
        t0 = time.perf_counter()
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        rng = torch.random.fork_rng(devices=cuda) if seed is not None else contextlib.nullcontext()
        try:
            with torch.inference_mode(), rng:
                if seed is not None:
                    torch.manual_seed(seed)
                for start in range(0, len(order), self.batch_size):
                    idx = order[start:start + self.batch_size]
                    width = max(len(encoded[i]) for i in idx)
                    input_ids = torch.tensor([[self.pad_id] * (width - len(encoded[i])) + encoded[i] for i in idx], device=self.device)
                    mask = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in idx], device=self.device)
                    if shared:
                        input_ids, mask, cache = self._prefill(input_ids, mask, draws)
                        out = self.model.generate(input_ids=input_ids, attention_mask=mask, cache=cache, generation_config=gen_cfg)
                    else:
                        out = self.model.generate(input_ids=input_ids, attention_mask=mask, generation_config=gen_cfg)
                    new = out[:, width:].tolist()
                    for j, i in enumerate(idx):
                        seqs = []
                        for row in new[j * draws:(j + 1) * draws]:
                            cut = next((p for p, t in enumerate(row) if t in eos), len(row))
                            seqs.append(row[:cut])
                            produced += cut
                        results[i] = seqs * n if draws == 1 else seqs
                    if self.progress is not None:
                        self.progress(min(start + self.batch_size, len(order)), len(order))
        finally:
            self.model.train(was_training)
        self.last_stats = {"new_tokens": float(produced), "seconds": time.perf_counter() - t0}
        return results  # type: ignore[return-value]

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
        self.model(input_ids=input_ids[:, :-1], attention_mask=mask[:, :-1], position_ids=pos[:, :-1], cache=cache, use_cache=True)
        cache.batch_repeat_interleave(draws)
        return input_ids.repeat_interleave(draws, 0), mask.repeat_interleave(draws, 0), cache
