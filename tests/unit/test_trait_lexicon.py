"""Per-trait lexical evidence (scoring/trait_lexicon.py): words of a trait's side move its probabilities, for the
traits whose lexicon separates their own exemplars."""

from __future__ import annotations

from collections import Counter

import pytest

from personatune.persona import PersonaSpec, Trait
from personatune.scoring.trait_lexicon import SELECT_AUROC, TraitLexicons, exemplar_auroc

BACKGROUND = Counter("the a train leaves at nine water boils here is a short answer to your question".split())


@pytest.fixture()
def lexicons(five_traits):
    spec = PersonaSpec(name="T", summary="s", traits=five_traits)
    return TraitLexicons.build(spec, BACKGROUND, weight=10.0, select=None)  # every trait: the mechanics


# A register trait (its positives share words the negatives never use) and an attitude written in varied words.
SLANG = Trait(
    id="slang",
    description="Talks like an old sailor.",
    positive=["Aye matey, hoist the sails!", "Aye, the deck is ready, matey.", "Hoist anchor, matey, aye!"],
    negative=["The meeting is at three.", "Please find the summary attached.", "The report is ready now."],
)
ATTITUDE = Trait(
    id="patient",
    description="Takes all the time the other person needs.",
    positive=["No rush at all.", "We can go over it again.", "Take whatever time you need."],
    negative=["Hurry up.", "I have no time for this.", "Just get it done quickly."],
)


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


def test_scorer_applies_it_and_weight_zero_turns_it_off(five_traits):
    from personatune.scoring.instrument import Instrument
    from personatune.scoring.scorer import Scorer

    spec = PersonaSpec(name="T", summary="s", traits=five_traits)
    inst = Instrument.default()
    text = ["I love meeting new people, and parties with lots of friends make me happy."]
    from personatune.scoring.lexical import bank_of

    scorer = Scorer(spec, instrument=inst)  # the default: selected per trait
    assert scorer.trait_lexicons is not None and scorer.trait_lexicons.weights is not None
    scorer.trait_lexicons = TraitLexicons.build(spec, bank_of(inst.weights_dir).background, 10.0, select=None)
    on = scorer.score(text)[0]
    off = Scorer(spec, instrument=inst, trait_lexicon_weight=0).score(text)[0]
    assert on.traits["sociable"] > off.traits["sociable"]
    assert on.violations["sociable"] < off.violations["sociable"]


def test_only_traits_whose_lexicon_separates_their_exemplars_get_weight():
    assert exemplar_auroc(SLANG, BACKGROUND) >= SELECT_AUROC > exemplar_auroc(ATTITUDE, BACKGROUND)
    spec = PersonaSpec(name="T", summary="s", traits=[SLANG, ATTITUDE])
    sel = TraitLexicons.build(spec, BACKGROUND, weight=10.0)
    assert sel.weights == {"slang": 10.0, "patient": 0.0}
    text = ["Aye matey, no rush, take your time."]
    tr, vi = [{"slang": 0.5, "patient": 0.5}], [{"slang": 0.5, "patient": 0.5}]
    sel.apply(text, tr, vi)
    assert tr[0]["slang"] > 0.5 > vi[0]["slang"]
    assert tr[0]["patient"] == 0.5 == vi[0]["patient"]  # not selected: the head's probabilities, unchanged
    every = TraitLexicons.build(spec, BACKGROUND, weight=10.0, select=None)
    tr2, vi2 = [{"slang": 0.5, "patient": 0.5}], [{"slang": 0.5, "patient": 0.5}]
    every.apply(text, tr2, vi2)
    assert tr2[0]["patient"] != 0.5  # without the selection the attitude's words would move it too


def test_exemplar_auroc_leaves_each_exemplar_out_of_its_own_lexicon():
    """A trait whose every positive is one unique word (and negatives likewise) has nothing shared: left out,
    no exemplar finds its own word, so the lexicon cannot separate them (0.5), though in-sample it would (1.0)."""
    t = Trait(id="u", description="zulu", positive=["alpha", "bravo", "charlie"], negative=["delta", "echo", "foxtrot"])
    assert exemplar_auroc(t, BACKGROUND) == 0.5
