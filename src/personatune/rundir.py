"""The run directory: the only channel between stages.

Layout of `<run_dir>/<name>/`:

    config.yaml        the fully resolved config, written before any work
    manifest.json      per stage: status, config hash, input/output hashes, gate, timings
    log.txt            one line per event
    NN_stage/          one folder per stage: gate.json, metrics.jsonl, artifacts

Every write is atomic (temp file in the same folder, fsync, `os.replace`), so a crash or
Ctrl-C never leaves a half-written file behind. A stage is skipped on re-run when it is
recorded `done` with the same config hash and input hashes and its outputs are still intact;
anything else (never run, interrupted, failed, changed) runs again.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from personatune.errors import RunDirError

MANIFEST_VERSION = 1


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically: temp file in the same folder, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, default=str) + "\n" for r in rows))


def read_jsonl(path: str | Path, fix: str = "re-run the stage that wrote it") -> list[dict[str, Any]]:
    """Rows of a JSONL file written by a stage.

    Raises:
        DataError: the file is missing or a line is not valid JSON (names the file, the line and `fix`).
    """
    from personatune.errors import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} is missing; fix: {fix}")
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path} line {i}: not valid JSON ({e.msg}); fix: {fix}") from None
    return rows


def file_hash(path: str | Path) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, sorted)."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_dir():
        for p in sorted(q for q in path.rglob("*") if q.is_file()):
            h.update(str(p.relative_to(path)).encode())
            h.update(file_hash(p).encode())
    else:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


@dataclass
class StageRecord:
    """What the manifest remembers of one stage."""

    status: str = "pending"  # pending | running | done | gate_failed | failed | interrupted
    config_hash: str | None = None
    inputs: dict[str, str] = field(default_factory=dict)  # "stage:name" -> hash
    outputs: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> {"path": rel, "hash": h}
    gate: dict[str, Any] | None = None
    started: float | None = None
    finished: float | None = None
    seconds: float | None = None
    error: str | None = None
    message: str | None = None


class RunDir:
    """A run directory and its manifest.

    Args:
        root: the run's folder (`<run_dir>/<name>`); created if missing.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()  # absolute, so recorded outputs and relative paths never double up
        self.root.mkdir(parents=True, exist_ok=True)
        self.manifest_path = self.root / "manifest.json"
        self.manifest = self._load_manifest()

    # --- manifest -----------------------------------------------------------------
    def _load_manifest(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {"version": MANIFEST_VERSION, "created": time.time(), "stages": {}}
        try:
            m = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RunDirError(
                f"{self.manifest_path} is corrupt ({e}); fix: delete that file to re-run every stage, or use a new run name"
            ) from None
        if not isinstance(m, dict) or not isinstance(m.get("stages"), dict):
            raise RunDirError(f"{self.manifest_path} has no 'stages' mapping; fix: delete it or use a new run name")
        return m

    def save_manifest(self) -> None:
        atomic_write_json(self.manifest_path, self.manifest)

    def record(self, stage: str) -> StageRecord:
        raw = self.manifest["stages"].get(stage)
        if raw is None:
            return StageRecord()
        known = StageRecord.__dataclass_fields__
        return StageRecord(**{k: v for k, v in raw.items() if k in known})

    def set_record(self, stage: str, rec: StageRecord) -> None:
        self.manifest["stages"][stage] = rec.__dict__.copy()
        self.save_manifest()

    # --- paths ----------------------------------------------------------------------
    def stage_dir(self, stage: str) -> Path:
        d = self.root / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def output_path(self, stage: str, name: str) -> Path:
        """Absolute path of a named output of an earlier stage, as recorded in the manifest.

        A stage that finished but failed its gate (status gate_failed) has its outputs: the pipeline only
        goes on past it with --keep-going, for diagnosis.

        Raises:
            RunDirError: that stage has not finished or has no such output.
        """
        rec = self.record(stage)
        if rec.status not in ("done", "gate_failed") or name not in rec.outputs:
            raise RunDirError(
                f"stage {stage} has no finished output {name!r} in {self.manifest_path} (status: {rec.status}); "
                f"fix: run it first (personatune run CONFIG --from {stage})"
            )
        return self.root / rec.outputs[name]["path"]

    def hash_outputs(self, outputs: dict[str, str | Path]) -> dict[str, dict[str, str]]:
        """name -> {"path": relative path, "hash": content hash} for outputs inside the run dir."""
        out = {}
        for name, p in outputs.items():
            p = Path(p)
            if not p.is_absolute():
                p = self.root / p
            if not p.exists():
                raise RunDirError(f"stage output {name!r} at {p} was not written")
            out[name] = {"path": str(p.relative_to(self.root)), "hash": file_hash(p)}
        return out

    def outputs_intact(self, rec: StageRecord) -> bool:
        for o in rec.outputs.values():
            p = self.root / o["path"]
            if not p.exists() or file_hash(p) != o["hash"]:
                return False
        return True

    def log(self, line: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.root / "log.txt", "a", encoding="utf-8") as f:
            f.write(f"{stamp} {line}\n")
