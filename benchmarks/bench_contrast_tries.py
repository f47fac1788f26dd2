"""Contrast yield per try (stage 3's `data.contrast_best_of`), read back from a run directory — nothing is generated.

Stage 3 samples a contrast (rejected) response again when the scorer finds it consistent, up to
`data.contrast_best_of` tries, and keeps the first inconsistent one. Every try is in the run's generation record
(`03_consistency_data/generations.jsonl`, keyed by conversation and sampling parameters, seed + try). This script
rebuilds the contrast jobs of the kept prompts exactly as stage 3 does, looks every try up in the record, scores
it with the stage-3 scorer (the persona-only profile) and prints, per kind and per try budget k = 1..N, the share
of jobs with an inconsistent response within k tries — the quantity of the gate `rejected_inconsistency_rate` for
`contrast_best_of = k` — with its Wilson 95 % interval, plus per flipped trait.

Run: python benchmarks/bench_contrast_tries.py RUN_DIR [--tries N] [--dump OUT.jsonl]
     (RUN_DIR: a pipeline run directory whose stage 3 ran, e.g. runs/quickstart)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from personatune.config import load_config
from personatune.generation.resumable import _job_key, _load_generations
from personatune.persona import load_persona
from personatune.rundir import RunDir
from personatune.scenarios import Scenario
from personatune.scoring.aggregate import wilson_ci
from personatune.scoring.factory import scorer_for_run
from personatune.stages.s3_consistency_data import contrast_jobs, contrast_try


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", help="a run directory whose stage 3 ran (it holds config.yaml)")
    ap.add_argument("--tries", type=int, default=None, help="tries to read (default: the run's data.contrast_best_of)")
    ap.add_argument("--dump", help="write every try with its kind, score and text to this JSONL file")
    args = ap.parse_args()
    root = Path(args.run_dir)
    config = load_config(root / "config.yaml", [f"run_dir={root.parent}", f"name={root.name}"])
    rd = RunDir(root)
    spec = load_persona(rd.output_path("02_persona", "persona"))
    s3 = root / "03_consistency_data"
    scenarios = [Scenario(**json.loads(ln)) for ln in (s3 / "scenarios.jsonl").read_text().splitlines() if ln.strip()]
    kept = {
        json.loads(ln)["scenario_id"]
        for split in ("train", "heldout")
        for ln in (s3 / split / "sft.jsonl").read_text().splitlines()
        if ln.strip()
    }
    by_id = {s.id: s for s in scenarios}
    jobs, meta = contrast_jobs(spec, [s for s in scenarios if s.id in kept], config)
    record = _load_generations(s3 / "generations.jsonl")
    n_tries = args.tries or config.data.contrast_best_of
    scorer, how = scorer_for_run(config, rd, spec, use_evaluator=False)
    # first[i]: the first try (1-based) whose response is inconsistent; None when none of the recorded tries is.
    first: list[int | None] = [None] * len(jobs)
    sampled = [0] * len(jobs)
    dump = []
    for a in range(n_tries):
        idx = [i for i in range(len(jobs)) if first[i] is None]
        texts = {}
        for i in idx:
            key = _job_key(*contrast_try(jobs[i], a))
            if key in record:
                texts[i] = record[key][0]
        idx = [i for i in idx if i in texts]
        if not idx:
            break
        scores = scorer.score(
            [texts[i] for i in idx],
            prompts=[by_id[meta[i][0]].prompt for i in idx],
            contexts=[by_id[meta[i][0]].context for i in idx],
            targets=[by_id[meta[i][0]].targets for i in idx],
        )
        for i, r in zip(idx, scores):
            sampled[i] += 1
            if not r.consistent:
                first[i] = a + 1
            dump.append(
                {"job": i, "try": a + 1, "kind": meta[i][1], "flipped": meta[i][2], "consistency": r.consistency}
                | {"consistent": r.consistent, "prompt": by_id[meta[i][0]].prompt, "text": texts[i]}
            )
    missing = sum(s == 0 for s in sampled)
    print(
        f"{root}: {len(kept)} kept prompts, {len(jobs)} contrast jobs, {sum(sampled)} responses read "
        f"({missing} jobs without a recorded first try); scorer: {how}"
    )
    kinds = sorted({m[1] for m in meta})
    print(f"{'kind':15s} " + " ".join(f"{'within ' + str(k) + ' tries':>26s}" for k in range(1, n_tries + 1)))
    for kind in [*kinds, "all"]:
        idx = [i for i, m in enumerate(meta) if kind in ("all", m[1])]
        cells = []
        for k in range(1, n_tries + 1):
            hit = sum(first[i] is not None and first[i] <= k for i in idx)
            lo, hi = wilson_ci(hit, len(idx))
            cells.append(f"{hit:>4d}/{len(idx):<4d} {hit / len(idx):.3f} ({lo:.3f}-{hi:.3f})")
        print(f"{kind:15s} " + " ".join(f"{c:>26s}" for c in cells))
    print(f"responses sampled per job: {sum(sampled) / max(len(jobs), 1):.2f} (up to {n_tries})")
    flips = sorted({m[2] for m in meta if m[2]})
    print(
        "trait-flipped, inconsistent within 1 / "
        + str(n_tries)
        + " tries: "
        + ", ".join(
            f"{t} {sum(first[i] == 1 for i, m in enumerate(meta) if m[2] == t)}"
            f"/{sum(first[i] is not None for i, m in enumerate(meta) if m[2] == t)}"
            f"/{sum(m[2] == t for m in meta)}"
            for t in flips
        )
    )
    if args.dump:
        Path(args.dump).write_text("".join(json.dumps(d) + "\n" for d in dump), encoding="utf-8")


if __name__ == "__main__":
    main()
