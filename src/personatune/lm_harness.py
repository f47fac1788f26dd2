"""Optional lm-evaluation-harness tasks: the same tasks on the baseline (stage 1) and the final model (stage 7).

The built-in capability suite (personatune.capability) always runs; these tasks are for users who have
`lm_eval` and the tasks' data. Config: the `lm_eval` section (`config.LmEvalArgs`).

- `check_tasks` fails early, with one line, on a task name that neither lm-eval's registry nor
  `lm_eval.include_path` defines, and on an include path that is not a folder.
- `evaluate` scores one in-memory model on each task separately (`lm_eval.simple_evaluate` with an `HFLM`
  wrapping the model and tokenizer personatune loaded, so every model is scored the same way). A task whose
  data cannot be loaded — the usual case offline, where the hub is unreachable — is *skipped* with its reason;
  so is every task when `lm_eval` is not installed. Skips never stop the run; they are recorded and printed.
- `compare` turns two `evaluate` results into per-task drops for the stage-7 gate: a task regresses when its
  primary metric moves the wrong way by more than 1.96 x the baseline's standard error (lm-eval's own
  standard error of that metric; 0 when lm-eval reports none).

The primary metric of a task is the first metric lm-eval reports for it (the first of the task's
`metric_list`, with its filter, e.g. `acc,none` or `exact_match,strict-match`); its direction is lm-eval's
`higher_is_better`.
"""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path
from typing import Any

from personatune.config import LmEvalArgs
from personatune.errors import ConfigError

NOT_INSTALLED = (
    "lm_eval is not installed; fix: pip install 'personatune[lmeval]' (lm_eval >= 0.4.5) into the project's environment"
)
Z95 = 1.959963984540054


def installed_version() -> str | None:
    """lm_eval's version, or None when it cannot be imported."""
    try:
        import lm_eval
    except Exception:  # an ImportError, or a broken install that fails while importing
        return None
    return str(getattr(lm_eval, "__version__", "unknown"))


@functools.lru_cache(maxsize=4)
def _task_index(include_path: str | None) -> Any:
    """lm-eval's TaskManager (it indexes thousands of task files, seconds of work): built once per include path."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path)


def task_manager(args: LmEvalArgs) -> Any:
    """lm-eval's TaskManager over its registry plus `args.include_path`, after checking every task name.

    Raises:
        ConfigError: the include path is not a folder, or a task name is defined nowhere.
    """
    if args.include_path and not Path(args.include_path).is_dir():
        raise ConfigError(
            f"lm_eval.include_path {args.include_path!r} is not a folder; fix: point it at a folder of lm-eval task YAML files, or remove it"
        )
    tm = _task_index(args.include_path)
    known = set(tm.all_tasks)
    unknown = [t for t in args.tasks if t not in known and not Path(t).is_file()]
    if unknown:
        where = f" nor in lm_eval.include_path {args.include_path!r}" if args.include_path else ""
        raise ConfigError(
            f"lm_eval.tasks: {', '.join(repr(t) for t in unknown)} is not in lm-eval's task registry{where}; "
            f"fix: check the name with `lm-eval ls tasks`, or define the task in a YAML file under lm_eval.include_path"
        )
    return tm


def check_tasks(args: LmEvalArgs) -> str | None:
    """Validate the configured tasks before any model work. Returns a skip reason when lm_eval is missing, else None.

    Raises:
        ConfigError: see `task_manager`.
    """
    if not args.tasks:
        return None
    if installed_version() is None:
        return NOT_INSTALLED
    task_manager(args)
    return None


def _primary(entry: dict[str, Any], higher: dict[str, Any]) -> tuple[str, float, float | None, bool] | None:
    """(metric key, value, stderr or None, higher_is_better) of a task's first reported metric."""
    for key, value in entry.items():
        if "," not in key or "_stderr" in key or not isinstance(value, (int, float)):
            continue
        name, flt = key.split(",", 1)
        se = entry.get(f"{name}_stderr,{flt}")
        se = float(se) if isinstance(se, (int, float)) and math.isfinite(se) else None
        return key, float(value), se, bool(higher.get(name, True))
    return None


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:200]}"


