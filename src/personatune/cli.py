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

Every command takes --debug (print the traceback of an error too; or set PERSONATUNE_DEBUG=1).

Exit codes: 0 success, 1 a quality gate failed or was inconclusive (monitor: a drift alert fired), 2 bad input (one line on stderr, no traceback),
3 internal error (a bug: one line naming the command and the input; the traceback goes to the run's log.txt and, with
--debug, to stderr), 130 interrupted (re-run the same command to resume). docs/limits-and-errors.md lists them.

This module is longer than the ~450 lines we aim for, on purpose: it holds the parser and a short dispatcher for each
of the nine commands, and the one error boundary that maps every exception to its exit code; split across files, a
reader would have to open several to see what one command does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

from personatune import limits
from personatune.errors import PersonatuneError

EXIT_BAD_INPUT = 2
"""Bad input: a file, value or path the user gave (one line: what, and the fix)."""
EXIT_INTERNAL = 3
"""An internal error: a bug in personatune, not in the input (one line; the traceback in log.txt / with --debug)."""
EXIT_INTERRUPTED = 130
"""Ctrl-C: re-run the same command to resume."""


def _cmd_run(args: argparse.Namespace) -> int:
    from personatune.config import load_config
    from personatune.pipeline import check_run_inputs, run_pipeline

    cfg = load_config(args.config, args.overrides)
    args.run_root = Path(cfg.run_dir) / cfg.name  # where the error boundary writes a traceback (log.txt)
    check_run_inputs(cfg)  # persona and models, in a second, before stage 1 runs
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

        fields = {
            "backend": args.judge,
            "model": args.judge_model,
            "base_url": args.judge_url,
            "api_key_env": args.judge_key_env,
            "weight": args.judge_weight,
            "concurrency": args.judge_concurrency,
        }
        try:
            ja = JudgeArgs(**{k: v for k, v in fields.items() if v is not None})
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(x) for x in err["loc"]) or "judge"
            raise ConfigError(
                f"--judge options: {loc}: {err['msg']} (got {err.get('input')!r:.80}); "
                "fix: e.g. --judge openai --judge-url http://127.0.0.1:8000/v1 --judge-model NAME, or --judge hf"
            ) from None
        judge, weight = build_judge(ja, cache_dir=args.judge_cache), ja.weight
    if args.gold:
        from personatune.scoring.gold import format_gold_report, score_gold_file

        rep = score_gold_file(
            args.persona, args.gold, args.output, evaluator_dir=args.evaluator, judge=judge, judge_weight=weight
        )
        print(json.dumps(rep, indent=2, default=str) if args.json else format_gold_report(Path(args.gold).name, rep))
        for s in rep["skipped_lines"]:
            print(f"  line {s['line']} skipped: {limits.shorten(s['reason'], 200)}", file=sys.stderr)
        if args.output:
            print(f"wrote {args.output}", file=sys.stderr)
        return 0 if not rep["unmet_targets"] else 1
    if not args.input or not args.output:
        from personatune.errors import ConfigError

        raise ConfigError(
            "score needs --input IN.jsonl and --output OUT.jsonl (or --gold GOLD.jsonl to check the scorer on a gold set)"
        )
    summary = score_jsonl(
        args.persona, args.input, args.output, evaluator_dir=args.evaluator, judge=judge, judge_weight=weight
    )
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(format_summary(summary))
    skipped = summary.get("skipped_lines") or []
    if summary.get("skipped"):
        shown = f", the first {len(skipped)}" if len(skipped) < summary["skipped"] else ""
        print(f"skipped {summary['skipped']} bad input line(s){shown}:", file=sys.stderr)
        for s in skipped:
            print(f"  line {s['line']}: {limits.shorten(s['reason'], 200)}", file=sys.stderr)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    from personatune.scoring.batch import fit_jsonl

    summary = fit_jsonl(args.persona, args.examples, args.output)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"fitted on {summary['n_examples']} labelled example(s) plus the persona's exemplars")
        for t, c in summary["per_trait"].items():
            print(f"  {t:24s} " + ", ".join(f"{k} {v}" for k, v in c.items()))
    for s in summary["skipped_lines"]:
        print(f"  line {s['line']}: {limits.shorten(s['reason'], 200)}", file=sys.stderr)
    if summary["skipped"]:
        shown = (
            f" (the first {len(summary['skipped_lines'])} listed)"
            if len(summary["skipped_lines"]) < summary["skipped"]
            else ""
        )
        print(f"skipped {summary['skipped']} bad input line(s){shown}", file=sys.stderr)
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

    return serve_main(
        args.target,
        host=args.host,
        port=args.port,
        evaluator=args.evaluator,
        persona=args.persona,
        queue_size=args.queue_size,
        batch_size=args.batch_size,
        timeout_s=args.timeout,
        max_tokens=args.max_tokens,
        default_max_tokens=args.default_max_tokens,
        max_body_bytes=args.max_body_bytes,
        window=args.window,
        log_path=args.log,
        dtype=args.dtype,
        device=args.device,
        api_key_env=args.api_key_env,
    )


