"""Persona files: safe loading, one error listing every problem with its field path and line."""

import os
import re
from pathlib import Path

import pytest

from personatune.errors import PersonaSpecError, PersonatuneError
from personatune.persona import format_loc, load_persona, persona_from_yaml

BROKEN = Path(__file__).resolve().parents[1] / "data" / "broken_personas"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "personas"

VALID = """\
name: Minimal
summary: A small but valid persona.
traits:
  - id: calm
    description: Stays calm.
    positive: [Deep breaths., All is well., No rush.]
    negative: [Panic!, Run!, Help!]
"""


def err(name: str) -> str:
    with pytest.raises(PersonaSpecError) as e:
        load_persona(BROKEN / name)
    return str(e.value)


def problems(msg: str) -> list[str]:
    """The problem lines of a multi-problem message (header line dropped)."""
    return [ln.removeprefix("  - ") for ln in msg.splitlines()[1:]]


def test_valid_minimal_file_loads():
    spec = persona_from_yaml(VALID)
    assert spec.trait_ids == ["calm"] and spec.traits[0].negative == ["Panic!", "Run!", "Help!"]


def test_error_is_a_user_error_with_exit_code_2():
    with pytest.raises(PersonatuneError) as e:
        load_persona(BROKEN / "wrong_types.yaml")
    assert isinstance(e.value, PersonaSpecError) and e.value.exit_code == 2


def test_missing_required_field_names_field_and_line():
    assert problems(err("missing_traits.yaml")) == ["traits (line 1): required field is missing; fix: add `traits:`"]


def test_every_type_problem_listed_with_path_and_line():
    msg = err("wrong_types.yaml")
    assert msg.splitlines()[0].endswith("invalid persona file, 6 problems:")
    got = problems(msg)
    assert len(got) == 6
    assert got[0].startswith("traits[0].positive (line 6): expected a list, got 'I love it'; fix: write a YAML list")
    assert got[1].startswith(
        "style.formality (line 9): 'sloppy' is not allowed; fix: use one of 'casual', 'neutral' or 'formal'"
    )
    assert got[2].startswith("style.words (line 10): words must be [min, max]") and "[50, 10]" in got[2]
    assert got[3].startswith("style.emoji (line 11): 'always' is not allowed")
    # YAML reads `yes` as a boolean: the message says so and tells how to fix it.
    assert got[4].startswith("style.signature_phrases[0] (line 12): expected text, got True; fix: write text; quote it")
    assert got[5].startswith("style.signature_phrases[1] (line 12): expected text, got 42")
    for line in got:  # every line has the `path (line N): what; fix: how` shape
        assert re.match(r"^[\w.\[\]]+ \(line \d+\): .+; fix: .+$", line), line


def test_cross_field_problems_listed_together():
    got = problems(err("duplicate_ids.yaml"))
    assert got == [
        "traits[1].id (line 5): duplicate trait id 'calm' (first used at traits[0].id, line 4); fix: give every trait a unique id, or merge the two traits",
        "traits[1].positive[2] (line 5): same utterance as traits[0].positive[2] (line 4); fix: keep each exemplar once: an utterance cannot both "
        "express and contradict a trait, and a repeated one inflates the separability check",
        "behaviors[1].id (line 8): duplicate behavior id 'short' (first used at behaviors[0].id, line 7); fix: give every behavior a unique id",
        "behaviors[1].check.min_words (line 8): min_words 30 is greater than max_words 20; fix: make min_words <= max_words",
        "behaviors[2].check (line 9): the check states no condition, so it would pass every response; fix: give at least one of regex, "
        "must_contain, never_contain, ends_with_question, min_words, max_words, or remove `check`",
        "examples[0].messages (line 11): no assistant turn after the user turn; fix: add `- role: assistant` with the persona's reply",
    ]


def test_utterance_both_positive_and_negative_is_reported():
    text = VALID.replace("negative: [Panic!, Run!, Help!]", 'negative: [Panic!, Run!, "all is  WELL."]')
    with pytest.raises(PersonaSpecError) as e:
        persona_from_yaml(text)
    assert "traits[0].negative[2] (line 7): same utterance as the same trait's other list (line 6)" in str(e.value)


