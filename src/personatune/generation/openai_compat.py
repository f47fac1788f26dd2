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
3. 429, 5xx, timeouts and connection errors are retried with exponential backoff and jitter
   (`Retry-After` is honoured when the server sends one); other 4xx fail at once with the reason.
4. When a request still fails, in-flight requests are cancelled and ONE `BackendError` names the
   server, the cause and the fix. Results already received stay in the cache.

The API key is read from the environment variable named by `api_key_env` when a run starts. It is
never stored on the object, logged, or put in an exception message (servers that need no key —
vLLM, Ollama, llama.cpp by default — get a placeholder).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import random
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
        max_retries: retries per request after the first attempt (>= 0).
        timeout: per-request timeout (seconds, > 0).
        cache: a `ResponseCache`, or None for no caching.
        backoff_base: first retry delay before jitter (seconds); doubles each retry.
        backoff_max: cap on one retry delay (seconds).

    Raises:
        BackendError: a parameter is out of range.

    >>> b = OpenAIBackend("http://127.0.0.1:8000/v1", "HuggingFaceTB/SmolLM2-1.7B-Instruct")   # doctest: +SKIP
    >>> b.generate([[{"role": "user", "content": "Hi"}]], max_new_tokens=32, temperature=0.7, n=2, seed=0)  # doctest: +SKIP
    [['Hello there!', 'Hi! How can I help?']]
    """

    backend_id = "openai-compat"

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", concurrency: int = 8,
                 max_retries: int = 5, timeout: float = 60.0, cache: ResponseCache | None = None,
                 backoff_base: float = 0.5, backoff_max: float = 30.0) -> None:
        problems = []
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            problems.append(f"base_url={base_url!r} must start with http:// or https:// (e.g. http://127.0.0.1:8000/v1)")
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
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.requests_made = 0  # HTTP attempts, retries included (for reports and tests)
        self._logprobs_ok = True

    def __repr__(self) -> str:
        return (f"OpenAIBackend(base_url={self.base_url!r}, model={self.model!r}, api_key_env={self.api_key_env!r}, "
                f"concurrency={self.concurrency}, max_retries={self.max_retries})")

    # --- the GenerationBackend API ---------------------------------------------------------------
    def generate(self, conversations: list[Conversation], *, max_new_tokens: int, temperature: float,
                 top_p: float = 1.0, n: int = 1, seed: int | None = None) -> list[list[str]]:
        """`n` completions per conversation, in the caller's order.

        Sample `s` of a conversation is requested with seed `seed + s` (when a seed is given). Greedy
        decoding (`temperature == 0`) requests one sample and repeats it `n` times.

        Raises:
            BackendError: bad parameters, or a request that still fails after retries.
        """
        params = SamplingParams(max_new_tokens, temperature, top_p, n, seed)
        check_conversations(conversations)
        draws = 1 if params.greedy else n
        reqs = [ChatRequest(messages=list(conv), max_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                            seed=None if seed is None else seed + s, sample=s)
                for conv in conversations for s in range(draws)]
        texts = [r["text"] for r in self.complete(reqs)]
        out = []
        for i in range(len(conversations)):
            got = texts[i * draws:(i + 1) * draws]
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
            log.info("%s: %d requests (%d from cache) to %s", self.model, len(todo), len(requests) - len(todo), self.base_url)
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
                res = await self._with_retries(client, r)
            results[i] = res
            if self.cache is not None:
                self.cache.put(k, res)
                new += 1
                if new % SYNC_EVERY == 0:
                    self.cache.sync()

        # max_retries=0: retries are ours (backoff with jitter, one error at the end).
        client = AsyncOpenAI(base_url=self.base_url, api_key=api_key, max_retries=0, timeout=self.timeout)
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

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        d = min(self.backoff_max, self.backoff_base * (2 ** attempt))
        d = random.uniform(d / 2, d)  # jitter: concurrent clients do not retry in lock-step
        if retry_after is not None:
            d = max(d, min(retry_after, self.backoff_max))
        return d

    async def _with_retries(self, client: Any, r: ChatRequest) -> dict[str, Any]:
        import openai

        why = ""
        kind = "status"
        for attempt in range(self.max_retries + 1):
            retry_after: float | None = None
            fatal: str | None = None
            no_logprobs = False
            asked_logprobs = bool(r.top_logprobs) and self._logprobs_ok
            try:
                return await self._request(client, r)
            except openai.APIConnectionError as e:  # includes APITimeoutError
                kind, why = "connection", type(e).__name__
            except openai.APIStatusError as e:
                status = e.status_code
                if status == 429 or status >= 500 or status == 408:
                    kind, why = "status", f"HTTP {status}"
                    retry_after = _retry_after(e)
                elif status == 400 and asked_logprobs and "logprob" in str(e.message).lower():
                    no_logprobs = True
                else:
                    fatal = self._fatal_message(status, str(e.message))
            except openai.APIError as e:  # malformed response body and the like
                kind, why = "status", f"{type(e).__name__}"
            if no_logprobs:
                # The server does not do logprobs: ask for the text only, from now on (not counted as a retry).
                if self._logprobs_ok:
                    log.warning("%s does not support logprobs (HTTP 400); judges fall back to the sampled answer", self.base_url)
                self._logprobs_ok = False
                return await self._with_retries(client, r)
            if fatal is not None:
                # Raised outside the except block: the openai exception (whose request object holds
                # the Authorization header) is not chained onto ours.
                break
            if attempt < self.max_retries:
                d = self._delay(attempt, retry_after)
                log.warning("request to %s failed (%s); retry %d/%d in %.2fs", self.base_url, why, attempt + 1, self.max_retries, d)
                await asyncio.sleep(d)
        if fatal is not None:
            raise BackendError(fatal)
        attempts = self.max_retries + 1
        if kind == "connection":
            raise BackendError(
                f"cannot reach the OpenAI-compatible server at {self.base_url} ({why} after {attempts} attempts); fix: start the "
                "server (vLLM `vllm serve MODEL` -> http://127.0.0.1:8000/v1, Ollama -> http://127.0.0.1:11434/v1, "
                "llama.cpp `llama-server -m model.gguf` -> http://127.0.0.1:8080/v1) or correct base_url")
        raise BackendError(f"the server at {self.base_url} kept failing ({why}) after {attempts} attempts; "
                           f"fix: lower concurrency (now {self.concurrency}), raise max_retries, or check the server's log")

    def _fatal_message(self, status: int, message: str) -> str:
        msg = self._redact(message)[:300]
        if status in (401, 403):
            return (f"the server at {self.base_url} refused the API key (HTTP {status}); fix: put a valid key in the "
                    f"environment variable {self.api_key_env}")
        if status == 404:
            return (f"the server at {self.base_url} answered HTTP 404 for model {self.model!r} ({msg}); fix: use a model "
                    "name from GET <base_url>/models and a base_url that ends in /v1")
        return f"the server at {self.base_url} rejected a request (HTTP {status}): {msg}"

    async def _request(self, client: Any, r: ChatRequest) -> dict[str, Any]:
        self.requests_made += 1
        # max_tokens (not max_completion_tokens): the field every compatible server accepts.
        kw: dict[str, Any] = dict(model=self.model, messages=r.messages, max_tokens=r.max_tokens, temperature=r.temperature,
                                  top_p=r.top_p, n=1)
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
            lps = [[[t.token, float(t.logprob)] for t in (tok.top_logprobs or [])] or [[tok.token, float(tok.logprob)]]
                   for tok in content[:KEEP_LOGPROB_TOKENS]]
        return {"text": text, "logprobs": lps}


def _retry_after(e: Any) -> float | None:
    """Seconds from a Retry-After header (numeric form only), or None."""
    try:
        v = e.response.headers.get("retry-after")
        return float(v) if v is not None else None
    except (AttributeError, ValueError):
        return None
