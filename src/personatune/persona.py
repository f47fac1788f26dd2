"""The persona file: schema (typed, strict) and loading.

A persona is a YAML file with `name`, `summary`, 5-10 `traits` (each with a description and
>= 3 positive and >= 3 negative utterances), a communication `style`, `behaviors` with optional
machine checks, `facts` and >= 3 example interactions. See docs/persona-definition.md.

Loading is safe (yaml.SafeLoader: no tag runs code) and every problem is reported at once, with
its field path and line number, in one `PersonaSpecError`.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ID_RE = re.compile(r"^[a-z][a-z0-9_]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class Trait(_Strict):
    """One core trait. `positive` utterances express it; `negative` ones contradict it."""

    id: str = Field(description="snake_case identifier, unique within the persona")
    description: str = Field(min_length=1, description="one or two sentences: what expressing the trait looks like")
    positive: list[str] = Field(description=">= 3 first-person utterances that express the trait")
    negative: list[str] = Field(description=">= 3 utterances that contradict the trait")
    inverse: str | None = Field(default=None, description="optional one-line description of the opposite trait (used for trait-flipped contrast data)")

    @field_validator("id")
    @classmethod
    def _snake(cls, v: str) -> str:
        if not ID_RE.match(v):
            raise ValueError(f"trait id {v!r} must be snake_case (lowercase letters, digits, underscores; starting with a letter)")
        return v


class Style(_Strict):
    """Communication style: the targets the style features are compared with."""

    formality: Literal["casual", "neutral", "formal"] = Field(default="neutral", description="register of the voice")
    words: tuple[int, int] = Field(default=(20, 120), description="response length range, in words [min, max]")
    signature_phrases: list[str] = Field(default_factory=list, description="phrases the persona uses often")
    avoid_phrases: list[str] = Field(default_factory=list, description="phrases the persona never uses")
    emoji: Literal["never", "sometimes", "often"] = Field(default="never", description="how often emoji appear")
    questions: Literal["never", "sometimes", "often"] | None = Field(default=None, description="optional: how often the persona asks questions")
    exclamations: Literal["never", "sometimes", "often"] | None = Field(default=None, description="optional: how often the persona exclaims")

    @field_validator("words")
    @classmethod
    def _range(cls, v: tuple[int, int]) -> tuple[int, int]:
        lo, hi = v
        if lo < 1 or hi < lo:
            raise ValueError(f"words must be [min, max] with 1 <= min <= max; got [{lo}, {hi}]")
        return v


class Check(_Strict):
    """A machine check on a response. Every given condition must hold for the check to pass."""

    regex: str | None = Field(default=None, description="a Python regex that must match somewhere (re.search, case-insensitive)")
    must_contain: list[str] = Field(default_factory=list, description="at least one of these phrases must occur (case-insensitive)")
    never_contain: list[str] = Field(default_factory=list, description="none of these phrases may occur (case-insensitive)")
    ends_with_question: bool | None = Field(default=None, description="true: the response must end with '?'; false: must not")
    min_words: int | None = Field(default=None, ge=0, description="minimum length in words")
    max_words: int | None = Field(default=None, ge=1, description="maximum length in words")

    @field_validator("regex")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"regex {v!r} does not compile: {e}") from None
        return v


class Behavior(_Strict):
    """A behaviour pattern. With a `check` it is a hard rule that `consistent` requires."""

    id: str = Field(description="snake_case identifier, unique")
    description: str = Field(min_length=1, description="one sentence")
    check: Check | None = Field(default=None, description="optional machine check")
    hard: bool = Field(default=True, description="a failing hard rule makes a response inconsistent; soft rules are only reported")

    @field_validator("id")
    @classmethod
    def _snake(cls, v: str) -> str:
        if not ID_RE.match(v):
            raise ValueError(f"behavior id {v!r} must be snake_case")
        return v


class Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1)


class Example(_Strict):
    """One example interaction (multi-turn allowed); must contain a user and an assistant turn."""

    messages: list[Message] = Field(min_length=2)
    context: str | None = Field(default=None, description="optional context label (e.g. casual, technical)")


class PersonaSpec(_Strict):
    """A whole persona file."""

    name: str = Field(min_length=1)
    summary: str = Field(min_length=1, description="one paragraph: who the persona is")
    traits: list[Trait]
    style: Style = Field(default_factory=Style)
    behaviors: list[Behavior] = Field(default_factory=list)
    facts: list[str] = Field(default_factory=list, description="statements the persona must never contradict")
    examples: list[Example] = Field(default_factory=list)

    @property
    def trait_ids(self) -> list[str]:
        return [t.id for t in self.traits]

    def trait(self, trait_id: str) -> Trait:
        for t in self.traits:
            if t.id == trait_id:
                return t
        raise KeyError(trait_id)
