"""The per-response score record: what the scorer says about one response (METRICS.md).

This is the one schema every scorer, aggregate, stage and report reads. Its JSON form is the
line format of `personatune score --output`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


@dataclass
class ResponseScore:
    """Scores of one response against one persona.

    Attributes:
        id: the input item's id.
        traits: trait id -> probability in [0,1] that the trait is expressed.
        violations: trait id -> probability in [0,1] that the response contradicts the trait.
        style: style feature name -> value (units in scoring/style.py).
        style_match: closeness of the style to the persona's style target, in [0,1].
        rules: behaviour id -> True (pass) / False (fail), for behaviours with a machine check.
        hard_rules: ids of the rules whose failure makes a response inconsistent.
        consistent: METRICS.md decision: no violation >= 0.5, every hard rule passes,
            style_match >= 0.5, mean expressed prob over targeted traits (all if none) >= 0.5.
        consistency: continuous score in [0,1] whose 0.5 line is `consistent`; also the reward.
        targets: trait ids the prompt targets (empty: none in particular).
        context: context label of the prompt (e.g. "casual"), or None.
        on_task: probability in [0,1] that the response addresses the user's request (None: not
            measured, e.g. no prompt was given).
    """

    id: str
    traits: dict[str, float]
    violations: dict[str, float]
    style: dict[str, float]
    style_match: float
    rules: dict[str, bool]
    consistent: bool
    consistency: float
    targets: list[str] = field(default_factory=list)
    context: str | None = None
    hard_rules: list[str] = field(default_factory=list)
    on_task: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ResponseScore":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


class ScorerLike(Protocol):
    """`personatune.scoring.scorer.Scorer` or anything with its `score` signature (serve and monitor take one)."""

    def score(
        self,
        texts: list[str],
        prompts: list[str | None] | None = None,
        contexts: list[str | None] | None = None,
        targets: list[list[str]] | None = None,
        ids: list[str] | None = None,
    ) -> list[ResponseScore]: ...
