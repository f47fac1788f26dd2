"""The `regex` of a behaviour check, run in time linear in the text (RE2), never by backtracking.

Python's `re` backtracks: a pattern such as `(a+)+$` takes longer than the age of the universe on a
35-character text, holding the GIL all the while, so one persona rule could hang `validate`,
`score`, `monitor` and every endpoint of `serve` (/health included). RE2 (the `google-re2` package)
matches in time linear in the text for every pattern it accepts, and refuses, when the pattern is
compiled, the few features that need backtracking (lookarounds, backreferences). Measured
against the `regex` package's per-match timeout in docs/benchmarks.md ("Bounded rule regexes"):
both are bounded; RE2 gives the same answer on every machine (a timeout's answer depends on the
machine's speed and load) and stays linear where `regex` hits its timeout.

Differences from Python's `re` a persona author may meet (docs/persona-definition.md):
no lookarounds or backreferences; `\\Z` is written `\\z`; `\\w`, `\\d`, `\\b` are ASCII only
(`\\pL` is any letter); `$` matches only at the very end of the text.

>>> rx = compile_rule_regex(r"(a+)+$")
>>> rx.search("a" * 35 + "b")
False
>>> compile_rule_regex(r"(?<!not )sure")
Traceback (most recent call last):
...
ValueError: regex '(?<!not )sure' is not supported by the rule engine, which matches in linear time (RE2: invalid perl operator: (?<!)
"""

from __future__ import annotations

import re

import re2

from personatune import limits

_SURROGATES = re.compile("[\ud800-\udfff]")


def _options() -> re2.Options:
    opts = re2.Options()
    opts.case_sensitive = False  # checks are case-insensitive, as with re.IGNORECASE before
    opts.log_errors = False  # RE2 would print its own error lines on stderr
    opts.never_capture = True  # only "is there a match" is asked: no groups needed
    return opts


class RuleRegex:
    """A compiled rule regex: `search(text)` is True when it matches anywhere in `text` (case-insensitive)."""

    def __init__(self, pattern: str, compiled: "re2._Regexp") -> None:
        self.pattern = pattern
        self._compiled = compiled

    def search(self, text: str) -> bool:
        # RE2 works on UTF-8; a lone surrogate (valid in a JSON string, not in UTF-8) cannot be encoded.
        if _SURROGATES.search(text):
            text = _SURROGATES.sub("\ufffd", text)
        return self._compiled.search(text) is not None


def compile_rule_regex(pattern: str) -> RuleRegex:
    """Compile a behaviour check's regex for linear-time matching.

    Args:
        pattern: the pattern as written in the persona file.

    Returns:
        The compiled RuleRegex.

    Raises:
        ValueError: the pattern is not a valid regex, is longer than limits.RULE_REGEX_MAX_CHARS, or
            uses a feature RE2 does not support (one that needs backtracking; the message says which, RE2_FIX how to rewrite it).
    """
    if len(pattern) > limits.RULE_REGEX_MAX_CHARS:
        raise ValueError(
            f"regex of {len(pattern)} characters is longer than the limit of {limits.RULE_REGEX_MAX_CHARS} (personatune.limits.RULE_REGEX_MAX_CHARS)"
        )
    try:
        re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as e:
        raise ValueError(f"regex {limits.short_repr(pattern)} does not compile: {e}") from None
    try:
        compiled = re2.compile(pattern, _options())
    except re2.error as e:
        why = (e.args[0].decode("utf-8", "replace") if e.args and isinstance(e.args[0], bytes) else str(e)) or "refused"
        raise ValueError(
            f"regex {limits.short_repr(pattern)} is not supported by the rule engine, which matches in linear time (RE2: {why})"
        ) from None
    return RuleRegex(pattern, compiled)


RE2_FIX = (
    "rewrite it in RE2 syntax: no lookarounds (?= (?! (?<= (?<! and no backreferences \\1, \\z instead of \\Z, repetition counts "
    "up to 1000; or use must_contain / never_contain (docs/persona-definition.md)"
)
"""The fix shown when RE2 refuses a pattern that Python's `re` accepts."""
