import math

import pytest

from personatune.gates import GateReport, GateSpec, Measurement, check_gates


@pytest.mark.parametrize(
    "direction,threshold,value,expected",
    [(">=", 0.85, 0.85, True), (">=", 0.85, 0.849, False), (">", 0.0, 0.0, False), (">", 0.0, 0.01, True),
     ("<=", 0.1, 0.1, True), ("<=", 0.1, 0.1001, False), ("<", 0.15, 0.15, False), ("<", 0.15, 0.149, True)],
)
def test_directions(direction, threshold, value, expected):
    spec = GateSpec("m", threshold, direction, "unit")
    assert check_gates([spec], {"m": Measurement(value, n=10)})[0].passed is expected


def test_missing_or_nan_metric_fails():
    spec = GateSpec("m", 0.5, ">=", "fraction")
    assert check_gates([spec], {})[0].passed is False
    assert check_gates([spec], {"m": None})[0].note == "not measured"
    assert check_gates([spec], {"m": Measurement(math.nan)})[0].passed is False


def test_bad_direction_rejected():
    with pytest.raises(ValueError):
        GateSpec("m", 0.5, "=>", "fraction")


def test_report_roundtrip_and_summary():
    specs = [GateSpec("a", 0.85, ">=", "fraction"), GateSpec("kl", 0.1, "<=", "nats/token")]
    res = check_gates(specs, {"a": Measurement(0.9, n=100, ci=(0.83, 0.95)), "kl": 0.2})
    rep = GateReport("05_optimization", res, diagnosis=["KL too high"], next_steps=["raise beta"])
    assert not rep.passed
    d = rep.to_dict()
    assert d["passed"] is False
    back = GateReport.from_dict(d)
    assert back.results[0].ci == (0.83, 0.95) and back.passed is False
    s = rep.summary()
    assert "PASS a = 0.9 >= 0.85" in s and "FAIL kl = 0.2 <= 0.1" in s and "raise beta" in s
