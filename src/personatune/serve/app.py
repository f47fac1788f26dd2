"""The FastAPI app of `personatune serve`: its routes, its error handling, and the workers it starts.

`create_app` wires one `GenerationWorker`, one `ScoringWorker` and one `ServeMetrics` (a prometheus_client
registry of its own) into an app; the workers start and stop with the app's lifespan. What happens to one
request is described in the package docstring (`personatune.serve`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from personatune import limits as input_limits
from personatune.serve.metrics import CONTENT_TYPE, ServeMetrics
from personatune.serve.protocol import RequestError, ServeLimits, error_body, parse_request
from personatune.serve.workers import (
    GenerationWorker,
    GenJob,
    PromptTooLong,
    QueueFull,
    ScoreItem,
    ScorerLike,
    ScoringWorker,
    TokenBackend,
)

DRAIN_LIMIT = 16 * 1024 * 1024
"""Bytes of an oversized body read and discarded before the 413 (so ordinary clients see the status, not a reset)."""


def create_app(
    backend: TokenBackend,
    model_name: str,
    scorer: ScorerLike | None = None,
    trait_ids: list[str] | None = None,
    limits: ServeLimits | None = None,
    reference_words: float | None = None,
    context_limit: int | None = None,
    api_key: str | None = None,
) -> FastAPI:
    """Build the FastAPI app (workers start and stop with the app's lifespan).

    Args:
        backend: the generation backend (HFBackend around the served model).
        model_name: the id reported by /v1/models and in every completion.
        scorer: the persona scorer; None serves without persona metrics.
        trait_ids: the persona's trait ids (for per-trait gauges); required with a scorer.
        limits: server limits (defaults: ServeLimits()).
        reference_words: reference words per response for the style-drift gauge.
        context_limit: the model's context length in tokens (None: read from backend.model.config).
        api_key: when given, every request but /health must send `Authorization: Bearer <api_key>` (else 401).

    Returns:
        A FastAPI application.
    """
    limits = limits or ServeLimits()
    if context_limit is None:
        cfg = getattr(getattr(backend, "model", None), "config", None)
        context_limit = getattr(cfg, "max_position_embeddings", None)
    metrics = ServeMetrics(
        limits.window,
        trait_ids if scorer is not None else [],
        reference_words,
        info={"model": model_name, "scoring": "on" if scorer is not None else "off"},
    )
    gen = GenerationWorker(backend, limits.queue_size, limits.batch_size, context_limit, metrics)
    scoring = ScoringWorker(scorer, metrics, limits.score_queue_size, limits.log_path)
    metrics.watch(gen, scoring, limits.queue_size)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        gen.start()
        scoring.start()
        try:
            yield
        finally:
            gen.stop()
            scoring.stop()

    app = FastAPI(title="personatune serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.metrics, app.state.gen, app.state.scoring, app.state.limits = metrics, gen, scoring, limits

    @app.middleware("http")
    async def count_requests(request: Request, call_next: Any) -> Any:
        t0 = time.perf_counter()
        status = 500
        try:
            if api_key is not None and request.url.path != "/health" and not _authorized(request, api_key):
                message = (
                    "missing or wrong API key; send the header 'Authorization: Bearer KEY' with the key the "
                    "server was started with (--api-key-env)"
                )
                response = JSONResponse(
                    error_body(401, message), status_code=401, headers={"WWW-Authenticate": "Bearer"}
                )
            else:
                response = await call_next(request)
            status = response.status_code
            return response
        finally:
            metrics.observe_request(request.method, request.url.path, status, time.perf_counter() - t0)

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, e: RequestError) -> JSONResponse:
        return JSONResponse(error_body(e.status, e.message, e.param), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(422, str(e.errors()[:1])), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(e.status_code, str(e.detail)), status_code=e.status_code)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> JSONResponse:
        req = parse_request(await read_body(request, limits.max_body_bytes), limits)
        if req.model not in (None, "", model_name):
            raise RequestError(
                404,
                f"model {input_limits.short_repr(req.model)} is not served here; this server serves '{model_name}' "
                f"(GET /v1/models); send model='{model_name}' or leave it out",
                param="model",
            )
        messages = [{"role": m.role, "content": m.content} for m in req.messages]
        job = GenJob(messages, req.max_tokens, float(req.temperature), float(req.top_p), req.seed)
        try:
            fut = gen.submit(job)
        except QueueFull:
            wait = gen.retry_after_s()
            raise RequestError(
                503,
                f"the generation queue is full ({limits.queue_size} waiting); retry in {wait} s",
                headers={"Retry-After": str(wait)},
            ) from None
        try:
            text, n_prompt, n_new, finish = await asyncio.wait_for(asyncio.wrap_future(fut), timeout=limits.timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(
                504,
                f"no reply within timeout_s={limits.timeout_s:g} s (queue wait included); retry later "
                f"or raise --timeout",
            ) from None
        except PromptTooLong as e:
            raise RequestError(400, str(e), param="messages") from None
        except Exception as e:  # noqa: BLE001 - the model failed for this request; report it and keep serving
            raise RequestError(500, f"generation failed: {type(e).__name__}: {e}") from None
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        scoring.submit(ScoreItem(cid, messages, text, time.time()))
        return JSONResponse(
            {
                "id": cid,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
                "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_new, "total_tokens": n_prompt + n_new},
            }
        )

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        return JSONResponse(
            {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "personatune"}]}
        )

    @app.get("/health")
    async def health() -> JSONResponse:
        ok = gen.alive
        body = {
            "status": "ok" if ok else "generation worker stopped",
            "model": model_name,
            "queue_depth": gen.queue.qsize(),
            "queue_capacity": limits.queue_size,
            "scoring": scorer is not None,
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return app


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, at most `max_bytes` of it.

    Raises:
        RequestError: 413 when the body (or its Content-Length) is larger than `max_bytes`.
    """
    cl = request.headers.get("content-length", "")
    too_big = cl.isdigit() and int(cl) > max_bytes
    body = bytearray()
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if not too_big and seen <= max_bytes:
            body += chunk
        else:
            too_big = True  # keep draining (and discarding) so the client gets the 413, not a reset ...
            if seen > DRAIN_LIMIT:
                break  # ... up to a point: past it the connection is closed after the 413
    if too_big:
        raise RequestError(
            413, f"request body of {seen} bytes exceeds the limit of {max_bytes} bytes; send a shorter conversation"
        )
    return bytes(body)


def _authorized(request: Request, api_key: str) -> bool:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())
