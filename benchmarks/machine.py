"""What the VM gave a timed run: the share of CPU time the hypervisor stole (/proc/stat "steal").

On this project's 2-core VM the steal share moved from a few per cent to 50-66 % within minutes (vmstat, 2026-12-03),
which is the machine drift that timings of one variant after another run into. Benchmarks print it per variant so a
ratio taken while one side was starved can be seen as such, and report the process's CPU time (time.process_time) beside
the wall time: stolen time is not charged to the process, so CPU-time ratios hold while the steal moves. Linux only;
elsewhere `steal_share` returns None.
"""

from __future__ import annotations

from pathlib import Path


def cpu_times() -> list[int] | None:
    """The aggregate "cpu" line of /proc/stat (user nice system idle iowait irq softirq steal ...), or None."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    return [int(x) for x in first[1:]] if first and first[0] == "cpu" else None


def steal_share(before: list[int] | None, after: list[int] | None) -> float | None:
    """Stolen share of all CPU time between two `cpu_times()` readings (0-1), or None where unknown."""
    if before is None or after is None or len(before) < 8 or len(after) < 8:
        return None
    d = [a - b for a, b in zip(after, before)]
    total = sum(d[:8])
    return d[7] / total if total > 0 else None


def fmt(share: float | None) -> str:
    """'steal 12 %' or 'steal n/a'."""
    return "steal n/a" if share is None else f"steal {100 * share:.0f} %"
