"""Run an ASGI app (a `personatune.serve.create_app` app) with uvicorn in a thread, for tests.

>>> with BackgroundServer(app) as url:                                # doctest: +SKIP
...     httpx.get(url + "/health")
"""

from __future__ import annotations

import threading
import time
from typing import Any

import uvicorn

from personatune.serve import bind_socket


class BackgroundServer:
    """uvicorn in a daemon thread on a socket bound here (port 0: a free port); `with` gives its URL.

    Args:
        app: the ASGI app; its lifespan (the serve workers) starts on enter and stops on exit.
        host: interface to bind.
        port: TCP port (0: any free one).
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sock = bind_socket(host, port)
        self.host, self.port = self.sock.getsockname()[:2]
        self.server = uvicorn.Server(
            uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
        )
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()
