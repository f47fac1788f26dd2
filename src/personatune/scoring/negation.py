"""Rule-based negation: flip the polarity of short first-person utterances, and detect negation cues.

Sentence embeddings place "I love parties" and "I don't love parties" almost on top of each other,
so a detector trained only on the persona's exemplars cannot tell them apart. The trait detectors
(scoring/traits.py) therefore (1) augment their training data with the negation of every exemplar,
carrying the opposite label, and (2) add a negation-cue feature so that a linear model can learn how
a cue changes what an embedding means.

The rules are deliberately small and predictable: one edit per utterance, at the earliest place a
rule applies. Removing a negation ("I don't like" -> "I do like", "never" -> "always") is tried as
well as adding one ("I like" -> "I don't like", "I am" -> "I am not", "often" -> "rarely"). When no
rule applies, `negate` returns None and the utterance is simply not augmented.

>>> negate("I love meeting new people.")
"I don't love meeting new people."
>>> negate("I never miss a deadline.")
'I always miss a deadline.'
>>> negate("I am calm under pressure.")
'I am not calm under pressure.'
>>> has_negation("I don't love parties"), has_negation("I love parties")
(1.0, 0.0)
"""

from __future__ import annotations

import re

# Words and suffixes that mark negation; "rarely"/"seldom"/"hardly" flip polarity as well.
_CUE_RE = re.compile(
    r"\b(?:not|no|never|nobody|nothing|none|neither|nor|nowhere|cannot|rarely|seldom|hardly|without)\b|n['’]t\b",
    re.IGNORECASE,
)

# Removing a negation: pattern -> replacement (case of the first letter is kept).
_REMOVE: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\b(do|does|did|is|are|was|were|can|could|will|would|should|must|have|has|had)\s+not\b", re.I), r"\1"),
    (re.compile(r"\bcannot\b", re.I), "can"),
    (re.compile(r"\bwon['’]t\b", re.I), "will"),
    (re.compile(r"\bcan['’]t\b", re.I), "can"),
    (re.compile(r"\b(do|does|did|is|are|was|were|could|would|should|must|have|has|had)n['’]t\b", re.I), r"\1"),
    (re.compile(r"\b(am|['’]m)\s+not\b", re.I), r"\1"),
    (re.compile(r"\bnever\b", re.I), "always"),
    (re.compile(r"\b(?:rarely|seldom|hardly ever)\b", re.I), "often"),
    (re.compile(r"\b(?:nobody|no one)\b", re.I), "everyone"),
    (re.compile(r"\bnothing\b", re.I), "everything"),
    (re.compile(r"\bnot\s+", re.I), ""),
]

_AUX_NEG = {"am": "am not", "is": "isn't", "are": "aren't", "was": "wasn't", "were": "weren't", "can": "can't",
            "could": "couldn't", "will": "won't", "would": "wouldn't", "should": "shouldn't", "must": "mustn't",
            "may": "may not", "might": "might not"}
_AUX = "|".join(_AUX_NEG)


def _aux(m: re.Match[str]) -> str:
    aux = m.group(m.lastindex or 0)
    neg = _AUX_NEG[aux.lower()]
    return m.group(0)[: m.start(m.lastindex or 0) - m.start()] + (neg[:1].upper() + neg[1:] if aux[:1].isupper() else neg)


# Adding a negation: pattern -> replacement (a string template or a function of the match).
_ADD: list[tuple[re.Pattern[str], object]] = [
    (re.compile(r"\b(would|['’]d)\s+rather\b", re.I), r"\1 rather not"),
    (re.compile(r"\b(always)\b", re.I), "never"),
    (re.compile(r"\b(?:often|frequently|usually|constantly|regularly)\b", re.I), "rarely"),
    (re.compile(r"\b(I['’]m|you['’]re|we['’]re|they['’]re|it['’]s|that['’]s)\b", re.I), r"\1 not"),
    (re.compile(rf"\b(?:I|you|we|they|he|she|it|this|that|there|people|everyone)\s+({_AUX})\b", re.I), _aux),
    (re.compile(r"\b(I|you|we|they)\s+(?!(?:" + _AUX + r"|do|don['’]t|did|have|had|would|rather|'d)\b)([a-z]+)\b", re.I), r"\1 don't \2"),
    (re.compile(rf"\b({_AUX})\b", re.I), _aux),
]
# A leading subordinate clause ("When I travel, ...") is skipped so the main clause gets negated.
_SUBORDINATE_RE = re.compile(r"^\s*(?:when|whenever|once|if|after|before|although|though|while|because|since|as soon as|unless|at|in|on|during|under)\b[^,;]*,\s*", re.I)
# An added negation right before an existing one would produce "is not not".
_NEG_AHEAD_RE = re.compile(r"^\s*(?:\w+\s+)?(?:not|never|no|n['’]t)\b", re.I)


def has_negation(text: str) -> float:
    """1.0 when `text` contains a negation cue (not, n't, never, no, rarely, ...), else 0.0."""
    return 1.0 if _CUE_RE.search(text) else 0.0


def negate(text: str) -> str | None:
    """The utterance with its polarity flipped by one rule-based edit, or None when no rule applies.

    Args:
        text: a short utterance (one or two sentences work best).

    Returns:
        The flipped utterance, or None.
    """
    skip = _SUBORDINATE_RE.match(text)
    offsets = [skip.end(), 0] if skip else [0]
    best: tuple[int, re.Match[str], object] | None = None
    for offset in offsets:
        for pat, repl in _REMOVE + _ADD:
            for m in pat.finditer(text, offset):
                if (pat, repl) in _ADD and (_NEG_AHEAD_RE.match(text[m.end():]) or _CUE_RE.search(m.group(0))):
                    continue
                if best is None or m.start() < best[0]:
                    best = (m.start(), m, repl)
                break
        if best is not None:
            break
    if best is None:
        return None
    _, m, repl = best
    new = repl(m) if callable(repl) else m.expand(repl)
    if m.group(0)[:1].isupper() and new[:1].islower():
        new = new[:1].upper() + new[1:]
    out = text[: m.start()] + new + text[m.end() :]
    out = re.sub(r"\s{2,}", " ", out).strip()
    return out if out and out != text else None