def test_bad_regex_names_path_line_and_fix():
    got = problems(err("bad_regex.yaml"))
    assert len(got) == 1
    assert got[0].startswith("behaviors[0].check.regex (line 9): regex 'please (now' does not compile")
    assert "fix: correct the pattern" in got[0]


def test_unknown_keys_suggest_the_right_one_at_any_depth():
    got = problems(err("typo_key.yaml"))
    assert (
        "traits[0].positve (line 6): unknown key 'positve'; fix: did you mean 'positive'? valid keys here: id, description, positive, negative, inverse"
        in got
    )
    assert any(g.startswith("exampels (line 8): unknown key 'exampels'; fix: did you mean 'examples'?") for g in got)
    # The misspelt key also leaves `positive` missing: reported at the trait's own line.
    assert any(g.startswith("traits[0].positive (line 4): required field is missing") for g in got)


def test_python_tags_are_refused_not_run(monkeypatch, tmp_path):
    called = []
    monkeypatch.setattr(os, "system", lambda *a: called.append(a) or 0)
    msg = err("python_tag.yaml")
    assert msg.startswith(f"{BROKEN / 'python_tag.yaml'}: line 1, column 7: YAML tag not allowed")
    assert "python/object/apply:os.system" in msg and "fix: remove the tag" in msg
    assert called == [] and not Path("/tmp/personatune_pwned").exists()
    # Any python tag, anywhere in the tree, is refused the same way.
    with pytest.raises(PersonaSpecError, match=r"line 6, column 16: YAML tag not allowed"):
        persona_from_yaml(VALID.replace("[Deep breaths.,", "[!!python/name:os.system ,"))


def test_yaml_syntax_error_has_line():
    msg = err("bad_yaml.yaml")
    assert "YAML syntax error at line 3, column 7" in msg and "\n" not in msg


def test_missing_file_folder_and_non_mapping(tmp_path):
    with pytest.raises(PersonaSpecError, match="not found; fix: give the path"):
        load_persona(tmp_path / "nope.yaml")
    with pytest.raises(PersonaSpecError, match="is a folder"):
        load_persona(tmp_path)
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(PersonaSpecError, match="the file is a list, not a mapping"):
        load_persona(tmp_path / "list.yaml")
    (tmp_path / "empty.yaml").write_text("# nothing\n")
    with pytest.raises(PersonaSpecError, match="the file is empty"):
        load_persona(tmp_path / "empty.yaml")
    (tmp_path / "latin1.yaml").write_bytes("name: Zo\xeb\n".encode("latin-1"))
    with pytest.raises(PersonaSpecError, match="not UTF-8"):
        load_persona(tmp_path / "latin1.yaml")


def test_duplicate_keys_are_reported_not_silently_dropped():
    with pytest.raises(PersonaSpecError) as e:
        persona_from_yaml(VALID + "name: Second\n")
    assert "name (line 8): key 'name' appears twice in this mapping (lines 1 and 8)" in str(e.value)


def test_wrong_nested_shapes():
    text = VALID + "examples:\n  - just a string\nbehaviors:\n  - id: Bad-Id\n    description: x\n"
    with pytest.raises(PersonaSpecError) as e:
        persona_from_yaml(text)
    got = problems(str(e.value))
    assert got[0].startswith(
        "examples[0] (line 9): expected a mapping, got 'just a string'; fix: write it as `key: value` lines with keys messages, context"
    )
    assert got[1] == "behaviors[0].id (line 11): behavior id 'Bad-Id' must be snake_case; fix: rename it, e.g. 'bad_id'"


def test_counts_are_gate_checks_not_schema_errors():
    spec = load_persona(BROKEN / "too_few.yaml")  # loads: a draft can be diagnosed by the gate
    assert spec.trait_ids == ["cheerful", "precise"] and len(spec.traits[0].positive) == 1 and spec.examples == []


def test_format_loc():
    assert format_loc(("traits", 0, "positive", 2)) == "traits[0].positive[2]"
    assert format_loc(()) == "(top level)"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_personas_load(path):
    spec = load_persona(path)
    assert 6 <= len(spec.traits) <= 8 and len(spec.examples) >= 3
    assert any(b.check is not None for b in spec.behaviors)
