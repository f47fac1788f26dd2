"""Hostile and careless input (issue 16): nothing hangs, nothing is overwritten, no traceback.

One test per case found by trying the CLI as a careless or hostile user would. Each writes its hostile
file into tmp_path, runs the real `personatune` entry point (in-process, or in a subprocess where a
hang would be in C code) under a time limit, and asserts the exit code, a one-line message on stderr,
and that no input was changed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from personatune import limits
from tests.helpers import PERSONA, REPO, TINY_YAML, run_config_file


class TimeLimit(BaseException):
    """Raised by the alarm; a BaseException, so the CLI's error boundary cannot turn it into an exit code."""


@contextlib.contextmanager
def time_limit(seconds: float):
    def fire(signum, frame):
        raise TimeLimit(f"took longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def cli(capsys, *args, limit: float = 30) -> tuple[int, str, str]:
    """`personatune ARGS` in this process, under a time limit: (exit code, stdout, stderr)."""
    from personatune.cli import main

    capsys.readouterr()
    with time_limit(limit):
        code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    """The single error line on stderr (no traceback, not longer than the CLI's limit)."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err[:2000]
    assert "Traceback" not in err and len(lines[0]) <= limits.ERROR_LINE_MAX_CHARS, lines[0][:2000]
    return lines[0]


def snapshot(*paths: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in paths}


def unchanged(before: dict[Path, bytes]) -> bool:
    return all(p.read_bytes() == data for p, data in before.items())


def persona_with(tmp_path: Path, **extra) -> Path:
    """Captain Nova plus `extra` top-level changes, written to tmp_path/persona.yaml."""
    data = yaml.safe_load(PERSONA.read_text(encoding="utf-8"))
    for k, v in extra.items():
        data[k] = v(data[k]) if callable(v) else v
    p = tmp_path / "persona.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return p


EVIL_REGEX = "(a+)+$"
EVIL_TEXT = "a" * 35 + "b"  # Python's re: longer than the age of the universe


def evil_persona(tmp_path: Path) -> Path:
    """A valid persona whose hard rule is a catastrophic-backtracking regex, and an example reply that triggers it."""
    rule = {"id": "no_long_runs", "description": "never a long run of one letter", "check": {"regex": EVIL_REGEX}}
    example = {
        "messages": [{"role": "user", "content": "Scream!"}, {"role": "assistant", "content": EVIL_TEXT}],
        "context": "casual",
    }
    return persona_with(tmp_path, behaviors=lambda b: b + [rule], examples=lambda e: e + [example])


# ---- lost data --------------------------------------------------------------------------------------------


def test_monitor_out_equal_to_the_log_is_refused(tmp_path, capsys):
    log = tmp_path / "prod.jsonl"
    log.write_text(
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Ahoy!"}]}) + "\n"
    )
    before = snapshot(log, PERSONA)
    code, _, err = cli(capsys, "monitor", log, "--persona", PERSONA, "--out", log, limit=20)
    assert code == 2 and "is the same file as the log" in one_line(err) and unchanged(before)


def test_monitor_json_summary_beside_the_html_would_replace_the_log(tmp_path, capsys):
    log = tmp_path / "prod.json"  # --out prod.html writes its summary to prod.json
    log.write_text(
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Ahoy!"}]}) + "\n"
    )
    before = snapshot(log)
    code, _, err = cli(capsys, "monitor", log, "--persona", PERSONA, "--out", tmp_path / "prod.html", limit=20)
    line = one_line(err)
    assert code == 2 and "--out (its .json summary)" in line and "prod.json" in line and unchanged(before)
    assert not (tmp_path / "prod.html").exists()


def test_score_output_equal_to_input_is_refused(tmp_path, capsys, monkeypatch):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"id": 1, "text": "Ahoy, crew!"}) + "\n")
    before = snapshot(inp)
    monkeypatch.chdir(tmp_path)  # the same file, spelled differently
    code, _, err = cli(
        capsys, "score", "--persona", PERSONA, "--input", "in.jsonl", "--output", "./sub/../in.jsonl", limit=20
    )
    assert code == 2 and "is the same file as --input" in one_line(err) and unchanged(before)


def test_score_output_hard_link_to_the_persona_is_refused(tmp_path, capsys):
    persona = tmp_path / "p.yaml"
    persona.write_bytes(PERSONA.read_bytes())
    link = tmp_path / "out.jsonl"
    os.link(persona, link)
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"text": "Ahoy!"}) + "\n")
    before = snapshot(persona, inp)
    code, _, err = cli(capsys, "score", "--persona", persona, "--input", inp, "--output", link, limit=20)
    assert code == 2 and "is the same file as --persona" in one_line(err) and unchanged(before)


# ---- hangs and memory blow-ups ---------------------------------------------------------------------------


@pytest.mark.stage
def test_catastrophic_regex_does_not_hang_validate(tmp_path):
    """A subprocess with a hard timeout: validate runs the rule on the example reply."""
    persona = evil_persona(tmp_path)
    before = snapshot(persona)
    r = subprocess.run(
        [sys.executable, "-m", "personatune.cli", "validate", str(persona)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        cwd=REPO,
    )
    assert r.returncode in (0, 1), r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "no_long_runs" in r.stdout + r.stderr and unchanged(before)


SMALL_EVIL_PERSONA = f"""name: Tiny
summary: Two traits and a catastrophic-backtracking rule (a small persona, so building its scorer takes seconds).
traits:
  - id: curious
    description: Eager to learn and explore ideas.
    positive: ["I want to know how everything works.", "Learning something new is the best part of my day.", "I keep asking why."]
    negative: ["I have no interest in learning anything new.", "New ideas bore me.", "I never wonder how things work."]
  - id: patient
    description: Calm and unhurried.
    positive: ["Take your time, there is no rush.", "I can wait as long as it takes.", "Let's go through it again slowly."]
    negative: ["Hurry up, I don't have all day.", "Waiting drives me crazy.", "I lose my temper when things are slow."]
behaviors:
  - id: no_long_runs
    description: never a long run of one letter
    check: {{regex: "{EVIL_REGEX}"}}
"""


@pytest.fixture(scope="module")
def small_evaluator(tmp_path_factory) -> tuple[Path, Path]:
    """(persona, evaluator folder) of SMALL_EVIL_PERSONA: the detectors are fitted once, the CLI loads them (--evaluator)."""
    from personatune.persona import load_persona
    from personatune.scoring.scorer import Scorer

    d = tmp_path_factory.mktemp("small")
    persona = d / "small.yaml"
    persona.write_text(SMALL_EVIL_PERSONA)
    Scorer(load_persona(persona)).save(d / "evaluator")
    return persona, d / "evaluator"


@pytest.mark.stage
def test_catastrophic_regex_does_not_hang_score_or_monitor(tmp_path, capsys, small_evaluator):
    persona, evaluator = small_evaluator
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": i, "text": EVIL_TEXT}) + "\n" for i in range(3)))
    log = tmp_path / "log.jsonl"
    log.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": EVIL_TEXT}]})
            + "\n"
            for _ in range(4)
        )
    )
    before = snapshot(persona, inp, log)
    code, _, err = cli(
        capsys,
        "score",
        "--persona",
        persona,
        "--evaluator",
        evaluator,
        "--input",
        inp,
        "--output",
        tmp_path / "out.jsonl",
        limit=60,
    )
    assert code == 0, err
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["rules"]["no_long_runs"] for r in rows] == [False] * 3  # "(a+)+$" does not match "aaa…ab"
    code, _, err = cli(
        capsys,
        "monitor",
        log,
        "--persona",
        persona,
        "--evaluator",
        evaluator,
        "--window",
        "2",
        "--out",
        tmp_path / "d.html",
        limit=60,
    )
    assert code in (0, 1) and "Traceback" not in err and unchanged(before)


def test_regex_that_needs_backtracking_is_refused_by_validate(tmp_path, capsys):
    rule = {"id": "polite", "description": "says please unless refusing", "check": {"regex": "(?<!not )please"}}
    persona = persona_with(tmp_path, behaviors=lambda b: b + [rule])
    code, _, err = cli(capsys, "validate", persona, limit=20)
    assert code == 2 and "Traceback" not in err
    assert "is not supported by the rule engine, which matches in linear time" in err and "no lookarounds" in err


BILLION_LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n" for p, c in zip("abcdefgh", "bcdefghi")
)


def test_billion_laughs_persona_is_refused_at_once(tmp_path, capsys):
    persona = tmp_path / "laughs.yaml"
    persona.write_text(BILLION_LAUGHS)
    assert len(BILLION_LAUGHS) < 600
    code, _, err = cli(capsys, "validate", persona, limit=10)
    assert code == 2 and "once its aliases are expanded" in one_line(err)


def test_recursive_alias_persona_is_refused(tmp_path, capsys):
    persona = tmp_path / "rec.yaml"
    persona.write_text("name: &n [*n]\nsummary: x\ntraits: []\n")
    code, _, err = cli(capsys, "validate", persona, limit=10)
    assert code == 2 and "recursive alias *n" in one_line(err)


def test_aliased_config_gives_a_short_error_line(tmp_path, capsys):
    # Below the expansion limit (9^4 = 6,561 items, twice), so the schema sees the whole list: the line must still be short.
    big = 'x0: &x0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
        f"x{i}: &x{i} [*x{i - 1},*x{i - 1},*x{i - 1},*x{i - 1},*x{i - 1},*x{i - 1},*x{i - 1},*x{i - 1},*x{i - 1}]\n"
        for i in range(1, 4)
    )
    cfg = tmp_path / "c.yaml"
    cfg.write_text(big.replace("x0: ", "anchors:\n  x0: ").replace("\nx", "\n  x") + f"persona: {PERSONA}\nseed: *x3\n")
    assert len(cfg.read_text()) < 700
    code, _, err = cli(capsys, "config", cfg, limit=20)
    assert code == 2 and "seed" in one_line(err) and len(err) < 2000


def test_laughs_in_a_config_and_in_an_override(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(BILLION_LAUGHS)
    code, _, err = cli(capsys, "config", cfg, limit=10)
    assert code == 2 and "aliases" in one_line(err)
    code, _, err = cli(capsys, "config", TINY_YAML, "seed=" + BILLION_LAUGHS.replace("\n", ", ").join("{}"), limit=10)
    assert code == 2 and "aliases" in one_line(err)


def test_oversized_persona_is_refused_by_size(tmp_path, capsys):
    persona = tmp_path / "big.yaml"
    with open(persona, "w") as f:
        f.write(PERSONA.read_text())
        f.write("# padding\n" * (limits.PERSONA_MAX_BYTES // 10 + 1))
    code, _, err = cli(capsys, "validate", persona, limit=5)
    assert code == 2 and "PERSONA_MAX_BYTES" in one_line(err)


def test_score_skips_a_text_past_the_limit_instead_of_eating_memory(tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_text(
        json.dumps({"id": 1, "text": "a " * 50_000}) + "\n" + json.dumps({"id": 2, "text": "a " * 600_000}) + "\n"
    )  # 0.1 and 1.2 MB
    before = snapshot(inp)
    code, _, err = cli(
        capsys, "score", "--persona", PERSONA, "--input", inp, "--output", tmp_path / "o.jsonl", limit=10
    )
    line = one_line(err)
    assert (
        code == 2
        and "none of its 2 non-blank line(s)" in line
        and "line 1: 'text' has 100,000 characters" in line
        and unchanged(before)
    )
    from personatune.scoring.batch import _parse_lines, _read_lines

    _, skipped = _parse_lines(_read_lines(inp, "input"), lambda o: None)
    assert len(skipped) == 1 and "JSONL_MAX_LINE_CHARS" in skipped[0]["reason"] and skipped[0]["line"] == 2


# ---- tracebacks with exit 1, manifest left at "running" ---------------------------------------------------


def test_run_dir_that_is_a_file(tmp_path, capsys):
    blocker = tmp_path / "runs"
    blocker.write_text("not a folder")
    code, _, err = cli(capsys, "run", run_config_file(tmp_path), "--until", "1", limit=30)
    assert code == 2 and "is a file, not a folder" in one_line(err) and blocker.read_text() == "not a folder"


def test_run_dir_that_cannot_be_written(tmp_path, capsys):
    code, _, err = cli(capsys, "run", run_config_file(tmp_path), "run_dir=/proc/self", "--until", "1", limit=30)
    line = one_line(err)
    assert code == 2 and "run directory /proc/" in line and "cannot be written" in line


def test_non_utf8_config(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(b"name: caf\xe9\npersona: x.yaml\n")
    code, _, err = cli(capsys, "run", cfg, limit=10)
    assert code == 2 and "not UTF-8" in one_line(err)


@pytest.mark.parametrize(
    "override,expected",
    [
        ("seed=99999999999999999999999", "seed: Input should be less than or equal to 4294967295"),
        ("seed=yes", "seed: expected a number, got true"),
        ("train.learning_rate=.inf", "train.learning_rate: Input should be a finite number"),
        ("data.heldout_fraction=.nan", "data.heldout_fraction: Input should be a finite number"),
        ("sft.batch_size=on", "sft.batch_size: expected a number, got true"),
    ],
)
def test_bad_values_are_refused_not_taken(tmp_path, capsys, override, expected):
    code, _, err = cli(capsys, "run", run_config_file(tmp_path), override, limit=10)
    assert code == 2 and expected in one_line(err)
    assert not (tmp_path / "runs").exists()  # refused before the run directory is made


def test_duplicate_keys_in_a_run_config(tmp_path, capsys):
    cfg = run_config_file(tmp_path, "seed: 1\nmodel:\n  name: tiny\n")
    code, _, err = cli(capsys, "run", cfg, limit=10)
    line = one_line(err)
    assert code == 2 and "model: given twice (lines 4 and 7)" in line


def test_model_folder_with_a_bad_config_json(tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama", "hidden_size": -5}')
    before = snapshot(model / "config.json")
    code, _, err = cli(capsys, "run", run_config_file(tmp_path), f"model.name={model}", "--until", "1", limit=60)
    assert code == 2 and f"model folder {model} cannot be loaded" in one_line(err) and unchanged(before)
    man = json.loads((tmp_path / "runs" / "r" / "manifest.json").read_text())
    assert man["stages"]["01_baseline"]["status"] == "failed"  # never left at "running"


def test_persona_with_a_nul_byte(tmp_path, capsys):
    persona = tmp_path / "p.yaml"
    persona.write_bytes(PERSONA.read_bytes().replace(b"name: ", b"name: Nova\x00", 1))
    code, _, err = cli(capsys, "validate", persona, limit=10)
    line_no = PERSONA.read_text().split("name: ")[0].count("\n") + 1
    assert code == 2 and f"line {line_no}: character '\\x00' is not allowed in YAML" in one_line(err)
    cfg = run_config_file(tmp_path).read_text().replace(f"persona: {PERSONA}", 'persona: "a\\0b.yaml"')
    (tmp_path / "nul.yaml").write_text(cfg)
    code, _, err = cli(capsys, "run", tmp_path / "nul.yaml", limit=10)
    assert code == 2 and "persona: text 'a\\x00b.yaml' contains a NUL byte" in one_line(err)


def test_persona_nested_20k_deep(tmp_path, capsys):
    persona = tmp_path / "deep.yaml"
    persona.write_text("name: x\nsummary: " + "[" * 20_000 + "]" * 20_000 + "\n")
    code, _, err = cli(capsys, "validate", persona, limit=10)
    assert code == 2 and "nesting deeper than" in one_line(err)


def _stage_entry(tmp_path: Path, entry) -> Path:
    root = tmp_path / "runs" / "r"
    root.mkdir(parents=True)
    (root / "manifest.json").write_text(json.dumps({"version": 1, "stages": {"01_baseline": entry}}))
    return root


def test_manifest_stage_entry_that_is_not_an_object(tmp_path, capsys):
    root = _stage_entry(tmp_path, "done")
    before = snapshot(root / "manifest.json")
    code, _, err = cli(capsys, "run", run_config_file(tmp_path), "--until", "1", limit=30)
    assert code == 2 and "stages.01_baseline is 'done', not an object" in one_line(err) and unchanged(before)
    code, _, err = cli(capsys, "serve", root, limit=30)
    assert code == 2 and "not an object" in one_line(err) and unchanged(before)


def test_manifest_output_outside_the_run_dir(tmp_path, capsys):
    root = _stage_entry(
        tmp_path, {"status": "done", "outputs": {"persona": {"path": "../../../../etc/passwd", "hash": "x"}}}
    )
    code, _, err = cli(capsys, "monitor", tmp_path / "log.jsonl", "--persona", root, limit=30)
    assert code == 2 and "is outside the run directory" in one_line(err)


def test_score_on_an_empty_or_all_bad_file(tmp_path, capsys):
    for name, text, expected in (
        ("empty.jsonl", "", "has no line to score"),
        ("bad.jsonl", "{nope\n[1]\n", "none of its 2 non-blank line(s)"),
    ):
        inp = tmp_path / name
        inp.write_text(text)
        code, _, err = cli(
            capsys, "score", "--persona", PERSONA, "--input", inp, "--output", tmp_path / "o.jsonl", limit=10
        )
        assert code == 2 and expected in one_line(err)
        assert not (tmp_path / "o.jsonl").exists()


def test_score_output_that_is_a_folder_is_refused_before_scoring(tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"text": "Ahoy!"}) + "\n")
    (tmp_path / "outdir").mkdir()
    code, _, err = cli(capsys, "score", "--persona", PERSONA, "--input", inp, "--output", tmp_path / "outdir", limit=5)
    assert code == 2 and "is a folder" in one_line(err)


def test_unexpected_exception_is_one_line_exit_3_failed_stage_and_traceback_in_log(tmp_path, capsys, monkeypatch):
    from personatune import pipeline
    from personatune.stage import Stage

    def boom(cfg, rd):
        raise RuntimeError("simulated bug")

    real = pipeline.run_pipeline
    monkeypatch.setattr(
        pipeline, "run_pipeline", lambda cfg, **kw: real(cfg, stages=(Stage("01_baseline", "boom", boom),), **kw)
    )
    cfg = run_config_file(tmp_path)
    code, _, err = cli(capsys, "run", cfg, limit=30)
    line = one_line(err)
    assert (
        code == 3
        and line.startswith("personatune run: internal error on ")
        and str(cfg) in line
        and "RuntimeError: simulated bug" in line
    )
    root = tmp_path / "runs" / "r"
    assert json.loads((root / "manifest.json").read_text())["stages"]["01_baseline"]["status"] == "failed"
    log = (root / "log.txt").read_text()
    assert "Traceback" in log and "simulated bug" in log and f"traceback in {root / 'log.txt'}" in line
    code, _, err = cli(capsys, "run", cfg, "--debug", limit=30)
    assert code == 3 and "Traceback (most recent call last)" in err  # --debug shows it


# ---- smaller ----------------------------------------------------------------------------------------------


def test_jsonl_with_unicode_line_separators_keeps_records_and_line_numbers(tmp_path, capsys):
    from personatune.monitor import read_conversations
    from personatune.scoring.batch import _parse_lines, _read_lines

    texts = ["one\u2028two", "three\u2029four", "five\u0085six"]
    inp = tmp_path / "in.jsonl"
    inp.write_text(
        "".join(json.dumps({"id": i, "text": t}, ensure_ascii=False) + "\n" for i, t in enumerate(texts)) + "{bad\n",
        encoding="utf-8",
    )
    rows, skipped = _parse_lines(_read_lines(inp, "input"), lambda o: None)
    assert (
        [o["text"] for _, o in rows] == texts
        and [no for no, _ in rows] == [1, 2, 3]
        and skipped == [{"line": 4, "reason": "not valid JSON (Expecting property name enclosed in double quotes)"}]
    )
    log = tmp_path / "log.jsonl"
    log.write_text(
        "".join(
            json.dumps({"messages": [{"role": "assistant", "content": t}]}, ensure_ascii=False) + "\n" for t in texts
        ),
        encoding="utf-8",
    )
    convs, bad = read_conversations(log)
    assert [c.messages[0]["content"] for c in convs] == texts and [c.line for c in convs] == [1, 2, 3] and bad == []


@pytest.mark.stage
def test_score_writes_separators_escaped_and_counts_every_skipped_line(tmp_path, capsys, small_evaluator):
    inp = tmp_path / "in.jsonl"
    good = json.dumps(
        {"id": "ok\u2028\ud800", "text": "Ahoy!\u2028Hoist the sails."}
    )  # ASCII: "\\ud800" and "\\u2028" escapes
    lone = json.dumps({"id": 2, "text": "a lone \udc00 surrogate"})
    inp.write_text("not json\n" * 86 + lone + "\n" + good + "\n", encoding="utf-8")
    out = tmp_path / "o.jsonl"
    persona, evaluator = small_evaluator
    code, _, err = cli(
        capsys, "score", "--persona", persona, "--evaluator", evaluator, "--input", inp, "--output", out, limit=60
    )
    assert code == 0 and "skipped 87 bad input line(s), the first 20:" in err and "Traceback" not in err
    raw = out.read_bytes()
    assert b"\\u2028" in raw and b"\\ud800" in raw and len(raw.split(b"\n")) == 2  # one record, one line, valid UTF-8
    assert json.loads(raw.decode("utf-8"))["id"] == "ok\u2028\ud800"


def test_missing_persona_fails_before_stage_1(tmp_path, capsys):
    cfg = run_config_file(tmp_path).read_text().replace(str(PERSONA), str(tmp_path / "nope.yaml"))
    (tmp_path / "c.yaml").write_text(cfg)
    code, _, err = cli(capsys, "run", tmp_path / "c.yaml", limit=10)
    assert code == 2 and "nope.yaml' not found" in one_line(err) and not (tmp_path / "runs").exists()


def test_misspelt_model_name_fails_fast(tmp_path, capsys):
    code, _, err = cli(capsys, "run", run_config_file(tmp_path), "model.name=tinyy", limit=10)
    line = one_line(err)
    assert (
        code == 2
        and "model 'tinyy' not found" in line
        and "did you mean 'tiny'?" in line
        and not (tmp_path / "runs").exists()
    )


def test_report_of_a_run_stopped_at_a_gate_says_no_deploy(tmp_path, capsys):
    root = _stage_entry(tmp_path, {"status": "done"})
    man = json.loads((root / "manifest.json").read_text())
    man["stages"]["03_consistency_data"] = {"status": "gate_failed", "gate": {"passed": False, "results": []}}
    (root / "manifest.json").write_text(json.dumps(man))
    code, out, err = cli(capsys, "report", root, limit=30)
    page = (root / "report.html").read_text()
    assert code == 0 and "no verdict yet" not in page
    assert 'title="the 03_consistency_data gate failed" class="badge verdict b-fail">NO-DEPLOY<' in page


def test_error_lines_are_cut(tmp_path, capsys):
    code, _, err = cli(capsys, "config", TINY_YAML, "name=" + "x y" * 100_000, limit=10)
    assert code == 2 and "name: String should match pattern" in one_line(err)
    persona = tmp_path / "many.yaml"  # hundreds of problems: the list is cut, each line too
    persona.write_text(
        "name: x\nsummary: y\ntraits:\n" + "".join(f"  - id: T{i}\n    bogus_{'z' * 900}: 1\n" for i in range(300))
    )
    code, _, err = cli(capsys, "validate", persona, limit=10)
    lines = err.splitlines()
    assert (
        code == 2 and len(lines) <= limits.ERROR_MAX_LINES + 1 and max(map(len, lines)) <= limits.ERROR_LINE_MAX_CHARS
    )
    assert "more problem(s)" in err


@pytest.mark.stage
def test_corrupt_evaluator_folder_is_bad_input(tmp_path, capsys):
    ev = tmp_path / "ev"
    ev.mkdir()
    (ev / "profile.safetensors").write_bytes(b"garbage")
    (ev / "profile.json").write_text("[1, 2]")
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"text": "Ahoy!"}) + "\n")
    before = snapshot(inp, ev / "profile.safetensors", ev / "profile.json")
    code, _, err = cli(
        capsys,
        "score",
        "--persona",
        PERSONA,
        "--evaluator",
        ev,
        "--input",
        inp,
        "--output",
        tmp_path / "o.jsonl",
        limit=30,
    )
    assert code == 2 and f"cannot read the persona profile in {ev}" in one_line(err) and unchanged(before)
    # An evaluator folder written by an older personatune (trait detectors) is refused with the fix.
    old = tmp_path / "old"
    old.mkdir()
    (old / "detectors.json").write_text("{}")
    code, _, err = cli(
        capsys,
        "score",
        "--persona",
        PERSONA,
        "--evaluator",
        old,
        "--input",
        inp,
        "--output",
        tmp_path / "o.jsonl",
        limit=30,
    )
    assert code == 2 and "fitted by an older personatune" in one_line(err) and "re-fit it" in one_line(err)
