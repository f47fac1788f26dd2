"""Stage 4's `detector_errors.md`: the held-out answers behind each trait's AUROC, worst first."""

from __future__ import annotations

from personatune.stages.s4_evaluation import detector_errors


def section(md: str, trait: str) -> str:
    return md.split(f"## {trait}:")[1].split("\n## ")[0]


def test_lists_the_lowest_chosen_and_highest_flipped_answers_per_trait():
    rows = [
        ("brave", 1, 0.90, "chosen high"),
        ("brave", 1, 0.10, "chosen  low\nacross lines"),
        ("brave", 1, 0.40, "chosen mid"),
        ("brave", 0, 0.80, "flip high"),
        ("brave", 0, 0.05, "flip low"),
        ("calm", 1, 0.70, "calm chosen"),
    ]
    aucs = {
        "brave": {"auroc": 0.6667, "n_pos": 3, "n_neg": 2},
        "calm": {"auroc": None, "n_pos": 1, "n_neg": 0},
    }
    md = detector_errors(rows, aucs, k=2)
    brave = section(md, "brave")
    assert brave.startswith(" AUROC 0.667 (3 chosen, 2 trait-flipped)")
    chosen, flipped = brave.split("trait-flipped, highest first:")
    # the two lowest chosen answers, lowest first, whitespace collapsed; the highest one left out (k = 2)
    assert chosen.index("0.100 chosen low across lines") < chosen.index("0.400 chosen mid")
    assert "chosen high" not in chosen
    assert flipped.index("0.800 flip high") < flipped.index("0.050 flip low")
    calm = section(md, "calm")
    assert calm.startswith(" AUROC not measured (1 chosen, 0 trait-flipped)")
    assert "0.700 calm chosen" in calm and "- (none)" in calm.split("trait-flipped, highest first:")[1]


def test_long_answers_are_cut():
    md = detector_errors([("t", 0, 0.5, "word " * 200)], {"t": {"auroc": None, "n_pos": 0, "n_neg": 1}})
    line = next(x for x in md.splitlines() if x.startswith("- 0.500 "))
    assert len(line) <= len("- 0.500 ") + 300
