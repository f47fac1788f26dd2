"""Repetition share and factor (scoring/repetition.py): the loop check behind `on_task`."""

from __future__ import annotations

import pytest

from personatune.scoring.repetition import (
    MIN_TRIGRAMS,
    REPETITION_ALL,
    REPETITION_FREE,
    repetition_factor,
    repetition_share,
)


@pytest.mark.parametrize(
    "text, share",
    [
        # 8 trigrams: (a slice a), (slice a slice), (a slice a)*, (slice a slice)*, ... -> 6 of 8 repeat
        ("A slice, a slice, a slice, a slice, a slice.", 0.75),
        ("Boil the egg for nine minutes, then cool it in cold water.", 0.0),
        # case and punctuation do not hide a loop: "you're not done" x3 -> 7 trigrams, 4 repeats
        ("You're not done. YOU'RE NOT DONE! you're not done...", 4 / 7),
    ],
)
def test_repetition_share_counts_repeated_word_trigrams(text, share):
    assert repetition_share(text) == pytest.approx(share)


def test_short_answers_are_never_called_loops():
    # "No, no, no, no!" has 2 trigrams, both alike: below MIN_TRIGRAMS the share is 0, not 0.5
    assert MIN_TRIGRAMS > 2
    assert repetition_share("No, no, no, no!") == 0.0
    assert repetition_share("") == 0.0


def test_factor_is_one_then_falls_linearly_to_zero():
    assert repetition_factor(0.0) == 1.0 and repetition_factor(REPETITION_FREE) == 1.0
    mid = (REPETITION_FREE + REPETITION_ALL) / 2
    assert repetition_factor(mid) == pytest.approx(0.5)
    assert repetition_factor(REPETITION_ALL) == 0.0 and repetition_factor(1.0) == 0.0
    xs = [i / 100 for i in range(101)]
    fs = [repetition_factor(x) for x in xs]
    assert all(a >= b for a, b in zip(fs, fs[1:]))
