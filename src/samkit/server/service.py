"""The work behind the HTTP API: decode uploads, embed them once, answer prompts.

No HTTP here: failures are :class:`ServiceError` subclasses carrying the status code the
app should answer with. Model calls run in worker threads (PyTorch releases the GIL), so
the event loop keeps answering health checks and predicts while an image is embedded:

* one "heavy" thread embeds uploads and runs segment-everything, one job at a time (bounds
  memory and keeps the cores for the interactive path);
* ``predict_workers`` threads decode prompts; the mask decoder only reads the model and the
  per-image cache, so concurrent decodes are safe.

Caches: image embeddings in a :class:`ByteLRU` keyed by the sha256 of the uploaded bytes
(bounded by the bytes of the embeddings, the decoder's image-side cache and the decoded
pixels); low-res logits of recent predictions in a second one, keyed by random handles, so a
client can refine a mask by sending back ``mask_input_id``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import io
import logging
import secrets
import time
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..io import ImageReadError, load_image
from ..modeling import Sam
from ..modeling.hq_sam import HQSam
from ..modeling.sam2 import Sam2
from ..predictor import SamPredictor
from .cache import ByteLRU
from .encoding import encode_rle, mask_to_outlined_png_base64, mask_to_png_base64
from .export import EXPORT_PIXEL_BUDGET, ExportFormat, export_dataset
from .schemas import ExportRequest

__all__ = [
    "ServiceError",
    "NotFound",
    "PayloadTooLarge",
    "UnsupportedImage",
    "InvalidPrompt",
    "Busy",
    "Unavailable",
    "ImageEntry",
    "SegmentationService",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DEFAULT_MAX_UPLOAD_BYTES",
    "DEFAULT_CACHE_BYTES",
    "DEFAULT_LOGITS_CACHE_BYTES",
    "MAX_POINTS",
    "model_family",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_IMAGE_PIXELS = 40_000_000  # ~ 7300 x 5500; the decoded RGB alone is 120 MB
DEFAULT_MAX_UPLOAD_BYTES = 50 * 1024 * 1024
DEFAULT_CACHE_BYTES = 1024 * 1024 * 1024  # ~ 50 vit_b images of 967x546 (~20 MB each)
DEFAULT_LOGITS_CACHE_BYTES = 64 * 1024 * 1024  # 256 low-res masks (256x256 float32)
MAX_POINTS = 256


class ServiceError(Exception):
    """A request the service refuses; ``status`` is the HTTP status to answer with."""

    status: int = 400


class NotFound(ServiceError):
    """Unknown (or evicted) image id or logits handle."""

    status = 404


class PayloadTooLarge(ServiceError):
    """Upload over the byte or pixel limit."""

    status = 413


class UnsupportedImage(ServiceError):
    """The upload is not an image samkit can read."""

    status = 415


class InvalidPrompt(ServiceError):
    """Prompts that do not fit the image (outside it, mismatched labels, ...)."""

    status = 422


class Busy(ServiceError):
    """Too many embeddings queued."""

    status = 503


class Unavailable(ServiceError):
    """A feature this build lacks."""

    status = 501


def model_family(model: Sam | Sam2) -> Literal["sam", "hq_sam", "sam2"]:
    """Which kind of model the app serves: "sam" (SAM 1, MobileSAM), "hq_sam" or "sam2"."""
    if isinstance(model, HQSam):
        return "hq_sam"
    if isinstance(model, Sam2):
        return "sam2"
    return "sam"


@dataclass
class ImageEntry:
    """One uploaded image and its embedding.

    Attributes:
        image_id: sha256 (hex) of the uploaded bytes.
        width: Image width W in pixels.
        height: Image height H in pixels.
        image: (H, W, 3) uint8 RGB pixels (segment-everything needs them).
        predictor: A :class:`SamPredictor` with this image set.
        nbytes: Memory held: pixels + embedding + the decoder's image-side cache.
        embed_ms: Time the embedding took.
    """

    image_id: str
    width: int
    height: int
    image: np.ndarray
    predictor: SamPredictor
    nbytes: int
    embed_ms: float


@dataclass
class _Logits:
    image_id: str
    logits: np.ndarray  # (1, 256, 256) float32


def _json_number(value: Any) -> Any:
    """numpy scalars/arrays/tensors inside a record -> plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _json_number(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_number(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("ascii")
    return value


class SegmentationService:
    """Embeds uploads once and answers prompts against the cached embeddings.

    Call :meth:`add_image`, :meth:`predict` and :meth:`everything` from one asyncio event
    loop; :meth:`close` stops the worker threads.

    Args:
        model: The SAM model (eval mode).
        max_image_pixels: Largest image (W * H) accepted; larger ones are refused before
            their pixels are decoded (decompression bombs).
        max_upload_bytes: Largest upload accepted.
        cache_bytes: Bound on the memory of cached embeddings.
        logits_cache_bytes: Bound on the memory of low-res logits kept for ``mask_input_id``.
        max_pending_embeddings: Uploads that may wait for the embedding thread at once;
            beyond it uploads are refused with 503.
        predict_workers: Threads answering predicts.
    """

    def __init__(
        self,
        model: Sam,
        *,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        logits_cache_bytes: int = DEFAULT_LOGITS_CACHE_BYTES,
        max_pending_embeddings: int = 8,
        predict_workers: int = 2,
    ) -> None:
        if not isinstance(model, (Sam, Sam2)):
            raise TypeError(f"model: expected a samkit Sam model, got {type(model).__name__}")
        for name, value in (
            ("max_image_pixels", max_image_pixels),
            ("max_upload_bytes", max_upload_bytes),
            ("max_pending_embeddings", max_pending_embeddings),
            ("predict_workers", predict_workers),
        ):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.model = model
        self.max_image_pixels = int(max_image_pixels)
        self.max_upload_bytes = int(max_upload_bytes)
        self.max_pending_embeddings = int(max_pending_embeddings)
        self.images: ByteLRU[ImageEntry] = ByteLRU(cache_bytes, lambda e: e.nbytes, name="embeddings")
        self.logits: ByteLRU[_Logits] = ByteLRU(logits_cache_bytes, lambda e: e.logits.nbytes, name="logits")
        self._heavy = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="samkit-embed")
        self._light = concurrent.futures.ThreadPoolExecutor(int(predict_workers), thread_name_prefix="samkit-predict")
        self._pending: dict[str, asyncio.Future[ImageEntry]] = {}

    def close(self) -> None:
        """Stop the worker threads (running jobs finish first)."""
        self._heavy.shutdown(wait=True, cancel_futures=True)
        self._light.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------ images
    def get(self, image_id: str) -> ImageEntry:
        """The cached image ``image_id``.

        Raises:
            NotFound: never uploaded, or evicted from the cache (upload it again).
        """
        entry = self.images.get(image_id)
        if entry is None:
            raise NotFound(
                f"unknown image id {image_id[:80]!r} (never uploaded, or evicted from the cache: upload it again)"
            )
        return entry

    async def add_image(self, data: bytes) -> tuple[ImageEntry, bool]:
        """Decode and embed an uploaded image file, once per distinct content.

        Args:
            data: The encoded file (PNG, JPEG, ...).

        Returns:
            The entry, and whether it was already cached (or being embedded) before this call.

        Raises:
            PayloadTooLarge, UnsupportedImage, Busy.
        """
        if len(data) > self.max_upload_bytes:
            raise PayloadTooLarge(f"upload of {len(data)} bytes exceeds the limit of {self.max_upload_bytes} bytes")
        if not data:
            raise UnsupportedImage("empty upload: expected an image file")
        # Off the event loop: hashing 50 MB takes ~0.1 s (hashlib releases the GIL).
        image_id = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
        entry = self.images.get(image_id)
        if entry is not None:
            return entry, True
        pending = self._pending.get(image_id)
        if pending is not None:
            return await asyncio.shield(pending), True
        if len(self._pending) >= self.max_pending_embeddings:
            raise Busy(f"{len(self._pending)} images are waiting to be embedded; try again shortly")
        task = asyncio.ensure_future(self._embed(image_id, data))
        self._pending[image_id] = task

        def finished(done: asyncio.Future[ImageEntry]) -> None:
            self._pending.pop(image_id, None)
            if not done.cancelled():
                done.exception()  # retrieved here too, so a failure nobody awaits is not logged as lost

        task.add_done_callback(finished)
        # shield: a client that disconnects does not cancel the embedding (the next upload reuses it).
        return await asyncio.shield(task), False

    async def _embed(self, image_id: str, data: bytes) -> ImageEntry:
        loop = asyncio.get_running_loop()
        image = await loop.run_in_executor(self._light, self._decode, data)
        start = time.perf_counter()
        predictor = await loop.run_in_executor(self._heavy, self._encode, image)
        embed_ms = (time.perf_counter() - start) * 1000.0
        height, width = image.shape[:2]
        entry = ImageEntry(
            image_id=image_id,
            width=int(width),
            height=int(height),
            image=image,
            predictor=predictor,
            nbytes=int(image.nbytes) + predictor.nbytes(),
            embed_ms=embed_ms,
        )
        self.images.put(image_id, entry)
        logger.info("embedded image %s (%dx%d) in %.0f ms", image_id[:12], width, height, embed_ms)
        return entry

    def _decode(self, data: bytes) -> np.ndarray:
        """Encoded bytes -> (H, W, 3) uint8, checking the pixel count before decoding."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as header:  # reads the header only
                    width, height = header.size
        except Image.DecompressionBombError as exc:
            raise PayloadTooLarge(f"image has too many pixels ({exc})") from None
        except UnidentifiedImageError:
            raise UnsupportedImage(
                "not an image file samkit can read (expected PNG, JPEG, WebP, BMP, TIFF, ...)"
            ) from None
        except Exception as exc:  # noqa: BLE001 - any decoder failure (OSError, SyntaxError, ...) is the file's fault
            raise UnsupportedImage(f"cannot read the image header ({type(exc).__name__}: {exc})") from None
        if width * height > self.max_image_pixels:
            raise PayloadTooLarge(
                f"image of {width}x{height} = {width * height} pixels exceeds the limit of "
                f"{self.max_image_pixels} pixels"
            )
        try:
            return load_image(data, max_pixels=self.max_image_pixels)
        except ImageReadError as exc:
            raise UnsupportedImage(str(exc)) from None

    def _encode(self, image: np.ndarray) -> SamPredictor:
        predictor = SamPredictor(self.model)
        predictor.set_image(image)
        # One throw-away decode: per-size setup (upscaling tables, allocator) is paid here,
        # inside the seconds-long embedding, instead of on the user's first click.
        height, width = image.shape[:2]
        predictor.predict(point_coords=np.array([[width / 2, height / 2]]), point_labels=np.array([1]))
        return predictor

    async def preview(self, image_id: str) -> bytes:
        """The decoded image as a JPEG, for browsers that cannot display the uploaded format.

        Raises:
            NotFound: unknown or evicted image.
        """
        entry = self.get(image_id)

        def encode() -> bytes:
            buffer = io.BytesIO()
            Image.fromarray(entry.image).save(buffer, format="JPEG", quality=90)
            return buffer.getvalue()

        return await asyncio.to_thread(encode)

    # ----------------------------------------------------------------- prompts
    async def predict(
        self,
        image_id: str,
        *,
        points: list[tuple[float, float]],
        labels: list[int],
        box: tuple[float, float, float, float] | None,
        mask_input_id: str | None,
        multimask: bool,
        output_format: Literal["png", "rle", "outlined_png"],
        hq_token_only: bool = False,
    ) -> dict[str, Any]:
        """Masks for prompts given in image pixels.

        Args:
            image_id: An id returned by :meth:`add_image`.
            points: (N, 2) x, y in pixels of the uploaded image, inside [0, W] x [0, H].
            labels: (N,) 1 = object, 0 = background.
            box: x0, y0, x1, y1 in pixels, inside the image, or None.
            mask_input_id: A ``logits_ids`` entry of an earlier prediction on this image,
                fed to the decoder as the previous mask, or None.
            multimask: 3 candidate masks instead of 1.
            output_format: "png" (base64 1-bit PNG, white object on a transparent background),
                "outlined_png" (base64 2-bit indexed PNG: 0 background, 1 interior, 2 outline)
                or "rle" (COCO compressed RLE).
            hq_token_only: HQ-SAM models only: the HQ token's mask alone (see
                :meth:`samkit.SamPredictor.predict`).

        Returns:
            ``{"width", "height", "format", "masks", "scores", "areas", "logits_ids", "timing"}``;
            ``timing`` holds the milliseconds spent decoding and encoding.

        Raises:
            NotFound, InvalidPrompt.
        """
        if hq_token_only and not isinstance(self.model, HQSam):
            raise InvalidPrompt(
                "hq_token_only: only HQ-SAM models (hq_vit_*) have an HQ token; "
                f"this server runs {self.model.config.name}"
            )
        entry = self.get(image_id)
        coords, label_array, box_array = self._check_prompts(entry, points, labels, box)
        mask_input = None
        if mask_input_id is not None:
            held = self.logits.get(mask_input_id)
            if held is None:
                raise NotFound(f"unknown mask_input_id {mask_input_id!r} (expired: predict again without it)")
            if held.image_id != image_id:
                raise InvalidPrompt("mask_input_id: belongs to a different image")
            mask_input = held.logits
        if coords is None and box_array is None and mask_input is None:
            raise InvalidPrompt("give at least one point, a box or a mask_input_id")
        loop = asyncio.get_running_loop()
        hq_options = {"hq_token_only": hq_token_only} if isinstance(self.model, HQSam) else {}
        result = await loop.run_in_executor(
            self._light,
            self._predict_sync,
            entry,
            coords,
            label_array,
            box_array,
            mask_input,
            multimask,
            output_format,
            hq_options,
        )
        return result

    def _check_prompts(
        self,
        entry: ImageEntry,
        points: list[tuple[float, float]],
        labels: list[int],
        box: tuple[float, float, float, float] | None,
    ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        width, height = entry.width, entry.height
        if len(points) > MAX_POINTS:
            raise InvalidPrompt(f"points: at most {MAX_POINTS} points, got {len(points)}")
        if len(labels) != len(points):
            raise InvalidPrompt(f"labels: got {len(labels)} labels for {len(points)} points")
        for i, label in enumerate(labels):
            if label not in (0, 1):
                raise InvalidPrompt(f"labels[{i}]: must be 1 (object) or 0 (background), got {label}")
        for i, (x, y) in enumerate(points):
            if not (0.0 <= x <= width and 0.0 <= y <= height):
                raise InvalidPrompt(f"points[{i}] = ({x:g}, {y:g}) is outside the {width}x{height} image")
        coords = np.asarray(points, dtype=np.float64).reshape(-1, 2) if points else None  # (N, 2)
        label_array = np.asarray(labels, dtype=np.int64) if points else None  # (N,)
        box_array = None
        if box is not None:
            x0, y0, x1, y1 = box
            if not (0.0 <= x0 <= x1 <= width and 0.0 <= y0 <= y1 <= height):
                raise InvalidPrompt(
                    f"box = ({x0:g}, {y0:g}, {x1:g}, {y1:g}) must satisfy 0 <= x0 <= x1 <= {width} "
                    f"and 0 <= y0 <= y1 <= {height}"
                )
            box_array = np.asarray(box, dtype=np.float64)  # (4,)
        return coords, label_array, box_array

    def _predict_sync(
        self,
        entry: ImageEntry,
        coords: np.ndarray | None,
        labels: np.ndarray | None,
        box: np.ndarray | None,
        mask_input: np.ndarray | None,
        multimask: bool,
        output_format: str,
        hq_options: dict[str, bool],
    ) -> dict[str, Any]:
        start = time.perf_counter()
        try:
            masks, scores, low_res = entry.predictor.predict(
                point_coords=coords,
                point_labels=labels,
                box=box,
                mask_input=mask_input,
                multimask_output=multimask,
                **hq_options,
            )  # (C, H, W) bool, (C,), (C, 256, 256)
        except (ValueError, TypeError) as exc:
            raise InvalidPrompt(str(exc)) from None
        decoded = time.perf_counter()
        if output_format == "png":
            encoded: list[Any] = [mask_to_png_base64(m, transparent_background=True) for m in masks]
        elif output_format == "outlined_png":
            encoded = [mask_to_outlined_png_base64(m) for m in masks]
        else:
            encoded = [encode_rle(m) for m in masks]
        areas = [int(np.count_nonzero(m)) for m in masks]
        logits_ids = []
        for i in range(low_res.shape[0]):
            handle = secrets.token_urlsafe(12)
            self.logits.put(handle, _Logits(entry.image_id, np.ascontiguousarray(low_res[i : i + 1], dtype=np.float32)))
            logits_ids.append(handle)
        done = time.perf_counter()
        return {
            "width": entry.width,
            "height": entry.height,
            "format": output_format,
            "masks": encoded,
            "scores": [float(s) for s in scores],
            "areas": areas,
            "logits_ids": logits_ids,
            "timing": {"decode_ms": (decoded - start) * 1000.0, "encode_ms": (done - decoded) * 1000.0},
        }

    # -------------------------------------------------------------- everything
    async def everything(self, image_id: str, options: dict[str, Any]) -> dict[str, Any]:
        """Segment everything in a cached image.

        Args:
            image_id: An id returned by :meth:`add_image`.
            options: Keyword arguments for :class:`samkit.SamAutomaticMaskGenerator` (None
                values are left out, so the generator's defaults apply).

        Returns:
            ``{"width", "height", "masks": [{"segmentation": RLE, "area", "bbox", "predicted_iou",
            "stability_score", "point_coords", "crop_box"}, ...], "timing"}``.

        Raises:
            NotFound, Unavailable, InvalidPrompt.
        """
        entry = self.get(image_id)
        try:
            from ..everything import SamAutomaticMaskGenerator
        except ImportError as exc:
            raise Unavailable(f"segment-everything is not available in this build ({exc})") from None
        kwargs = {k: v for k, v in options.items() if v is not None}

        def run() -> dict[str, Any]:
            start = time.perf_counter()
            try:
                generator = SamAutomaticMaskGenerator(self.model, output_mode="coco_rle", **kwargs)
            except (ValueError, TypeError) as exc:
                raise InvalidPrompt(str(exc)) from None
            records = generator.generate(entry.image)
            masks = []
            for record in records:
                out = _json_number({k: v for k, v in record.items() if k != "segmentation"})
                segmentation = record["segmentation"]
                if isinstance(segmentation, np.ndarray):
                    out["segmentation"] = encode_rle(segmentation)
                else:
                    out["segmentation"] = _json_number(segmentation)
                masks.append(out)
            elapsed = (time.perf_counter() - start) * 1000.0
            logger.info("segment-everything on %s: %d masks in %.0f ms", image_id[:12], len(masks), elapsed)
            return {"width": entry.width, "height": entry.height, "masks": masks, "timing": {"everything_ms": elapsed}}

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._heavy, run)

    # ------------------------------------------------------------------ export
    async def export(self, request: ExportRequest, export_format: ExportFormat) -> tuple[bytes, str, str]:
        """Write labelled objects as COCO or zipped YOLO-seg (see :mod:`samkit.server.export`).

        Needs no cached image: the request carries the masks, so an evicted image still exports.

        Returns:
            (content, media type, suggested file name).

        Raises:
            PayloadTooLarge: an image over the pixel limit, or more objects x pixels than
                :data:`samkit.server.export.EXPORT_PIXEL_BUDGET`.
            InvalidPrompt: objects that do not fit the image or the categories.
            Unavailable: OpenCV missing (polygons).
        """
        pixels = request.width * request.height
        if pixels > self.max_image_pixels:
            raise PayloadTooLarge(
                f"image of {request.width}x{request.height} = {pixels} pixels exceeds the limit of "
                f"{self.max_image_pixels} pixels"
            )
        if len(request.objects) * pixels > EXPORT_PIXEL_BUDGET:
            raise PayloadTooLarge(
                f"{len(request.objects)} objects of {request.width}x{request.height} pixels exceed what one export "
                f"decodes ({EXPORT_PIXEL_BUDGET} pixels in all); export fewer objects at once"
            )

        def run() -> tuple[bytes, str, str]:
            try:
                return export_dataset(request, export_format)
            except ValueError as exc:
                raise InvalidPrompt(str(exc)) from None
            except ImportError as exc:
                raise Unavailable(str(exc)) from None

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._light, run)

    # ------------------------------------------------------------------ status
    def health(self) -> dict[str, Any]:
        """Liveness and cache figures; cheap, never touches the model."""
        return {
            "status": "ok",
            "model": self.model.config.name,
            "model_family": model_family(self.model),
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "device": str(self.model.device),
            "cached_images": len(self.images),
            "cache_bytes": self.images.nbytes,
            "cache_limit_bytes": self.images.max_bytes,
            "pending_embeddings": len(self._pending),
        }
