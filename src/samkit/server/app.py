"""The FastAPI app: the interactive page and the JSON API over :class:`SegmentationService`.

Endpoints (OpenAPI schema at ``/openapi.json``, interactive docs at ``/docs``):

==========================================  =================================================
``GET  /``                                  the web app (static HTML/JS/CSS, no build step)
``GET  /api/health``                        liveness + cache figures; never waits on the model
``POST /api/images``                        multipart ``file`` -> ``{id, width, height, ...}``
``GET  /api/images/{id}``                   is this image still cached?
``GET  /api/images/{id}/preview``           the decoded image as JPEG (for TIFF, 16-bit, ...)
``POST /api/images/{id}/predict``           prompts -> candidate masks + scores
``POST /api/images/{id}/everything``        segment everything -> RLE masks
``POST /api/export/coco``                   labelled objects (multipart ``annotations`` part, JSON)
                                            -> COCO instance segmentation JSON
``POST /api/export/yolo``                   the same -> zip of YOLO-seg ``classes.txt`` + labels
``GET  /video``                             the web app's video mode (SAM 2.x models)
``/api/videos/...``                         open a video, prompt objects on any frame, track
                                            them, read masks per frame, export: see
                                            :mod:`samkit.server.video_routes` (501 without a
                                            SAM 2.x video model)
==========================================  =================================================

The exports carry the masks of a whole image, so they travel like uploads (multipart, under the
upload's size limit) instead of as JSON bodies, whose limit is sized for prompts.

Every error is ``{"error": "..."}`` with a 4xx/5xx status.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..modeling import Sam
from ..modeling.sam2_video import Sam2Video
from .errors import PayloadTooLarge, ServiceError
from .export import ExportFormat
from .guards import DEFAULT_MAX_CONCURRENT_UPLOADS, DEFAULT_MAX_JSON_BYTES, RequestGuard
from .limits import HostCheck
from .path_limits import BodySizeLimitByPath
from .schemas import (
    ErrorResponse,
    EverythingRequest,
    EverythingResponse,
    ExportRequest,
    HealthResponse,
    ImageResponse,
    PredictRequest,
    PredictResponse,
)
from .service import (
    DEFAULT_CACHE_BYTES,
    DEFAULT_LOGITS_CACHE_BYTES,
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_UPLOAD_BYTES,
    SegmentationService,
)
from .video_routes import VIDEO_UPLOAD_PATH, add_video_routes
from .video_sessions import (
    DEFAULT_MAX_VIDEO_BYTES,
    DEFAULT_MAX_VIDEO_FRAMES,
    DEFAULT_MAX_VIDEO_SESSIONS,
    VideoSessionStore,
)

__all__ = ["create_app", "STATIC_DIR"]

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"

# Multipart framing around the file (boundaries, part headers) on top of max_upload_bytes.
_MULTIPART_SLACK = 64 * 1024
# Paths that take multipart bodies: the image upload and the exports (masks of a whole image).
_EXPORT_PATHS = {"coco": "/api/export/coco", "yolo": "/api/export/yolo"}
_UPLOAD_PATHS = ("/api/images", *_EXPORT_PATHS.values(), VIDEO_UPLOAD_PATH)
MAX_EXPORT_BYTES = 16 * 1024 * 1024  # the annotations document of one export
_ANNOTATIONS_PART = "The objects of one image: a JSON document, schema ExportRequest (see components)."

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 404, 413, 415, 422, 501, 503)
}


def _validation_message(exc: RequestValidationError | ValidationError) -> tuple[int, str]:
    """(status, one-line message) for a request FastAPI could not parse or validate."""
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        first = next(e for e in errors if e.get("type") == "json_invalid")
        detail = (first.get("ctx") or {}).get("error", "")
        return 400, f"malformed JSON body{': ' + detail if detail else ''}"
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
        parts.append(f"{loc or 'body'}: {e.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return 422, "; ".join(parts) + more


def create_app(
    model: Sam,
    *,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    logits_cache_bytes: int = DEFAULT_LOGITS_CACHE_BYTES,
    predict_workers: int = 2,
    max_pending_embeddings: int = 8,
    allowed_hosts: Sequence[str] | None = None,
    token: str | None = None,
    max_json_bytes: int = DEFAULT_MAX_JSON_BYTES,
    max_concurrent_uploads: int = DEFAULT_MAX_CONCURRENT_UPLOADS,
    video_model: Sam2Video | None = None,
    video_unavailable_reason: str | None = None,
    max_video_sessions: int = DEFAULT_MAX_VIDEO_SESSIONS,
    max_video_bytes: int = DEFAULT_MAX_VIDEO_BYTES,
    max_video_frames: int = DEFAULT_MAX_VIDEO_FRAMES,
) -> FastAPI:
    """Build the web app around a model.

    Args:
        model: The SAM model (see :func:`samkit.build_sam`).
        max_image_pixels: Largest image (W * H) accepted; checked from the header, before
            decoding, so decompression bombs are refused cheaply.
        max_upload_bytes: Largest uploaded file.
        cache_bytes: Memory bound of the embedding cache (LRU by bytes).
        logits_cache_bytes: Memory bound of the low-res logits kept for ``mask_input_id``.
        predict_workers: Threads answering predicts (embeddings use one more thread).
        max_pending_embeddings: Uploads that may queue for embedding before 503.
        allowed_hosts: If given, requests whose Host header names another host are refused
            (``samkit serve`` passes the loopback names when it binds to loopback, against
            DNS rebinding). None accepts any Host.
        token: Access token required on every API call and the page (see
            :mod:`samkit.server.guards`); None for none. Cross-origin POSTs and wrong content
            types are refused either way.
        max_json_bytes: Largest body of a request other than the upload, enforced while reading.
        max_concurrent_uploads: Uploads received at the same time (more get 503 before their
            body is read), so uploads in flight hold at most this many times max_upload_bytes.
        video_model: The SAM 2.x video model behind ``/api/videos`` (see
            :func:`samkit.build_sam_video`); default: ``model`` itself when it is a ``Sam2Video``
            (which serves images too), else none and the video endpoints answer 501.
        video_unavailable_reason: Why there is no video model, for that 501 and ``/api/health``.
        max_video_sessions: Videos open at once; opening one more closes the least recently used.
        max_video_bytes: Largest uploaded video file.
        max_video_frames: Most frames an uploaded video may have.

    Returns:
        The FastAPI app; serve it with uvicorn. ``app.state.service`` is the
        :class:`SegmentationService`, ``app.state.videos`` the
        :class:`~samkit.server.video_sessions.VideoSessionStore`.
    """
    service = SegmentationService(
        model,
        max_image_pixels=max_image_pixels,
        max_upload_bytes=max_upload_bytes,
        cache_bytes=cache_bytes,
        logits_cache_bytes=logits_cache_bytes,
        max_pending_embeddings=max_pending_embeddings,
        predict_workers=predict_workers,
    )
    if video_model is None and isinstance(model, Sam2Video):
        video_model = model
    if video_model is None and video_unavailable_reason is None:
        video_unavailable_reason = (
            f"video tracking needs a SAM 2.x model and this server runs {model.config.name}: "
            "start samkit serve --model sam2.1_hiera_t (or another sam2.x model)"
        )
    videos = VideoSessionStore(
        video_model,
        max_sessions=max_video_sessions,
        max_video_bytes=max_video_bytes,
        max_frames=max_video_frames,
        max_frame_pixels=max_image_pixels,
        unavailable_reason=video_unavailable_reason,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        videos.close()
        service.close()

    app = FastAPI(
        title="samkit",
        version=__version__,
        description="Segment Anything: upload an image once, then prompt it with points and boxes.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.videos = videos
    app.add_middleware(
        BodySizeLimitByPath,
        max_body_bytes=max_upload_bytes + _MULTIPART_SLACK,
        path_limits={VIDEO_UPLOAD_PATH: max_video_bytes + _MULTIPART_SLACK},
    )
    app.add_middleware(
        RequestGuard,
        token=token,
        max_json_bytes=max_json_bytes,
        upload_paths=_UPLOAD_PATHS,
        max_concurrent_uploads=max_concurrent_uploads,
    )  # runs before BodySizeLimit
    if allowed_hosts is not None:
        app.add_middleware(HostCheck, allowed_hosts=list(allowed_hosts))  # outermost: checked first

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        status, message = _validation_message(exc)
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": f"internal server error ({type(exc).__name__})"}, status_code=500)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/video", include_in_schema=False)
    async def video_page() -> FileResponse:
        return FileResponse(STATIC_DIR / "video.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/api/health", response_model=HealthResponse)
    async def health() -> dict[str, Any]:
        """Liveness; answers while embeddings run."""
        return {**service.health(), **videos.health()}

    @app.post("/api/images", response_model=ImageResponse, responses=_ERRORS)
    async def upload_image(
        file: Annotated[UploadFile, File(description="An image file (PNG, JPEG, ...).")],
    ) -> dict[str, Any]:
        """Upload an image and compute its embedding (once per distinct file content)."""
        data = await file.read(service.max_upload_bytes + 1)
        entry, cached = await service.add_image(data)
        return {
            "id": entry.image_id,
            "width": entry.width,
            "height": entry.height,
            "cached": cached,
            "embed_ms": entry.embed_ms,
        }

    @app.get("/api/images/{image_id}", response_model=ImageResponse, responses=_ERRORS)
    async def get_image(image_id: str) -> dict[str, Any]:
        """An image that is still cached (404 once evicted: upload it again)."""
        entry = service.get(image_id)
        return {
            "id": entry.image_id,
            "width": entry.width,
            "height": entry.height,
            "cached": True,
            "embed_ms": entry.embed_ms,
        }

    @app.get(
        "/api/images/{image_id}/preview",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}, 404: {"model": ErrorResponse}},
    )
    async def preview(image_id: str) -> Response:
        """The image as samkit decoded it (EXIF-rotated RGB), as JPEG: for formats a browser cannot show."""
        return Response(await service.preview(image_id), media_type="image/jpeg")

    @app.post("/api/images/{image_id}/predict", response_model=PredictResponse, responses=_ERRORS)
    async def predict(image_id: str, body: PredictRequest) -> JSONResponse:
        """Candidate masks for points (label 1 = object, 0 = background), a box and/or a previous mask."""
        result = await service.predict(
            image_id,
            points=[(float(x), float(y)) for x, y in body.points],
            labels=list(body.labels),
            box=body.box,
            mask_input_id=body.mask_input_id,
            multimask=body.multimask,
            output_format=body.format,
            hq_token_only=body.hq_token_only,
        )
        timing = result.pop("timing")
        server_timing = f"decode;dur={timing['decode_ms']:.1f}, encode;dur={timing['encode_ms']:.1f}"
        return JSONResponse(result, headers={"Server-Timing": server_timing})

    @app.post("/api/images/{image_id}/everything", response_model=EverythingResponse, responses=_ERRORS)
    async def everything(image_id: str, body: EverythingRequest | None = None) -> JSONResponse:
        """Segment everything (automatic mask generation); masks as COCO RLE."""
        options = body.model_dump() if body is not None else {}
        result = await service.everything(image_id, options)
        timing = result.pop("timing")
        return JSONResponse(result, headers={"Server-Timing": f"everything;dur={timing['everything_ms']:.1f}"})

    async def export(export_format: ExportFormat, annotations: UploadFile) -> Response:
        data = await annotations.read(MAX_EXPORT_BYTES + 1)
        if len(data) > MAX_EXPORT_BYTES:
            raise PayloadTooLarge(f"annotations: more than {MAX_EXPORT_BYTES} bytes; export fewer objects at once")
        try:
            request = ExportRequest.model_validate_json(data)
        except ValidationError as exc:
            status, message = _validation_message(exc)
            return JSONResponse({"error": f"annotations: {message}"}, status_code=status)
        content, media_type, file_name = await service.export(request, export_format)
        shown = re.sub(r"[^A-Za-z0-9._-]", "_", file_name)
        disposition = f'attachment; filename="{shown}"'
        return Response(content, media_type=media_type, headers={"Content-Disposition": disposition})

    @app.post(
        _EXPORT_PATHS["coco"],
        response_class=Response,
        responses={200: {"content": {"application/json": {}}}, **_ERRORS},
    )
    async def export_coco(annotations: Annotated[UploadFile, File(description=_ANNOTATIONS_PART)]) -> Response:
        """Labelled objects -> COCO instance segmentation (categories, RLE or polygons, area, bbox)."""
        return await export("coco", annotations)

    @app.post(
        _EXPORT_PATHS["yolo"],
        response_class=Response,
        responses={200: {"content": {"application/zip": {}}}, **_ERRORS},
    )
    async def export_yolo(annotations: Annotated[UploadFile, File(description=_ANNOTATIONS_PART)]) -> Response:
        """Labelled objects -> zip of YOLO-seg ``classes.txt`` and ``labels/<image stem>.txt`` (normalized polygons)."""
        return await export("yolo", annotations)

    add_video_routes(app, videos)

    default_openapi = app.openapi

    def openapi_with_export_schema() -> dict[str, Any]:
        """The generated schema plus ExportRequest, which travels inside a multipart part."""
        if app.openapi_schema is None:
            schema = default_openapi()
            export_schema = ExportRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(export_schema.pop("$defs", {}))
            components["ExportRequest"] = export_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi_with_export_schema  # type: ignore[method-assign]
    return app
