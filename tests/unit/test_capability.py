from personatune.capability import Item, is_correct, load_suite, retention, score_suite
from personatune.scoring.aggregate import wilson_ci as wilson


def test_suite_loads_with_three_tasks():
    items, texts = load_suite()
    assert {i.task for i in items} == {"arithmetic", "facts", "instructions"}
    assert len(texts) >= 5


def test_checks():
    assert is_correct(Item("a", "q", ["12"]), "The answer is 12.")
    assert not is_correct(Item("a", "q", ["12"]), "It is 112")  # number boundaries
    assert not is_correct(Item("a", "q", ["6"]), "6.5")
    assert is_correct(Item("f", "q", ["Paris"]), "paris, of course")
    assert is_correct(Item("i", "q", check={"regex": "^\\W*yes\\W*$"}), "Yes.")
    assert not is_correct(Item("i", "q", check={"regex": "^\\W*yes\\W*$"}), "Yes, sure")
    assert not is_correct(Item("i", "q", check={"max_words": 3}), "one two three four")


class EchoBackend:
    """Answers from a fixed table: lets the suite's arithmetic be checked without a model."""

    def __init__(self, table):
        self.table = table

    def generate(self, convs, **kw):
        return [[self.table.get(c[-1]["content"], "no idea")] for c in convs]


def test_score_and_retention_arithmetic():
    items = [Item("math", "1+1?", ["2"]), Item("math", "2+2?", ["4"]), Item("facts", "capital of France?", ["Paris"])]
    base = score_suite(EchoBackend({"1+1?": "2", "2+2?": "4", "capital of France?": "Paris"}), items)
    cand = score_suite(EchoBackend({"1+1?": "2", "2+2?": "5", "capital of France?": "Paris"}), items)
    assert base["score"] == 1.0 and abs(cand["score"] - 2 / 3) < 1e-12
    assert base["tasks"]["math"]["accuracy"] == 1.0 and cand["tasks"]["math"]["accuracy"] == 0.5
    r = retention(cand, base)
    assert abs(r["retention"] - 2 / 3) < 1e-12
    lo = wilson(2, 2)[0]
    assert abs(r["task_drops"]["math"]["allowed"] - (1.0 - lo)) < 1e-12
    assert r["task_drops"]["math"]["ok"] is (0.5 <= 1.0 - lo)


def test_wilson_known_value():
    lo, hi = wilson(8, 10)
    assert abs(lo - 0.4902) < 1e-3 and abs(hi - 0.9433) < 1e-3


def test_the_anchor_check_is_stricter_than_the_suite_check():
    """Training data needs a stricter check than scoring: whole words only, and the last number stated must be right."""
    import re

    from personatune.capability import Item, is_anchor_correct, is_correct, load_anchors

    six, ice, months = (
        Item("arithmetic", "6 + 9?", ["15"]),
        Item("facts", "frozen?", ["ice"]),
        Item("f", "m", ["12", "twelve"]),
    )
    looping = "So 6 + 9 is 15.\nIt's always 15.\n\nSo 15 + 15 = 20."
    assert is_correct(six, looping) and not is_anchor_correct(six, looping)
    assert is_correct(ice, "Nice! Afloxacarb") and not is_anchor_correct(ice, "Nice! Afloxacarb")
    assert is_anchor_correct(six, "Aye, 6 + 9 = 15, matey!") and is_anchor_correct(ice, "Frozen water is ice.")
    assert is_anchor_correct(months, "Twelve months, aye") and not is_anchor_correct(months, "12 months, or 10")
    assert not is_anchor_correct(six, "No idea, matey.")
    for a in load_anchors():  # no answer can pass by echoing the question
        assert not any(re.search(rf"\b{re.escape(x)}\b", a.question, re.IGNORECASE) for x in a.answers), a.question
