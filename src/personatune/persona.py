"""The persona file: schema (typed, strict) and loading.

A persona is a YAML file with `name`, `summary`, 5-10 `traits` (each with a description and
>= 3 positive and >= 3 negative utterances), a communication `style`, `behaviors` with optional
machine checks, `facts` and >= 3 example interactions. See docs/persona-definition.md.

Loading is safe (yaml.SafeLoader: no tag runs code) and every problem is reported at once, with
its field path and line number, in one `PersonaSpecError`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

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


# --- loading ------------------------------------------------------------------------------------------
def _line_map(node: Any, path: tuple = (), out: dict[tuple, int] | None = None) -> dict[tuple, int]:
    """Field path (tuple of keys / indices) -> 1-based line number, from a composed YAML node tree."""
    import yaml

    out = {} if out is None else out
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value
            out[path + (key,)] = k.start_mark.line + 1
            _line_map(v, path + (key,), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out[path + (i,)] = v.start_mark.line + 1
            _line_map(v, path + (i,), out)
    return out


def _line_of(lines: dict[tuple, int], loc: tuple) -> int | None:
    """Line of the deepest existing prefix of `loc` (a missing field points at its parent)."""
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def _fmt_path(loc: tuple) -> str:
    s = ""
    for p in loc:
        s += f"[{p}]" if isinstance(p, int) else (f".{p}" if s else str(p))
    return s or "(top level)"


def _cross_field_problems(data: dict[str, Any]) -> list[tuple[tuple, str]]:
    """Problems pydantic cannot see field by field: duplicate ids, examples without both roles."""
    out: list[tuple[tuple, str]] = []
    for key in ("traits", "behaviors"):
        seen: dict[str, int] = {}
        items = data.get(key)
        if isinstance(items, list):
            for i, it in enumerate(items):
                if isinstance(it, dict) and isinstance(it.get("id"), str):
                    if it["id"] in seen:
                        out.append(((key, i, "id"), f"duplicate id {it['id']!r} (first used at {key}[{seen[it['id']]}]); give each a unique id"))
                    else:
                        seen[it["id"]] = i
    examples = data.get("examples")
    if isinstance(examples, list):
        for i, ex in enumerate(examples):
            msgs = ex.get("messages") if isinstance(ex, dict) else None
            if isinstance(msgs, list):
                roles = {m.get("role") for m in msgs if isinstance(m, dict)}
                if not {"user", "assistant"} <= roles:
                    out.append((("examples", i, "messages"), "needs at least one user and one assistant turn"))
    return out


def load_persona(path: str | Path) -> PersonaSpec:
    """Load and validate a persona file.

    YAML is read with `yaml.SafeLoader` (no tag can construct Python objects). Every problem is
    collected and reported together.

    Raises:
        PersonaSpecError: one message listing every problem as `field.path (line N): problem`.
    """
    import yaml
    from pydantic import ValidationError

    from personatune.errors import PersonaSpecError

    p = Path(path)
    if not p.is_file():
        raise PersonaSpecError(f"persona file {p} not found; fix: pass the path of a persona YAML (see examples/personas/)")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PersonaSpecError(f"persona file {p} cannot be read as UTF-8 text ({e}); fix: save it as UTF-8 YAML") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.load(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise PersonaSpecError(f"{p}{where}: not valid YAML: {problem}; fix the syntax there (python tags are not allowed)") from None
    if not isinstance(data, dict):
        raise PersonaSpecError(f"{p}: the top level must be a mapping with keys name, summary, traits, style, behaviors, facts, examples "
                               f"(got {type(data).__name__})")
    lines = _line_map(node) if node is not None else {}
    problems: list[tuple[tuple, str]] = []
    spec = None
    try:
        spec = PersonaSpec.model_validate(data)
    except ValidationError as e:
        for err in e.errors():
            loc = tuple(err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                import difflib

                parent = PersonaSpec
                for part in loc[:-1]:
                    if isinstance(part, str):
                        f = getattr(parent, "model_fields", {}).get(part)
                        ann = getattr(f, "annotation", None)
                        inner = getattr(ann, "__args__", (ann,))
                        parent = next((a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)), parent)
                valid = list(getattr(parent, "model_fields", {}))
                close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
                msg = f"unknown key{f'; did you mean {close[0]!r}?' if close else ''} (valid: {', '.join(valid)})"
            elif err["type"] == "missing":
                msg = "required field is missing"
            else:
                inp = err.get("input")
                if not isinstance(inp, (dict, list)):
                    msg += f" (got {inp!r})"
            problems.append((loc, msg))
    problems += _cross_field_problems(data)
    if problems:
        parts = []
        for loc, msg in sorted(problems, key=lambda x: (_line_of(lines, x[0]) or 0)):
            line = _line_of(lines, loc)
            parts.append(f"{_fmt_path(loc)}{f' (line {line})' if line else ''}: {msg}")
        raise PersonaSpecError(f"{p}: {len(parts)} problem{'s' if len(parts) > 1 else ''}: " + "; ".join(parts))
    if spec is None:  # unreachable: validation errors are always listed above
        raise PersonaSpecError(f"{p}: invalid persona file")
    return spec
