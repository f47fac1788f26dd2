"""Stage 1 — SFT preparation: establish the baseline model.

Now: resolve and load the configured base model (for the embedded SmolLM2 default this converts
the GGUF once into a plain, trainable checkpoint in the cache), check that its chat template
renders and that it answers a chat message, and record where the baseline lives in
`01_baseline/baseline.json` for later stages.

Not yet (issue #5): optional SFT on a general chat dataset, and the baseline's persona metrics,
capability suite and held-out perplexity.
"""

from __future__ import annotations

import time

from personatune.config import RunConfig
from personatune.gates import GateReport, GateSpec, Measurement, check_gates
from personatune.rundir import RunDir, atomic_write_json
from personatune.stage import StageResult

SANITY_PROMPT = [{"role": "user", "content": "In one sentence, what is the capital of France?"}]


def run(config: RunConfig, run_dir: RunDir) -> StageResult:
    """Load the base model, smoke-test a chat turn, and record the baseline.

    Raises:
        ModelNotFoundError: the configured model cannot be resolved.
    """
    import torch

    from personatune import models

    out_dir = run_dir.stage_dir("01_baseline")
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    t0 = time.time()
    model, tok = models.load_model_and_tokenizer(
        config.model.name,
        dtype=config.model.dtype,
        device=config.model.device,
        trust_remote_code=config.model.trust_remote_code,
        cache_dir=config.model.cache_dir,
    )
    load_s = time.time() - t0
    baseline: dict = {"model": config.model.name, "load_seconds": round(load_s, 3)}
    if config.model.name == "tiny":
        # The tiny model exists only in memory: persist it so later stages load the same weights.
        models.save_model(model, tok, out_dir / "model")
        baseline["path"] = "01_baseline/model"
    else:
        baseline["path"] = str(models.resolve_loadable_path(config.model.name, cache_dir=config.model.cache_dir))
    ids = models.encode_chat(tok, SANITY_PROMPT, add_generation_prompt=True)
    t1 = time.time()
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([ids], device=model.device),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=model.device),
            max_new_tokens=32,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
    new = out[0, len(ids):]
    reply = tok.decode(new, skip_special_tokens=True).strip()
    baseline.update(
        sanity_prompt=SANITY_PROMPT[0]["content"],
        sanity_reply=reply,
        sanity_new_tokens=int(new.numel()),
        sanity_seconds=round(time.time() - t1, 3),
        parameters=int(sum(p.numel() for p in model.parameters())),
        chat_template=bool(getattr(tok, "chat_template", None)),
    )
    atomic_write_json(out_dir / "baseline.json", baseline)
    gate = GateReport(
        stage="01_baseline",
        results=check_gates(
            [
                GateSpec("chat_template_present", 1, ">=", "boolean (1 = present)", "the tokenizer carries a chat template"),
                GateSpec("sanity_reply_tokens", 1, ">=", "tokens", "the model answers a chat message with at least one token"),
            ],
            {
                "chat_template_present": Measurement(float(baseline["chat_template"]), n=1),
                "sanity_reply_tokens": Measurement(float(baseline["sanity_new_tokens"]), n=1),
            },
        ),
        diagnosis=[] if baseline["chat_template"] else ["the tokenizer has no chat template"],
        next_steps=[] if baseline["chat_template"] else ["use an instruct/chat model, or add a chat_template to its tokenizer_config.json"],
    )
    return StageResult(
        outputs={"baseline": out_dir / "baseline.json"} | ({"model": out_dir / "model"} if config.model.name == "tiny" else {}),
        gate=gate,
        metrics={"load_seconds": baseline["load_seconds"]},
        message=f"baseline {config.model.name} loaded in {load_s:.1f}s; reply: {reply[:60]!r}",
    )
