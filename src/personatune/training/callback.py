"""The persona/KL eval callback: every `eval_every` steps, sample the policy on held-out prompts (no system prompt),
measure the exact per-token KL to the fixed reference (`personatune.kl`), score the samples (consistency, adherence,
style variance), append the record to `metrics.jsonl`, log it to the trainer (so `report_to` trackers get it), save a
checkpoint for that step, and ask the KL-budget controller (`personatune.kl_budget.decide`) whether to continue, stop,
or raise beta.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from personatune.gates import fmt_metric
from personatune.records import StepRow, parse_record
from personatune.training.args import TrainArgs
from personatune.training.evaluation import EvalResult, append_jsonl
from personatune.training.trainers import reference_of


class PersonaEvalCallback:
    """Eval + checkpoint + KL control every `eval_every` optimizer steps (composition: TRL trainers are not subclassed).

    Register with `trainer.add_callback(cb.hooks())` after `cb.bind(trainer)` (or pass `callbacks=[cb.hooks()]` to a
    builder and bind afterwards). Under multi-process training every rank saves the checkpoint (a collective under
    DeepSpeed/FSDP), the main process evaluates, and its decision is broadcast so all ranks stop or raise beta together.
    With parameters sharded (ZeRO-3, FSDP) a single rank cannot generate, so evals are deferred: the records carry only
    the checkpoint and stage 5 evaluates them after training.

    Args:
        evaluate: model, reference -> EvalResult (e.g. a partial of `evaluate_policy`); None = checkpoints only.
        out_dir: stage folder; writes `metrics.jsonl` and `checkpoints/step-N/`.
        args: the schedule and the controller, from TrainArgs: `eval_every` (optimizer steps between evals; 0 = only
            at the end of training), `eval_every_seconds`, `eval_at_start` (also evaluate and checkpoint at step 0: the
            starting point), `max_train_seconds`, `kl_control` ("stop" or
            "raise_beta"), `beta_raise_factor`, `max_beta_raises`.
        max_kl: the KL budget (nats/token) for the controller.
        untrained_start: training starts at the untrained baseline (stage 5), so the controller lets a first eval over
            the budget go on when no step-0 eval came before it (`kl_budget.decide`).
        echo: where the one-line eval summaries go.
    """

    def __init__(
        self,
        evaluate: Callable[[Any, Any], EvalResult] | None,
        out_dir: str | Path,
        args: TrainArgs,
        *,
        max_kl: float,
        untrained_start: bool = False,
        echo: Callable[[str], None] = print,
    ) -> None:
        self.evaluate = evaluate
        self.untrained_start = untrained_start
        self.eval_every_seconds = args.eval_every_seconds
        self._last_eval_train_s = 0.0
        self.max_train_seconds = args.max_train_seconds
        self.eval_seconds = 0.0
        self.t_begin: float | None = None
        self.out_dir = Path(out_dir)
        self.metrics_path = self.out_dir / "metrics.jsonl"
        self.eval_every = args.eval_every
        self.max_kl = max_kl
        self.kl_control = args.kl_control
        self.beta_raise_factor = args.beta_raise_factor
        self.max_beta_raises = args.max_beta_raises
        self.eval_at_start = args.eval_at_start
        self.echo = echo
        self.history: list[dict[str, Any]] = []
        self.trainer: Any = None
        self._last_step = -1

    def bind(self, trainer: Any) -> "PersonaEvalCallback":
        """Attach the trainer whose model is evaluated, saved and whose beta may be raised."""
        self.trainer = trainer
        return self

    @property
    def sharded(self) -> bool:
        t = self.trainer
        ds = getattr(t.accelerator.state, "deepspeed_plugin", None)
        return bool(getattr(t, "is_fsdp_enabled", False) or (ds is not None and getattr(ds, "zero_stage", 0) == 3))

    def hooks(self) -> Any:
        """A transformers TrainerCallback that forwards step events here (built lazily: transformers is heavy to import)."""
        from transformers import TrainerCallback

        outer = self

        class PersonaEvalHooks(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                outer.t_begin = time.time()
                if outer.eval_at_start and outer.evaluate is not None and state.global_step == 0:
                    # Saved like any other step: the starting point is a candidate too (under drift KL it is over
                    # the budget, the unprompted baseline against its persona-prompted self).
                    outer.step(0, control)

            def on_step_end(self, args, state, control, **kwargs):
                by_time = (
                    outer.eval_every_seconds is not None
                    and outer.training_seconds() - outer._last_eval_train_s >= outer.eval_every_seconds
                )
                if (outer.eval_every and state.global_step % outer.eval_every == 0) or by_time:
                    outer.step(state.global_step, control)
                if outer.over_time_budget():
                    control.should_training_stop = True  # on_train_end then evaluates this last state

            def on_train_end(self, args, state, control, **kwargs):
                # The last state is a candidate too, even when it does not fall on an eval step.
                if state.global_step != outer._last_step and state.global_step > 0:
                    outer.step(state.global_step, control)

        return PersonaEvalHooks()

    def training_seconds(self) -> float:
        """Wall-clock seconds since training began, evals excluded."""
        return 0.0 if self.t_begin is None else time.time() - self.t_begin - self.eval_seconds

    def over_time_budget(self) -> bool:
        return self.max_train_seconds is not None and self.training_seconds() >= self.max_train_seconds

    def step(self, step: int, control: Any, *, save: bool = True) -> dict[str, Any] | None:
        """Save a checkpoint (all ranks), evaluate (main rank), record, log, and apply the controller's decision."""
        t_eval = time.time()
        self._last_eval_train_s = self.training_seconds()
        try:
            return self._step(step, control, save=save)
        finally:
            self.eval_seconds += time.time() - t_eval

    def _step(self, step: int, control: Any, *, save: bool = True) -> dict[str, Any] | None:
        import torch

        from personatune.kl_budget import decide

        if self.trainer is None:
            raise RuntimeError("PersonaEvalCallback.bind(trainer) was not called")
        t = self.trainer
        self._last_step = step
        ckpt = None
        if save:
            ckpt_dir = self.out_dir / "checkpoints" / f"step-{step}"
            t.save_model(str(ckpt_dir))
            ckpt = str(ckpt_dir.relative_to(self.out_dir))
        main = t.accelerator.is_main_process
        # SFT/SDFT trainers have no beta (their loss is the divergence itself): raise_beta then stops instead.
        beta = getattr(t, "beta", None)
        row: dict[str, Any] = {
            "step": step,
            "checkpoint": ckpt,
            "beta": None if beta is None else float(beta),
            "time": round(time.time(), 3),
            "train_seconds": round(self.training_seconds(), 2),
        }
        action, new_beta = 0, float("nan") if beta is None else float(beta)
        if self.evaluate is not None and not self.sharded:
            if main:
                res = self.evaluate(t.model, reference_of(t))
                row.update(res.summary())
                d = decide(
                    self.history + [row],
                    self.max_kl,
                    self.kl_control,
                    beta=None if beta is None else float(beta),
                    raise_factor=self.beta_raise_factor,
                    max_raises=self.max_beta_raises,
                    untrained_start=self.untrained_start,
                )
                row["decision"], row["reason"] = d.action, d.reason
                action = {"continue": 0, "stop": 1, "raise_beta": 2}[d.action]
                new_beta = d.new_beta if d.new_beta is not None else new_beta
                shift = "" if res.persona_shift is None else f" (persona shift {res.persona_shift.per_token:.4g})"
                self.echo(
                    f"  eval step {step}: drift KL {res.kl.per_token:.4g}±{res.kl.stderr:.2g} nats/token{shift}, consistency {res.consistency.value:.3f}, "
                    f"adherence {res.adherence.value:.3f}, style variance {fmt_metric(res.style_variance)} -> {d.action}"
                )
            if t.accelerator.num_processes > 1:
                # Every rank must take the same decision, or one would wait forever in the next all-reduce.
                msg = torch.tensor([float(action), new_beta], dtype=torch.float64, device=t.accelerator.device)
                torch.distributed.broadcast(msg, src=0)
                action, new_beta = int(msg[0].item()), float(msg[1].item())
        else:
            row["decision"] = "deferred" if self.evaluate is not None else "not_evaluated"
        # `decide` never stops or raises beta at step 0 (the untrained start), so the action applies as given.
        if action == 1:
            control.should_training_stop = True
        elif action == 2:
            # TRL's DPO/GRPO/RLOO losses read `trainer.beta` at every step, so a new value takes effect at the next one.
            t.beta = new_beta
            t.args.beta = new_beta
        self.history.append(row)
        if main:
            # Checked against the one schema its readers use (records.StepRow).
            parse_record(StepRow, row, f"{self.out_dir.name}/metrics.jsonl")
            append_jsonl(self.metrics_path, row)
            # Logged through transformers' Trainer.log (not TRL's override, which would flush TRL's running averages),
            # so the tracker in `report_to` receives the persona metrics next to the loss.
            from transformers import Trainer

            # CallbackHandler.on_log clears control.should_log; restore it, or this rank would skip the loss all-gather
            # that the other ranks enter at a logging step (a deadlock under DDP).
            should_log = control.should_log
            Trainer.log(
                t,
                {
                    f"persona/{k}": v
                    for k, v in row.items()
                    if isinstance(v, (int, float)) and v is not None and k not in ("step", "time")
                },
            )
            control.should_log = t.control.should_log = should_log
        return row
