"""Automatic mask generation ("segment everything"): point grid + crops, batched decode,
quality filters, NMS, run-length encoding.

``SamAutomaticMaskGenerator`` is the public entry point; :mod:`.rle` converts between binary
masks, uncompressed RLE and COCO RLE; :mod:`.job` runs it over many images with resumable
outputs (used by ``samkit everything``).
"""

from .generator import OUTPUT_MODES, SamAutomaticMaskGenerator

__all__ = ["SamAutomaticMaskGenerator", "OUTPUT_MODES"]
