"""Read the held-out chosen answers of one context that fail trait adherence, by the stage-4 evaluator and by the
persona-only scorer that selected them (stage 3), side by side — the reading behind a failed stage-4 adherence gate.

Prints, per answer with a failing (response, trait) pair: the prompt's targets, which traits each scorer fails,
the evaluator's (expression, violation) scores of those traits, the user turn and the answer; then the counts.

Run (a run directory whose stages 3-4 are done):
    python benchmarks/read_adherence.py --run runs/quickstart --context technical
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def main() -> int:
    import yaml

    from personatune.config import RunConfig
    from personatune.persona import load_persona
    from personatune.rundir import RunDir, read_jsonl
    from personatune.scoring.aggregate import adherence_pairs
    from personatune.scoring.factory import scorer_for_run

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="run directory with stages 3-4 done")
    ap.add_argument("--context", default="technical")
    a = ap.parse_args()
    rd = Path(a.run)
    cfg = RunConfig(**yaml.safe_load((rd / "config.yaml").read_text(encoding="utf-8")))
    spec = load_persona(rd / "02_persona" / "persona.yaml")
    evaluator, _ = scorer_for_run(cfg, RunDir(rd), spec)
    persona_only, _ = scorer_for_run(cfg, RunDir(rd), spec, use_evaluator=False)
    rows = [r for r in read_jsonl(rd / "03_consistency_data" / "heldout" / "sft.jsonl") if r["context"] == a.context]
    kw = {
        "texts": [r["messages"][-1]["content"] for r in rows],
        "prompts": [r["messages"][:-1] for r in rows],
        "targets": [r["targets"] for r in rows],
        "contexts": [r["context"] for r in rows],
    }
    n_e = n_p = n_pairs = 0
    for r, e, p in zip(rows, evaluator.score(**kw), persona_only.score(**kw)):
        ae, ap_ = adherence_pairs(e), adherence_pairs(p)
        n_pairs += len(ae)
        bad_e = [t for t, ok in ae.items() if not ok]
        bad_p = [t for t, ok in ap_.items() if not ok]
        n_e, n_p = n_e + len(bad_e), n_p + len(bad_p)
        if bad_e or bad_p:
            sc = {
                t: (round(e.traits.get(t, float("nan")), 2), round(e.violations.get(t, 0.0), 2)) for t in bad_e + bad_p
            }
            print(f"--- targets {r['targets']} | evaluator fails {bad_e} | persona-only fails {bad_p} | evaluator {sc}")
            print("    USER:", r["messages"][-2]["content"][:160])
            print("    ANSWER:", r["messages"][-1]["content"][:400].replace("\n", " "))
    print(
        f"{a.context}: {len(rows)} held-out chosen answers, {n_pairs} (response, trait) pairs; not adhering: "
        f"stage-4 evaluator {n_e} (adherence {1 - n_e / max(n_pairs, 1):.3f}), persona-only scorer {n_p} "
        f"({1 - n_p / max(n_pairs, 1):.3f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