def evaluate(model: Any, tokenizer: Any, args: LmEvalArgs, seed: int = 0, echo: Any = print) -> dict[str, Any]:
    """Score one model on every configured task (each task on its own, so one unreachable task skips alone).

    Returns:
        {"status": "ran" | "partial" | "skipped", "lm_eval_version", "tasks": {task: {"metric", "value",
        "stderr", "higher_is_better", "n", "metrics"}}, "skipped": {task: reason}, "settings", "seconds"}.

    Raises:
        ConfigError: an unknown task name or a bad include path (`task_manager`).
    """
    t0 = time.time()
    settings = args.model_dump(mode="json")
    version = installed_version()
    if version is None:
        echo(f"  lm-eval tasks skipped: {NOT_INSTALLED}")
        return {
            "status": "skipped",
            "lm_eval_version": None,
            "tasks": {},
            "skipped": {t: NOT_INSTALLED for t in args.tasks},
            "settings": settings,
            "seconds": round(time.time() - t0, 2),
        }
    import logging

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    tm = task_manager(args)
    for name in ("lm_eval", "lm-eval"):
        logging.getLogger(name).setLevel(logging.ERROR)
    lm = HFLM(
        pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size, device=str(next(model.parameters()).device)
    )
    tasks: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for task in args.tasks:
        t1 = time.time()
        try:
            res = simple_evaluate(
                model=lm,
                tasks=[task],
                task_manager=tm,
                limit=args.limit,
                num_fewshot=args.num_fewshot,
                apply_chat_template=args.apply_chat_template,
                log_samples=False,
                bootstrap_iters=args.bootstrap_iters,
                random_seed=seed,
                numpy_random_seed=seed,
                torch_random_seed=seed,
                fewshot_random_seed=seed,
                verbosity="ERROR",
            )
        except (
            Exception
        ) as e:  # offline hub, missing files, a task that cannot run on this model: skipped, with the reason
            kind = (
                "its data could not be loaded (offline?)" if isinstance(e, (ConnectionError, OSError)) else "it failed"
            )
            skipped[task] = (
                f"{kind}: {_one_line(e)}; fix: fetch the task's dataset into the Hugging Face cache while online, "
                f"or define the task with local data under lm_eval.include_path"
            )
            echo(f"  lm-eval task {task} skipped: {skipped[task]}")
            continue
        res = res or {}
        entry = (res.get("results") or {}).get(task) or (res.get("groups") or {}).get(task)
        prim = _primary(entry or {}, (res.get("higher_is_better") or {}).get(task, {}))
        if prim is None:
            skipped[task] = "lm-eval reported no numeric metric for it; fix: give the task a metric_list"
            echo(f"  lm-eval task {task} skipped: {skipped[task]}")
            continue
        key, value, se, higher = prim
        n = (res.get("n-samples") or {}).get(task, {}).get("effective")
        tasks[task] = {
            "metric": key,
            "value": value,
            "stderr": se,
            "higher_is_better": higher,
            "n": n,
            "metrics": {k: v for k, v in (entry or {}).items() if isinstance(v, (int, float))},
            "seconds": round(time.time() - t1, 2),
        }
        echo(
            f"  lm-eval {task}: {key} {value:.4f}"
            + (f" ± {se:.4f}" if se is not None else "")
            + (f" (n={n})" if n else "")
        )
    status = "ran" if not skipped else ("partial" if tasks else "skipped")
    return {
        "status": status,
        "lm_eval_version": version,
        "tasks": tasks,
        "skipped": skipped,
        "settings": settings,
        "seconds": round(time.time() - t0, 2),
    }


def compare(final: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """Per-task regression check of a final model against the baseline (both from `evaluate`, same settings).

    A task's drop is baseline - final for a higher-is-better metric (final - baseline otherwise); it is allowed
    up to 1.96 x the baseline's standard error. Tasks measured on one side only are listed as not compared.

    Returns:
        {"tasks": {task: {"metric", "baseline", "final", "drop", "allowed", "ok", "n"}}, "not_compared": {task: reason},
         "all_tasks_ok": bool}
    """
    out: dict[str, Any] = {}
    not_compared: dict[str, str] = {}
    for task in dict.fromkeys(
        [*baseline.get("tasks", {}), *final.get("tasks", {}), *baseline.get("skipped", {}), *final.get("skipped", {})]
    ):
        b, f = baseline.get("tasks", {}).get(task), final.get("tasks", {}).get(task)
        if b is None or f is None:
            side = "baseline" if b is None else "final model"
            not_compared[task] = f"not measured on the {side}: " + (
                (baseline if b is None else final).get("skipped", {}).get(task) or "missing"
            )
            continue
        if b["metric"] != f["metric"]:
            not_compared[task] = f"different metrics ({b['metric']} vs {f['metric']})"
            continue
        drop = (b["value"] - f["value"]) if b["higher_is_better"] else (f["value"] - b["value"])
        allowed = Z95 * b["stderr"] if b.get("stderr") is not None else 0.0
        out[task] = {
            "metric": b["metric"],
            "baseline": b["value"],
            "final": f["value"],
            "drop": drop,
            "allowed": allowed,
            "ok": drop <= allowed + 1e-12,
            "n": f.get("n") or b.get("n"),
        }
    return {"tasks": out, "not_compared": not_compared, "all_tasks_ok": all(t["ok"] for t in out.values())}
