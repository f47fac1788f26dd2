"""Stage 5's reference samples (train.sft_source=reference): their time and their yield in model.dtype and in the
sampling dtype (train.reference_dtype; bfloat16 where the CPU has AMX / AVX512-BF16).

On a run directory whose stages 1-4 are done, takes the first N stage-3 training prompts and samples them exactly as
`stages/reference_sft.reference_sft_rows` does (the persona context before each prompt, train.reference_samples
responses per prompt at temperature 1 and top_p 1, train.kl_max_new_tokens long, data.teacher.batch_size sequences per
forward, through `generate_resumable` into a fresh file), once per dtype in ONE process, then scores them with the
run's scorer: seconds, jobs/s, and how many samples the stage would keep (consistent and on task). The two dtypes draw
different samples (other rounding), so the kept rate is compared, not the texts. The machine's speed drifts (up to
1.6x within minutes): --repeats R runs the dtypes in order, then reversed, R times in all; medians are reported.

Run: python benchmarks/bench_reference_samples.py RUN/config.yaml [--prompts 24] [--repeats 2] [--dtype bfloat16]
         [key=value ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from personatune.cpu_time import cpu_times, fmt, steal_share


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", help="the run's config.yaml (stages 1-4 done)")
    ap.add_argument("--prompts", type=int, default=24, help="stage-3 training prompts to sample (count)")
    ap.add_argument("--repeats", type=int, default=2, help="runs per dtype, alternating order (count)")
    ap.add_argument(
        "--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"], help="compared with model.dtype"
    )
    ap.add_argument("overrides", nargs="*", help="config key=value")
    a = ap.parse_args()

    import torch

    from personatune import models
    from personatune.config import load_config
    from personatune.consistency_pairs import eligible, score_candidates
    from personatune.errors import PersonatuneError
    from personatune.generation.hf import HFBackend
    from personatune.generation.resumable import generate_resumable
    from personatune.rundir import RunDir
    from personatune.scoring.factory import scorer_for_run
    from personatune.stages.optimization_common import load_inputs
    from personatune.stages.reference_sft import sampling_copy, training_prompts

    try:
        cfg = load_config(a.config, a.overrides)
        rd = RunDir(Path(cfg.run_dir) / cfg.name)
        inp = load_inputs(cfg, rd)
        scen = training_prompts(rd)[: a.prompts]
        model, tok = models.load_configured_model(inp.baseline, cfg.model, for_training=False)
        scorer, desc = scorer_for_run(cfg, rd, inp.spec)
    except PersonatuneError as e:
        raise SystemExit(f"error: {e}") from None
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    args = cfg.train
    params = {
        "max_new_tokens": args.kl_max_new_tokens,
        "temperature": 1.0,
        "top_p": 1.0,
        "seed": cfg.seed,
        "n": args.reference_samples,
    }
    jobs = [(list(inp.context) + [dict(m) for m in s.messages], dict(params)) for s in scen]
    bs = cfg.data.teacher.batch_size
    native = models.native_bf16(str(model.device))
    print(
        f"{len(jobs)} prompts x {args.reference_samples} samples, {args.kl_max_new_tokens} tokens, batch {bs}, "
        f"threads {torch.get_num_threads()}, cpu count {os.cpu_count()}, native bfloat16: {native}; scorer {desc}"
    )
    dtypes = [str(model.dtype).removeprefix("torch."), a.dtype]
    if dtypes[0] == dtypes[1]:
        raise SystemExit(
            f"error: --dtype {a.dtype} is the model's own dtype; fix: pick another (model.dtype={dtypes[0]})"
        )
    copies = {d: sampling_copy(model, d) for d in dtypes}
    order = [dtypes[i % 2] if (i // 2) % 2 == 0 else dtypes[1 - i % 2] for i in range(2 * a.repeats)]
    secs: dict[str, list[float]] = {d: [] for d in dtypes}
    cpu: dict[str, list[float]] = {d: [] for d in dtypes}
    kept: dict[str, list[tuple[int, int, int]]] = {d: [] for d in dtypes}
    for d in order:
        backend = HFBackend(copies[d], tok, batch_size=bs, prefix_cache=1)
        with tempfile.TemporaryDirectory() as tmp:
            c0, t0, p0 = cpu_times(), time.perf_counter(), time.process_time()
            texts = generate_resumable(
                backend, jobs, Path(tmp) / "samples.jsonl", chunk=max(1, bs // args.reference_samples)
            )
            secs[d].append(time.perf_counter() - t0)
            cpu[d].append(time.process_time() - p0)
            steal = steal_share(c0, cpu_times())
        scores = score_candidates(scen, texts, scorer)
        flat = [r for rs in scores for r in rs]
        kept[d].append((sum(eligible(r) for r in flat), sum(bool(r.consistent) for r in flat), len(flat)))
        words = statistics.mean(len(t.split()) for ts in texts for t in ts)
        print(
            f"  {d:<9} {secs[d][-1]:7.1f} s, process CPU {cpu[d][-1]:7.1f} s ({fmt(steal)})  kept {kept[d][-1][0]}/{len(flat)}  mean words {words:.1f}",
            flush=True,
        )
    med = {d: statistics.median(v) for d, v in secs.items()}
    mcpu = {d: statistics.median(v) for d, v in cpu.items()}
    for d in dtypes:
        k = sum(x[0] for x in kept[d]) / sum(x[2] for x in kept[d])
        c = sum(x[1] for x in kept[d]) / sum(x[2] for x in kept[d])
        print(
            f"{d:<9} median {med[d]:7.1f} s ({len(jobs) / med[d]:.2f} jobs/s)  kept {k:.3f} (consistent {c:.3f}) "
            f"over {len(kept[d])} run(s)"
        )
    print(
        f"{a.dtype} vs {dtypes[0]}: {med[dtypes[0]] / med[a.dtype]:.2f}x faster (median wall), "
        f"{mcpu[dtypes[0]] / mcpu[a.dtype]:.2f}x less process CPU time (median; not inflated by steal)"
    )


if __name__ == "__main__":
    main()
