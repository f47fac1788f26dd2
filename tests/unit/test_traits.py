"""The persona profile on the shipped instrument: ordering on exemplars, negation, neutral text, voice,
labelled examples, save/load round trip and the errors a user can meet."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from personatune.errors import DataError
from personatune.persona import PersonaSpec, load_persona
from personatune.scoring.traits import PersonaProfile, build_profile, fit, split_sentences

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def spec(five_traits) -> PersonaSpec:
    return PersonaSpec(name="test", summary="a test persona", traits=five_traits)


@pytest.fixture(scope="module")
def instrument():
    from personatune.scoring.instrument import Instrument

    return Instrument.default()


@pytest.fixture(scope="module")
def profile(spec, instrument) -> PersonaProfile:
    return build_profile(spec, instrument)


def test_split_sentences():
    assert split_sentences("One. Two! Three?") == ["One.", "Two!", "Three?"]
    assert split_sentences("Only one sentence") == ["Only one sentence"]


@pytest.mark.stage
def test_probabilities_are_valid(profile, instrument, spec):
    sc = profile.score(["I love meeting new people.", "The train leaves at nine.", ""], instrument)
    assert len(sc.traits) == len(sc.violations) == len(sc.voice) == 3
    for d in sc.traits + sc.violations:
        assert set(d) == set(spec.trait_ids)
        assert all(0.0 <= v <= 1.0 for v in d.values())
    assert all(0.0 <= v <= 1.0 for v in sc.voice)


@pytest.mark.stage
def test_exemplar_ordering_example_personas(instrument):
    """Each trait's positives read more expressed and less violated than its negatives (all example personas)."""
    for path in sorted((REPO / "examples" / "personas").glob("*.yaml")):
        spec = load_persona(path)
        prof = build_profile(spec, instrument)
        for t in spec.traits:
            sc = prof.score([" ".join(t.positive), " ".join(t.negative)], instrument)
            assert sc.traits[0][t.id] > sc.traits[1][t.id], (spec.name, t.id)
            assert sc.violations[1][t.id] > sc.violations[0][t.id], (spec.name, t.id)


@pytest.mark.stage
def test_negation_flips_the_decision(profile, instrument):
    sc = profile.score(
        ["I love meeting new people, come and join us!", "I don't want to meet anyone; leave me alone."], instrument
    )
    assert sc.traits[0]["sociable"] > sc.traits[1]["sociable"]
    assert sc.violations[1]["sociable"] >= 0.5 > sc.violations[0]["sociable"]


@pytest.mark.stage
def test_neutral_text_is_not_violated(profile, instrument):
    sc = profile.score(["The invoice is attached to this email."], instrument)
    assert max(sc.violations[0].values()) < 0.5


@pytest.mark.stage
def test_voice_separates_the_persona_from_a_plain_assistant(instrument):
    spec = load_persona(REPO / "examples" / "personas" / "captain_nova.yaml")
    prof = build_profile(spec, instrument)
    in_voice = spec.examples[0].messages[-1].content
    plain = "The sky looks blue because air molecules scatter short wavelengths of sunlight more than long ones."
    sc = prof.score([in_voice, plain], instrument)
    assert sc.voice[0] > sc.voice[1]


@pytest.mark.stage
def test_fit_with_labelled_examples_and_round_trip(tmp_path, spec, instrument):
    ex = [
        {"text": "Come join us, the more the merrier!", "trait": "sociable", "label": "expressed"},
        {"text": "Leave me alone, I prefer my own company.", "trait": "sociable", "label": "violated"},
        {"text": "The meeting is at noon.", "trait": "sociable", "label": "neutral"},
    ]
    prof = fit(spec, ex, instrument=instrument)
    assert prof.meta["n_labelled_examples"] == 3
    assert prof.meta["sides"]["sociable"] == {"positive_side": 5, "negative_side": 4, "labelled_neutral": 1}
    assert prof.meta["sides"]["curious"] == {"positive_side": 4, "negative_side": 3, "labelled_neutral": 0}
    prof.save(tmp_path / "ev")
    assert sorted(p.name for p in (tmp_path / "ev").iterdir()) == ["profile.json", "profile.safetensors"]
    back = PersonaProfile.load(tmp_path / "ev")
    assert back.trait_ids == prof.trait_ids and back.meta == json.loads(json.dumps(prof.meta))
    assert all(np.array_equal(a, b) for a, b in zip(back.pos + back.neg, prof.pos + prof.neg))
    texts = ["Come over, everyone is welcome! We'll talk all night.", "I'd rather stay home."]
    assert back.score(texts, instrument) == prof.score(texts, instrument)


@pytest.mark.stage
def test_bad_labelled_example_is_a_clear_error(spec, instrument):
    with pytest.raises(DataError, match="trait 'nope'"):
        fit(spec, [{"text": "x", "trait": "nope", "label": "expressed"}], instrument=instrument)
    with pytest.raises(DataError, match="label"):
        fit(spec, [{"text": "x", "trait": "sociable", "label": "yes"}], instrument=instrument)


@pytest.mark.stage
def test_trait_without_a_negative_side_names_the_trait_and_the_fix(spec, instrument):
    data = spec.model_dump()
    data["traits"][2]["negative"] = []
    with pytest.raises(
        DataError, match=r"trait patient: no negative exemplar or inverse; fix: add at least 3 `negative`"
    ):
        fit(PersonaSpec.model_validate(data), (), instrument=instrument)


def test_load_missing_or_old_dir_is_one_line_data_error(tmp_path):
    with pytest.raises(DataError, match="cannot read the persona profile"):
        PersonaProfile.load(tmp_path / "missing")
    old = tmp_path / "old"
    old.mkdir()
    (old / "detectors.json").write_text("{}")
    with pytest.raises(DataError, match="fitted by an older personatune"):
        PersonaProfile.load(old)


@pytest.mark.stage
def test_score_of_no_texts_is_empty(profile, instrument):
    # an empty held-out split (a persona whose teacher kept no held-out prompt) must not crash scoring
    sc = profile.score([], instrument)
    assert sc.traits == [] and sc.violations == [] and sc.voice == []
