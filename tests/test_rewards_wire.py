"""Values crossing the sandbox boundary round-trip exactly, and malformed data is rejected."""

import math

import pytest

from grpo_jax.rewards import wire


@pytest.mark.parametrize("value", [
    None, True, 0, -7, 2**80, -(2**80), 1.5, float("inf"), -0.0, 1e-300, 3 + 4j, "héllo", b"\x00\xff",
    [1, [2, (3, "x")]], (), {1: "a", "b": [None]}, {1, 2}, frozenset({"q"}), {(1, 2): {3.5}},
])
def test_round_trip(value):
    back = wire.loads(wire.dumps(value))
    assert back == value and type(back) is type(value)


def test_ints_past_the_decimal_conversion_limit_round_trip():
    """Python refuses str() and int() of more than 4,300 decimal digits; such results (e.g. factorial(2000))
    still cross, in hexadecimal."""
    for value in (10**5000, -(10**5000) + 1, math.factorial(2000)):
        assert wire.loads(wire.dumps(value)) == value


def test_nan_round_trips_as_nan():
    assert math.isnan(wire.loads(wire.dumps(float("nan"))))


def test_rejections():
    with pytest.raises(TypeError, match="cannot send a value of type object"):
        wire.dumps(object())
    with pytest.raises(TypeError, match="nested too deeply"):
        deep = []
        for _ in range(200):
            deep = [deep]
        wire.dumps(deep)
    for bad in ('{"x": 1}', '{"f": 3}', '{"d": 5}', '{"a": 1, "b": 2}', '{"h": "12g"}', '{"h": 12}'):
        with pytest.raises(ValueError):
            wire.loads(bad)
