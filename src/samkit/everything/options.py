"""Checks of the generator's options: each error names the option and says what was expected."""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

import numpy as np

__all__ = ["check_grids", "check_int", "check_real"]


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int >= ``minimum`` (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {value}")
    return int(value)


def check_real(name: str, value: Any, low: float, high: float, *, high_open: bool = False) -> float:
    """``value`` as a finite float in [low, high] (or [low, high) with ``high_open``)."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    value = float(value)
    if value < low or value > high or (high_open and value == high):
        bracket = ")" if high_open else "]"
        raise ValueError(f"{name}: must lie in [{low:g}, {high:g}{bracket}, got {value:g}")
    return value


def check_grids(point_grids: Any, n_layers: int) -> list[np.ndarray]:
    """User point grids: one non-empty (N, 2) array in [0, 1] per crop layer (``n_layers`` + 1)."""
    if not isinstance(point_grids, (list, tuple)) or len(point_grids) == 0:
        raise ValueError("point_grids: expected a non-empty list of (N, 2) arrays")
    grids = []
    for i, grid in enumerate(point_grids):
        array = np.asarray(grid, dtype=np.float64)
        if array.ndim != 2 or array.shape[1] != 2 or array.shape[0] == 0:
            raise ValueError(f"point_grids[{i}]: expected a non-empty (N, 2) array, got shape {array.shape}")
        if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
            raise ValueError(f"point_grids[{i}]: points must be normalized to [0, 1]")
        grids.append(array)
    if len(grids) < n_layers + 1:
        raise ValueError(
            f"point_grids: crop_n_layers={n_layers} needs {n_layers + 1} grids (one per layer), got {len(grids)}"
        )
    return grids
