"""Request and response bodies of the HTTP API (they make up the OpenAPI schema)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ErrorResponse",
    "HealthResponse",
    "ImageResponse",
    "PredictRequest",
    "PredictResponse",
    "RLE",
    "EverythingRequest",
    "EverythingMask",
    "EverythingResponse",
    "ExportObject",
    "ExportRequest",
    "MAX_EXPORT_OBJECTS",
    "MAX_CATEGORIES",
]

Coordinate = Annotated[float, Field(allow_inf_nan=False)]
Finite = Annotated[float, Field(allow_inf_nan=False)]

MAX_EXPORT_OBJECTS = 5000
MAX_CATEGORIES = 1000
MAX_PROMPT_POINTS = 256  # as many as a predict takes (prompt_checks.MAX_POINTS)
CategoryName = Annotated[str, Field(min_length=1, max_length=200)]


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer."""

    error: str = Field(description="What went wrong, in one line.")


class HealthResponse(BaseModel):
    """``GET /api/health``."""

    status: Literal["ok"]
    model: str
    model_family: Literal["sam", "hq_sam", "sam2"] = Field(
        description="sam: SAM 1 / MobileSAM (3 candidate masks); hq_sam: HQ-SAM (1 mask, predict takes "
        "hq_token_only); sam2: SAM 2 / 2.1 (3 candidate masks)."
    )
    dtype: str
    device: str
    cached_images: int
    cache_bytes: int
    cache_limit_bytes: int
    pending_embeddings: int
    video: bool = Field(default=False, description="Whether /api/videos works (a SAM 2.x video model is loaded).")
    video_reason: str | None = Field(default=None, description="Why video mode is off, when it is.")
    video_sessions: int = Field(default=0, description="Videos open now.")
    max_video_sessions: int = 0
    max_video_bytes: int = 0
    max_video_frames: int = 0


class ImageResponse(BaseModel):
    """An uploaded (and embedded) image."""

    id: str = Field(description="sha256 (hex) of the uploaded bytes; use it in the other endpoints.")
    width: int
    height: int
    cached: bool = Field(description="True when this content was embedded before (no new embedding was computed).")
    embed_ms: float = Field(description="Time the embedding took when it was computed.")


class RLE(BaseModel):
    """COCO compressed run-length encoding (column-major), as pycocotools writes it."""

    size: tuple[int, int] = Field(description="[height, width]")
    counts: str


class PredictRequest(BaseModel):
    """Prompts for one object, in pixels of the uploaded image."""

    model_config = ConfigDict(extra="forbid")

    points: list[tuple[Coordinate, Coordinate]] = Field(
        default_factory=list, description="[[x, y], ...] inside [0, width] x [0, height]."
    )
    labels: list[int] = Field(default_factory=list, description="One per point: 1 = object, 0 = background.")
    box: tuple[Coordinate, Coordinate, Coordinate, Coordinate] | None = Field(
        default=None, description="[x0, y0, x1, y1] inside the image."
    )
    mask_input_id: str | None = Field(
        default=None,
        description="A logits_ids entry of an earlier prediction on this image: its low-res logits are "
        "fed back as the previous mask (iterative refinement).",
    )
    multimask: bool = Field(default=True, description="Return 3 candidate masks instead of 1 (HQ-SAM: 1 either way).")
    hq_token_only: bool = Field(
        default=False,
        description="HQ-SAM models only (health's model_family 'hq_sam'): the HQ token's mask alone, without "
        "SAM's own mask added (the official option of that name); true with another model is refused (422).",
    )
    format: Literal["png", "rle", "outlined_png"] = Field(
        default="png",
        description="png: per mask a base64 1-bit PNG (white object, background black and marked transparent "
        "with tRNS, so it overlays directly); rle: per mask a COCO compressed RLE; outlined_png: per mask a "
        "base64 2-bit indexed PNG, index 0 = background (transparent), 1 = object interior, 2 = object "
        "outline (object pixels with a 4-neighbour outside the object or the image), both object indices "
        "opaque white: recolour it by rewriting the PLTE and tRNS chunks (what the web page does).",
    )


