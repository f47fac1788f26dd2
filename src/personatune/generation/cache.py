"""A resumable on-disk response cache: append-only JSONL, one record per finished request.

Why JSONL and not sqlite3: the file is human-readable (`jq` / `head` it to see what a teacher
said), appends are cheap, and a crash can damage at most the last line — which we detect and
drop on the next open. One line is `{"k": <sha256 hex key>, "v": <JSON value>}`; a later line for
the same key wins.

Durability: every `put` writes one whole line and flushes it to the OS, so a Python exception
or a killed process loses nothing already returned; `sync()` (called by the backends once per
batch of results and when a run ends) also fsyncs, so a power cut loses at most the last batch.

Keys are a SHA-256 over the canonical JSON of everything that determines a response (backend id,
model, messages, decoding parameters, sample index), so a changed prompt or parameter is a
miss, never a stale hit. One writer per file at a time (two processes appending to the same file
may interleave lines; use one cache file per run).

>>> cache = ResponseCache(tmp_path / "teacher.jsonl")                  # doctest: +SKIP
>>> k = ResponseCache.key(backend="openai", model="m", messages=msgs, params={"temperature": 0}, sample=0)  # doctest: +SKIP
>>> cache.put(k, {"text": "hello"}); cache.get(k)                      # doctest: +SKIP
{'text': 'hello'}
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from personatune.errors import DataError

log = logging.getLogger(__name__)

CACHE_FILE_NAME = "responses.jsonl"


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


class ResponseCache:
    """Append-only JSONL cache of request -> response, safe to resume after a crash.

    Args:
        path: a `.jsonl` file, or a directory (existing, or a path without a suffix) in which
            `responses.jsonl` is kept. Parent folders are created.

    Raises:
        DataError: a line other than the last one is not valid JSON (the file was edited or
            damaged; the message names the line and says to delete the file to start over).
    """

    def __init__(self, path: str | Path) -> None:
        p = Path(path)
        if p.is_dir() or (not p.exists() and p.suffix == ""):
            p = p / CACHE_FILE_NAME
        p.parent.mkdir(parents=True, exist_ok=True)
        self.path = p
        self._data: dict[str, Any] = {}
        self._fh: Any = None
        self._unsynced = 0
        self.hits = 0
        self.misses = 0
        self._load()

    # --- keys ------------------------------------------------------------------------------------
    @staticmethod
    def key(**parts: Any) -> str:
        """SHA-256 hex digest of the canonical JSON of `parts` (keyword order does not matter).

        Args:
            **parts: JSON-serialisable values, e.g. backend, model, messages, params, sample.

        Returns:
            A 64-character hex key.
        """
        return hashlib.sha256(_canonical(parts).encode("utf-8")).hexdigest()

    # --- reading ---------------------------------------------------------------------------------
    def _load(self) -> None:
        if not self.path.exists():
            return
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        # Everything after the last newline is an unfinished write (or b"" when the file is clean).
        tail = lines.pop()
        for i, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            rec = self._parse(line)
            if rec is None:
                raise DataError(
                    f"response cache {self.path}: line {i} is not valid JSON; "
                    "fix: delete the file to regenerate its responses (or remove that line)"
                )
            self._data[rec[0]] = rec[1]
        if tail.strip():
            rec = self._parse(tail)
            if rec is not None:
                # A complete record whose newline was lost: keep it and terminate the line.
                self._data[rec[0]] = rec[1]
                with open(self.path, "ab") as f:
                    f.write(b"\n")
            else:
                log.warning(
                    "response cache %s: skipping a truncated last line (%d bytes; an interrupted write); "
                    "its request will be made again",
                    self.path,
                    len(tail),
                )
                with open(self.path, "r+b") as f:
                    f.truncate(len(raw) - len(tail))

    @staticmethod
    def _parse(line: bytes) -> tuple[str, Any] | None:
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        if not isinstance(rec, dict) or not isinstance(rec.get("k"), str) or "v" not in rec:
            return None
        return rec["k"], rec["v"]

    def get(self, key: str) -> Any | None:
        """The cached value for `key`, or None (counted as a hit or a miss)."""
        if key in self._data:
            self.hits += 1
            return self._data[key]
        self.misses += 1
        return None

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    # --- writing ---------------------------------------------------------------------------------
    def put(self, key: str, value: Any) -> None:
        """Append one record and flush it to the OS (fsync happens in `sync`).

        Args:
            key: a key from `ResponseCache.key`.
            value: any JSON-serialisable value.
        """
        line = _canonical({"k": key, "v": value}) + "\n"
        if self._fh is None:
            self._fh = open(self.path, "a", encoding="utf-8")
        # One write call per line: a crash leaves at most one partial line, at the end.
        self._fh.write(line)
        self._fh.flush()
        self._data[key] = value
        self._unsynced += 1

    def sync(self) -> None:
        """fsync what was appended since the last sync (called once per batch by the backends)."""
        if self._fh is not None and self._unsynced:
            os.fsync(self._fh.fileno())
            self._unsynced = 0

    def close(self) -> None:
        """Sync and close the file handle; the cache can still be read and appended to afterwards."""
        if self._fh is not None:
            self.sync()
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "ResponseCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.path)!r}, entries={len(self._data)})"
