"""Persona files: safe loading, one error listing every problem with its field path and line."""

from pathlib import Path

import pytest

from personatune.errors import PersonaSpecError
from personatune.persona import load_persona

BROKEN = Path(__file__).resolve().parents[1] / "data" / "broken_personas"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "personas"


def err(name: str) -> str:
    with pytest.raises(PersonaSpecError) as e:
        load_persona(BROKEN / name)
    return str(e.value)


def test_missing_required_field():
    assert "traits (line 1): required field is missing" in err("missing_traits.yaml")


def test_every_problem_listed_with_path_and_line():
    msg = err("wrong_types.yaml")
    assert "4 problems" in msg
    assert "traits[0].positive (line 6)" in msg
    assert "style.formality (line 9)" in msg and "sloppy" in msg
    assert "style.words (line 10)" in msg
    assert "style.emoji (line 11)" in msg
    assert "\n" not in msg  # one line


def test_duplicate_ids_bad_regex_and_example_roles():
    msg = err("duplicate_ids.yaml")
    assert "traits[1].id (line 5): duplicate id 'calm'" in msg
    assert "behaviors[0].check.regex (line 7)" in msg and "does not compile" in msg
    assert "examples[0].messages (line 9): needs at least one user and one assistant turn" in msg


def test_unknown_key_suggests_the_right_one():
    msg = err("typo_key.yaml")
    assert "trait (line 3): unknown key; did you mean 'traits'?" in msg


def test_python_tags_are_refused_not_run(tmp_path, monkeypatch):
    import os

    called = []
    monkeypatch.setattr(os, "system", lambda *a: called.append(a))
    msg = err("python_tag.yaml")
    assert "line 1" in msg and "not valid YAML" in msg
    assert called == []


def test_yaml_syntax_error_has_line():
    assert "(line 3)" in err("bad_yaml.yaml") or "(line 2)" in err("bad_yaml.yaml")


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(PersonaSpecError, match="not found"):
        load_persona(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(PersonaSpecError, match="top level must be a mapping"):
        load_persona(tmp_path / "list.yaml")


def test_counts_are_gate_checks_not_schema_errors():
    spec = load_persona(BROKEN / "too_few.yaml")  # loads: a draft can be diagnosed
    assert spec.trait_ids == ["cheerful", "precise"]


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_load(path):
    spec = load_persona(path)
    assert 5 <= len(spec.traits) <= 10
