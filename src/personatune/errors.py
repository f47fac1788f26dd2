"""The error types the CLI turns into one clear line (never a traceback).

Every error a user can cause by their input derives from `PersonatuneError`. Its message
must name the field or path, the value, and the fix. The CLI catches exactly this type.
"""

from __future__ import annotations


class PersonatuneError(Exception):
    """Base class: a problem with the user's input or environment, shown as one message."""

    exit_code: int = 2


class ConfigError(PersonatuneError):
    """A run config (YAML or key=value override) is invalid. Lists every problem at once."""


class PersonaSpecError(PersonatuneError):
    """A persona file is invalid. The message lists every problem with field path and line."""


class ModelNotFoundError(PersonatuneError):
    """A model name or path could not be resolved; the message lists what was tried."""


class RunDirError(PersonatuneError):
    """The run directory or its manifest is missing, corrupt, or inconsistent."""


class DataError(PersonatuneError):
    """A dataset file is missing, corrupt, or has the wrong columns."""


class GateFailed(PersonatuneError):
    """A quality gate failed; the pipeline stops. Exit code 1 (a failed gate, not bad input)."""

    exit_code = 1
