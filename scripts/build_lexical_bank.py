"""Build the lexical bank (scoring/lexical.py) from the instrument's training corpus.

Writes src/personatune/data/instrument/lexical_bank.json: the background word counts (neutral sentences and
the corpus's generic answers) and each corpus persona's voice word counts. Only benchmarks/scorer_corpus/ is
read, never the gold sets. Takes seconds; tests/unit/test_lexical.py checks the shipped file equals a rebuild.

Run: python scripts/build_lexical_bank.py [--corpus DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_instrument import ROOT, corpus_hash, neutral_bank  # noqa: E402

from personatune.persona import load_persona  # noqa: E402
from personatune.scoring.gold import load_gold  # noqa: E402
from personatune.scoring.lexical import BANK_FILE, LexicalBank, build_bank  # noqa: E402


def bank_from_corpus(corpus: Path) -> LexicalBank:
    folders = sorted(p.parent for p in corpus.glob("*/responses.jsonl"))
    pairs = []
    for d in folders:
        spec = load_persona(d / "persona.yaml")
        items, _ = load_gold(d / "responses.jsonl", spec.trait_ids)
        pairs.append((spec, [it.answers["generic"] for it in items]))
    source = f"{len(folders)} sets of benchmarks/scorer_corpus (sha256 {corpus_hash(folders)[:16]})"
    return build_bank(pairs, neutral_bank(), source)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default=str(ROOT / "benchmarks/scorer_corpus"))
    ap.add_argument("--out", default=str(ROOT / "src/personatune/data/instrument" / BANK_FILE))
    args = ap.parse_args()
    bank = bank_from_corpus(Path(args.corpus))
    bank.save(args.out)
    print(f"{args.out}: {len(bank.personas)} personas, {sum(bank.background.values())} background words")


if __name__ == "__main__":
    main()
