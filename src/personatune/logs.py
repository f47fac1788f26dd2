"""Progress and event lines of a run: stdlib `logging`, one run-directory handler, one main-rank filter.

Every module logs to a child of the `personatune` logger (`logging.getLogger(__name__)`). While a run directory
is attached (`run_logging(root)`, entered by the pipeline around its stages, or `attach_run_dir` by code that
works on a run directory outside the pipeline), records go to two places:

- the run's `log.txt`, one `YYYY-mm-dd HH:MM:SS message` line each (the format `report` shows), and
- the console (stdout, the message only), unless a console handler is already installed.

Under `accelerate launch` / `torchrun` both handlers drop records of processes other than rank 0, so a
two-process run writes each line once (`MainRankFilter`; the rank comes from the launcher's `RANK`).
A record logged with `extra=FILE_ONLY` (the pipeline's bookkeeping events) goes to log.txt only.

A stage's `run` is wrapped in `@logged_stage`, so a stage called on its own (tests, benchmarks) writes its
log.txt lines too; attaching the same run directory twice adds no second handler (each line is written once).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

ROOT_LOGGER = "personatune"
LOG_FILE = "log.txt"
_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
FILE_ONLY = {"console": False}  # `log.info(msg, extra=FILE_ONLY)`: log.txt, not the console
_F = TypeVar("_F", bound=Callable[..., Any])


class MainRankFilter(logging.Filter):
    """Pass records of the main process only (rank 0 under a launcher; always when not launched)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _rank() == 0


class _StdoutHandler(logging.StreamHandler):
    """A console handler that looks `sys.stdout` up at each record (so pytest's capture and redirects see it)."""

    def __init__(self) -> None:
        super().__init__(stream=sys.stdout)

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "console", True):
            self.stream = sys.stdout
            super().emit(record)


class _RunDirFormatter(logging.Formatter):
    """`YYYY-mm-dd HH:MM:SS message`, without the leading indentation console lines carry."""

    def __init__(self) -> None:
        super().__init__(datefmt=_DATE_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage().strip()  # an event's continuation lines follow it, as on the console
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return f"{self.formatTime(record, self.datefmt)} {text}"


def _rank() -> int:
    try:
        return int(os.environ.get("RANK", "0") or 0)
    except ValueError:
        return 0


def attach_run_dir(root: str | Path) -> logging.Handler | None:
    """Send the `personatune` loggers' records to `root/log.txt` until `detach(handler)`; the new handler, or None
    when that file already has one.

    The file is opened at the first record and flushed after each one, so a crash loses no earlier line.
    """
    logger = logging.getLogger(ROOT_LOGGER)
    logger.setLevel(logging.INFO)
    path = Path(root) / LOG_FILE
    if any(isinstance(h, logging.FileHandler) and h.baseFilename == os.path.abspath(path) for h in logger.handlers):
        return None
    h = logging.FileHandler(path, mode="a", encoding="utf-8", delay=True)
    h.setFormatter(_RunDirFormatter())
    h.addFilter(MainRankFilter())
    logger.addHandler(h)
    return h


def detach(handler: logging.Handler) -> None:
    """Remove a handler added by `attach_run_dir` / `ensure_console` and close it."""
    logging.getLogger(ROOT_LOGGER).removeHandler(handler)
    handler.close()


def ensure_console() -> logging.Handler | None:
    """Install the console handler (stdout, message only, main rank) once; the new handler, or None if present."""
    logger = logging.getLogger(ROOT_LOGGER)
    logger.setLevel(logging.INFO)
    if any(isinstance(h, _StdoutHandler) for h in logger.handlers):
        return None
    h = _StdoutHandler()
    h.setFormatter(logging.Formatter("%(message)s"))
    h.addFilter(MainRankFilter())
    logger.addHandler(h)
    return h


@contextlib.contextmanager
def run_logging(root: str | Path, console: bool = True) -> Iterator[None]:
    """Within the block, `personatune` records go to `root/log.txt` and (with `console`) to stdout."""
    added = [attach_run_dir(root), ensure_console() if console else None]
    added = [h for h in added if h is not None]
    try:
        yield
    finally:
        for h in added:
            detach(h)


def logged_stage(run: _F) -> _F:
    """Decorate a stage's `run(config, run_dir)`: its records reach the run's log.txt and the console."""

    @functools.wraps(run)
    def wrapper(config: Any, run_dir: Any, *args: Any, **kwargs: Any) -> Any:
        with run_logging(run_dir.root):
            return run(config, run_dir, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
