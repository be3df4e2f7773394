"""A Label Studio ML backend: clicks and boxes in Label Studio, SAM brush masks back.

The protocol current Label Studio releases speak to a model server:

==================  ==========================================================================
``GET  /health``    ``{"status": "UP", ...}``; Label Studio checks it when the backend is added
``POST /setup``     the project's labeling config; answers ``{"model_version": ...}``
``POST /predict``   ``{"tasks": [task], "label_config": ..., "params": {"context": ...}}``; for an
                    interactive request (the annotator's keypoints / rectangle in ``context``)
                    answers ``{"results": [{"result": [brush region], "score": ..., ...}]}``
``POST /webhook``   Label Studio's events (annotation created, ...); acknowledged, not used
==================  ==========================================================================

The brush region is a ``brushlabels`` result in Label Studio's RLE (:mod:`.brush`) on the
config's ``BrushLabels`` tag, labelled with the label the annotator picked for the click or
box, with SAM's predicted IoU as its score. One click decodes SAM's three masks and keeps the
best; several prompts (clicks that refine an object, a box with clicks) decode one mask.
Embeddings are kept per image URL in a bounded LRU (:class:`samkit.server.cache.ByteLRU`).
Bad requests get a 4xx with ``{"error": "..."}``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ..io import ImageReadError, load_image
from ..modeling import Sam
from ..modeling.sam2 import Sam2
from ..predictor import SamPredictor
from ..server.cache import ByteLRU
from .brush import mask_to_brush_rle
from .config import brush_target
from .images import ImageFetchError, LabelStudioImages
from .prompts import PromptError, parse_context

__all__ = ["BackendError", "LabelStudioBackend", "create_backend"]

logger = logging.getLogger(__name__)

DEFAULT_CACHE_IMAGES = 16


class BackendError(Exception):
    """A request the backend refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


class LabelStudioBackend:
    """The work behind the endpoints (no HTTP here).

    Args:
        model: the SAM model (SAM 1, MobileSAM, HQ-SAM or SAM 2.x).
        images: where task images are read from (the configured Label Studio).
        cache_images: embeddings kept (least recently used ones are dropped).
        model_version: the name Label Studio shows for the predictions.
    """

    def __init__(self, model: Sam | Sam2, images: LabelStudioImages, *, cache_images: int = DEFAULT_CACHE_IMAGES, model_version: str | None = None) -> None:
        if cache_images < 1:
            raise ValueError(f"cache_images: expected >= 1, got {cache_images}")
        self.model = model
        self.images = images
        self.model_version = model_version or f"samkit-{model.config.name}"
        self.embeddings: ByteLRU[SamPredictor] = ByteLRU(cache_images, lambda _: 1, name="label-studio embeddings")
        self._embed_lock = threading.Lock()

    def predictor_for(self, url: str) -> SamPredictor:
        """The predictor with the image at ``url`` set (from the cache, or fetched and embedded)."""
        key = self.images.resolve(url)
        cached = self.embeddings.get(key)
        if cached is not None:  # no waiting behind another image's embedding
            return cached
        with self._embed_lock:  # one embedding at a time; a second request for the same image waits and reuses it
            cached = self.embeddings.get(key)
            if cached is not None:
                return cached
            try:
                image = load_image(self.images.fetch(url))
            except ImageReadError as exc:
                raise BackendError(f"task image {url!r}: {exc}", 422) from None
            predictor = SamPredictor(self.model)
            predictor.set_image(image)
            self.embeddings.put(key, predictor)
            return predictor

    def predict(self, body: Any) -> dict[str, Any]:
        """Answer a ``/predict`` request (see the module docstring)."""
        if not isinstance(body, dict) or not isinstance(body.get("tasks"), list) or not body["tasks"]:
            raise BackendError("expected {'tasks': [task, ...], 'label_config': ..., 'params': {...}}", 400)
        if not isinstance(body.get("label_config"), str):
            raise BackendError("'label_config' (the project's labeling config) is missing", 400)
        try:
            target = brush_target(body["label_config"])
        except ValueError as exc:
            raise BackendError(str(exc), 422) from None
        params = body.get("params") or {}
        context = params.get("context") if isinstance(params, dict) else None
        if not context:  # batch pre-annotation: SAM needs a click or a box
            return {"results": []}
        task = body["tasks"][0]
        data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict) or target.data_key not in data:
            raise BackendError(f"task data has no {target.data_key!r} field (the Image tag's value)", 422)
        url = data[target.data_key]
        try:
            predictor = self.predictor_for(url)
        except ImageFetchError as exc:
            raise BackendError(str(exc), exc.status) from None
        assert predictor.original_size is not None
        height, width = predictor.original_size
        try:
            prompt = parse_context(context, height, width)
        except PromptError as exc:
            raise BackendError(str(exc), 422) from None
        if prompt is None:
            return {"results": []}
        single_click = prompt.box is None and prompt.points is not None and len(prompt.points) == 1
        masks, scores, _ = predictor.predict(
            point_coords=prompt.points, point_labels=prompt.labels, box=prompt.box, multimask_output=single_click
        )
        best = int(np.argmax(scores))
        label = prompt.label or (target.labels[0] if target.labels else "object")
        score = float(scores[best])
        region = {
            "from_name": target.from_name,
            "to_name": target.to_name,
            "type": "brushlabels",
            "original_width": width,
            "original_height": height,
            "image_rotation": 0,
            "value": {"format": "rle", "rle": mask_to_brush_rle(masks[best]), "brushlabels": [label]},
            "score": score,
        }
        return {"results": [{"result": [region], "score": score, "model_version": self.model_version}]}

    def setup(self, body: Any) -> dict[str, Any]:
        """Answer ``/setup``: check the config has a brush tag bound to an image."""
        if not isinstance(body, dict):
            raise BackendError("expected a JSON object", 400)
        schema = body.get("schema")
        if isinstance(schema, str) and schema.strip():
            try:
                brush_target(schema)
            except ValueError as exc:
                raise BackendError(str(exc), 422) from None
        return {"model_version": self.model_version}