def _cmd_monitor(args: argparse.Namespace) -> int:
    from personatune.monitor import monitor_main

    return monitor_main(
        args.persona,
        args.evaluator,
        args.logs,
        reference=args.reference,
        window=args.window,
        out_html=args.out,
        alpha=args.alpha,
    )


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
    # --debug is accepted before or after the command; SUPPRESS keeps a subcommand from resetting the top-level value.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="on an error, also print the traceback (the one line stays; exit codes unchanged)",
    )
    p = argparse.ArgumentParser(
        prog="personatune",
        description="Train a language model to hold a persona, with a measured gate after every stage.",
        parents=[common],
    )
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", parents=[common], help="run the gated pipeline (resumes where it stopped)")
    r.add_argument("config", help="run config YAML, e.g. examples/quickstart.yaml")
    r.add_argument("overrides", nargs="*", help="key=value overrides, e.g. model.name=tiny run_dir=/tmp/runs")
    r.add_argument("--from", dest="from_stage", help="re-run from this stage (number or name)")
    r.add_argument("--until", help="stop after this stage (number or name)")
    r.add_argument("--force", action="store_true", help="re-run stages even when their inputs are unchanged")
    r.add_argument(
        "--keep-going",
        action="store_true",
        help="run the later stages even after a failed or inconclusive gate (diagnosis only: exit code 1, verdict NO-DEPLOY)",
    )
    r.set_defaults(fn=_cmd_run)

    v = sub.add_parser("validate", parents=[common], help="check a persona file against the stage-2 gate")
    v.add_argument("persona", help="persona YAML file")
    v.add_argument("--json", action="store_true", help="print the gate result as JSON")
    v.set_defaults(fn=_cmd_validate)

    s = sub.add_parser("score", parents=[common], help="score responses against a persona")
    s.add_argument("--persona", required=True, help="persona YAML file")
    s.add_argument("--evaluator", help="fitted evaluator folder (from stage 4 or `fit`)")
    s.add_argument("--input", help="JSONL: id, text, optional prompt, context, targets")
    s.add_argument("--output", help="JSONL with one score record per input line (with --gold: the report as JSON)")
    s.add_argument(
        "--gold",
        help="a gold set (benchmarks/gold/README.md): print how well the scorer separates its gold, generic, "
        "flipped and babble answers and whether each response-level gate passes on gold and fails on generic; "
        "exit 0 when every instrument target is met, 1 when one is not",
    )
    s.add_argument("--json", action="store_true", help="print the aggregates as JSON")
    s.add_argument(
        "--judge",
        choices=["none", "hf", "openai"],
        default="none",
        help="mix an LLM judge into the trait probabilities: hf = in-process model, openai = OpenAI-compatible server",
    )
    s.add_argument(
        "--judge-model", help="hf: model name/path (default smollm2-135m-instruct); openai: the served model's name"
    )
    s.add_argument("--judge-url", help="openai: server URL ending in /v1, e.g. http://127.0.0.1:8000/v1")
    s.add_argument(
        "--judge-key-env",
        help="openai: environment variable holding the API key (default OPENAI_API_KEY; never logged)",
    )
    s.add_argument("--judge-weight", type=float, help="the judge's share of each trait probability, 0-1 (default 0.5)")
    s.add_argument("--judge-concurrency", type=int, help="openai: requests in flight at once (default 8)")
    s.add_argument(
        "--judge-cache", help="openai: folder for a response cache, so re-scoring the same texts costs nothing"
    )
    s.set_defaults(fn=_cmd_score)

    f = sub.add_parser(
        "fit",
        parents=[common],
        help="fit the persona profile (the instrument's view of the persona) on labelled examples and save an evaluator folder",
    )
    f.add_argument("--persona", required=True, help="persona YAML file (its exemplars are always used)")
    f.add_argument("--examples", required=True, help="JSONL: text, trait, label (expressed | violated | neutral)")
    f.add_argument("--output", required=True, help="evaluator folder to write (safetensors + JSON)")
    f.add_argument("--json", action="store_true", help="print the summary as JSON")
    f.set_defaults(fn=_cmd_fit)

    c = sub.add_parser(
        "config", parents=[common], help="print the resolved config (defaults < YAML < key=value) without running"
    )
    c.add_argument("config", nargs="?", help="run config YAML")
    c.add_argument("overrides", nargs="*", help="key=value overrides")
    c.add_argument("--keys", action="store_true", help="list every config key with its default and meaning")
    c.set_defaults(fn=_cmd_config)

    rp = sub.add_parser("report", parents=[common], help="(re)build <run>/report.html from a run directory alone")
    rp.add_argument("run_dir", help="a run directory, e.g. runs/quickstart")
    rp.set_defaults(fn=_cmd_report)

    sv = sub.add_parser(
        "serve",
        parents=[common],
        help="OpenAI-compatible /v1/chat/completions for a trained model, scored in the background, /metrics",
    )
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
    sv.add_argument(
        "--log", help="append served conversations to this JSONL (the format `monitor` reads); created with mode 0600"
    )
    sv.add_argument(
        "--api-key-env",
        help="environment variable holding an API key; when given, requests must send "
        "'Authorization: Bearer KEY' (401 otherwise; /health stays open). The key is never logged",
    )
    sv.add_argument("--dtype", help="model dtype (auto, float32, bfloat16, float16)")
    sv.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    sv.set_defaults(fn=_cmd_serve)

    mo = sub.add_parser(
        "monitor", parents=[common], help="score production conversations and test each window for persona drift"
    )
    mo.add_argument("logs", help="JSONL, one conversation per line (OpenAI-style messages)")
    mo.add_argument(
        "--persona", required=True, help="persona YAML, or a run directory (persona, evaluator and reference from it)"
    )
    mo.add_argument("--evaluator", help="fitted evaluator folder")
    mo.add_argument("--reference", help="reference JSONL (default: the run's stage-3 held-out chosen responses)")
    mo.add_argument("--window", type=int, default=200, help="conversations per window (count)")
    mo.add_argument("--out", default="drift.html", help="HTML drift report to write (a .json summary goes beside it)")
    mo.add_argument("--alpha", type=float, default=0.01, help="family-wise false-alarm rate over all windows and tests")
    mo.set_defaults(fn=_cmd_monitor)

    e = sub.add_parser(
        "env", parents=[common], help="print versions, device, threads and where the default models were found"
    )
    e.add_argument("--json", action="store_true")
    e.set_defaults(fn=_cmd_env)
    return p


