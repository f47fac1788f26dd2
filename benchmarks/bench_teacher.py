"""Stage 3's teacher sampling (issue 15): where its time goes, and what each candidate change buys.

Loads the model once and takes N of the main job's stage-3 prompts exactly as stage 3 renders them
(`s3_consistency_data.teacher_jobs`: persona system prompt with the trait reminders of data.focus_targets,
few-shot turns, the scenario), then samples them through stage 3's own `generate_resumable` (best_of
candidates per prompt, T / top_p / max_new_tokens / seed of the config), one variant after another in
ONE process, so the figures are ratios on the same machine state:

- baseline: what stage 3 did before issue 15: HFBackend without shared prefixes (each prompt prefilled
  once for its n draws), prompts in stage order, `batch_size // best_of` prompts per call;
- prefix, KV copied: the batch's common token prefix (persona prompt + few-shot turns) prefilled once,
  kept between calls (`prefix_cache`), jobs with the same context next to each other, and its KV cache
  copied to every sequence (`shared_attention=False`);
- shared attention, transformers' sampler: the same, but every sequence attends to the ONE prefix copy, and
  tokens are drawn by transformers (`do_sample=True`: top-p sorts, and multinomial draws over, the whole
  vocabulary); the baseline draws this way too;
- shared attention: HFBackend's default, tokens drawn over the nucleus only (generation/sampler.py: the same
  distribution, other draws);
- shared attention, batch S: with S sequences per forward instead of data.teacher.batch_size;
- --dtype-variant D: the shared-attention path with the weights in dtype D (bfloat16: native matrix units on
  CPUs with AMX / AVX512-BF16); it changes the draws (other rounding), so its text is compared by the
  mean words and, in stage 3, by the teacher's yield, not draw by draw;
- no few-shot: data.few_shot = false, a shorter context. This CHANGES what the teacher is asked (and so
  its yield); it is timed only to show what the context still costs once it is shared.

--contrast times stage 3's contrast step instead (`s3_consistency_data.contrast_jobs`: per kind the
first --prompts jobs of one context, as most of stage 3's calls hold one context; baseline-model jobs,
then teacher jobs, one response each, teacher.batch_size per call), baseline vs shared attention.

The prompts are whole system-prompt groups (prompts whose persona prompt is the same, i.e. the same
targeted traits), those nearest the full run's mean group size first, until --prompts: shared-prefix
figures are not flattered by one large group. Before the timings, two checks on the first --check
prompts: greedy text of the plain path and the shared-prefix path (must be identical), and sampled
draws of both paths with the same batches (identical up to float rounding). A changed output is not a
speed-up. The load average is printed before and after: the figures mean something only on a machine
that ran nothing else. The machine's speed still drifts (up to 1.6x within minutes): with --repeats R the
variants run in order, then in reverse, R times in all, and each is reported by its median.

Run: python benchmarks/bench_teacher.py [--prompts 10] [--batch-sizes 32,64] [--no-copy-variant] [--few-shot-variant]
         [--contrast] [--dtype-variant bfloat16] [--repeats 1] [--no-baseline] [--check 4] [--threads 2]
         [key=value ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from personatune import models
from personatune.config import load_config
from personatune.generation.hf import HFBackend, PrefillOptions
from personatune.models import encode_chat
from personatune.persona import load_persona
from personatune.scoring.instrument import Instrument
from personatune.stages import s3_consistency_data as s3

HERE = Path(__file__).resolve().parent


class Counting:
    """Forwards `generate` to an HFBackend and sums its `last_stats` over calls."""

    def __init__(self, backend: HFBackend) -> None:
        self.backend = backend
        self.stats = {"new_tokens": 0.0, "prefill_tokens": 0.0, "decode_slots": 0.0, "calls": 0.0}

    def generate(self, conversations: list, **kw: Any) -> list[list[str]]:
        out = self.backend.generate(conversations, **kw)
        for k in ("new_tokens", "prefill_tokens", "decode_slots"):
            self.stats[k] += self.backend.last_stats.get(k, 0.0)
        self.stats["calls"] += 1
        return out


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


def sample(
    backend: HFBackend, jobs: list, chunk: int, group_contexts: bool, split: list[list[int]] | None = None
) -> tuple[float, list[list[str]], dict[str, float]]:
    """Stage 3's own sampling loop (generate_resumable) into a scratch file; (seconds, outputs, summed stats).
    `split`: job index lists run one after the other, as stage 3 runs the baseline-model and teacher contrast."""
    counting = Counting(backend)
    out: list[list[str]] = [[] for _ in jobs]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        for part in split or [list(range(len(jobs)))]:
            res = s3.generate_resumable(
                counting,
                [jobs[i] for i in part],
                Path(tmp) / "generations.jsonl",
                chunk=chunk,
                echo=lambda m: None,
                group_contexts=group_contexts,
            )
            for i, r in zip(part, res):
                out[i] = r
        return time.perf_counter() - t0, out, counting.stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(HERE.parent / "examples" / "quickstart.yaml"))
    ap.add_argument("--prompts", type=int, default=10, help="at least this many prompts, taken as whole context groups")
    ap.add_argument(
        "--batch-sizes", default="8,32", help="sequences per forward to try with shared prefixes, besides the config's"
    )
    ap.add_argument(
        "--no-copy-variant", action="store_true", help="skip the variant that copies the prefix KV to every sequence"
    )
    ap.add_argument(
        "--few-shot-variant", action="store_true", help="also time data.few_shot=false (changes the teacher's prompt)"
    )
    ap.add_argument(
        "--dtype-variant",
        default="",
        help="also time the shared-attention path with the weights in this dtype (e.g. bfloat16: native on CPUs with AMX)",
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs of every variant, in order then in reverse (ABC CBA ...): the median",
    )
    ap.add_argument("--no-baseline", action="store_true", help="skip the pre-issue-15 baseline variant")
    ap.add_argument("--check", type=int, default=4, help="prompts for the output checks (0: skip)")
    ap.add_argument("--check-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--contrast",
        action="store_true",
        help="time stage 3's contrast step instead (baseline, trait-flipped, style-broken; "
        "one response each, data.teacher.batch_size per call): baseline vs shared attention",
    )
    ap.add_argument("overrides", nargs="*", help="config overrides, key=value (e.g. data.teacher.max_new_tokens=16)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(args.config, args.overrides)
    d, t = config.data, config.data.teacher
    spec = load_persona(config.persona)
    scenarios = s3.run_scenarios(spec, Instrument.default(), config)
    all_jobs = s3.teacher_jobs(spec, scenarios, config)
    context = [c[0]["content"] for c, _ in all_jobs]  # the persona system prompt (it differs by the targeted traits)
    groups = list(dict.fromkeys(context))
    mean = len(context) / len(groups)
    keep: set[str] = set()
    for g in sorted(groups, key=lambda g: abs(context.count(g) - mean)):  # groups of the full run's mean size first
        if sum(c in keep for c in context) >= args.prompts:
            break
        keep.add(g)
    pick = [i for i, c in enumerate(context) if c in keep]
    jobs = [all_jobs[i] for i in pick]
    split, note = None, ""
    if args.contrast:
        # Stage 3 runs the contrast jobs of all kept prompts, ordered by context, teacher.batch_size per call: most calls
        # hold one context (a flipped trait's prompt, the style-broken prompt). So: per kind, the first --prompts jobs of
        # one context, in stage order (every scenario counted as kept).
        cjobs, meta = s3.contrast_jobs(spec, scenarios, config)
        flip = next((m[2] for m in meta if m[1] == "trait_flipped"), None)
        take: list[int] = []
        for kind, trait in (("baseline", None), ("trait_flipped", flip), ("style_broken", None)):
            take += [i for i, m in enumerate(meta) if m[1] == kind and m[2] == trait][: args.prompts]
        jobs = [cjobs[i] for i in take]
        split = [
            [j for j, i in enumerate(take) if meta[i][1] == "baseline"],
            [j for j, i in enumerate(take) if meta[i][1] != "baseline"],
        ]
        split = [x for x in split if x]
        counts = {k: sum(meta[i][1] == k for i in take) for k in ("baseline", "trait_flipped", "style_broken")}
        note = (
            f"contrast jobs: {counts['baseline']} baseline (baseline model), {counts['trait_flipped']} trait-flipped ({flip}), "
            f"{counts['style_broken']} style-broken, one response each, of the {len(cjobs)} of the full run"
        )
    model, tok = models.load_configured_model(config.model.name, config.model)
    lens = [len(encode_chat(tok, c)) for c, _ in jobs]
    shared = [len(encode_chat(tok, c[:-1], add_generation_prompt=False)) if len(c) > 1 else 0 for c, _ in jobs]
    p = jobs[0][1]
    print(
        f"{config.model.name} ({model.dtype}), {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}"
    )
    print(
        note
        or (
            f"{len(pick)} of the {len(all_jobs)} stage-3 prompts ({len(keep)} of {len(groups)} system-prompt groups; the full run "
            f"has {len(all_jobs) / len(groups):.1f} prompts per group, these {len(pick) / len(keep):.1f})"
        )
    )
    print(
        f"prompt {statistics.mean(lens):.0f} tokens "
        f"(context {statistics.mean(shared):.0f}); n={p['n']}, {p['max_new_tokens']} new tokens, T={p['temperature']}, "
        f"top_p={p['top_p']}, seed {p['seed']}; teacher.batch_size {t.batch_size} sequences per forward"
    )
    print(f"before: {load()}")
    per_call = max(1, t.batch_size // max(1, p["n"]))

    def backend(
        prefix: bool,
        sequences: int = t.batch_size,
        shared_attention: bool = True,
        weights: Any = None,
        hf_sampler: bool = False,
    ) -> tuple[HFBackend, int]:
        chunk = max(1, sequences // max(1, p["n"]))  # prompts per call, as stage 3 computes it
        b = HFBackend(
            model if weights is None else weights,
            tok,
            batch_size=max(t.batch_size, chunk),
            prefix_cache=s3.PREFIX_CACHES if prefix else 0,
            prefill=PrefillOptions(share_prefix=prefix, shared_attention=shared_attention),
        )
        b.nucleus_sampling = not hf_sampler
        return b, chunk

    if args.check:
        # prompts of one context (every message but the last), so both paths form the same batches and draws compare
        ctx = [str(c[:-1]) for c, _ in jobs]
        same_ctx = max(set(ctx), key=lambda k: (ctx.count(k), -ctx.index(k)))
        cj = [(c, {**q, "max_new_tokens": args.check_tokens}) for (c, q), k in zip(jobs, ctx) if k == same_ctx][
            : args.check
        ]
        greedy = [(c, {**q, "temperature": 0.0, "n": 1}) for c, q in cj]
        _, plain, _ = sample(backend(False)[0], greedy, per_call, group_contexts=False)
        _, fast, _ = sample(backend(True)[0], greedy, per_call, group_contexts=False)
        print(
            f"check, greedy ({args.check_tokens} tokens): identical text {sum(a == b for a, b in zip(plain, fast))}/{len(cj)} prompts"
        )
        _, sp, _ = sample(backend(False)[0], cj, per_call, group_contexts=False)
        _, sf, _ = sample(backend(True)[0], cj, per_call, group_contexts=False)
        same = sum(a == b for x, y in zip(sp, sf) for a, b in zip(x, y))
        print(
            f"check, sampled with the same batches ({args.check_tokens} tokens): identical draws {same}/{sum(map(len, sp))}"
        )

    n = p["n"]
    variants: list[tuple[str, Any, int, list, bool]] = [
        (
            f"baseline: no shared prefix, stage order, transformers' sampler, {per_call} prompts x {n} per forward",
            *backend(False, hf_sampler=True),
            jobs,
            False,
        ),
        (
            f"prefix prefilled once, its KV copied to every sequence, contexts grouped, {per_call} x {n}",
            *backend(True, shared_attention=False),
            jobs,
            True,
        ),
        (
            f"shared attention, transformers' sampler (do_sample=True), {per_call} x {n}",
            *backend(True, hf_sampler=True),
            jobs,
            True,
        ),
        (f"prefix prefilled once and attended once (shared attention), {per_call} x {n}", *backend(True), jobs, True),
    ]
    if args.no_copy_variant or args.contrast:
        del variants[1]
    for size in [int(x) for x in args.batch_sizes.split(",") if x.strip()]:
        b, chunk = backend(True, size)
        variants.append((f"shared attention, {min(chunk, len(jobs))} prompts x {n} per forward", b, chunk, jobs, True))
    if args.dtype_variant:
        other, _ = models.load_configured_model(
            config.model.name, config.model.model_copy(update={"dtype": args.dtype_variant})
        )
        variants.append(
            (f"shared attention, {other.dtype} weights, {per_call} x {n}", *backend(True, weights=other), jobs, True)
        )
    if args.few_shot_variant and not args.contrast:
        no_shot = s3.teacher_jobs(
            spec,
            [scenarios[i] for i in pick],
            config.model_copy(update={"data": d.model_copy(update={"few_shot": False})}),
        )
        variants.append(
            (
                f"shared attention, NO few-shot turns (changes the prompt), {per_call} x {n}",
                *backend(True),
                no_shot,
                True,
            )
        )
    if args.no_baseline:
        del variants[0]
    runs: list[list[float]] = [[] for _ in variants]
    first: list[Any] = [None] * len(variants)
    for r in range(args.repeats):
        for i in range(len(variants)) if r % 2 == 0 else reversed(range(len(variants))):  # A B C, then C B A, ...
            name, b, chunk, js, group = variants[i]
            b._prefixes.clear()  # every run prefills its own prefixes: the same work each time
            secs, out, st = sample(b, js, chunk, group, split if js is jobs else None)
            runs[i].append(secs)
            first[i] = first[i] or (out, st)
            print(f"  done: {name}: {secs:.1f} s", flush=True)
    rows = []
    for (name, *_), secs, (out, st) in zip(variants, runs, first):
        rows.append((name, statistics.median(secs), st, [c for per in out for c in per]))
    base = rows[0][1]
    print(f"after: {load()}")
    print()
    print(
        f"| variant | s (median) | runs, s | s/{'response' if args.contrast else 'prompt'} | new tok/s | prefill tokens | useful decode slots | mean words | ratio to the first row |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for (name, secs, st, cands), each in zip(rows, runs):
        useful = st["new_tokens"] / st["decode_slots"] if st["decode_slots"] else 0.0
        words = statistics.mean(len(c.split()) for c in cands) if cands else 0.0
        print(
            f"| {name} | {secs:.1f} | {', '.join(f'{x:.1f}' for x in each)} | {secs / len(jobs):.2f} | "
            f"{st['new_tokens'] / secs:.1f} | {st['prefill_tokens']:.0f} | {useful:.2f} | {words:.1f} | {base / secs:.2f}x |"
        )


if __name__ == "__main__":
    main()
