"""Capability retention of the stage-5 model of one or more run directories, measured back to back.

For each RUN_DIR: the stage-1 capability suite (personatune.capability, the same items, decoding and template as
stage 1 and stage 7) on RUN_DIR/05_optimization/model, against RUN_DIR/01_baseline/capability.json — the retention
that stage 7 gates, for stage 5's model (stage 7 measures the model stage 6 keeps, which is stage 5's when round 0
is kept). Use it to compare two stage-5 settings on copies of the same run directory.

Run: python benchmarks/bench_capability.py RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_recipes import capability_retention  # noqa: E402

from personatune.config import load_config  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run directories with stages 1 and 5 done")
    args = ap.parse_args()
    print("run | suite score final / baseline | retention | every task within its interval")
    for d in args.runs:
        run = Path(d)
        r = capability_retention(run, load_config(str(run / "config.yaml"), []))
        print(f"{d} | {r['final_score']:.3f} / {r['baseline_score']:.3f} | {r['retention']:.3f} | {r['all_tasks_ok']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
