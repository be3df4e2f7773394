"""Uploaded images, embedded once per distinct content and kept in a byte-bounded cache.

An image's id is the sha256 of its uploaded bytes, so the same file uploaded twice is
embedded once; an upload that arrives while the same content is being embedded waits for
that embedding instead of starting another. Decoding runs on the caller's light pool, the
embedding itself on the heavy pool (one job at a time).

Each :class:`ImageEntry` holds a :class:`~samkit.SamPredictor` with the image set; the cache
is bounded by the bytes of the embeddings, the decoder's image-side cache and the decoded
pixels (:class:`~samkit.server.cache.ByteLRU`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import time
from dataclasses import dataclass

import numpy as np

from ..modeling import Sam
from ..modeling.sam2 import Sam2
from ..predictor import SamPredictor
from .cache import ByteLRU
from .errors import Busy, NotFound
from .uploads import decode_upload

__all__ = ["ImageEntry", "EmbeddingCache"]

logger = logging.getLogger(__name__)


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


class EmbeddingCache:
    """Embeds uploads once per distinct content and keeps the entries, least recently used out.

    Call :meth:`add` from one asyncio event loop.

    Args:
        model: The SAM model (eval mode).
        cache_bytes: Bound on the memory of cached entries.
        max_image_pixels: Largest image (W * H) accepted (checked before decoding).
        max_pending: Uploads that may wait for the embedding pool at once; beyond it
            :meth:`add` raises :class:`Busy`.
        decode_pool: Threads that decode uploads (and warm up the decoder).
        embed_pool: The thread that embeds images.
    """

    def __init__(
        self,
        model: Sam | Sam2,
        *,
        cache_bytes: int,
        max_image_pixels: int,
        max_pending: int,
        decode_pool: concurrent.futures.Executor,
        embed_pool: concurrent.futures.Executor,
    ) -> None:
        self.model = model
        self.max_image_pixels = int(max_image_pixels)
        self.max_pending = int(max_pending)
        self.entries: ByteLRU[ImageEntry] = ByteLRU(cache_bytes, lambda e: e.nbytes, name="embeddings")
        self._decode_pool = decode_pool
        self._embed_pool = embed_pool
        self._pending: dict[str, asyncio.Future[ImageEntry]] = {}

    @property
    def pending(self) -> int:
        """Uploads being decoded or embedded now."""
        return len(self._pending)

    def get(self, image_id: str) -> ImageEntry:
        """The cached image ``image_id``.

        Raises:
            NotFound: never uploaded, or evicted from the cache (upload it again).
        """
        entry = self.entries.get(image_id)
        if entry is None:
            raise NotFound(
                f"unknown image id {image_id[:80]!r} (never uploaded, or evicted from the cache: upload it again)"
            )
        return entry

    async def add(self, data: bytes) -> tuple[ImageEntry, bool]:
        """Decode and embed an image file, once per distinct content.

        Args:
            data: The encoded file (PNG, JPEG, ...), already checked for size.

        Returns:
            The entry, and whether it was already cached (or being embedded) before this call.

        Raises:
            PayloadTooLarge, UnsupportedImage, Busy.
        """
        # Off the event loop: hashing 50 MB takes ~0.1 s (hashlib releases the GIL).
        image_id = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
        entry = self.entries.get(image_id)
        if entry is not None:
            return entry, True
        pending = self._pending.get(image_id)
        if pending is not None:
            return await asyncio.shield(pending), True
        if len(self._pending) >= self.max_pending:
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
        image = await loop.run_in_executor(self._decode_pool, decode_upload, data, self.max_image_pixels)
        start = time.perf_counter()
        predictor = await loop.run_in_executor(self._embed_pool, self._encode, image)
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
        self.entries.put(image_id, entry)
        logger.info("embedded image %s (%dx%d) in %.0f ms", image_id[:12], width, height, embed_ms)
        return entry

    def _encode(self, image: np.ndarray) -> SamPredictor:
        predictor = SamPredictor(self.model)
        predictor.set_image(image)
        # One throw-away decode: per-size setup (upscaling tables, allocator) is paid here,
        # inside the seconds-long embedding, instead of on the user's first click.
        height, width = image.shape[:2]
        predictor.predict(point_coords=np.array([[width / 2, height / 2]]), point_labels=np.array([1]))
        return predictor
