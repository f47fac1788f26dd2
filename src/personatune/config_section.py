"""The base of every run-config section: unknown keys are errors and values are taken strictly.

pydantic's default (lax) mode takes YAML's `yes`/`on`/`true` as 1 for a whole number, accepts
`.inf` and `.nan` for a float, and lets through integers no tensor library can hold. A run config
is read once and drives hours of work, so a section refuses, at load time, with the field's path:

- true/false (YAML also spells them yes/no/on/off) where a number is expected;
- infinite or NaN floats (`allow_inf_nan=False`);
- whole numbers beyond personatune.limits.INT_MAX;
- text with a NUL byte (no path or name can hold one).

Text that spells a number (`1e-4`, which YAML 1.1 reads as a string) is still read as that number.

>>> class Demo(ConfigSection):
...     steps: int = 1
>>> try:
...     Demo(steps=True)
... except ValueError as e:
...     print(e.errors()[0]["msg"])
Value error, expected a number, got true (YAML reads yes/no/on/off as true/false)
"""

from __future__ import annotations

import types
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from personatune import limits


def _wants_number(annotation: Any) -> bool:
    """True when a field (or the items of a list field) takes int or float and not bool."""
    if get_origin(annotation) in (Union, types.UnionType):
        members = get_args(annotation)
        return bool not in members and any(_wants_number(m) for m in members)
    if get_origin(annotation) in (list, tuple):
        return any(_wants_number(a) for a in get_args(annotation) if a is not Ellipsis)
    return annotation in (int, float)


def _has_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    return isinstance(value, (list, tuple)) and any(isinstance(v, bool) for v in value)


def _check_plain(value: Any) -> None:
    """ValueError for a NUL byte in text or a whole number beyond limits.INT_MAX, at any depth of lists and dicts."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError(f"text {limits.short_repr(value)} contains a NUL byte; write it without")
    elif isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > limits.INT_MAX:
            raise ValueError(
                f"{limits.short_repr(value)} is beyond the largest whole number a setting takes ({limits.INT_MAX:,})"
            )
    elif isinstance(value, (list, tuple)):
        for v in value:
            _check_plain(v)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_plain(k)
            _check_plain(v)


class ConfigSection(BaseModel):
    """A config section: extra keys forbidden, assignments validated, values strict (module docstring)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is not None and _has_bool(value) and _wants_number(field.annotation):
            raise ValueError(f"expected a number, got {str(value).lower()} (YAML reads yes/no/on/off as true/false)")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _plain_values(cls, value: Any) -> Any:
        if not isinstance(value, BaseModel):
            _check_plain(value)
        return value
