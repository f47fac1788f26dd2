"""Policy evaluation: held-out prompts (`EvalSet`), how each eval samples (`EvalSettings`), one measurement
(`evaluate_policy` -> `EvalResult`: exact drift KL plus persona metrics of the policy's own samples), and the
`metrics.jsonl` lines the eval callback appends.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from personatune.rundir import jsonl_lines

if TYPE_CHECKING:  # pragma: no cover - typing only
    from personatune.gates import Measurement
    from personatune.kl import KLResult


@dataclass
class EvalSet:
    """Held-out prompts for evals: conversations ending in a user turn, with no system prompt."""

    prompts: list[list[dict[str, str]]]
    contexts: list[str | None]
    targets: list[list[str]]
    ids: list[str]

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]], n: int | None = None) -> "EvalSet":
        """From stage-3 `heldout/prompts.jsonl` rows; at most n, taken round-robin over contexts so each stays represented.

        Raises:
            DataError: a row has a system turn (the persona must come from the weights, not a prompt).
        """
        from personatune.errors import DataError

        for r in rows:
            if any(m.get("role") == "system" for m in r["messages"]):
                raise DataError(
                    f"held-out prompt {r.get('id')!r} has a system turn; stage-5 prompts must have none (re-run stage 3)"
                )
        if n is not None and n < len(rows):
            by: dict[Any, list[dict[str, Any]]] = {}
            for r in rows:
                by.setdefault(r.get("context"), []).append(r)
            picked: list[dict[str, Any]] = []
            while len(picked) < n:
                for ctx in list(by):
                    if by[ctx] and len(picked) < n:
                        picked.append(by[ctx].pop(0))
            rows = picked
        return cls(
            [r["messages"] for r in rows],
            [r.get("context") for r in rows],
            [list(r.get("targets") or []) for r in rows],
            [str(r.get("id", i)) for i, r in enumerate(rows)],
        )


@dataclass
class EvalResult:
    """One evaluation of a policy: exact KL plus persona metrics of its own samples."""

    kl: "KLResult"
    consistency: "Measurement"
    adherence: "Measurement"
    style_variance: float | None
    texts: list[str] = field(default_factory=list)
    records: list[Any] = field(default_factory=list)
    seconds: float = 0.0
    adherence_per_trait: dict[str, float] = field(default_factory=dict)
    on_task: "Measurement | None" = None
    style_variance_n: int | None = None
    persona_shift: "KLResult | None" = None

    def summary(self) -> dict[str, Any]:
        """The flat numbers written to metrics.jsonl and logged to trackers. `kl` is drift KL (against the persona-prompted
        baseline, the gate); `persona_shift` is the KL to the unprompted baseline on the same samples (information)."""
        sh = self.persona_shift
        return {
            "kl": self.kl.per_token,
            "kl_stderr": self.kl.stderr,
            "kl_per_sequence": self.kl.per_sequence_mean,
            "kl_tokens": self.kl.tokens,
            "kl_reference": "persona-prompted baseline" if sh is not None else "unprompted baseline",
            "persona_shift": None if sh is None else sh.per_token,
            "persona_shift_stderr": None if sh is None else sh.stderr,
            "consistency": self.consistency.value,
            "adherence": self.adherence.value,
            "style_variance": self.style_variance,
            "on_task": None if self.on_task is None else self.on_task.value,
            "n": len(self.texts),
            "eval_seconds": round(self.seconds, 2),
        }

    def to_record(self) -> dict[str, Any]:
        """The full measurement as JSON (stage 6's `round_<n>/result.json` "eval"): KL results, rates with their n and
        interval, per-trait adherence; the texts and per-response records are left out (`samples.json` has them)."""
        sh, ot = self.persona_shift, self.on_task
        return {
            "kl": self.kl.to_dict(),
            "persona_shift": None if sh is None else sh.to_dict(),
            "consistency": self.consistency.__dict__,
            "adherence": self.adherence.__dict__,
            "style_variance": self.style_variance,
            "adherence_per_trait": self.adherence_per_trait,
            "n": len(self.texts),
            "on_task": None if ot is None else ot.__dict__,
            "style_variance_n": self.style_variance_n,
        }

    @classmethod
    def from_record(cls, d: dict[str, Any]) -> "EvalResult":
        """An EvalResult rebuilt from `to_record` (so a resumed round can be gated without re-measuring it); texts are blanks."""
        from personatune.gates import Measurement
        from personatune.kl import KLResult

        def meas(m: dict[str, Any]) -> Measurement:
            return Measurement(m["value"], m.get("n"), tuple(m["ci"]) if m.get("ci") else None)

        sh = d.get("persona_shift")
        return cls(
            KLResult.from_dict(d["kl"]),
            meas(d["consistency"]),
            meas(d["adherence"]),
            d["style_variance"],
            texts=[""] * int(d["n"]),
            adherence_per_trait=d.get("adherence_per_trait") or {},
            on_task=meas(d["on_task"]) if d.get("on_task") else None,
            style_variance_n=d.get("style_variance_n"),
            persona_shift=KLResult.from_dict(sh) if sh else None,
        )


@dataclass(frozen=True)
class EvalSettings:
    """How every eval of a stage samples and scores: the same at each eval, so evals differ only by the weights.

    Attributes:
        kl_max_new_tokens: response length cap of the KL samples (tokens).
        max_new_tokens, temperature, top_p: decoding of the samples that are scored (stages 4-7 use the `eval:` decoding).
        seed: sampling seed of both sample sets.
        batch_size: sequences generated together.
        min_per_context: responses a context needs to count in style variance.
        context: the persona context c of drift KL; None = plain KL to the reference only (no persona shift).
    """

    kl_max_new_tokens: int
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    batch_size: int
    min_per_context: int = 5
    context: list[dict[str, str]] | None = None


MERGED_COPY_MAX_BYTES = 2 << 30


def _copyable_lora(model: Any) -> bool:
    """A PEFT model whose weights take under MERGED_COPY_MAX_BYTES (2 GiB)."""
    if not getattr(model, "peft_config", None) or not hasattr(model, "merge_and_unload"):
        return False
    return sum(p.numel() * p.element_size() for p in model.parameters()) < MERGED_COPY_MAX_BYTES


def merged_copy(model: Any) -> Any:
    """What evals generate with: for a LoRA policy whose weights take under 2 GiB, a copy with the adapters merged
    into the weights (no per-layer adapter code in the forward: `evaluate_policy` 1.22x less CPU time on SmolLM2-135M,
    the same drift KL to 6 digits; docs/benchmarks.md, "Stage 5: reference samples in bfloat16, evals on a merged
    copy");
    otherwise `model` itself (a large model is not copied; merging in place and back would round the training
    weights)."""
    if not _copyable_lora(model):
        return model
    import copy

    return copy.deepcopy(model).merge_and_unload()


@contextmanager
def measured_in_model_dtype(*objs: Any) -> Iterator[None]:
    """Run the models (or references holding one as `.model`) without accelerate's mixed-precision wrapper.

    With train.bf16 on, accelerate replaces a prepared model's `forward` by one run under torch.autocast (an instance
    attribute beside `_original_forward`), so everything the trainer's model computes would be in bfloat16, evals too.
    Measurements (KL, the samples the gates score) stay in model.dtype: the wrapper is taken off for the block and put
    back after it, so training keeps its mixed precision.
    """
    saved: list[tuple[Any, Any]] = []
    for obj in objs:
        for m in (obj, getattr(obj, "model", None)):
            d = getattr(m, "__dict__", {})
            if "_original_forward" in d and "forward" in d and all(m is not x for x, _ in saved):
                saved.append((m, d.pop("forward")))
    try:
        yield
    finally:
        for m, fwd in saved:
            m.forward = fwd


def eval_samples(model: Any, tokenizer: Any, evalset: EvalSet, settings: EvalSettings) -> list[str]:
    """One response per held-out prompt at the eval decoding (no system prompt): the texts the persona metrics score."""
    from personatune.generation.hf import HFBackend

    st = settings
    outs = HFBackend(model, tokenizer, batch_size=st.batch_size).generate(
        evalset.prompts, max_new_tokens=st.max_new_tokens, temperature=st.temperature, top_p=st.top_p, n=1, seed=st.seed
    )
    return [o[0] for o in outs]


def evaluate_policy(
    model: Any, reference: Any, tokenizer: Any, evalset: EvalSet, scorer: Any, settings: EvalSettings
) -> EvalResult:
    """Measure a policy on held-out prompts, no system prompt.

    KL: `measure_drift` (its own samples, temperature 1, exact over the vocabulary, nats/token): drift KL against
    `reference` given the persona `settings.context` (the gate) and persona shift against `reference` alone; with
    context None only the plain KL is measured (persona_shift None). Persona metrics:
    the policy's samples at the given decoding (stages 4-7 use the same, `eval:`), scored by `scorer`.
    The global RNG state is restored afterwards so evals do not change the training run's randomness.

    Returns:
        EvalResult.
    """
    import torch

    from personatune.kl import measure_drift, measure_kl
    from personatune.scoring.aggregate import consistency_rate, on_task_rate, style_variance, trait_adherence

    t0 = time.time()
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    was_training = model.training
    model.eval()
    st = settings
    try:
        # off accelerate's autocast wrapper (train.bf16): the measurement is in model.dtype
        with measured_in_model_dtype(model, reference):
            policy = merged_copy(model)
            shift = None
            if st.context is None:
                kl = measure_kl(
                    policy,
                    reference,
                    tokenizer,
                    evalset.prompts,
                    max_new_tokens=st.kl_max_new_tokens,
                    seed=st.seed,
                    batch_size=st.batch_size,
                )
            else:
                dr = measure_drift(
                    policy,
                    reference,
                    tokenizer,
                    evalset.prompts,
                    st.context,
                    max_new_tokens=st.kl_max_new_tokens,
                    seed=st.seed,
                    batch_size=st.batch_size,
                )
                kl, shift = dr.drift, dr.shift
            texts = eval_samples(policy, tokenizer, evalset, st)
    finally:
        if was_training:
            model.train()
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    recs = scorer.score(
        texts,
        prompts=[list(p) for p in evalset.prompts],
        contexts=evalset.contexts,
        targets=evalset.targets,
        ids=evalset.ids,
    )
    sv = style_variance(recs, min_per_context=st.min_per_context)
    adh = trait_adherence(recs)
    return EvalResult(
        kl,
        consistency_rate(recs),
        adh.overall,
        sv.value,
        texts,
        recs,
        time.time() - t0,
        {k: v.value for k, v in adh.per_trait.items()},
        on_task=on_task_rate(recs),
        style_variance_n=sv.n,
        persona_shift=shift,
    )


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON line and fsync it (a crash loses at most the line being written; readers skip a torn last line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_history(path: Path) -> list[dict[str, Any]]:
    """The eval records of metrics.jsonl (a torn last line is skipped)."""
    rows = []
    if path.exists():
        for line in jsonl_lines(path.read_text(encoding="utf-8")):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows
