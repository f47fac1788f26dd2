"""Stage 3's chosen-side sampling, best-of-4 at once against two rounds (data.best_of_first), timed in ONE process.

Takes whole system-prompt groups of the quickstart's stage-3 prompts (stage order; prompts with the same targeted
traits share the persona prompt, and the HF backend shares that prefix within a batch) until --prompts, loads the
teacher as stage 3 does (HFBackend, data.teacher.batch_size sequences per forward, the prefix cache), and runs stage
3's own `sample_chosen` (generation + the persona-only scorer, as stage 3 scores candidates) for each variant, into a
scratch generation file each time, in the order A B B A per repeat (A B C D D C B A with --unaligned), so a drift
of the machine's speed hits every variant. --unaligned adds each variant with backend calls that may span two system
prompts, as stage 3 made them before 2026-12-03 (`generation.resumable._chunks` without its cut). Printed per run: seconds, candidates sampled, backend calls, prompts kept; then the median seconds per variant
and the ratio. The load average is printed before and after: the figures mean something only on an idle machine.

Run: python benchmarks/bench_best_of.py [--prompts 32] [--repeats 1] [--first 2] [--unaligned] [--threads 2] [key=value ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from personatune import models
from personatune.config import load_config
from personatune.consistency_pairs import eligible
from personatune.generation import resumable
from personatune.generation.hf import HFBackend
from personatune.persona import load_persona
from personatune.scoring.instrument import Instrument
from personatune.scoring.scorer import Scorer
from personatune.stages import s3_consistency_data as s3

HERE = Path(__file__).resolve().parent


class Counting:
    """Forwards `generate` and counts calls and sequences."""

    def __init__(self, backend: HFBackend) -> None:
        self.backend, self.calls, self.sequences = backend, 0, 0

    def generate(self, conversations: list, **kw) -> list[list[str]]:
        self.calls += 1
        self.sequences += len(conversations) * kw.get("n", 1)
        return self.backend.generate(conversations, **kw)


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(HERE.parent / "examples" / "quickstart.yaml"))
    ap.add_argument("--prompts", type=int, default=32, help="at least this many prompts, taken as whole groups")
    ap.add_argument("--repeats", type=int, default=1, help="rounds of A B B A (two runs per variant each)")
    ap.add_argument("--first", type=int, default=2, help="data.best_of_first of the two-round variant")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--unaligned",
        action="store_true",
        help="also time each variant with backend calls that may span two system prompts (before 2026-12-03)",
    )
    ap.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(args.config, args.overrides)
    d, t = config.data, config.data.teacher
    spec = load_persona(config.persona)
    inst = Instrument.default()
    scenarios = s3.run_scenarios(spec, inst, config)
    system = [c[0]["content"] for c, _ in s3.teacher_jobs(spec, scenarios, config)]
    keep: list[str] = []
    for g in dict.fromkeys(system):
        if sum(s in keep for s in system) >= args.prompts:
            break
        keep.append(g)
    pick = [s for s, c in zip(scenarios, system) if c in keep]
    model, tok = models.load_configured_model(config.model.name, config.model)
    teacher = HFBackend(model, tok, batch_size=t.batch_size, prefix_cache=s3.PREFIX_CACHES)
    scorer = Scorer(spec, instrument=inst)
    once, two = (
        config.model_copy(update={"data": d.model_copy(update={"best_of_first": k})}) for k in (None, args.first)
    )
    variants = {
        f"all {d.best_of} at once": (once, True),
        f"{args.first} first, {d.best_of - args.first} more where needed": (two, True),
    }
    if args.unaligned:
        variants = {
            **{f"{k}, calls across system prompts": (v[0], False) for k, v in variants.items()},
            **{f"{k}, calls cut at system prompts": v for k, v in variants.items()},
        }
    print(
        f"{config.model.name} ({model.dtype}), {platform.processor() or platform.machine()}, {args.threads} threads, "
        f"torch {torch.__version__}; {len(pick)} prompts in {len(keep)} system-prompt groups; best_of {d.best_of}, "
        f"{t.max_new_tokens} new tokens, T={t.temperature}, top_p={t.top_p}, {t.batch_size} sequences per forward"
    )
    teacher.generate(
        [s3.teacher_jobs(spec, pick[:1], config)[0][0]], max_new_tokens=8, temperature=0.8, seed=0
    )  # warm-up
    print(f"before: {load()}")
    secs: dict[str, list[float]] = {k: [] for k in variants}
    chunks = resumable._chunks
    names = list(variants)
    for _ in range(args.repeats):
        for name in names + names[::-1]:
            counting = Counting(teacher)
            cfg, aligned = variants[name]
            resumable._chunks = chunks if aligned else lambda idx, chunk, jobs: chunks(idx, chunk, None)
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                outs, scores = s3.sample_chosen(counting, spec, pick, scorer, Path(tmp) / "generations.jsonl", cfg)
                s = time.perf_counter() - t0
            secs[name].append(s)
            kept = sum(any(eligible(x) for x in cs) for cs in scores)
            print(
                f"  {name}: {s:.1f} s, {counting.sequences} candidates, {counting.calls} calls, {kept}/{len(pick)} prompts kept",
                flush=True,
            )
    med = {k: statistics.median(v) for k, v in secs.items()}
    for k in names:
        print(f"median: {k} {med[k]:.1f} s, {med[k] / med[names[0]]:.3f} of the first ({med[names[0]] / med[k]:.2f}x)")
    print(f"after: {load()}")


if __name__ == "__main__":
    main()
