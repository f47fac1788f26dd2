"""Generation through any OpenAI-compatible chat-completions server.

Works with the OpenAI API and with local servers that speak the same protocol; `base_url` is the
part before `/chat/completions`:

| server | start it with | base_url |
|---|---|---|
| vLLM | `vllm serve HuggingFaceTB/SmolLM2-1.7B-Instruct` | `http://127.0.0.1:8000/v1` |
| Ollama | `ollama serve` (then `ollama pull smollm2`) | `http://127.0.0.1:11434/v1` |
| llama.cpp | `llama-server -m model.gguf --port 8080` | `http://127.0.0.1:8080/v1` |
| OpenAI | - | `https://api.openai.com/v1` |

How requests are made, and why:
1. Cached responses (`cache.ResponseCache`) are taken first, so an interrupted run resumes and
   never asks twice for a finished item.
2. The rest go out concurrently (`asyncio`, `AsyncOpenAI`), at most `concurrency` in flight (a
   semaphore), one request per (conversation, sample) with `n=1`: not every local server
   honours `n`, and per-sample requests make per-sample caching and seeds (`seed + sample`) exact.
3. Retries are the `openai` client's own (`max_retries=`, `timeout=`): 408, 409, 429, 5xx,
   timeouts and connection errors are retried with exponential backoff (0.5 s doubling, capped at
   8 s, minus up to 25 % jitter); a `Retry-After` (or `retry-after-ms`) of up to 2 minutes is
   waited instead; other 4xx fail at once. Two HTTP hooks count the attempts (`requests_made`)
   and log each failure and retry under this module's logger (the client logs them only at INFO).
4. When a request still fails, in-flight requests are cancelled and ONE `BackendError` names the
   server, the cause, the number of attempts and the fix (401/403 name `api_key_env`, 404 the
   model) — the part the client cannot do. Results already received stay in the cache.

The API key is read from the environment variable named by `api_key_env` when a run starts. It is
never stored on the object, logged, or put in an exception message (servers that need no key —
vLLM, Ollama, llama.cpp by default — get a placeholder).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Awaitable, Callable, TypeVar

from personatune.generation import BackendError, Conversation, SamplingParams, check_conversations
from personatune.generation.cache import ResponseCache

log = logging.getLogger(__name__)

T = TypeVar("T")

# Logprobs of this many leading completion tokens are kept (judges read the first answer token;
# a server may emit a whitespace token first).
KEEP_LOGPROB_TOKENS = 4
# Placeholder key for servers that need none: the openai client refuses an empty key.
NO_KEY = "EMPTY"
# fsync the cache after this many new records (and always at the end of a call).
SYNC_EVERY = 32
# Statuses the openai client retries besides 5xx; after the last retry they read "kept failing", not "rejected".
RETRIED_STATUSES = (408, 409, 429)


@dataclass(frozen=True)
class ChatRequest:
    """One chat-completions request (one sample).

    Attributes:
        messages: the conversation, OpenAI-style.
        max_tokens: completion length bound (tokens, >= 1).
        temperature: >= 0; 0 is greedy.
        top_p: nucleus mass in (0, 1].
        seed: per-request seed, or None.
        sample: sample index (part of the cache key so n samples are n entries).
        top_logprobs: 0 for none; otherwise how many alternatives per token to ask for (1-20).
    """

    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float
    top_p: float = 1.0
    seed: int | None = None
    sample: int = 0
    top_logprobs: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _run_sync(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from sync code, inside or outside a running event loop.

    `asyncio.run` refuses to run inside a running loop (Jupyter, an async caller), so there the
    coroutine runs on its own loop in a worker thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())  # type: ignore[arg-type]
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()  # type: ignore[arg-type]


class OpenAIBackend:
    """A `GenerationBackend` for OpenAI-compatible servers.

    Args:
        base_url: server URL up to and including `/v1` (see the module table).
        model: model name as the server knows it.
        api_key_env: name of the environment variable holding the API key (the value is never logged).
        concurrency: requests in flight at once (>= 1).
        max_retries: retries per request after the first attempt (>= 0), made by the openai client.
        timeout: per-attempt timeout (seconds, > 0).
        cache: a `ResponseCache`, or None for no caching.

    Raises:
        BackendError: a parameter is out of range.

    >>> b = OpenAIBackend("http://127.0.0.1:8000/v1", "HuggingFaceTB/SmolLM2-1.7B-Instruct")   # doctest: +SKIP
    >>> b.generate([[{"role": "user", "content": "Hi"}]], max_new_tokens=32, temperature=0.7, n=2, seed=0)  # doctest: +SKIP
    [['Hello there!', 'Hi! How can I help?']]
    """

    backend_id = "openai-compat"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        max_retries: int = 5,
        timeout: float = 60.0,
        cache: ResponseCache | None = None,
    ) -> None:
        problems = []
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            problems.append(
                f"base_url={base_url!r} must start with http:// or https:// (e.g. http://127.0.0.1:8000/v1)"
            )
        if not model:
            problems.append("model must be the model name the server serves (GET <base_url>/models lists them)")
        if concurrency < 1:
            problems.append(f"concurrency={concurrency} must be >= 1")
        if max_retries < 0:
            problems.append(f"max_retries={max_retries} must be >= 0")
        if timeout <= 0:
            problems.append(f"timeout={timeout} must be > 0 seconds")
        if problems:
            raise BackendError("OpenAI-compatible backend: " + "; ".join(problems))
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout = timeout
        self.cache = cache
        self.requests_made = 0  # HTTP attempts, retries included (for reports and tests)
        self._logprobs_ok = True

    def __repr__(self) -> str:
        return (
            f"OpenAIBackend(base_url={self.base_url!r}, model={self.model!r}, api_key_env={self.api_key_env!r}, "
            f"concurrency={self.concurrency}, max_retries={self.max_retries})"
        )

    # --- the GenerationBackend API ---------------------------------------------------------------
    def generate(
        self,
        conversations: list[Conversation],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float = 1.0,
        n: int = 1,
        seed: int | None = None,
    ) -> list[list[str]]:
        """`n` completions per conversation, in the caller's order.

        Sample `s` of a conversation is requested with seed `seed + s` (when a seed is given). Greedy
        decoding (`temperature == 0`) requests one sample and repeats it `n` times.

        Raises:
            BackendError: bad parameters, or a request that still fails after retries.
        """
        params = SamplingParams(max_new_tokens, temperature, top_p, n, seed)
        check_conversations(conversations)
        draws = 1 if params.greedy else n
        reqs = [
            ChatRequest(
                messages=list(conv),
                max_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                seed=None if seed is None else seed + s,
                sample=s,
            )
            for conv in conversations
            for s in range(draws)
        ]
        texts = [r["text"] for r in self.complete(reqs)]
        out = []
        for i in range(len(conversations)):
            got = texts[i * draws : (i + 1) * draws]
            out.append(got * n if draws == 1 else got)
        return out

    def complete(self, requests: list[ChatRequest]) -> list[dict[str, Any]]:
        """Run requests (cache first), returning one dict per request, in order.

        Returns:
            `{"text": str, "logprobs": [[[token, logprob], ...], ...] | None}` per request: for each
            of the first few completion tokens, the server's top alternatives (when asked for and given).

        Raises:
            BackendError: a request still fails after retries, or is rejected (4xx).
        """
        return _run_sync(lambda: self.acomplete(requests))

    # --- async core ------------------------------------------------------------------------------
    def _key(self, r: ChatRequest) -> str:
        d = asdict(r)
        messages, sample = d.pop("messages"), d.pop("sample")
        return ResponseCache.key(backend=self.backend_id, model=self.model, messages=messages, params=d, sample=sample)

    async def acomplete(self, requests: list[ChatRequest]) -> list[dict[str, Any]]:
        """Async form of `complete` (for callers already inside an event loop)."""
        results: list[dict[str, Any] | None] = [None] * len(requests)
        todo: list[tuple[int, ChatRequest, str]] = []
        for i, r in enumerate(requests):
            k = self._key(r)
            hit = self.cache.get(k) if self.cache is not None else None
            if hit is not None:
                results[i] = hit
            else:
                todo.append((i, r, k))
        if todo:
            log.info(
                "%s: %d requests (%d from cache) to %s", self.model, len(todo), len(requests) - len(todo), self.base_url
            )
            await self._fetch(todo, results)
        return results  # type: ignore[return-value]

    async def _fetch(self, todo: list[tuple[int, ChatRequest, str]], results: list[dict[str, Any] | None]) -> None:
        from openai import AsyncOpenAI

        # The key is read now and lives only inside the client (which never logs it).
        api_key = os.environ.get(self.api_key_env) or NO_KEY
        sem = asyncio.Semaphore(self.concurrency)
        new = 0

        async def one(i: int, r: ChatRequest, k: str) -> None:
            nonlocal new
            async with sem:
                res = await self._call(client, r)
            results[i] = res
            if self.cache is not None:
                self.cache.put(k, res)
                new += 1
                if new % SYNC_EVERY == 0:
                    self.cache.sync()

        # The client retries (module docstring, point 3); the hooks count and log the attempts.
        client = AsyncOpenAI(
            base_url=self.base_url,
            api_key=api_key,
            max_retries=self.max_retries,
            timeout=self.timeout,
            http_client=self._http_client(),
        )
        try:
            tasks = [asyncio.create_task(one(*t)) for t in todo]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in tasks:
                t.cancel()  # no-op on finished tasks; stops the rest after a failure
            await asyncio.gather(*tasks, return_exceptions=True)
            errors = [t.exception() for t in tasks if not t.cancelled() and t.exception() is not None]
        finally:
            if self.cache is not None:
                self.cache.sync()
            await client.close()
        if errors:
            first = errors[0]
            if isinstance(first, BackendError):
                raise BackendError(str(first))
            raise BackendError(f"request to {self.base_url} failed: {type(first).__name__}: {self._redact(str(first))}")

    def _redact(self, text: str) -> str:
        key = os.environ.get(self.api_key_env)
        return text.replace(key, "***") if key else text

    def _http_client(self) -> Any:
        """The openai client's default HTTP client plus two hooks: count attempts, log failures and retries.

        Only the status, the attempt number and base_url are logged; request headers (the API key) never are.
        """
        from openai import DefaultAsyncHttpxClient

        async def on_request(request: Any) -> None:
            self.requests_made += 1
            retry = _retry_count(request)
            if retry:
                log.warning("request to %s: retry %d/%d", self.base_url, retry, self.max_retries)

        async def on_response(response: Any) -> None:
            if response.status_code >= 400:
                log.warning(
                    "request to %s failed (HTTP %d) on attempt %d",
                    self.base_url,
                    response.status_code,
                    _retry_count(response.request) + 1,
                )

        hooks = {"request": [on_request], "response": [on_response]}
        return DefaultAsyncHttpxClient(timeout=self.timeout, event_hooks=hooks)

    async def _call(self, client: Any, r: ChatRequest) -> dict[str, Any]:
        """One request, retried by the client; a final failure becomes one `BackendError` with the fix."""
        import openai

        asked_logprobs = bool(r.top_logprobs) and self._logprobs_ok
        try:
            return await self._request(client, r)
        except openai.APIConnectionError as e:  # includes APITimeoutError
            failure = self._unreachable_message(type(e).__name__, _attempts(e, self.max_retries))
        except openai.APIStatusError as e:
            if e.status_code == 400 and asked_logprobs and "logprob" in str(e.message).lower():
                failure = None
            else:
                failure = self._status_message(e.status_code, str(e.message), _attempts(e, self.max_retries))
        except openai.APIError as e:  # a body the client cannot parse; the client does not retry these
            failure = (
                f"the server at {self.base_url} sent a response the openai client cannot read "
                f"({type(e).__name__}); fix: check that base_url is an OpenAI-compatible API ending in /v1"
            )
        if failure is not None:
            # Raised outside the except block: the openai exception (whose request object holds
            # the Authorization header) is not chained onto ours.
            raise BackendError(failure)
        # The server does not do logprobs: ask for the text only, from now on.
        if self._logprobs_ok:
            log.warning(
                "%s does not support logprobs (HTTP 400); judges fall back to the sampled answer", self.base_url
            )
        self._logprobs_ok = False
        return await self._call(client, r)

    def _unreachable_message(self, why: str, attempts: int) -> str:
        return (
            f"cannot reach the OpenAI-compatible server at {self.base_url} ({why} after {_n_attempts(attempts)}); "
            "fix: start the server (vLLM `vllm serve MODEL` -> http://127.0.0.1:8000/v1, "
            "Ollama -> http://127.0.0.1:11434/v1, "
            "llama.cpp `llama-server -m model.gguf` -> http://127.0.0.1:8080/v1) or correct base_url"
        )

    def _status_message(self, status: int, message: str, attempts: int) -> str:
        if status in RETRIED_STATUSES or status >= 500:
            return (
                f"the server at {self.base_url} kept failing (HTTP {status}) after {_n_attempts(attempts)}; "
                f"fix: lower concurrency (now {self.concurrency}), raise max_retries, or check the server's log"
            )
        return self._fatal_message(status, message)

    def _fatal_message(self, status: int, message: str) -> str:
        msg = self._redact(message)[:300]
        if status in (401, 403):
            return (
                f"the server at {self.base_url} refused the API key (HTTP {status}); fix: put a valid key in the "
                f"environment variable {self.api_key_env}"
            )
        if status == 404:
            return (
                f"the server at {self.base_url} answered HTTP 404 for model {self.model!r} ({msg}); fix: use a model "
                "name from GET <base_url>/models and a base_url that ends in /v1"
            )
        return f"the server at {self.base_url} rejected a request (HTTP {status}): {msg}"

    async def _request(self, client: Any, r: ChatRequest) -> dict[str, Any]:
        # max_tokens (not max_completion_tokens): the field every compatible server accepts.
        kw: dict[str, Any] = dict(
            model=self.model,
            messages=r.messages,
            max_tokens=r.max_tokens,
            temperature=r.temperature,
            top_p=r.top_p,
            n=1,
        )
        if r.seed is not None:
            kw["seed"] = r.seed
        if r.top_logprobs and self._logprobs_ok:
            kw.update(logprobs=True, top_logprobs=r.top_logprobs)
        if r.extra:
            kw["extra_body"] = r.extra
        resp = await client.chat.completions.create(**kw)
        if not resp.choices:
            raise BackendError(f"the server at {self.base_url} returned no choices for model {self.model!r}")
        ch = resp.choices[0]
        text = (ch.message.content or "") if ch.message is not None else ""
        lps = None
        content = getattr(getattr(ch, "logprobs", None), "content", None)
        if content:
            lps = [
                [[t.token, float(t.logprob)] for t in (tok.top_logprobs or [])] or [[tok.token, float(tok.logprob)]]
                for tok in content[:KEEP_LOGPROB_TOKENS]
            ]
        return {"text": text, "logprobs": lps}


def _retry_count(request: Any) -> int:
    """Which retry an HTTP request is (0 = first attempt), from the header the openai client sets on each attempt."""
    try:
        return int(request.headers.get("x-stainless-retry-count", "0"))
    except (AttributeError, ValueError):
        return 0


def _attempts(e: Any, max_retries: int) -> int:
    """Attempts behind a final openai error: from its last request, else every attempt allowed."""
    request = getattr(e, "request", None)
    if request is None or "x-stainless-retry-count" not in request.headers:
        return max_retries + 1
    return _retry_count(request) + 1


def _n_attempts(n: int) -> str:
    return f"{n} attempt" if n == 1 else f"{n} attempts"
