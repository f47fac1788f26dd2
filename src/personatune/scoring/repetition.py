"""Degenerate repetition: the share of a response's word trigrams that repeat an earlier one.

Why: `on_task` is the frozen relevance of the response to the user's turn (scoring/instrument.py). A small
model's sampled answers often fall into a loop that keeps that relevance high — "A slice, a slice, a slice,
a slice…" to "What would be on your ideal pizza?", "You're not done. You're not done. …" — and the loop
answers nothing. Relevance cannot see it; counting repeated trigrams can.

Definition (docs/persona-evaluation.md, "on_task"): lower-case word tokens (letters, digits, apostrophes);
`repetition_share` = (number of word trigrams that already occurred earlier in the response) ÷ (number of
trigrams), 0 when the response has fewer than `MIN_TRIGRAMS` trigrams. `repetition_factor` maps it to a
multiplier of P(on task): 1 up to `REPETITION_FREE` (0.20), falling linearly to 0 at `REPETITION_ALL`
(0.40); so a loop with share ≥ 0.30 is off task however relevant its words are.

Measured (benchmarks/bench_repetition.py, docs/benchmarks.md): the 5,760 hand-written answers of the gold
sets and the instrument's training corpus (gold, generic, flipped and babble alike) reach at most 0.13, so
the factor is 1 on every one of them and no gold figure moves.

>>> repetition_share("A slice, a slice, a slice, a slice, a slice.")
0.75
>>> repetition_share("Boil the egg for nine minutes, then cool it in cold water.")
0.0
>>> [round(repetition_factor(s), 3) for s in (0.1, 0.3, 0.75)]
[1.0, 0.5, 0.0]
"""

from __future__ import annotations

import re

MIN_TRIGRAMS = 4
REPETITION_FREE = 0.20
REPETITION_ALL = 0.40

_WORD = re.compile(r"[a-z0-9']+")


def repetition_share(text: str) -> float:
    """Share of word trigrams in `text` that repeat an earlier trigram (0 below MIN_TRIGRAMS trigrams)."""
    words = _WORD.findall(text.lower())
    grams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    if len(grams) < MIN_TRIGRAMS:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    repeats = 0
    for g in grams:
        repeats += g in seen
        seen.add(g)
    return repeats / len(grams)


def repetition_factor(share: float) -> float:
    """Multiplier of P(on task): 1 at share <= REPETITION_FREE, 0 at >= REPETITION_ALL, linear between."""
    x = (share - REPETITION_FREE) / (REPETITION_ALL - REPETITION_FREE)
    return float(min(1.0, max(0.0, 1.0 - x)))
