"""The `personatune` command: parse and dispatch only.

    personatune run CONFIG.yaml [--from STAGE] [--until STAGE] [--force] [--keep-going] [key=value ...]
    personatune validate PERSONA.yaml [--json]
    personatune score --persona P.yaml [--evaluator DIR] --input IN.jsonl --output OUT.jsonl [--json] [--judge hf|openai ...]
    personatune fit --persona P.yaml --examples LABELLED.jsonl --output DIR [--json]
    personatune config [CONFIG.yaml] [key=value ...] [--keys]
    personatune report RUN_DIR
    personatune serve RUN_DIR|MODEL [--host H --port P ...]
    personatune monitor --persona P|RUN_DIR [--evaluator DIR] LOGS.jsonl [--out drift.html]
    personatune env

Exit codes: 0 success, 1 a quality gate failed (monitor: a drift alert fired), 2 bad input (one line on stderr, no traceback),
130 interrupted (re-run the same command to resume).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from personatune.errors import PersonatuneError


def _cmd_run(args: argparse.Namespace) -> int:
    from personatune.config import load_config
    from personatune.pipeline import run_pipeline

    cfg = load_config(args.config, args.overrides)
    return run_pipeline(cfg, from_stage=args.from_stage, until=args.until, force=args.force, keep_going=args.keep_going)


def _cmd_validate(args: argparse.Namespace) -> int:
    from personatune.stages import s2_persona

    report = s2_persona.evaluate_persona_file(args.persona)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        print(s2_persona.format_table(report))
    return 0 if report.passed else 1


def _cmd_score(args: argparse.Namespace) -> int:
    from personatune.scoring.aggregate import format_summary
    from personatune.scoring.batch import score_jsonl

    judge, weight = None, None
    if args.judge != "none":
        from pydantic import ValidationError

        from personatune.config import JudgeArgs
        from personatune.errors import ConfigError
        from personatune.scoring.judges import build_judge

        fields = {"backend": args.judge, "model": args.judge_model, "base_url": args.judge_url, "api_key_env": args.judge_key_env,
                  "weight": args.judge_weight, "concurrency": args.judge_concurrency}
        try:
            ja = JudgeArgs(**{k: v for k, v in fields.items() if v is not None})
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(x) for x in err["loc"]) or "judge"
            raise ConfigError(f"--judge options: {loc}: {err['msg']} (got {err.get('input')!r:.80}); "
                              "fix: e.g. --judge openai --judge-url http://127.0.0.1:8000/v1 --judge-model NAME, or --judge hf") from None
        judge, weight = build_judge(ja, cache_dir=args.judge_cache), ja.weight
    summary = score_jsonl(args.persona, args.input, args.output, evaluator_dir=args.evaluator, judge=judge, judge_weight=weight)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(format_summary(summary))
    skipped = summary.get("skipped_lines") or []
    if skipped:
        print(f"skipped {len(skipped)} bad input line(s):", file=sys.stderr)
        for s in skipped[:20]:
            print(f"  line {s['line']}: {s['reason']}", file=sys.stderr)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    from personatune.scoring.batch import fit_jsonl

    summary = fit_jsonl(args.persona, args.examples, args.output, seed=args.seed, other_positive_weight=args.other_positive_weight)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"fitted on {summary['n_examples']} labelled example(s) plus the persona's exemplars")
        for t, c in summary["per_trait"].items():
            print(f"  {t:24s} " + ", ".join(f"{k} {v}" for k, v in c.items()))
    for s in summary["skipped_lines"]:
        print(f"  line {s['line']}: {s['reason']}", file=sys.stderr)
    if summary["skipped"]:
        print(f"skipped {summary['skipped']} bad input line(s)", file=sys.stderr)
    print(f"wrote {args.output} (use: personatune score --evaluator {args.output} ...)", file=sys.stderr)
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from personatune.config import config_keys_help, load_config, to_yaml

    if args.keys:
        for key, doc, default in config_keys_help():
            print(f"{key:42s} {default!s:24s} {doc}")
        return 0
    cfg = load_config(args.config, args.overrides)
    print(to_yaml(cfg), end="")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from personatune.report import build_report

    print(build_report(args.run_dir))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from personatune.serve import serve_main

    return serve_main(args.target, host=args.host, port=args.port, evaluator=args.evaluator, persona=args.persona,
                      queue_size=args.queue_size, batch_size=args.batch_size, timeout_s=args.timeout, max_tokens=args.max_tokens,
                      default_max_tokens=args.default_max_tokens, max_body_bytes=args.max_body_bytes, window=args.window,
                      log_path=args.log, dtype=args.dtype, device=args.device)


def _cmd_monitor(args: argparse.Namespace) -> int:
    from personatune.monitor import monitor_main

    return monitor_main(args.persona, args.evaluator, args.logs, reference=args.reference, window=args.window, out_html=args.out, alpha=args.alpha)


def _cmd_env(args: argparse.Namespace) -> int:
    from personatune.models import describe_environment

    info = describe_environment()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        for k, v in info.items():
            print(f"{k:28s} {v}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="personatune", description="Train a language model to hold a persona, with a measured gate after every stage.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the gated pipeline (resumes where it stopped)")
    r.add_argument("config", help="run config YAML, e.g. examples/quickstart.yaml")
    r.add_argument("overrides", nargs="*", help="key=value overrides, e.g. model.name=tiny run_dir=/tmp/runs")
    r.add_argument("--from", dest="from_stage", help="re-run from this stage (number or name)")
    r.add_argument("--until", help="stop after this stage (number or name)")
    r.add_argument("--force", action="store_true", help="re-run stages even when their inputs are unchanged")
    r.add_argument("--keep-going", action="store_true",
                   help="run the later stages even after a failed gate (diagnosis only: exit code 1, verdict NO-DEPLOY)")
    r.set_defaults(fn=_cmd_run)

    v = sub.add_parser("validate", help="check a persona file against the stage-2 gate")
    v.add_argument("persona", help="persona YAML file")
    v.add_argument("--json", action="store_true", help="print the gate result as JSON")
    v.set_defaults(fn=_cmd_validate)

    s = sub.add_parser("score", help="score responses against a persona")
    s.add_argument("--persona", required=True, help="persona YAML file")
    s.add_argument("--evaluator", help="fitted evaluator folder (from stage 4 or `fit`)")
    s.add_argument("--input", required=True, help="JSONL: id, text, optional prompt, context, targets")
    s.add_argument("--output", required=True, help="JSONL with one score record per input line")
    s.add_argument("--json", action="store_true", help="print the aggregates as JSON")
    s.add_argument("--judge", choices=["none", "hf", "openai"], default="none",
                   help="mix an LLM judge into the trait probabilities: hf = in-process model, openai = OpenAI-compatible server")
    s.add_argument("--judge-model", help="hf: model name/path (default smollm2-135m-instruct); openai: the served model's name")
    s.add_argument("--judge-url", help="openai: server URL ending in /v1, e.g. http://127.0.0.1:8000/v1")
    s.add_argument("--judge-key-env", help="openai: environment variable holding the API key (default OPENAI_API_KEY; never logged)")
    s.add_argument("--judge-weight", type=float, help="the judge's share of each trait probability, 0-1 (default 0.5)")
    s.add_argument("--judge-concurrency", type=int, help="openai: requests in flight at once (default 8)")
    s.add_argument("--judge-cache", help="openai: folder for a response cache, so re-scoring the same texts costs nothing")
    s.set_defaults(fn=_cmd_score)

    f = sub.add_parser("fit", help="fit the trait detectors on labelled examples and save an evaluator folder")
    f.add_argument("--persona", required=True, help="persona YAML file (its exemplars are always used)")
    f.add_argument("--examples", required=True, help="JSONL: text, trait, label (expressed | violated | neutral)")
    f.add_argument("--output", required=True, help="evaluator folder to write (safetensors + JSON)")
    f.add_argument("--seed", type=int, default=0, help="seed of the calibration folds")
    f.add_argument("--other-positive-weight", type=float, default=0.0,
                   help="the other traits' positives as the partial label 'not violated' (scorer.other_positive_weight)")
    f.add_argument("--json", action="store_true", help="print the summary as JSON")
    f.set_defaults(fn=_cmd_fit)

    c = sub.add_parser("config", help="print the resolved config (defaults < YAML < key=value) without running")
    c.add_argument("config", nargs="?", help="run config YAML")
    c.add_argument("overrides", nargs="*", help="key=value overrides")
    c.add_argument("--keys", action="store_true", help="list every config key with its default and meaning")
    c.set_defaults(fn=_cmd_config)

    rp = sub.add_parser("report", help="(re)build <run>/report.html from a run directory alone")
    rp.add_argument("run_dir", help="a run directory, e.g. runs/quickstart")
    rp.set_defaults(fn=_cmd_report)

    sv = sub.add_parser("serve", help="OpenAI-compatible /v1/chat/completions for a trained model, scored in the background, /metrics")
    sv.add_argument("target", help="a run directory (its final model, persona and evaluator) or a model name/path")
    sv.add_argument("--persona", help="persona YAML (default: the run's)")
    sv.add_argument("--evaluator", help="fitted evaluator folder (default: the run's)")
    sv.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    sv.add_argument("--port", type=int, default=8000, help="TCP port")
    sv.add_argument("--queue-size", type=int, help="requests waiting for generation before 503 (count)")
    sv.add_argument("--batch-size", type=int, help="requests generated together (count)")
    sv.add_argument("--timeout", type=float, help="seconds a request may wait and run")
    sv.add_argument("--max-tokens", type=int, help="largest max_tokens a request may ask for")
    sv.add_argument("--default-max-tokens", type=int, help="max_tokens when a request gives none")
    sv.add_argument("--max-body-bytes", type=int, help="largest request body (bytes); larger gets 413")
    sv.add_argument("--window", type=int, help="responses in the rolling /metrics window (count)")
    sv.add_argument("--log", help="append served conversations to this JSONL (the format `monitor` reads)")
    sv.add_argument("--dtype", help="model dtype (auto, float32, bfloat16, float16)")
    sv.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    sv.set_defaults(fn=_cmd_serve)

    mo = sub.add_parser("monitor", help="score production conversations and test each window for persona drift")
    mo.add_argument("logs", help="JSONL, one conversation per line (OpenAI-style messages)")
    mo.add_argument("--persona", required=True, help="persona YAML, or a run directory (persona, evaluator and reference from it)")
    mo.add_argument("--evaluator", help="fitted evaluator folder")
    mo.add_argument("--reference", help="reference JSONL (default: the run's stage-3 held-out chosen responses)")
    mo.add_argument("--window", type=int, default=200, help="conversations per window (count)")
    mo.add_argument("--out", default="drift.html", help="HTML drift report to write (a .json summary goes beside it)")
    mo.add_argument("--alpha", type=float, default=0.01, help="family-wise false-alarm rate over all windows and tests")
    mo.set_defaults(fn=_cmd_monitor)

    e = sub.add_parser("env", help="print versions, device, threads and where the default models were found")
    e.add_argument("--json", action="store_true")
    e.set_defaults(fn=_cmd_env)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script. Bad input becomes one line on stderr, never a traceback."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse stops filling `overrides` at the first option, so in `run CONFIG --from 6 model.device=cpu` the
    # key=value after the option would be refused; such trailing overrides are taken in order, anything else is an error.
    if extra and hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
        args.overrides = list(args.overrides or []) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.fn(args))
    except PersonatuneError as e:
        print(f"personatune: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("personatune: interrupted; run the same command again to resume from the stage in progress", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
