"""`personatune serve`: real HTTP on 127.0.0.1 against a tiny saved model.

The server runs in a thread (tests/background_server.py: uvicorn on a socket bound to a free port);
every test talks to it over loopback with httpx. The persona scorer is a stub here (the tiny model writes
gibberish; what is tested is the plumbing: background scoring, rolling gauges and counts); the real Scorer
is exercised by tests/unit/test_monitor.py.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from personatune.errors import ConfigError, RunDirError
from personatune.scoring.record import ResponseScore
from personatune.serve import ServeLimits, create_app, parse_request, resolve_target
from tests.background_server import BackgroundServer

# Every test here runs a tiny in-process model (a backend, or the app serving one): the stage tier.
pytestmark = pytest.mark.stage

TRAITS = ["warm", "curious"]


class StubScorer:
    """Deterministic stand-in for Scorer: a response is consistent when its length in characters is even."""

    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def score(self, texts, prompts=None, contexts=None, targets=None, ids=None):
        with self.lock:
            self.calls += 1
        out = []
        for i, t in enumerate(texts):
            even = len(t) % 2 == 0
            out.append(
                ResponseScore(
                    id=ids[i] if ids else str(i),
                    traits={k: 0.7 for k in TRAITS},
                    violations={"warm": 0.1 if even else 0.9, "curious": 0.1},
                    style={"words": float(len(t.split()))},
                    style_match=0.8,
                    rules={},
                    consistent=even,
                    consistency=0.8 if even else 0.2,
                )
            )
        return out


def parse_prometheus(text: str) -> dict[tuple[str, frozenset], float]:
    """name + labels -> value for every sample line; raises on a line that is not valid exposition format."""
    out = {}
    sample = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$")
    for line in text.splitlines():
        if not line or line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) \S+ .+$", line) or not line, line
            continue
        m = sample.match(line)
        assert m, f"bad exposition line: {line!r}"
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        out[(m.group(1), labels)] = float(m.group(4))
    return out


def metric(samples, name, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from personatune.models import build_tiny_model, save_model

    path = tmp_path_factory.mktemp("tiny") / "model"
    save_model(*build_tiny_model(seed=0), path)
    return path


@pytest.fixture(scope="module")
def backend(tiny_dir):
    from personatune.generation.hf import HFBackend
    from personatune.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(str(tiny_dir))
    return HFBackend(model, tok, batch_size=8)


@pytest.fixture(scope="module")
def server(backend, tmp_path_factory):
    log = tmp_path_factory.mktemp("log") / "served.jsonl"
    scorer = StubScorer()
    limits = ServeLimits(
        queue_size=32, batch_size=8, default_max_tokens=8, max_tokens=64, window=50, log_path=str(log), timeout_s=60.0
    )
    app = create_app(backend, "tiny", scorer=scorer, trait_ids=TRAITS, limits=limits, reference_words=10.0)
    with BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client, log, scorer


def chat(client, **kw):
    body = {"messages": [{"role": "user", "content": "Hello there, how are you?"}], "max_tokens": 8, "temperature": 0.0}
    body.update(kw)
    return client.post("/v1/chat/completions", json=body)


def healthy(client) -> bool:
    r = client.get("/health")
    return r.status_code == 200 and r.json()["status"] == "ok"


def test_valid_completion_openai_shape(server):
    client, _, _ = server
    r = chat(client)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "tiny" and body["id"].startswith("chatcmpl-")
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    u = body["usage"]
    assert (
        u["prompt_tokens"] > 5
        and 0 <= u["completion_tokens"] <= 8
        and u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    )
    # Greedy decoding is deterministic: the same request gives the same reply.
    assert chat(client).json()["choices"][0]["message"]["content"] == choice["message"]["content"]
    models = client.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["tiny"]


BAD_REQUESTS = [
    ("malformed json", b'{"messages": [', "application/json", 400),
    ("not an object", b"[1, 2, 3]", "application/json", 422),
    ("missing messages", json.dumps({"max_tokens": 4}).encode(), "application/json", 422),
    ("empty messages", json.dumps({"messages": []}).encode(), "application/json", 422),
    (
        "content not a string",
        json.dumps({"messages": [{"role": "user", "content": 5}]}).encode(),
        "application/json",
        422,
    ),
    ("bad role", json.dumps({"messages": [{"role": "wizard", "content": "hi"}]}).encode(), "application/json", 422),
    (
        "max_tokens as string",
        json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": "8"}).encode(),
        "application/json",
        422,
    ),
    (
        "temperature out of range",
        json.dumps({"messages": [{"role": "user", "content": "hi"}], "temperature": 9.0}).encode(),
        "application/json",
        422,
    ),
    (
        "stream true",
        json.dumps({"messages": [{"role": "user", "content": "hi"}], "stream": True}).encode(),
        "application/json",
        400,
    ),
    ("n > 1", json.dumps({"messages": [{"role": "user", "content": "hi"}], "n": 2}).encode(), "application/json", 400),
    (
        "tools",
        json.dumps({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}).encode(),
        "application/json",
        400,
    ),
    (
        "max_tokens over limit",
        json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10_000}).encode(),
        "application/json",
        400,
    ),
    (
        "huge body",
        json.dumps({"messages": [{"role": "user", "content": "x" * 1_000_000}]}).encode(),
        "application/json",
        413,
    ),
    ("binary garbage", bytes(range(256)) * 4, "application/octet-stream", 400),
    # issue 16: these gave 500, or were served by the wrong model.
    (
        "seed 2**80",
        json.dumps({"messages": [{"role": "user", "content": "hi"}], "seed": 2**80}).encode(),
        "application/json",
        422,
    ),
    ("lone surrogate", b'{"messages": [{"role": "user", "content": "hi \\ud800 there"}]}', "application/json", 400),
    (
        "lone surrogate in a bad field",
        b'{"messages": [{"role": "wizard\\udc00", "content": "hi"}]}',
        "application/json",
        422,
    ),
    (
        "another model",
        json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode(),
        "application/json",
        404,
    ),
]


@pytest.mark.parametrize("name,body,ctype,status", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_get_4xx_and_server_stays_up(server, name, body, ctype, status):
    client, _, _ = server
    r = client.post("/v1/chat/completions", content=body, headers={"content-type": ctype})
    assert r.status_code == status, (name, r.status_code, r.text[:300])
    err = r.json()["error"]
    assert err["code"] == status and err["message"]
    assert healthy(client)


def test_other_paths_and_methods(server):
    client, _, _ = server
    assert client.get("/v1/chat/completions").status_code == 405
    assert client.get("/nope").status_code == 404
    assert healthy(client)


def test_prompt_longer_than_context_is_400(server):
    client, _, _ = server
    # ~7 tokens per repetition: 1500 are ~10,000 tokens, past the tiny model's 4096-token window
    # (and 28 KB, under the body limit).
    r = chat(client, messages=[{"role": "user", "content": "hello there friend " * 1500}], max_tokens=8)
    assert r.status_code == 400 and "context" in r.json()["error"]["message"]
    assert healthy(client)


def test_load_200_requests_20_concurrent_then_metrics_match(server):
    client, log, scorer = server
    before = parse_prometheus(client.get("/metrics").text)
    n_ok_before = metric(before, "personatune_requests_total", method="POST", path="/v1/chat/completions", status="200")
    n_hist_before = metric(before, "personatune_request_latency_seconds_count", path="/v1/chat/completions")
    scored_before = metric(before, "personatune_scored_responses_total")

    def one(i: int) -> int:
        return chat(
            client,
            messages=[{"role": "user", "content": f"Tell me something about number {i}."}],
            temperature=0.7,
            max_tokens=8,
        ).status_code

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=20) as pool:
        codes = list(pool.map(one, range(200)))
    elapsed = time.perf_counter() - t0
    print(f"200 requests, 20 concurrent: {elapsed:.1f} s")
    assert codes.count(200) == 200, {c: codes.count(c) for c in set(codes)}

    # Scoring is asynchronous: wait until the worker has caught up, then every served reply is counted.
    deadline = time.monotonic() + 30
    while True:
        after = parse_prometheus(client.get("/metrics").text)
        ok = metric(after, "personatune_requests_total", method="POST", path="/v1/chat/completions", status="200")
        if (
            metric(after, "personatune_scored_responses_total") >= scored_before + 200
            and metric(after, "personatune_scoring_queue_depth") == 0
        ):
            break
        assert time.monotonic() < deadline, "scoring did not catch up within 30 s"
        time.sleep(0.1)
    assert ok - n_ok_before == 200
    hist = metric(after, "personatune_request_latency_seconds_count", path="/v1/chat/completions")
    assert hist - n_hist_before == 200
    assert metric(after, "personatune_request_latency_seconds_bucket", path="/v1/chat/completions", le="+Inf") == hist
    assert metric(after, "personatune_scored_responses_total") - scored_before == 200
    assert metric(after, "personatune_scoring_dropped_total") == 0
    assert metric(after, "personatune_generation_queue_depth") == 0
    # Rolling window (50): its gauges must equal the stub's verdicts on the last 50 logged replies.
    assert metric(after, "personatune_rolling_window_responses") == 50
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    last = [r["messages"][-1]["content"] for r in rows[-50:]]
    want = sum(len(t) % 2 == 0 for t in last) / 50
    assert metric(after, "personatune_rolling_consistency_rate") == pytest.approx(want)
    assert metric(after, "personatune_rolling_trait_adherence", trait="warm") == pytest.approx(want)
    assert metric(after, "personatune_rolling_trait_adherence", trait="curious") == 1.0
    words = sum(len(t.split()) for t in last) / 50
    assert metric(after, "personatune_rolling_words_mean") == pytest.approx(words)
    assert metric(after, "personatune_style_words_drift") == pytest.approx((words - 10.0) / 10.0)
    assert healthy(client)


def test_log_is_monitor_input(server):
    from personatune.monitor import read_conversations

    client, log, _ = server
    assert chat(client).status_code == 200
    deadline = time.monotonic() + 10
    while not log.exists() or not log.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    convs, bad = read_conversations(log)
    assert not bad and convs and convs[0].messages[-1]["role"] == "assistant"


class BlockingBackend:
    """Wraps a real backend; generation waits on an event so the queue can be filled on purpose."""

    def __init__(self, inner) -> None:
        self.inner, self.tokenizer, self.model = inner, inner.tokenizer, inner.model
        self.release = threading.Event()
        self.started = threading.Event()

    def generate_ids(self, conversations, **kw):
        self.started.set()
        self.release.wait(30)
        return self.inner.generate_ids(conversations, **kw)


def test_full_queue_gives_503_with_retry_after_then_recovers(backend):
    blocking = BlockingBackend(backend)
    app = create_app(
        blocking, "tiny", limits=ServeLimits(queue_size=1, batch_size=1, default_max_tokens=4, timeout_s=30)
    )
    with BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=30) as client, ThreadPoolExecutor(2) as pool:
        first = pool.submit(chat, client)  # taken by the worker, blocks in generate
        assert blocking.started.wait(10)
        second = pool.submit(chat, client)  # waits in the queue (capacity 1)
        deadline = time.monotonic() + 10
        while client.get("/health").json()["queue_depth"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        third = chat(client)
        assert third.status_code == 503 and int(third.headers["retry-after"]) >= 1
        assert healthy(client)
        blocking.release.set()
        assert first.result().status_code == 200 and second.result().status_code == 200
        assert chat(client).status_code == 200


def test_timeout_gives_504_and_server_recovers(backend):
    blocking = BlockingBackend(backend)
    app = create_app(
        blocking, "tiny", limits=ServeLimits(queue_size=4, batch_size=1, default_max_tokens=4, timeout_s=0.3)
    )
    with BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        r = chat(client)
        assert r.status_code == 504 and "timeout" in r.json()["error"]["message"]
        blocking.release.set()
        assert chat(client).status_code == 200
        samples = parse_prometheus(client.get("/metrics").text)
        assert (
            metric(samples, "personatune_requests_total", method="POST", path="/v1/chat/completions", status="504") == 1
        )


def test_scorer_failure_is_counted_not_fatal(backend):
    class Broken:
        def score(self, texts, **kw):
            raise RuntimeError("boom")

    app = create_app(backend, "tiny", scorer=Broken(), trait_ids=TRAITS, limits=ServeLimits(default_max_tokens=4))
    with BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert chat(client).status_code == 200
        deadline = time.monotonic() + 10
        while metric(parse_prometheus(client.get("/metrics").text), "personatune_scoring_errors_total") < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert healthy(client) and chat(client).status_code == 200
        samples = parse_prometheus(client.get("/metrics").text)
        assert math.isnan(metric(samples, "personatune_rolling_consistency_rate"))


def test_parse_request_defaults_and_limits():
    lim = ServeLimits(default_max_tokens=16, max_tokens=32)
    req = parse_request(b'{"messages": [{"role": "user", "content": "hi"}]}', lim)
    assert req.max_tokens == 16 and req.temperature == 1.0 and req.top_p == 1.0
    assert (
        parse_request(b'{"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 20}', lim).max_tokens
        == 20
    )


def test_limits_validation():
    with pytest.raises(ConfigError, match="queue_size"):
        ServeLimits(queue_size=0)
    with pytest.raises(ConfigError, match="default_max_tokens"):
        ServeLimits(default_max_tokens=100, max_tokens=10)


def test_resolve_target_run_dir(tmp_path, tiny_dir):
    from personatune.rundir import RunDir, StageRecord

    rd = RunDir(tmp_path / "run")
    rd.save_manifest()
    with pytest.raises(RunDirError, match="no trained model"):
        resolve_target(str(rd.root))
    (rd.root / "02_persona").mkdir()
    (rd.root / "02_persona" / "persona.yaml").write_text("name: x\n")
    rd.set_record(
        "02_persona",
        StageRecord(status="done", outputs=rd.hash_outputs({"persona": rd.root / "02_persona" / "persona.yaml"})),
    )
    for stage in ("05_optimization", "06_iterations"):
        d = rd.root / stage / "model"
        d.mkdir(parents=True)
        (d / "config.json").write_text("{}")
        status = "done" if stage == "05_optimization" else "failed"
        rd.set_record(stage, StageRecord(status=status, outputs=rd.hash_outputs({"model": d})))
    t = resolve_target(str(rd.root))
    assert t.model.endswith("05_optimization/model") and t.persona.endswith("persona.yaml") and t.evaluator is None
    rd.set_record(
        "06_iterations",
        StageRecord(status="done", outputs=rd.hash_outputs({"model": rd.root / "06_iterations" / "model"})),
    )
    assert resolve_target(str(rd.root)).model.endswith("06_iterations/model")
    # A plain model path passes through; --evaluator without a persona is refused.
    assert resolve_target(str(tiny_dir)).model == str(tiny_dir)
    with pytest.raises(ConfigError, match="--persona"):
        resolve_target(str(tiny_dir), evaluator="somewhere")


def test_serve_main_end_to_end_in_a_subprocess(tiny_dir, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    log = tmp_path / "served.jsonl"
    code = (
        "import sys; from personatune.serve import serve_main; "
        "sys.exit(serve_main(sys.argv[1], port=0, default_max_tokens=4, log_path=sys.argv[2]))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tiny_dir), str(log)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = proc.stdout.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
        url = f"http://127.0.0.1:{m.group(1)}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "server did not come up"
            time.sleep(0.1)
        r = httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}, timeout=30)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 4
        assert "personatune_scored_responses_total 0" in httpx.get(url + "/metrics").text  # no persona: nothing scored
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert len(log.read_text().splitlines()) == 1  # the log was flushed by the graceful shutdown
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_busy_port_is_a_config_error(tiny_dir):
    import socket

    from personatune.serve import serve_main

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        with pytest.raises(ConfigError, match="cannot listen"):
            serve_main(str(tiny_dir), port=busy.getsockname()[1])
    finally:
        busy.close()


def test_api_key_is_required_when_configured_and_health_stays_open(backend, monkeypatch):
    from personatune.serve import read_api_key

    monkeypatch.setenv("PT_TEST_KEY", "s3cret-key")
    key = read_api_key("PT_TEST_KEY")
    app = create_app(backend, "tiny", limits=ServeLimits(default_max_tokens=4), api_key=key)
    with BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert chat(client).status_code == 401 and client.get("/metrics").status_code == 401
        r = client.post(
            "/v1/chat/completions",
            headers={"Authorization": "Bearer wrong"},
            json={"messages": [{"role": "user", "content": "hi"}]},
        )
        assert r.status_code == 401 and "s3cret" not in r.text and r.headers["www-authenticate"] == "Bearer"
        ok = client.post(
            "/v1/chat/completions",
            headers={"Authorization": "Bearer s3cret-key"},
            json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        )
        assert ok.status_code == 200 and healthy(client)
    monkeypatch.delenv("PT_TEST_KEY")
    with pytest.raises(ConfigError, match="PT_TEST_KEY: that environment variable is not set"):
        read_api_key("PT_TEST_KEY")


def test_exposure_warning_beyond_loopback():
    from personatune.serve import exposure_warning

    assert exposure_warning("127.0.0.1", None) is None and exposure_warning("::1", None) is None
    assert "anyone who can reach this port" in exposure_warning("0.0.0.0", None)
    assert "requests need the API key" in exposure_warning("192.168.1.5", "k")


def test_log_is_created_0600_and_may_not_be_an_input(tiny_dir, tmp_path):
    from personatune.serve import open_log, serve_main

    log = tmp_path / "logs" / "served.jsonl"
    open_log(log).close()
    assert (log.stat().st_mode & 0o777) == 0o600
    persona = tmp_path / "p.yaml"
    persona.write_text("name: x\n")
    with pytest.raises(ConfigError, match="--log .* is the same file as --persona"):
        serve_main(str(tiny_dir), persona=str(persona), log_path=str(persona))
    with pytest.raises(ConfigError, match="is the same file as .*the model"):
        serve_main(str(tiny_dir), log_path=str(tiny_dir / "config.json"))
    with pytest.raises(ConfigError, match="--log .* is a folder"):
        serve_main(str(tiny_dir), log_path=str(tmp_path))
    assert persona.read_text() == "name: x\n"


def test_scoring_thread_is_not_frozen_by_a_catastrophic_rule(backend):
    """The scoring worker runs the persona's rules; `(a+)+$` on a reply of 35 a's would hold Python's GIL for ages."""
    from personatune.persona import Behavior, Check
    from personatune.scoring.rules import compile_rules

    rules = compile_rules([Behavior(id="evil", description="d", check=Check(regex="(a+)+$"))])

    class RuleScorer(StubScorer):
        def score(self, texts, **kw):
            for _ in texts:
                rules("a" * 35 + "b")
            return super().score(texts, **kw)

    app = create_app(backend, "tiny", scorer=RuleScorer(), trait_ids=TRAITS, limits=ServeLimits(default_max_tokens=4))
    with BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert chat(client).status_code == 200
        deadline = time.monotonic() + 10
        while metric(parse_prometheus(client.get("/metrics").text), "personatune_scored_responses_total") < 1:
            assert time.monotonic() < deadline, "the scoring thread is stuck"
            time.sleep(0.05)
        assert healthy(client)


