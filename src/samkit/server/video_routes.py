"""The video endpoints of the web app (``/api/videos/...``) over a :class:`VideoSessionStore`.

==================================================  ==========================================
``POST   /api/videos``                              multipart ``file`` (a video) -> its id,
                                                    frames, width, height, fps
``GET    /api/videos/{id}``                         the open video (404 once closed)
``DELETE /api/videos/{id}``                         close it now, delete its files
``GET    /api/videos/{id}/frames/{f}``              frame f as JPEG
``POST   /api/videos/{id}/prompts``                 clicks / box for one object on one frame
                                                    -> that object's mask there, object score
``POST   /api/videos/{id}/propagate``               start tracking (background) -> progress
``GET    /api/videos/{id}/progress``                the tracking's progress, tracked frames
``POST   /api/videos/{id}/propagate/stop``          stop it after the current frame
``GET    /api/videos/{id}/masks/{f}``               every object's mask on frame f
``DELETE /api/videos/{id}/objects/{obj}``           forget an object and its masks
``POST   /api/videos/{id}/reset``                   forget every object, prompt and mask
``GET    /api/videos/{id}/export?format=json|zip``  every mask: tracks.json (COCO RLE per frame
                                                    and object) or a zip of mask PNGs + it
==================================================  ==========================================

Unsafe methods (POST, DELETE) on ``/api/`` paths take ``Content-Type: application/json``
(RequestGuard), bodiless ones included; the upload takes multipart. While a propagation runs,
requests that would change the video's prompts answer 409.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import FastAPI, File, Query, UploadFile
from fastapi.responses import JSONResponse, Response

from .encoding import encode_rle, mask_to_png_base64
from .errors import InvalidPrompt
from .prompt_checks import check_prompts
from .schemas import ErrorResponse
from .video_export import masks_zip, record_mask, tracks_document
from .video_schemas import (
    FrameMasksResponse,
    TrackProgress,
    TrackRequest,
    VideoPromptRequest,
    VideoPromptResponse,
    VideoResponse,
)
from .video_session import VideoSession
from .video_sessions import VideoSessionStore

__all__ = ["VIDEO_UPLOAD_PATH", "add_video_routes"]

VIDEO_UPLOAD_PATH = "/api/videos"
_CHUNK_BYTES = 1024 * 1024
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 404, 409, 413, 415, 422, 501, 503)
}


def _video(session: VideoSession) -> dict[str, Any]:
    return {
        "id": session.session_id,
        "file_name": session.file_name,
        "frames": session.num_frames,
        "width": session.width,
        "height": session.height,
        "fps": session.fps,
        "objects": session.object_ids,
    }


def _progress(session: VideoSession) -> dict[str, Any]:
    job = session.job
    return {
        "status": job.status,
        "direction": job.direction,
        "start_frame": job.start_frame,
        "done": job.done,
        "total": job.total,
        "error": job.error,
        "seconds": job.seconds,
        "tracked_frames": session.tracked_frames(),
    }


def _encode(mask: Any, output_format: str) -> Any:
    return mask_to_png_base64(mask, transparent_background=True) if output_format == "png" else encode_rle(mask)


def add_video_routes(app: FastAPI, store: VideoSessionStore) -> None:
    """Add the ``/api/videos`` endpoints to ``app``, answering from ``store``."""

    @app.post(VIDEO_UPLOAD_PATH, response_model=VideoResponse, responses=_ERRORS, tags=["video"])
    async def open_video(
        file: Annotated[UploadFile, File(description="A video file OpenCV decodes (mp4, avi, webm, ...).")],
    ) -> dict[str, Any]:
        """Open a video: saved privately, decoded, frame 0 encoded. The least recently used video
        is closed when more than the server's limit (samkit serve --max-videos) would be open."""

        async def chunks() -> AsyncIterator[bytes]:
            while chunk := await file.read(_CHUNK_BYTES):
                yield chunk

        session = await store.open(chunks(), file.filename or "video")
        return _video(session)

    @app.get(VIDEO_UPLOAD_PATH + "/{video_id}", response_model=VideoResponse, responses=_ERRORS, tags=["video"])
    async def get_video(video_id: str) -> dict[str, Any]:
        """An open video."""
        return _video(store.get(video_id))

    @app.delete(VIDEO_UPLOAD_PATH + "/{video_id}", response_model=VideoResponse, responses=_ERRORS, tags=["video"])
    async def close_video(video_id: str) -> dict[str, Any]:
        """Close a video now: tracking stops, its files are deleted."""
        answer = _video(store.get(video_id))
        store.remove(video_id)
        return answer

    @app.get(
        VIDEO_UPLOAD_PATH + "/{video_id}/frames/{frame}",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}, **_ERRORS},
        tags=["video"],
    )
    async def frame_jpeg(video_id: str, frame: int) -> Response:
        """Frame ``frame`` (0..T-1) as JPEG, as the tracker decodes it."""
        session = store.get(video_id)
        session.check_frame(frame)
        data = await asyncio.to_thread(session.frame_jpeg, frame)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.post(
        VIDEO_UPLOAD_PATH + "/{video_id}/prompts", response_model=VideoPromptResponse, responses=_ERRORS, tags=["video"]
    )
    async def prompt(video_id: str, body: VideoPromptRequest) -> dict[str, Any]:
        """Clicks (label 1 = object, 0 = background) and/or a box for one object on one frame.
        On a frame the object was tracked on, this corrects the tracked mask; propagate again
        (from this frame) to carry the correction on."""
        session = store.get(video_id)
        frame = session.check_frame(body.frame)
        coords, labels, box = check_prompts(
            session.width, session.height, [(float(x), float(y)) for x, y in body.points], list(body.labels), body.box
        )
        if coords is None and box is None:
            raise InvalidPrompt("give at least one point or a box")
        session.require_idle()
        mask, score = await session.run(
            lambda: session.prompt_sync(frame, body.object_id, coords, labels, box, body.clear_old_points)
        )
        return {
            "frame": frame,
            "object_id": body.object_id,
            "width": session.width,
            "height": session.height,
            "format": body.format,
            "mask": _encode(mask, body.format),
            "area": int(mask.sum()),
            "object_score": score,
            "objects": session.object_ids,
        }

    @app.post(
        VIDEO_UPLOAD_PATH + "/{video_id}/propagate",
        response_model=TrackProgress,
        status_code=202,
        responses=_ERRORS,
        tags=["video"],
    )
    async def propagate(video_id: str, body: TrackRequest | None = None) -> dict[str, Any]:
        """Start tracking every object through the video, in the background; poll ``progress``."""
        session = store.get(video_id)
        request = body or TrackRequest()
        if request.start_frame is not None:
            session.check_frame(request.start_frame)
        session.require_idle()
        await session.run(lambda: session.start_tracking(request.start_frame, request.direction))
        return _progress(session)

    @app.get(VIDEO_UPLOAD_PATH + "/{video_id}/progress", response_model=TrackProgress, responses=_ERRORS, tags=["video"])
    async def progress(video_id: str) -> dict[str, Any]:
        """The last propagation's progress and the frames that have masks."""
        return _progress(store.get(video_id))

    @app.post(
        VIDEO_UPLOAD_PATH + "/{video_id}/propagate/stop", response_model=TrackProgress, responses=_ERRORS, tags=["video"]
    )
    async def stop(video_id: str) -> dict[str, Any]:
        """Stop the running propagation after its current frame (the masks so far stay)."""
        session = store.get(video_id)
        if session.job.status == "running":
            session.job.stop.set()
        return _progress(session)

    @app.get(
        VIDEO_UPLOAD_PATH + "/{video_id}/masks/{frame}", response_model=FrameMasksResponse, responses=_ERRORS, tags=["video"]
    )
    async def frame_masks(
        video_id: str, frame: int, format: Annotated[Literal["rle", "png"], Query()] = "rle"
    ) -> dict[str, Any]:
        """Every object's mask on one frame, as far as prompts and tracking have reached it."""
        session = store.get(video_id)
        session.check_frame(frame)
        records = session.frame_records(frame)

        def encode() -> list[dict[str, Any]]:
            out = []
            for obj, record in records.items():
                mask = record["segmentation"] if format == "rle" else _encode(record_mask(record), "png")
                out.append({"object_id": obj, "mask": mask, "area": record["area"], "bbox": record["bbox"]})
            return out

        objects = await asyncio.to_thread(encode) if format == "png" else encode()
        return {"frame": frame, "width": session.width, "height": session.height, "format": format, "objects": objects}

    @app.delete(
        VIDEO_UPLOAD_PATH + "/{video_id}/objects/{object_id}", response_model=VideoResponse, responses=_ERRORS, tags=["video"]
    )
    async def remove_object(video_id: str, object_id: int) -> dict[str, Any]:
        """Forget one object: its prompts, its memory and its masks on every frame."""
        session = store.get(video_id)
        session.require_idle()
        await session.run(lambda: session.remove_object_sync(object_id))
        return _video(session)

    @app.post(VIDEO_UPLOAD_PATH + "/{video_id}/reset", response_model=VideoResponse, responses=_ERRORS, tags=["video"])
    async def reset(video_id: str) -> dict[str, Any]:
        """Forget every object, prompt and mask (the video stays open)."""
        session = store.get(video_id)
        session.require_idle()
        await session.run(session.reset_sync)
        return _video(session)

    @app.get(
        VIDEO_UPLOAD_PATH + "/{video_id}/export",
        response_class=Response,
        responses={200: {"content": {"application/json": {}, "application/zip": {}}}, **_ERRORS},
        tags=["video"],
    )
    async def export(video_id: str, format: Annotated[Literal["json", "zip"], Query()] = "json") -> Response:
        """Every stored mask: ``json``, samkit track's tracks.json layout (COCO RLE, area, bbox per
        frame and object); ``zip``, ``masks/<frame>_<object>.png`` (1-bit) plus that tracks.json."""
        session = store.get(video_id)
        document = tracks_document(
            session.all_records(),
            session.object_ids,  # type: ignore[arg-type]
            num_frames=session.num_frames,
            width=session.width,
            height=session.height,
            fps=session.fps,
            file_name=session.file_name,
        )
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", session.file_name.rsplit(".", 1)[0]) or "video"
        if format == "zip":
            content = await asyncio.to_thread(masks_zip, document)
            media_type, name = "application/zip", f"{stem}_masks.zip"
        else:
            content = JSONResponse(document).body
            media_type, name = "application/json", f"{stem}_tracks.json"
        return Response(content, media_type=media_type, headers={"Content-Disposition": f'attachment; filename="{name}"'})
