"""The work behind the HTTP API: embed uploads once, answer prompts, segment everything, export.

No HTTP here: failures are :class:`~samkit.server.errors.ServiceError` subclasses carrying
the status code the app should answer with. Model calls run in worker threads (PyTorch
releases the GIL), so the event loop keeps answering health checks and predicts while an
image is embedded:

* one "heavy" thread embeds uploads and runs segment-everything, one job at a time (bounds
  memory and keeps the cores for the interactive path);
* ``predict_workers`` threads decode prompts; the mask decoder only reads the model and the
  per-image cache, so concurrent decodes are safe.

Caches: image embeddings in :class:`~samkit.server.embeddings.EmbeddingCache`, keyed by the
sha256 of the uploaded bytes; low-res logits of recent predictions in a
:class:`~samkit.server.cache.ByteLRU`, keyed by random handles, so a client can refine a
mask by sending back ``mask_input_id``.

The parts live beside this module: upload checks and decoding in :mod:`.uploads`, prompt
checks in :mod:`.prompt_checks`, the wire encoding of answers in :mod:`.responses`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..modeling import Sam
from ..modeling.hq_sam import HQSam
from ..modeling.sam2 import Sam2
from .cache import ByteLRU
from .embeddings import EmbeddingCache, ImageEntry
from .errors import InvalidPrompt, NotFound, PayloadTooLarge, Unavailable
from .export import EXPORT_PIXEL_BUDGET, ExportFormat, export_dataset
from .prompt_checks import check_prompts
from .responses import MaskFormat, encode_masks, everything_masks
from .schemas import ExportRequest
from .uploads import check_pixel_count, check_upload_size, jpeg_preview

__all__ = [
    "SegmentationService",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DEFAULT_MAX_UPLOAD_BYTES",
    "DEFAULT_CACHE_BYTES",
    "DEFAULT_LOGITS_CACHE_BYTES",
    "model_family",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_IMAGE_PIXELS = 40_000_000  # ~ 7300 x 5500; the decoded RGB alone is 120 MB
DEFAULT_MAX_UPLOAD_BYTES = 50 * 1024 * 1024
DEFAULT_CACHE_BYTES = 1024 * 1024 * 1024  # ~ 50 vit_b images of 967x546 (~20 MB each)
DEFAULT_LOGITS_CACHE_BYTES = 64 * 1024 * 1024  # 256 low-res masks (256x256 float32)


def model_family(model: Sam | Sam2) -> Literal["sam", "hq_sam", "sam2"]:
    """Which kind of model the app serves: "sam" (SAM 1, MobileSAM), "hq_sam" or "sam2"."""
    if isinstance(model, HQSam):
        return "hq_sam"
    if isinstance(model, Sam2):
        return "sam2"
    return "sam"


@dataclass
class _Logits:
    image_id: str
    logits: np.ndarray  # (1, 256, 256) float32


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
        self.logits: ByteLRU[_Logits] = ByteLRU(logits_cache_bytes, lambda e: e.logits.nbytes, name="logits")
        self._heavy = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="samkit-embed")
        self._light = concurrent.futures.ThreadPoolExecutor(int(predict_workers), thread_name_prefix="samkit-predict")
        self.embeddings = EmbeddingCache(
            model,
            cache_bytes=cache_bytes,
            max_image_pixels=self.max_image_pixels,
            max_pending=self.max_pending_embeddings,
            decode_pool=self._light,
            embed_pool=self._heavy,
        )

    @property
    def images(self) -> ByteLRU[ImageEntry]:
        """The cached images by id (the LRU of :attr:`embeddings`)."""
        return self.embeddings.entries

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
        return self.embeddings.get(image_id)

    async def add_image(self, data: bytes) -> tuple[ImageEntry, bool]:
        """Decode and embed an uploaded image file, once per distinct content.

        Args:
            data: The encoded file (PNG, JPEG, ...).

        Returns:
            The entry, and whether it was already cached (or being embedded) before this call.

        Raises:
            PayloadTooLarge, UnsupportedImage, Busy.
        """
        check_upload_size(data, self.max_upload_bytes)
        return await self.embeddings.add(data)

    async def preview(self, image_id: str) -> bytes:
        """The decoded image as a JPEG, for browsers that cannot display the uploaded format.

        Raises:
            NotFound: unknown or evicted image.
        """
        entry = self.get(image_id)
        return await asyncio.to_thread(jpeg_preview, entry.image)

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
        output_format: MaskFormat,
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
        coords, label_array, box_array = check_prompts(entry.width, entry.height, points, labels, box)
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
        encoded = encode_masks(masks, output_format)
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
            masks = everything_masks(generator.generate(entry.image))
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
        check_pixel_count(request.width, request.height, self.max_image_pixels)
        pixels = request.width * request.height
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
            "pending_embeddings": self.embeddings.pending,
        }
