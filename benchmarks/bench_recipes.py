"""Compare the stage-5 recipes on the same data for the same wall-clock training budget (issue 15).

Each recipe trains SmolLM2 (or the run's model) from the stage-1 baseline on the same stage-3 data, evaluated on
the same held-out prompts with the same decoding, for `--budget` seconds of training (evals excluded: the
eval callback evaluates every `--eval-seconds` of training and once at the end). Printed per eval step:
drift KL (against the persona-prompted baseline, the gate), persona shift (against the unprompted baseline),
consistency and on-task rate of the policy's own samples, no system prompt. Per recipe, the kept checkpoint
(stage 5's selection within the drift budget) is measured again on every held-out prompt, with its capability
retention (the stage-1 capability suite: final / baseline) — capability is measured for the kept checkpoint only,
not per step (one suite pass costs ~2-3 minutes on 2 cores).

Recipes (train.algorithm): dpo (stage-3 pairs, reference log-probs from the persona-prompted baseline), sft
(rejection-sampling fine-tuning on the consistent, on-task chosen answers), sft-reference (the same on samples of the
persona-prompted baseline itself, train.sft_source=reference: sampling them is not counted in the budget but is in
"total s"), gkd-reference / gkd (TRL GKD on the same samples / on the chosen answers, the persona-prompted baseline's
whole next-token distribution as target: training/distill.py), sdft (TRL SDFT, on-policy reverse-KL
distillation from the persona-prompted baseline), grpo / rloo (online, reward = consistency x on_task, TRL's own
KL term against the unprompted baseline, the drift budget held by our controller).

Usage (a run directory whose stages 1-4 are done, gates passed or not, e.g. after
`personatune run examples/quickstart.yaml --until 4 --keep-going`):

    python benchmarks/bench_recipes.py --run runs/quickstart --budget 300 --recipes dpo,sft,sdft,grpo \
        [--config examples/quickstart.yaml] [--out /tmp/recipes] [key=value ...]

Every recipe gets its own run directory under --out (stages 1-4 copied). Results: --out/results.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def prepare(base: Path, out: Path) -> Path:
    """A run directory for one recipe: stages 1-4 copied from `base` (the run directory refuses links that leave it;
    the baseline model itself stays where baseline.json points), the manifest copied, stage 5 empty."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for d in sorted(base.iterdir()):
        if d.is_dir() and d.name[:2] in ("01", "02", "03", "04"):
            shutil.copytree(d, out / d.name)
    for f in ("manifest.json", "config.yaml"):
        if (base / f).exists():
            shutil.copy(base / f, out / f)
    return out


def task_counts(suite: dict) -> dict[str, str]:
    """'correct/n' per task of a `capability.score_suite` result."""
    return {t: f"{v['correct']}/{v['n']}" for t, v in suite["tasks"].items()}


def capability_retention(run_dir: Path, config) -> dict:
    from personatune import models
    from personatune.capability import retention, score_suite
    from personatune.generation.hf import HFBackend

    model, tok = models.load_configured_model(str(run_dir / "05_optimization" / "model"), config.model)
    suite = score_suite(HFBackend(model, tok, batch_size=8))
    base = json.loads((run_dir / "01_baseline" / "capability.json").read_text())
    r = retention(suite, base)
    return {
        "retention": r["retention"],
        "final_score": suite["score"],
        "baseline_score": base["score"],
        "all_tasks_ok": r["all_tasks_ok"],
        "tasks": task_counts(suite),
    }


