"""What the VM gave a run: the share of CPU time the hypervisor stole (/proc/stat "steal").

On this project's 2-core VM the steal share moved from a few per cent to 50-66 % within minutes (vmstat, 2026-12-03):
the "machine drift" that timings of one variant after another, or of one run against another, run into. The pipeline
records it per stage (manifest `cpu_steal`, and a note on the stage's line when it is 5 % or more); the benchmarks print
it per timed variant beside the process's CPU time (time.process_time: stolen time is not charged to the process, so
CPU-time ratios hold while the steal moves). Linux only; elsewhere `steal_share` returns None.
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


NOTE_MIN = 0.05


def steal_note(share: float | None) -> str:
    """A note for a stage's line when the hypervisor took NOTE_MIN (5 %) or more of the CPU time, else ''."""
    if share is None or share < NOTE_MIN:
        return ""
    return f" (the hypervisor stole {100 * share:.0f} % of the CPU time: this stage ran that much slower)"
