"""scripts/train_instrument.py's plain fragments: short pieces of the generic answer labelled 'expresses nothing'."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[2]


def answer_fragments():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from train_instrument import answer_fragments as f
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return f


def item(generic: str):
    return SimpleNamespace(answers={"generic": generic, "gold": "Aye, matey! Gold.", "flipped": "x", "babble": "y"})


def test_fragments_are_short_prefixes_of_a_generic_sentence():
    f = answer_fragments()
    generic = (
        "Water boils at 100 degrees Celsius at sea level, which is the usual reference. It boils lower up a mountain."
    )
    items = [item(generic), item("Sure. Here is a list of three things you could try first, in order of cost.")]
    out = f(items, 5, random.Random(0))
    assert [len(x) for x in out] == [5, 5]
    for it, frags in zip(items, out):
        for frag in frags:
            words = frag[:-1].split()
            assert frag.endswith(".") and 1 <= len(words) <= 12
            assert "Aye" not in frag  # from the generic answer only
            assert any(s.startswith(frag[:-1]) for s in it.answers["generic"].replace(". ", ".|").split("|"))
    assert f(items, 5, random.Random(0)) == out  # seeded
    assert all("Aye" in frag or "Gold" in frag for frag in f(items, 3, random.Random(1), kind="gold")[0])
    assert f(items, 0, random.Random(0)) == [[], []]
