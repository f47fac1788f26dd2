"""What several test files share: example paths, run configs, a scripted teacher, and run directories.

Run directories are written with the stages' own writers (`RunDir`, `StageRecord`, `atomic_write_json`,
`atomic_write_jsonl`, `models.save_model`) and configs come from the real loader (`load_config`), so a test
sees the files a run would leave, not a hand-made imitation of them. Imported as `from tests.helpers import ...`
(pyproject's `pythonpath = ["."]` puts the repository root on the path). Nothing here imports torch or
personatune at import time: unit tests that only need a path stay fast.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # the config, persona and run-dir types, for annotations only
    from personatune.config import RunConfig
    from personatune.persona import PersonaSpec
    from personatune.rundir import RunDir, StageRecord

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
PERSONA = EXAMPLES / "personas" / "captain_nova.yaml"  # the persona every stage test uses
TINY_YAML = EXAMPLES / "tiny.yaml"  # the shipped tiny-model run config (the smoke test's)

# Gates of stages 4-7 a random tiny model can meet, and small budgets: for tests about the pipeline's machinery
# (every stage runs and hands its outputs on), never about quality.
LOOSE_GATES = {
    "gates.evaluation.min_auroc": 0,
    "gates.evaluation.adherence": 0,
    "gates.evaluation.max_style_variance": 100,
    "gates.optimization.max_kl": 10,
    "gates.optimization.consistency": 0,
    "gates.optimization.adherence": 0,
    "gates.optimization.max_style_variance": 100,
    "gates.final.min_improvement": -1.01,
    "gates.final.min_retention": 0,
    "train.max_steps": 2,
    "train.eval_every": 1,
    "train.kl_eval_prompts": 4,
    "train.kl_max_new_tokens": 8,
    "iterations.rounds": 1,
    "iterations.samples_per_prompt": 2,
    "iterations.max_prompts": 6,
    "iterations.max_steps": 1,
    "iterations.min_margin": 0,
    "data.max_prompts": 36,
    "gates.data.min_prompts_per_trait": 5,
    "gates.optimization.min_on_task_retention": 0,
    "gates.final.min_on_task_retention": 0,
}


# --- configs ---------------------------------------------------------------------------------------------
def persona_config(*overrides: str) -> RunConfig:
    """The default run config for captain_nova plus `key=value` overrides (no run directory is made)."""
    from personatune.config import load_config

    return load_config(None, [f"persona={PERSONA}", *overrides])


def tiny_config(tmp_path: Path, *overrides: str, name: str = "run") -> RunConfig:
    """captain_nova on the in-process tiny model, run directory `tmp_path/name`, 2 threads, plus overrides."""
    return persona_config(f"run_dir={tmp_path}", f"name={name}", "model.name=tiny", "threads=2", *overrides)


def teacher_config(tmp_path: Path, base_url: str, **over: Any) -> RunConfig:
    """examples/tiny.yaml with the teacher behind an OpenAI-compatible server at `base_url`; run directory `tmp_path/t`.

    A few dozen prompts cannot meet METRICS.md's minimum sample sizes (137 responses for a rate at 0.85, 30 per
    AUROC side): these plumbing configs lower them so their gates decide; the minimums themselves are tested in
    tests/unit/test_evidence.py. `over` maps dotted keys to values (`**{"data.max_prompts": 12}`).
    """
    from personatune.config import load_config

    args = [
        f"run_dir={tmp_path}",
        "name=t",
        "data.teacher.backend=openai",
        f"data.teacher.base_url={base_url}",
        "data.teacher.model=fake-model",
        "data.max_prompts=60",
        "data.best_of=2",
        "data.teacher.max_new_tokens=16",
        "sft.capability=false",
        "gates.data.min_prompts_per_trait=10",
        "gates.data.min_pairs_per_violated_trait=3",
        "eval.min_per_context=2",
        "gates.persona.min_separability=0",
        "gates.rate_half_width=1",
        "gates.evaluation.min_auroc_per_side=1",
        "gates.evaluation.min_style_variance_n=1",
    ]
    return load_config(TINY_YAML, args + [f"{k}={v}" for k, v in over.items()])


def run_config_file(tmp_path: Path, text: str = "") -> Path:
    """A tiny-model run config file `tmp_path/run.yaml` (run_dir `tmp_path/runs`, name `r`) plus extra YAML lines."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"name: r\nrun_dir: {tmp_path / 'runs'}\npersona: {PERSONA}\nmodel:\n  name: tiny\n{text}", encoding="utf-8"
    )
    return cfg


