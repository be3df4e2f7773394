"""samkit: fast, exact Segment Anything (SAM) inference.

Public API::

    from samkit import build_sam, SamPredictor
    sam = build_sam("vit_b")                  # downloads the official checkpoint once
    predictor = SamPredictor(sam)
    predictor.set_image(image)                # (H, W, 3) uint8 RGB
    masks, scores, logits = predictor.predict(point_coords=[[x, y]], point_labels=[1])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "build_sam",
    "build_sam_video",
    "sam_model_registry",
    "SamPredictor",
    "SamVideoPredictor",
    "SamAutomaticMaskGenerator",
    "SamConfig",
    "VARIANTS",
    "load_image",
    "keep_freed_memory",
    "annotate",
    "__version__",
]

# Lazy attributes: importing samkit stays cheap (no torch import until needed).
_LAZY = {
    "build_sam": ("samkit.build", "build_sam"),
    "build_sam_video": ("samkit.build_sam2", "build_sam_video"),
    "sam_model_registry": ("samkit.build", "sam_model_registry"),
    "SamPredictor": ("samkit.predictor", "SamPredictor"),
    "SamVideoPredictor": ("samkit.video", "SamVideoPredictor"),
    "SamAutomaticMaskGenerator": ("samkit.everything", "SamAutomaticMaskGenerator"),
    "SamConfig": ("samkit.config", "SamConfig"),
    "VARIANTS": ("samkit.config", "VARIANTS"),
    "load_image": ("samkit.io", "load_image"),
    "keep_freed_memory": ("samkit.allocator", "keep_freed_memory"),
    "annotate": ("samkit.annotation", "annotate"),
}

if TYPE_CHECKING:  # pragma: no cover
    from .allocator import keep_freed_memory
    from .annotation import annotate
    from .build import build_sam, sam_model_registry
    from .build_sam2 import build_sam_video
    from .config import VARIANTS, SamConfig
    from .everything import SamAutomaticMaskGenerator
    from .io import load_image
    from .predictor import SamPredictor
    from .video import SamVideoPredictor


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        value = getattr(importlib.import_module(module_name), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'samkit' has no attribute {name!r}")
