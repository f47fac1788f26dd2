"""The persona reward for TRL trainers: `consistency` of each completion (METRICS.md).

TRL calls a reward function as `f(prompts=..., completions=..., **dataset_columns) -> list[float]`.
Completions are strings (standard format) or lists of message dicts (conversational format: the
last assistant message is scored). Optional dataset columns `context` and `targets` (a list of trait
ids per row) are used when present; `prompts` is passed to the scorer (the judge sees it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from personatune.errors import DataError


def _text(x: Any) -> str:
    """The text of a completion or prompt: a string, or the last message of a conversational list."""
    if isinstance(x, str):
        return x
    if isinstance(x, dict) and isinstance(x.get("content"), str):
        return x["content"]
    if isinstance(x, Sequence) and x:
        last = x[-1]
        if isinstance(last, dict) and isinstance(last.get("content"), str):
            return last["content"]
    if isinstance(x, Sequence) and not x:
        return ""
    raise DataError(f"completion {x!r:.80} is neither a string nor a list of message dicts with 'content'; fix: use TRL's standard or conversational format")


def make_reward_fn(scorer: Any) -> Callable[..., list[float]]:
    """A TRL reward function returning each completion's `consistency` in [0,1].

    Args:
        scorer: a personatune.scoring.scorer.Scorer (anything with the same `score` signature).

    Returns:
        `persona_consistency(completions, **kwargs) -> list[float]`; kwargs may hold `prompts`,
        `context` and `targets` (one per completion); other columns are ignored.

    >>> class _Fake:  # any object with Scorer.score's signature
    ...     def score(self, texts, prompts=None, contexts=None, targets=None, ids=None):
    ...         from types import SimpleNamespace
    ...         return [SimpleNamespace(consistency=min(1.0, len(t) / 10)) for t in texts]
    >>> reward = make_reward_fn(_Fake())
    >>> reward.__name__
    'persona_consistency'
    >>> reward(completions=["Aye!", [{"role": "assistant", "content": "Full speed ahead"}]])
    [0.4, 1.0]
    """

    def persona_consistency(completions: list[Any], **kwargs: Any) -> list[float]:
        texts = [_text(c) for c in completions]
        prompts = kwargs.get("prompts")
        ctx = kwargs.get("context")
        tg = kwargs.get("targets")
        recs = scorer.score(texts,
                            prompts=[_text(p) for p in prompts] if prompts is not None and len(prompts) == len(texts) else None,
                            contexts=list(ctx) if ctx is not None and len(ctx) == len(texts) else None,
                            targets=[list(t or []) for t in tg] if tg is not None and len(tg) == len(texts) else None)
        return [float(r.consistency) for r in recs]

    persona_consistency.__name__ = "persona_consistency"
    persona_consistency.__qualname__ = "persona_consistency"
    return persona_consistency
