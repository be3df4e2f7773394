"""Request and response bodies of the video endpoints (``/api/videos/...``), for validation and OpenAPI."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .schemas import RLE, Coordinate

__all__ = [
    "VideoResponse",
    "VideoPromptRequest",
    "VideoPromptResponse",
    "TrackRequest",
    "TrackProgress",
    "VideoObjectMask",
    "FrameMasksResponse",
    "MAX_OBJECT_ID",
]

MAX_OBJECT_ID = 1_000_000


class VideoResponse(BaseModel):
    """An open video."""

    id: str = Field(description="The video's id in the other /api/videos endpoints.")
    file_name: str
    frames: int = Field(description="Number of frames T; frames are numbered 0..T-1.")
    width: int
    height: int
    fps: float = Field(description="The container's frame rate (0 when it does not say).")
    objects: list[int] = Field(description="Object ids prompted so far, in the order first prompted.")


class VideoPromptRequest(BaseModel):
    """Clicks and/or a box for one object on one frame, in pixels of the video."""

    model_config = ConfigDict(extra="forbid")

    frame: int = Field(ge=0, description="The frame, 0..T-1.")
    object_id: int = Field(ge=0, le=MAX_OBJECT_ID, description="Any id; a new one adds an object.")
    points: list[tuple[Coordinate, Coordinate]] = Field(
        default_factory=list, description="[[x, y], ...] inside [0, width] x [0, height]."
    )
    labels: list[int] = Field(default_factory=list, description="One per point: 1 = object, 0 = background.")
    box: tuple[Coordinate, Coordinate, Coordinate, Coordinate] | None = Field(
        default=None, description="[x0, y0, x1, y1] inside the frame; needs clear_old_points."
    )
    clear_old_points: bool = Field(
        default=True,
        description="Replace this object's earlier prompts on this frame (send them all again, as the page "
        "does); false appends the points to them.",
    )
    format: Literal["rle", "png"] = Field(
        default="rle", description="rle: COCO compressed RLE; png: base64 1-bit PNG, background transparent."
    )


class VideoPromptResponse(BaseModel):
    """The object's mask on the prompted frame (the tracker's answer, before propagation)."""

    frame: int
    object_id: int
    width: int
    height: int
    format: Literal["rle", "png"]
    mask: str | RLE = Field(description="Base64 PNG (format png) or RLE (format rle).")
    area: int = Field(description="Pixels in the mask.")
    object_score: float = Field(description="The tracker's object score logit: > 0 means the object is visible.")
    objects: list[int] = Field(description="Every object id of the video, in order.")


class TrackRequest(BaseModel):
    """Where and which way to propagate the prompts."""

    model_config = ConfigDict(extra="forbid")

    start_frame: int | None = Field(default=None, ge=0, description="Default: the earliest prompted frame.")
    direction: Literal["forward", "backward", "both"] = Field(
        default="both",
        description="forward: to the last frame; backward: to frame 0; both: forward, then backward from "
        "start_frame (as samkit track does when the first prompt is not on frame 0).",
    )


class TrackProgress(BaseModel):
    """The video's last propagation (``POST .../track`` starts one; poll ``GET .../track``)."""

    status: Literal["idle", "running", "done", "failed", "stopped"]
    direction: Literal["forward", "backward", "both"]
    start_frame: int | None
    done: int = Field(description="Frames processed so far.")
    total: int = Field(description="Frames this propagation processes.")
    error: str | None = Field(description="Why it failed (status failed).")
    seconds: float = Field(description="How long it ran (once finished).")
    tracked_frames: list[int] = Field(description="Frames that have masks now, in order.")


class VideoObjectMask(BaseModel):
    """One object's stored mask on one frame."""

    object_id: int
    mask: str | RLE
    area: int
    bbox: list[int] = Field(description="[x, y, w, h] (XYWH); [0, 0, 0, 0] when empty.")


class FrameMasksResponse(BaseModel):
    """Every object's mask on one frame (from the last prompt or propagation that reached it)."""

    frame: int
    width: int
    height: int
    format: Literal["rle", "png"]
    objects: list[VideoObjectMask] = Field(description="In the video's object order; objects without a mask here are left out.")
