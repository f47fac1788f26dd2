"""A real HTTP server on 127.0.0.1 that speaks enough of the OpenAI chat-completions API for tests.

Standard library only (`http.server.ThreadingHTTPServer`, one thread per connection), so tests
exercise the real `openai` client, httpx, sockets and our retry/concurrency code — no mocks.

Controls (set them on the server object between or during requests):
- `responder(body) -> str`: the completion text (default: echoes the last user message, the
  seed and the temperature, so distinct seeds give distinct texts).
- `logprobs_fn(body) -> list[(token, logprob)] | None`: top alternatives of the first completion
  token; None (default) sends `logprobs: null` even when asked (a server without logprobs).
- `fail_next(*statuses)`: the next requests answer these HTTP statuses, in order (e.g. 500, 429).
- `fail_after(n, status)`: after `n` successful completions every request answers `status`.
- `reject_logprobs`: answer HTTP 400 "logprobs not supported" to requests that ask for logprobs.
- `delay`: seconds each request takes (so concurrent requests overlap and `max_in_flight` means something).
- `retry_headers`: headers sent with every injected failure. The default `retry-after-ms: 10` makes the
  openai client wait 10 ms before its retry instead of its own backoff (0.5 s doubling), so retry
  tests take milliseconds; `{}` leaves the client's backoff in place.

Records: `requests` (parsed bodies of every request), `ok_count`, `max_in_flight`, `auth_headers`.

>>> with FakeOpenAIServer() as srv:                                   # doctest: +SKIP
...     OpenAIBackend(srv.base_url, "fake").generate(...)
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


def default_responder(body: dict[str, Any]) -> str:
    last_user = next((m["content"] for m in reversed(body.get("messages", [])) if m.get("role") == "user"), "")
    return f"echo: {last_user} | seed={body.get('seed')} | t={body.get('temperature')}"


class FakeOpenAIServer:
    """Start with `with FakeOpenAIServer() as srv:`; `srv.base_url` ends in /v1."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.responder: Callable[[dict[str, Any]], str] = default_responder
        self.logprobs_fn: Callable[[dict[str, Any]], list[tuple[str, float]] | None] = lambda body: None
        self.reject_logprobs = False
        self.retry_headers: dict[str, str] = {"retry-after-ms": "10"}
        self.requests: list[dict[str, Any]] = []
        self.auth_headers: list[str] = []
        self.ok_count = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._fail_queue: deque[int] = deque()
        self._fail_after: tuple[int, int] | None = None
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- controls --------------------------------------------------------------------------------
    def fail_next(self, *statuses: int) -> None:
        with self._lock:
            self._fail_queue.extend(statuses)

    def fail_after(self, n: int | None, status: int = 500) -> None:
        with self._lock:
            self._fail_after = None if n is None else (n, status)

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("FakeOpenAIServer is not started; use it as a context manager")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> "FakeOpenAIServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers do

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _send(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(obj).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    # The client gave up first (a test of its timeout): nothing to answer, and no traceback in the log.
                    pass

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                with server._lock:
                    server.requests.append(body)
                    server.auth_headers.append(self.headers.get("Authorization", ""))
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    status = server._fail_queue.popleft() if server._fail_queue else None
                    if status is None and server._fail_after is not None and server.ok_count >= server._fail_after[0]:
                        status = server._fail_after[1]
                try:
                    if server.delay:
                        time.sleep(server.delay)
                    if status is not None:
                        self._send(
                            status,
                            {"error": {"message": f"injected failure {status}", "type": "server_error"}},
                            server.retry_headers,
                        )
                        return
                    if server.reject_logprobs and body.get("logprobs"):
                        self._send(
                            400, {"error": {"message": "logprobs are not supported", "type": "invalid_request_error"}}
                        )
                        return
                    self._send(200, server._completion(body))
                    with server._lock:
                        server.ok_count += 1
                finally:
                    with server._lock:
                        server.in_flight -= 1

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the response ----------------------------------------------------------------------------
    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        choices = []
        for i in range(int(body.get("n") or 1)):
            text = self.responder(body)
            logprobs = None
            top = self.logprobs_fn(body) if body.get("logprobs") else None
            if top is not None:
                k = int(body.get("top_logprobs") or 0)
                alts = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top[:k]]
                first = alts[0] if alts else {"token": text[:1], "logprob": 0.0, "bytes": list(text[:1].encode())}
                logprobs = {"content": [{**first, "top_logprobs": alts}]}
            choices.append(
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                    "logprobs": logprobs,
                }
            )
        return {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", ""),
            "choices": choices,
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
