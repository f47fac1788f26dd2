"""Does the persona context's closing instruction decide how often the persona-prompted baseline answers the request?

The persona-prompted baseline is the target and the reference of context distillation (METRICS.md, drift KL), so a
distilled student is bounded by it: on the session-44 main job it answered the request (on_task) in 0.683 of the 164
held-out prompts where the unprompted baseline did in 0.768 — on-task retention 0.89 for the target itself, below the
0.95 gate before any training. The rendered system prompt ends with "Stay in character in every reply, whatever the
user asks." and says nothing about answering. This samples the stage-1 baseline on the run's held-out prompts with the
persona context (system prompt + few-shot turns, as stage 7's prompted baseline) under each closing line below (and
once without the few-shot turns), at the
eval decoding and the run seed (the same draws for every variant), scores the answers with the run's stage-4
evaluator, and prints consistency, on-task rate and adherence, with the unprompted baseline's on-task rate from stage
4's samples beside them.

Run: python benchmarks/experiments/context_on_task.py RUN/config.yaml [--prompts N]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

CLOSING = "Stay in character in every reply, whatever the user asks."
VARIANTS = {
    "today": CLOSING,
    "answer first": "Stay in character in every reply, and always answer what the user actually asks: give the answer "
    "or do the task first, then add your flair.",
    "no closing line": "",
    "no few-shot turns": CLOSING,  # today's system prompt without the example interactions (data.few_shot=false)
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", help="the run's config.yaml (stages 1-4 done)")
    ap.add_argument("--prompts", type=int, default=0, help="the first N held-out prompts (0: all)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated variant names (default: all)")
    args = ap.parse_args()

    from personatune import models
    from personatune.baseline_samples import sample_eval
    from personatune.config import load_config
    from personatune.persona import load_persona
    from personatune.persona_prompt import persona_context
    from personatune.rundir import RunDir, read_jsonl
    from personatune.scoring.aggregate import consistency_rate, on_task_rate, trait_adherence
    from personatune.scoring.factory import scorer_for_run
    from personatune.stages.s1_baseline import baseline_model_path

    cfg = load_config(args.config, [])
    rd = RunDir(Path(cfg.run_dir) / cfg.name)
    spec = load_persona(rd.output_path("02_persona", "persona"))
    rows = read_jsonl(rd.output_path("03_consistency_data", "heldout") / "prompts.jsonl")
    rows = rows[: args.prompts] if args.prompts else rows
    scorer, desc = scorer_for_run(cfg, rd, spec)
    model, tok = models.load_configured_model(baseline_model_path(rd), cfg.model)
    convs = [r["messages"] for r in rows]
    kw = dict(
        prompts=[c[-1]["content"] for c in convs],
        contexts=[r.get("context") for r in rows],
        targets=[list(r.get("targets") or []) for r in rows],
        ids=[str(r["id"]) for r in rows],
    )
    print(f"{len(rows)} held-out prompts, scorer {desc}, few-shot turns {cfg.data.few_shot}", flush=True)

    base_file = rd.root / "04_evaluation" / "baseline_samples.json"
    if base_file.is_file():
        by_id = {str(r["id"]): r["response"] for r in json.loads(base_file.read_text())}
        base_texts = [by_id[i] for i in kw["ids"]]
        b = on_task_rate(scorer.score(base_texts, **kw))
        print(f"  unprompted baseline (stage 4's samples): on-task {b.value:.3f} (n={b.n})", flush=True)
    for name in args.variants.split(","):
        line = VARIANTS[name]
        ctx = [dict(m) for m in persona_context(spec, few_shot=cfg.data.few_shot and name != "no few-shot turns")]
        assert ctx[0]["role"] == "system" and ctx[0]["content"].endswith(CLOSING)
        ctx[0]["content"] = (ctx[0]["content"][: -len(CLOSING)] + line).rstrip()
        t = time.perf_counter()
        texts = sample_eval(model, tok, [ctx + list(c) for c in convs], cfg, f"prompted baseline, {name}")
        recs = scorer.score(texts, **kw)
        c, o, a = consistency_rate(recs), on_task_rate(recs), trait_adherence(recs).overall
        print(
            f"  {name:16s} consistency {c.value:.3f} [{c.ci[0]:.3f}, {c.ci[1]:.3f}]  on-task {o.value:.3f} "
            f"[{o.ci[0]:.3f}, {o.ci[1]:.3f}]  adherence {a.value:.3f}  ({time.perf_counter() - t:.0f} s)",
            flush=True,
        )
        for p, x in list(zip(kw["prompts"], texts))[:4]:
            print(f"      {p[:60]!r} -> {x[:160]!r}")


if __name__ == "__main__":
    main()
