"""Problems in a persona file, each with its field path, its line and a fix.

YAML is composed to a node tree first, so every field path maps to the line that names it (`_line_map`, which
also reports duplicate keys that SafeLoader would silently merge); pydantic's validation errors are then turned
into plain-words problems with a concrete fix (`_problem_from_pydantic`). personatune.persona collects them all
into one PersonaSpecError.
"""

from __future__ import annotations

import difflib
import re
import types
from dataclasses import dataclass
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class PersonaProblem:
    """One problem in a persona file.

    Attributes:
        loc: field path as keys and list indices, e.g. ("traits", 0, "positive").
        line: 1-based line in the file (of the field, or of the nearest enclosing one that exists).
        message: what is wrong.
        fix: what to change.
    """

    loc: Loc
    line: int | None
    message: str
    fix: str

    @property
    def path(self) -> str:
        return format_loc(self.loc)

    def render(self) -> str:
        where = f" (line {self.line})" if self.line is not None else ""
        return f"{self.path}{where}: {self.message}; fix: {self.fix}"


def format_loc(loc: Loc) -> str:
    """("traits", 0, "positive", 2) -> "traits[0].positive[2]"; the empty path is "(top level)"."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _line_map(node: yaml.Node) -> tuple[dict[Loc, int], list[PersonaProblem]]:
    """Field path -> 1-based line, from the composed node tree; also reports duplicate mapping keys.

    A mapping entry maps to the line of its key (where the field is named), a list item to the line
    where the item starts. SafeLoader silently keeps the last of two equal keys; we report it instead.
    """
    lines: dict[Loc, int] = {(): node.start_mark.line + 1}
    dups: list[PersonaProblem] = []

    def walk(n: yaml.Node, loc: Loc) -> None:
        if isinstance(n, yaml.MappingNode):
            seen: dict[str, int] = {}
            for k, v in n.value:
                key = str(k.value) if isinstance(k, yaml.ScalarNode) else f"<{k.tag}>"
                line = k.start_mark.line + 1
                if key in seen:
                    dups.append(
                        PersonaProblem(
                            loc + (key,),
                            line,
                            f"key {key!r} appears twice in this mapping (lines {seen[key]} and {line}); only the last would count",
                            "keep one of them",
                        )
                    )
                seen[key] = line
                lines[loc + (key,)] = line
                walk(v, loc + (key,))
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                lines[loc + (i,)] = item.start_mark.line + 1
                walk(item, loc + (i,))

    walk(node, ())
    return lines, dups


def _line_of(lines: dict[Loc, int], loc: Loc) -> int | None:
    # The longest prefix of `loc` that exists in the file: a missing field points at its parent.
    for k in range(len(loc), -1, -1):
        if loc[:k] in lines:
            return lines[loc[:k]]
    return None


def _unwrap(ann: Any) -> Any:
    """`X | None` -> X (first non-None member of a union); anything else unchanged."""
    if get_origin(ann) in (Union, types.UnionType):
        members = [a for a in get_args(ann) if a is not type(None)]
        return members[0] if members else ann
    return ann


def _model_at(root: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The schema model describing the value at `loc` under `root` (None when that value is not a model)."""
    cur: Any = root
    for part in loc:
        cur = _unwrap(cur)
        if isinstance(part, int):
            args = get_args(cur)
            if get_origin(cur) is not list or not args:
                return None
            cur = args[0]
        elif isinstance(cur, type) and issubclass(cur, BaseModel) and part in cur.model_fields:
            cur = cur.model_fields[part].annotation
        else:
            return None
    cur = _unwrap(cur)
    return cur if isinstance(cur, type) and issubclass(cur, BaseModel) else None


def _keys_of(model: type[BaseModel]) -> str:
    return ", ".join(model.model_fields)