class PredictResponse(BaseModel):
    """Candidate masks for the prompts, in the model's order (not sorted by score)."""

    width: int
    height: int
    format: Literal["png", "rle", "outlined_png"]
    masks: list[str] | list[RLE] = Field(description="Base64 PNGs (formats png, outlined_png) or RLEs (format rle).")
    scores: list[float] = Field(description="Predicted IoU of each mask.")
    areas: list[int] = Field(description="Pixels in each mask.")
    logits_ids: list[str] = Field(description="Handles of each mask's low-res logits, for mask_input_id.")


class EverythingRequest(BaseModel):
    """Options of the automatic mask generator; omitted ones take the generator's defaults."""

    model_config = ConfigDict(extra="forbid")

    points_per_side: int | None = Field(default=None, ge=1, le=64)
    points_per_batch: int | None = Field(default=None, ge=1, le=1024)
    pred_iou_thresh: float | None = Field(default=None, ge=0.0, le=1.0)
    stability_score_thresh: float | None = Field(default=None, ge=0.0, le=1.0)
    box_nms_thresh: float | None = Field(default=None, ge=0.0, le=1.0)
    crop_n_layers: int | None = Field(default=None, ge=0, le=3)


class EverythingMask(BaseModel):
    """One automatically found mask (the official generator's record, RLE segmentation)."""

    segmentation: RLE
    area: int
    bbox: list[float] = Field(description="[x, y, w, h] (XYWH, COCO).")
    predicted_iou: float
    stability_score: float
    point_coords: list[list[float]]
    crop_box: list[float] = Field(description="[x, y, w, h] of the crop the mask came from.")


class EverythingResponse(BaseModel):
    """``POST /api/images/{id}/everything``."""

    width: int
    height: int
    masks: list[EverythingMask]


class ExportObject(BaseModel):
    """One labelled object of an export."""

    model_config = ConfigDict(extra="forbid")

    segmentation: RLE = Field(description="The object's mask; its size must be the export's [height, width].")
    category: CategoryName = Field(description="The object's category: one of the export's categories.")
    score: Finite | None = Field(default=None, description="SAM's predicted IoU (COCO predicted_iou).")
    point_coords: list[tuple[Coordinate, Coordinate]] = Field(
        default_factory=list, max_length=MAX_PROMPT_POINTS, description="The prompt points [[x, y], ...], kept in COCO."
    )
    point_labels: list[int] = Field(default_factory=list, max_length=MAX_PROMPT_POINTS)
    box: tuple[Coordinate, Coordinate, Coordinate, Coordinate] | None = Field(
        default=None, description="The prompt box [x0, y0, x1, y1] (COCO prompt_box)."
    )


class ExportRequest(BaseModel):
    """The objects of one image, sent (as the ``annotations`` part of a multipart form) to
    ``POST /api/export/coco`` or ``/api/export/yolo``."""

    model_config = ConfigDict(extra="forbid")

    file_name: str = Field(
        default="image.png",
        min_length=1,
        max_length=200,
        description="The image's file name (COCO file_name; the YOLO label file is named after it). "
        "Only the last path component is used.",
    )
    width: int = Field(ge=1, description="Image width W.")
    height: int = Field(ge=1, description="Image height H.")
    categories: list[CategoryName] = Field(
        default_factory=list,
        max_length=MAX_CATEGORIES,
        description="Category names in order: COCO ids 1, 2, ... and YOLO class indices 0, 1, ... follow it, so "
        "send the same list for every image of a data set. Empty: the objects' categories in order of first use.",
    )
    objects: list[ExportObject] = Field(max_length=MAX_EXPORT_OBJECTS)
    polygons: bool = Field(default=False, description="COCO only: polygons instead of RLE segmentations.")
