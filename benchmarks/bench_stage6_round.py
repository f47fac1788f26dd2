"""Time stage 6 (iterative rounds) on an existing run directory, with config overrides.

The pipeline only reaches stage 6 when stage 5's gate passes; to time a round on a model that cannot pass
it (e.g. SmolLM2 on the quickstart), this calls `s6_iterations.run` directly on a run directory whose
stages 1-5 are done, with the overrides given (for example a consistency gate the stage-5 model misses, so
that round 0 does not "pass with margin" and a round is trained). It rewrites `<run>/06_iterations/`.
Prints the stage's own per-round log lines, the total time and the gate.

Run: python benchmarks/bench_stage6_round.py examples/quickstart.yaml name=qs_dev gates.optimization.consistency=0.5 \
         gates.optimization.adherence=0 gates.optimization.max_style_variance=100
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from personatune.config import load_config
from personatune.rundir import RunDir
from personatune.stages import s6_iterations


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0 if len(sys.argv) > 1 else 2)
    cfg = load_config(sys.argv[1], sys.argv[2:])
    rd = RunDir(Path(cfg.run_dir) / cfg.name)
    t0 = time.perf_counter()
    res = s6_iterations.run(cfg, rd)
    print(f"stage 6: {time.perf_counter() - t0:.1f} s — {res.message}")
    print(res.gate.summary())


if __name__ == "__main__":
    main()
