"""Scorer throughput vs the raw MiniLM encoder, on CPU, for an 8-trait persona.

Each repeat builds FRESH responses (random numbers and sentence order, so no text repeats across
repeats) and clears the embedder's and the instrument's caches before scoring, so no cache can fake the figure. In the
same run, the same texts go through `Embedder.encode_uncached` (the raw encoder, whole texts), in the
given order and length-sorted (less padding: the encoder at its best). The scorer runs each sentence through
the instrument (MiniLM's shared bottom layers, then both the frozen and the tuned top layers) and derives
the whole-text embedding from the sentences.
Reported: responses/s of each, and scorer / encoder (target >= 0.75).

Run: python benchmarks/bench_scorer_throughput.py [--n 256] [--repeats 3] [--threads 2] [--cross-encoder DIR]
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import yaml

from personatune.embeddings import Embedder
from personatune.persona import Behavior, Check, PersonaSpec, Style, Trait
from personatune.scoring.scorer import Scorer
from personatune.scoring.traits import split_sentences

HERE = Path(__file__).resolve().parent

EXTRA_TRAITS = [
    Trait(
        id="witty",
        description="Playful and funny; uses wordplay and light jokes.",
        positive=[
            "Well, that escalated quickly, like my coffee intake.",
            "I'd tell you a chemistry joke, but I know I wouldn't get a reaction.",
            "Plot twist: the bug was a feature all along.",
        ],
        negative=["I do not make jokes.", "Humour has no place in a serious answer.", "That is not funny."],
    ),
    Trait(
        id="precise",
        description="Exact and careful with facts, numbers and wording.",
        positive=[
            "To be exact, the distance is 3.2 kilometres.",
            "I always double-check the figures before answering.",
            "Let me state that precisely.",
        ],
        negative=[
            "Roughly, more or less, who cares.",
            "I never bother checking details.",
            "Close enough is good enough.",
        ],
    ),
    Trait(
        id="encouraging",
        description="Supportive; tells people they can do it and praises effort.",
        positive=[
            "You've got this, keep going!",
            "That's real progress, well done.",
            "Every expert was once a beginner like you.",
        ],
        negative=["You'll probably fail at this.", "Don't bother trying.", "That effort was pointless."],
    ),
]

# Every template carries a random number, so no sentence repeats within or across repeats (the scorer
# encodes sentences, and the cache would otherwise serve repeated ones for free).
SENTENCES = [
    "The engine needs about {n} minutes to warm up before you test it.",
    "I checked the logs and found {n} warnings in the last hour.",
    "Honestly, I love a good challenge like this one, it's my {n}th this year.",
    "Take your time, there is no rush at all, we have {n} days.",
    "Let me walk you through the {n} steps one by one.",
    "That sounds like a great plan for the weekend of the {n}th.",
    "You might also want to back up your {n} files first.",
    "Ha, that reminds me of the time printer {n} caught fire.",
    "The meeting was moved to room {n} on the second floor.",
    "I'm not entirely sure, but I think the answer is {n}.",
    "Keep going, you're {n} steps closer than you think!",
    "Nobody reads manual number {n}, and that's fine.",
]


def make_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = rng.randint(2, 6)
        out.append(" ".join(s.format(n=rng.randint(1, 10**6)) for s in rng.sample(SENTENCES, k)) + f" (ref {seed}-{i})")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256, help="responses per repeat")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument(
        "--cross-encoder",
        metavar="DIR",
        help="mix the cross-encoder judge trained by experiments/cross_encoder.py --save DIR into the trait "
        "probabilities (experiments/cross_encoder_judge.py; not adopted)",
    )
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    raw = yaml.safe_load((HERE / "trait_specs" / "big_five.yaml").read_text(encoding="utf-8"))
    traits = [Trait(**t) for t in raw["traits"]] + EXTRA_TRAITS
    spec = PersonaSpec(
        name="bench8",
        summary="8-trait benchmark persona",
        traits=traits,
        style=Style(words=(10, 120), signature_phrases=["take your time"]),
        behaviors=[
            Behavior(id="no_swearing", description="never swears", check=Check(never_contain=["damn", "hell"])),
            Behavior(id="short", description="stays short", check=Check(max_words=150)),
        ],
    )
    emb = Embedder.default()
    t0 = time.perf_counter()
    judge = None
    if args.cross_encoder:
        import sys

        sys.path.insert(0, str(HERE / "experiments"))
        from cross_encoder_judge import CrossEncoderJudge

        from personatune.errors import ModelNotFoundError

        try:
            judge = CrossEncoderJudge(args.cross_encoder)
        except ModelNotFoundError as e:
            sys.exit(f"error: {e}")
    scorer = Scorer(spec, judge=judge)
    print(
        f"persona: {len(spec.traits)} traits; profile built in {time.perf_counter() - t0:.2f} s; torch threads {torch.get_num_threads()}"
    )
    emb.encode_uncached(make_texts(16, 999))  # warm-up
    enc_t = enc_sorted_t = sc_t = 0.0
    total = 0
    ratios = []
    for r in range(args.repeats):
        texts = make_texts(args.n, seed=r)
        emb._cache.clear()
        t = time.perf_counter()
        emb.encode_uncached(texts)
        e1 = time.perf_counter() - t
        enc_t += e1
        t = time.perf_counter()
        emb.encode_uncached(sorted(texts, key=len))  # the encoder at its best: length-sorted batches, less padding
        enc_sorted_t += time.perf_counter() - t
        emb._cache.clear()
        scorer.instrument._cache.clear()
        t = time.perf_counter()
        recs = scorer.score(texts)
        s1 = time.perf_counter() - t
        sc_t += s1
        ratios.append(e1 / s1)
        total += len(recs)
    enc_rate, enc_sorted_rate, sc_rate = total / enc_t, total / enc_sorted_t, total / sc_t
    words = sum(len(t.split()) for t in make_texts(args.n, 0)) / args.n
    print(f"responses: {total} ({args.repeats} x {args.n}, ~{words:.0f} words each, fresh texts, cache cleared)")
    print(f"raw encoder (encode_uncached): {enc_rate:8.1f} responses/s")
    print(f"raw encoder, length-sorted:    {enc_sorted_rate:8.1f} responses/s")
    print(f"scorer (traits+style+rules{' + cross-encoder judge' if judge else ''}): {sc_rate:8.1f} responses/s")
    n_sent = sum(len(split_sentences(t)) for t in make_texts(args.n, 0)) / args.n
    print(f"sentences per response: {n_sent:.1f} (all distinct)")
    print(
        f"ratio scorer / encoder: {sc_rate / enc_rate:.3f}; vs length-sorted encoder: {sc_rate / enc_sorted_rate:.3f} (target >= 0.75)"
    )
    print(
        "per-repeat ratios (scorer / encoder, same texts, back to back): "
        + ", ".join(f"{r:.2f}" for r in ratios)
        + f"; median {sorted(ratios)[len(ratios) // 2]:.3f}"
    )


if __name__ == "__main__":
    main()