def test_metrics_exposition_names_and_format(server):
    """prometheus_client writes /metrics: the exposed names stay those of the hand-written exposition (no _created)."""
    from prometheus_client.parser import text_string_to_metric_families

    client, _, _ = server
    assert chat(client).status_code == 200  # so the request counter and histogram have samples even when run alone
    r = client.get("/metrics")
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name: f.type for f in text_string_to_metric_families(r.text)}
    names = {name for name, _ in parse_prometheus(r.text)}
    assert not any(n.endswith("_created") for n in names), sorted(names)
    want = {
        "requests_total",
        "generated_tokens_total",
        "generation_seconds_total",
        "scored_responses_total",
        "scoring_dropped_total",
        "scoring_errors_total",
        "request_latency_seconds_bucket",
        "request_latency_seconds_sum",
        "request_latency_seconds_count",
        "info",
        "generation_queue_depth",
        "generation_queue_capacity",
        "generation_in_flight",
        "scoring_queue_depth",
        "rolling_window_responses",
        "rolling_consistency_rate",
        "rolling_consistency_score_mean",
        "rolling_trait_adherence",
        "rolling_adherence_overall",
        "rolling_style_match_mean",
        "rolling_words_mean",
        "reference_words",
        "style_words_drift",
    }
    assert {"personatune_" + n for n in want} == names
    assert families["personatune_requests"] == "counter"
    assert families["personatune_request_latency_seconds"] == "histogram"
    samples = parse_prometheus(r.text)
    assert metric(samples, "personatune_info", model="tiny", scoring="on") == 1
    assert metric(samples, "personatune_generation_queue_capacity") == 32
    assert metric(samples, "personatune_reference_words") == 10.0
