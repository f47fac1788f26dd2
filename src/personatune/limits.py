"""Size and depth limits on what users hand to personatune, in one place (docs/limits-and-errors.md).

Every limit keeps one careless or hostile input from hanging a command or exhausting memory; each
is far above what a real persona, config or response needs. A limit that is hit is reported as one
line naming the file or field, the size found, this limit and the fix (exit code 2), never as a
traceback. `personatune serve` has its own request limits (ServeLimits, options of the command).

>>> shorten("x" * 1000, 12)
'xxxxxxxxx...'
>>> short_repr(list(range(10_000)), 30)
'[0, 1, 2, 3, 4, 5, ...]'
"""

from __future__ import annotations

import re
import reprlib
from typing import Any

PERSONA_MAX_BYTES = 1024 * 1024
"""Largest persona file (bytes). The example personas are about 11 kB."""
CONFIG_MAX_BYTES = 256 * 1024
"""Largest run config file (bytes). The example configs are under 2 kB."""
YAML_MAX_DEPTH = 32
"""Deepest nesting of mappings and lists in a persona or config file (levels). Real files use 5."""
YAML_MAX_NODES = 20_000
"""Most YAML nodes (scalars, lists, mappings) a persona or config may hold (the example personas have about
300), every alias counted as a full copy of what it points to: a "billion laughs" file is refused before it
is expanded, and a huge plain file within about 2 s of pure-Python parsing."""
YAML_MAX_EXPANDED_CHARS = 4 * 1024 * 1024
"""Most characters of scalar text a persona or config may hold, every alias counted as a full copy."""
JSONL_MAX_LINE_CHARS = 1024 * 1024
"""Longest line of an input JSONL file (`score`, `fit`, `monitor`), in characters; a longer line is skipped and counted."""
TEXT_MAX_CHARS = 32_000
"""Longest text scored as one response (`score`, `fit`, `monitor`), in characters (about 5,000 words);
a longer one is skipped and counted: the scorer's memory grows with the text."""
RULE_REGEX_MAX_CHARS = 2_000
"""Longest `check.regex` of a persona behaviour (characters)."""
ERROR_LINE_MAX_CHARS = 600
"""Longest error line the CLI prints (characters); the rest is cut and marked with '...'."""
ERROR_MAX_LINES = 40
"""Most lines of one error message the CLI prints (a persona file with more problems lists the first ones)."""
SEED_MAX = 2**32 - 1
"""Largest random seed (numpy's seeds are 32-bit)."""
INT_MAX = 2**31 - 1
"""Largest whole number a config field takes (counts, sizes, steps); larger ones overflow torch and numpy."""


def shorten(text: str, limit: int = ERROR_LINE_MAX_CHARS) -> str:
    """`text` cut to at most `limit` characters, ending in '...' when it was cut."""
    return text if len(text) <= limit else text[: max(0, limit - 3)] + "..."


_REPR = reprlib.Repr()
_REPR.maxstring = 60
_REPR.maxother = 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6
_REPR.maxlevel = 3


def short_repr(value: Any, limit: int = 80) -> str:
    """A repr of `value` of at most `limit` characters, built without ever making the full repr.

    A config value expanded from YAML aliases can be millions of items; `repr()` of it first and
    cutting after would take the time and memory the limits are there to prevent.
    """
    return shorten(_REPR.repr(value), limit)


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def text_problem(text: str, field: str) -> str | None:
    """Why `text` cannot be scored, or None: longer than TEXT_MAX_CHARS, or holding a lone surrogate.

    A lone surrogate (`"\\ud800"` is valid JSON) is not Unicode text: the tokenizer refuses it and no
    UTF-8 file can hold it, so the line is skipped with this reason instead of failing the whole command.
    """
    if len(text) > TEXT_MAX_CHARS:
        return f"'{field}' has {len(text):,} characters, more than the limit of {TEXT_MAX_CHARS:,} (personatune.limits.TEXT_MAX_CHARS)"
    hit = _LONE_SURROGATE.search(text)
    if hit:
        return (
            f"'{field}' holds a lone surrogate (U+{ord(hit.group()):04X} at character {hit.start()}), which is not text"
        )
    return None
