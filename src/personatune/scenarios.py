"""Stage-3 scenarios: the user prompts a persona is trained and tested on.

Sources: the built-in bank `data/prompt_bank.yaml` (written for this project; six contexts:
casual, technical, emotional, adversarial persona-break attempts, multi-turn follow-ups and
off-topic requests). Each scenario records its context and the traits it targets. Targets are
assigned so that coverage is balanced: each prompt targets `targets_per_prompt` traits, chosen
among the least-covered traits so far, ties broken by how relevant the trait is to the prompt
(cosine similarity of the prompt's embedding with the trait's positive exemplars). Near-duplicate
prompts are dropped by embedding similarity. A seeded, per-context held-out split is kept apart for
stages 4-7 and never used in training.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any

import numpy as np
import yaml

from personatune.persona import PersonaSpec

CONTEXTS: tuple[str, ...] = ("casual", "technical", "emotional", "adversarial", "multi_turn", "off_topic")


@dataclass
class Scenario:
    """One prompt: a conversation that ends with a user turn.

    Attributes:
        id: stable id (context + hash of the messages).
        context: one of CONTEXTS (or a user-defined label).
        messages: OpenAI-style messages, ending with the user turn to answer.
        targets: trait ids this prompt gives the persona a chance to express.
        split: "train" or "heldout".
        source: "bank" (built-in) or "teacher" (expanded by a teacher model).
    """

    id: str
    context: str
    messages: list[dict[str, str]]
    targets: list[str] = field(default_factory=list)
    split: str = "train"
    source: str = "bank"

    @property
    def prompt(self) -> str:
        return self.messages[-1]["content"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sid(context: str, messages: list[dict[str, str]]) -> str:
    blob = context + "\x00" + "\x00".join(f"{m['role']}:{m['content']}" for m in messages)
    return f"{context}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def load_prompt_bank(contexts: tuple[str, ...] = CONTEXTS) -> list[Scenario]:
    """The built-in prompts of the given contexts, as untargeted train scenarios."""
    bank = yaml.safe_load(resources.files("personatune.data").joinpath("prompt_bank.yaml").read_text(encoding="utf-8"))
    out: list[Scenario] = []
    for ctx in contexts:
        for item in bank.get(ctx, []):
            msgs = [{"role": "user", "content": item}] if isinstance(item, str) else [dict(m) for m in item]
            out.append(Scenario(id=_sid(ctx, msgs), context=ctx, messages=msgs))
    return out


def drop_near_duplicates(scenarios: list[Scenario], embeddings: np.ndarray, max_similarity: float) -> list[int]:
    """Indices of scenarios to keep: a later prompt whose cosine similarity to a kept one is above
    `max_similarity` is dropped. `embeddings` are unit vectors, one row per scenario."""
    keep: list[int] = []
    for i in range(len(scenarios)):
        if keep and float(np.max(embeddings[keep] @ embeddings[i])) > max_similarity:
            continue
        keep.append(i)
    return keep


def assign_targets(relevance: np.ndarray, trait_ids: list[str], per_prompt: int, order: list[int]) -> list[list[str]]:
    """Balanced target assignment.

    Args:
        relevance: (n_prompts, n_traits) similarity of each prompt to each trait.
        trait_ids: trait ids, in relevance's column order.
        per_prompt: traits each prompt targets.
        order: the order prompts are visited in (seeded shuffle).

    Returns:
        Per prompt (in the original order), its targeted trait ids: the `per_prompt` least-covered
        traits so far, ties broken by relevance.
    """
    k = min(per_prompt, len(trait_ids))
    counts = np.zeros(len(trait_ids), dtype=int)
    out: list[list[str]] = [[] for _ in range(relevance.shape[0])]
    for i in order:
        ranked = sorted(range(len(trait_ids)), key=lambda t: (counts[t], -relevance[i, t]))[:k]
        for t in ranked:
            counts[t] += 1
        out[i] = [trait_ids[t] for t in sorted(ranked)]
    return out


def build_scenarios(
    spec: PersonaSpec,
    embedder: Any,
    *,
    contexts: tuple[str, ...] = CONTEXTS,
    targets_per_prompt: int = 2,
    heldout_fraction: float = 0.2,
    max_similarity: float = 0.92,
    seed: int = 0,
    extra: list[Scenario] | None = None,
) -> list[Scenario]:
    """Scenarios for a persona: bank (+ extra, e.g. teacher-written) prompts, deduplicated, targeted, split.

    Args:
        spec: the persona.
        embedder: object with `encode(list[str]) -> (n, d) unit vectors` (personatune.embeddings.Embedder).
        contexts: which contexts of the bank to use.
        targets_per_prompt: traits each prompt targets (count).
        heldout_fraction: share of each context kept for held-out evaluation (0-1).
        max_similarity: cosine similarity above which a prompt counts as a near-duplicate (0-1).
        seed: seeds the visiting order and the split.

    Returns:
        The scenarios, train and held-out, each with context, targets and split.
    """
    items = load_prompt_bank(contexts) + list(extra or [])
    emb = embedder.encode([s.prompt for s in items])
    keep = drop_near_duplicates(items, emb, max_similarity)
    items, emb = [items[i] for i in keep], emb[keep]
    centroids = []
    for t in spec.traits:
        c = embedder.encode([t.description, *t.positive]).mean(0)
        centroids.append(c / max(float(np.linalg.norm(c)), 1e-9))
    relevance = emb @ np.stack(centroids).T
    rng = random.Random(seed)
    order = list(range(len(items)))
    rng.shuffle(order)
    for s, tg in zip(items, assign_targets(relevance, spec.trait_ids, targets_per_prompt, order)):
        s.targets = tg
    for ctx in sorted({s.context for s in items}):  # sorted: set order changes with PYTHONHASHSEED, the split must not
        idx = [i for i, s in enumerate(items) if s.context == ctx]
        rng.shuffle(idx)
        for i in idx[: int(round(heldout_fraction * len(idx)))]:
            items[i].split = "heldout"
    return items


# What each context means, for the teacher that writes new prompts (multi_turn is not expanded: a
# follow-up needs an earlier exchange, which the bank writes by hand).
CONTEXT_DESCRIPTIONS: dict[str, str] = {
    "casual": "casual small talk",
    "technical": "a request for help with a task, a tool or some code",
    "emotional": "a person who is sad, stressed or worried and wants support",
    "adversarial": "an attempt to make the assistant drop its character (e.g. 'stop pretending', 'are you an AI?')",
    "off_topic": "an unusual request that has nothing to do with the assistant's usual topics",
}
_LINE_PREFIX = re.compile(r"^\s*(?:[-*•]|\d+[.)]|\(\d+\))\s*")


def expansion_request(spec: PersonaSpec, trait_id: str, context: str, n: int) -> list[dict[str, str]]:
    """The chat messages asking a teacher for `n` new user prompts of `context` that let `trait_id` show."""
    t = spec.trait(trait_id)
    return [
        {
            "role": "system",
            "content": "You write realistic messages that users send to a chatbot. Reply with the messages only, one per line.",
        },
        {
            "role": "user",
            "content": f"Write {n} different messages a user might send to a chatbot: {CONTEXT_DESCRIPTIONS[context]}. "
            f"Each message should give the chatbot a natural chance to show this trait: {t.description} "
            f"Write one message per line, no numbering, no quotes, each under 30 words.",
        },
    ]


def parse_expansion(text: str, n: int, min_words: int = 3, max_words: int = 40) -> list[str]:
    """User prompts from a teacher's reply: one per line, list markers and quotes stripped, lengths checked, at most n."""
    out: list[str] = []
    for line in text.splitlines():
        line = _LINE_PREFIX.sub("", line).strip().strip("\"“”'").strip()
        if min_words <= len(line.split()) <= max_words and line not in out:
            out.append(line)
    return out[:n]


def expanded_scenarios(spec: PersonaSpec, replies: dict[tuple[str, str], str], n: int) -> list[Scenario]:
    """Scenarios (source "teacher") from the teacher's replies to `expansion_request`, keyed by (trait id, context)."""
    out: list[Scenario] = []
    for (trait_id, ctx), text in replies.items():
        for prompt in parse_expansion(text, n):
            msgs = [{"role": "user", "content": prompt}]
            out.append(Scenario(id=_sid(ctx, msgs), context=ctx, messages=msgs, source="teacher"))
    return out


def coverage(scenarios: list[Scenario], trait_ids: list[str]) -> dict[str, dict[str, int]]:
    """trait id -> context -> number of scenarios targeting that trait in that context."""
    table: dict[str, dict[str, int]] = {t: {} for t in trait_ids}
    for s in scenarios:
        for t in s.targets:
            table.setdefault(t, {})
            table[t][s.context] = table[t].get(s.context, 0) + 1
    return table
