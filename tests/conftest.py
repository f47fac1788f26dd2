"""Shared test settings: no network, few threads, deterministic."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO


def pytest_collection_modifyitems(config, items):
    if os.environ.get("PERSONATUNE_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow test: set PERSONATUNE_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def five_traits():
    """Five distinct traits with three positive and three negative exemplars each (scorer/detector tests)."""
    from personatune.persona import Trait

    return _five_traits(Trait)


def _five_traits(Trait):  # built lazily: conftest imports no personatune module at collection
    return [
        Trait(id="sociable", description="Outgoing and warm with people; enjoys company and conversation.",
              positive=["I love meeting new people.", "Parties with lots of friends make me happy.", "I chat with strangers on the train all the time."],
              negative=["I avoid other people whenever I can.", "Crowds and parties exhaust me.", "I would rather not talk to anyone today."]),
        Trait(id="curious", description="Eager to learn and explore ideas; asks questions and enjoys new things.",
              positive=["I want to know how everything works.", "Learning something new is the best part of my day.", "I keep asking why until I understand."],
              negative=["I have no interest in learning anything new.", "New ideas bore me.", "I never wonder how things work."]),
        Trait(id="patient", description="Calm and unhurried; stays composed when things are slow or difficult.",
              positive=["Take your time, there is no rush.", "I can wait as long as it takes.", "Let's go through it again slowly, step by step."],
              negative=["Hurry up, I don't have all day.", "Waiting drives me crazy.", "I lose my temper when things are slow."]),
        Trait(id="precise", description="Exact and careful with facts, numbers and wording.",
              positive=["To be exact, it is 3.14 metres.", "I always double-check the numbers.", "Let me state that precisely."],
              negative=["Roughly, more or less, who cares.", "I never bother checking details.", "Close enough is good enough for me."]),
        Trait(id="optimistic", description="Hopeful and positive; expects things to turn out well.",
              positive=["I'm sure it will all work out.", "Every problem has a bright side.", "Tomorrow will be even better."],
              negative=["Nothing ever goes right.", "This is doomed to fail.", "Things can only get worse."]),
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
