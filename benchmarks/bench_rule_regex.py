"""Rule-regex engines on hostile and typical patterns: Python `re`, the `regex` package with a timeout, RE2.

    python benchmarks/bench_rule_regex.py [--timeout 0.1] [--repeats 3]

Why: a persona's `check.regex` runs on every scored response. Python's `re` backtracks, so `(a+)+$`
hangs on a 35-character text (issue 16). Two bounded options were measured before choosing one for
scoring/rule_regex.py:

- the `regex` package (already installed with transformers) with a per-match `timeout`: every pattern
  is bounded by the timeout; what a timed-out check returns depends on the machine's speed and load;
- RE2 (`google-re2`): linear time for every pattern it accepts; refuses lookarounds and backreferences.

Prints, per (pattern, text): the time of each engine (Python `re` once, stopped after `--re-limit`
seconds; the others best of `repeats`), whether `regex` hit its timeout, and the answers; then compile time, the per-search cost on
a typical 1,000-character reply, and whether a `regex` match that runs into its timeout lets another
thread run (the GIL).
"""

from __future__ import annotations

import argparse
import re
import signal
import threading
import time

import re2
import regex

CASES = [
    # (label, pattern, text)
    ("(a+)+$ on 35 a's + b", r"(a+)+$", "a" * 35 + "b"),
    ("(a|aa)*c on 40 a's", r"(a|aa)*c", "a" * 40),
    ("(.*a){20} on 30 a's + b", r"(.*a){20}b$", "a" * 30 + "c"),
    (r"(\w+\s?)*$ on 1 MB of words + '!'", r"(\w+\s?)*$", "word " * 200_000 + "!"),
    (r"\bcheers\b on 1 MB of words", r"\bcheers\b", "word " * 200_000 + "cheers"),
    (r"\bahoy\b on a 1,000-char reply", r"\bahoy\b", "Ahoy there, friend! " * 50),
]


class _Stop(BaseException):
    pass


def with_limit(fn, seconds: float) -> tuple[float | None, object]:
    """(seconds, result) of fn(), or (None, None) when it runs past `seconds` (Python's re checks signals)."""

    def stop(signum, frame):
        raise _Stop

    old = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    t = time.perf_counter()
    try:
        out = fn()
        return time.perf_counter() - t, out
    except _Stop:
        return None, None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def best(fn, repeats: int) -> tuple[float, object]:
    t_best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        try:
            out = fn()
        except TimeoutError:
            out = "timeout"
        t_best = min(t_best, time.perf_counter() - t)
    return t_best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeout", type=float, default=0.1, help="the regex package's per-match timeout (seconds)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--re-limit", type=float, default=10.0, help="seconds Python's re may run on one case before it is stopped"
    )
    args = ap.parse_args()
    opts = re2.Options()
    opts.case_sensitive, opts.log_errors, opts.never_capture = False, False, True
    print(f"| pattern, text | Python re | regex, timeout {args.timeout:g} s | RE2 |")
    print("|---|---|---|---|")
    for label, pat, text in CASES:
        cells = []
        t, m = with_limit(lambda: re.compile(pat, re.I).search(text) is not None, args.re_limit)
        cells.append(f"{t * 1000:.2f} ms ({m})" if t is not None else f"stopped after {args.re_limit:g} s")
        rx = regex.compile(pat, regex.I)
        t, m = best(lambda: rx.search(text, timeout=args.timeout) is not None, args.repeats)
        cells.append(f"{t * 1000:.2f} ms ({m})")
        r2 = re2.compile(pat, opts)
        t, m = best(lambda: r2.search(text) is not None, args.repeats)
        cells.append(f"{t * 1000:.2f} ms ({m})")
        print(f"| {label} | " + " | ".join(cells) + " |")

    pats = [rf"\bcheers{i}\b|please (now|later)" for i in range(200)]
    for name, comp in (
        ("re", lambda p: re.compile(p, re.I)),
        ("regex", lambda p: regex.compile(p, regex.I)),
        ("re2", lambda p: re2.compile(p, opts)),
    ):
        t = time.perf_counter()
        for p in pats:
            comp(p)
        print(f"compile 200 patterns, {name}: {(time.perf_counter() - t) * 1000:.1f} ms")
    text = "Ahoy there, friend! " * 50
    for name, search in (
        ("re", re.compile(r"\bahoy\b", re.I).search),
        ("regex (no timeout)", regex.compile(r"\bahoy\b", regex.I).search),
        ("regex (timeout)", lambda s, c=regex.compile(r"\bahoy\b", regex.I): c.search(s, timeout=args.timeout)),
        ("re2", re2.compile(r"\bahoy\b", opts).search),
    ):
        t = time.perf_counter()
        for _ in range(10_000):
            search(text)
        print(
            f"10,000 searches on a 1,000-char reply, {name}: {(time.perf_counter() - t) * 1000:.1f} ms "
            f"({(time.perf_counter() - t) / 10_000 * 1e6:.2f} µs each)"
        )

    ticks: list[float] = []
    stop = threading.Event()

    def ticker() -> None:
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.005)

    th = threading.Thread(target=ticker)
    th.start()
    t0 = time.perf_counter()
    try:
        regex.compile(r"(\w+\s?)*$").search("word " * 20_000 + "!", timeout=1.0)
    except TimeoutError:
        pass
    stop.set()
    th.join()
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    print(
        f"regex with timeout 1 s while a 5 ms ticker thread runs: {time.perf_counter() - t0:.2f} s, "
        f"longest gap between ticks {max(gaps) * 1000:.0f} ms (the GIL is released)"
    )


if __name__ == "__main__":
    main()
