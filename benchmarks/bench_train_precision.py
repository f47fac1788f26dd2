"""Stage 5's GKD training steps in float32 and in bfloat16 mixed precision (train.bf16) on the CPU.

`train.bf16: auto` used to mean "on for a CUDA GPU with bf16, off on a CPU", so stage 5 trained in float32 on this
project's 2-core VM although its CPU multiplies bfloat16 natively (AMX), as stage 3's teacher and stage 5's reference
samples already do. This measures what mixed precision (TRL/transformers `bf16=True`: float32 master weights, the
forward and backward matrix products in bfloat16 under torch.autocast) changes, on a run directory whose stage 5 ran:

- the training set is the one stage 5 trained on (05_optimization/reference_sft.jsonl, tokenized by `gkd_dataset`);
- each variant loads the baseline afresh and trains --steps GKD steps with the run's train: settings and seed (the same
  rows in the same order), through `distill.build_gkd_trainer` as the stage builds it;
- then `evaluate_policy` measures the trained policy exactly as stage 5's in-training evals do (float32, outside the
  autocast: the first --prompts held-out prompts, drift KL against the persona-prompted baseline, consistency), so the
  variants are compared on what the stage selects by, not only on their loss.

Variants run in the order A B B A (--repeats R: R runs of each) in ONE process; medians of the training wall time and
of the process's CPU time (not inflated by the hypervisor's steal, which is printed per run).

`--compare teacher-prefix` measures instead what keeping the persona context's keys and values across steps does
(`distill.PromptedTeacher.keep_prefix`: c runs once per training run instead of once per step), both variants in the
run's own precision (train.bf16): the target is the same forward of the same tokens, so both must print the same
losses, drift KL and consistency, and only the time may differ.

Run: python benchmarks/bench_train_precision.py RUN/config.yaml [--steps 24] [--prompts 24] [--repeats 2]
         [--compare bf16|teacher-prefix] [key=value ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from personatune.cpu_time import cpu_times, fmt, steal_share


def target_error(cfg, inp, model, tok, ds, seed: int) -> None:
    """Print what mixed precision does to the GKD target: the persona-prompted baseline's next-token distribution on
    one batch of training rows, computed in float32 and under bfloat16 autocast (as accelerate runs a mixed-precision
    model, teacher included), as KL(float32 || bf16) per answer token in nats, the gate's unit. `model`: the baseline
    as loaded for training (the trainer wraps it; the caller drops it afterwards)."""
    import torch

    from personatune import training
    from personatune.training.distill import build_gkd_trainer

    args = cfg.train.model_copy(update={"bf16": False, "max_steps": 1})
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_gkd_trainer(model, tok, ds, args, training.TrainerRun(Path(tmp), seed, []), context=inp.context)
        n = cfg.train.per_device_batch_size
        batch = trainer.data_collator([ds[i] for i in range(min(n, len(ds)))])
        feed = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        with torch.no_grad():
            exact = trainer.teacher_model(**feed).logits.double()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                mixed = trainer.teacher_model(**feed).logits.double()
    # the answer tokens' positions: the collator's labels are -100 elsewhere, shifted by one (logits predict the next)
    mask = batch["labels"][:, 1:] != -100
    p, q = exact[:, :-1][mask], mixed[:, :-1][mask]
    kl = (p.exp() * (p - q)).sum(-1)
    print(
        f"the GKD target under bf16 autocast: KL(float32 || bf16) {kl.mean():.5f} nats/token (max {kl.max():.4f}) over "
        f"{int(mask.sum())} answer tokens of {len(feed['input_ids'])} rows; largest |log-prob| difference "
        f"{(p - q).abs().max():.3f}",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", help="the run's config.yaml (stage 5 done with train.sft_source=reference)")
    ap.add_argument("--steps", type=int, default=24, help="GKD steps per variant (count)")
    ap.add_argument("--prompts", type=int, default=24, help="held-out prompts of the eval after training (count)")
    ap.add_argument("--repeats", type=int, default=2, help="runs per variant, alternating order (count)")
    ap.add_argument(
        "--warmup-steps",
        type=int,
        default=4,
        help="an untimed training run of this many steps first (count; 0 = none): the process's first run was 1.4x "
        "slower than the same variant's later runs in session 44",
    )
    ap.add_argument(
        "--compare",
        choices=["bf16", "teacher-prefix"],
        default="bf16",
        help="bf16: float32 vs bf16 mixed precision; teacher-prefix: the teacher's persona context run at every step "
        "vs kept across steps",
    )
    ap.add_argument("overrides", nargs="*", help="config key=value")
    a = ap.parse_args()
    if a.steps < 1 or a.prompts < 1 or a.repeats < 1:
        raise SystemExit("error: --steps, --prompts and --repeats must be at least 1")

    import torch

    from personatune import models, training
    from personatune.config import load_config
    from personatune.errors import PersonatuneError
    from personatune.rundir import RunDir
    from personatune.scoring.factory import scorer_for_run
    from personatune.stage3_rows import read_stage3
    from personatune.stages.optimization_common import eval_settings, load_inputs, training_seed
    from personatune.stages.s5_optimization import train_dataset
    from personatune.training.distill import build_gkd_trainer, gkd_dataset

    try:
        cfg = load_config(a.config, a.overrides)
        rd = RunDir(Path(cfg.run_dir) / cfg.name)
        inp = load_inputs(cfg, rd)
        rows_path = rd.root / "05_optimization" / "reference_sft.jsonl"
        if not rows_path.is_file():
            raise SystemExit(
                f"error: {rows_path} not found; fix: run stage 5 with train.sft_source=reference on this run first"
            )
        rows = read_stage3(rows_path, "sft", "re-run stage 5")
        model0, tok = models.load_configured_model(inp.baseline, cfg.model, for_training=True)
        scorer, desc = scorer_for_run(cfg, rd, inp.spec)
    except PersonatuneError as e:
        raise SystemExit(f"error: {e}") from None
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed = training_seed(cfg)
    ds = gkd_dataset(tok, train_dataset(inp.pairs_path, "gkd", None, rows), inp.context, cfg.train.kl_max_new_tokens)
    settings = eval_settings(cfg, seed, inp.context)
    evalset = training.EvalSet.from_rows(inp.held_rows, a.prompts)
    native = models.native_bf16("cpu")
    print(
        f"{len(ds)} GKD rows, {a.steps} steps of batch {cfg.train.per_device_batch_size} x grad_accum "
        f"{cfg.train.grad_accum}, lr {cfg.train.learning_rate}, model.dtype {cfg.model.dtype}; eval on "
        f"{len(evalset.prompts)} held-out prompts; threads {torch.get_num_threads()}, cpu count {os.cpu_count()}, "
        f"native bfloat16: {native}; scorer {desc}"
    )
    if a.compare == "bf16":
        target_error(cfg, inp, model0, tok, ds, seed)  # the tokenizer's model serves this untrained measurement
    del model0
    prefix = a.compare == "teacher-prefix"
    names = {False: "c per step", True: "c kept"} if prefix else {False: "float32", True: "bf16 mixed"}
    order = [(i % 2 == 1) if (i // 2) % 2 == 0 else (i % 2 == 0) for i in range(2 * a.repeats)]
    # variant B (True): bf16 mixed precision, or the teacher's persona context kept across steps
    secs: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    if a.warmup_steps > 0:
        warm = cfg.train.model_copy(update={"max_steps": a.warmup_steps, "max_train_seconds": None})
        model, _ = models.load_configured_model(inp.baseline, cfg.model, for_training=True)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            build_gkd_trainer(
                model, tok, ds, warm, training.TrainerRun(Path(tmp), seed, []), context=inp.context
            ).train()
        print(f"  warm-up: {a.warmup_steps} steps in {time.perf_counter() - t0:.1f} s (not counted)", flush=True)
        del model
    for b in order:
        update = {"max_steps": a.steps, "max_train_seconds": None} | ({} if prefix else {"bf16": b})
        args = cfg.train.model_copy(update=update)
        model, _ = models.load_configured_model(inp.baseline, cfg.model, for_training=True)
        with tempfile.TemporaryDirectory() as tmp:
            trainer = build_gkd_trainer(
                model, tok, ds, args, training.TrainerRun(Path(tmp), seed, []), context=inp.context
            )
            trainer.teacher_model.keep_prefix = b if prefix else True
            c0, t0, p0 = cpu_times(), time.perf_counter(), time.process_time()
            train_loss = trainer.train().training_loss
            secs[b].append(time.perf_counter() - t0)
            cpu[b].append(time.process_time() - p0)
            steal = steal_share(c0, cpu_times())
            losses = [h["loss"] for h in trainer.state.log_history if "loss" in h] or [float("nan")]
            # accelerate runs a mixed-precision model's forward under autocast (a wrapper on the instance): taken off
            # here, so that both variants are measured alike, in float32.
            policy = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
            ev = training.evaluate_policy(policy, training.reference_of(trainer), tok, evalset, scorer, settings)
        s = ev.summary()
        print(
            f"  {names[b]:<10} {secs[b][-1]:7.1f} s ({secs[b][-1] / a.steps:.2f} s/step), process CPU "
            f"{cpu[b][-1]:7.1f} s ({fmt(steal)}); loss mean {train_loss:.4f}, first/last logged {losses[0]:.4f}/{losses[-1]:.4f}; "
            f"drift KL {s['kl']:.4f} nats/token, consistency {s['consistency']:.3f}, on-task {s['on_task']:.3f}",
            flush=True,
        )
        del trainer, model, policy
    med = {k: statistics.median(v) for k, v in secs.items()}
    mcpu = {k: statistics.median(v) for k, v in cpu.items()}
    print(
        f"{names[True]} vs {names[False]}: {med[False] / med[True]:.2f}x faster (median wall {med[False]:.1f} vs "
        f"{med[True]:.1f} s), {mcpu[False] / mcpu[True]:.2f}x less process CPU time (median; not inflated by steal)"
    )


if __name__ == "__main__":
    main()
