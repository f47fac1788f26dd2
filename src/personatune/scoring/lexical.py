"""Lexical evidence that a response is in *this* persona's voice rather than another persona's.

Why: the instrument's voice head tells a colourful register from a plain one, not one persona from another —
on the development gold sets it judged 0.547 of *other* personas' gold answers `consistent`
(docs/benchmarks.md, "Other personas"). Word choice separates personas well (AUROC 0.909 gold vs other
personas, against 0.579 for the voice head), so `consistent` also asks that the response be at least about as
much this persona, lexically, as any persona of a bank of others.

- A persona's **lexicon**: the smoothed log-odds (add 0.5) of each word of its voice — every positive
  exemplar, every sentence of its example assistant turns, its signature phrases — against a **background**
  of plain register (the package's neutral sentences and the generic answers of the instrument's training
  corpus).
- A response's **lexical score** under a lexicon: the sum of its words' positive log-odds over its word count
  (nats per word).
- The **bank**: the lexicons of the 24 personas of the instrument's training corpus (benchmarks/scorer_corpus/;
  never the gold sets), shipped as word counts in data/instrument/lexical_bank.json. A bank persona with the
  scored persona's name, or the same voice, is left out.
- **relative** = this persona's lexical score − the best bank persona's; **own_voice** =
  sigmoid((relative − MARGIN) / SCALE), so own_voice >= 0.5 <=> relative >= MARGIN. MARGIN = −0.05 (lenient:
  a response may lean slightly towards another persona's words) was read off the development gold sets as the
  trade-off between accepting other personas' answers and rejecting the persona's own
  (benchmarks/experiments/lexical_bank.py); SCALE = 0.025 (half the margin) only shapes the continuous score.

The scorer puts own_voice beside the voice head: style_match = min(feature match, voice, own_voice).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from personatune.errors import ModelNotFoundError
from personatune.persona import PersonaSpec
from personatune.rundir import atomic_write_text
from personatune.scoring.instrument import sigmoid
from personatune.scoring.traits import voice_sentences

BANK_VERSION = 1
BANK_FILE = "lexical_bank.json"
MARGIN = -0.05  # nats per word
SCALE = 0.025  # nats per word
SMOOTHING = 0.5
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
    """Lower-cased words of `text` (letters, with an inner apostrophe)."""
    return _WORD.findall(text.lower())


def voice_counts(spec: PersonaSpec) -> Counter:
    """Word counts of the persona's voice sentences (traits.voice_sentences) and signature phrases."""
    return Counter(w for s in voice_sentences(spec) + list(spec.style.signature_phrases) for w in words(s))


def log_odds(counts: Counter, background: Counter, a: float = SMOOTHING) -> dict[str, float]:
    """Smoothed log-odds of each word of `counts` against `background`."""
    n_p, n_b, v = sum(counts.values()), sum(background.values()), len(set(counts) | set(background))
    return {
        w: math.log((counts[w] + a) / (n_p + a * v)) - math.log((background[w] + a) / (n_b + a * v)) for w in counts
    }


def lexical_score(lexicon: dict[str, float], text: str | list[str]) -> float:
    """Sum of the text's words' positive log-odds, per word (0 for a text without words); `text` may be
    given already split by `words`."""
    ws = words(text) if isinstance(text, str) else text
    return sum(max(lexicon.get(w, 0.0), 0.0) for w in ws) / max(len(ws), 1)


def own_voice(relative: float, margin: float = MARGIN, scale: float = SCALE) -> float:
    """P-like score of 'lexically this persona': >= 0.5 exactly when relative >= margin."""
    return sigmoid((relative - margin) / scale)


@dataclass
class LexicalBank:
    """Background word counts and the bank personas' voice word counts (see the module docstring)."""

    background: Counter
    personas: dict[str, Counter]
    meta: dict

    @classmethod
    def load(cls, path: str | Path) -> "LexicalBank":
        """Read a bank written by `save`.

        Raises:
            ModelNotFoundError: the file is unreadable or of another version (names the fix).
        """
        p = Path(path)
        fix = "fix: reinstall personatune, or rebuild it with `python scripts/build_lexical_bank.py`"
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
            if d.get("version") != BANK_VERSION:
                raise ValueError(f"version {d.get('version')}, this code reads {BANK_VERSION}")
            return cls(Counter(d["background"]), {n: Counter(c) for n, c in d["personas"].items()}, d.get("meta", {}))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ModelNotFoundError(f"lexical bank {p} is unusable ({e}); {fix}") from None

    def save(self, path: str | Path) -> None:
        d = {
            "version": BANK_VERSION,
            "meta": self.meta,
            "background": dict(sorted(self.background.items())),
            "personas": {n: dict(sorted(c.items())) for n, c in sorted(self.personas.items())},
        }
        atomic_write_text(Path(path), json.dumps(d, indent=1, ensure_ascii=False) + "\n")

    def scorer_for(self, spec: PersonaSpec) -> "OwnVoice":
        """The own-voice scorer of `spec` against this bank (bank personas with its name or voice left out)."""
        mine = voice_counts(spec)
        others = [
            log_odds(c, self.background)
            for n, c in self.personas.items()
            if n.strip().lower() != spec.name.strip().lower() and c != mine
        ]
        return OwnVoice(log_odds(mine, self.background), others)


@dataclass
class OwnVoice:
    """One persona's lexicon and the bank's, ready to score responses."""

    lexicon: dict[str, float]
    bank: list[dict[str, float]]

    def relative(self, text: str) -> float:
        """This persona's lexical score minus the best bank persona's (nats per word)."""
        ws = words(text)
        best = max((lexical_score(b, ws) for b in self.bank), default=0.0)
        return lexical_score(self.lexicon, ws) - best

    def score(self, texts: Sequence[str]) -> list[float]:
        """own_voice of each text."""
        return [own_voice(self.relative(t)) for t in texts]


@lru_cache(maxsize=4)
def _load_cached(path: str) -> LexicalBank:
    return LexicalBank.load(path)


def bank_of(weights_dir: str | Path | None) -> LexicalBank | None:
    """The lexical bank in an instrument's weights folder (loaded once per folder); None without one."""
    if weights_dir is None or not (Path(weights_dir) / BANK_FILE).is_file():
        return None
    return _load_cached(str(Path(weights_dir) / BANK_FILE))


def build_bank(
    personas: Iterable[tuple[PersonaSpec, Sequence[str]]], neutral: Iterable[str], source: str
) -> LexicalBank:
    """A bank from (persona, its generic answers) pairs and neutral sentences.

    The background is the neutral sentences plus every persona's generic answers; `source` describes the
    corpus (recorded with a hash of the counts in meta).
    """
    bg = Counter(w for s in neutral for w in words(s))
    bank: dict[str, Counter] = {}
    for spec, generic in personas:
        bank[spec.name] = voice_counts(spec)
        bg.update(w for g in generic for w in words(g))
    blob = json.dumps([sorted(bg.items()), {n: sorted(c.items()) for n, c in sorted(bank.items())}])
    meta = {"source": source, "counts_sha256": hashlib.sha256(blob.encode("utf-8")).hexdigest()}
    return LexicalBank(bg, bank, meta)
