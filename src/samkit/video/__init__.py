"""Video tracking with SAM 2.x: frame sources, the session state and ``SamVideoPredictor``.

``SamVideoPredictor`` follows the official ``SAM2VideoPredictor`` workflow (``init_state``,
``add_new_points_or_box``, ``add_new_mask``, ``propagate_in_video``, ...). Frames are decoded
lazily and only the outputs the tracker can still read are kept (see ``state.py``).
"""

from __future__ import annotations

from .frames import FrameFolder, FrameSource, VideoFile, VideoReadError, open_frames
from .predictor import NO_OBJ_SCORE, FrameMasks, SamVideoPredictor
from .state import FrameOutput, VideoState

__all__ = [
    "NO_OBJ_SCORE",
    "FrameFolder",
    "FrameMasks",
    "FrameOutput",
    "FrameSource",
    "SamVideoPredictor",
    "VideoFile",
    "VideoReadError",
    "VideoState",
    "open_frames",
]