def _value_fix(name: str | int, got: Any) -> str:
    """The fix for a failed field validator, by field name."""
    if name == "id" and isinstance(got, str):
        suggestion = re.sub(r"[^a-z0-9]+", "_", got.strip().lower()).strip("_")
        suggestion = suggestion if suggestion and suggestion[0].isalpha() else f"t_{suggestion}".rstrip("_")
        return f"rename it, e.g. {suggestion!r}"
    if name == "regex":
        from personatune.scoring.rule_regex import RE2_FIX

        try:
            re.compile(str(got))
        except (re.error, RecursionError, OverflowError):
            return "correct the pattern (escape literal characters such as ( ) [ ] ? . with a backslash)"
        return RE2_FIX
    if name == "words":
        return "write [min, max] with 1 <= min <= max, e.g. [20, 120]"
    return "change the value as described"


def _problem_from_pydantic(err: dict[str, Any], lines: dict[Loc, int], root: type[BaseModel]) -> PersonaProblem:
    """Turn one pydantic error of validating `root` into a problem with a plain-words message and a concrete fix."""
    loc: Loc = tuple(err["loc"])
    kind = err["type"]
    msg = str(err["msg"]).removeprefix("Value error, ")
    got = err.get("input")
    got_s = repr(got) if len(repr(got)) <= 60 else repr(got)[:57] + "..."
    line = _line_of(lines, loc)
    parent = _model_at(root, loc[:-1]) if loc else None
    name = loc[-1] if loc else ""
    if kind == "missing":
        if isinstance(name, int):
            return PersonaProblem(
                loc, line, "item missing", "give exactly the items this list needs (see docs/persona-definition.md)"
            )
        desc = parent.model_fields[name].description if parent is not None and name in parent.model_fields else None
        return PersonaProblem(loc, line, "required field is missing", f"add `{name}:`" + (f" ({desc})" if desc else ""))
    if kind == "extra_forbidden":
        valid = list(parent.model_fields) if parent is not None else []
        close = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return PersonaProblem(loc, line, f"unknown key {name!r}", f"{hint}valid keys here: {', '.join(valid)}")
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        model = _model_at(root, loc)
        keys = f" with keys {_keys_of(model)}" if model is not None else ""
        return PersonaProblem(loc, line, f"expected a mapping, got {got_s}", f"write it as `key: value` lines{keys}")
    if kind == "list_type":
        return PersonaProblem(loc, line, f"expected a list, got {got_s}", "write a YAML list, one `- item` per line")
    if kind in ("string_type", "string_sub_type"):
        return PersonaProblem(
            loc,
            line,
            f"expected text, got {got_s}",
            "write text; quote it if YAML would read it as a number, date, yes/no or null",
        )
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return PersonaProblem(loc, line, f"expected a whole number, got {got_s}", "write an integer such as 40")
    if kind in ("bool_type", "bool_parsing"):
        return PersonaProblem(loc, line, f"expected true or false, got {got_s}", "write true or false")
    if kind == "literal_error":
        return PersonaProblem(
            loc,
            line,
            f"{got_s} is not allowed",
            f"use one of {err.get('ctx', {}).get('expected', 'the documented values')}",
        )
    if kind == "too_short" and name == "messages":
        return PersonaProblem(
            loc,
            line,
            "an example needs at least two turns",
            "give a `- role: user` turn followed by a `- role: assistant` turn",
        )
    if kind in ("too_short", "string_too_short"):
        return PersonaProblem(loc, line, msg, "fill it in" if kind == "string_too_short" else "add the missing items")
    if kind in ("too_long", "string_too_long"):
        return PersonaProblem(loc, line, msg, "remove the extra items")
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        return PersonaProblem(loc, line, f"{msg}, got {got_s}", "change the number to meet that bound")
    if kind in ("tuple_type",):
        return PersonaProblem(
            loc, line, f"expected a list [min, max], got {got_s}", "write it as [min, max], e.g. [20, 120]"
        )
    if kind == "value_error":
        return PersonaProblem(loc, line, msg, _value_fix(name, got))
    return PersonaProblem(loc, line, f"{msg} (got {got_s})", "see docs/persona-definition.md for this field")


def _yaml_error_parts(e: yaml.YAMLError) -> tuple[str, str]:
    """(where, what) of a PyYAML error: "line L, column C" and the problem in words."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "unknown line"
    parts = [str(x) for x in (getattr(e, "context", None), getattr(e, "problem", None)) if x]
    return where, " ".join(parts) or str(e).splitlines()[0]
