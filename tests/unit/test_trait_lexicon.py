"""Per-trait lexical evidence (scoring/trait_lexicon.py): words of a trait's side move its probabilities."""

from __future__ import annotations

from collections import Counter

import pytest

from personatune.persona import PersonaSpec
from personatune.scoring.trait_lexicon import TraitLexicons

BACKGROUND = Counter("the a train leaves at nine water boils here is a short answer to your question".split())


@pytest.fixture()
def lexicons(five_traits):
    spec = PersonaSpec(name="T", summary="s", traits=five_traits)
    return TraitLexicons.build(spec, BACKGROUND, weight=10.0)


def test_a_traits_own_words_raise_it_and_its_inverse_words_lower_it(lexicons):
    pos = lexicons.lex("I love meeting new people and chatting with friends at parties.")["sociable"]
    neg = lexicons.lex("I avoid people; crowds exhaust me and I would rather not talk.")["sociable"]
    plain = lexicons.lex("Zebras juggle xylophones.")["sociable"]
    assert pos > 0 > neg
    assert plain == 0.0  # words of neither side: no evidence


def test_apply_shifts_expressed_up_and_violated_down_and_weight_zero_is_identity(lexicons):
    text = ["I love meeting new people at parties."]
    tr, vi = [{"sociable": 0.5, "curious": 0.5}], [{"sociable": 0.5, "curious": 0.5}]
    lexicons.apply(text, tr, vi)
    assert tr[0]["sociable"] > 0.5 > vi[0]["sociable"]
    off = TraitLexicons(lexicons.lexicons, weight=0.0)
    tr0, vi0 = [{"sociable": 0.3}], [{"sociable": 0.6}]
    off.apply(text, tr0, vi0)
    assert tr0 == [{"sociable": 0.3}] and vi0 == [{"sociable": 0.6}]


def test_scorer_applies_it_only_when_asked(five_traits):
    from personatune.scoring.instrument import Instrument
    from personatune.scoring.scorer import Scorer

    spec = PersonaSpec(name="T", summary="s", traits=five_traits)
    inst = Instrument.default()
    text = ["I love meeting new people, and parties with lots of friends make me happy."]
    on = Scorer(spec, instrument=inst, trait_lexicon_weight=10).score(text)[0]
    off = Scorer(spec, instrument=inst).score(text)[0]  # the default: off (measured, not adopted)
    assert off.traits == Scorer(spec, instrument=inst, trait_lexicon_weight=0).score(text)[0].traits
    assert on.traits["sociable"] > off.traits["sociable"]
    assert on.violations["sociable"] < off.violations["sociable"]
