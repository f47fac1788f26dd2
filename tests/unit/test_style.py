"""Style features and style_match against values computed by hand (see the comments)."""

import pytest

from personatune.persona import Style
from personatune.scoring.style import (
    STYLE_FEATURES,
    count_emoji,
    count_words,
    formality_score,
    sentence_terminators,
    style_features,
    style_features_batch,
    style_match,
    style_match_components,
)

APPROX = dict(abs=1e-9)


def test_every_feature_is_documented_and_returned():
    f = style_features("Hello there.", Style())
    assert list(f) == list(STYLE_FEATURES)
    assert all(isinstance(v, float) for v in f.values())
    assert all(STYLE_FEATURES[k] for k in STYLE_FEATURES)


def test_short_text_by_hand():
    # "I love this! Do you?": words I, love, this!, Do, you? = 5; sentences "I love this" (!) and
    # "Do you" (?) = 2 -> 2.5 words/sentence, question 1/2, exclamation 1/2; "I" = 1 pronoun / 5 words.
    # formality: letters 1+4+4+2+3 = 14 -> L = 2.8 -> s_len = 0; no contraction -> s_con = 1; no informal
    # marker -> s_inf = 1; no formal marker -> s_for = 0; 0.2*1 + 0.25*1 = 0.45.
    f = style_features("I love this! Do you?", Style())
    assert f == pytest.approx(
        {
            "words": 5,
            "words_per_sentence": 2.5,
            "question_rate": 0.5,
            "exclamation_rate": 0.5,
            "first_person_rate": 0.2,
            "formality": 0.45,
            "signature_rate": 0,
            "avoid_hits": 0,
            "emoji_rate": 0,
        },
        **APPROX,
    )


def test_casual_text_by_hand():
    # Words: Hey! Yeah, I'm gonna grab some coffee lol. Wanna come? = 10; sentences "Hey" (!),
    # "Yeah, I'm ... lol" (.), "Wanna come" (?) = 3. First person: I'm = 1 -> 0.1 per word.
    # Letters 3+4+2+5+4+4+6+3+5+4 = 40 -> L = 4.0 -> s_len = 0.5/2.5 = 0.2. Contractions: I'm -> 0.1 per
    # word -> s_con = 0. Informal: hey, yeah, gonna, lol, wanna = 5 -> s_inf = 0. Formal: 0.
    # formality = 0.4 * 0.2 = 0.08.
    f = style_features("Hey! Yeah, I'm gonna grab some coffee lol. Wanna come?", Style())
    assert f["words"] == 10
    assert f["words_per_sentence"] == pytest.approx(10 / 3)
    assert f["question_rate"] == pytest.approx(1 / 3)
    assert f["exclamation_rate"] == pytest.approx(1 / 3)
    assert f["first_person_rate"] == pytest.approx(0.1)
    assert f["formality"] == pytest.approx(0.08)


def test_formality_components_by_hand():
    # 20 words, 82 letters -> L = 4.1 -> s_len = 0.6/2.5 = 0.24; one contraction (I'd) -> 0.05 per word
    # -> s_con = 1 - 0.5 = 0.5; one informal word (cool) -> 0.05 -> s_inf = 0; one formal word
    # (however) -> 0.05 >= 0.03 -> s_for = 1. formality = 0.4*0.24 + 0.2*0.5 + 0 + 0.15 = 0.346.
    text = "Cool, I think the new release works well. However, I'd still check the docs first and run the tests twice."
    assert count_words(text) == 20
    assert formality_score(text) == pytest.approx(0.346)
    # 40 words of 4 letters, one informal ("yeah"): s_len 0.2, s_con 1, s_inf = 1 - 0.025/0.05 = 0.5,
    # s_for 0 -> 0.08 + 0.2 + 0.125 = 0.405.
    assert formality_score("yeah " + "word " * 39) == pytest.approx(0.405)
    # 60 words of 4 letters, one formal ("thus"): s_for = (1/60)/0.03 = 5/9 -> 0.08 + 0.2 + 0.25 + 0.15*5/9.
    assert formality_score("thus " + "word " * 59) == pytest.approx(0.53 + 0.15 * 5 / 9)
    # Saturated formal: long words, two formal markers, nothing informal -> 1.0.
    assert formality_score(
        "Regarding your inquiry, the committee will review the application. However, "
        "additional documentation is required."
    ) == pytest.approx(1.0)