# --- a scripted teacher ------------------------------------------------------------------------------------
def scripted_teacher(spec: PersonaSpec, good: bool = True) -> Callable[[dict], str]:
    """A `FakeOpenAIServer.responder` that answers like the persona: its positive exemplars and signature phrase
    when the system prompt is the persona's, the question and the flipped trait's negatives when a trait is
    inverted, the wrong voice when the style is broken, and numbered user messages for prompt-bank expansion. With
    `good=False` it never stays in persona (stage 3 must fail with a diagnosis)."""
    rng = random.Random(0)

    def respond(body: dict) -> str:
        system = next((m["content"] for m in body["messages"] if m["role"] == "system"), "")
        if system.startswith("You write realistic messages"):  # prompt-bank expansion: numbered lines, one junk line
            ask = body["messages"][-1]["content"]
            return (
                "\n".join(
                    f"{i}. Could you tell me something new about {ask.split(':')[-1][:40].strip()} number {i} please?"
                    for i in range(1, 4)
                )
                + "\nok"
            )
        if not good:
            return "I feel gloomy and I do not care. Whatever."
        ask = next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "")
        for t in spec.traits:
            if (t.inverse and t.inverse in system) or f"NOT like this: {t.description}" in system:
                # A flip answers the request and contradicts the trait (stage 4 counts only on-task flips).
                return f"You ask: {ask} " + " ".join(rng.sample(t.negative, 2))
        if "Your register is formal" in system or "Use emoji often" in system:
            return "Kindly note that the requested information is provided herein. " * 12
        # In persona and on task: the user's question taken up, then a few positive exemplars of several traits,
        # in the persona's voice (an answer that ignored the question would be off task and never chosen).
        picks = [rng.choice(t.positive) for t in spec.traits]
        return f"Aye, crew! You ask: {ask} " + " ".join(picks)

    return respond


# --- run directories ---------------------------------------------------------------------------------------
def write_baseline(rd: RunDir, model: Any, tokenizer: Any, **fields: Any) -> Path:
    """Stage 1's files: the model saved to `01_baseline/model` and `baseline.json` ({"model": "tiny", "path":
    "01_baseline/model", **fields}). Returns baseline.json; the stage record is left to `mark_done`.

    >>> model, tok = models.build_tiny_model(seed=0)                      # doctest: +SKIP
    >>> write_baseline(rd, model, tok, perplexity=perplexity(model, tok))  # doctest: +SKIP
    """
    from personatune import models
    from personatune.rundir import atomic_write_json

    models.save_model(model, tokenizer, rd.stage_dir("01_baseline") / "model")
    path = rd.root / "01_baseline" / "baseline.json"
    atomic_write_json(path, {"model": "tiny", "path": "01_baseline/model", **fields})
    return path


def write_persona(rd: RunDir, persona: Path = PERSONA) -> Path:
    """Stage 2's output: the persona file copied to `02_persona/persona.yaml`."""
    dest = rd.stage_dir("02_persona") / "persona.yaml"
    shutil.copy(persona, dest)
    return dest


def heldout_rows(questions: list[str], contexts: tuple[str, ...] = ("casual", "technical")) -> list[dict[str, Any]]:
    """Held-out prompt rows as stage 3 writes them: ids h0, h1, ..., contexts taken in turn, no target traits."""
    return [
        {
            "id": f"h{i}",
            "context": contexts[i % len(contexts)],
            "messages": [{"role": "user", "content": q}],
            "targets": [],
            "split": "heldout",
        }
        for i, q in enumerate(questions)
    ]


def write_heldout(rd: RunDir, rows: list[dict[str, Any]]) -> Path:
    """`03_consistency_data/heldout/prompts.jsonl`; returns the folder (stage 3's `heldout` output)."""
    from personatune.rundir import atomic_write_jsonl

    folder = rd.stage_dir("03_consistency_data") / "heldout"
    atomic_write_jsonl(folder / "prompts.jsonl", rows)
    return folder


def write_pairs(rd: RunDir, pairs: list[dict[str, Any]]) -> Path:
    """`03_consistency_data/train/pairs.jsonl` (TRL's conversational preference rows); returns the folder (`train`)."""
    from personatune.rundir import atomic_write_jsonl

    folder = rd.stage_dir("03_consistency_data") / "train"
    atomic_write_jsonl(folder / "pairs.jsonl", pairs)
    return folder


def mark_done(rd: RunDir, stage: str, outputs: dict[str, str | Path], **fields: Any) -> StageRecord:
    """Record `stage` done in the manifest with the content hashes of `outputs` (paths relative to the run directory
    or absolute); `fields` sets other StageRecord fields (config_hash, inputs, gate, ...)."""
    from personatune.rundir import StageRecord

    rec = StageRecord(status="done", outputs=rd.hash_outputs(outputs), **fields)
    rd.set_record(stage, rec)
    return rec


def tiny_run_through_stage3(
    root: Path,
    pairs: list[dict[str, Any]],
    heldout: list[dict[str, Any]],
    seed: int = 0,
    sft: list[dict[str, Any]] | None = None,
) -> RunDir:
    """A run directory with stages 1-3 recorded done: the tiny model as baseline, captain_nova, `pairs` as the
    training data and `heldout` as the held-out prompts (what stages 5 and 6 read); `sft`: the chosen answers
    (`train/sft.jsonl`, rows with `messages`) that train.algorithm=sft|gkd reads."""
    from personatune import models
    from personatune.rundir import RunDir, atomic_write_jsonl

    rd = RunDir(root)
    write_baseline(rd, *models.build_tiny_model(seed=seed))
    write_persona(rd)
    train, held = write_pairs(rd, pairs), write_heldout(rd, heldout)
    if sft is not None:
        atomic_write_jsonl(train / "sft.jsonl", sft)
    mark_done(rd, "01_baseline", {"baseline": "01_baseline/baseline.json"})
    mark_done(rd, "02_persona", {"persona": "02_persona/persona.yaml"})
    mark_done(rd, "03_consistency_data", {"train": train, "heldout": held})
    return rd
