"""Style variance of stage 3's chosen responses under each `data.select` rule, from one run's stored candidates.

Reads a finished stage-3 run directory (its scenarios and the teacher candidates cached in
`03_consistency_data/generations.jsonl`; nothing is generated), re-scores every candidate with the
persona-only scorer as stage 3 does, and applies both selection rules to the same candidates:

- max_consistency: the consistent candidate with the highest consistency score;
- typical_voice: the consistent candidate nearest the typical voice of the training split.

Prints, per rule, the style variance (METRICS.md, min_per_context as in the run's config) of the
chosen responses of all kept prompts and of the held-out ones only, the features that vary most, and
the mean consistency of the chosen responses (what the voice rule gives up).

Run: python benchmarks/bench_chosen_selection.py runs/quickstart
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from personatune.config import RunConfig
from personatune.persona import load_persona
from personatune.persona_prompt import persona_conversation
from personatune.rundir import read_jsonl
from personatune.scenarios import Scenario
from personatune.scoring.aggregate import style_variance
from personatune.scoring.scorer import Scorer
from personatune.stages.s3_consistency_data import choose_candidate, generate_resumable, score_candidates, typical_voice


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", help="a run directory whose stage 3 has generated its candidates")
    args = ap.parse_args()
    rd = Path(args.run_dir)
    cfg = RunConfig(**yaml.safe_load((rd / "config.yaml").read_text(encoding="utf-8")))
    spec = load_persona(rd / "02_persona" / "persona.yaml")
    d, t = cfg.data, cfg.data.teacher
    p = {"max_new_tokens": t.max_new_tokens, "temperature": t.temperature, "top_p": t.top_p, "seed": cfg.seed}
    scenarios = [Scenario(**r) for r in read_jsonl(rd / "03_consistency_data" / "scenarios.jsonl")]
    jobs = [
        (
            persona_conversation(spec, s.messages, few_shot=d.few_shot, focus=s.targets if d.focus_targets else None),
            {**p, "n": d.best_of},
        )
        for s in scenarios
    ]

    def no_generation(*_a, **_k):
        raise SystemExit(
            f"{rd}: some candidates are not in generations.jsonl (stage 3 unfinished, or run with another prompt version)"
        )

    class _Missing:
        generate = no_generation

    cands = generate_resumable(
        _Missing(), jobs, rd / "03_consistency_data" / "generations.jsonl", chunk=8, echo=lambda m: None
    )
    scores = score_candidates(scenarios, cands, Scorer(spec))
    voice = typical_voice(scenarios, scores)
    mpc = cfg.eval.min_per_context
    print(f"{rd}: {len(scenarios)} prompts, best of {d.best_of}; style variance with min_per_context {mpc}")
    print(f"{'rule':16s} {'split':8s} {'n':>4s} {'style var':>9s} {'mean cons':>9s}  top features")
    for name in ("max_consistency", "typical_voice"):
        for split in ("all", "heldout"):
            chosen = []
            for s, rs in zip(scenarios, scores):
                good = [r for r in rs if r.consistent]
                if good and split in ("all", s.split):
                    r = choose_candidate(good, name, voice)
                    r.context = s.context
                    chosen.append(r)
            sv = style_variance(chosen, min_per_context=mpc, n_resamples=0)
            top = ", ".join(
                f"{f} {v:.2f}" for f, v in sorted((sv.per_feature or {}).items(), key=lambda kv: -kv[1])[:3]
            )
            val = f"{sv.value:.3f}" if sv.value is not None else "n/a"
            mc = sum(r.consistency for r in chosen) / max(len(chosen), 1)
            print(f"{name:16s} {split:8s} {len(chosen):4d} {val:>9s} {mc:9.3f}  {top}  groups {sv.groups_used}")


if __name__ == "__main__":
    main()
