"""Text generation backends: one shape, two implementations, one resumable cache.

- `hf.HFBackend`: in-process, batched, left-padded generation with a transformers model (CPU or CUDA).
- `openai_compat.OpenAIBackend`: any OpenAI-compatible chat-completions server (OpenAI, vLLM,
  Ollama, llama.cpp server), async with a concurrency limit, retries and an on-disk cache.
- `cache.ResponseCache`: the append-only JSONL cache that makes long generations resumable.

Both backends satisfy `GenerationBackend`; callers (stages, capability suite, judges) depend on
the Protocol only, never on a concrete class.

>>> backend.generate([[{"role": "user", "content": "Hi!"}]], max_new_tokens=16, temperature=0.0)  # doctest: +SKIP
[['Hello! How can I help you today?']]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

from personatune.errors import PersonatuneError

Conversation = list[dict[str, str]]
"""An OpenAI-style message list: [{"role": "system"|"user"|"assistant", "content": str}, ...]."""


class BackendError(PersonatuneError):
    """A generation backend cannot do its job: server unreachable, request rejected, bad parameters."""


@runtime_checkable
class GenerationBackend(Protocol):
    """Anything that turns conversations into completions.

    `generate` returns, for each conversation (in the caller's order), a list of `n` completion
    texts with special tokens stripped. `temperature == 0` means greedy decoding.
    """

    def generate(
        self,
        conversations: list[Conversation],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float = 1.0,
        n: int = 1,
        seed: int | None = None,
    ) -> list[list[str]]: ...


@dataclass(frozen=True)
class SamplingParams:
    """Decoding parameters shared by every backend (and part of every cache key).

    Attributes:
        max_new_tokens: upper bound on generated tokens per completion (count, >= 1).
        temperature: softmax temperature (>= 0); 0 means greedy decoding.
        top_p: nucleus-sampling mass in (0, 1]; 1 disables it. Ignored when greedy.
        n: completions per conversation (count, >= 1).
        seed: base random seed for sampling, or None for fresh randomness.
    """

    max_new_tokens: int
    temperature: float
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            problems.append(f"max_new_tokens={self.max_new_tokens!r} must be an integer >= 1")
        if self.temperature < 0:
            problems.append(f"temperature={self.temperature!r} must be >= 0 (0 = greedy)")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p={self.top_p!r} must be in (0, 1]")
        if not isinstance(self.n, int) or self.n < 1:
            problems.append(f"n={self.n!r} must be an integer >= 1")
        if problems:
            raise BackendError("invalid generation parameters: " + "; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_conversations(conversations: list[Conversation]) -> None:
    """Reject malformed conversations before any work is done (one error listing every problem).

    Raises:
        BackendError: a conversation is empty, or a message lacks a string role/content.
    """
    problems = []
    for i, conv in enumerate(conversations):
        if not isinstance(conv, list) or not conv:
            problems.append(f"conversations[{i}] must be a non-empty list of messages")
            continue
        for j, m in enumerate(conv):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                problems.append(f"conversations[{i}][{j}] must be a dict with string 'role' and 'content'")
        if len(problems) >= 5:
            break
    if problems:
        raise BackendError("invalid conversations: " + "; ".join(problems[:5]))


__all__ = ["BackendError", "Conversation", "GenerationBackend", "SamplingParams", "check_conversations"]
