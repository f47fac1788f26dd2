"""Reading a run directory for the report: tolerant, read-only, no models.

The report is built from the run directory alone. Every reader here returns `None` (or an empty
list) when a file is absent, so a section can say "not run yet", and records a one-line warning
when a file exists but cannot be parsed, so one corrupt artifact never hides the rest of the run.
Files with a declared record (personatune.records: gate.json, metrics.jsonl, rounds.jsonl, final.json)
are read as those typed records: a field that does not fit is left out with a one-line warning
naming the file and the field, and the rest of the file is still shown.
A stage's file is found through the manifest's recorded outputs first and its documented default
path second (a stage still being written may not record it yet).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from personatune.errors import RunDirError
from personatune.records import STAGE_TITLES, FinalRecord, GateRecord, R, salvage_record
from personatune.rundir import jsonl_lines
from personatune.verdict import RunVerdict, run_verdict
from personatune.yaml_input import YamlLimitError, load_bounded

_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.-]+")

DRIFT_KL = "drift KL"
"""METRICS.md: KL(policy(.|x) || baseline(.|c, x)), c = the persona context; the gated KL since issue 15."""
PERSONA_SHIFT = "persona shift"
"""METRICS.md: the same KL against the baseline without c; information, not a gate."""
OLD_KL = "KL to the unprompted baseline (run written before drift KL)"
"""What `kl` means in files written before drift KL: KL against the baseline with no persona context."""
KL_UNIT = "nats/token"


@dataclass
class RunData:
    """What the report knows about one run directory.

    Attributes:
        root: the run's folder.
        config: the parsed `config.yaml` ({} when absent or unreadable).
        config_text: its raw text, shown verbatim in the report (None when absent).
        manifest: the parsed `manifest.json` ({"stages": {}} when absent or unreadable).
        warnings: one line per file that exists but could not be read.
    """

    root: Path
    config: dict[str, Any] = field(default_factory=dict)
    config_text: str | None = None
    manifest: dict[str, Any] = field(default_factory=lambda: {"stages": {}})
    warnings: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The run's name: `name` in its config, else the folder name."""
        n = self.config.get("name")
        return str(n) if n else self.root.name

    @property
    def stage_ids(self) -> list[str]:
        """The known stages in pipeline order, then any other stage the manifest records (plain folder names only:
        a stage id is used as a folder name, and `../x` must not make the report read outside the run)."""
        extra = sorted(
            s
            for s in self.manifest.get("stages", {})
            if s not in STAGE_TITLES and _PLAIN_NAME.fullmatch(s) and s.strip(".")
        )
        return list(STAGE_TITLES) + extra

    def verdict(self, final: FinalRecord | None) -> RunVerdict:
        """The run's verdict as `personatune run` decides it (personatune.verdict.run_verdict), and why.

        A failed or inconclusive gate makes it NO-DEPLOY (the pipeline stopped there, or went on with --keep-going
        for diagnosis only), with the stopping stage and its gate values; otherwise stage 7's verdict in
        final.json; otherwise none yet.
        """
        records = {s: self.record(s) for s in self.stage_ids}
        gates = {
            s: self.json(self.root / s / "gate.json")
            for s in self.stage_ids
            if self.status(s) in ("gate_failed", "gate_inconclusive")
        }
        return run_verdict(self.stage_ids, records, gates, final)

    def record(self, stage: str) -> dict[str, Any]:
        """The manifest's record of `stage` ({} when the stage never started)."""
        rec = self.manifest.get("stages", {}).get(stage)
        return rec if isinstance(rec, dict) else {}

    def status(self, stage: str) -> str | None:
        """The stage's manifest status ("done", "gate_failed", "gate_inconclusive", …), or None when it never started."""
        st = self.record(stage).get("status")
        return st if isinstance(st, str) else None

    def path(self, stage: str, output: str | None, default: str) -> Path:
        """Where a stage's file lies: the manifest's recorded output, else `<stage>/<default>`.

        Args:
            stage: the stage id, e.g. "03_consistency_data".
            output: the output name the stage records in the manifest (None: use `default` only).
            default: the documented path inside the stage folder; when the manifest output is a
                folder, `default` is taken relative to it instead.

        Returns:
            An absolute path inside the run directory (it may not exist).
        """
        rel = dig(self.record(stage), "outputs", output, "path") if output else None
        if isinstance(rel, str):
            p = (self.root / rel).resolve()
            # A hand-edited manifest must not make the report embed files from outside the run.
            if p.is_relative_to(self.root.resolve()):
                if p.is_dir():
                    return p / Path(default).name
                return p
        return self.root / stage / default

    def json(self, path: Path) -> Any:
        """Parse a JSON file; None when it is absent or corrupt (corrupt ones are warned about)."""
        text = self.text(path)
        if text is None:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            self.warnings.append(
                f"{self._rel(path)}: not valid JSON ({e.msg} at line {e.lineno}); its section is left out"
            )
            return None
        except RecursionError:
            self.warnings.append(f"{self._rel(path)}: JSON nested too deeply; its section is left out")
            return None

    def typed(self, model: type[R], path: Path) -> R | None:
        """A JSON file as its record (personatune.records); None when absent, corrupt or of no usable shape.

        Fields that do not fit the record are left out, each with a warning naming the file and the field.
        """
        data = self.json(path)
        if data is None:
            return None
        rec, problems = salvage_record(model, data, self._rel(path))
        self.warnings += problems
        return rec

    def typed_rows(self, model: type[R], path: Path) -> list[R]:
        """The rows of a JSONL file as records; rows that do not fit are skipped, fields that do not fit left out.

        One warning per file sums them up (a metrics file can hold thousands of rows).
        """
        rows: list[R] = []
        problems: list[str] = []
        skipped = 0
        for i, obj in enumerate(self.jsonl(path), 1):
            rec, why = salvage_record(model, obj, f"line {i}")
            problems += why
            if rec is None:
                skipped += 1
            else:
                rows.append(rec)
        if problems:
            fields = sum(1 for p in problems if p.endswith("; left out") and not p.endswith("section is left out"))
            what = ", ".join(
                x
                for x in (
                    f"{skipped} row(s) skipped" if skipped else "",
                    f"{fields} field(s) left out" if fields else "",
                )
                if x
            )
            first = problems[0].removesuffix("; its section is left out").removesuffix("; left out")
            self.warnings.append(f"{self._rel(path)}: {what}: they do not fit its record (first: {first})")
        return rows

    def gate(self, stage: str) -> GateRecord | None:
        """A stage's gate: its gate.json, else the summary its manifest record keeps; None when it has neither."""
        gate = self.typed(GateRecord, self.root / stage / "gate.json")
        if gate is None and isinstance(self.record(stage).get("gate"), dict):
            gate, problems = salvage_record(
                GateRecord, self.record(stage)["gate"], f"manifest.json stages.{stage}.gate"
            )
            self.warnings += problems
        return gate

    def jsonl(self, path: Path) -> list[dict[str, Any]]:
        """The JSON objects of a JSONL file; unparsable lines are skipped and counted in a warning."""
        text = self.text(path)
        if text is None:
            return []
        rows, bad = [], 0
        for line in jsonl_lines(text):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(obj, dict):
                rows.append(obj)
            else:
                bad += 1
        if bad:
            self.warnings.append(f"{self._rel(path)}: {bad} line(s) are not JSON objects and were skipped")
        return rows

    def yaml(self, path: Path) -> Any:
        """Parse a YAML file safely (no tags run code); None when absent or corrupt."""
        text = self.text(path)
        if text is None:
            return None
        try:
            return load_bounded(text)[0]
        except YamlLimitError as e:
            self.warnings.append(f"{self._rel(path)}: {e}; its section is left out")
            return None
        except yaml.YAMLError as e:
            self.warnings.append(
                f"{self._rel(path)}: not valid YAML ({str(e).splitlines()[0]}); its section is left out"
            )
            return None

    def text(self, path: Path) -> str | None:
        """A file's text; None when it is absent, a folder, or not UTF-8 (warned about)."""
        if not path.is_file():
            return None
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            self.warnings.append(f"{self._rel(path)}: unreadable ({type(e).__name__}); its section is left out")
            return None

    def _rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)


