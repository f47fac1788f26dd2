"""Shared test settings (no network, few threads, deterministic) and the test tiers.

Every test belongs to exactly one tier, a pytest marker:
  unit   no model is built or loaded, no training: the whole tier runs in seconds (tests/unit/)
  stage  the tiny in-process model, the scoring instrument, a stage or a trainer (tests/stages/, and the tests
         under tests/unit marked `stage`)
  smoke  the real `personatune` CLI end to end in subprocesses (tests/test_smoke.py)
A test's own tier marker wins; otherwise its folder decides, and a test file outside these places is an error,
so no test can drop out of every tier. Tests in tests/stages and tests/test_smoke.py are never unit tests.

What runs:
  pytest                          the unit tier only (no path and no -m given: `-m unit` is set here, and the
                                  stage and smoke files are not even imported)
  pytest PATH...                  every test under PATH, whatever its tier (name a file, get its tests)
  pytest -m stage [PATH...]       one tier
  bash scripts/test.sh [ARGS]     all three tiers (`-m "unit or stage or smoke"`), after ruff; CI runs this
`slow` tests are skipped unless PERSONATUNE_SLOW=1, `gpu` tests without CUDA.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pathlib

import pytest

from tests.helpers import REPO

TESTS = pathlib.Path(__file__).resolve().parent
TIERS = ("unit", "stage", "smoke")
FOLDER_TIERS = {"unit": "unit", "stages": "stage", "test_smoke.py": "smoke"}  # first path part under tests/ -> tier


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO


def _tier(item: pytest.Item) -> str | None:
    """The test's explicit tier marker, else its folder's tier; None when it has neither."""
    explicit = {m.name for m in item.iter_markers() if m.name in TIERS}
    if len(explicit) > 1:
        raise pytest.UsageError(f"{item.nodeid} is marked with several tiers ({', '.join(sorted(explicit))}); keep one")
    try:
        folder = FOLDER_TIERS.get(item.path.resolve().relative_to(TESTS).parts[0])
    except ValueError:  # a test outside tests/ (given on the command line)
        folder = None
    if explicit == {"unit"} and folder in ("stage", "smoke"):
        raise pytest.UsageError(
            f"{item.nodeid} is marked unit but lives in a {folder} file, which a plain `pytest` skips; "
            "move it to tests/unit"
        )
    return explicit.pop() if explicit else folder


def _plain_run(config) -> bool:
    """`pytest` with neither a path nor -m: the run that means "the unit tests"."""
    return config.args_source == pytest.Config.ArgsSource.TESTPATHS and not config.option.markexpr


def pytest_configure(config):
    if _plain_run(config):
        config.option.markexpr = "unit"
        config._personatune_plain = True  # remembered: markexpr no longer says the run was plain


def pytest_ignore_collect(collection_path, config):
    """A plain `pytest` does not import the stage and smoke files at all: importing them (trl, the trainers)
    would take longer than the unit tests themselves."""
    if not getattr(config, "_personatune_plain", False):
        return None
    try:
        first = collection_path.resolve().relative_to(TESTS).parts[:1]
    except ValueError:
        return None
    return True if first and FOLDER_TIERS.get(first[0]) in ("stage", "smoke") else None


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: the tier markers must be on the items by then
def pytest_collection_modifyitems(config, items):
    untiered = []
    for item in items:
        tier = _tier(item)
        if tier is None:
            untiered.append(item.nodeid)
        elif not item.get_closest_marker(tier):
            item.add_marker(tier)
    if untiered:
        raise pytest.UsageError(
            f"{len(untiered)} test(s) in no tier (unit, stage, smoke), e.g. {untiered[0]}: put the file under "
            "tests/unit or tests/stages, or mark it (see tests/conftest.py)"
        )
    if os.environ.get("PERSONATUNE_SLOW") != "1":
        skip = pytest.mark.skip(reason="slow test: set PERSONATUNE_SLOW=1 to run")
        for item in items:
            if item.get_closest_marker("slow"):
                item.add_marker(skip)
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu:
        import torch  # only when a gpu test is collected: a plain unit run does not pay for importing torch here

        if not torch.cuda.is_available():
            for item in gpu:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


@pytest.fixture(scope="session")
def five_traits():
    """Five distinct traits with three positive and three negative exemplars each (scorer/detector tests)."""
    from personatune.persona import Trait

    return _five_traits(Trait)


def _five_traits(Trait):  # built lazily: conftest imports no personatune module at collection
    return [
        Trait(
            id="sociable",
            description="Outgoing and warm with people; enjoys company and conversation.",
            positive=[
                "I love meeting new people.",
                "Parties with lots of friends make me happy.",
                "I chat with strangers on the train all the time.",
            ],
            negative=[
                "I avoid other people whenever I can.",
                "Crowds and parties exhaust me.",
                "I would rather not talk to anyone today.",
            ],
        ),
        Trait(
            id="curious",
            description="Eager to learn and explore ideas; asks questions and enjoys new things.",
            positive=[
                "I want to know how everything works.",
                "Learning something new is the best part of my day.",
                "I keep asking why until I understand.",
            ],
            negative=[
                "I have no interest in learning anything new.",
                "New ideas bore me.",
                "I never wonder how things work.",
            ],
        ),
        Trait(
            id="patient",
            description="Calm and unhurried; stays composed when things are slow or difficult.",
            positive=[
                "Take your time, there is no rush.",
                "I can wait as long as it takes.",
                "Let's go through it again slowly, step by step.",
            ],
            negative=[
                "Hurry up, I don't have all day.",
                "Waiting drives me crazy.",
                "I lose my temper when things are slow.",
            ],
        ),
        Trait(
            id="precise",
            description="Exact and careful with facts, numbers and wording.",
            positive=[
                "To be exact, it is 3.14 metres.",
                "I always double-check the numbers.",
                "Let me state that precisely.",
            ],
            negative=[
                "Roughly, more or less, who cares.",
                "I never bother checking details.",
                "Close enough is good enough for me.",
            ],
        ),
        Trait(
            id="optimistic",
            description="Hopeful and positive; expects things to turn out well.",
            positive=[
                "I'm sure it will all work out.",
                "Every problem has a bright side.",
                "Tomorrow will be even better.",
            ],
            negative=["Nothing ever goes right.", "This is doomed to fail.", "Things can only get worse."],
        ),
    ]


@pytest.fixture(scope="module")
def tiny_varied():
    """personatune.models.build_tiny_model with its weights redrawn at std 0.2.

    At the default init (std 0.02, tied embeddings) greedy decoding repeats one token whatever the
    prompt; larger weights make continuations depend on the prompt, so comparisons mean something.
    """
    import torch

    from personatune.models import build_tiny_model

    model, tok = build_tiny_model(0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model, tok
