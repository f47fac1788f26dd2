"""Per-trait lexical evidence beside the instrument's trait head, for the traits whose words carry them.

Why: the instrument reads meaning; a trait that is partly about word choice (nautical slang, a teacher's
"let's check") also shows in the words themselves, and the head gave plain sentences without one nautical word
P(nautical_slang) ≈ 0.99 on a run's held-out split.

- For trait t: lexicon+ = smoothed log-odds (scoring/lexical.py) of the words of its description and positive
  exemplars against the lexical bank's plain-register background; lexicon- = the same for its inverse and
  negative exemplars (persona file only).
- lex_t(text) = lexical_score(lexicon+, text) - lexical_score(lexicon-, text), nats per word (0 for a text
  that uses neither side's words).
- traits[t] = sigmoid(logit(head's P(expressed)) + w_t * lex_t) and
  violations[t] = sigmoid(logit(head's P(violated)) - w_t * lex_t).
- **Selection** (since 2026-12-02): w_t = WEIGHT only for a trait whose lexicon separates its own exemplars —
  leave-one-out AUROC of lex_t between its positive and negative exemplars ≥ SELECT_AUROC (0.8, the stage-2
  separability bar), i.e. a trait whose positives share words the negatives do not (a register: "aye", "matey");
  w_t = 0 for the others (attitudes written in varied words, where ten exemplars' words are strong and wrong).

WEIGHT = 10 was chosen on the instrument's training corpus (per-trait AUROC of in-persona vs trait-flipped
answers). Applied to every trait it raised that AUROC a little on the dev gold sets (0.890 -> 0.899) and on two
main-job held-out splits, and **lowered** accuracy on the third-party Anthropic statements from 0.890 to 0.841
(0.906 -> 0.828 with the facet specs): so it was measured and not adopted (docs/benchmarks.md, "Per-trait
lexical evidence"). With the selection, no Big-Five trait's lexicon separates its exemplars (LOO AUROC 0.06-0.45),
so the Anthropic figures are the head's, and the register traits get the evidence (docs/benchmarks.md,
"Per-trait lexical evidence, selected per trait").
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from personatune.persona import PersonaSpec
from personatune.scoring.instrument import sigmoid
from personatune.scoring.lexical import lexical_score, log_odds, words

WEIGHT = 10.0  # logits per (nats per word)
SELECT_AUROC = 0.8  # a trait gets lexical evidence when its lexicon separates its own exemplars this well (LOO)


def _logit(p: float) -> float:
    p = min(max(float(p), 1e-9), 1.0 - 1e-9)
    return math.log(p / (1.0 - p))


def side_lexicons(trait: Any, background: Counter) -> tuple[dict[str, float], dict[str, float]]:
    """(lexicon+, lexicon-) of one trait."""
    p = Counter(w for s in [trait.description, *trait.positive] for w in words(s))
    n = Counter(w for s in [trait.inverse or "", *trait.negative] for w in words(s))
    return log_odds(p, background), log_odds(n, background)


def lex_of(lexicons: tuple[dict[str, float], dict[str, float]], text: str | list[str]) -> float:
    """lex_t of `text` under one trait's (lexicon+, lexicon-), nats per word."""
    ws = words(text) if isinstance(text, str) else text
    return lexical_score(lexicons[0], ws) - lexical_score(lexicons[1], ws)


def shift(p_expressed: float, p_violated: float, lex: float, weight: float = WEIGHT) -> tuple[float, float]:
    """(traits[t], violations[t]) after the lexical evidence `lex` (nats per word) at `weight`."""
    if not weight:
        return p_expressed, p_violated
    return sigmoid(_logit(p_expressed) + weight * lex), sigmoid(_logit(p_violated) - weight * lex)


def exemplar_auroc(trait: Any, background: Counter) -> float | None:
    """Leave-one-out AUROC of lex_t between the trait's positive and negative exemplars (None without both).

    Each exemplar is left out of its side's lexicon in turn (the description and inverse stay in) and scored.
    """
    from personatune.scoring.aggregate import auroc

    pos, neg = list(trait.positive), list(trait.negative)
    if not pos or not neg:
        return None
    scores, labels = [], []
    for side, rows in ((1, pos), (0, neg)):
        for i, text in enumerate(rows):
            p = [trait.description, *(r for j, r in enumerate(pos) if not (side == 1 and j == i))]
            n = [trait.inverse or "", *(r for j, r in enumerate(neg) if not (side == 0 and j == i))]
            lx = (
                log_odds(Counter(w for s in p for w in words(s)), background),
                log_odds(Counter(w for s in n for w in words(s)), background),
            )
            scores.append(lex_of(lx, text))
            labels.append(side)
    return auroc(scores, labels)


@dataclass
class TraitLexicons:
    """Each trait's (lexicon+, lexicon-) and the weight of its evidence (0 for a trait not selected)."""

    lexicons: dict[str, tuple[dict[str, float], dict[str, float]]]
    weight: float = WEIGHT
    weights: dict[str, float] | None = None  # per trait; None: `weight` for every trait

    @classmethod
    def build(
        cls, spec: PersonaSpec, background: Counter, weight: float = WEIGHT, select: float | None = SELECT_AUROC
    ) -> "TraitLexicons":
        """Lexicons of every trait; with `select`, weight only for traits whose exemplar_auroc >= select."""
        lx = {t.id: side_lexicons(t, background) for t in spec.traits}
        if select is None or not weight:
            return cls(lx, float(weight))
        sep = {t.id: exemplar_auroc(t, background) for t in spec.traits}
        ws = {t: (float(weight) if a is not None and a >= select else 0.0) for t, a in sep.items()}
        return cls(lx, float(weight), ws)

    def weight_of(self, trait_id: str) -> float:
        return self.weight if self.weights is None else self.weights.get(trait_id, 0.0)

    def lex(self, text: str) -> dict[str, float]:
        """lex_t of `text` for every trait (nats per word)."""
        ws = words(text)
        return {t: lex_of(lx, ws) for t, lx in self.lexicons.items()}

    def apply(self, texts: Sequence[str], traits: list[dict[str, float]], violations: list[dict[str, float]]) -> None:
        """Shift each response's trait and violation probabilities by its lexical evidence, in place."""
        if not self.weight or (self.weights is not None and not any(self.weights.values())):
            return
        for text, tr, vi in zip(texts, traits, violations):
            for t, x in self.lex(text).items():
                if t in tr:
                    tr[t], vi[t] = shift(tr[t], vi[t], x, self.weight_of(t))