def create_backend(
    model: Sam | Sam2,
    *,
    label_studio_url: str,
    api_key: str | None,
    cache_images: int = DEFAULT_CACHE_IMAGES,
    model_version: str | None = None,
) -> FastAPI:
    """The backend's FastAPI app.

    Args:
        model: the SAM model (SAM 1, MobileSAM, HQ-SAM or SAM 2.x).
        label_studio_url: the Label Studio whose images the backend reads (e.g. ``http://localhost:8080``).
        api_key: that Label Studio's API token (a legacy token: ``Authorization: Token ...``).
        cache_images: embeddings kept in memory.
        model_version: the name Label Studio shows for the predictions (default ``samkit-<model>``).
    """
    backend = LabelStudioBackend(
        model, LabelStudioImages(label_studio_url, api_key), cache_images=cache_images, model_version=model_version
    )
    app = FastAPI(title="samkit Label Studio ML backend")
    app.state.backend = backend

    async def body_of(request: Request) -> Any:
        try:
            return await request.json()
        except ValueError:
            raise BackendError("the request body is not JSON", 400) from None

    @app.exception_handler(BackendError)
    async def refused(_: Request, exc: BackendError) -> JSONResponse:
        logger.info("refused: %s", exc)
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.get("/health")
    @app.get("/")
    async def health() -> dict[str, Any]:
        return {"status": "UP", "model_class": "samkit", "model_version": backend.model_version, "cached_images": len(backend.embeddings)}

    @app.post("/setup")
    async def setup(request: Request) -> dict[str, Any]:
        return backend.setup(await body_of(request))

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        body = await body_of(request)
        return await run_in_threadpool(backend.predict, body)

    @app.post("/webhook")
    async def webhook(request: Request) -> dict[str, Any]:
        body = await body_of(request)
        action = body.get("action") if isinstance(body, dict) else None
        logger.debug("webhook %s ignored (the backend does not train)", action)
        return {"status": "ok", "action": action}

    return app
