"""Stage 6 — iterative training as expert iteration: sample the policy, keep what is in persona and on task, train on it.

Round 0 is the stage-5 model, measured like every round. Each round n = 1, 2, … then does, in order:

1. sample `iterations.samples_per_prompt` responses per stage-3 training prompt (no system prompt) from the
   current policy = the model of round n-1;
2. score them with the persona scorer (stage 4's evaluator, as in stage 5) and keep the answers that are
   consistent AND on task (`kept`); the kept share of all samples is the round's `yield` (rounds.md);
3. per prompt, the best kept answer (chosen) against the worst sample (rejected), when their consistency
   differs by at least `iterations.min_margin`;
4. train from the current policy (a fresh LoRA on top of it, or full) with `iterations.algorithm`: 'dpo' on the
   pairs, its reference log-probs those of the FIXED stage-1 baseline given the persona context (the drift-KL
   reference, METRICS.md), or 'sft' on the chosen answers (distillation of the policy's own best). In-round evals,
   the KL-budget controller and checkpoint selection are those of stage 5;
5. evaluate the round's model on all held-out prompts: drift KL against the persona-prompted baseline (persona
   shift beside it) via personatune.kl, consistency, adherence, style variance, on-task — the stage-5 gate metrics.

Stop at the round budget, when a round does not improve held-out consistency within the KL budget by more than
`iterations.min_improvement`, when the best round passes every gate with `iterations.stop_margin` room, or when
a round finds no new pairs. Keep the best round (`select_round`); `06_iterations/model` is its model (a copy of
the stage-5 model when round 0 is kept). Resumable: a round is finished when `round_<n>/result.json` is written
(last, atomically, after its model); on re-run a finished round whose key (config, start model) and model hash
still match is not redone. Outputs: model, rounds (rounds.jsonl), metrics (metrics.json); also rounds.md.

Multi-process (accelerate launch / torchrun): every rank trains each round's DPO; the main rank alone samples,
scores, builds and writes the pairs, evaluates, selects, saves and deletes (`Ranks.main_only`). The other ranks
wait in a broadcast for its result (or its error, which they raise too), read the round's pairs.jsonl and model
from disk, and return the StageResult the main rank wrote to `06_iterations/result.json`, so every rank takes the
same decisions (round skipped as done, stop reason, number of rounds) and leaves the stage together.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import random
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

from personatune import errors, evidence
from personatune.config import IterationArgs, OptimGateArgs, RunConfig
from personatune.errors import ConfigError, DataError
from personatune.gates import GateReport, Measurement, fmt_metric
from personatune.kl_budget import Selection, select_checkpoint
from personatune.persona import load_persona
from personatune.rundir import RunDir, atomic_write_json, atomic_write_jsonl, atomic_write_text, file_hash, read_jsonl
from personatune.stage import StageResult
from personatune.stages import s5_optimization as s5

STAGE = "06_iterations"
STAGE3_FIX = "re-run stage 3 (personatune run CONFIG --from 3)"
ROW_KEYS = ("round", "kl", "kl_stderr", "persona_shift", "yield", "consistency", "consistency_ci", "adherence", "style_variance", "on_task", "pairs", "steps", "passed", "kept", "seconds")


def final_model_path(run_dir: RunDir) -> Path:
    """The model later stages use: stage 6's kept model."""
    return run_dir.output_path(STAGE, "model")


# --- pure logic: pairs, gate, selection, stopping -------------------------------------------------
def kept(rec: Any) -> bool:
    """Expert iteration's keep rule: the answer is consistent with the persona and on task (on_task >= 0.5, or not measured)."""
    ot = getattr(rec, "on_task", None)
    return bool(rec.consistent) and (ot is None or ot >= 0.5)


def build_pairs(items: Sequence[Mapping[str, Any]], samples: Sequence[Sequence[str]], scores: Sequence[Sequence[Any]],
                min_margin: float) -> list[dict[str, Any]]:
    """New pairs: per prompt, the best kept sample (consistent and on task: `kept`) against the worst one (rejected).
    SFT rounds train on the chosen side only.

    Args:
        items: one training prompt per entry: {"prompt": messages, "context", "targets", "scenario_id"}.
        samples: per item, its sampled responses.
        scores: per item, a ResponseScore-like record (`.consistent`, `.consistency`) per response.
        min_margin: a pair needs consistency(chosen) - consistency(rejected) >= this.

    Returns:
        Stage-3-shaped pair rows; prompts without a consistent sample or without the margin give none.

    >>> from types import SimpleNamespace as S
    >>> p = build_pairs([{"prompt": [{"role": "user", "content": "Hi"}]}], [["Ahoy!", "hi", "meh"]],
    ...                 [[S(consistent=True, consistency=0.9), S(consistent=False, consistency=0.2), S(consistent=False, consistency=0.4)]], 0.2)
    >>> p[0]["chosen"][0]["content"], p[0]["rejected"][0]["content"]
    ('Ahoy!', 'hi')
    """
    pairs = []
    for item, texts, recs in zip(items, samples, scores):
        ranked = sorted(zip(texts, recs), key=lambda tr: tr[1].consistency)
        good = [tr for tr in ranked if kept(tr[1])]
        if not good:
            continue  # nothing in persona to prefer: such a prompt teaches only what to avoid, which DPO cannot use alone
        (best_t, best), (worst_t, worst) = good[-1], ranked[0]
        if best_t == worst_t or best.consistency - worst.consistency < min_margin:
            continue
        pairs.append({"prompt": item["prompt"], "chosen": [{"role": "assistant", "content": best_t}], "rejected": [{"role": "assistant", "content": worst_t}],
                      "context": item.get("context"), "targets": list(item.get("targets") or []), "scenario_id": item.get("scenario_id"),
                      "chosen_consistency": best.consistency, "rejected_consistency": worst.consistency, "rejected_consistent": worst.consistent})
    return pairs


