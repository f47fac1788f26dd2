"""Quality gates as data.

A `GateSpec` knows its metric, its threshold, its direction and its unit. `check_gates`
compares measured `Measurement`s with specs and returns one `GateResult` per spec, and
`GateReport` bundles them for a stage, with the diagnosis written next to the numbers.

>>> spec = GateSpec("consistency_rate", 0.85, ">=", "fraction of responses")
>>> r = check_gates([spec], {"consistency_rate": Measurement(0.9, n=200, ci=(0.85, 0.94))})
>>> r[0].passed
True
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Direction = Literal[">=", ">", "<=", "<"]


@dataclass(frozen=True)
class GateSpec:
    """One threshold on one metric.

    Attributes:
        metric: metric name, as the stage reports it (e.g. "consistency_rate").
        threshold: the bound the measured value must meet.
        direction: ">=", ">", "<=" or "<": how the value must compare with the threshold.
        unit: unit of value and threshold, in words (e.g. "nats/token", "fraction of responses").
        description: one sentence on what is measured, on what.
    """

    metric: str
    threshold: float
    direction: Direction
    unit: str
    description: str = ""

    def __post_init__(self) -> None:
        if self.direction not in (">=", ">", "<=", "<"):
            raise ValueError(f"GateSpec.direction must be one of >=, >, <=, <; got {self.direction!r}")

    @property
    def higher_is_better(self) -> bool:
        return self.direction in (">=", ">")

    def holds(self, value: float) -> bool:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        return {
            ">=": value >= self.threshold,
            ">": value > self.threshold,
            "<=": value <= self.threshold,
            "<": value < self.threshold,
        }[self.direction]


@dataclass
class Measurement:
    """A measured value with its sample size and (optional) 95% confidence interval."""

    value: float
    n: int | None = None
    ci: tuple[float, float] | None = None


@dataclass
class GateResult:
    """The outcome of one `GateSpec` against one `Measurement`. Written to gate.json."""

    metric: str
    value: float | None
    threshold: float
    direction: str
    unit: str
    passed: bool
    n: int | None = None
    ci: tuple[float, float] | None = None
    description: str = ""
    note: str = ""

    def line(self) -> str:
        """One human line: `PASS consistency_rate = 0.912 >= 0.85 (fraction, n=200, 95% CI 0.87-0.94)`."""
        v = "missing" if self.value is None else f"{self.value:.4g}"
        extra = [self.unit]
        if self.n is not None:
            extra.append(f"n={self.n}")
        if self.ci is not None:
            extra.append(f"95% CI {self.ci[0]:.3g}..{self.ci[1]:.3g}")
        s = f"{'PASS' if self.passed else 'FAIL'} {self.metric} = {v} {self.direction} {self.threshold:g} ({', '.join(extra)})"
        return s + (f" — {self.note}" if self.note else "")


@dataclass
class GateReport:
    """All gate results of one stage plus the diagnosis shown when it fails."""

    stage: str
    results: list[GateResult] = field(default_factory=list)
    diagnosis: list[str] = field(default_factory=list)
    next_steps: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GateReport":
        results = [GateResult(**{k: (tuple(v) if k == "ci" and v is not None else v) for k, v in r.items()}) for r in d.get("results", [])]
        return cls(stage=d["stage"], results=results, diagnosis=list(d.get("diagnosis", [])), next_steps=list(d.get("next_steps", [])))

    def summary(self) -> str:
        lines = [f"[{self.stage}] gate {'PASSED' if self.passed else 'FAILED'}"]
        lines += ["  " + r.line() for r in self.results]
        if not self.passed:
            lines += ["  cause: " + d for d in self.diagnosis]
            lines += ["  fix:   " + s for s in self.next_steps]
        return "\n".join(lines)


def check_gates(specs: list[GateSpec], measured: dict[str, Measurement | float | None]) -> list[GateResult]:
    """Compare every spec with its measurement. A missing metric fails its gate (never passes silently).

    Args:
        specs: the thresholds to check.
        measured: metric name -> Measurement (or a bare float, or None when it could not be computed).

    Returns:
        One GateResult per spec, in the order of `specs`.
    """
    out: list[GateResult] = []
    for s in specs:
        m = measured.get(s.metric)
        if m is not None and not isinstance(m, Measurement):
            m = Measurement(float(m))
        value = None if m is None else m.value
        out.append(
            GateResult(
                metric=s.metric,
                value=value,
                threshold=s.threshold,
                direction=s.direction,
                unit=s.unit,
                passed=(value is not None and s.holds(value)),
                n=None if m is None else m.n,
                ci=None if m is None else m.ci,
                description=s.description,
                note="" if m is not None else "not measured",
            )
        )
    return out


def fmt_metric(x: float | None, digits: int = 3) -> str:
    """A metric for a progress line: fixed decimals, or "not measured" for None."""
    return "not measured" if x is None else f"{x:.{digits}f}"
