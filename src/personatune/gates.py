"""Quality gates as data.

A `GateSpec` knows its metric, its threshold, its direction and its unit. `check_gates`
compares measured `Measurement`s with specs and returns one `GateResult` per spec, and
`GateReport` bundles them for a stage, with the diagnosis written next to the numbers.

>>> spec = GateSpec("consistency_rate", 0.85, ">=", "fraction of responses")
>>> r = check_gates([spec], {"consistency_rate": Measurement(0.9, n=200, ci=(0.85, 0.94))})
>>> r[0].passed
True
>>> small = GateSpec("consistency_rate", 0.85, ">=", "fraction of responses", min_n=100, n_key="data.max_prompts")
>>> check_gates([small], {"consistency_rate": Measurement(0.9, n=40)})[0].status
'inconclusive'

A gate with a minimum sample size (`min_n`) whose measurement rests on fewer samples is
**inconclusive**: it does not pass, and its note says how many more samples would decide it and
which config key buys them (METRICS.md, "Evidence").
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
        min_n: the sample size below which the result is inconclusive (None: no minimum). What `n`
            counts (responses, responses per side, prompts) is the metric's own, stated in `description`.
        n_key: the config key that raises the sample size (named in an inconclusive result's note).
    """

    metric: str
    threshold: float
    direction: Direction
    unit: str
    description: str = ""
    min_n: int | None = None
    n_key: str = ""

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


def shown(value: float, threshold: float, direction: str) -> str:
    """`value` to 4 significant digits, or more where 4 would read as the other side of the threshold.

    A style variance of 0.149996 passes `< 0.15`, but "0.15 < 0.15" reads as a failure; it is shown as 0.149996.
    """
    spec = GateSpec("", threshold, direction, "")  # type: ignore[arg-type]
    for digits in (4, 6, 8, 12):
        text = f"{value:.{digits}g}"
        if spec.holds(float(text)) == spec.holds(value):
            return text
    return repr(value)


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
    status: str = ""
    min_n: int | None = None
    n_key: str = ""

    def __post_init__(self) -> None:
        if not self.status:
            self.status = "pass" if self.passed else "fail"

    @property
    def inconclusive(self) -> bool:
        return self.status == "inconclusive"

    def meets_threshold(self) -> bool:
        """Whether the value meets the threshold, whatever the sample size (an inconclusive result may)."""
        return self.value is not None and GateSpec(self.metric, self.threshold, self.direction, self.unit).holds(
            self.value
        )  # type: ignore[arg-type]

    def line(self) -> str:
        """One human line: `PASS consistency_rate = 0.912 >= 0.85 (fraction, n=200, 95% CI 0.87-0.94)`."""
        v = "missing" if self.value is None else shown(self.value, self.threshold, self.direction)
        extra = [self.unit]
        if self.n is not None:
            extra.append(f"n={self.n}")
        if self.ci is not None:
            extra.append(f"95% CI {self.ci[0]:.3g}..{self.ci[1]:.3g}")
        s = f"{self.status.upper()} {self.metric} = {v} {self.direction} {self.threshold:g} ({', '.join(extra)})"
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

    @property
    def status(self) -> str:
        """ "pass" (every gate passed), "fail" (some gate failed) or "inconclusive" (none failed, some lacked samples)."""
        if self.passed:
            return "pass"
        return "fail" if any(r.status == "fail" for r in self.results) else "inconclusive"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        d["status"] = self.status
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GateReport":
        fields = set(GateResult.__dataclass_fields__)
        results = [
            GateResult(**{k: (tuple(v) if k == "ci" and v is not None else v) for k, v in r.items() if k in fields})
            for r in d.get("results", [])
        ]
        return cls(
            stage=d["stage"],
            results=results,
            diagnosis=list(d.get("diagnosis", [])),
            next_steps=list(d.get("next_steps", [])),
        )

    def shortfall(self) -> str:
        """Why an inconclusive report cannot decide: per config key, the most samples any of its gates still needs.

        >>> r = GateReport("04_evaluation", check_gates([GateSpec("adherence", 0.9, ">=", "fraction", min_n=97, n_key="data.max_prompts")],
        ...                                             {"adherence": Measurement(0.95, n=40)}))
        >>> r.shortfall()
        '57 more samples needed (raise data.max_prompts) for adherence'
        """
        need: dict[str, tuple[int, list[str]]] = {}
        for r in self.results:
            if r.inconclusive and r.min_n is not None:
                more, metrics = need.get(r.n_key, (0, []))
                need[r.n_key] = (max(more, r.min_n - (r.n or 0)), [*metrics, r.metric])
        return "; ".join(
            f"{more} more samples needed" + (f" (raise {key})" if key else "") + f" for {', '.join(m)}"
            for key, (more, m) in need.items()
        )

    def summary(self) -> str:
        word = {"pass": "PASSED", "fail": "FAILED", "inconclusive": "INCONCLUSIVE (too few samples to decide)"}[
            self.status
        ]
        lines = [f"[{self.stage}] gate {word}"]
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
        holds = value is not None and s.holds(value)
        status, note = ("pass" if holds else "fail"), ("" if m is not None else "not measured")
        if m is not None and s.min_n is not None and (m.n or 0) < s.min_n:
            # Too few samples to decide: neither pass nor fail (METRICS.md, "Evidence").
            status = "inconclusive"
            more = s.min_n - (m.n or 0)
            note = f"inconclusive: n={m.n or 0} < {s.min_n}; {more} more would decide it" + (
                f" (raise {s.n_key})" if s.n_key else ""
            )
        out.append(
            GateResult(
                metric=s.metric,
                value=value,
                threshold=s.threshold,
                direction=s.direction,
                unit=s.unit,
                passed=status == "pass",
                n=None if m is None else m.n,
                ci=None if m is None else m.ci,
                description=s.description,
                note=note,
                status=status,
                min_n=s.min_n,
                n_key=s.n_key,
            )
        )
    return out


