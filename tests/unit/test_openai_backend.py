"""OpenAIBackend and ResponseCache against a real HTTP server on 127.0.0.1 (tests/fake_openai_server.py)."""

import asyncio
import json
import logging
import time

import pytest

from personatune.errors import DataError, PersonatuneError
from personatune.generation import BackendError, GenerationBackend
from personatune.generation.cache import ResponseCache
from personatune.generation.openai_compat import ChatRequest, OpenAIBackend
from tests.fake_openai_server import FakeOpenAIServer


def conv(text):
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]


@pytest.fixture
def server():
    with FakeOpenAIServer() as srv:
        yield srv


def test_normal_completion_order_and_protocol(server):
    b = OpenAIBackend(server.base_url, "fake-model")
    assert isinstance(b, GenerationBackend)
    prompts = [f"question {i}" for i in range(10)]
    out = b.generate([conv(p) for p in prompts], max_new_tokens=16, temperature=0.0)
    assert [len(o) for o in out] == [1] * 10
    assert [o[0].split(" | ")[0] for o in out] == [f"echo: {p}" for p in prompts]
    body = server.requests[0]
    assert body["model"] == "fake-model" and body["max_tokens"] == 16 and body["temperature"] == 0.0
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}


def test_n_samples_get_distinct_seeds(server):
    b = OpenAIBackend(server.base_url, "fake-model")
    out = b.generate([conv("a"), conv("b")], max_new_tokens=8, temperature=0.8, n=3, seed=10)
    assert [len(o) for o in out] == [3, 3]
    assert [t.split(" | ")[1] for t in out[0]] == ["seed=10", "seed=11", "seed=12"]
    assert all(t.startswith("echo: b") for t in out[1])
    assert len(server.requests) == 6


def test_greedy_n_requests_once(server):
    b = OpenAIBackend(server.base_url, "fake-model")
    out = b.generate([conv("a")], max_new_tokens=8, temperature=0.0, n=4)
    assert len(out[0]) == 4 and len(set(out[0])) == 1
    assert len(server.requests) == 1


def test_retries_after_500_and_429(server):
    server.fail_next(500, 429, 503)
    b = OpenAIBackend(server.base_url, "fake-model", concurrency=1, max_retries=5)
    out = b.generate([conv("x")], max_new_tokens=8, temperature=0.0)
    assert out[0][0].startswith("echo: x")
    assert len(server.requests) == 4 and b.requests_made == 4


def test_retry_after_is_honoured(server):
    # The client's own backoff would be 0.5-1 s or (with retry-after-ms: 10) 10 ms; the server asks for 0.3 s.
    server.retry_headers = {"Retry-After": "0.3"}
    server.fail_next(429)
    b = OpenAIBackend(server.base_url, "fake-model", max_retries=1)
    t0 = time.monotonic()
    out = b.generate([conv("x")], max_new_tokens=8, temperature=0.0)
    assert time.monotonic() - t0 >= 0.3
    assert out[0][0].startswith("echo: x") and len(server.requests) == 2 and b.requests_made == 2


def test_retries_exhausted_gives_one_clear_error(server):
    server.fail_after(0, 500)
    b = OpenAIBackend(server.base_url, "fake-model", concurrency=2, max_retries=2)
    with pytest.raises(BackendError) as ei:
        b.generate([conv(str(i)) for i in range(4)], max_new_tokens=8, temperature=0.0)
    msg = str(ei.value)
    assert "HTTP 500" in msg and "3 attempts" in msg and server.base_url in msg and "\n" not in msg


def test_client_error_is_not_retried(server):
    server.fail_next(404)
    b = OpenAIBackend(server.base_url, "nope", max_retries=5)
    with pytest.raises(BackendError, match="404 for model 'nope'"):
        b.generate([conv("x")], max_new_tokens=8, temperature=0.0)
    assert len(server.requests) == 1


def test_concurrency_limit_respected(server):
    server.delay = 0.05
    b = OpenAIBackend(server.base_url, "fake-model", concurrency=3)
    b.generate([conv(str(i)) for i in range(12)], max_new_tokens=8, temperature=0.0)
    assert server.max_in_flight == 3  # requests overlap (>1) but never exceed the limit


def test_missing_server_names_url_and_fix():
    with FakeOpenAIServer() as srv:
        url = srv.base_url  # a port that was just free, now closed again
    b = OpenAIBackend(url, "m", max_retries=2)
    with pytest.raises(PersonatuneError) as ei:
        b.generate([conv("x"), conv("y")], max_new_tokens=8, temperature=0.0)
    msg = str(ei.value)
    assert url in msg and "cannot reach" in msg and "fix:" in msg and "3 attempts" in msg


def test_api_key_never_logged_or_in_errors(monkeypatch, caplog, server):
    secret = "sk-test-SECRET-0123456789"
    monkeypatch.setenv("PT_TEST_KEY", secret)
    caplog.set_level(logging.DEBUG)  # every logger, openai/httpx included
    b = OpenAIBackend(server.base_url, "fake-model", api_key_env="PT_TEST_KEY", max_retries=1)
    server.fail_next(500)
    b.generate([conv("x")], max_new_tokens=8, temperature=0.0)
    server.fail_next(401)
    with pytest.raises(BackendError) as ei:
        b.generate([conv("y")], max_new_tokens=8, temperature=0.0)
    assert server.auth_headers[-1] == f"Bearer {secret}"  # the key was really used
    assert "PT_TEST_KEY" in str(ei.value)  # the error names the variable ...
    exc = ei.value
    while exc is not None:  # ... but no exception in the chain carries the value
        assert secret not in str(exc) and secret not in repr(exc)
        exc = exc.__cause__ or exc.__context__
    assert secret not in caplog.text and secret not in repr(b) and secret not in str(vars(b))
    assert "retry 1/1" in caplog.text  # the retry was logged, without the key


