"""The run directory: the only channel between stages.

Layout of `<run_dir>/<name>/`:

    config.yaml        the fully resolved config, written before any work
    manifest.json      per stage: status, config hash, input/output hashes, gate, timings
    log.txt            one line per event (written through personatune.logs)
    NN_stage/          one folder per stage: gate.json, metrics.jsonl, artifacts

Every write is atomic (temp file in the same folder, fsync, `os.replace`), so a crash or
Ctrl-C never leaves a half-written file behind. The manifest is checked when it is read: every stage
entry must have the documented shape and every recorded output must lie inside the run directory. A stage is skipped on re-run when it is
recorded `done` with the same config hash and input hashes and its outputs are still intact;
anything else (never run, interrupted, failed, changed) runs again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from personatune import limits
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


# Characters a JSON string may hold raw that some line readers (str.splitlines, editors) take as a line
# break, and lone surrogates, which UTF-8 cannot encode: written as \uXXXX escapes.
_UNSAFE_IN_LINE = re.compile("[\u0085\u2028\u2029\ud800-\udfff]")


def json_line(obj: Any) -> str:
    """One JSONL line (with its "\n"): non-ASCII text kept readable, but U+0085, U+2028, U+2029 and lone
    surrogates escaped, so the line is valid UTF-8 and no reader can split it."""
    text = json.dumps(obj, ensure_ascii=False, default=str)
    return _UNSAFE_IN_LINE.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n"


def jsonl_lines(text: str) -> list[str]:
    """The lines of JSONL text, split on "\n" only (a trailing "\r" is dropped).

    `str.splitlines()` also splits on U+2028, U+2029, U+0085 and other characters that a JSON string may
    hold unescaped, which would cut a valid record in two and shift every later line number.
    """
    return [line.removesuffix("\r") for line in text.split("\n")]


def read_jsonl(
    path: str | Path, fix: str = "re-run the stage that wrote it", check: Callable[[Any], str | None] | None = None
) -> list[dict[str, Any]]:
    """Rows of a JSONL file written by a stage; with `check` (row -> problem or None), each row is checked too.

    Raises:
        DataError: the file is missing, a line is not valid JSON, or `check` finds a problem (names the file, the line
            and `fix`).
    """
    from personatune.errors import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} is missing; fix: {fix}")
    rows = []
    for i, line in enumerate(jsonl_lines(path.read_text(encoding="utf-8")), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path} line {i}: not valid JSON ({e.msg}); fix: {fix}") from None
            problem = check(rows[-1]) if check is not None else None
            if problem:
                raise DataError(f"{path} line {i}: {problem}; fix: correct or delete that line, or {fix}")
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


HAND_EDITED = " (outputs edited by hand, kept)"


@dataclass
class StageRecord:
    """What the manifest remembers of one stage."""

    status: str = "pending"  # pending | running | done | gate_failed | gate_inconclusive | failed | interrupted
    config_hash: str | None = None
    inputs: dict[str, str] = field(default_factory=dict)  # "stage:name" -> hash
    outputs: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> {"path": rel, "hash": h}
    gate: dict[str, Any] | None = None
    started: float | None = None
    finished: float | None = None
    seconds: float | None = None
    cpu_steal: float | None = None  # share of the CPU time the hypervisor took while the stage ran (cpu_time.py)
    error: str | None = None
    message: str | None = None


class RunDir:
    """A run directory and its manifest.

    Args:
        root: the run's folder (`<run_dir>/<name>`); created if missing.
    """

    def __init__(self, root: str | Path) -> None:
        if "\x00" in str(root):
            raise RunDirError(
                f"run directory {str(root)!r} contains a NUL byte; fix: set run_dir and name to plain folder names"
            )
        self.root = Path(root).resolve()  # absolute, so recorded outputs and relative paths never double up
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise self._unwritable(e) from None
        self.manifest_path = self.root / "manifest.json"
        self.manifest = self._load_manifest()

    def check_writable(self) -> None:
        """Raise RunDirError now, before any stage runs, when the run directory cannot take new files."""
        try:
            fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=self.root)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise self._unwritable(e) from None

    def _unwritable(self, e: OSError) -> RunDirError:
        existing = next((p for p in (self.root, *self.root.parents) if p.exists()), None)
        if existing is not None and not existing.is_dir():
            what = (
                "is a file, not a folder"
                if existing == self.root
                else f"cannot be created: {existing} is a file, not a folder"
            )
        else:
            what = f"cannot be written ({e.strerror or type(e).__name__})"
        return RunDirError(
            f"run directory {self.root} {what}; fix: set run_dir=... (and name=...) to a folder you can write"
        )

    # --- manifest -----------------------------------------------------------------
    def _load_manifest(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {"version": MANIFEST_VERSION, "created": time.time(), "stages": {}}
        fix = "fix: delete that file to re-run every stage, or use a new run name"
        try:
            m = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise RunDirError(f"{self.manifest_path} is corrupt ({limits.shorten(str(e), 200)}); {fix}") from None
        except OSError as e:
            raise RunDirError(
                f"{self.manifest_path} cannot be read ({e.strerror}); fix: check its permissions"
            ) from None
        if not isinstance(m, dict) or not isinstance(m.get("stages"), dict):
            raise RunDirError(f"{self.manifest_path} has no 'stages' mapping; {fix}")
        problems = [p for stage, raw in m["stages"].items() for p in self._record_problems(str(stage), raw)]
        if problems:
            raise RunDirError(
                f"{self.manifest_path} is damaged: {'; '.join(problems[:3])}"
                + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")
                + f"; {fix}"
            )
        return m

    def _record_problems(self, stage: str, raw: Any) -> list[str]:
        """What is wrong with one stage entry of the manifest (empty when it has StageRecord's shape)."""
        if not isinstance(raw, dict):
            return [f"stages.{stage} is {limits.short_repr(raw, 40)}, not an object"]
        out = []
        text_or_none = ("config_hash", "error", "message")
        for k in text_or_none:
            if raw.get(k) is not None and not isinstance(raw[k], str):
                out.append(f"stages.{stage}.{k} is not text")
        if not isinstance(raw.get("status", "pending"), str):
            out.append(f"stages.{stage}.status is not text")
        for k in ("started", "finished", "seconds"):
            v = raw.get(k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                out.append(f"stages.{stage}.{k} is not a number")
        if raw.get("gate") is not None and not isinstance(raw["gate"], dict):
            out.append(f"stages.{stage}.gate is not an object")
        inputs = raw.get("inputs", {})
        if not isinstance(inputs, dict) or not all(isinstance(v, str) for v in inputs.values()):
            out.append(f"stages.{stage}.inputs is not an object of hashes")
        outputs = raw.get("outputs", {})
        if not isinstance(outputs, dict):
            return out + [f"stages.{stage}.outputs is not an object"]
        for name, o in outputs.items():
            if not isinstance(o, dict) or not isinstance(o.get("path"), str) or not isinstance(o.get("hash"), str):
                out.append(f"stages.{stage}.outputs.{name} needs text 'path' and 'hash'")
            elif not self._inside(o["path"]):
                out.append(
                    f"stages.{stage}.outputs.{name}.path {limits.short_repr(o['path'], 60)} is outside the run directory"
                )
        return out

    def _inside(self, rel: str) -> bool:
        """True when `rel`, taken relative to the run directory, stays inside it (symlinks followed)."""
        if "\x00" in rel:
            return False
        return (self.root / rel).resolve().is_relative_to(self.root)

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

        A stage that finished but did not pass its gate (status gate_failed or gate_inconclusive) has its outputs: the pipeline only
        goes on past it with --keep-going, for diagnosis.

        Raises:
            RunDirError: that stage has not finished or has no such output.
        """
        rec = self.record(stage)
        if rec.status not in ("done", "gate_failed", "gate_inconclusive") or name not in rec.outputs:
            raise RunDirError(
                f"stage {stage} has no finished output {name!r} in {self.manifest_path} (status: {rec.status}); "
                f"fix: run it first (personatune run CONFIG --from {stage})"
            )
        rel = rec.outputs[name]["path"]
        if not self._inside(rel):  # checked at load too; a symlink placed since then is caught here
            raise RunDirError(
                f"output {name!r} of stage {stage} points outside the run directory ({limits.short_repr(rel, 60)}); "
                f"fix: re-run that stage (personatune run CONFIG --from {stage})"
            )
        return self.root / rel

    def hash_outputs(self, outputs: dict[str, str | Path]) -> dict[str, dict[str, str]]:
        """name -> {"path": relative path, "hash": content hash} for outputs inside the run dir."""
        out = {}
        for name, p in outputs.items():
            p = Path(p)
            if not p.is_absolute():
                p = self.root / p
            if not p.exists():
                raise RunDirError(f"stage output {name!r} at {p} was not written")
            if not p.resolve().is_relative_to(self.root):
                raise RunDirError(
                    f"stage output {name!r} at {p} is outside the run directory {self.root}; outputs must be written inside it"
                )
            out[name] = {"path": str(p.relative_to(self.root)), "hash": file_hash(p)}
        return out

    def outputs_intact(self, rec: StageRecord) -> bool:
        for o in rec.outputs.values():
            p = self.root / o["path"]
            if not self._inside(o["path"]) or not p.exists() or file_hash(p) != o["hash"]:
                return False
        return True

    def edited_outputs(self, rec: StageRecord) -> list[str]:
        """The recorded outputs that still exist but changed since the stage wrote them (edited by hand), as paths
        relative to the run directory; [] when every output is intact or one is missing (then the stage simply runs
        again: there is nothing to lose)."""
        paths = [o["path"] for o in rec.outputs.values()]
        if not all(self._inside(p) and (self.root / p).exists() for p in paths):
            return []
        return [o["path"] for o in rec.outputs.values() if file_hash(self.root / o["path"]) != o["hash"]]

    def keep_edited_outputs(self, stage: str, rec: StageRecord, before_from: bool) -> list[str]:
        """A done stage whose outputs were edited by hand (same config, same inputs): running it again would overwrite
        the edits. Before `--from` (the user asked to go on from a later stage) the edits are kept: recorded as the
        stage's outputs, so later stages read them, and marked in its message. Otherwise the run stops rather than
        lose them.

        Returns:
            The edited outputs, kept; [] when none was edited (an output is missing: the stage simply runs again).

        Raises:
            RunDirError: edited outputs and no `--from` past this stage (one line: which files, and both fixes).
        """
        edited = self.edited_outputs(rec)
        if not edited:
            return []
        n = int(stage[:2])
        if not before_from:
            raise RunDirError(
                f"{', '.join(edited)} changed since stage {n} ({stage}) wrote it, and running the stage again would "
                f"overwrite the edits; fix: keep them with `personatune run CONFIG --from {n + 1}` (the later stages read "
                f"them), or discard them with `--from {n}`"
            )
        rec.outputs = self.hash_outputs({name: self.root / o["path"] for name, o in rec.outputs.items()})
        rec.message = (rec.message or "").removesuffix(HAND_EDITED) + HAND_EDITED
        self.set_record(stage, rec)
        return edited
