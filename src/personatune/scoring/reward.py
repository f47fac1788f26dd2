"""The persona reward for TRL trainers: persona consistency times on-task probability (METRICS.md).

Rule (`combine`): reward = consistency × on_task when the prompt is known (the scorer's on_task is not
None), else consistency. Both factors lie in [0,1], so the reward does too; it is 0 when either axis is 0 and
rises with each, so optimisation cannot buy persona with helpfulness: in-voice babble that ignores the
request (high consistency, low on_task) earns little, and so does a helpful answer out of persona.

TRL calls a reward function as `f(prompts=..., completions=..., **dataset_columns) -> list[float]`.
Completions are strings (standard format) or lists of message dicts (conversational format: the
last assistant message is scored). Prompts go to the scorer as they come: a string, or a conversational
list of messages (the scorer answers on_task for its last user turn). Optional dataset columns `context`
and `targets` (a list of trait ids per row) are used when present.
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
    raise DataError(
        f"completion {x!r:.80} is neither a string nor a list of message dicts with 'content'; fix: use TRL's standard or conversational format"
    )


def _prompt(x: Any) -> Any:
    """A prompt as the scorer takes it: a string as it is, a conversational prompt as its list of messages."""
    if isinstance(x, str):
        return x
    if isinstance(x, dict):
        return [x]
    if isinstance(x, Sequence):
        return [dict(m) for m in x]
    raise DataError(
        f"prompt {x!r:.80} is neither a string nor a list of message dicts; fix: use TRL's standard or conversational format"
    )


def combine(consistency: float, on_task: float | None) -> float:
    """The reward of one completion: consistency × on_task, or consistency when on_task is unknown (None).

    >>> combine(0.9, 1.0), combine(0.9, 0.1), combine(0.9, None)
    (0.9, 0.09, 0.9)
    """
    c = float(consistency)
    return c if on_task is None else round(c * float(on_task), 12)


def make_reward_fn(scorer: Any) -> Callable[..., list[float]]:
    """A TRL reward function returning each completion's reward in [0,1]: `combine(consistency, on_task)`.

    Args:
        scorer: a personatune.scoring.scorer.Scorer (anything with the same `score` signature).

    Returns:
        `persona_consistency(completions, **kwargs) -> list[float]`; kwargs may hold `prompts`,
        `context` and `targets` (one per completion); other columns are ignored.

    >>> class _Fake:  # any object with Scorer.score's signature; on_task: does the reply mention the question's last word?
    ...     def score(self, texts, prompts=None, contexts=None, targets=None, ids=None):
    ...         from types import SimpleNamespace
    ...         asks = [None if p is None else (p if isinstance(p, str) else p[-1]["content"]) for p in (prompts or [None] * len(texts))]
    ...         return [SimpleNamespace(consistency=min(1.0, len(t) / 10), on_task=None if a is None else float(a.split()[-1] in t))
    ...                 for t, a in zip(texts, asks)]
    >>> reward = make_reward_fn(_Fake())
    >>> reward.__name__
    'persona_consistency'
    >>> reward(completions=["Aye!", [{"role": "assistant", "content": "Full speed ahead"}]])
    [0.4, 1.0]
    >>> reward(prompts=[[{"role": "user", "content": "how fast"}]] * 2, completions=["Aye, fast as light!", "Aye, the stars are pretty!"])
    [1.0, 0.0]
    """

    def persona_consistency(completions: list[Any], **kwargs: Any) -> list[float]:
        texts = [_text(c) for c in completions]
        prompts = kwargs.get("prompts")
        ctx = kwargs.get("context")
        tg = kwargs.get("targets")
        recs = scorer.score(
            texts,
            prompts=[_prompt(p) for p in prompts] if prompts is not None and len(prompts) == len(texts) else None,
            contexts=list(ctx) if ctx is not None and len(ctx) == len(texts) else None,
            targets=[list(t or []) for t in tg] if tg is not None and len(tg) == len(texts) else None,
        )
        return [combine(r.consistency, getattr(r, "on_task", None)) for r in recs]

    persona_consistency.__name__ = "persona_consistency"
    persona_consistency.__qualname__ = "persona_consistency"
    return persona_consistency
