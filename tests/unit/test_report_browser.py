"""The report in a real headless Chromium: it renders, with no console error and no network request.

Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON messages
separated by NUL bytes on file descriptors 3 and 4), so the test needs nothing beyond the standard
library. It skips when Chromium is not installed (Debian: `apt-get install chromium`). Any request
that is not file:, data: or about: is an error, and host resolution is disabled, so nothing can
leave the machine even if the report regressed.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from personatune.report import build_report

CHROMIUM = "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (/usr/bin/chromium); Debian: apt-get install -y chromium"
)

_spec = importlib.util.spec_from_file_location("_report_fixture", Path(__file__).with_name("test_report.py"))
_fixture = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixture)
make_run = _fixture.make_run

TIMEOUT_S = 45.0
_LAUNCH = (
    "import fcntl, os, sys; a, b = (fcntl.fcntl(int(x), fcntl.F_DUPFD, 10) for x in sys.argv[1:3]); "
    "os.dup2(a, 3); os.dup2(b, 4); os.execv(sys.argv[3], sys.argv[3:])"
)


class Chromium:
    """A headless Chromium and a minimal DevTools-protocol client on its debugging pipe."""

    def __init__(self, profile: Path, log: Path) -> None:
        to_child, self._w = os.pipe()  # we write commands -> Chromium reads fd 3
        self._r, from_child = os.pipe()  # Chromium writes fd 4 -> we read
        args = [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        # A tiny Python launcher moves our pipe ends to the descriptor numbers the protocol fixes (3 in,
        # 4 out); copying them above 9 first keeps one from overwriting the other. (dash cannot redirect fds > 9.)
        self._log, self._log_path = open(log, "wb"), log
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _LAUNCH, str(to_child), str(from_child), *args],
            pass_fds=(to_child, from_child),
            stdout=self._log,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
        )
        os.close(to_child)
        os.close(from_child)
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        """Send one command and wait for its reply (events that arrive meanwhile are kept)."""
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        while True:
            m = self._next()
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_event(self, method: str) -> dict[str, Any]:
        for e in self.events:
            if e.get("method") == method:
                return e
        while True:
            m = self._next()
            self.events.append(m)
            if m.get("method") == method:
                return m

    def _next(self) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT_S
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError(f"no DevTools message from Chromium within {TIMEOUT_S}s")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                self._log.flush()
                tail = [ln for ln in self._log_path.read_text(errors="replace").splitlines() if "dbus" not in ln][-5:]
                raise RuntimeError("Chromium closed its DevTools pipe; its log ends: " + " | ".join(tail))
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)
        os.close(self._r)
        self._log.close()


def open_page(path: Path, tmp: Path, screenshot: Path | None = None) -> tuple[dict[str, Any], list[str]]:
    """Load a local HTML file; return facts measured in the page and every error it raised.

    Errors: uncaught exceptions, console.error/assert calls, browser log entries of level error
    (failed loads, blocked resources), and any request to a URL that is not file:, data: or about:.
    """
    br = Chromium(tmp / "profile", tmp / "chromium.log")
    try:
        target = br.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        s = br.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            br.send(f"{domain}.enable", session=s)
        br.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1200, "height": 900, "deviceScaleFactor": 1, "mobile": False},
            session=s,
        )
        br.send("Page.navigate", {"url": path.resolve().as_uri()}, session=s)
        br.wait_event("Page.loadEventFired")
        facts = json.loads(
            br.send(
                "Runtime.evaluate",
                {
                    "returnByValue": True,
                    "expression": """JSON.stringify({
            title: document.title,
            sections: [...document.querySelectorAll('section')].map(e => e.id),
            svgs: [...document.querySelectorAll('svg')].map(e => { const r = e.getBoundingClientRect(); return [r.width, r.height]; }),
            scripts: document.scripts.length,
            samples: [...document.querySelectorAll('table.samples tbody tr:first-child td')].map(e => {
                const r = e.getBoundingClientRect(); return [r.left, r.top, r.width]; }),
            overflow: document.documentElement.scrollWidth - window.innerWidth,
            height: document.documentElement.scrollHeight })""",
                },
                session=s,
            )["result"]["value"]
        )
        if screenshot is not None:
            shot = br.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=s)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
        br.send("Runtime.evaluate", {"expression": "0"}, session=s)  # flush events queued during load
    finally:
        br.close()
    errors = []
    for e in br.events:
        m, p = e.get("method"), e.get("params", {})
        if m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            errors.append(
                f"exception: {d.get('text', '')} {d.get('exception', {}).get('description', '')} at {d.get('url', '')}:{d.get('lineNumber')}"[
                    :400
                ]
            )
        elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            errors.append("console.error: " + json.dumps(p.get("args", []))[:300])
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            errors.append("log: " + p["entry"].get("text", "")[:300] + " " + p["entry"].get("url", ""))
        elif m == "Network.requestWillBeSent" and not p.get("request", {}).get("url", "").startswith(
            ("file:", "data:", "about:")
        ):
            errors.append("network request: " + p["request"]["url"])
    return facts, errors


def test_report_renders_without_errors(tmp_path):
    report = build_report(make_run(tmp_path / "demo"))
    shot = Path(os.environ.get("PERSONATUNE_REPORT_SCREENSHOT") or tmp_path / "report.png")
    facts, errors = open_page(report, tmp_path, screenshot=shot)
    assert errors == []
    assert facts["title"] == "personatune report — demo-run"
    assert facts["sections"] == [
        "gates",
        "baseline",
        "persona",
        "coverage",
        "evaluation",
        "curves",
        "final",
        "samples",
        "files",
    ]
    assert facts["scripts"] == 0
    assert len(facts["svgs"]) == 8 and all(
        w > 100 and h > 40 for w, h in facts["svgs"]
    )  # every chart laid out with a real size
    assert facts["overflow"] <= 0  # nothing wider than a 1200 px window
    # Samples: baseline | baseline with the persona prompt | final, side by side in one row, equally wide.
    cells = facts["samples"]
    assert (
        len(cells) == 5
        and len({round(t) for _, t, _ in cells}) == 1
        and [x for x, _, _ in cells] == sorted(x for x, _, _ in cells)
    )
    assert len({round(w) for _, _, w in cells[2:]}) == 1 and cells[2][2] > 200
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_early_run_renders_without_errors(tmp_path):
    facts, errors = open_page(build_report(make_run(tmp_path / "early", upto=2)), tmp_path)
    assert errors == []
    assert len(facts["sections"]) == 9 and facts["svgs"] == []


def test_harness_detects_errors_and_requests(tmp_path):
    # The harness itself must be able to fail: a broken script and an external image are both caught.
    page = tmp_path / "bad.html"
    page.write_text(
        '<!DOCTYPE html><html><body><img src="http://report-test.invalid/x.png"><script>console.error("boom"); undefinedFn();</script></body></html>'
    )
    _, errors = open_page(page, tmp_path)
    assert any(e.startswith("exception:") and "undefinedFn" in e for e in errors)
    assert any(e.startswith("console.error:") and "boom" in e for e in errors)
    assert any(e == "network request: http://report-test.invalid/x.png" for e in errors)
