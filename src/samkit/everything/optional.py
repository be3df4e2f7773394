"""Imports of optional dependencies with an error that says how to install them."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require_cv2"]


def require_cv2(purpose: str) -> ModuleType:
    """Import OpenCV (``cv2``) or raise an ImportError naming the extra that provides it.

    Args:
        purpose: what needs it, e.g. ``"min_mask_region_area > 0"``.
    """
    try:
        return importlib.import_module("cv2")
    except ImportError as exc:
        raise ImportError(
            f"{purpose} needs OpenCV: pip install 'samkit[everything]' (or opencv-python-headless)"
        ) from exc