def test_sentence_splitting_rules():
    text = '"Really?" she asked. e.g. 3.5 is fine… ok\n- item one\n- item two?!'
    # '"Really?"' ends at ?" + space; "she asked."; "e.g." (no abbreviation list); "3.5" does not split
    # (no space after the dot); "…"; a line break ends "ok" and "- item one"; "?!" is question and exclamation.
    assert sentence_terminators(text) == ["?", ".", ".", "…", "", "", "?!"]
    f = style_features(text, Style())
    assert f["question_rate"] == pytest.approx(2 / 7)
    assert f["exclamation_rate"] == pytest.approx(1 / 7)
    # Words: "Really?" she asked. e.g. 3.5 is fine… ok item one item two?! = 12 ("-" has no letter).
    assert f["words"] == 12
    assert f["words_per_sentence"] == pytest.approx(12 / 7)


def test_emoji_counting_and_rate():
    # Emoji: 😀, 👍🏽 (skin tone), 👨‍👩‍👧 (ZWJ family), 🇫🇷 (flag) = 4; words Want, one?😀, Sure!! = 3.
    text = "Want one?😀 Sure!! 👍🏽 👨‍👩‍👧 🇫🇷"
    assert count_emoji(text) == 4
    f = style_features(text, Style())
    assert f["words"] == 3
    assert f["emoji_rate"] == pytest.approx(400 / 3)
    # "?" followed directly by an emoji still ends a sentence; the emoji-only tail is no sentence.
    assert sentence_terminators(text) == ["?", "!!"]
    # formality: L = 11/3 -> s_len = (11/3-3.5)/2.5; informal = 4 emoji + one "!!" run -> s_inf = 0.
    assert f["formality"] == pytest.approx(0.4 * (11 / 3 - 3.5) / 2.5 + 0.2)
    # A lone emoji: 0 words, rate = 100 * 1 / max(0, 1).
    assert style_features("😀", Style())["emoji_rate"] == 100.0


def test_first_person_rate():
    # Counted: my, mine, me, myself, I'm, MY = 6 (I.e. is not a pronoun); words = 7.
    f = style_features("I.e. my mine me myself I'm MY", Style())
    assert f["first_person_rate"] == pytest.approx(6 / 7)
    # Not inside words; curly apostrophe normalised.
    assert style_features("Meet Iris, mighty", Style())["first_person_rate"] == 0.0
    assert style_features("I’m fine", Style())["first_person_rate"] == pytest.approx(0.5)


def test_signature_and_avoid_phrases():
    style = Style(signature_phrases=["cheers", "Cheers mate"], avoid_phrases=["as an AI"])
    # "Cheers mate" counts once (longest first), "Cheers!" once, "cheersy" not (word edge): 2.
    # "as an  AI" matches across a double space; "Said the AI" does not contain "as an AI": 1.
    f = style_features("Cheers mate, as an  AI I can help. Cheers! cheersy. Said the AI.", style)
    assert f["signature_rate"] == 2
    assert f["avoid_hits"] == 1
    assert style_features("nothing here", style)["signature_rate"] == 0


@pytest.mark.parametrize("text", ["", "   \n\t "])
def test_empty_text(text):
    f = style_features(text, Style(signature_phrases=["hi"]))
    assert f == {k: (0.5 if k == "formality" else 0.0) for k in STYLE_FEATURES}
    assert style_match(f, Style()) == 0.0


def test_batch_equals_single():
    style = Style(signature_phrases=["indeed"])
    texts = ["Indeed it is.", "", "What? No!"]
    assert style_features_batch(texts, style) == [style_features(t, style) for t in texts]


def feats(**kw):
    base = {
        "words": 50.0,
        "words_per_sentence": 10.0,
        "question_rate": 0.0,
        "exclamation_rate": 0.0,
        "first_person_rate": 0.05,
        "formality": 0.55,
        "signature_rate": 0.0,
        "avoid_hits": 0.0,
        "emoji_rate": 0.0,
    }
    return {**base, **kw}