Z95 = 1.96
"""Normal quantile of a two-sided 95% interval."""
RATE_HALF_WIDTH = 0.06
"""METRICS.md "Evidence": a rate's 95% interval may be at most about this wide on either side."""
AUROC_MIN_PER_SIDE = 30
"""METRICS.md "Evidence": an AUROC gate needs at least this many responses on each side (positives, negatives)."""
STYLE_VARIANCE_MIN_N = 30
"""Responses in qualifying context groups a style-variance gate needs (about 5 per context over six contexts):
below it the sampling-noise correction of `aggregate._between_std` dominates the between-context spread."""


def rate_min_n(threshold: float, half_width: float = RATE_HALF_WIDTH) -> int:
    """Fewest responses for a rate near `threshold` to have a 95% interval at most ±`half_width` wide.

    n = ceil(1.96² · p(1-p) / half_width²) at p = threshold (the normal-approximation width where the gate
    decides; rounded to 9 decimals before the ceiling so float noise cannot add one), at least 1.

    >>> rate_min_n(0.85), rate_min_n(0.90), rate_min_n(0.95), rate_min_n(0.5)
    (137, 97, 51, 267)
    >>> rate_min_n(1.0)
    1

    Raises:
        ValueError: threshold outside [0, 1] or half_width <= 0.
    """
    if not 0.0 <= threshold <= 1.0 or half_width <= 0:
        raise ValueError(
            f"rate_min_n: threshold must lie in [0, 1] and half_width be > 0; got threshold={threshold!r}, half_width={half_width!r}"
        )
    return max(1, math.ceil(round(Z95**2 * threshold * (1.0 - threshold) / half_width**2, 9)))


def fmt_metric(x: float | None, digits: int = 3) -> str:
    """A metric for a progress line: fixed decimals, or "not measured" for None."""
    return "not measured" if x is None else f"{x:.{digits}f}"