def load_run(run_dir: str | Path) -> RunData:
    """Open a run directory for reporting.

    Args:
        run_dir: the run's folder (`<run_dir>/<name>`, holding config.yaml and manifest.json).

    Returns:
        The run's config and manifest; later files are read on demand by the report sections.

    Raises:
        RunDirError: the folder does not exist or holds neither config.yaml nor manifest.json.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise RunDirError(
            f"run directory {str(root)!r} does not exist; fix: pass <run_dir>/<name> of a run (e.g. runs/quickstart)"
        )
    if not (root / "manifest.json").is_file() and not (root / "config.yaml").is_file():
        raise RunDirError(
            f"{str(root)!r} is not a run directory (no manifest.json or config.yaml); fix: pass <run_dir>/<name> of a run"
        )
    rd = RunData(root=root)
    cfg = rd.yaml(root / "config.yaml")
    rd.config = cfg if isinstance(cfg, dict) else {}
    rd.config_text = rd.text(root / "config.yaml")
    man = rd.json(root / "manifest.json")
    if isinstance(man, dict) and isinstance(man.get("stages"), dict):
        rd.manifest = man
    elif man is not None:
        rd.warnings.append("manifest.json: no 'stages' mapping; stage statuses are unknown")
    return rd


def num(v: Any) -> float | None:
    """A number from a bare number or a `{"value": x, ...}` measurement; None otherwise (and for NaN)."""
    if isinstance(v, dict):
        v = v.get("value")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return None if math.isnan(v) or math.isinf(v) else float(v)


def dig(obj: Any, *keys: str) -> Any:
    """`obj[k1][k2]…`, or None as soon as a level is missing or not a mapping."""
    for k in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(k)
    return obj
