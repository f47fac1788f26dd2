"""Stage 1 — SFT preparation: establish the baseline model and record its baseline scores.

1. Resolve and load the configured base model (the embedded SmolLM2 default is converted once from
   GGUF into a plain, trainable checkpoint in the cache).
2. Optionally fine-tune it with TRL's SFTTrainer (LoRA or full) on a general chat dataset named in
   `sft.dataset`, mixed with the persona's example interactions (`sft.persona_mix`, 0.7 = 70/30
   persona/general). Without a dataset the base model is the baseline.
3. Record the baseline's scores, with no system prompt: the capability suite and held-out perplexity
   (personatune.capability), and the optional lm-evaluation-harness tasks of the `lm_eval` section
   (personatune.lm_harness; skipped with a reason when lm_eval is missing or a task's data is offline).
   Its persona metrics on the held-out prompts are recorded by stage 4, the first stage that has both
   the held-out prompts and the fitted evaluator.

Output: `01_baseline/baseline.json` (model path, scores), `capability.json`, `lm_eval.json` (when tasks are
configured) and, when SFT ran or the model exists only in memory (`tiny`), the model itself in `01_baseline/model/`.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from personatune.config import RunConfig, SFTArgs
from personatune.errors import DataError
from personatune.gates import GateReport, GateSpec, Measurement, check_gates
from personatune.rundir import RunDir, atomic_write_json
from personatune.stage import StageResult

STAGE = "01_baseline"
SANITY_PROMPT = [{"role": "user", "content": "In one sentence, what is the capital of France?"}]


def baseline_model_path(run_dir: RunDir) -> str:
    """Where the baseline model of this run lives (from `01_baseline/baseline.json`, via the manifest)."""
    import json

    info = json.loads(run_dir.output_path(STAGE, "baseline").read_text(encoding="utf-8"))
    p = Path(info["path"])
    return str(p if p.is_absolute() else run_dir.root / p)


def _load_general(args: SFTArgs) -> list[dict]:
    from datasets import load_dataset

    src = args.dataset or ""
    try:
        if Path(src).suffix in (".json", ".jsonl"):
            if not Path(src).is_file():
                raise DataError(
                    f"sft.dataset {src!r}: file not found; fix: give an existing .jsonl with a `messages` column"
                )
            ds = load_dataset("json", data_files=src, split="train")
        else:
            ds = load_dataset(src, split=args.split)
    except DataError:
        raise
    except Exception as e:  # datasets raises many types for unreadable or unreachable data
        raise DataError(
            f"sft.dataset {src!r} could not be loaded ({type(e).__name__}: {str(e)[:160]}); fix: a local .jsonl with a `messages` column, or a reachable hub id"
        ) from None
    if "messages" not in ds.column_names:
        raise DataError(
            f"sft.dataset {src!r} has columns {ds.column_names}, no `messages`; fix: convert it to OpenAI-style messages"
        )
    rows = [{"messages": r["messages"]} for r in ds]
    return rows[: args.max_examples] if args.max_examples else rows


def sft_mix(general: list[dict], persona_rows: list[dict], persona_mix: float, seed: int) -> list[dict]:
    """Mix general rows with persona rows so persona rows make up `persona_mix` of the result.

    Persona rows are repeated (they are few) to reach the share; the result is shuffled with `seed`.
    """
    rows = list(general)
    if persona_mix > 0 and persona_rows:
        want = int(round(persona_mix / (1 - persona_mix) * max(1, len(general))))
        rows += [persona_rows[i % len(persona_rows)] for i in range(max(want, len(persona_rows)))]
    random.Random(seed).shuffle(rows)
    return rows


def _run_sft(config: RunConfig, model, tok, out_dir: Path):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from personatune.persona import load_persona

    args = config.sft
    general = _load_general(args)
    persona_rows = []
    if args.persona_mix > 0:
        spec = load_persona(config.persona)
        persona_rows = [
            {"messages": [{"role": m.role, "content": m.content} for m in ex.messages]} for ex in spec.examples
        ]
    rows = sft_mix(general, persona_rows, args.persona_mix, config.seed)
    peft_config = None
    if args.peft == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=args.lora_r,
            lora_alpha=2 * args.lora_r,
            lora_dropout=0.0,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
    targs = SFTConfig(
        output_dir=str(out_dir / "sft_work"),
        learning_rate=args.learning_rate,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        max_length=args.max_length,
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        seed=config.seed,
        use_cpu=(str(model.device) == "cpu"),
    )
    trainer = SFTTrainer(
        model=model, args=targs, train_dataset=Dataset.from_list(rows), processing_class=tok, peft_config=peft_config
    )
    trainer.train()
    trained = trainer.model
    if args.peft == "lora":
        trained = trained.merge_and_unload()
    return trained, {"sft_rows": len(rows), "sft_general": len(general), "sft_persona_rows": len(rows) - len(general)}


def run(config: RunConfig, run_dir: RunDir) -> StageResult:
    """Load (and optionally fine-tune) the base model; record its scores.

    Raises:
        ModelNotFoundError: the configured model cannot be resolved.
        DataError: the SFT dataset is missing or malformed.
    """
    import torch

    from personatune import lm_harness, models

    out_dir = run_dir.stage_dir(STAGE)
    lm_harness.check_tasks(config.lm_eval)  # an unknown task name fails here, before any model work
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    t0 = time.time()
    model, tok = models.load_configured_model(config.model.name, config.model)
    load_s = time.time() - t0
    # Timings go to the manifest, not baseline.json: its content hash is later stages' input, and a re-run of
    # stage 1 that loads the same model must leave it byte-identical, or stages 3-7 would all re-run.
    baseline: dict = {"model": config.model.name}
    timings = {"load_seconds": round(load_s, 3)}
    outputs: dict[str, Path] = {}
    if config.sft.dataset:
        model, info = _run_sft(config, model, tok, out_dir)
        baseline.update(info)
    if config.sft.dataset or config.model.name == "tiny":
        # A fine-tuned or in-memory model is persisted so later stages load exactly these weights.
        models.save_model(model, tok, out_dir / "model")
        baseline["path"] = f"{STAGE}/model"
        outputs["model"] = out_dir / "model"
    else:
        baseline["path"] = str(models.resolve_loadable_path(config.model.name, cache_dir=config.model.cache_dir))
    model.eval()
    ids = models.encode_chat(tok, SANITY_PROMPT, add_generation_prompt=True)
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([ids], device=model.device),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=model.device),
            max_new_tokens=32,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
    new = out[0, len(ids) :]
    reply = tok.decode(new, skip_special_tokens=True).strip()
    baseline.update(
        sanity_prompt=SANITY_PROMPT[0]["content"],
        sanity_reply=reply,
        sanity_new_tokens=int(new.numel()),
        parameters=int(sum(p.numel() for p in model.parameters())),
        chat_template=bool(getattr(tok, "chat_template", None)),
    )
    if config.sft.capability:
        from personatune.capability import perplexity, score_suite
        from personatune.generation.hf import HFBackend
        from personatune.progress import EtaLine

        t1 = time.time()
        suite = score_suite(
            HFBackend(model, tok, batch_size=16, progress=EtaLine("stage 1: capability suite", unit="items"))
        )
        atomic_write_json(out_dir / "capability.json", suite)
        outputs["capability"] = out_dir / "capability.json"
        baseline["capability"] = {
            "score": suite["score"],
            "n": suite["n"],
            "tasks": {k: v["accuracy"] for k, v in suite["tasks"].items()},
        }
        baseline["perplexity"] = perplexity(model, tok)
        timings["capability_seconds"] = round(time.time() - t1, 2)
    if config.lm_eval.tasks:
        t2 = time.time()
        lm = lm_harness.evaluate(model, tok, config.lm_eval, seed=config.seed)
        atomic_write_json(out_dir / "lm_eval.json", lm)
        outputs["lm_eval"] = out_dir / "lm_eval.json"
        timings["lm_eval_seconds"] = round(time.time() - t2, 2)
        # Not copied into baseline.json: adding a task must not change later stages' input (only stage 7 reads lm_eval.json).
    atomic_write_json(out_dir / "baseline.json", baseline)
    outputs["baseline"] = out_dir / "baseline.json"
    gate = GateReport(
        stage=STAGE,
        results=check_gates(
            [
                GateSpec(
                    "chat_template_present", 1, ">=", "boolean (1 = present)", "the tokenizer carries a chat template"
                ),
                GateSpec(
                    "sanity_reply_tokens", 1, ">=", "tokens", "the model answers a chat message with at least one token"
                ),
            ],
            {
                "chat_template_present": Measurement(float(baseline["chat_template"]), n=1),
                "sanity_reply_tokens": Measurement(float(baseline["sanity_new_tokens"]), n=1),
            },
        ),
        diagnosis=[] if baseline["chat_template"] else ["the tokenizer has no chat template"],
        next_steps=[]
        if baseline["chat_template"]
        else ["use an instruct/chat model, or add a chat_template to its tokenizer_config.json"],
    )
    cap = baseline.get("capability", {}).get("score")
    msg = f"baseline {config.model.name} loaded in {load_s:.1f}s" + (
        f"; capability {cap:.2f}" if cap is not None else ""
    )
    if "lm_eval" in outputs:
        msg += f"; lm-eval {len(lm['tasks'])}/{len(config.lm_eval.tasks)} task(s) scored" + (
            f", skipped: {', '.join(sorted(lm['skipped']))}" if lm["skipped"] else ""
        )
    msg += f"; reply: {reply[:50]!r}"
    return StageResult(outputs=outputs, gate=gate, metrics=timings, message=msg)