def _num(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def within_budget(row: Mapping[str, Any], g: OptimGateArgs) -> bool:
    """KL measured and <= gates.optimization.max_kl."""
    kl = _num(row.get("kl"))
    return kl is not None and kl <= g.max_kl


def round_passes(row: Mapping[str, Any], g: OptimGateArgs, margin: float = 0.0) -> bool:
    """Every stage-5 gate holds for a round's row, with `margin` room.

    The room is absolute for the rates (consistency, adherence >= gate + margin) and relative for the upper
    bounds (KL <= max_kl * (1 - margin), style variance < max * (1 - margin)); margin 0 is the gate itself.
    """
    kl, c, a, s = (_num(row.get(k)) for k in ("kl", "consistency", "adherence", "style_variance"))
    return (kl is not None and kl <= g.max_kl * (1 - margin) and c is not None and c >= g.consistency + margin
            and a is not None and a >= g.adherence + margin and s is not None and s < g.max_style_variance * (1 - margin))


def select_round(rows: Sequence[Mapping[str, Any]], g: OptimGateArgs) -> tuple[dict[str, Any], str]:
    """The round to keep, and why.

    Best = highest held-out consistency among rounds that pass every stage-5 gate (ties: lower KL, then the earlier
    round); if none passes, the same among rounds within the KL budget; if none is within it, the lowest KL.

    Raises:
        ValueError: no row has a measured KL (round 0 always has one, so this is a programming error).

    >>> g = OptimGateArgs(max_kl=0.1, consistency=0.5, adherence=0.5, max_style_variance=1.0)
    >>> rows = [{"round": 0, "kl": 0.05, "consistency": 0.6, "adherence": 0.9, "style_variance": 0.1},
    ...         {"round": 1, "kl": 0.08, "consistency": 0.7, "adherence": 0.9, "style_variance": 0.1},
    ...         {"round": 2, "kl": 0.20, "consistency": 0.9, "adherence": 0.9, "style_variance": 0.1}]
    >>> select_round(rows, g)[0]["round"]
    1
    """
    cands = [dict(r) for r in rows if _num(r.get("kl")) is not None]
    if not cands:
        raise ValueError("no round has a measured KL")

    def key(r: Mapping[str, Any]) -> tuple[float, float, int]:
        c = _num(r.get("consistency"))
        return (-math.inf if c is None else c, -float(r["kl"]), -int(r["round"]))

    passing = [r for r in cands if round_passes(r, g)]
    inside = [r for r in cands if within_budget(r, g)]
    if passing:
        best = max(passing, key=key)
        return best, f"round {best['round']}: highest consistency {best['consistency']:.4g} among {len(passing)} round(s) passing every gate"
    if inside:
        best = max(inside, key=key)
        return best, (f"no round passes every gate; round {best['round']}: highest consistency {best['consistency']:.4g} among "
                      f"{len(inside)} round(s) within the KL budget {g.max_kl:g}")
    best = min(cands, key=lambda r: (float(r["kl"]), int(r["round"])))
    return best, f"no round is within the KL budget {g.max_kl:g}; round {best['round']} has the lowest KL {float(best['kl']):.4g}"


def improved(row: Mapping[str, Any], earlier: Sequence[Mapping[str, Any]], g: OptimGateArgs, min_improvement: float) -> bool:
    """Whether a round beats every earlier round: within the KL budget and consistency > best earlier + min_improvement."""
    if not within_budget(row, g) or _num(row.get("consistency")) is None:
        return False
    prev = [float(r["consistency"]) for r in earlier if within_budget(r, g) and _num(r.get("consistency")) is not None]
    return not prev or float(row["consistency"]) > max(prev) + min_improvement


def stop_reason(rows: Sequence[Mapping[str, Any]], it: IterationArgs, g: OptimGateArgs) -> str | None:
    """Why the rounds stop after the latest row, or None to run another round.

    Reasons: "no new pairs" (the latest round found none to train on), "gates passed with margin" (the best round
    passes every gate with `it.stop_margin` room), "no improvement" (the latest round did not improve, see
    `improved`), "round budget" (`it.rounds` rounds done).

    >>> g = OptimGateArgs()
    >>> stop_reason([{"round": 0, "kl": 0.05, "consistency": 0.6, "adherence": 0.9, "style_variance": 0.1, "pairs": 0}],
    ...             IterationArgs(rounds=2), g) is None
    True
    """
    last = rows[-1]
    if int(last["round"]) > 0 and not last.get("pairs"):
        return "no new pairs"
    if round_passes(select_round(rows, g)[0], g, it.stop_margin):
        return "gates passed with margin"
    if int(last["round"]) > 0 and not improved(last, rows[:-1], g, it.min_improvement):
        return "no improvement"
    if int(last["round"]) >= it.rounds:
        return "round budget"
    return None


# --- round records on disk --------------------------------------------------------------------------
def _round_key(config: RunConfig, n: int, start_hash: str) -> str:
    """What a finished round depends on: its number, the model it started from, and the config that shapes it.

    The round budget and the stop rules only decide whether to go on, so raising `iterations.rounds` keeps the
    finished rounds.
    """
    dump = config.model_dump(mode="json")
    it = {k: v for k, v in dump["iterations"].items() if k not in ("rounds", "min_improvement", "stop_margin")}
    blob = json.dumps({k: dump.get(k) for k in ("model", "train", "data", "gates", "seed")} | {"iterations": it, "round": n, "start": start_hash},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _load_done(rdir: Path, key: str) -> dict[str, Any] | None:
    """A finished round's record, if its key matches and its model (when it has one) is intact; else None."""
    p = rdir / "result.json"
    try:
        rec = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if rec.get("key") != key:
        return None
    if rec.get("model"):  # a round that trained: its saved model must be the one recorded
        model = rdir / "model"
        if not model.is_dir() or file_hash(model) != rec.get("model_hash"):
            return None
    return rec


def _eval_record(ev: Any) -> dict[str, Any]:
    shift = getattr(ev, "persona_shift", None)
    return {"kl": ev.kl.to_dict(), "persona_shift": None if shift is None else shift.to_dict(), "consistency": ev.consistency.__dict__, "adherence": ev.adherence.__dict__, "style_variance": ev.style_variance,
            "adherence_per_trait": ev.adherence_per_trait, "n": len(ev.texts), "on_task": getattr(getattr(ev, "on_task", None), "__dict__", None),
            "style_variance_n": getattr(ev, "style_variance_n", None)}


def _eval_from_record(d: dict[str, Any]) -> Any:
    """An EvalResult rebuilt from `_eval_record` (so a resumed round can be gated without re-measuring it)."""
    from personatune.kl import KLResult
    from personatune.training import EvalResult

    k = d["kl"]
    kl = KLResult(k["kl_per_token"], k["kl_per_token_stderr"], k["kl_per_sequence_mean"], k["tokens"], k["sequences"], reference=k.get("reference", ""))
    sh = d.get("persona_shift")
    shift = None if not sh else KLResult(sh["kl_per_token"], sh["kl_per_token_stderr"], sh["kl_per_sequence_mean"], sh["tokens"], sh["sequences"],
                                         reference=sh.get("reference", ""))
    meas = lambda m: Measurement(m["value"], m.get("n"), tuple(m["ci"]) if m.get("ci") else None)  # noqa: E731
    return EvalResult(kl, meas(d["consistency"]), meas(d["adherence"]), d["style_variance"], texts=[""] * int(d["n"]),
                      adherence_per_trait=d.get("adherence_per_trait") or {}, on_task=meas(d["on_task"]) if d.get("on_task") else None,
                      style_variance_n=d.get("style_variance_n"), persona_shift=shift)


def _row(n: int, ev: Any, g: OptimGateArgs, pairs: int, steps: int, seconds: float) -> dict[str, Any]:
    shift = getattr(ev, "persona_shift", None)
    row = {"round": n, "kl": ev.kl.per_token, "kl_stderr": ev.kl.stderr, "persona_shift": None if shift is None else shift.per_token,
           "consistency": ev.consistency.value,
           "consistency_ci": list(ev.consistency.ci) if ev.consistency.ci else None, "adherence": ev.adherence.value,
           "style_variance": ev.style_variance, "on_task": None if getattr(ev, "on_task", None) is None else ev.on_task.value, "pairs": pairs, "steps": steps, "passed": False, "kept": False, "seconds": round(seconds, 2)}
    row["passed"] = round_passes(row, g)
    return row


def _copy_model(src: Path, dst: Path, card: str) -> None:
    """Copy a model folder to `dst` with a new card, via a sibling temp folder renamed into place (never half-written)."""
    tmp = dst.with_name(f".tmp-{dst.name}-{uuid.uuid4().hex[:8]}")
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("README.md"))
    atomic_write_text(tmp / "README.md", card)
    if dst.exists():
        old = dst.with_name(f".tmp-old-{dst.name}-{uuid.uuid4().hex[:8]}")
        dst.rename(old)
        tmp.rename(dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(dst)


# --- ranks: one process, or one of several under accelerate launch / torchrun ---------------------------
class Ranks:
    """This process among the launched ones (accelerate's PartialState), and stage 6's main-rank-only pattern.

    One process: `main_only(fn)` is just `fn()`. Several: the main rank runs `fn` (sampling, scoring, evaluating,
    writing files) while the others wait in a broadcast for its return value, or for its error, which they then
    raise too (same class, same one-line message): no rank leaves the stage alone and hangs the others in the
    next collective. Every call must be reached by every rank, in the same order; `fn` itself must not enter a
    collective (it runs on one rank).
    """

    def __init__(self, num_processes: int = 1, process_index: int = 0) -> None:
        self.num_processes = num_processes
        self.process_index = process_index

    @property
    def is_main(self) -> bool:
        return self.process_index == 0

    @classmethod
    def current(cls, config: RunConfig) -> "Ranks":
        """The launch this process belongs to (1 process when not launched by accelerate/torchrun).

        The state is set up with `cpu=` matching where the model goes, as TRL's trainer later does (`use_cpu`):
        a CPU launch then joins the gloo group, where `cpu=False` would see no GPU and fall back to one process.
        When stage 6 creates the process group (not stage 5 before it in the same process), its timeout is
        transformers' `ddp_timeout` default, 30 minutes: the longest the other ranks wait for a main-rank phase.

        Raises:
            ConfigError: model.device is not a device (or names CUDA on a machine without it).
        """
        from datetime import timedelta

        from accelerate import PartialState

        from personatune.models import _resolve_device

        state = PartialState(cpu=_resolve_device(config.model.device) == "cpu", timeout=timedelta(seconds=1800))
        return cls(state.num_processes, state.process_index)

    def main_only(self, fn: Any) -> Any:
        """`fn()` on the main rank; every rank returns its (picklable) value or raises its error."""
        if self.num_processes == 1:
            return fn()
        from accelerate.utils import broadcast_object_list

        box: list[Any] = [None]
        if self.is_main:
            try:
                box[0] = ("ok", fn())
            except Exception as e:
                name = type(e).__name__ if isinstance(e, errors.PersonatuneError) else None
                msg = str(e) if name else f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                broadcast_object_list([("error", name, msg)], from_process=0)
                raise
        broadcast_object_list(box, from_process=0)
        if box[0][0] == "ok":
            return box[0][1]
        _, name, msg = box[0]
        if name is not None:
            cls = getattr(errors, name, errors.PersonatuneError)
            raise cls(msg)
        raise errors.PersonatuneError(f"stage {STAGE}: the main rank failed ({msg}); fix: see the main rank's traceback above, "
                                      f"then re-run the same command (finished rounds are kept)")


# --- one round ----------------------------------------------------------------------------------------
def _load_policy(path: Path, config: RunConfig, baseline: str, for_training: bool) -> tuple[Any, Any]:
    """A model folder as a plain causal LM; an adapter-only folder (train.merge_lora=false) is merged into the baseline."""
    from personatune import models

    if (path / "adapter_config.json").is_file():
        from peft import PeftModel

        base, tok = models.load_configured_model(baseline, config.model, for_training=for_training)
        return PeftModel.from_pretrained(base, str(path)).merge_and_unload(), tok
    return models.load_configured_model(str(path), config.model, for_training=for_training)


def train_round(config: RunConfig, n: int, rdir: Path, start: Path, baseline: str, items: list[dict[str, Any]], scorer: Any, evaluate: Any,
                small: Any, full: Any, echo: Any, ranks: Ranks | None = None, *, context: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """Run round n from the model in `start`; save its model to `rdir/model` and return its record (not yet written).

    Multi-process (`ranks` with several processes): every rank loads the policy and trains; the main rank alone
    samples, scores, writes the pairs, selects, evaluates, saves and deletes; the others read the pairs it wrote
    and get its record by broadcast (`Ranks.main_only`), so every rank returns the same record. `scorer` and
    `evaluate` are only called on the main rank.

    Raises:
        ConfigError: from the trainer builder (train.beta 0 while the KL gate exists), or a launch that shards
            the parameters (ZeRO-3, FSDP).
    """
    import torch
    from datasets import Dataset

    from personatune import models, training
    from personatune.generation.hf import HFBackend

    ranks = ranks or Ranks()
    it, args, g, t = config.iterations, config.train, config.gates.optimization, config.data.teacher
    seed = (args.seed if args.seed is not None else config.seed) + n  # new samples each round, reproducible
    t0 = time.time()
    policy, tok = _load_policy(start, config, baseline, for_training=True)
    pairs: list[dict[str, Any]] = []

    # 1-3 (main rank). Sample k responses per training prompt from the current policy, score them, build new pairs.
    def sample_and_pair() -> dict[str, Any]:
        nonlocal pairs
        for stale in ("checkpoints", "trainer", "metrics.jsonl", "model"):  # a crashed attempt of this round must not mix in
            p = rdir / stale
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        rdir.mkdir(parents=True, exist_ok=True)
        picked = list(items)
        random.Random(seed).shuffle(picked)  # a different subset each round when iterations.max_prompts caps it
        picked = picked[: it.max_prompts] if it.max_prompts else picked
        k = it.samples_per_prompt
        echo(f"round {n}/{it.rounds}: sampling {len(picked)} prompts x {k} …")
        backend = HFBackend(policy, tok, batch_size=max(1, args.eval_batch_size // k))
        samples = backend.generate([x["prompt"] for x in picked], max_new_tokens=t.max_new_tokens, temperature=it.temperature, top_p=t.top_p, n=k,
                                   seed=seed)
        flat = [s for per in samples for s in per]
        recs = scorer.score(flat, prompts=[x["prompt"][-1]["content"] for x in picked for _ in range(k)],
                            contexts=[x.get("context") for x in picked for _ in range(k)],
                            targets=[list(x.get("targets") or []) for x in picked for _ in range(k)])
        scores = [recs[i * k:(i + 1) * k] for i in range(len(picked))]
        t_sample = time.time() - t0
        pairs = build_pairs(picked, samples, scores, it.min_margin)
        atomic_write_jsonl(rdir / "pairs.jsonl", pairs)
        sample_rate = sum(r.consistent for r in recs) / max(1, len(recs))
        yield_rate = sum(kept(r) for r in recs) / max(1, len(recs))
        echo(f"round {n}/{it.rounds}: {len(flat)} samples in {t_sample:.1f}s, {sample_rate:.1%} consistent, {yield_rate:.1%} kept (consistent "
             f"and on task) -> {len(pairs)} {'pairs' if it.algorithm == 'dpo' else 'answers'} (min margin {it.min_margin:g})")
        return {"round": n, "sample_consistency": sample_rate, "yield": yield_rate, "samples": len(flat)}

    base = ranks.main_only(sample_and_pair)
    if not ranks.is_main:
        pairs = read_jsonl(rdir / "pairs.jsonl", fix="re-run the same command (the round is redone)")
    if not pairs:
        policy = None  # (not `del`: the closure above holds it)
        gc.collect()
        return base | {"row": {"round": n, "pairs": 0, "steps": 0, "kl": None, "yield": base.get("yield"), "passed": False, "kept": False,
                               "seconds": round(time.time() - t0, 2)}}

    # 4 (every rank). DPO from the current policy against the fixed baseline reference (explicit ref_model: see module docstring).
    reference, _ = models.load_configured_model(baseline, config.model)
    reference.eval().requires_grad_(False)
    rargs = args.model_copy(update={"algorithm": it.algorithm, "max_steps": it.max_steps or args.max_steps})
    if it.algorithm == "dpo":
        ds = Dataset.from_list([{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs])
    else:
        ds = Dataset.from_list([{"prompt": p["prompt"], "completion": p["chosen"]} for p in pairs])
    # The callback hands evaluate TRL's view of the reference (adapters off = round n-1); the gate's reference is the baseline.
    # It evaluates on the main rank only and broadcasts the KL controller's decision to the others.
    cb = training.PersonaEvalCallback(lambda m, _r: evaluate(m, reference, evalset=small), rdir, eval_every=args.eval_every, max_kl=g.max_kl,
                                      kl_control=args.kl_control, beta_raise_factor=args.beta_raise_factor, max_beta_raises=args.max_beta_raises,
                                      eval_at_start=False, echo=lambda s: echo(s.strip()))
    if it.algorithm == "dpo":  # reference log-probs: the baseline given the persona context (drift-KL reference)
        trainer = training.build_dpo_trainer(policy, tok, ds, rargs, output_dir=rdir / "trainer", max_kl=g.max_kl, seed=seed, ref_model=reference,
                                             callbacks=[cb.hooks()], reference_context=context)
    else:
        trainer = training.build_sft_trainer(policy, tok, ds, rargs, output_dir=rdir / "trainer", seed=seed, callbacks=[cb.hooks()])
    cb.bind(trainer)
    if cb.sharded:  # the same launch config on every rank, so every rank refuses alike
        raise ConfigError("stage 6 under ZeRO-3/FSDP: the parameters are sharded, so the main rank cannot sample, evaluate, merge and save a "
                          "round alone; fix: run stage 6 in one process or with configs/accelerate/cpu_2proc.yaml (DDP) or deepspeed_zero2.yaml")
    t1 = time.time()
    trainer.train()
    steps = trainer.state.global_step
    acc = trainer.accelerator
    launch = {"num_processes": acc.num_processes, "distributed_type": str(acc.distributed_type).split(".")[-1],
              "global_batch": rargs.per_device_batch_size * rargs.grad_accum * acc.num_processes, "epoch": trainer.state.epoch}

    # 5 (main rank). Select, merge, evaluate on all held-out prompts against the baseline, save the model; the record is written by the caller.
    def finish() -> dict[str, Any]:
        echo(f"round {n}/{it.rounds}: {steps} {it.algorithm.upper()} steps on {len(pairs)} {'pairs' if it.algorithm == 'dpo' else 'answers'} "
             f"in {time.time() - t1:.1f}s"
             + (f" ({acc.num_processes} processes, {launch['distributed_type']})" if acc.num_processes > 1 else ""))
        sel = select_checkpoint(cb.history, g.max_kl, min_consistency=g.consistency, min_adherence=g.adherence, max_style_variance=g.max_style_variance)
        if sel.record is not None:
            s5._load_checkpoint(trainer, rdir / sel.record["checkpoint"], args.peft)
        final = acc.unwrap_model(trainer.model)
        if args.peft == "lora":
            final = final.merge_and_unload()  # the next round trains a fresh LoRA on top, so rounds are saved merged
        ev = evaluate(final, reference, evalset=full)
        models.save_model(final, tok, rdir / "model")
        atomic_write_json(rdir / "samples.json", [{"id": i, "context": c, "prompt": p[-1]["content"], "response": x, "consistent": r.consistent}
                                                  for i, c, p, x, r in zip(full.ids, full.contexts, full.prompts, ev.texts, ev.records)])
        shutil.rmtree(rdir / "checkpoints", ignore_errors=True)  # the selected one is merged into model/; keeps disk use to one model per round
        shutil.rmtree(rdir / "trainer", ignore_errors=True)
        row = _row(n, ev, g, len(pairs), steps, time.time() - t0) | {"yield": base.get("yield")}
        return base | {"row": row, "eval": _eval_record(ev), "selection": {"reason": sel.reason, "within_budget": sel.within_budget,
                                                                          "step": (sel.record or {}).get("step")},
                       "model": str(Path(rdir.name) / "model"), "model_hash": file_hash(rdir / "model"), "training": launch}

    rec = ranks.main_only(finish)
    trainer = policy = None  # the next round loads its own copies; free these first
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return rec


# --- the stage ------------------------------------------------------------------------------------------
def iteration_gate(config: RunConfig, kept: dict[str, Any], rows: list[dict[str, Any]], stop: str, reason: str,
                   baseline_on_task: Measurement | None = None) -> GateReport:
    """The stage-5 gate (same specs, via s5_optimization.optimization_gate) on the kept round, with a round-level diagnosis.

    Args:
        baseline_on_task: the baseline's on-task rate on the held-out prompts (for on-task retention); None fails that gate.
    """
    ev = _eval_from_record(kept["eval"])
    # Only the results (specs, values, intervals) and next steps are taken; stage 5's diagnosis speaks of its own
    # checkpoints, so it is replaced by one about rounds (the one-row history just keeps its "no eval ran" note out).
    g5 = s5.optimization_gate(config, ev, Selection(None, ""), [kept["row"]], baseline_on_task=baseline_on_task)
    k = kept["row"]["round"]
    diagnosis = [f"kept round {k} of {rows[-1]['round']} (stop: {stop}); {reason}"]
    row_key = {"kl_per_token": "kl", "consistency_rate": "consistency", "adherence": "adherence", "style_variance": "style_variance",
               "on_task_retention": "on_task"}
    for r in g5.results:
        if not r.passed:
            measured = [x for x in rows if x.get("kl") is not None]
            key = row_key[r.metric]
            per = ", ".join(f"r{x['round']} {x[key]:.3g}" if x.get(key) is not None else f"r{x['round']} n/a" for x in measured)
            state = "is inconclusive" if r.inconclusive else f"fails {r.direction} {r.threshold:g}"
            diagnosis.append(f"{r.metric} {fmt_metric(r.value, 4)} {state} in round {k}; per round ({key}): {per}" + (f" — {r.note}" if r.note else ""))
    steps = list(g5.next_steps)
    if stop == "no new pairs":
        steps.append("no sample was consistent enough to pair: lower iterations.min_margin or raise iterations.samples_per_prompt")
    return GateReport(STAGE, g5.results, diagnosis=diagnosis, next_steps=steps)


def rounds_table(rows: list[dict[str, Any]]) -> str:
    """The per-round metrics as a markdown table."""
    f = lambda v: "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = ["| " + " | ".join(ROW_KEYS) + " |", "|" + "---|" * len(ROW_KEYS)]
    for r in rows:
        ci = r.get("consistency_ci")
        lines.append("| " + " | ".join(f"{ci[0]:.3f}–{ci[1]:.3f}" if k == "consistency_ci" and ci else f(r.get(k)) for k in ROW_KEYS) + " |")
    return "\n".join(lines) + "\n"


def _card(spec: Any, kept: dict[str, Any], rows: list[dict[str, Any]], stop: str, reason: str, gate: GateReport, baseline: str) -> str:
    k = kept["row"]["round"]
    origin = ("This is a copy of the stage-5 model: " + ("no round was run (iterations.rounds=0)." if len(rows) == 1 else "no round improved on it.")
              if k == 0 else f"Round {k} of stage 6: DPO on pairs of its predecessor's own samples (best consistent vs worst), from round {k - 1}.")
    return "\n".join([f"# {spec.name} — persona model (personatune stage 6, round {k})", "", origin, "",
                      f"`kl` is drift KL (nats/token) against the fixed reference, the stage-1 baseline `{baseline}` given the persona context, in every "
                      f"round; `persona_shift` is the KL to the same baseline without it; `yield` is the share of the round's samples kept "
                      f"(consistent and on task); prompts carry no system prompt.",
                      "", f"Stop: {stop}. Kept: {reason}.", "", "## Rounds (held-out prompts)", "", rounds_table(rows), "## Gate", "", "```",
                      gate.summary(), "```", ""])


def run(config: RunConfig, run_dir: RunDir) -> StageResult:
    """Run the rounds, keep the best, gate it, write the table and the kept model.

    Under accelerate launch / torchrun every rank runs this; see `Ranks` and the module docstring for who does what.

    Raises:
        ConfigError: train.beta is 0 while the KL gate exists; a bad model.device; a sharded launch (ZeRO-3, FSDP).
        DataError: stage-3 data missing, empty, or with system prompts.
        RunDirError: an earlier stage has not finished.
    """
    import torch

    from personatune import models, training
    from personatune.stages.s1_baseline import baseline_model_path

    it, args, g = config.iterations, config.train, config.gates.optimization
    if it.algorithm == "dpo":
        training.check_beta(args.beta, g.max_kl)
    ranks = Ranks.current(config)
    out = run_dir.stage_dir(STAGE)
    if config.threads:
        torch.set_num_threads(config.threads)
    seed = args.seed if args.seed is not None else config.seed

    def echo(s: str) -> None:
        if ranks.is_main:  # one console line and one log line per event, whatever the number of processes
            print(s, flush=True)
            run_dir.log(s)

    # Inputs, through the manifest (read by every rank: the same files give every rank the same answer or error).
    # Round prompts: the stage-3 training scenarios, one per scenario, no system turn.
    spec = load_persona(run_dir.output_path("02_persona", "persona"))
    pairs_path = run_dir.output_path("03_consistency_data", "train") / "pairs.jsonl"
    items: dict[str, dict[str, Any]] = {}
    for i, r in enumerate(read_jsonl(pairs_path, fix=STAGE3_FIX), 1):
        if any(m.get("role") == "system" for m in r.get("prompt", [])):
            raise DataError(f"{pairs_path} line {i}: the prompt has a system turn; fix: remove system turns (the persona must come from the weights)")
        items.setdefault(r.get("scenario_id") or json.dumps(r["prompt"]), r)
    if not items:
        raise DataError(f"{pairs_path} has no pairs; fix: {STAGE3_FIX}")
    held_rows = read_jsonl(run_dir.output_path("03_consistency_data", "heldout") / "prompts.jsonl", fix=STAGE3_FIX)
    if not held_rows:
        raise DataError("03_consistency_data/heldout/prompts.jsonl is empty; fix: raise data.heldout_fraction or data.max_prompts and re-run stage 3")
    baseline = baseline_model_path(run_dir)
    context = s5.reference_context(config, spec, baseline, [r["messages"] for r in held_rows])  # the drift-KL reference's persona context
    s5_model = run_dir.output_path("05_optimization", "model")
    t = config.data.teacher
    small, full = training.EvalSet.from_rows(held_rows, args.kl_eval_prompts), training.EvalSet.from_rows(held_rows)
    scorer, tok = None, None

    def make_scorer() -> str:  # the scorer scores on the main rank only
        nonlocal scorer
        scorer, desc = s5._make_scorer(spec, run_dir, config)
        echo(f"persona metrics scored by: {desc}")
        return desc

    scorer_desc = ranks.main_only(make_scorer)

    def evaluate(model: Any, reference: Any, evalset: Any) -> Any:
        # Same decoding and seed in every round (as stage 5), so rounds differ only by their weights.
        return training.evaluate_policy(model, reference, tok, evalset, scorer, kl_max_new_tokens=args.kl_max_new_tokens, max_new_tokens=t.max_new_tokens,
                                        temperature=t.temperature, top_p=t.top_p, seed=seed, batch_size=args.eval_batch_size,
                                        min_per_context=config.gates.evaluation.min_per_context, context=context)

    # Round 0 (main rank): the stage-5 model, measured exactly like the rounds.
    def round_0() -> dict[str, Any]:
        nonlocal tok
        start_hash = file_hash(s5_model)
        key = _round_key(config, 0, start_hash)
        rec = _load_done(out / "round_0", key)
        if rec is None:
            t0 = time.time()
            policy, tok = _load_policy(s5_model, config, baseline, for_training=False)
            reference, _ = models.load_configured_model(baseline, config.model)
            ev = evaluate(policy, reference, full)
            rec = {"round": 0, "key": key, "row": _row(0, ev, g, 0, 0, time.time() - t0), "eval": _eval_record(ev), "model": None, "model_hash": start_hash}
            atomic_write_json(out / "round_0" / "result.json", rec)
            del policy, reference
        else:
            echo("round 0: measured earlier, skipped")
        return rec

    recs: list[dict[str, Any]] = []
    rec = ranks.main_only(round_0)
    start, start_hash = s5_model, rec["model_hash"]
    recs.append(rec)
    echo(f"round 0 (stage-5 model): drift KL {rec['row']['kl']:.4g} nats/token, consistency {rec['row']['consistency']:.3f} "
         f"({rec['row']['seconds']:.1f}s)")
    rows = [rec["row"]]
    # Every rank computes the stop reason from the same (broadcast) rows, so all go on or stop together.
    stop = stop_reason(rows, it, g)
    while stop is None:
        n = len(recs)
        rdir = out / f"round_{n}"
        key = _round_key(config, n, start_hash)

        def check_done() -> dict[str, Any] | None:  # main rank: is the round finished already?
            nonlocal tok
            done = _load_done(rdir, key)
            if done is None and tok is None:
                tok = _load_policy(start, config, baseline, for_training=False)[1]
            return done

        rec = ranks.main_only(check_done)
        if rec is not None:
            echo(f"round {n}/{it.rounds}: done earlier, skipped")
        else:
            rec = train_round(config, n, rdir, start, baseline, list(items.values()), scorer, evaluate, small, full, echo, ranks,
                              context=context) | {"key": key}
            if ranks.is_main:
                atomic_write_json(rdir / "result.json", rec)  # last: it marks the round finished
        r = rec["row"]
        recs.append(rec)
        rows.append(r)
        if r.get("kl") is not None:
            echo(f"round {n}/{it.rounds}: drift KL {r['kl']:.4g} nats/token, consistency {r['consistency']:.3f}, adherence {r['adherence']:.3f}, "
                 f"style variance {fmt_metric(r['style_variance'])}, {'passes' if r['passed'] else 'fails'} the gate ({r['seconds']:.1f}s)")
            start, start_hash = rdir / "model", rec["model_hash"]
        stop = stop_reason(rows, it, g)
        if ranks.is_main:
            atomic_write_jsonl(out / "rounds.jsonl", [{k: x.get(k) for k in ROW_KEYS} for x in rows])  # progress, rewritten at the end

    # Keep the best round; write the table, the kept model, the gate (main rank; the others return what it wrote).
    best, reason = select_round(rows, g)
    kept = next(x for x in recs if x["row"]["round"] == best["round"])
    for x in rows:
        x["kept"] = x["round"] == best["round"]
    table = [{k: x.get(k) for k in ROW_KEYS} for x in rows]

    def baseline_on_task() -> Measurement | None:  # main rank: the baseline's on-task rate (stage 4's samples when they match)
        from personatune.scoring.aggregate import on_task_rate

        return on_task_rate(evidence.baseline_on_task_records(config, run_dir, scorer, held_rows)[0])

    gate = iteration_gate(config, kept, rows, stop, reason, baseline_on_task=ranks.main_only(baseline_on_task))
    outputs = {"model": out / "model", "rounds": out / "rounds.jsonl", "metrics": out / "metrics.json"}
    message = (f"{rows[-1]['round']} round(s), stop: {stop}; kept round {best['round']}: drift KL {best['kl']:.4g} nats/token, "
               f"consistency {best['consistency']:.3f}, adherence {best['adherence']:.3f}, style variance {fmt_metric(best['style_variance'])}")
    small_metrics = {"best_round": best["round"], "stop_reason": stop, "rounds_run": rows[-1]["round"],
                     **{k: best[k] for k in ("kl", "consistency", "adherence", "style_variance")}}

    def write_outputs() -> None:
        atomic_write_jsonl(out / "rounds.jsonl", table)
        atomic_write_text(out / "rounds.md", rounds_table(table))
        src = s5_model if best["round"] == 0 else out / f"round_{best['round']}" / "model"
        _copy_model(src, out / "model", _card(spec, kept, rows, stop, reason, gate, baseline))
        metrics = {"best_round": best["round"], "stop_reason": stop, "kept_reason": reason, "reference": baseline, "scorer": scorer_desc,
                   "rounds_run": rows[-1]["round"], "rounds": table, "kept_eval": kept["eval"],
                   "rounds_detail": [{k: x.get(k) for k in ("round", "sample_consistency", "yield", "samples", "selection", "training")} for x in recs]}
        atomic_write_json(out / "metrics.json", metrics)
        echo(f"stage 6: kept round {best['round']} ({reason}); stop: {stop}")
        atomic_write_json(out / "result.json", {"outputs": {k: str(v.relative_to(run_dir.root)) for k, v in outputs.items()}, "gate": gate.to_dict(),
                                                "metrics": small_metrics, "message": message, "num_processes": ranks.num_processes})

    ranks.main_only(write_outputs)
    if not ranks.is_main:  # the result the main rank wrote (it is also what this rank computed: same rows, same decisions)
        saved = json.loads((out / "result.json").read_text(encoding="utf-8"))
        return StageResult(outputs={k: run_dir.root / v for k, v in saved["outputs"].items()}, gate=GateReport.from_dict(saved["gate"]),
                           metrics=saved["metrics"], message=saved["message"])
    return StageResult(outputs=outputs, gate=gate, metrics=small_metrics, message=message)