def run_recipe(
    name: str,
    base: Path,
    out_root: Path,
    config_path: str,
    overrides: list[str],
    budget: float,
    eval_seconds: float,
    eval_at_start: bool = True,
) -> dict:
    from personatune.config import load_config
    from personatune.rundir import RunDir, read_jsonl
    from personatune.stages import s5_optimization

    rd_path = prepare(base, out_root / name / base.name)
    algorithm, _, source = name.partition("-")  # "sft-reference": train.algorithm=sft, train.sft_source=reference
    over = overrides + [
        f"train.algorithm={algorithm}",
        f"train.max_train_seconds={budget}",
        f"train.eval_every_seconds={eval_seconds}",
        "train.eval_every=0",
        "train.epochs=100",
        f"run_dir={out_root / name}",
        f"name={base.name}",
        f"train.eval_at_start={str(eval_at_start).lower()}",
    ]
    over += [f"train.sft_source={source or 'chosen'}"]
    if name in ("grpo", "rloo"):
        over += ["train.beta=0.04"]
    cfg = load_config(config_path, over)
    t0 = time.time()
    res = s5_optimization.run(cfg, RunDir(rd_path))
    seconds = time.time() - t0
    hist = read_jsonl(rd_path / "05_optimization" / "metrics.jsonl")
    final = json.loads((rd_path / "05_optimization" / "metrics.json").read_text())["final"]
    cap = capability_retention(rd_path, cfg)
    gc.collect()
    steps = [
        {
            k: r.get(k)
            for k in (
                "step",
                "train_seconds",
                "kl",
                "persona_shift",
                "consistency",
                "on_task",
                "adherence",
                "style_variance",
            )
        }
        for r in hist
        if r.get("kl") is not None
    ]
    return {
        "recipe": name,
        "seconds_total": round(seconds, 1),
        "steps": steps,
        "final": final,
        "capability": cap,
        "gate": {r.metric: {"value": r.value, "status": r.status} for r in res.gate.results},
    }


def fmt(x, p=3):
    return "n/a" if x is None else f"{x:.{p}f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="run directory with stages 1-4 done")
    ap.add_argument("--config", default=str(REPO / "examples" / "quickstart.yaml"))
    ap.add_argument("--recipes", default="dpo,sft,sft-reference,sdft,grpo")
    ap.add_argument("--budget", type=float, default=300.0, help="training seconds per recipe, evals excluded")
    ap.add_argument("--eval-seconds", type=float, default=100.0, help="training seconds between evals")
    ap.add_argument("--out", default="/tmp/personatune-recipes")
    ap.add_argument(
        "overrides", nargs="*", help="key=value config overrides for every recipe (e.g. persona=... to match the run)"
    )
    a = ap.parse_args()
    base, out = Path(a.run).resolve(), Path(a.out).resolve()
    results = []
    for name in a.recipes.split(","):
        print(f"== {name}: {a.budget:g} s of training, evals every {a.eval_seconds:g} s", flush=True)
        # Every recipe measures step 0 (the baseline) too: the KL controller needs it to see drift KL falling into the budget.
        r = run_recipe(name, base, out, a.config, a.overrides, a.budget, a.eval_seconds)
        results.append(r)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
        print("  step  train_s  drift_KL  persona_shift  consistency  on_task")
        for s in r["steps"]:
            print(
                f"  {s['step']:>4}  {fmt(s['train_seconds'], 0):>7}  {fmt(s['kl'], 4):>8}  {fmt(s['persona_shift'], 4):>13}  "
                f"{fmt(s['consistency']):>11}  {fmt(s['on_task']):>7}"
            )
    print(
        "\nrecipe | steps | kept step | drift KL | persona shift | consistency | on-task | on-task retention | capability retention | total s"
    )
    print("---|---|---|---|---|---|---|---|---|---")
    for r in results:
        f, c = r["final"], r["capability"]
        print(
            f"{r['recipe']} | {f.get('steps_trained')} | {f.get('selected_step')} | {fmt(f.get('kl'), 4)} | {fmt(f.get('persona_shift'), 4)} | "
            f"{fmt(f.get('consistency'))} | {fmt(f.get('on_task'))} | {fmt(f.get('on_task_retention'))} | {fmt(c.get('retention'))} | "
            f"{r['seconds_total']:.0f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
