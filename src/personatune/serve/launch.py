"""Starting `personatune serve`: resolve RUN_DIR|MODEL, check the options, bind the port, load, then run uvicorn.

Everything that can be refused (a bad option, a busy port, a `--log` that is an input, a missing model) is
refused here before the model loads, with one line that says how to fix it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personatune.errors import ConfigError, RunDirError
from personatune.output_paths import check_output_file
from personatune.serve.app import create_app
from personatune.serve.protocol import ServeLimits
from personatune.serve.workers import open_log


@dataclass
class ServeTarget:
    """What `personatune serve` resolved its target to."""

    model: str
    persona: str | None
    evaluator: str | None
    reference_sft: str | None


def resolve_target(target: str, persona: str | None = None, evaluator: str | None = None) -> ServeTarget:
    """Resolve RUN_DIR|MODEL to a model path, persona, evaluator and reference data.

    A folder with manifest.json is a run directory: the model is the output of 06_iterations when that
    stage finished, else of 05_optimization; the persona (02_persona), evaluator (04_evaluation) and
    held-out data (03_consistency_data) come from the manifest unless given. Anything else is a model
    name or path for `personatune.models.load_model_and_tokenizer`.

    Raises:
        RunDirError: a run directory without a finished trained model.
        ConfigError: --evaluator without a persona.
    """
    root = Path(target)
    ref = None
    if (root / "manifest.json").is_file():
        from personatune.rundir import RunDir

        rd = RunDir(root)
        model = None
        for stage in ("06_iterations", "05_optimization"):
            rec = rd.record(stage)
            if rec.status == "done" and "model" in rec.outputs:
                model = str(rd.output_path(stage, "model"))
                break
        if model is None:
            raise RunDirError(
                f"run directory {root} has no trained model (neither 06_iterations nor 05_optimization is done); "
                f"fix: finish stage 5 (personatune run CONFIG) or pass a model path"
            )
        if persona is None and rd.record("02_persona").status == "done":
            persona = str(rd.output_path("02_persona", "persona"))
        if evaluator is None and rd.record("04_evaluation").status == "done":
            evaluator = str(rd.output_path("04_evaluation", "evaluator"))
        if rd.record("03_consistency_data").status == "done":
            ref_path = rd.output_path("03_consistency_data", "heldout") / "sft.jsonl"
            ref = str(ref_path) if ref_path.is_file() else None
        target = model
    if evaluator is not None and persona is None:
        raise ConfigError(f"--evaluator {evaluator} needs --persona (the persona the evaluator was fitted for)")
    return ServeTarget(model=target, persona=persona, evaluator=evaluator, reference_sft=ref)


def load_scorer(persona: str, evaluator: str | None) -> tuple[Any, Any]:
    """(persona spec, Scorer): the fitted evaluator when given, else the persona's untrained scorer.

    Raises:
        PersonaSpecError: the persona file is invalid.
    """
    from personatune.persona import load_persona
    from personatune.scoring.factory import build_scorer

    spec = load_persona(persona)
    return spec, build_scorer(spec, evaluator_dir=evaluator)


def reference_words(spec: Any, reference_sft: str | None) -> float:
    """Mean words of the reference (held-out chosen) responses, else the middle of the persona's word range."""
    from personatune.scoring.style import count_words

    if reference_sft:
        vals = []
        with open(reference_sft, encoding="utf-8") as f:
            for line in f:
                with contextlib.suppress(json.JSONDecodeError, KeyError, IndexError, TypeError):
                    vals.append(count_words(json.loads(line)["messages"][-1]["content"]))
        if vals:
            return sum(vals) / len(vals)
    lo, hi = spec.style.words
    return (lo + hi) / 2


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port (port 0: a free one), for uvicorn to serve on.

    Binding here rather than inside uvicorn turns a busy port into one clear error (uvicorn would sys.exit).

    Raises:
        ConfigError: the address cannot be bound.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        sock = socket.socket(infos[0][0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(infos[0][4])
    except OSError as e:
        raise ConfigError(
            f"cannot listen on {host}:{port} ({e.strerror or e}); fix: pick another --port or --host"
        ) from None
    return sock


def is_loopback(address: str) -> bool:
    """True when a bound address only takes connections from this machine."""
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def exposure_warning(bound: str, api_key: str | None) -> str | None:
    """The warning printed when the server listens beyond loopback (None on 127.0.0.1 / ::1)."""
    if is_loopback(bound):
        return None
    risk = (
        "requests need the API key, sent over plain HTTP: put a TLS proxy in front on untrusted networks"
        if api_key
        else "anyone who can reach this port can use the model; fix: --api-key-env VAR, or --host 127.0.0.1"
    )
    return f"personatune serve: warning: listening on {bound}, reachable from other machines; {risk}"


def read_api_key(env_var: str | None) -> str | None:
    """The API key from environment variable `env_var` (None when no variable is named).

    Raises:
        ConfigError: the variable is named but unset or empty.
    """
    if env_var is None:
        return None
    key = os.environ.get(env_var, "").strip()
    if not key:
        raise ConfigError(
            f"--api-key-env {env_var}: that environment variable is not set or empty; fix: export {env_var}=<a long random "
            "key> before starting the server, or leave out --api-key-env"
        )
    return key


def serve_main(
    target: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    evaluator: str | None = None,
    persona: str | None = None,
    api_key_env: str | None = None,
    **limits: Any,
) -> int:
    """Entry point of `personatune serve`: load, then serve until Ctrl-C.

    Args:
        target: run directory or model name/path.
        host: interface to bind (127.0.0.1: this machine only).
        port: TCP port.
        evaluator: fitted evaluator folder (default: the run's stage-4 evaluator).
        persona: persona YAML (default: the run's stage-2 persona); without one, no persona metrics.
        api_key_env: environment variable holding the API key requests must send (None: no key).
        **limits: ServeLimits fields (max_body_bytes, queue_size, timeout_s, max_tokens, default_max_tokens,
            batch_size, window, score_queue_size, log_path), plus dtype and device for the model.

    Returns:
        0 after a clean shutdown.

    Raises:
        ConfigError: a bad limit, port or option combination.
        RunDirError, ModelNotFoundError, PersonaSpecError: the target, model or persona cannot be loaded.
    """
    import uvicorn

    from personatune.generation.hf import HFBackend
    from personatune.models import load_model_and_tokenizer

    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"--port {port!r} must be an integer in [0, 65535]")
    dtype, device = limits.pop("dtype", None), limits.pop("device", None)
    unknown = sorted(set(limits) - set(ServeLimits.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"unknown serve option(s) {unknown}; known: {sorted(ServeLimits.__dataclass_fields__)}")
    lim = ServeLimits(**{k: v for k, v in limits.items() if v is not None})
    api_key = read_api_key(api_key_env)
    t = resolve_target(target, persona, evaluator)
    if lim.log_path is not None:
        # Appending to an input (the persona, a model file) would corrupt it: refused before anything loads.
        check_output_file(
            lim.log_path,
            "--log",
            {
                "--persona": t.persona,
                "--evaluator": t.evaluator,
                "the model": t.model,
                "the reference": t.reference_sft,
            },
        )
        open_log(
            Path(lim.log_path)
        ).close()  # created now (mode 0600): a log that cannot be written fails here, not per reply
    if not Path(t.model).exists():
        from personatune.models import check_model_available

        check_model_available(t.model)  # a misspelt hub id fails in a second, not after download retries
    sock = bind_socket(host, port)  # before loading anything: a busy port fails in a second, not after the model load
    warning = exposure_warning(str(sock.getsockname()[0]), api_key)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    try:
        scorer = spec = None
        if t.persona is not None:
            spec, scorer = load_scorer(t.persona, t.evaluator)
        model, tok = load_model_and_tokenizer(t.model, dtype=dtype, device=device)
        backend = HFBackend(model, tok, batch_size=lim.batch_size)
        name = Path(t.model).name if Path(t.model).exists() else t.model
        app = create_app(
            backend,
            name,
            scorer=scorer,
            trait_ids=spec.trait_ids if spec else None,
            limits=lim,
            reference_words=reference_words(spec, t.reference_sft) if spec else None,
            api_key=api_key,
        )
        scoring = (
            f"scoring with {t.evaluator or 'the untrained persona scorer'}"
            if scorer
            else "no persona scoring (no --persona)"
        )
        print(
            f"personatune serve: {t.model} on http://{host}:{sock.getsockname()[1]} ({scoring}); Ctrl-C stops",
            flush=True,
        )
        try:
            uvicorn.Server(uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=10)).run(sockets=[sock])
        except KeyboardInterrupt:
            pass  # uvicorn re-raises the Ctrl-C it handled after its graceful shutdown; stopping is the normal end
    finally:
        sock.close()
    return 0
