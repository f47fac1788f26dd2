"""Behaviour rules with a machine check: pass/fail per response (persona.py `Check`).

A check passes when every condition it gives holds:

- `regex`: the pattern matches somewhere in the text, case-insensitive, in RE2 syntax and in time linear in
  the text (scoring/rule_regex.py: no pattern can hang a check);
- `must_contain`: at least one of the phrases occurs; `never_contain`: none occurs. Phrases match as in
  scoring/style.py `compile_phrases`: case-insensitive, quotes normalised, at word edges ("AI" does not
  occur in "said"), any whitespace inside a phrase matches any run of whitespace;
- `ends_with_question`: true -> the response ends with '?', false -> it does not; trailing whitespace,
  closing quotes/brackets and emoji are ignored ("Shall we? 🙂" ends with a question);
- `min_words` / `max_words`: the word count of scoring/style.py (`count_words`) is within the bound.

A check with no condition passes. Compile once with `compile_rules` and reuse it across texts.

>>> from personatune.persona import Behavior, Check
>>> rules = compile_rules([Behavior(id="asks_back", description="ends with a question", check=Check(ends_with_question=True))])
>>> rules("What do you think?"), rules("Done.")
({'asks_back': True}, {'asks_back': False})
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from personatune.persona import Behavior, Check
from personatune.scoring.rule_regex import RuleRegex, compile_rule_regex
from personatune.scoring.style import EMOJI_CHARS, compile_phrases, count_words, normalize_quotes

# Whatever may trail the last sentence without changing how it ends. Matched at the start of the
# reversed text: `[...]+$` on the text itself backtracks at every run of these characters (quadratic:
# 2.4 s for 20,000 spaces followed by a letter).
_TRAILING_RE = re.compile(rf"[\s\"')\]»{EMOJI_CHARS}\U0001F3FB-\U0001F3FF\uFE0F\u200D\U0001F1E6-\U0001F1FF]*")


def ends_with_question(text: str) -> bool:
    """True when `text`, without trailing whitespace, closing quotes/brackets and emoji, ends with '?'."""
    t = normalize_quotes(text)
    trailing = _TRAILING_RE.match(t[::-1]).end()  # type: ignore[union-attr]  # `*` always matches
    return t[: len(t) - trailing].endswith("?")


@dataclass(frozen=True)
class _CompiledCheck:
    regex: RuleRegex | None
    must: re.Pattern[str] | None
    never: re.Pattern[str] | None
    ends_q: bool | None
    min_words: int | None
    max_words: int | None

    @classmethod
    def build(cls, check: Check) -> "_CompiledCheck":
        return cls(
            regex=compile_rule_regex(check.regex) if check.regex is not None else None,
            must=compile_phrases(check.must_contain),
            never=compile_phrases(check.never_contain),
            ends_q=check.ends_with_question,
            min_words=check.min_words,
            max_words=check.max_words,
        )

    def __call__(self, text: str, normalized: str, words: Callable[[], int]) -> bool:
        # Cheapest conditions first; every given condition must hold.
        if self.ends_q is not None and ends_with_question(text) != self.ends_q:
            return False
        if self.min_words is not None and words() < self.min_words:
            return False
        if self.max_words is not None and words() > self.max_words:
            return False
        if self.must is not None and self.must.search(normalized) is None:
            return False
        if self.never is not None and self.never.search(normalized) is not None:
            return False
        if self.regex is not None and not self.regex.search(text):
            return False
        return True


class CompiledRules:
    """The machine-checked behaviours of a persona, compiled once; call it on each response.

    Attributes:
        ids: ids of the behaviours that have a check, in persona order.
        hard_ids: those of them that are hard rules.
    """

    def __init__(self, behaviors: Sequence[Behavior]) -> None:
        checked = [b for b in behaviors if b.check is not None]
        self.ids: list[str] = [b.id for b in checked]
        self.hard_ids: list[str] = [b.id for b in checked if b.hard]
        self._checks = [(b.id, _CompiledCheck.build(b.check)) for b in checked if b.check is not None]

    def __call__(self, text: str) -> dict[str, bool]:
        """Pass (True) / fail (False) of each checked behaviour on `text`."""
        normalized = normalize_quotes(text)
        cache: list[int] = []

        def words() -> int:  # counted at most once, and only if a check needs it
            if not cache:
                cache.append(count_words(normalized))
            return cache[0]

        return {bid: chk(text, normalized, words) for bid, chk in self._checks}

    def hard_pass(self, results: dict[str, bool]) -> bool:
        """True when every hard rule in `results` passed."""
        return all(results[i] for i in self.hard_ids)


def compile_rules(behaviors: Sequence[Behavior]) -> CompiledRules:
    """Compile the checks of `behaviors` for reuse across many texts.

    Args:
        behaviors: the persona's behaviours (those without a check are ignored).

    Returns:
        A callable `text -> {behavior id: passed}`.
    """
    return CompiledRules(behaviors)


def check_rules(text: str, behaviors: Sequence[Behavior]) -> dict[str, bool]:
    """Pass/fail of every behaviour that has a machine check (compiles them; prefer `compile_rules` in loops).

    Args:
        text: the response.
        behaviors: the persona's behaviours.

    Returns:
        Behaviour id -> True (passes) / False (fails), only for behaviours with a `check`.
    """
    return CompiledRules(behaviors)(text)


def hard_rule_ids(behaviors: Sequence[Behavior]) -> list[str]:
    """Ids of the behaviours whose failing check makes a response inconsistent (have a check and `hard`).

    Args:
        behaviors: the persona's behaviours.

    Returns:
        The ids, in persona order.
    """
    return [b.id for b in behaviors if b.check is not None and b.hard]
