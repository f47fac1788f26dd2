"""Where an eval of stages 5-6 spends its time: `training.evaluate_policy`, split into its parts.

Stage 5's final measurement (all held-out prompts, no system prompt) took 8.6 min of the main job on 2 cores,
more than its training. This times, on a run directory whose stages 1-5 are done, the parts of one eval of
the stage-5 model on N held-out prompts (round-robin over contexts, as the stage takes them):

  kl sample     policy samples for drift KL (temperature 1, train.kl_max_new_tokens), with the policy's
                log-probs taken from the logits generate sampled from
  kl policy 2x  the policy's log-probs by a second forward pass (what measure_drift did before; not in the sum)
  kl ref plain  the reference's (the baseline's), no context       -> persona shift
  kl ref ctx    the reference's, given the persona context           -> drift KL
                (its common prefix run once for all rows, kl.response_logprobs)
  kl ref ctx 1x the same without sharing the prefix (share_prefix=False): every row runs the whole context
  eval sample   policy samples at the eval decoding (eval:, data.teacher's when unset)
  score         the scorer on those samples

and then `evaluate_policy` as the stage calls it, end to end. Each part is timed on the same prompts in one run.

--lora-checkpoint DIR (a stage-5 checkpoint folder with adapter_model.safetensors) times instead what the in-training
evals and the final measurement see: the baseline with that LoRA adapter, unmerged, measured end to end by
`evaluate_policy` with the reference as stage 5 has it (the policy with its adapters off): with the adapters in the layers (as before)
and through a merged copy of the policy (`merged_copy`, what evaluate_policy does now), in the order A B B A
(--repeats runs of each); medians of the wall time and of the process's CPU time (not inflated by the hypervisor's
steal), and the KL of each.

--batch-sizes A,B times instead `evaluate_policy` end to end at eval batch size A and B (train.eval_batch_size), in the
order A B B A (--repeats runs of each), on the stage-5 model or, with --lora-checkpoint, on that checkpoint as the
in-training evals see it.

Run: python benchmarks/bench_eval_policy.py examples/quickstart.yaml [key=value ...] [--prompts 32]
         [--lora-checkpoint DIR [--repeats 2]] [--batch-sizes 16,32]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any


def _args(argv: list[str]) -> tuple[str, list[str], dict[str, Any]]:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0 if argv else 2)
    opts: dict[str, Any] = {"prompts": 32, "repeats": 2, "lora-checkpoint": None, "batch-sizes": None}
    rest = []
    it = iter(argv[1:])
    for a in it:
        if a.startswith("--") and a[2:] in opts:
            try:
                v = next(it)
                opts[a[2:]] = (
                    v
                    if a == "--lora-checkpoint"
                    else [int(x) for x in v.split(",")]
                    if a == "--batch-sizes"
                    else int(v)
                )
            except (StopIteration, ValueError):
                raise SystemExit(f"{a} needs a value, e.g. {a} 32 (a folder for --lora-checkpoint)") from None
        else:
            rest.append(a)
    return argv[0], rest, opts


def abba(names: list[str], run_one, repeats: int, per: int) -> None:  # noqa: ANN001
    """Time `run_one(name)` (one evaluate_policy, returning its EvalResult) for two variants in the order A B B A per
    pair of repeats; print each run, then the medians of the wall time and of the process's CPU time (not inflated by
    the hypervisor's steal) with their ratios to the first variant. `per`: prompts per eval (for s/prompt)."""
    import statistics

    from personatune.cpu_time import cpu_times, fmt, steal_share

    secs: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    for i in range(2 * repeats):
        name = names[i % 2] if (i // 2) % 2 == 0 else names[1 - i % 2]
        c0, t0, p0 = cpu_times(), time.perf_counter(), time.process_time()
        r = run_one(name)
        secs[name].append(time.perf_counter() - t0)
        cpu[name].append(time.process_time() - p0)
        steal = fmt(steal_share(c0, cpu_times()))
        print(
            f"  {name:<18} {secs[name][-1]:6.1f} s, process CPU {cpu[name][-1]:6.1f} s ({steal})  drift KL {r.kl.per_token:.6f}  "
            f"persona shift {r.persona_shift.per_token if r.persona_shift else float('nan'):.6f}  "
            f"consistency {r.consistency.value:.3f}",
            flush=True,
        )
    med = {k: statistics.median(v) for k, v in secs.items()}
    mcpu = {k: statistics.median(v) for k, v in cpu.items()}
    for k, v in med.items():
        print(
            f"{k:<18} median {v:6.1f} s ({v / per:.2f} s/prompt)  {med[names[0]] / v:.2f}x;  "
            f"process CPU {mcpu[k]:6.1f} s  {mcpu[names[0]] / mcpu[k]:.2f}x"
        )


def lora_end_to_end(policy, tok, ev, scorer, st, repeats: int) -> None:  # noqa: ANN001
    """evaluate_policy on a LoRA policy as stage 5 calls it (reference: the policy with its adapters off), with the
    adapters in the layers (no copy, as before) and through a merged copy (merged_copy, what evaluate_policy does
    now); A B B A per pair of repeats."""
    from personatune import training
    from personatune.training import evaluation
    from personatune.training.trainers import AdapterDisabledReference

    names = ["adapters in layers", "merged policy"]

    def run_one(name: str):  # noqa: ANN202
        # MERGED_COPY_MAX_BYTES 0: every model counts as too large to copy, so nothing is copied.
        evaluation.MERGED_COPY_MAX_BYTES = 0 if name == names[0] else 2 << 30
        return training.evaluate_policy(policy, AdapterDisabledReference(policy), tok, ev, scorer, st)

    abba(names, run_one, repeats, len(ev.ids))


def batch_end_to_end(policy, reference, tok, ev, scorer, st, sizes: list[int], repeats: int) -> None:  # noqa: ANN001
    """evaluate_policy end to end at each of two eval batch sizes (train.eval_batch_size), A B B A per pair of repeats:
    wall and process-CPU medians, and the figures, which move with the batch (padding and the sampler's draws)."""
    import dataclasses

    from personatune import training

    def run_one(name: str):  # noqa: ANN202
        st_b = dataclasses.replace(st, batch_size=int(name.split()[-1]))
        return training.evaluate_policy(policy, reference, tok, ev, scorer, st_b)

    abba([f"batch {b}" for b in sizes], run_one, repeats, len(ev.ids))


def main() -> None:
    cfg_path, overrides, opts = _args(sys.argv[1:])
    n = opts["prompts"]
    import torch

    from personatune import models, training
    from personatune.config import load_config
    from personatune.errors import PersonatuneError
    from personatune.kl import _sample_responses, kl_from_logprobs, response_logprobs, summarize_kls
    from personatune.models import encode_chat
    from personatune.rundir import RunDir
    from personatune.scoring.factory import scorer_for_run
    from personatune.stages.optimization_common import eval_settings, load_inputs, load_policy, training_seed

    try:
        cfg = load_config(cfg_path, overrides)
        rd = RunDir(Path(cfg.run_dir) / cfg.name)
        inp = load_inputs(cfg, rd)
        model_dir = Path(opts["lora-checkpoint"] or rd.output_path("05_optimization", "model"))
    except PersonatuneError as e:
        raise SystemExit(f"error: {e}") from None
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t = time.perf_counter()
    reference, _ = models.load_configured_model(inp.baseline, cfg.model, for_training=False)
    if opts["lora-checkpoint"]:
        from peft import PeftModel

        base, tok = models.load_configured_model(inp.baseline, cfg.model, for_training=False)
        policy = PeftModel.from_pretrained(base, str(model_dir))
    else:
        policy, tok = load_policy(model_dir, cfg, inp.baseline, for_training=False)
    scorer, desc = scorer_for_run(cfg, rd, inp.spec)
    print(f"loaded policy {model_dir}, reference {inp.baseline}, scorer {desc} in {time.perf_counter() - t:.1f} s")
    st = eval_settings(cfg, training_seed(cfg), inp.context)
    ev = training.EvalSet.from_rows(inp.held_rows, n)
    print(
        f"{len(ev.ids)} prompts, batch {st.batch_size}, threads {torch.get_num_threads()}, "
        f"kl tokens {st.kl_max_new_tokens}, eval tokens {st.max_new_tokens} (T={st.temperature}, top_p={st.top_p})"
    )
    if opts["batch-sizes"]:
        if len(opts["batch-sizes"]) != 2:
            raise SystemExit("--batch-sizes takes two sizes, e.g. --batch-sizes 16,32")
        if opts["lora-checkpoint"]:  # as stage 5's in-training evals: the reference is the policy with its adapters off
            from personatune.training.trainers import AdapterDisabledReference

            reference = AdapterDisabledReference(policy)
        batch_end_to_end(policy, reference, tok, ev, scorer, st, opts["batch-sizes"], opts["repeats"])
        return
    if opts["lora-checkpoint"]:
        lora_end_to_end(policy, tok, ev, scorer, st, opts["repeats"])
        return
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    names = ["kl sample", "kl policy 2x", "kl ref plain", "kl ref ctx", "kl ref ctx 1x", "eval sample", "score"]
    parts = dict.fromkeys(names, 0.0)
    drift = {"shared": [], "unshared": []}
    gen = torch.Generator().manual_seed(st.seed)
    resp_tokens = ctx_len = 0

    def timed(name: str, fn):  # noqa: ANN001, ANN202
        t0 = time.perf_counter()
        out = fn()
        parts[name] += time.perf_counter() - t0
        return out

    with torch.inference_mode():
        for s in range(0, len(ev.prompts), st.batch_size):
            chunk = ev.prompts[s : s + st.batch_size]
            plain = [encode_chat(tok, p, add_generation_prompt=True) for p in chunk]
            prompted = [encode_chat(tok, list(inp.context) + list(p), add_generation_prompt=True) for p in chunk]
            ctx_len = max([ctx_len] + [len(a) for a in prompted])
            r, lp = timed(
                "kl sample",
                lambda: _sample_responses(policy, tok, plain, max_new_tokens=st.kl_max_new_tokens, gen=gen, pad=pad),
            )
            resp_tokens += sum(len(x) for x in r)
            timed("kl policy 2x", lambda: response_logprobs(policy, plain, r, pad))
            timed("kl ref plain", lambda: response_logprobs(reference, plain, r, pad))
            lq = timed("kl ref ctx", lambda: response_logprobs(reference, prompted, r, pad))
            lq1 = timed("kl ref ctx 1x", lambda: response_logprobs(reference, prompted, r, pad, share_prefix=False))
            drift["shared"] += [kl_from_logprobs(a, b) for a, b in zip(lp, lq)]
            drift["unshared"] += [kl_from_logprobs(a, b) for a, b in zip(lp, lq1)]
    texts = timed("eval sample", lambda: training.eval_samples(policy, tok, ev, st))
    timed(
        "score",
        lambda: scorer.score(
            texts, prompts=[list(p) for p in ev.prompts], contexts=ev.contexts, targets=ev.targets, ids=ev.ids
        ),
    )
    total = sum(v for k, v in parts.items() if k not in ("kl ref ctx 1x", "kl policy 2x"))
    print(f"KL samples: {resp_tokens} response tokens; longest prompted prefix {ctx_len} tokens")
    a, b = summarize_kls(drift["shared"]).per_token, summarize_kls(drift["unshared"]).per_token
    print(f"drift KL, prefix shared: {a:.6f}, not shared: {b:.6f} nats/token (|diff| {abs(a - b):.1e})")
    print(f"reference given c: {parts['kl ref ctx 1x'] / parts['kl ref ctx']:.2f}x faster with the prefix shared")
    for k, v in parts.items():
        share = "" if k in ("kl ref ctx 1x", "kl policy 2x") else f"{v / total:6.1%}"
        print(f"  {k:<13} {v:7.1f} s  {share:>6}  {v / len(ev.ids):.2f} s/prompt")
    print(f"  {'sum':<13} {total:7.1f} s  (without the '1x'/'2x' rows, which evaluate_policy no longer runs)")
    before = total - parts["kl ref ctx"] + parts["kl ref ctx 1x"] + parts["kl policy 2x"]
    print(
        f"  the same parts as before (no shared prefix, second policy pass): {before:.1f} s, {before / total:.2f}x the time"
    )
    t0 = time.perf_counter()
    training.evaluate_policy(policy, reference, tok, ev, scorer, st)
    e2e = time.perf_counter() - t0
    print(f"evaluate_policy end to end: {e2e:.1f} s ({e2e / len(ev.ids):.2f} s/prompt)")


if __name__ == "__main__":
    main()
