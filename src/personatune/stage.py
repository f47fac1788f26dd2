"""What a stage is: a module with one entry point `run(config, run_dir) -> StageResult`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from personatune.config import RunConfig
from personatune.gates import GateReport
from personatune.rundir import RunDir


@dataclass
class StageResult:
    """What a stage hands back to the runner.

    Attributes:
        outputs: logical name -> file or folder inside the run dir (later stages find them through the manifest).
        gate: the stage's gate report, or None for a stage without a gate.
        metrics: small JSON-ready numbers shown in the summary and stored in the manifest.
        message: one line for the console.
    """

    outputs: dict[str, Path] = field(default_factory=dict)
    gate: GateReport | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    message: str = ""


class StageFn(Protocol):
    def __call__(self, config: RunConfig, run_dir: RunDir) -> StageResult: ...


@dataclass(frozen=True)
class Stage:
    """One row of the pipeline's stage table.

    Attributes:
        id: folder name and manifest key, e.g. "02_persona".
        title: what the workflow calls it.
        run: the entry point, or None while the stage is not implemented yet.
        config_keys: top-level config sections the stage reads (part of its cache key).
        inputs: (stage id, output name) pairs it reads (their hashes are part of its cache key).
        version: bump when the stage's code changes what it writes, so old results re-run.
        issue: the tracker issue that implements it (shown while it is missing).
        multi_process: the stage may run under `accelerate launch` / torchrun with several ranks (it coordinates
            them itself); any other stage must run in one process, before or after the launch.
    """

    id: str
    title: str
    run: Callable[[RunConfig, RunDir], StageResult] | None
    config_keys: tuple[str, ...] = ()
    inputs: tuple[tuple[str, str], ...] = ()
    version: int = 1
    issue: int | None = None
    multi_process: bool = False
