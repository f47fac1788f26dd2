import hashlib

import numpy as np

from personatune.persona import PersonaSpec
from personatune.scenarios import (
    CONTEXTS,
    assign_targets,
    build_scenarios,
    coverage,
    drop_near_duplicates,
    load_prompt_bank,
)


class FakeEmbedder:
    """Deterministic pseudo-embeddings: a seeded vector per text (no model in unit tests)."""

    def encode(self, texts):
        out = []
        for t in texts:
            rng = np.random.default_rng(int(hashlib.sha256(t.encode()).hexdigest()[:8], 16))
            v = rng.normal(size=16)
            out.append(v / np.linalg.norm(v))
        return np.stack(out).astype(np.float32)


def spec(n=8):
    traits = [
        {
            "id": f"t{i}",
            "description": f"trait {i}",
            "positive": [f"p{i}{j}" for j in range(3)],
            "negative": [f"n{i}{j}" for j in range(3)],
        }
        for i in range(n)
    ]
    return PersonaSpec.model_validate({"name": "x", "summary": "y", "traits": traits})


def test_bank_has_every_context_and_multi_turn_ends_with_user():
    bank = load_prompt_bank()
    assert {s.context for s in bank} == set(CONTEXTS)
    for s in bank:
        assert s.messages[-1]["role"] == "user"
    assert len({s.id for s in bank}) == len(bank)


def test_assign_targets_is_balanced_and_prefers_relevant():
    rel = np.array([[0.9, 0.1, 0.0], [0.0, 0.8, 0.1], [0.2, 0.1, 0.7], [0.9, 0.0, 0.1]])
    tg = assign_targets(rel, ["a", "b", "c"], per_prompt=1, order=[0, 1, 2, 3])
    # prompt 0 -> a (all counts 0, a most relevant); 1 -> b (a used); 2 -> c; 3 -> a (all at 1, a most relevant)
    assert tg == [["a"], ["b"], ["c"], ["a"]]


def test_drop_near_duplicates():
    e = np.array([[1, 0], [0.999, 0.0447], [0, 1]], dtype=float)
    assert drop_near_duplicates([None] * 3, e, 0.95) == [0, 2]


def test_build_covers_every_trait_in_every_context_with_heldout_split():
    sc = build_scenarios(spec(8), FakeEmbedder(), seed=1)
    cov = coverage(sc, [f"t{i}" for i in range(8)])
    for t, per_ctx in cov.items():
        assert sum(per_ctx.values()) >= 20, (t, per_ctx)
        assert len(per_ctx) >= 3
    held = [s for s in sc if s.split == "heldout"]
    assert 0.15 <= len(held) / len(sc) <= 0.25
    assert {s.context for s in held} == set(CONTEXTS)
    # Deterministic for a seed.
    again = build_scenarios(spec(8), FakeEmbedder(), seed=1)
    assert [(s.id, s.targets, s.split) for s in sc] == [(s.id, s.targets, s.split) for s in again]


def test_parse_expansion_strips_markers_and_checks_length():
    from personatune.scenarios import parse_expansion

    text = '1. How do I fix a flat bike tyre?\n- "Tell me a joke about boats"\n(3) ok\n2) How do I fix a flat bike tyre?\n* What should I cook tonight for four people?'
    assert parse_expansion(text, 5) == [
        "How do I fix a flat bike tyre?",
        "Tell me a joke about boats",
        "What should I cook tonight for four people?",
    ]
    assert parse_expansion(text, 1) == ["How do I fix a flat bike tyre?"]


def test_expanded_scenarios_are_marked_teacher_with_stable_ids():
    from personatune.scenarios import expanded_scenarios, expansion_request

    sp = spec()
    msgs = expansion_request(sp, sp.trait_ids[0], "casual", 3)
    assert "3 different messages" in msgs[-1]["content"] and sp.traits[0].description in msgs[-1]["content"]
    a = expanded_scenarios(
        sp, {(sp.trait_ids[0], "casual"): "What did you do this weekend?\nAny plans for the holidays?"}, 3
    )
    b = expanded_scenarios(sp, {(sp.trait_ids[0], "casual"): "What did you do this weekend?"}, 3)
    assert [s.source for s in a] == ["teacher", "teacher"] and a[0].id == b[0].id and a[0].context == "casual"


def test_split_does_not_depend_on_the_hash_seed():
    # Set iteration order of strings changes with PYTHONHASHSEED; the held-out split must not.
    import os
    import subprocess
    import sys

    from tests.helpers import REPO

    code = (
        "from tests.unit.test_scenarios import FakeEmbedder, spec\n"
        "from personatune.scenarios import build_scenarios\n"
        "print([s.id for s in build_scenarios(spec(6), FakeEmbedder(), seed=3) if s.split == 'heldout'])\n"
    )
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))  # the child imports `tests.*` too
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env=dict(os.environ, PYTHONHASHSEED=str(h), PYTHONPATH=path),
        ).stdout
        for h in (1, 2, 3)
    }
    assert len(outs) == 1 and outs.pop().startswith("['")