_MAIN_INPUT = {
    "run": "config",
    "validate": "persona",
    "score": "input",
    "fit": "examples",
    "config": "config",
    "report": "run_dir",
    "serve": "target",
    "monitor": "logs",
}
"""The argument each command's error line names as its input."""


def _print_error(text: str) -> None:
    """An error on stderr: each line cut at limits.ERROR_LINE_MAX_CHARS, at most limits.ERROR_MAX_LINES lines."""
    lines = text.split("\n")
    shown = [limits.shorten(line) for line in lines[: limits.ERROR_MAX_LINES]]
    if len(lines) > limits.ERROR_MAX_LINES:
        shown.append(f"  ... {len(lines) - limits.ERROR_MAX_LINES} more line(s)")
    print("\n".join(shown), file=sys.stderr)


def _log_traceback(args: argparse.Namespace, exc: BaseException) -> str | None:
    """Append the traceback to the run's log.txt when the command has a run directory; its path, or None."""
    root = getattr(args, "run_root", None)
    if root is None or not Path(root).is_dir():
        return None
    log = Path(root) / "log.txt"
    try:
        with open(log, "a", encoding="utf-8", errors="backslashreplace") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} error in `personatune {args.command}`:\n")
            f.write("".join(traceback.format_exception(exc)))
    except OSError:
        return None
    return str(log)


