"""Progress lines with a rate and an ETA, for every step that takes longer than about 10 seconds.

A step that prints nothing for minutes looks hung. `EtaLine` is handed to whatever knows how far it
got (HFBackend calls it after each batch) and prints at most one line every `min_interval_s`, plus
the last one.

>>> lines = []
>>> eta = EtaLine("sampling", echo=lines.append, min_interval_s=0)
>>> eta(8, 32); eta(32, 32)
>>> lines[-1].startswith("  sampling: 32/32 prompts")
True
"""

from __future__ import annotations

import time
from collections.abc import Callable


class EtaLine:
    """A callable `(done, total)` that prints "  <label>: done/total <unit> (rate/s, ETA Ns)".

    Args:
        label: what is being done, e.g. "stage 7: sampling the final model".
        echo: where lines go (print, or a stage's echo that also writes log.txt).
        unit: what is counted.
        min_interval_s: least seconds between two lines (the last one always prints).
    """

    def __init__(
        self, label: str, echo: Callable[[str], object] = print, unit: str = "prompts", min_interval_s: float = 10.0
    ) -> None:
        self.label, self.echo, self.unit, self.min_interval_s = label, echo, unit, min_interval_s
        self.t0 = time.monotonic()
        self.last = float("-inf")

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last < self.min_interval_s:
            return
        self.last = now
        elapsed = max(now - self.t0, 1e-9)
        rate = done / elapsed
        eta = (total - done) / rate if rate > 0 else float("nan")
        tail = f"ETA {eta:.0f}s" if done < total else f"done in {elapsed:.0f}s"
        self.echo(f"  {self.label}: {done}/{total} {self.unit} ({rate:.2f}/s, {tail})")
