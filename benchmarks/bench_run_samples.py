"""The instrument on the pipeline's own text: rescore a run's stage-7 samples with a persona-only scorer.

Stage 7 writes, for every held-out prompt, the unprompted baseline's answer, the persona-prompted baseline's and
the final model's (`07_final_eval/samples.json`). The unprompted baseline is not the persona by construction, so
the share of its answers judged `consistent` is a floor of false acceptance on this model's text; the hand-written
gold sets (benchmarks/gold/) cannot show this, because nothing in them reads like a 135M model's output. Prints,
per source: consistent rate, how many consistent answers use none of the persona's signature phrases, and the
mean style match. Targets come from the run's stage-3 split files (none: all traits).

Run: python benchmarks/bench_run_samples.py RUN_DIR [--instrument DIR] [--show final]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from personatune.persona import load_persona
from personatune.scoring.instrument import Instrument
from personatune.scoring.scorer import Scorer

SOURCES = ("baseline", "baseline_prompted", "final")


def run_targets(run: Path) -> dict[str, list[str]]:
    """Scenario id -> the trait ids its prompt targets, from the run's stage-3 split files."""
    out: dict[str, list[str]] = {}
    for split in ("train", "heldout"):
        path = run / "03_consistency_data" / split / "sft.jsonl"
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                out[row["scenario_id"]] = row["targets"]
    return out


def score_run_samples(
    run: Path, instrument: Instrument, lexical: bool = True
) -> tuple[Any, list[dict], dict[str, list]]:
    """(persona, samples, source -> score records) of a run's stage-7 samples under a persona-only scorer
    (`lexical`: with the lexical-bank condition, as shipped)."""
    spec = load_persona(run / "02_persona" / "persona.yaml")
    samples = json.loads((run / "07_final_eval" / "samples.json").read_text(encoding="utf-8"))
    targets, scorer = run_targets(run), Scorer(spec, instrument=instrument, lexical=lexical)
    recs = {
        src: scorer.score(
            [s[src] for s in samples],
            prompts=[s["prompt"] for s in samples],
            contexts=[s["context"] for s in samples],
            targets=[targets.get(s["id"], []) for s in samples],
        )
        for src in SOURCES
    }
    return spec, samples, recs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a run directory with 07_final_eval/samples.json")
    ap.add_argument("--instrument", help="instrument weights folder (default: the shipped one)")
    ap.add_argument("--show", choices=SOURCES, help="print every answer of this source judged consistent")
    ap.add_argument(
        "--no-lexical-bank", action="store_true", help="score without the lexical-bank condition (as before 2026-12-01)"
    )
    args = ap.parse_args()
    run = Path(args.run)
    for need in ("02_persona/persona.yaml", "07_final_eval/samples.json"):
        if not (run / need).is_file():
            sys.exit(f"run {run}: no {need}; fix: give a run directory whose stage 7 has finished")
    inst = Instrument(args.instrument) if args.instrument else Instrument.default()
    _, samples, by_source = score_run_samples(run, inst, lexical=not args.no_lexical_bank)
    print(f"{run}: {len(samples)} held-out prompts, instrument {inst.meta.get('weights_sha256', '')[:12]}")
    for src, recs in by_source.items():
        ok = np.array([r.consistent for r in recs])
        sig = np.array([r.style.get("signature_rate", 0.0) > 0 for r in recs])
        print(
            f"  {src:18s} consistent {ok.mean():.3f}; of them without any signature phrase {int((ok & ~sig).sum())}; "
            f"style match {np.mean([r.style_match for r in recs]):.3f}"
        )
        if args.show == src:
            for s, r in zip(samples, recs):
                if r.consistent:
                    print(f"    {r.consistency:.2f} [{s['context']}] {s['prompt'][:50]!r} -> {s[src][:140]!r}")


if __name__ == "__main__":
    main()
