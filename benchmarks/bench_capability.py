"""Capability retention of the stage-5 model of one or more run directories, measured back to back.

For each RUN_DIR: the stage-1 capability suite (personatune.capability, the same items, decoding and template as
stage 1 and stage 7) on RUN_DIR/05_optimization/model, against RUN_DIR/01_baseline/capability.json — the retention
that stage 7 gates, for stage 5's model (stage 7 measures the model stage 6 keeps, which is stage 5's when round 0
is kept). Use it to compare two stage-5 settings on copies of the same run directory.

With --prompted: also the stage-1 baseline *given the persona context* (the drift-KL reference: persona system prompt
and, with data.few_shot, the example turns, before each suite question) — what the persona itself costs on the suite,
the capability counterpart of persona shift. Retention is measured against the unprompted baseline either way.

Run: python benchmarks/bench_capability.py [--prompted] RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_recipes import capability_retention, task_counts  # noqa: E402

from personatune.config import load_config  # noqa: E402


class WithContext:
    """A GenerationBackend that puts `context` (the persona context c) before every conversation."""

    def __init__(self, backend, context):
        self.backend, self.context = backend, context

    def generate(self, conversations, **kw):
        return self.backend.generate([list(self.context) + list(c) for c in conversations], **kw)


def prompted_baseline(run: Path, config) -> dict:
    """The capability suite on the stage-1 baseline with the persona context c, against the unprompted baseline."""
    import json

    from personatune import models
    from personatune.capability import retention, score_suite
    from personatune.generation.hf import HFBackend
    from personatune.persona import load_persona
    from personatune.persona_prompt import persona_context
    from personatune.rundir import RunDir
    from personatune.stages.s1_baseline import baseline_model_path

    rd = RunDir(run)
    spec = load_persona(rd.output_path("02_persona", "persona"))
    model, tok = models.load_configured_model(baseline_model_path(rd), config.model)
    ctx = persona_context(spec, few_shot=config.data.few_shot)
    suite = score_suite(WithContext(HFBackend(model, tok, batch_size=8), ctx))
    base = json.loads((run / "01_baseline" / "capability.json").read_text())
    return {
        "score": suite["score"],
        "baseline_score": base["score"],
        "retention": retention(suite, base)["retention"],
        "tasks": task_counts(suite),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run directories with stages 1 and 5 done")
    ap.add_argument(
        "--prompted",
        action="store_true",
        help="also score the first RUN_DIR's stage-1 baseline given the persona context",
    )
    args = ap.parse_args()
    if args.prompted:
        run = Path(args.runs[0])
        r = prompted_baseline(run, load_config(str(run / "config.yaml"), []))
        print(
            f"{run} baseline + persona context | {r['score']:.3f} / {r['baseline_score']:.3f} | {r['retention']:.3f} | "
            f"per task {r['tasks']}"
        )
    print("run | suite score final / baseline | retention | every task within its interval")
    for d in args.runs:
        run = Path(d)
        r = capability_retention(run, load_config(str(run / "config.yaml"), []))
        print(f"{d} | {r['final_score']:.3f} / {r['baseline_score']:.3f} | {r['retention']:.3f} | {r['all_tasks_ok']}")
        print(f"    per task {r['tasks']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
