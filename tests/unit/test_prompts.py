"""samkit.prompts: loose user input -> checked arrays; every error names the argument."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from samkit.prompts import as_boxes, as_labels, as_mask_input, as_points


def test_as_points_accepts_lists_and_int_arrays() -> None:
    out = as_points([[1, 2], [3.5, 4]])
    assert out.dtype == np.float64 and out.shape == (2, 2)
    np.testing.assert_array_equal(out, [[1, 2], [3.5, 4]])
    np.testing.assert_array_equal(as_points(np.array([[5, 6]], dtype=np.int32)), [[5.0, 6.0]])


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        ([1, 2], ValueError, r"point_coords: expected shape \(N, 2\)"),
        ([[1, 2, 3]], ValueError, r"point_coords: expected shape \(N, 2\)"),
        (np.zeros((0, 2)), ValueError, r"point_coords: .*N >= 1"),
        (np.zeros((1, 1, 2)), ValueError, r"point_coords: expected shape"),
        ([[np.nan, 1.0]], ValueError, r"point_coords: contains NaN or infinite"),
        ([[np.inf, 1.0]], ValueError, r"point_coords: contains NaN or infinite"),
        ("1,2", TypeError, r"point_coords: expected a numeric array"),
        ([["a", "b"]], TypeError, r"point_coords: expected a numeric array"),
        ([[1, 2], [3]], TypeError, r"point_coords"),
    ],
)
def test_as_points_errors(value: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        as_points(value)


def test_as_labels_accepts_ints_bools_and_integral_floats() -> None:
    np.testing.assert_array_equal(as_labels([1, 0, 1], 3), [1, 0, 1])
    assert as_labels([1, 0], 2).dtype == np.int64
    np.testing.assert_array_equal(as_labels(np.array([True, False]), 2), [1, 0])
    np.testing.assert_array_equal(as_labels(np.array([1.0, 0.0]), 2), [1, 0])


@pytest.mark.parametrize(
    ("value", "n", "error", "match"),
    [
        (None, 1, ValueError, r"point_labels: required"),
        ([2], 1, ValueError, r"point_labels: labels must be 0 .* or 1 .*got 2"),
        ([-1], 1, ValueError, r"point_labels: labels must be 0 .* or 1"),
        ([0.5], 1, ValueError, r"point_labels: labels must be integers"),
        ([np.nan], 1, ValueError, r"point_labels: contains NaN"),
        ([1, 0], 3, ValueError, r"point_labels: has 2 labels but point_coords has 3 points"),
        ([[1]], 1, ValueError, r"point_labels: expected shape \(N,\)"),
        (["x"], 1, TypeError, r"point_labels: expected a numeric array"),
    ],
)
def test_as_labels_errors(value: Any, n: int, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        as_labels(value, n)


def test_as_boxes_shapes() -> None:
    one = as_boxes([1, 2, 3, 4])
    assert one.shape == (1, 4) and one.dtype == np.float64
    many = as_boxes(np.array([[0, 0, 1, 1], [2, 2, 5, 9]], dtype=np.int16))
    np.testing.assert_array_equal(many, [[0, 0, 1, 1], [2, 2, 5, 9]])
    np.testing.assert_array_equal(as_boxes([3, 3, 3, 3]), [[3, 3, 3, 3]])  # degenerate box is allowed


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        ([1, 2, 3], ValueError, r"box: expected shape \(4,\) or \(B, 4\)"),
        ([[1, 2, 3, 4, 5]], ValueError, r"box: expected shape"),
        (np.zeros((0, 4)), ValueError, r"box: expected shape"),
        (np.zeros((1, 1, 4)), ValueError, r"box: expected shape"),
        ([5, 0, 1, 4], ValueError, r"box: box 0 .*x1 < x0"),
        ([[0, 0, 4, 4], [0, 5, 4, 1]], ValueError, r"box: box 1 .*y1 < y0"),
        ([0, 0, np.nan, 4], ValueError, r"box: contains NaN or infinite"),
        ([0, 0, np.inf, 4], ValueError, r"box: contains NaN or infinite"),
        ("0 0 4 4", TypeError, r"box: expected a numeric array"),
    ],
)
def test_as_boxes_errors(value: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        as_boxes(value)


def test_as_mask_input() -> None:
    logits = np.random.default_rng(0).normal(size=(1, 256, 256))
    out = as_mask_input(logits, (256, 256))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, logits.astype(np.float32))
    for shape in [(256, 256), (3, 256, 256), (1, 64, 64), (1, 1, 256, 256)]:
        with pytest.raises(ValueError, match=r"mask_input: expected shape \(1, 256, 256\)"):
            as_mask_input(np.zeros(shape), (256, 256))
    bad = np.zeros((1, 256, 256))
    bad[0, 3, 4] = np.nan
    with pytest.raises(ValueError, match="mask_input: contains NaN"):
        as_mask_input(bad, (256, 256))
    with pytest.raises(TypeError, match="mask_input: expected a numeric array"):
        as_mask_input(np.full((1, 256, 256), "x"), (256, 256))
