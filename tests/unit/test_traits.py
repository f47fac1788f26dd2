"""Trait detectors: ordering on exemplars, negation, calibration range, fitted save/load round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from personatune.errors import DataError
from personatune.persona import PersonaSpec
from personatune.scoring.negation import has_negation, negate
from personatune.scoring.traits import TraitDetectors, fit, split_sentences

REPO = Path(__file__).resolve().parents[2]

@pytest.fixture(scope="module")
def spec(five_traits) -> PersonaSpec:
    return PersonaSpec(name="test", summary="a test persona", traits=five_traits)


@pytest.fixture(scope="module")
def embedder():
    from personatune.embeddings import Embedder

    return Embedder.default()


@pytest.fixture(scope="module")
def det(spec, embedder) -> TraitDetectors:
    return fit(spec, (), embedder=embedder)


def _load_example_personas() -> list[PersonaSpec]:
    files = sorted((REPO / "examples" / "personas").glob("*.yaml"))
    if not files:
        pytest.skip("no example personas in examples/personas yet")
    try:
        from personatune.persona import load_persona
    except ImportError:
        pytest.skip("persona.load_persona not available yet")
    return [load_persona(f) for f in files]


def test_negate_rules():
    assert negate("I love meeting new people.") == "I don't love meeting new people."
    assert negate("I don't love meeting new people.") == "I do love meeting new people."
    assert negate("I never miss a deadline.") == "I always miss a deadline."
    assert negate("Crowds exhaust me.") is None
    assert has_negation("I can't wait") == 1.0 and has_negation("I can wait") == 0.0


def test_split_sentences():
    assert split_sentences("One. Two! Three?") == ["One.", "Two!", "Three?"]
    assert split_sentences("Only one sentence") == ["Only one sentence"]


def test_probabilities_are_valid(det, embedder, spec):
    traits, viols = det.score(["I love meeting new people.", "The train leaves at nine.", ""], embedder)
    for d in traits + viols:
        assert set(d) == set(spec.trait_ids)
        assert all(0.0 <= v <= 1.0 for v in d.values())


def test_exemplar_ordering_test_persona(det, embedder, spec):
    for t in spec.traits:
        tr, vi = det.score([" ".join(t.positive), " ".join(t.negative)], embedder)
        assert tr[0][t.id] > tr[1][t.id], t.id
        assert vi[1][t.id] > vi[0][t.id], t.id


def test_exemplar_ordering_example_personas(embedder):
    for spec in _load_example_personas():
        det = fit(spec, (), embedder=embedder)
        for t in spec.traits:
            tr, vi = det.score([" ".join(t.positive), " ".join(t.negative)], embedder)
            assert tr[0][t.id] > tr[1][t.id], (spec.name, t.id)
            assert vi[1][t.id] > vi[0][t.id], (spec.name, t.id)


def test_negation_flips_the_decision(det, embedder):
    tr, vi = det.score(["I love meeting new people.", "I don't love meeting new people."], embedder)
    assert tr[0]["sociable"] >= 0.5 > tr[1]["sociable"]
    assert vi[1]["sociable"] > vi[0]["sociable"]


def test_neutral_text_is_neither_expressed_nor_violated(det, embedder):
    tr, vi = det.score(["The invoice is attached to this email."], embedder)
    assert max(tr[0].values()) < 0.5 and max(vi[0].values()) < 0.5


def test_fit_with_labelled_examples_and_round_trip(tmp_path, spec, embedder):
    ex = [{"text": "Come join us, the more the merrier!", "trait": "sociable", "label": "expressed"},
          {"text": "Leave me alone, I prefer my own company.", "trait": "sociable", "label": "violated"},
          {"text": "The meeting is at noon.", "trait": "sociable", "label": "neutral"}]
    det = fit(spec, ex, embedder=embedder, seed=1)
    assert det.meta["n_labelled_examples"] == 3
    det.save(tmp_path / "ev")
    assert sorted(p.name for p in (tmp_path / "ev").iterdir()) == ["detectors.json", "detectors.safetensors"]
    back = TraitDetectors.load(tmp_path / "ev")
    assert back.trait_ids == det.trait_ids and back.meta == det.meta
    assert np.array_equal(back.weights, det.weights) and np.array_equal(back.temperatures, det.temperatures)
    texts = ["Come over, everyone is welcome! We'll talk all night.", "I'd rather stay home."]
    assert back.score(texts, embedder) == det.score(texts, embedder)


def test_bad_labelled_example_is_a_clear_error(spec, embedder):
    with pytest.raises(DataError, match="trait 'nope'"):
        fit(spec, [{"text": "x", "trait": "nope", "label": "expressed"}], embedder=embedder)
    with pytest.raises(DataError, match="label"):
        fit(spec, [{"text": "x", "trait": "sociable", "label": "yes"}], embedder=embedder)


def test_load_missing_dir_is_data_error(tmp_path):
    with pytest.raises(DataError, match="cannot read trait detectors"):
        TraitDetectors.load(tmp_path / "missing")


def test_partial_label_fit_lowers_violation_of_other_traits_positives_and_never_raises_the_loss():
    """other_positive_weight: another trait's positives as the partial label {expressed, neutral}."""
    from personatune.scoring.traits import NOT_VIOLATED, _fit_multinomial

    rng = np.random.default_rng(0)
    # 3 separable clusters (expressed / violated / neutral) plus partial rows that sit ON the violated cluster:
    # the partial label must pull P(violated) down there, and the MM iterations must never raise the loss.
    c = np.array([[3.0, 0.0], [0.0, 3.0], [-3.0, -3.0]])
    X = np.vstack([c[k] + rng.normal(0, 0.5, (20, 2)) for k in range(3)] + [c[1] + rng.normal(0, 0.5, (10, 2))])
    F = np.hstack([X, np.ones((len(X), 1))])
    y = np.array([0] * 20 + [1] * 20 + [2] * 20 + [NOT_VIOLATED] * 10)
    w = np.ones(len(y))

    def loss(W):
        z = F @ W.T
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        py = np.where(y == NOT_VIOLATED, p[:, 0] + p[:, 2], p[np.arange(len(y)), np.minimum(y, 2)])
        return float(-(w * np.log(py)).sum() + 0.5 * 0.1 * (W[:2, :-1] ** 2).sum())

    losses = [loss(_fit_multinomial(F, y, w, l2=0.1, iters=k)) for k in (1, 2, 4, 8, 30)]
    assert all(b <= a + 1e-9 for a, b in zip(losses, losses[1:])), losses
    W_full, W_none = _fit_multinomial(F, y, w, l2=0.1), _fit_multinomial(F[:60], y[:60], w[:60], l2=0.1)

    def p_violated(W, pts):
        z = np.hstack([pts, np.ones((len(pts), 1))]) @ W.T
        p = np.exp(z - z.max(1, keepdims=True))
        return (p / p.sum(1, keepdims=True))[:, 1]

    assert p_violated(W_full, X[60:]).mean() < p_violated(W_none, X[60:]).mean()


def test_other_positive_weight_zero_is_the_default_fit(spec, embedder, det):
    again = fit(spec, (), embedder=embedder, other_positive_weight=0.0)
    assert np.array_equal(again.weights, det.weights) and np.array_equal(again.temperatures, det.temperatures)
    with_partial = fit(spec, (), embedder=embedder, other_positive_weight=1.0)
    assert with_partial.meta["examples_per_trait"][spec.trait_ids[0]]["not_violated"] == sum(len(t.positive) for t in spec.traits[1:])


def test_score_of_no_texts_is_empty(det, embedder):
    # an empty held-out split (a persona whose teacher kept no held-out prompt) must not crash scoring
    assert det.score([], embedder) == ([], [])
