import math

import pytest

from personatune.gates import GateReport, GateResult, GateSpec, Measurement, check_gates, shown


@pytest.mark.parametrize(
    "direction,threshold,value,expected",
    [
        (">=", 0.85, 0.85, True),
        (">=", 0.85, 0.849, False),
        (">", 0.0, 0.0, False),
        (">", 0.0, 0.01, True),
        ("<=", 0.1, 0.1, True),
        ("<=", 0.1, 0.1001, False),
        ("<", 0.15, 0.15, False),
        ("<", 0.15, 0.149, True),
    ],
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


def test_rate_min_n_is_the_normal_width_at_the_threshold():
    import doctest
    import math

    import personatune.gates as gates_mod
    from personatune.gates import rate_min_n

    assert doctest.testmod(gates_mod).failed == 0
    # 1.96^2 * 0.85 * 0.15 / 0.06^2 = 136.06 -> 137; the interval at that n is within +-0.06, one fewer is not.
    assert rate_min_n(0.85) == 137 and rate_min_n(0.90) == 97 and rate_min_n(0.95) == 51
    for p in (0.85, 0.9, 0.95, 0.5):
        n = rate_min_n(p)
        assert 1.96 * math.sqrt(p * (1 - p) / n) <= 0.06 < 1.96 * math.sqrt(p * (1 - p) / (n - 1))
    assert rate_min_n(0.85, half_width=0.03) == 545  # a narrower interval costs four times the samples
    assert rate_min_n(0.0) == rate_min_n(1.0) == 1
    with pytest.raises(ValueError, match="threshold must lie in"):
        rate_min_n(1.5)


def test_shortfall_names_the_largest_need_per_key():
    from personatune.gates import GateReport, GateSpec, Measurement, check_gates

    specs = [
        GateSpec("a", 0.9, ">=", "fraction", min_n=97, n_key="k1"),
        GateSpec("b", 0.9, ">=", "fraction", min_n=30, n_key="k1"),
        GateSpec("c", 0.1, "<=", "nats", min_n=10, n_key="k2"),
        GateSpec("d", 0.5, ">=", "fraction"),
    ]
    rep = GateReport(
        "s",
        check_gates(
            specs,
            {
                "a": Measurement(0.95, n=7),
                "b": Measurement(0.95, n=20),
                "c": Measurement(0.05, n=10),
                "d": Measurement(0.6),
            },
        ),
    )
    assert rep.status == "inconclusive" and not rep.passed
    assert rep.shortfall() == "90 more samples needed (raise k1) for a, b"
    assert rep.results[0].meets_threshold() and rep.results[0].inconclusive
    assert "INCONCLUSIVE" in rep.summary()


def test_a_value_is_never_shown_on_the_wrong_side_of_its_threshold():
    # 0.149996 passes `< 0.15`; at 4 digits it would read "0.15 < 0.15", a failure.
    ok = GateResult("style_variance", 0.149996, 0.15, "<", "relative std", passed=True)
    assert "= 0.149996 < 0.15" in ok.line()
    bad = GateResult("style_variance", 0.150004, 0.15, "<", "relative std", passed=False)
    assert "= 0.15 < 0.15" in bad.line()  # 4 digits already read as a failure
    assert shown(0.8499999, 0.85, ">=") == "0.8499999"
    assert shown(0.912345, 0.85, ">=") == "0.9123"
