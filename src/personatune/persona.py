"""The persona file: schema (typed, strict) and loading.

A persona is a YAML file with `name`, `summary`, 5-10 `traits` (each with a description and
>= 3 positive and >= 3 negative utterances), a communication `style`, `behaviors` with optional
machine checks, `facts` and >= 3 example interactions. See docs/persona-definition.md.

Loading is safe (yaml.SafeLoader: no tag runs code), bounded (file size, nesting depth and alias
expansion: personatune.limits, yaml_input.py) and every problem is reported at once, with its field
path and line number, in one `PersonaSpecError`.

Problems are located and worded by personatune.persona_problems (field path -> line, pydantic errors -> plain
words with a fix); the cross-field checks no single field shows are here, beside the schema they complete.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from personatune import limits
from personatune.errors import PersonaSpecError

# format_loc, Loc and PersonaProblem are re-exported: callers and tests import them from personatune.persona.
from personatune.persona_problems import (  # noqa: F401
    Loc,
    PersonaProblem,
    _keys_of,
    _line_map,
    _line_of,
    _problem_from_pydantic,
    _yaml_error_parts,
    format_loc,
)
from personatune.yaml_input import YamlLimitError, load_bounded

ID_RE = re.compile(r"^[a-z][a-z0-9_]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class Trait(_Strict):
    """One core trait. `positive` utterances express it; `negative` ones contradict it."""

    id: str = Field(description="snake_case identifier, unique within the persona")
    description: str = Field(min_length=1, description="one or two sentences: what expressing the trait looks like")
    positive: list[str] = Field(description=">= 3 first-person utterances that express the trait")
    negative: list[str] = Field(description=">= 3 utterances that contradict the trait")
    inverse: str | None = Field(
        default=None,
        description="optional one-line description of the opposite trait (used for trait-flipped contrast data)",
    )

    @field_validator("id")
    @classmethod
    def _snake(cls, v: str) -> str:
        if not ID_RE.match(v):
            raise ValueError(
                f"trait id {v!r} must be snake_case (lowercase letters, digits, underscores; starting with a letter)"
            )
        return v


class Style(_Strict):
    """Communication style: the targets the style features are compared with."""

    formality: Literal["casual", "neutral", "formal"] = Field(default="neutral", description="register of the voice")
    words: tuple[int, int] = Field(default=(20, 120), description="response length range, in words [min, max]")
    signature_phrases: list[str] = Field(default_factory=list, description="phrases the persona uses often")
    avoid_phrases: list[str] = Field(default_factory=list, description="phrases the persona never uses")
    emoji: Literal["never", "sometimes", "often"] = Field(default="never", description="how often emoji appear")
    questions: Literal["never", "sometimes", "often"] | None = Field(
        default=None, description="optional: how often the persona asks questions"
    )
    exclamations: Literal["never", "sometimes", "often"] | None = Field(
        default=None, description="optional: how often the persona exclaims"
    )

    @field_validator("words")
    @classmethod
    def _range(cls, v: tuple[int, int]) -> tuple[int, int]:
        lo, hi = v
        if lo < 1 or hi < lo:
            raise ValueError(f"words must be [min, max] with 1 <= min <= max; got [{lo}, {hi}]")
        return v


class Check(_Strict):
    """A machine check on a response. Every given condition must hold for the check to pass."""

    regex: str | None = Field(
        default=None,
        description="a regex that must match somewhere (case-insensitive; RE2 syntax, matched in linear time: "
        "no lookarounds or backreferences)",
    )
    must_contain: list[str] = Field(
        default_factory=list, description="at least one of these phrases must occur (case-insensitive)"
    )
    never_contain: list[str] = Field(
        default_factory=list, description="none of these phrases may occur (case-insensitive)"
    )
    ends_with_question: bool | None = Field(
        default=None, description="true: the response must end with '?'; false: must not"
    )
    min_words: int | None = Field(default=None, ge=0, description="minimum length in words")
    max_words: int | None = Field(default=None, ge=1, description="maximum length in words")

    @field_validator("regex")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            from personatune.scoring.rule_regex import compile_rule_regex

            compile_rule_regex(v)  # ValueError: not a regex, or one that cannot run in linear time
        return v


class Behavior(_Strict):
    """A behaviour pattern. With a `check` it is a hard rule that `consistent` requires."""

    id: str = Field(description="snake_case identifier, unique")
    description: str = Field(min_length=1, description="one sentence")
    check: Check | None = Field(default=None, description="optional machine check")
    hard: bool = Field(
        default=True, description="a failing hard rule makes a response inconsistent; soft rules are only reported"
    )

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


# ---------------------------------------------------------------------------------------------
# Loading: YAML -> node tree (for line numbers) -> plain data -> schema + cross-field checks.
# ---------------------------------------------------------------------------------------------


def _norm_text(s: str) -> str:
    return " ".join(s.casefold().split())


def _cross_field_problems(data: dict[str, Any], lines: dict[Loc, int]) -> list[PersonaProblem]:
    """Problems no single field shows: duplicates, contradictions, incomplete examples.

    Runs on the raw data, defensively (types may be wrong there too), so these problems are
    reported together with the schema's in one error.
    """
    out: list[PersonaProblem] = []

    def add(loc: Loc, message: str, fix: str) -> None:
        out.append(PersonaProblem(loc, _line_of(lines, loc), message, fix))

    # 1. Traits: unique ids; exemplars non-empty and each used once across the whole persona
    # (a duplicated exemplar would survive its own leave-one-out and inflate separability).
    traits = data.get("traits")
    trait_ids: dict[str, Loc] = {}
    seen_text: dict[str, Loc] = {}
    for i, t in enumerate(traits if isinstance(traits, list) else []):
        if not isinstance(t, dict):
            continue
        tid = t.get("id")
        if isinstance(tid, str):
            if tid in trait_ids:
                add(
                    ("traits", i, "id"),
                    f"duplicate trait id {tid!r} (first used at {format_loc(trait_ids[tid])}, line {_line_of(lines, trait_ids[tid])})",
                    "give every trait a unique id, or merge the two traits",
                )
            else:
                trait_ids[tid] = ("traits", i, "id")
        for key in ("positive", "negative"):
            items = t.get(key)
            for j, u in enumerate(items if isinstance(items, list) else []):
                if not isinstance(u, str):
                    continue
                loc = ("traits", i, key, j)
                if not u.strip():
                    add(loc, "empty utterance", "write an utterance or remove the item")
                    continue
                k = _norm_text(u)
                if k in seen_text:
                    first = seen_text[k]
                    what = (
                        "the same trait's other list" if first[:2] == loc[:2] and first[2] != key else format_loc(first)
                    )
                    add(
                        loc,
                        f"same utterance as {what} (line {_line_of(lines, first)})",
                        "keep each exemplar once: an utterance cannot both express and contradict a trait, and a repeated one inflates the separability check",
                    )
                else:
                    seen_text[k] = loc

    # 2. Style: a phrase cannot be both a signature and avoided.
    style = data.get("style")
    if isinstance(style, dict):
        sig, avoid = style.get("signature_phrases"), style.get("avoid_phrases")
        if isinstance(sig, list) and isinstance(avoid, list):
            sig_norm = {_norm_text(s) for s in sig if isinstance(s, str)}
            for j, a in enumerate(avoid):
                if isinstance(a, str) and _norm_text(a) in sig_norm:
                    add(
                        ("style", "avoid_phrases", j),
                        f"{a!r} is also in style.signature_phrases",
                        "remove it from one of the two lists",
                    )

    # 3. Behaviours: unique ids; a check must state at least one condition and a consistent length range.
    behaviors = data.get("behaviors")
    beh_ids: dict[str, Loc] = {}
    for i, b in enumerate(behaviors if isinstance(behaviors, list) else []):
        if not isinstance(b, dict):
            continue
        bid = b.get("id")
        if isinstance(bid, str):
            if bid in beh_ids:
                add(
                    ("behaviors", i, "id"),
                    f"duplicate behavior id {bid!r} (first used at {format_loc(beh_ids[bid])}, line {_line_of(lines, beh_ids[bid])})",
                    "give every behavior a unique id",
                )
            else:
                beh_ids[bid] = ("behaviors", i, "id")
        chk = b.get("check")
        if isinstance(chk, dict):
            conds = [k for k in Check.model_fields if chk.get(k) not in (None, [], "")]
            if not conds:
                add(
                    ("behaviors", i, "check"),
                    "the check states no condition, so it would pass every response",
                    f"give at least one of {_keys_of(Check)}, or remove `check`",
                )
            lo, hi = chk.get("min_words"), chk.get("max_words")
            if isinstance(lo, int) and isinstance(hi, int) and lo > hi:
                add(
                    ("behaviors", i, "check", "min_words"),
                    f"min_words {lo} is greater than max_words {hi}",
                    "make min_words <= max_words",
                )

    # 4. Examples: each needs a user turn and a later assistant turn (the reply that shows the persona).
    examples = data.get("examples")
    for i, ex in enumerate(examples if isinstance(examples, list) else []):
        msgs = ex.get("messages") if isinstance(ex, dict) else None
        if not isinstance(msgs, list):
            continue
        roles = [m.get("role") for m in msgs if isinstance(m, dict)]
        if len(msgs) < 2:
            continue  # the schema already reports "an example needs at least two turns"
        if "user" not in roles:
            add(("examples", i, "messages"), "no user turn", "add `- role: user` with what the user says")
        elif "assistant" not in roles[roles.index("user") :]:
            add(
                ("examples", i, "messages"),
                "no assistant turn after the user turn",
                "add `- role: assistant` with the persona's reply",
            )
    return out


def persona_from_yaml(text: str, source: str = "<string>") -> PersonaSpec:
    """Parse and validate persona YAML text.

    Args:
        text: the YAML document.
        source: name shown in error messages (the file path).

    Returns:
        The validated persona. Count requirements (5-10 traits, >= 3 exemplars, >= 3 examples) are
        not checked here: they belong to the stage-2 gate, so a draft persona still loads.

    Raises:
        PersonaSpecError: YAML syntax error, a tag SafeLoader refuses (e.g. !!python/object), a limit of
            personatune.limits passed (size, depth, alias expansion), a document that is not a mapping, or
            schema / cross-field problems (all listed at once).
    """
    if len(text) > limits.PERSONA_MAX_BYTES:
        raise PersonaSpecError(
            f"{source}: {len(text):,} characters, more than the limit of {limits.PERSONA_MAX_BYTES:,} "
            "(personatune.limits.PERSONA_MAX_BYTES); fix: a persona needs 5-10 traits with a few exemplars each (about 10 kB)"
        )
    try:
        # Compose first (nodes keep line numbers, and the limits on depth and alias expansion are checked
        # while composing), then construct with SafeLoader's constructors only.
        data, node = load_bounded(text)
    except YamlLimitError as e:
        raise PersonaSpecError(f"{source}: line {e.line}: {e.message}; fix: {e.fix}") from None
    except yaml.constructor.ConstructorError as e:
        where, what = _yaml_error_parts(e)
        if "constructor for the tag" in what:
            raise PersonaSpecError(
                f"{source}: {where}: YAML tag not allowed ({what}); fix: remove the tag — persona files are plain data, "
                "only standard YAML types are read and no tag can run code"
            ) from None
        raise PersonaSpecError(f"{source}: {where}: {what}; fix: correct the YAML at that line") from None
    except yaml.reader.ReaderError as e:
        # A character YAML does not allow (NUL, other control characters): PyYAML gives its offset, not its line.
        line = text.count("\n", 0, max(0, e.position)) + 1
        raise PersonaSpecError(
            f"{source}: line {line}: character {limits.short_repr(chr(e.character) if isinstance(e.character, int) else e.character)} "
            "is not allowed in YAML; fix: delete it (NUL bytes and other control characters cannot appear in a persona file)"
        ) from None
    except yaml.YAMLError as e:
        where, what = _yaml_error_parts(e)
        raise PersonaSpecError(
            f"{source}: YAML syntax error at {where}: {what}; fix: correct the YAML at that line (check indentation, colons and quotes)"
        ) from None
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise PersonaSpecError(
            f"{source}: the file is {kind}, not a mapping; fix: start with `name:`, `summary:` and `traits:` keys (see docs/persona-definition.md)"
        )
    lines, problems = _line_map(node)
    spec: PersonaSpec | None = None
    try:
        spec = PersonaSpec.model_validate(data)
    except ValidationError as e:
        problems += [_problem_from_pydantic(dict(err), lines, PersonaSpec) for err in e.errors()]
    problems += _cross_field_problems(data, lines)
    if problems or spec is None:
        problems.sort(key=lambda p: p.line if p.line is not None else 0)
        n = len(problems)
        shown = limits.ERROR_MAX_LINES - 2
        body = "\n".join("  - " + limits.shorten(p.render()) for p in problems[:shown])
        if n > shown:
            body += f"\n  ... and {n - shown} more problem(s) (fix these first)"
        raise PersonaSpecError(f"{source}: invalid persona file, {n} problem{'s' if n != 1 else ''}:\n{body}")
    return spec


def load_persona(path: str | Path) -> PersonaSpec:
    """Load a persona file safely and validate it.

    Args:
        path: the persona YAML file.

    Returns:
        The validated `PersonaSpec`.

    Raises:
        PersonaSpecError: file missing or unreadable, or any problem listed by `persona_from_yaml`.
    """
    p = Path(path)
    if "\x00" in str(p):
        raise PersonaSpecError(
            f"persona path {limits.short_repr(str(p))} contains a NUL byte; fix: give the path of a persona YAML file"
        )
    if not p.is_file():
        what = "is a folder, not a file" if p.is_dir() else "not found"
        raise PersonaSpecError(
            f"persona file {str(p)!r} {what}; fix: give the path of a persona YAML file (examples in examples/personas/)"
        )
    try:
        size = p.stat().st_size
        if size > limits.PERSONA_MAX_BYTES:
            raise PersonaSpecError(
                f"persona file {str(p)!r} has {size:,} bytes, more than the limit of {limits.PERSONA_MAX_BYTES:,} "
                "(personatune.limits.PERSONA_MAX_BYTES); fix: a persona needs 5-10 traits with a few exemplars each (about 10 kB)"
            )
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PersonaSpecError(
            f"persona file {str(p)!r} is not UTF-8 text (byte {e.start}); fix: save it as UTF-8"
        ) from None
    except OSError as e:
        raise PersonaSpecError(
            f"persona file {str(p)!r} cannot be read ({e.strerror}); fix: check its permissions"
        ) from None
    return persona_from_yaml(text, source=str(p))
