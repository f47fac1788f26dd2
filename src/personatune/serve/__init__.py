"""`personatune serve`: an OpenAI-compatible chat server that scores every reply in the background.

    personatune serve RUN_DIR|MODEL [--persona P.yaml] [--evaluator DIR] [--host 127.0.0.1] [--port 8000]

Endpoints:

- `POST /v1/chat/completions`: OpenAI chat-completions request (messages, max_tokens or
  max_completion_tokens, temperature, top_p, seed; n=1 and stream=false only). Errors use the OpenAI
  shape `{"error": {"message", "type", "param", "code"}}`.
- `GET /v1/models`, `GET /health`, `GET /metrics` (Prometheus text format 0.0.4, written by prometheus_client).

With `--api-key-env VAR` every endpoint but /health needs `Authorization: Bearer <the key in $VAR>`
(401 otherwise). A request naming another model than the one served gets 404; a seed outside int64
422; a lone surrogate in a message 400. Listening on anything but loopback prints a warning.
The `--log` file is created with mode 0600 (like the run directory's files) and must not be one of
the server's inputs.

What happens to one request, in order:
1. The body is read with a size cap (`max_body_bytes`, 413 past it), parsed as JSON (400 when it is
   not) and validated with pydantic (422 on a wrong type or a missing field; 400 for a feature this
   server does not implement, such as stream=true).
2. The request joins ONE bounded generation queue (503 with Retry-After when it is full). A single
   worker thread owns the model, so generation is serialised (a CPU model gains nothing from running
   two forward passes at once); it takes up to `batch_size` waiting requests with the same sampling
   parameters and decodes them as one left-padded batch.
3. The request waits at most `timeout_s` (queue time included) and gets 504 past it. A timed-out
   request that has not started is skipped; one already decoding finishes and its result is dropped
   (transformers `generate` cannot be interrupted mid-batch).
4. The reply is returned at once; the response is handed to a second worker thread that scores it
   with the persona evaluator (and appends the conversation to `log_path` for `personatune monitor`),
   so scoring never delays a reply. When that queue is full the response is not scored and
   `personatune_scoring_dropped_total` counts it.

The rolling persona metrics on /metrics are computed over the last `window` scored responses with the
METRICS.md definitions (consistency rate, per-trait adherence with no targeted traits, mean
style_match) plus the mean words per response beside a reference length (held-out chosen responses
of the run, else the middle of the persona's word range).

Modules: `protocol.py` (ServeLimits, the accepted request subset, the OpenAI error shape), `app.py` (the
FastAPI app and its routes), `workers.py` (the generation and scoring threads), `metrics.py` (the
prometheus_client registry behind /metrics) and `launch.py` (RUN_DIR|MODEL resolution and `serve_main`).
"""

from personatune.serve.app import create_app
from personatune.serve.launch import (
    ServeTarget,
    bind_socket,
    exposure_warning,
    is_loopback,
    load_scorer,
    read_api_key,
    reference_words,
    resolve_target,
    serve_main,
)
from personatune.serve.metrics import ServeMetrics
from personatune.serve.protocol import ChatCompletionRequest, RequestError, ServeLimits, parse_request
from personatune.serve.workers import GenerationWorker, ScoringWorker, open_log

__all__ = [
    "ChatCompletionRequest",
    "GenerationWorker",
    "RequestError",
    "ScoringWorker",
    "ServeLimits",
    "ServeMetrics",
    "ServeTarget",
    "bind_socket",
    "create_app",
    "exposure_warning",
    "is_loopback",
    "load_scorer",
    "open_log",
    "parse_request",
    "read_api_key",
    "reference_words",
    "resolve_target",
    "serve_main",
]