def test_bad_parameters_raise_backend_error(server):
    with pytest.raises(BackendError, match="concurrency=0"):
        OpenAIBackend(server.base_url, "m", concurrency=0)
    b = OpenAIBackend(server.base_url, "m")
    with pytest.raises(BackendError, match="temperature"):
        b.generate([conv("x")], max_new_tokens=8, temperature=-1.0)
    with pytest.raises(BackendError, match=r"conversations\[0\]"):
        b.generate([[]], max_new_tokens=8, temperature=0.0)


def test_cache_resume_after_interruption(tmp_path, server):
    convs = [conv(f"item {i}") for i in range(20)]
    server.fail_after(7, 500)
    b = OpenAIBackend(
        server.base_url, "fake-model", concurrency=1, max_retries=1, cache=ResponseCache(tmp_path / "cache")
    )
    with pytest.raises(BackendError):
        b.generate(convs, max_new_tokens=8, temperature=0.7, n=2, seed=0)
    assert server.ok_count == 7
    done = {json.dumps(r, sort_keys=True) for r in server.requests[:7]}

    # Rerun with a fresh backend and a fresh cache object on the same file: only the missing 33 are asked.
    server.fail_after(None)
    server.requests.clear()
    b2 = OpenAIBackend(server.base_url, "fake-model", concurrency=4, cache=ResponseCache(tmp_path / "cache"))
    out = b2.generate(convs, max_new_tokens=8, temperature=0.7, n=2, seed=0)
    assert len(server.requests) == 40 - 7
    assert not done & {json.dumps(r, sort_keys=True) for r in server.requests}
    assert [t.split(" | ")[1] for t in out[3]] == ["seed=0", "seed=1"]
    assert all(o[0].startswith(f"echo: item {i}") for i, o in enumerate(out))

    # Fully cached: a third run makes no request at all; changed parameters are misses.
    server.requests.clear()
    b3 = OpenAIBackend(server.base_url, "fake-model", cache=ResponseCache(tmp_path / "cache"))
    assert b3.generate(convs, max_new_tokens=8, temperature=0.7, n=2, seed=0) == out
    assert server.requests == []
    b3.generate(convs[:1], max_new_tokens=9, temperature=0.7, n=1, seed=0)
    assert len(server.requests) == 1


def test_cache_tolerates_truncated_last_line(tmp_path, caplog):
    c = ResponseCache(tmp_path / "c.jsonl")
    c.put("a", {"text": "A"})
    c.put("b", {"text": "B"})
    c.close()
    with open(tmp_path / "c.jsonl", "ab") as f:
        f.write(b'{"k":"c","v":{"te')  # crash mid-write
    with caplog.at_level(logging.WARNING):
        c2 = ResponseCache(tmp_path / "c.jsonl")
    assert "truncated last line" in caplog.text
    assert len(c2) == 2 and c2.get("b") == {"text": "B"} and c2.get("c") is None
    c2.put("c", {"text": "C"})  # appending after recovery keeps the file valid
    c2.close()
    c3 = ResponseCache(tmp_path / "c.jsonl")
    assert len(c3) == 3 and c3.get("c") == {"text": "C"}


def test_cache_corrupt_middle_line_is_an_error(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"k":"a","v":1}\nnot json\n{"k":"b","v":2}\n')
    with pytest.raises(DataError, match="line 2"):
        ResponseCache(tmp_path / "c.jsonl")


def test_cache_key_depends_on_every_part():
    base = dict(backend="b", model="m", messages=[{"role": "user", "content": "x"}], params={"t": 0}, sample=0)
    k = ResponseCache.key(**base)
    assert ResponseCache.key(**dict(reversed(list(base.items())))) == k
    for field, other in [
        ("model", "m2"),
        ("sample", 1),
        ("params", {"t": 1}),
        ("messages", [{"role": "user", "content": "y"}]),
    ]:
        assert ResponseCache.key(**{**base, field: other}) != k


def test_sync_wrapper_works_inside_running_loop(server):
    b = OpenAIBackend(server.base_url, "fake-model")

    async def caller():
        return b.generate([conv("inside")], max_new_tokens=8, temperature=0.0)

    assert asyncio.run(caller())[0][0].startswith("echo: inside")


def test_logprobs_are_returned(server):
    server.logprobs_fn = lambda body: [("Yes", -0.1), ("No", -2.5)]
    b = OpenAIBackend(server.base_url, "fake-model")
    [r] = b.complete([ChatRequest(messages=conv("q"), max_tokens=1, temperature=0.0, top_logprobs=5)])
    assert r["logprobs"] == [[["Yes", -0.1], ["No", -2.5]]]
    assert server.requests[0]["logprobs"] is True and server.requests[0]["top_logprobs"] == 5
