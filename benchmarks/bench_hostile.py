"""Hostile and careless input through the real CLI: how many cases are handled? (issue 16)

    python benchmarks/bench_hostile.py [--jobs 2] [--timeout 60] [--only SUBSTRING] [--skip SUBSTRING] [--src DIR] [--keep DIR]

Writes a few dozen hostile or careless inputs (persona files, run configs, JSONL logs, run
directories, option combinations) into a temporary folder, runs `personatune ...` on each in a
subprocess with a timeout, and counts a case as handled when all of these hold:

- it finished within the timeout (nothing hangs; a case that does real work when handled, loading
  MiniLM and fitting the scorer, gets four times the timeout);
- its exit code is the expected one (2 for bad input; 0 or 1 where the input is odd but valid);
- no traceback reached the terminal, and an error is short: at most limits.ERROR_MAX_LINES lines
  (a persona's problem list), each at most limits.ERROR_LINE_MAX_CHARS characters;
- every input file is byte-for-byte unchanged (nothing is overwritten).

Prints one line per case and `handled N/M`. The figure is in docs/benchmarks.md. `--src` runs another
source tree (e.g. an older commit unpacked with `git archive`) on the same cases, for a before/after.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from personatune import limits  # noqa: E402

EXAMPLE_PERSONA = REPO / "examples" / "personas" / "captain_nova.yaml"
PERSONA = EXAMPLE_PERSONA
"""The persona the cases use: a copy of the example in the temporary folder (set by main), because a case
that fails to refuse an output (an older --src) overwrites it."""
BAD_INPUT = (2,)


@dataclass
class Case:
    name: str
    args: list[str]
    expect: tuple[int, ...] = BAD_INPUT
    inputs: list[Path] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    works: bool = False
    """The case does real work when handled (loads MiniLM, fits the scorer): it gets 4x the timeout."""


def _persona_data() -> dict:
    return yaml.safe_load(PERSONA.read_text(encoding="utf-8"))


def _write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8")
    return path


def _laughs(levels: int, width: int = 9) -> str:
    first = "a: &a [" + ",".join(['"lol"'] * width) + "]\n"
    names = [chr(ord("a") + i) for i in range(levels + 1)]
    return first + "".join(f"{c}: &{c} [" + ",".join([f"*{p}"] * width) + "]\n" for p, c in zip(names, names[1:]))


def _with_rule(regex: str, reply: str | None = None) -> str:
    data = _persona_data()
    data["behaviors"].append({"id": "hostile_rule", "description": "a hostile regex", "check": {"regex": regex}})
    if reply is not None:
        data["examples"].append(
            {"messages": [{"role": "user", "content": "go"}, {"role": "assistant", "content": reply}]}
        )
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def persona_cases(d: Path) -> list[Case]:
    text = PERSONA.read_text(encoding="utf-8")
    files: dict[str, tuple[str | bytes, tuple[int, ...]]] = {
        "billion laughs (9 levels, 587 bytes)": (_laughs(8), BAD_INPUT),
        "billion laughs (12 levels)": (_laughs(11), BAD_INPUT),
        "wide laughs (5 levels x 50)": (_laughs(4, 50), BAD_INPUT),
        "recursive list alias": ("name: &n [*n]\nsummary: x\ntraits: []\n", BAD_INPUT),
        "recursive mapping alias": ("name: x\nsummary: &s {a: *s}\ntraits: []\n", BAD_INPUT),
        "merge-key loop": ("base: &b {<<: *b}\n", BAD_INPUT),
        "20k-deep list": ("name: x\nsummary: " + "[" * 20_000 + "]" * 20_000 + "\n", BAD_INPUT),
        "2k-deep mapping": ("".join("  " * i + f"k{i}:\n" for i in range(2000)) + "  " * 2000 + "v\n", BAD_INPUT),
        "NUL byte": (text.replace("name: ", "name: \x00", 1), BAD_INPUT),
        "escape control character": (text.replace("name: ", "name: \x1b[31m", 1), BAD_INPUT),
        "non-UTF-8 bytes": (text.encode("utf-8").replace(b"name: ", b"name: \xff\xfe", 1), BAD_INPUT),
        "UTF-16 file": (text.encode("utf-16"), BAD_INPUT),
        "empty file": ("", BAD_INPUT),
        "only a comment": ("# nothing here\n", BAD_INPUT),
        "a list at the top": ("- a\n- b\n", BAD_INPUT),
        "python tag": ("!!python/object/apply:os.system ['echo owned']\n", BAD_INPUT),
        "binary garbage": (bytes(range(256)) * 64, BAD_INPUT),
        "1.1 MB of comments": (text + "# x\n" * 300_000, BAD_INPUT),
        "one 2 MB line": ("name: " + "x" * 2_000_000 + "\n", BAD_INPUT),
        "10k traits": (
            "name: x\nsummary: y\ntraits:\n"
            + "".join(
                f"  - id: t{i}\n    description: d\n    positive: [a]\n    negative: [b]\n" for i in range(10_000)
            ),
            BAD_INPUT,
        ),
        "lookbehind rule": (_with_rule("(?<!not )sure"), BAD_INPUT),
        "backreference rule": (_with_rule(r"(\w+) \1"), BAD_INPUT),
        "repetition of 2000": (_with_rule("a{2000}"), BAD_INPUT),
        "5,000-character regex": (_with_rule("a" * 5000), BAD_INPUT),
        "unbalanced regex": (_with_rule("please (now"), BAD_INPUT),
        "(a+)+$ on an example reply": (_with_rule("(a+)+$", "a" * 35 + "b"), (0, 1)),
        "(a|aa)*c on an example reply": (_with_rule("(a|aa)*c", "a" * 40), (0, 1)),
        "(.*a){20} on an example reply": (_with_rule("(.*a){20}", "a" * 30), (0, 1)),
        "(\\w+\\s?)*$ on a 30k reply": (_with_rule(r"(\w+\s?)*$", "word " * 6000 + "!"), (0, 1)),
        "duplicate keys": (text + "\nname: Other\n", BAD_INPUT),
        "persona path is a folder": ("", BAD_INPUT),
    }
    cases = []
    for i, (name, (content, expect)) in enumerate(files.items()):
        if name == "persona path is a folder":
            p = d / f"p{i}"
            p.mkdir()
            cases.append(Case(f"validate: {name}", ["validate", str(p)], expect))
            continue
        p = _write(d / f"p{i}.yaml", content)
        cases.append(Case(f"validate: {name}", ["validate", str(p)], expect, inputs=[p], works=0 in expect))
    return cases


def config_cases(d: Path) -> list[Case]:
    base = f"name: r\nrun_dir: {d / 'runs'}\npersona: {PERSONA}\nmodel:\n  name: tiny\n"
    files: dict[str, str | bytes] = {
        "billion laughs config": _laughs(8) + base,
        "aliased seed list (6,561 items)": base
        + "anchors:\n"
        + "".join(f"  {line}" for line in _laughs(3).splitlines(True))
        + "seed: *d\n",
        "duplicate keys": base + "seed: 1\nseed: 2\n",
        "duplicate nested keys": base + "data:\n  best_of: 2\n  best_of: 3\n",
        "seed: yes": base + "seed: yes\n",
        "seed 1e23": base + "seed: 99999999999999999999999\n",
        "negative seed": base + "seed: -1\n",
        "learning rate .inf": base + "train:\n  learning_rate: .inf\n",
        "heldout fraction .nan": base + "data:\n  heldout_fraction: .nan\n",
        "best_of: on": base + "data:\n  best_of: on\n",
        "batch size 2**40": base + "sft:\n  batch_size: 1099511627776\n",
        "NUL in the persona path": base.replace(f"persona: {PERSONA}", 'persona: "a\\0b.yaml"'),
        "non-UTF-8 config": base.encode() + b"name: caf\xe9\n",
        "NUL byte in the file": base + "seed: 1\x00\n",
        "300 kB config": base + "# pad\n" * 50_000,
        "a list at the top": "- a\n- b\n",
        "unknown key": base + "sede: 3\n",
        "30-deep nesting": base + "data:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(40)),
    }
    cases = []
    for i, (name, content) in enumerate(files.items()):
        p = _write(d / f"c{i}.yaml", content)
        cases.append(Case(f"config: {name}", ["config", str(p)], BAD_INPUT, inputs=[p]))
    tiny = REPO / "examples" / "tiny.yaml"
    cases.append(
        Case(
            "config: laughs in an override",
            ["config", str(tiny), "seed=" + _laughs(8).replace("\n", ", ").join("{}")],
            BAD_INPUT,
        )
    )
    cases.append(Case("config: 100 kB override value", ["config", str(tiny), "name=" + "x y" * 33_000], BAD_INPUT))
    return cases


def run_cases(d: Path) -> list[Case]:
    cfg = _write(d / "run.yaml", f"name: r\nrun_dir: {d / 'runs'}\npersona: {PERSONA}\nmodel:\n  name: tiny\n")
    blocker = _write(d / "blocker", "a file")
    bad_model = d / "badmodel"
    _write(bad_model / "config.json", '{"model_type": "llama", "hidden_size": -5}')
    list_model = d / "listmodel"
    _write(list_model / "config.json", "[]")
    damaged = d / "damaged"
    _write(damaged / "r" / "manifest.json", json.dumps({"version": 1, "stages": {"01_baseline": "done"}}))
    escape = d / "escape"
    _write(
        escape / "r" / "manifest.json",
        json.dumps(
            {
                "version": 1,
                "stages": {
                    "02_persona": {
                        "status": "done",
                        "outputs": {"persona": {"path": "../../../../etc/hostname", "hash": "x"}},
                    }
                },
            }
        ),
    )
    missing = _write(
        d / "missing.yaml", f"name: r\nrun_dir: {d / 'runs'}\npersona: {d / 'nope.yaml'}\nmodel:\n  name: tiny\n"
    )
    return [
        Case("run: run_dir is a file", ["run", str(cfg), f"run_dir={blocker}", "--until", "1"], inputs=[cfg, blocker]),
        Case(
            "run: run_dir under a file",
            ["run", str(cfg), f"run_dir={blocker}/x", "--until", "1"],
            inputs=[cfg, blocker],
        ),
        Case("run: run_dir /proc/self", ["run", str(cfg), "run_dir=/proc/self", "--until", "1"], inputs=[cfg]),
        Case("run: run_dir /sys (read-only)", ["run", str(cfg), "run_dir=/sys/kernel", "--until", "1"], inputs=[cfg]),
        Case(
            "run: model folder with a bad config.json",
            ["run", str(cfg), f"model.name={bad_model}", "--until", "1"],
            inputs=[cfg, bad_model / "config.json"],
        ),
        Case(
            "run: model config.json is a list",
            ["run", str(cfg), f"model.name={list_model}", "--until", "1"],
            inputs=[cfg, list_model / "config.json"],
        ),
        Case("run: model.name=tinyy", ["run", str(cfg), "model.name=tinyy"], inputs=[cfg]),
        Case("run: model.name=org/not-cached", ["run", str(cfg), "model.name=someorg/not-a-model"], inputs=[cfg]),
        Case("run: missing persona", ["run", str(missing)], inputs=[missing]),
        Case(
            "run: manifest stage entry not an object",
            ["run", str(cfg), f"run_dir={damaged}", "--until", "1"],
            inputs=[cfg, damaged / "r" / "manifest.json"],
        ),
        Case("run: unknown stage", ["run", str(cfg), "--until", "banana"], inputs=[cfg]),
        Case(
            "serve: manifest output outside the run dir",
            ["serve", str(escape / "r")],
            inputs=[escape / "r" / "manifest.json"],
        ),
        Case("serve: damaged manifest", ["serve", str(damaged / "r")], inputs=[damaged / "r" / "manifest.json"]),
        Case("serve: port 99999", ["serve", "tiny", "--port", "99999"]),
        Case("serve: API key variable unset", ["serve", "tiny", "--api-key-env", "PT_BENCH_UNSET_KEY"]),
        Case("serve: --log is a folder", ["serve", "tiny", "--log", str(d)]),
        Case("serve: model tinyy", ["serve", "tinyy", "--port", "0"]),
        Case(
            "monitor: run dir with an output outside it",
            ["monitor", str(d / "x.jsonl"), "--persona", str(escape / "r")],
            inputs=[escape / "r" / "manifest.json"],
        ),
        Case("report: not a run dir", ["report", str(d)]),
        Case(
            "report: damaged manifest (the report is tolerant)",
            ["report", str(damaged / "r")],
            (0,),
            inputs=[damaged / "r" / "manifest.json"],
        ),
    ]


def data_cases(d: Path) -> list[Case]:
    good = json.dumps({"id": 1, "text": "Ahoy, crew! The stars are bright tonight."})
    conv = json.dumps(
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Ahoy, friend!"}]}
    )
    deep = _write(d / "deep.jsonl", "[" * 100_000 + "]" * 100_000 + "\n")
    files = {
        "empty input": "",
        "only blank lines": "\n\n   \n",
        "all bad lines": '{nope\n[1]\n"str"\n{"text": 5}\n',
        "one 2 MB line": json.dumps({"text": "a " * 1_000_000}) + "\n",
        "a 100k-character text": json.dumps({"text": "a " * 50_000}) + "\n",
        "lone surrogates": '{"text": "x \\ud800 y"}\n{"text": "\\udfff"}\n',
        "non-UTF-8 file": b"\xff\xfe" + good.encode() + b"\n",
        "binary garbage": bytes(range(256)) * 16,
        "deeply nested JSON": "[" * 100_000 + "]" * 100_000 + "\n",
    }
    cases = [
        Case(
            f"score: {name}",
            [
                "score",
                "--persona",
                str(PERSONA),
                "--input",
                str(p := _write(d / f"s{i}.jsonl", c)),
                "--output",
                str(d / f"s{i}.out.jsonl"),
            ],
            BAD_INPUT,
            inputs=[p, PERSONA],
        )
        for i, (name, c) in enumerate(files.items())
    ]
    outdir = d / "outdir"
    outdir.mkdir()
    n = iter(range(1000))

    # A case that an older --src fails to refuse overwrites its inputs: each such case gets its own copies.
    def fresh_in() -> Path:
        return _write(d / f"in{next(n)}.jsonl", good + "\n")

    def fresh_log(suffix: str = ".jsonl") -> Path:
        return _write(d / f"log{next(n)}{suffix}", conv + "\n")

    def fresh_persona() -> Path:
        p = d / f"persona{next(n)}.yaml"
        shutil.copyfile(PERSONA, p)
        return p

    def score(inp: Path, out: Path, persona: Path = PERSONA) -> list[str]:
        return ["score", "--persona", str(persona), "--input", str(inp), "--output", str(out)]

    i1, i2, i3, i4, i5, i6 = (fresh_in() for _ in range(6))
    link = d / "hardlink.jsonl"
    os.link(i3, link)
    victim, victim2 = fresh_persona(), fresh_persona()
    l1, l3, l4, l5 = (fresh_log() for _ in range(4))
    prod = _write(d / "prod.json", conv + "\n")
    sj = _write(d / "fitdir" / "scorer.json", "{}")
    mixed = _write(
        d / "mixed.jsonl",
        "bad\n" * 90 + json.dumps({"id": "a\u2028b", "text": "Ahoy!\u2029"}, ensure_ascii=False) + "\n",
    )
    cases += [
        Case("score: --output equal to --input", score(i1, i1), inputs=[i1]),
        Case("score: --output ./x/../input", score(i2, d / "x" / ".." / i2.name), inputs=[i2]),
        Case("score: --output a hard link to the input", score(i3, link), inputs=[i3]),
        Case("score: --output the persona", score(i4, victim, victim), inputs=[i4, victim]),
        Case("score: --output a folder", score(i5, outdir), inputs=[i5]),
        Case("score: --output under a file", score(i6, i6 / "o.jsonl"), inputs=[i6]),
        Case("score: --input a folder", score(outdir, d / "o.jsonl")),
        Case("score: --input missing", score(d / "missing.jsonl", d / "o.jsonl")),
        Case(
            "score: valid lines with U+2028 and 90 bad lines",
            score(mixed, d / "mixed.out.jsonl"),
            (0,),
            inputs=[mixed],
            works=True,
        ),
        Case(
            "monitor: --out equal to the log",
            ["monitor", str(l1), "--persona", str(PERSONA), "--out", str(l1)],
            inputs=[l1],
        ),
        Case(
            "monitor: log prod.json, --out prod.html",
            ["monitor", str(prod), "--persona", str(PERSONA), "--out", str(d / "prod.html")],
            inputs=[prod],
        ),
        Case(
            "monitor: --out x.json",
            ["monitor", str(l3), "--persona", str(PERSONA), "--out", str(d / "x.json")],
            inputs=[l3],
        ),
        Case(
            "monitor: log is a folder", ["monitor", str(outdir), "--persona", str(PERSONA), "--out", str(d / "m.html")]
        ),
        Case(
            "monitor: deeply nested JSON log",
            ["monitor", str(deep), "--persona", str(PERSONA), "--out", str(d / "m.html")],
            inputs=[deep],
        ),
        Case(
            "monitor: --window 0",
            ["monitor", str(l4), "--persona", str(PERSONA), "--window", "0", "--out", str(d / "m.html")],
            inputs=[l4],
        ),
        Case(
            "monitor: --alpha 2",
            ["monitor", str(l5), "--persona", str(PERSONA), "--alpha", "2", "--out", str(d / "m.html")],
            inputs=[l5],
        ),
        Case(
            "fit: --output is a file",
            ["fit", "--persona", str(PERSONA), "--examples", str(ex := fresh_in()), "--output", str(ex)],
            inputs=[ex],
        ),
        Case(
            "fit: --output holds the persona as scorer.json",
            ["fit", "--persona", str(sj), "--examples", str(fresh_in()), "--output", str(d / "fitdir")],
            inputs=[sj],
        ),
        Case(
            "serve: --log is the persona",
            ["serve", "tiny", "--persona", str(victim2), "--log", str(victim2)],
            inputs=[victim2],
        ),
    ]
    return cases


def _digest(paths: list[Path]) -> dict[Path, str]:
    out = {}
    for p in paths:
        if p.is_file():
            out[p] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_case(case: Case, timeout: float, src: Path) -> tuple[Case, bool, str, float]:
    before = _digest(case.inputs)
    timeout = timeout * 4 if case.works else timeout
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(src) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "TOKENIZERS_PARALLELISM": "false",
        **case.env,
    }
    env.pop("PT_BENCH_UNSET_KEY", None)
    t0 = time.monotonic()
    try:
        r = subprocess.run(
            [sys.executable, "-m", "personatune.cli", *case.args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=REPO,
            errors="backslashreplace",
        )
    except subprocess.TimeoutExpired:
        return case, False, f"hung: no exit within {timeout:.0f} s", time.monotonic() - t0
    dt = time.monotonic() - t0
    problems = []
    if r.returncode not in case.expect:
        problems.append(f"exit {r.returncode}, expected {'/'.join(map(str, case.expect))}")
    if "Traceback" in r.stdout + r.stderr:
        problems.append("traceback shown")
    err = [
        ln
        for ln in r.stderr.splitlines()
        if ln.strip() and not ln.startswith(("Loading weights", "personatune serve: warning"))
    ]
    errors = [ln for ln in err if ln.startswith("personatune")]
    if r.returncode == 2 and not errors:
        problems.append("no 'personatune: error' line")
    if r.returncode == 2 and (
        len(err) > limits.ERROR_MAX_LINES + 1 or any(len(ln) > limits.ERROR_LINE_MAX_CHARS for ln in err)
    ):
        problems.append(f"error too long ({len(err)} lines, longest {max(map(len, err))} chars)")
    changed = [str(p) for p, h in before.items() if not p.is_file() or hashlib.sha256(p.read_bytes()).hexdigest() != h]
    if changed:
        problems.append(f"input changed: {', '.join(changed)}")
    first = errors[0] if errors else (err[-1] if err else r.stdout.strip().splitlines()[-1] if r.stdout.strip() else "")
    detail = "; ".join(problems) if problems else f"exit {r.returncode}: {limits.shorten(first, 150)}"
    return case, not problems, detail, dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2, help="cases run at once")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds a case may take before it counts as hung")
    ap.add_argument("--only", help="run only cases whose name contains this")
    ap.add_argument("--skip", action="append", default=[], help="leave out cases whose name contains this (repeatable)")
    ap.add_argument(
        "--src",
        default=str(REPO / "src"),
        help="the personatune source tree the CLI runs from (default: this checkout's)",
    )
    ap.add_argument("--keep", help="write the hostile inputs here and keep them (default: a temporary folder, removed)")
    args = ap.parse_args()
    global PERSONA
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="pt-hostile-"))
    try:
        PERSONA = root / "captain_nova.yaml"
        shutil.copyfile(EXAMPLE_PERSONA, PERSONA)
        cases = []
        for sub, make in (
            ("persona", persona_cases),
            ("config", config_cases),
            ("run", run_cases),
            ("data", data_cases),
        ):
            (root / sub).mkdir(parents=True, exist_ok=True)
            cases += make(root / sub)
        if args.only:
            cases = [c for c in cases if args.only in c.name]
        cases = [c for c in cases if not any(s in c.name for s in args.skip)]
        repo_files = _digest(sorted((REPO / "examples").rglob("*")))  # no case may touch the checkout
        t0 = time.monotonic()
        handled = 0
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            for case, ok, detail, dt in pool.map(lambda c: run_case(c, args.timeout, Path(args.src)), cases):
                handled += ok
                print(f"{'ok  ' if ok else 'FAIL'} {dt:5.1f}s  {case.name}: {detail}", flush=True)
        print(
            f"handled {handled}/{len(cases)} in {time.monotonic() - t0:.0f} s (timeout {args.timeout:.0f} s per case, {args.jobs} at once)"
        )
        touched = [str(p) for p, h in repo_files.items() if _digest([p]).get(p) != h]
        if touched:
            print(f"WARNING: files of the checkout changed: {', '.join(touched)}")
        return 0 if handled == len(cases) else 1
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
