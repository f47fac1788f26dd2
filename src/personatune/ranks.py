"""This process among the launched ones (one process, or one of several under accelerate launch / torchrun), and the
main-rank-only pattern: a block runs on the main rank, and its value or its error reaches every rank.

>>> ranks = Ranks()  # one process
>>> with ranks.on_main() as shared:
...     if shared.here:
...         shared.value = 6 * 7
>>> shared.value
42
"""

from __future__ import annotations

from typing import Any, Callable

from personatune import errors


class MainRankBlock:
    """The context manager of `Ranks.on_main`; `value` is what the main rank set, on every rank after the block.

    Attributes:
        here: whether this process runs the block (the main rank); the block body must check it.
        value: set by the block on the main rank; broadcast to the others when the block ends.
    """

    def __init__(self, ranks: "Ranks", what: str) -> None:
        self.ranks = ranks
        self.what = what
        self.here = ranks.is_main
        self.value: Any = None

    def __enter__(self) -> "MainRankBlock":
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if self.ranks.num_processes == 1:
            return False
        from accelerate.utils import broadcast_object_list

        if self.here:
            if exc is not None and not isinstance(exc, Exception):
                return False  # KeyboardInterrupt and the like end the launch anyway
            if exc is not None:
                name = type(exc).__name__ if isinstance(exc, errors.PersonatuneError) else None
                msg = str(exc) if name else f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                broadcast_object_list([("error", name, msg)], from_process=0)
                return False  # the main rank raises its own error, with its traceback
            broadcast_object_list([("ok", self.value)], from_process=0)
            return False
        box: list[Any] = [None]
        broadcast_object_list(box, from_process=0)
        if box[0][0] == "ok":
            self.value = box[0][1]
            return False
        _, name, msg = box[0]
        if name is not None:
            raise getattr(errors, name, errors.PersonatuneError)(msg)
        raise errors.PersonatuneError(
            f"{self.what}: the main rank failed ({msg}); fix: see the main rank's traceback above, "
            f"then re-run the same command (finished work is kept)"
        )


class Ranks:
    """This process among the launched ones (accelerate's PartialState).

    One process: `on_main()` runs its block and `main_only(fn)` is just `fn()`. Several: the main rank runs the block
    (sampling, scoring, evaluating, writing files) while the others wait in a broadcast for its value, or for its
    error, which they then raise too (same class, same one-line message): no rank leaves the stage alone and hangs
    the others in the next collective. Every call must be reached by every rank, in the same order; the block itself
    must not enter a collective (it runs on one rank).
    """

    def __init__(self, num_processes: int = 1, process_index: int = 0, what: str = "stage") -> None:
        self.num_processes = num_processes
        self.process_index = process_index
        self.what = what

    @property
    def is_main(self) -> bool:
        return self.process_index == 0

    @classmethod
    def current(cls, config: Any, what: str = "stage") -> "Ranks":
        """The launch this process belongs to (1 process when not launched by accelerate/torchrun).

        The state is set up with `cpu=` matching where the model goes, as TRL's trainer later does (`use_cpu`):
        a CPU launch then joins the gloo group, where `cpu=False` would see no GPU and fall back to one process.
        When this call creates the process group (not stage 5 before it in the same process), its timeout is
        transformers' `ddp_timeout` default, 30 minutes: the longest the other ranks wait for a main-rank phase.

        Args:
            config: the RunConfig (its `model.device`).
            what: names the work in the error the other ranks raise when the main rank fails (e.g. "stage 06_iterations").

        Raises:
            ConfigError: model.device is not a device (or names CUDA on a machine without it).
        """
        from datetime import timedelta

        from accelerate import PartialState

        from personatune.models import _resolve_device

        state = PartialState(cpu=_resolve_device(config.model.device) == "cpu", timeout=timedelta(seconds=1800))
        return cls(state.num_processes, state.process_index, what)

    def on_main(self) -> MainRankBlock:
        """`with ranks.on_main() as shared:` — the block runs where `shared.here` (the main rank) and sets `shared.value`;
        after the block every rank holds that value, or raises the main rank's error."""
        return MainRankBlock(self, self.what)

    def main_only(self, fn: Callable[[], Any]) -> Any:
        """`fn()` on the main rank; every rank returns its (picklable) value or raises its error."""
        with self.on_main() as shared:
            if shared.here:
                shared.value = fn()
        return shared.value
