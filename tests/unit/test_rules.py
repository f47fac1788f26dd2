"""Behaviour-rule checks: every condition of persona.Check, their conjunction, and edge cases."""

import pytest

from personatune.persona import Behavior, Check
from personatune.scoring.rules import check_rules, compile_rules, ends_with_question, hard_rule_ids


def rule(check: Check | None, bid: str = "r", hard: bool = True) -> Behavior:
    return Behavior(id=bid, description="a rule", check=check, hard=hard)


def passes(check: Check, text: str) -> bool:
    return check_rules(text, [rule(check)])["r"]


@pytest.mark.parametrize(
    "check, text, want",
    [
        # regex: re.search, case-insensitive.
        (Check(regex=r"\bcheers\b"), "Well, CHEERS!", True),
        (Check(regex=r"\bcheers\b"), "cheersy", False),
        (Check(regex=r"^\w+"), "  leading space", False),
        # must_contain: at least one phrase, case-insensitive, any whitespace run, at word edges.
        (Check(must_contain=["happy to help", "glad"]), "Glad to!", True),
        (Check(must_contain=["happy to help", "glad"]), "HAPPY   to\nhelp", True),
        (Check(must_contain=["happy to help", "glad"]), "unhappy to helper, gladly", False),
        # never_contain: none may occur; "AI" is not inside "said"; curly apostrophes are normalised.
        (Check(never_contain=["AI"]), "I said so.", True),
        (Check(never_contain=["AI"]), "As an ai, I cannot.", False),
        (Check(never_contain=["don't"]), "I don’t know.", False),
        # ends_with_question, ignoring trailing whitespace, closing quotes and emoji.
        (Check(ends_with_question=True), "Right?", True),
        (Check(ends_with_question=True), "Right? 🙂 \n", True),
        (Check(ends_with_question=True), 'She asked "right?"', True),
        (Check(ends_with_question=True), "Right? No.", False),
        (Check(ends_with_question=False), "Right.", True),
        (Check(ends_with_question=False), "Right?", False),
        # word bounds, with the style word definition (a dash or an emoji is no word).
        (Check(min_words=3, max_words=5), "one two", False),
        (Check(min_words=3, max_words=5), "one — two 😀 three", True),
        (Check(min_words=3, max_words=5), "1 2 3 4 5", True),
        (Check(min_words=3, max_words=5), "1 2 3 4 5 6", False),
        # Every given condition must hold.
        (Check(regex="x", must_contain=["y"]), "x", False),
        (Check(regex="x", must_contain=["y"]), "x y", True),
        (Check(regex="x", must_contain=["y"], never_contain=["z"]), "x y z", False),
        # No condition: passes.
        (Check(), "anything", True),
        (Check(), "", True),
    ],
)
def test_check_semantics(check, text, want):
    assert passes(check, text) is want


def test_empty_text():
    assert passes(Check(must_contain=["hi"]), "") is False
    assert passes(Check(never_contain=["hi"]), "") is True
    assert passes(Check(ends_with_question=True), "") is False
    assert passes(Check(ends_with_question=False), "") is True
    assert passes(Check(min_words=1), "") is False
    assert passes(Check(max_words=1), "") is True


def test_only_checked_behaviours_are_reported_and_hard_ids():
    behaviors = [
        rule(Check(ends_with_question=True), "asks_back"),
        rule(None, "warm"),
        rule(Check(never_contain=["as an AI"]), "no_ai_talk", hard=False),
        rule(Check(max_words=3), "brief"),
    ]
    rules = compile_rules(behaviors)
    assert rules.ids == ["asks_back", "no_ai_talk", "brief"]
    assert hard_rule_ids(behaviors) == rules.hard_ids == ["asks_back", "brief"]
    res = rules("As an AI, may I ask why?")
    assert res == {"asks_back": True, "no_ai_talk": False, "brief": False}
    assert res == check_rules("As an AI, may I ask why?", behaviors)
    assert rules.hard_pass(res) is False
    # The soft rule fails but every hard rule passes.
    assert rules.hard_pass(rules("As an AI?")) is True  # 3 words, ends with "?"
    # Reused across texts with the same answers as a fresh compile.
    for t in ["Why?", "", "one two three four?", "as an AI"]:
        assert rules(t) == check_rules(t, behaviors)


def test_no_behaviours():
    assert check_rules("text", []) == {}
    assert hard_rule_ids([]) == []


def test_ends_with_question_helper():
    assert ends_with_question("Shall we? 🙂")
    assert ends_with_question("(really?)")
    assert not ends_with_question("Really?!")  # ends with '!', taken literally
    assert not ends_with_question("")
