"""A set of scored responses as the set-level metrics read it: records, their context label, JSON-ready values.

Shared by personatune.scoring.aggregate (consistency, adherence, summary) and personatune.scoring.style_variance.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

from personatune.gates import Measurement
from personatune.scoring.record import ResponseScore

NO_CONTEXT = "(none)"
"""Context label used in reports for records whose context is None."""


def _as_records(records: Iterable[ResponseScore | dict[str, Any]]) -> list[ResponseScore]:
    """The records as ResponseScores (dicts read back from JSONL are converted)."""
    return [r if isinstance(r, ResponseScore) else ResponseScore.from_dict(r) for r in records]


def _ctx(r: ResponseScore) -> str:
    """The record's context label; NO_CONTEXT when it has none."""
    return NO_CONTEXT if r.context is None else str(r.context)


def _jsonable(x: Any) -> Any:
    """Replace NaN/inf by None and tuples by lists, recursively, so json.dumps writes valid JSON."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Measurement):
        return _jsonable(asdict(x))
    return x
