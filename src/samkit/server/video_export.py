"""A video session's masks as files: the per-frame RLE document and a zip of mask PNGs.

The document has the layout of ``samkit track``'s ``tracks.json``: per frame and object a COCO
RLE (``counts`` as the compressed string), the area and the bbox (XYWH), so the two outputs
read the same way. Pure functions over the masks the session stored; no model work.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np

from ..everything.rle import counts_to_string, mask_to_rle, rle_to_mask, string_to_counts
from .encoding import mask_to_png

__all__ = ["mask_record", "record_mask", "tracks_document", "masks_zip"]

#: frame -> object id -> record (``mask_record``'s output)
FrameRecords = Mapping[int, Mapping[Hashable, dict[str, Any]]]


def mask_record(mask: np.ndarray) -> dict[str, Any]:
    """One object's mask on one frame, as ``tracks.json`` stores it.

    Args:
        mask: (H, W) bool.

    Returns:
        ``{"segmentation": {"size": [H, W], "counts": str}, "area": int, "bbox": [x, y, w, h]}``;
        the bbox of an empty mask is ``[0, 0, 0, 0]``.
    """
    (rle,) = mask_to_rle(np.ascontiguousarray(mask, dtype=bool))
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if len(rows):
        bbox = [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]
    else:
        bbox = [0, 0, 0, 0]
    return {
        "segmentation": {"size": rle["size"], "counts": counts_to_string(rle["counts"])},
        "area": int(np.count_nonzero(mask)),
        "bbox": bbox,
    }


def record_mask(record: Mapping[str, Any]) -> np.ndarray:
    """Inverse of :func:`mask_record`: the (H, W) bool mask."""
    segmentation = record["segmentation"]
    return rle_to_mask({"size": segmentation["size"], "counts": string_to_counts(segmentation["counts"])})


def tracks_document(
    records: FrameRecords,
    object_ids: list[Hashable],
    *,
    num_frames: int,
    width: int,
    height: int,
    fps: float,
    file_name: str,
) -> dict[str, Any]:
    """Every stored mask as one JSON-ready document (``samkit track``'s ``tracks.json`` layout).

    Args:
        records: frame -> object id -> :func:`mask_record` output.
        object_ids: the session's objects, in order; masks of other ids are left out.
        num_frames, width, height, fps, file_name: the video's.

    Returns:
        ``{"video", "num_frames", "height", "width", "fps", "objects": [str ids],
        "frames": [{"frame": f, "objects": {str id: record}}, ...]}``, frames in order, only
        frames with at least one mask.
    """
    frames = []
    for frame in sorted(records):
        objects = {str(obj): records[frame][obj] for obj in object_ids if obj in records[frame]}
        if objects:
            frames.append({"frame": frame, "objects": objects})
    return {
        "video": file_name,
        "num_frames": num_frames,
        "height": height,
        "width": width,
        "fps": fps,
        "objects": [str(obj) for obj in object_ids],
        "frames": frames,
    }


def masks_zip(document: dict[str, Any]) -> bytes:
    """A zip of ``masks/<frame:05d>_<object>.png`` (1-bit, white object) plus ``tracks.json``.

    Args:
        document: :func:`tracks_document` output.

    Returns:
        The zip file's bytes (PNGs stored, the JSON deflated).
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for entry in document["frames"]:
            for obj, record in entry["objects"].items():
                png = mask_to_png(record_mask(record))
                archive.writestr(f"masks/{entry['frame']:05d}_{obj}.png", png, compress_type=zipfile.ZIP_STORED)
        archive.writestr("tracks.json", json.dumps(document) + "\n", compress_type=zipfile.ZIP_DEFLATED)
    return buffer.getvalue()
