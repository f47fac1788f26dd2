"""Lexical bank (scoring/lexical.py): 'lexically this persona rather than another', and the shipped bank."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from personatune.errors import ModelNotFoundError
from personatune.persona import PersonaSpec, Style
from personatune.scoring.instrument import instrument_dir
from personatune.scoring.lexical import (
    BANK_FILE,
    MARGIN,
    LexicalBank,
    bank_of,
    build_bank,
    lexical_score,
    own_voice,
)

ROOT = Path(__file__).resolve().parents[2]
NEUTRAL = ["The train leaves at nine.", "Water boils at 100 degrees Celsius at sea level."]
GENERIC = ["Here is a short answer to your question.", "You can find the details in the manual."]


def persona(name: str, phrases: list[str], five_traits) -> PersonaSpec:
    return PersonaSpec(name=name, summary="s", traits=five_traits, style=Style(signature_phrases=phrases))


@pytest.fixture(scope="module")
def specs(five_traits):
    return {
        "pirate": persona("Pirate", ["Arr, matey", "hoist the sails", "swab the deck"], five_traits),
        "gardener": persona("Gardener", ["roses and tulips", "compost and mulch", "deadhead the blooms"], five_traits),
    }


def test_own_voice_crosses_one_half_exactly_at_the_margin():
    assert own_voice(MARGIN) == 0.5
    assert own_voice(MARGIN + 1e-6) > 0.5 > own_voice(MARGIN - 1e-6)
    assert own_voice(5.0) == pytest.approx(1.0) and own_voice(-5.0) == pytest.approx(0.0)


def test_another_personas_words_fail_and_the_own_pass(specs):
    bank = build_bank([(specs["pirate"], GENERIC)], NEUTRAL, source="test")
    gardener = bank.scorer_for(specs["gardener"])
    own, other, plain = gardener.score(
        [
            "Compost and mulch keep the roses and tulips happy; deadhead the blooms weekly.",
            "Arr, matey! Hoist the sails and swab the deck before dawn.",
            "The train leaves at nine.",
        ]
    )
    assert own > 0.5 > other
    # a plain answer is no more another persona than this one: the lexical check leaves it to the voice head
    assert plain >= 0.5
    assert gardener.relative("Arr, matey! Hoist the sails.") < MARGIN


def test_a_bank_persona_with_the_scored_personas_name_is_left_out(specs, five_traits):
    twin = persona("pirate ", ["Arr, matey", "walk the plank"], five_traits)
    bank = build_bank([(twin, GENERIC), (specs["gardener"], GENERIC)], NEUTRAL, source="test")
    scorer = bank.scorer_for(specs["pirate"])
    assert len(scorer.bank) == 1  # only the gardener remains
    assert scorer.score(["Arr, matey, walk the plank!"])[0] > 0.5


def test_lexical_score_is_per_word_and_ignores_negative_log_odds():
    lex = {"arr": 2.0, "the": -1.0}
    assert lexical_score(lex, "Arr the arr") == pytest.approx(4.0 / 3)
    assert lexical_score(lex, "") == 0.0 and lexical_score(lex, "123 !!") == 0.0


def test_save_load_round_trip_and_bad_files(tmp_path, specs):
    bank = build_bank([(specs["pirate"], GENERIC)], NEUTRAL, source="test")
    bank.save(tmp_path / BANK_FILE)
    back = LexicalBank.load(tmp_path / BANK_FILE)
    assert back.personas == bank.personas and back.background == bank.background and back.meta["source"] == "test"
    assert bank_of(tmp_path) is not None and bank_of(tmp_path / "nowhere") is None and bank_of(None) is None
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelNotFoundError, match=r"bad\.json is unusable .*fix: reinstall"):
        LexicalBank.load(bad)
    bad.write_text(json.dumps({"version": 99}), encoding="utf-8")
    with pytest.raises(ModelNotFoundError, match="version 99"):
        LexicalBank.load(bad)


def test_shipped_bank_is_the_corpus_rebuilt():
    """The package's lexical_bank.json equals a rebuild from benchmarks/scorer_corpus (rerun
    scripts/build_lexical_bank.py after changing the corpus or the neutral sentences)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from build_lexical_bank import bank_from_corpus
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    shipped = LexicalBank.load(instrument_dir() / BANK_FILE)
    rebuilt = bank_from_corpus(ROOT / "benchmarks" / "scorer_corpus")
    assert len(shipped.personas) == 24
    assert shipped.meta == rebuilt.meta
    assert shipped.personas == rebuilt.personas and shipped.background == rebuilt.background
