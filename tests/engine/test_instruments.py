"""The JSON form of the traces: what every engine writes into a record."""

from __future__ import annotations

import math

import numpy as np

from stabcheck.engine.instruments import to_jsonable


def reference(value: float) -> float | None:
    """Value by value, as the traces have always been written."""
    return float(f"{value:.7g}") if math.isfinite(value) else None


def test_to_jsonable_rounds_like_format_value_by_value() -> None:
    rng = np.random.default_rng(0)
    values = rng.standard_normal(2000) * 10.0 ** rng.integers(-320, 308, 2000)
    special = [np.nan, np.inf, -np.inf, -0.0, 0.0, 5e-324, -2.5e-310, 1.7976931348623157e308,
               0.5, 1.00000005, 9.9999995e-5, 123456.75]
    flat = np.concatenate([values, special])
    out = to_jsonable(flat)
    expected = [reference(v) for v in flat.tolist()]
    assert out == expected
    assert [type(v) for v in out] == [type(v) for v in expected]
    signs = [math.copysign(1.0, v) for v in out if v is not None]
    assert signs == [math.copysign(1.0, v) for v in expected if v is not None]  # -0.0 kept


def test_to_jsonable_keeps_the_shape() -> None:
    grid = np.array([[1.234567891, np.nan], [np.inf, -3.0]])
    assert to_jsonable(grid) == [[1.234568, None], [None, -3.0]]
    assert to_jsonable(np.float32(0.1)) == 0.1
    assert to_jsonable(np.nan) is None
    assert to_jsonable(np.zeros((0, 3))) == [] and to_jsonable([]) == []
    assert to_jsonable(np.zeros((2, 0))) == [[], []]
    cube = np.arange(24.0).reshape(2, 3, 4) / 7
    assert to_jsonable(cube) == [[[reference(v) for v in row] for row in m] for m in cube.tolist()]
