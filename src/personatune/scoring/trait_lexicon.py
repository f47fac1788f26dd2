"""Per-trait lexical evidence beside the instrument's trait head.

Why: the instrument reads meaning; a trait that is partly about word choice (nautical slang, a teacher's
"let's check", a gardener's plant names) also shows in the words themselves, and a contradiction written in
the persona's voice often swaps exactly those words. Measured on the instrument's training corpus, the
development gold sets and a run's held-out split (benchmarks/experiments/trait_lexicon.py, docs/benchmarks.md,
"Per-trait lexicons"), adding this evidence to the trait head's logit raises the per-trait AUROC of
in-persona vs trait-flipped answers on all three.

- For trait t: lexicon+ = smoothed log-odds (scoring/lexical.py) of the words of its description and positive
  exemplars against the lexical bank's plain-register background; lexicon- = the same for its inverse and
  negative exemplars (persona file only).
- lex_t(text) = lexical_score(lexicon+, text) - lexical_score(lexicon-, text), nats per word (0 for a text
  that uses neither side's words).
- traits[t] = sigmoid(logit(head's P(expressed)) + WEIGHT * lex_t) and
  violations[t] = sigmoid(logit(head's P(violated)) - WEIGHT * lex_t).

WEIGHT was chosen on the instrument's training corpus (24 personas; never the gold sets), see the
experiment's table.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from personatune.persona import PersonaSpec
from personatune.scoring.instrument import sigmoid
from personatune.scoring.lexical import lexical_score, log_odds, words

WEIGHT = 10.0  # logits per (nats per word)


def _logit(p: float) -> float:
    p = min(max(float(p), 1e-9), 1.0 - 1e-9)
    return math.log(p / (1.0 - p))


@dataclass
class TraitLexicons:
    """Each trait's (lexicon+, lexicon-) and the weight of their evidence."""

    lexicons: dict[str, tuple[dict[str, float], dict[str, float]]]
    weight: float = WEIGHT

    @classmethod
    def build(cls, spec: PersonaSpec, background: Counter, weight: float = WEIGHT) -> "TraitLexicons":
        lx = {}
        for t in spec.traits:
            pos = Counter(w for s in [t.description, *t.positive] for w in words(s))
            neg = Counter(w for s in [t.inverse or "", *t.negative] for w in words(s))
            lx[t.id] = (log_odds(pos, background), log_odds(neg, background))
        return cls(lx, float(weight))

    def lex(self, text: str) -> dict[str, float]:
        """lex_t of `text` for every trait (nats per word)."""
        ws = words(text)
        return {t: lexical_score(p, ws) - lexical_score(n, ws) for t, (p, n) in self.lexicons.items()}

    def apply(self, texts: Sequence[str], traits: list[dict[str, float]], violations: list[dict[str, float]]) -> None:
        """Shift each response's trait and violation probabilities by its lexical evidence, in place."""
        if not self.weight:
            return
        for text, tr, vi in zip(texts, traits, violations):
            for t, x in self.lex(text).items():
                if t in tr:
                    tr[t] = sigmoid(_logit(tr[t]) + self.weight * x)
                    vi[t] = sigmoid(_logit(vi[t]) - self.weight * x)
