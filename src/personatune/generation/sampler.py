"""Temperature + nucleus (top-p) sampling over the nucleus only, as a transformers logits processor.

transformers' sampling (`do_sample=True`) sorts the whole vocabulary for top-p and draws with
`torch.multinomial` over the whole vocabulary, masked tokens included; on a CPU, with SmolLM2's 49,152
tokens and 32 sequences, those two were a third of a sampled decoding step (a greedy step 353 ms, a sampled one 531
ms; `benchmarks/bench_sampler.py`, docs/benchmarks.md "Sampling over the nucleus only"). `NucleusSampler` draws
from the same distribution at the cost of a top-k: the nucleus is found among the `candidates` most likely
tokens (16x more, then all of the vocabulary, while some row's nucleus is not inside them), the draw is made among those,
and the processor returns scores that are 0 at the drawn token and -inf elsewhere, so generation runs
with `do_sample=False` and its argmax takes the draw.

The distribution is transformers' `TemperatureLogitsWarper` then `TopPLogitsWarper` then softmax (tested
against them): a token is in the nucleus when the tokens strictly more likely than it hold less than
`top_p` of the mass, the most likely token always. The draws differ from transformers' (another use of
the RNG), not their distribution.
"""

from __future__ import annotations

from typing import Any


def nucleus(scores: Any, temperature: float, top_p: float, candidates: int = 256) -> tuple[Any, Any]:
    """(probabilities, token ids), each [batch, k]: the renormalised nucleus of softmax(scores / temperature) per row,
    most likely first, zero-padded to the widest row's nucleus (k <= vocabulary). While some row's nucleus is not inside
    the `candidates` most likely tokens, they grow 16x (at most to the whole vocabulary)."""
    import torch

    probs = torch.softmax(scores.float() / temperature, dim=-1)
    vocab = probs.shape[-1]
    k = min(max(1, candidates), vocab)
    while True:
        top, ids = probs.topk(k, dim=-1)
        before = top.cumsum(-1) - top  # mass of the tokens more likely than each
        keep = before < top_p
        keep[:, 0] = True
        if k == vocab or not bool(keep[:, -1].any()):
            break
        # Some row's nucleus reaches past the candidates: 16x more, then the whole vocabulary. (SmolLM2 at T 0.8, top-p
        # 0.95, 32 rows: a nucleus wider than 256 tokens in 36 % of the steps, wider than 4,096 in none of 64.)
        k = min(vocab, k * 16)
    width = int(keep.sum(-1).max())
    top, ids, keep = top[:, :width], ids[:, :width], keep[:, :width]
    w = top * keep
    return w / w.sum(-1, keepdim=True), ids


class NucleusSampler:
    """A transformers `LogitsProcessor` (the `__call__(input_ids, scores)` protocol) that draws the next token with
    `temperature` and `top_p` and returns scores whose argmax is the draw (0 there, -inf elsewhere): pass it in
    `logits_processor=` with `do_sample=False`. The draw uses torch's global RNG (seed it, or fork it, around the call).

    >>> out = model.generate(ids, do_sample=False, logits_processor=LogitsProcessorList([NucleusSampler(0.8, 0.95)]))  # doctest: +SKIP
    """

    def __init__(self, temperature: float, top_p: float = 1.0, candidates: int = 256) -> None:
        if not temperature > 0:
            raise ValueError(f"temperature={temperature!r} must be > 0 (0 is greedy: no sampler)")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p={top_p!r} must be in (0, 1]")
        self.temperature, self.top_p, self.candidates = temperature, top_p, candidates

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if self.top_p >= 1:  # no nucleus: the whole distribution, as transformers draws it
            drawn = torch.multinomial(torch.softmax(scores.float() / self.temperature, dim=-1), 1)
        else:
            probs, ids = nucleus(scores, self.temperature, self.top_p, self.candidates)
            drawn = ids.gather(-1, torch.multinomial(probs, 1))
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(-1, drawn, 0.0)
