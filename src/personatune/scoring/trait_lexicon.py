"""Per-trait lexical evidence beside the instrument's trait head — measured, **not adopted** (off by default).

Why it was tried: the instrument reads meaning; a trait that is partly about word choice (nautical slang, a
teacher's "let's check") also shows in the words themselves, and the head gave plain sentences without one
nautical word P(nautical_slang) ≈ 0.99 on a run's held-out split.

- For trait t: lexicon+ = smoothed log-odds (scoring/lexical.py) of the words of its description and positive
  exemplars against the lexical bank's plain-register background; lexicon- = the same for its inverse and
  negative exemplars (persona file only).
- lex_t(text) = lexical_score(lexicon+, text) - lexical_score(lexicon-, text), nats per word (0 for a text
  that uses neither side's words).
- traits[t] = sigmoid(logit(head's P(expressed)) + weight * lex_t) and
  violations[t] = sigmoid(logit(head's P(violated)) - weight * lex_t).

WEIGHT = 10 was chosen on the instrument's training corpus (per-trait AUROC of in-persona vs trait-flipped
answers). It raised that AUROC a little on the dev gold sets (0.890 -> 0.899) and on two main-job held-out
splits, left the `consistent` decision on the gold sets where it was (balanced accuracy 0.800 -> 0.799), and
**lowered** accuracy on the third-party Anthropic statements from 0.890 to 0.841 (0.906 -> 0.828 with the facet
specs): per-word evidence from ten exemplars is strong and wrong on short statements. So `Scorer` applies it only
when asked (`trait_lexicon_weight`), for benchmarks (docs/benchmarks.md, "Per-trait lexical evidence").
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


@dataclass
class TraitLexicons:
    """Each trait's (lexicon+, lexicon-) and the weight of their evidence."""

    lexicons: dict[str, tuple[dict[str, float], dict[str, float]]]
    weight: float = WEIGHT

    @classmethod
    def build(cls, spec: PersonaSpec, background: Counter, weight: float = WEIGHT) -> "TraitLexicons":
        lx = {t.id: side_lexicons(t, background) for t in spec.traits}
        return cls(lx, float(weight))

    def lex(self, text: str) -> dict[str, float]:
        """lex_t of `text` for every trait (nats per word)."""
        ws = words(text)
        return {t: lex_of(lx, ws) for t, lx in self.lexicons.items()}

    def apply(self, texts: Sequence[str], traits: list[dict[str, float]], violations: list[dict[str, float]]) -> None:
        """Shift each response's trait and violation probabilities by its lexical evidence, in place."""
        if not self.weight:
            return
        for text, tr, vi in zip(texts, traits, violations):
            for t, x in self.lex(text).items():
                if t in tr:
                    tr[t], vi[t] = shift(tr[t], vi[t], x, self.weight)