def _unexpected(args: argparse.Namespace, exc: BaseException, debug: bool) -> int:
    """The top-level boundary for anything not already a PersonatuneError: one line, never a traceback."""
    command = getattr(args, "command", "?")
    given = getattr(args, _MAIN_INPUT.get(command, ""), None)
    on = f" on {limits.shorten(str(given), 300)}" if given else ""
    log = _log_traceback(args, exc)
    where = f"traceback in {log}" if log else "traceback that --debug prints"
    if isinstance(exc, OSError):
        # A path the user gave (or the disk) refused a read or a write: bad input, exit 2.
        path = f" {limits.short_repr(str(exc.filename), 200)}" if exc.filename else ""
        _print_error(
            f"personatune {command}: error: cannot use{path}{on}: {exc.strerror or type(exc).__name__}; fix: check that the path exists, "
            f"is a file or folder as the command expects, and that you may read or write it ({where})"
        )
        code = EXIT_BAD_INPUT
    else:
        what = limits.shorten(f"{type(exc).__name__}: {exc}".split("\n")[0], 300)
        look = f"; meanwhile check {limits.shorten(str(given), 300)} for anything unusual" if given else ""
        _print_error(
            f"personatune {command}: internal error{on} ({what}); this looks like a bug in personatune; fix: report it with "
            f"the {where}{look}"
        )
        code = EXIT_INTERNAL
    if debug:
        traceback.print_exception(exc)
    return code


def _line_buffered_streams() -> None:
    # Progress lines appear as they are printed even through a pipe (| tee), and text that stdout's
    # encoding cannot hold (a lone surrogate echoed from the input) is escaped instead of raising.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(line_buffering=True, errors="backslashreplace")  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            pass  # a replaced stream (pytest's capture) keeps its own settings


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script: the one error boundary.

    Bad input becomes one line on stderr (exit 2), a failed gate exit 1, an internal error one line
    naming the command and its input (exit 3; traceback to the run's log.txt, and to stderr with
    --debug), Ctrl-C exit 130. Never a traceback unless --debug asks for it.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _line_buffered_streams()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse stops filling `overrides` at the first option, so in `run CONFIG --from 6 model.device=cpu` the
    # key=value after the option would be refused; such trailing overrides are taken in order, anything else is an error.
    if extra and hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
        args.overrides = list(args.overrides or []) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    debug = bool(getattr(args, "debug", False)) or os.environ.get("PERSONATUNE_DEBUG", "") not in ("", "0")
    try:
        return int(args.fn(args))
    except PersonatuneError as e:
        _print_error(f"personatune: error: {e}")
        if debug:
            traceback.print_exception(e)
        return e.exit_code
    except KeyboardInterrupt:
        print(
            "personatune: interrupted; run the same command again to resume from the stage in progress", file=sys.stderr
        )
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - the top-level boundary: any other error is one line (exit 2 or 3), never a traceback
        return _unexpected(args, e, debug)


if __name__ == "__main__":
    sys.exit(main())
