"""personatune.cpu_time: the stolen share of CPU time between two /proc/stat readings, and the stage-line note."""

from personatune import cpu_time as machine


def test_steal_share_is_the_steal_delta_over_all_time():
    before = [100, 0, 10, 500, 0, 0, 0, 40, 0, 0]
    after = [160, 0, 20, 520, 0, 0, 0, 100, 0, 0]  # +60 user, +10 system, +20 idle, +60 steal
    assert machine.steal_share(before, after) == 60 / 150
    assert machine.fmt(0.4) == "steal 40 %"


def test_steal_share_unknown_without_readings_or_time():
    assert machine.steal_share(None, [1] * 8) is None
    assert machine.steal_share([1] * 8, [1] * 8) is None  # no time passed
    assert machine.fmt(None) == "steal n/a"
    now = machine.cpu_times()
    assert now is None or len(now) >= 8


def test_steal_note_only_from_five_per_cent():
    assert machine.steal_note(None) == ""
    assert machine.steal_note(0.049) == ""
    assert "stole 20 % of the CPU time" in machine.steal_note(0.2)
