"""Where a command may write: checked before any work, so no input is ever overwritten.

`personatune score --output`, `fit --output`, `monitor --out` (and the JSON summary written beside
it) and `serve --log` name files the command writes or appends to. An output that resolves to one of
the command's inputs (the same path, through `..` or a symlink, or a hard link to it) would destroy
that input: `monitor prod.json --out prod.html` once replaced the production log by its own JSON
summary. Such an output, or one that is a folder where a file is written, is refused with one line
before anything is read or loaded.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from personatune import limits
from personatune.errors import ConfigError

MAX_FILES_PER_INPUT_FOLDER = 10_000
"""Files of an input folder (an evaluator, a model) compared with an output; a larger folder is compared by its top level only."""


def _files_of(path: Path) -> Iterable[Path]:
    """The file itself, or the files inside a folder (recursively, up to MAX_FILES_PER_INPUT_FOLDER)."""
    if not path.is_dir():
        return [path]
    found = []
    for i, p in enumerate(path.rglob("*")):
        if i >= MAX_FILES_PER_INPUT_FOLDER:
            return [q for q in path.iterdir() if q.is_file()]
        if p.is_file():
            found.append(p)
    return found


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop
        return False


def check_output_file(path: str | Path, option: str, inputs: Mapping[str, str | Path | None]) -> Path:
    """Refuse an output file that cannot be written as one, or that is one of the inputs.

    Args:
        path: the output file.
        option: how the user named it, e.g. "--output".
        inputs: what the command reads, by option name (a folder stands for every file in it; None is skipped).

    Returns:
        The output as a Path.

    Raises:
        ConfigError: the output is a folder, lies under a file, or is the same file as an input.
    """
    p = Path(path)
    if "\x00" in str(p):
        raise ConfigError(f"{option} {limits.short_repr(str(p))} contains a NUL byte; fix: give a plain file path")
    if p.is_dir():
        raise ConfigError(
            f"{option} {p} is a folder; fix: give the path of a file to write, e.g. {p / ('out' + (p.suffix or '.jsonl'))}"
        )
    blocker = next((q for q in p.parents if q.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise ConfigError(
            f"{option} {p} cannot be written: {blocker} is a file, not a folder; fix: choose a path in an existing folder"
        )
    _refuse_inputs(p, option, inputs)
    return p


def check_output_dir(
    path: str | Path, option: str, files: Iterable[str], inputs: Mapping[str, str | Path | None]
) -> Path:
    """Refuse an output folder that is a file, or whose files to be written include an input.

    Args:
        path: the output folder.
        option: how the user named it, e.g. "--output".
        files: the names the command writes inside the folder.
        inputs: what the command reads, by option name.

    Returns:
        The folder as a Path.

    Raises:
        ConfigError: the path is a file, or one of the files to be written is an input.
    """
    p = Path(path)
    if "\x00" in str(p):
        raise ConfigError(f"{option} {limits.short_repr(str(p))} contains a NUL byte; fix: give a plain folder path")
    if p.exists() and not p.is_dir():
        raise ConfigError(
            f"{option} {p} is a file, not a folder; fix: give the path of a folder (it is created if missing)"
        )
    for name in files:
        _refuse_inputs(p / name, option, inputs)
    return p


def _refuse_inputs(p: Path, option: str, inputs: Mapping[str, str | Path | None]) -> None:
    for what, inp in inputs.items():
        if inp is None or "\x00" in str(inp):
            continue
        for f in _files_of(Path(inp)):
            if _same_file(p, f):
                shown = f"{what} {inp}" if Path(inp) == f else f"{f} (in {what} {inp})"
                raise ConfigError(
                    f"{option} {p} is the same file as {shown}; writing it would destroy that input; "
                    f"fix: write to another path, e.g. {p.with_name(p.stem + '.out' + p.suffix)}"
                )
