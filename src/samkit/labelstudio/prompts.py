"""The prompts of an interactive Label Studio request, in image pixels.

Label Studio sends what the annotator did as ``context["result"]``: ``keypointlabels`` regions
(clicks; ``is_positive`` false for a negative click) and ``rectanglelabels`` regions (a box),
with coordinates in percent of the image. All of them together prompt one object, so a second
click refines the first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["InteractivePrompt", "PromptError", "parse_context"]


class PromptError(ValueError):
    """A context the backend cannot use (its message says why)."""


@dataclass(frozen=True)
class InteractivePrompt:
    """One object's prompts.

    Attributes:
        points: (N, 2) x, y in pixels, or None.
        labels: (N,) 1 for a positive click, 0 for a negative one, or None.
        box: (4,) x0, y0, x1, y1 in pixels, or None.
        label: the label the annotator picked (of the last region that named one), or None.
    """

    points: np.ndarray | None
    labels: np.ndarray | None
    box: np.ndarray | None
    label: str | None


def _percent(value: dict[str, Any], key: str) -> float:
    number = value.get(key)
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
        raise PromptError(f"context: region value {key!r} must be a finite number")
    return float(number)


def parse_context(context: Any, height: int, width: int) -> InteractivePrompt | None:
    """The prompts of ``context`` for an image of ``height`` x ``width``.

    Returns:
        None when the context holds no keypoint or rectangle region (nothing to segment).

    Raises:
        PromptError: a malformed region, a point outside the image, or more than one box.
    """
    if context is None:
        return None
    if not isinstance(context, dict) or not isinstance(context.get("result", []), list):
        raise PromptError("context: expected an object with a 'result' list")
    points: list[tuple[float, float]] = []
    labels: list[int] = []
    box: np.ndarray | None = None
    label: str | None = None
    for region in context.get("result", []):
        if not isinstance(region, dict) or not isinstance(region.get("value"), dict):
            raise PromptError("context: each result needs a 'value' object")
        kind, value = region.get("type"), region["value"]
        if kind == "keypointlabels":
            x, y = _percent(value, "x") * width / 100, _percent(value, "y") * height / 100
            if not (0 <= x <= width and 0 <= y <= height):
                raise PromptError(f"context: click ({x:.1f}, {y:.1f}) lies outside the {width}x{height} image")
            points.append((x, y))
            labels.append(0 if region.get("is_positive") is False else 1)
        elif kind == "rectanglelabels":
            if box is not None:
                raise PromptError("context: more than one rectangle")
            x0, y0 = _percent(value, "x") * width / 100, _percent(value, "y") * height / 100
            x1, y1 = x0 + _percent(value, "width") * width / 100, y0 + _percent(value, "height") * height / 100
            if not (x1 > x0 and y1 > y0):
                raise PromptError("context: empty rectangle")
            box = np.array([max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))])
        else:
            continue
        names = value.get(kind)
        if isinstance(names, list) and names and isinstance(names[0], str):
            label = names[0]
    if not points and box is None:
        return None
    return InteractivePrompt(
        points=np.array(points, dtype=np.float64) if points else None,
        labels=np.array(labels, dtype=np.int64) if labels else None,
        box=box,
        label=label,
    )