@pytest.mark.parametrize(
    "style, f, want",
    [
        # All components perfect.
        (Style(), feats(), 1.0),
        # Signature phrases defined but absent: (0.3 + 0.3 + 0.15 + 0.1*0.5) / 0.85.
        (Style(signature_phrases=["x"]), feats(), 0.8 / 0.85),
        (Style(signature_phrases=["x"]), feats(signature_rate=1.0), 1.0),
        # Too short: 10 words for [20, 120] -> length 0.5 -> (0.15 + 0.3 + 0.15) / 0.75.
        (Style(), feats(words=10.0), 0.8),
        # Too long: 180 words for [20, 120] -> 1 - 60/120 = 0.5 -> 0.8.
        (Style(), feats(words=180.0), 0.8),
        # Formality 0.85 vs neutral 0.55: distance 0.3 -> 1 - (0.3-0.15)/0.3 = 0.5 -> 0.8.
        (Style(), feats(formality=0.85), 0.8),
        # Inside the tolerance: distance 0.1 -> 1.
        (Style(formality="formal"), feats(formality=0.75), 1.0),
        # Wrong register (0.1 vs formal 0.85 -> 0) and wrong length (300 > 2*120 -> 0): 0.15/0.75.
        (Style(formality="formal"), feats(formality=0.1, words=300.0), 0.2),
        # An avoid phrase: 1.0 * 0.45.
        (Style(avoid_phrases=["x"]), feats(avoid_hits=1.0), 0.45),
        # Emoji when never: emoji component 0 -> 0.6/0.75 = 0.8, times 0.45.
        (Style(emoji="never"), feats(emoji_rate=2.0), 0.36),
        # Both breaks: 0.8 * 0.45**2.
        (Style(emoji="never"), feats(emoji_rate=2.0, avoid_hits=1.0), 0.8 * 0.45**2),
        # Emoji sometimes at 10 per 100 words -> 1 - 5/10 = 0.5 -> (0.3+0.3+0.075)/0.75 = 0.9.
        (Style(emoji="sometimes"), feats(emoji_rate=10.0), 0.9),
        (Style(emoji="sometimes"), feats(emoji_rate=3.0), 1.0),
        # Emoji often but none: 0.5 -> 0.9.
        (Style(emoji="often"), feats(), 0.9),
        # Questions never with 1/4 questions -> 0.75; exclamations often with none -> 0.5:
        # (0.3 + 0.3 + 0.15 + 0.075*0.75 + 0.075*0.5) / 0.9 = 0.9375.
        (Style(questions="never", exclamations="often"), feats(question_rate=0.25), 0.9375),
        # Questions sometimes, all sentences questions -> 1 - 0.5 = 0.5: (0.75 + 0.0375) / 0.825.
        (Style(questions="sometimes"), feats(question_rate=1.0), 0.7875 / 0.825),
        # Worst case with length and register right and no break: emoji 0 (sometimes, 100 per 100 words),
        # signature 0.5, questions 0 and exclamations 0 (never, every sentence): (0.3 + 0.3 + 0.05) / 1.0.
        (
            Style(emoji="sometimes", signature_phrases=["x"], questions="never", exclamations="never"),
            feats(emoji_rate=100.0, question_rate=1.0, exclamation_rate=1.0),
            0.65,
        ),
    ],
)
def test_style_match_by_hand(style, f, want):
    assert style_match(f, style) == pytest.approx(want)


def test_style_match_thresholds_on_real_texts():
    casual = Style(formality="casual", words=(5, 40), emoji="never", avoid_phrases=["as an AI"])
    good = "Hey! Yeah, I'm gonna grab some coffee lol. Wanna come?"
    assert style_match(style_features(good, casual), casual) >= 0.5
    # Formal register (formality 1.0) and far too long (6 * 15 = 90 words > 2*40) for a casual persona.
    stiff = (
        "Regarding your inquiry, the committee will review the application thoroughly. However, additional "
        "documentation is required. "
    ) * 6
    assert style_match(style_features(stiff, casual), casual) < 0.5
    # Right register and length but an avoid phrase, or an emoji for a never-emoji persona.
    assert style_match(style_features("Yeah, as an AI I'm gonna say no lol.", casual), casual) < 0.5
    assert style_match(style_features("Yeah, I'm gonna grab coffee lol 😀", casual), casual) < 0.5
    comps = style_match_components(style_features(good, casual), casual)
    assert set(comps) == {"length", "formality", "emoji"}
