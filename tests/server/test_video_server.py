"""The video endpoints (/api/videos): masks equal to SamVideoPredictor's for the same session,
exports, errors, guards, and the bounded store of sessions and their files.

The model is a tiny random SAM 2.1 video model (video_support.py) on a 7-frame 120x72 mp4; the
reference is SamVideoPredictor driven through the same calls on the same file.
"""

from __future__ import annotations

import base64
import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from samkit import SamPredictor
from samkit.io import load_image
from samkit.modeling.sam2_video import Sam2Video
from samkit.server import create_app
from samkit.server.encoding import decode_rle
from samkit.video import SamVideoPredictor, VideoFile

from .support import image_bytes, make_tiny_model
from .video_support import CLIP_FPS, CLIP_FRAMES, CLIP_H, CLIP_W, make_tiny_video_model, wait_until, write_mp4

Masks = dict[int, dict[int, np.ndarray]]  # frame -> object -> (H, W) bool


@pytest.fixture(scope="module")
def video_model() -> Sam2Video:
    return make_tiny_video_model()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mp4(tmp_path_factory.mktemp("clip") / "moving shapes.mp4")


@pytest.fixture
def client(video_model: Sam2Video) -> Iterator[TestClient]:
    with TestClient(create_app(video_model)) as test_client:
        yield test_client


def _upload(client: TestClient, clip: Path, name: str = "moving shapes.mp4") -> dict[str, Any]:
    response = client.post("/api/videos", files={"file": (name, clip.read_bytes(), "video/mp4")})
    assert response.status_code == 200, response.text
    return response.json()


def _track(client: TestClient, video_id: str, body: dict[str, Any]) -> dict[str, Any]:
    started = client.post(f"/api/videos/{video_id}/propagate", json=body)
    assert started.status_code == 202, started.text
    progress: dict[str, Any] = {}

    def finished() -> bool:
        progress.update(client.get(f"/api/videos/{video_id}/progress").json())
        return progress["status"] != "running"

    wait_until(finished, what="tracking")
    assert progress["status"] == "done", progress
    return progress


def _served_masks(client: TestClient, video_id: str) -> Masks:
    out: Masks = {}
    for frame in range(CLIP_FRAMES):
        body = client.get(f"/api/videos/{video_id}/masks/{frame}").json()
        out[frame] = {o["object_id"]: decode_rle(o["mask"]) for o in body["objects"]}
    return out


def _reference_track(predictor: SamVideoPredictor, state: Any, start: int, reverse: bool, into: Masks) -> None:
    for frame, obj_ids, logits in predictor.propagate_in_video(state, start_frame_idx=start, reverse=reverse):
        into.setdefault(frame, {}).update({int(o): (logits[k, 0] > 0).numpy() for k, o in enumerate(obj_ids)})


def _assert_same(served: Masks, expected: Masks) -> None:
    assert sorted(served) == sorted(expected)
    for frame in expected:
        assert sorted(served[frame]) == sorted(expected[frame]), frame
        for obj, mask in expected[frame].items():
            np.testing.assert_array_equal(served[frame][obj], mask, err_msg=f"frame {frame} object {obj}")


def test_prompt_track_correct_remove_export_equal_the_predictor(
    client: TestClient, video_model: Sam2Video, clip: Path
) -> None:
    info = _upload(client, clip)
    assert (info["frames"], info["width"], info["height"], info["objects"]) == (CLIP_FRAMES, CLIP_W, CLIP_H, [])
    assert info["fps"] == pytest.approx(CLIP_FPS) and info["file_name"] == "moving shapes.mp4"
    vid = info["id"]
    assert client.get("/api/health").json()["video_sessions"] == 1

    # Frame previews: the frame as the tracker decodes it.
    decoder = VideoFile(clip)
    for frame in (0, 4):
        response = client.get(f"/api/videos/{vid}/frames/{frame}")
        assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
        shown = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB")).astype(int)
        assert np.abs(shown - decoder.rgb(frame).astype(int)).mean() < 3.0
    assert np.abs(decoder.rgb(0).astype(int) - decoder.rgb(4).astype(int)).mean() > 3.0  # frames differ
    decoder.close()

    reference = SamVideoPredictor(video_model)
    state = reference.init_state(clip)
    expected: Masks = {}

    # Object 1: a click on frame 2; object 2: a box there.
    r1 = client.post(f"/api/videos/{vid}/prompts", json={"frame": 2, "object_id": 1, "points": [[40, 36]], "labels": [1]})
    assert r1.status_code == 200, r1.text
    _, ids, logits = reference.add_new_points_or_box(state, 2, 1, points=np.array([[40.0, 36.0]]), labels=np.array([1]))
    want = (logits[ids.index(1), 0] > 0).numpy()
    np.testing.assert_array_equal(decode_rle(r1.json()["mask"]), want)
    assert 0 < r1.json()["area"] == int(want.sum()) < CLIP_W * CLIP_H
    score = float(reference.frame_output(state, 2, 1).object_score_logits.reshape(-1)[0])
    assert r1.json()["object_score"] == pytest.approx(score, abs=1e-6)

    r2 = client.post(
        f"/api/videos/{vid}/prompts",
        json={"frame": 2, "object_id": 2, "box": [70, 5, 110, 40], "format": "png"},
    )
    assert r2.status_code == 200, r2.text
    assert r2.json()["objects"] == [1, 2] and r2.json()["format"] == "png"
    _, ids, logits = reference.add_new_points_or_box(state, 2, 2, box=np.array([70.0, 5.0, 110.0, 40.0]))
    with Image.open(io.BytesIO(base64.b64decode(r2.json()["mask"]))) as png:
        np.testing.assert_array_equal(np.asarray(png).astype(bool), (logits[ids.index(2), 0] > 0).numpy())
    assert not np.array_equal((logits[0, 0] > 0).numpy(), (logits[1, 0] > 0).numpy())

    # Track both ways from frame 2 (the default start: the earliest prompted frame).
    progress = _track(client, vid, {"direction": "both"})
    assert (progress["start_frame"], progress["done"], progress["total"]) == (2, CLIP_FRAMES, CLIP_FRAMES)
    assert progress["tracked_frames"] == list(range(CLIP_FRAMES))
    _reference_track(reference, state, 2, False, expected)
    _reference_track(reference, state, 2, True, expected)
    _assert_same(_served_masks(client, vid), expected)
    areas = {int(m.sum()) for frame in expected.values() for m in frame.values()}
    assert len(areas) > 5 and max(areas) < CLIP_W * CLIP_H and min(areas) > 0  # real, varied masks

    # A correction on a later frame (a background click for object 1 on frame 5), then on from there.
    r3 = client.post(
        f"/api/videos/{vid}/prompts",
        json={"frame": 5, "object_id": 1, "points": [[100, 60]], "labels": [0]},
    )
    assert r3.status_code == 200, r3.text
    _, ids, logits = reference.add_new_points_or_box(state, 5, 1, points=np.array([[100.0, 60.0]]), labels=np.array([0]))
    corrected = (logits[ids.index(1), 0] > 0).numpy()
    np.testing.assert_array_equal(decode_rle(r3.json()["mask"]), corrected)
    assert not np.array_equal(corrected, expected[5][1])  # the correction changed the mask
    expected[5][1] = corrected
    progress = _track(client, vid, {"start_frame": 5, "direction": "forward"})
    assert (progress["done"], progress["total"], progress["direction"]) == (2, 2, "forward")
    _reference_track(reference, state, 5, False, expected)
    _assert_same(_served_masks(client, vid), expected)

    # Exports: tracks.json and the zip of PNGs hold exactly these masks.
    exported = client.get(f"/api/videos/{vid}/export?format=json")
    assert exported.status_code == 200
    assert exported.headers["content-disposition"] == 'attachment; filename="moving_shapes_tracks.json"'
    document = exported.json()
    assert (document["num_frames"], document["width"], document["height"]) == (CLIP_FRAMES, CLIP_W, CLIP_H)
    assert document["objects"] == ["1", "2"] and [f["frame"] for f in document["frames"]] == list(range(CLIP_FRAMES))
    for entry in document["frames"]:
        for obj, record in entry["objects"].items():
            mask = expected[entry["frame"]][int(obj)]
            np.testing.assert_array_equal(decode_rle(record["segmentation"]), mask)
            assert record["area"] == int(mask.sum())
            ys, xs = np.nonzero(mask)
            assert record["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    archive = zipfile.ZipFile(io.BytesIO(client.get(f"/api/videos/{vid}/export?format=zip").content))
    names = archive.namelist()
    assert len(names) == 2 * CLIP_FRAMES + 1 and json.loads(archive.read("tracks.json")) == document
    for frame in range(CLIP_FRAMES):
        for obj in (1, 2):
            with Image.open(io.BytesIO(archive.read(f"masks/{frame:05d}_{obj}.png"))) as png:
                np.testing.assert_array_equal(np.asarray(png).astype(bool), expected[frame][obj])

    # Removing object 2 drops it and its masks; reset forgets everything.
    removed = client.delete(f"/api/videos/{vid}/objects/2", headers={"content-type": "application/json"})
    assert removed.status_code == 200 and removed.json()["objects"] == [1]
    reference.remove_object(state, 2)
    for frame in expected:
        expected[frame].pop(2)
    _assert_same(_served_masks(client, vid), expected)
    assert client.get(f"/api/videos/{vid}/export").json()["objects"] == ["1"]
    reset = client.post(f"/api/videos/{vid}/reset", json={})
    assert reset.status_code == 200 and reset.json()["objects"] == []
    assert all(not objects for objects in _served_masks(client, vid).values())
    assert client.get(f"/api/videos/{vid}/progress").json()["status"] == "idle"


def test_the_video_model_serves_images_too(video_model: Sam2Video) -> None:
    picture = image_bytes(160, 96, seed=4)
    reference = SamPredictor(video_model)
    reference.set_image(load_image(picture))
    with TestClient(create_app(video_model)) as client:
        image_id = client.post("/api/images", files={"file": ("a.png", picture, "image/png")}).json()["id"]
        body = client.post(f"/api/images/{image_id}/predict", json={"points": [[50, 40]], "labels": [1], "format": "rle"}).json()
    masks, scores, _ = reference.predict(np.array([[50.0, 40.0]]), np.array([1]), multimask_output=True)
    for rle, mask in zip(body["masks"], masks):
        np.testing.assert_array_equal(decode_rle(rle), mask)
    np.testing.assert_allclose(body["scores"], scores, rtol=1e-6, atol=1e-6)


def test_errors_are_clear_4xx(client: TestClient, clip: Path, tmp_path: Path) -> None:
    vid = _upload(client, clip)["id"]
    json_headers = {"content-type": "application/json"}
    cases = [
        (client.get("/api/videos/nope"), 404, "unknown video"),
        (client.get("/api/videos/nope/frames/0"), 404, "unknown video"),
        (client.post("/api/videos/nope/prompts", json={"frame": 0, "object_id": 1, "points": [[1, 1]], "labels": [1]}), 404, "unknown video"),
        (client.get(f"/api/videos/{vid}/frames/{CLIP_FRAMES}"), 422, f"frames 0..{CLIP_FRAMES - 1}"),
        (client.get(f"/api/videos/{vid}/masks/-1"), 422, "does not exist"),
        (client.post(f"/api/videos/{vid}/prompts", json={"frame": 9, "object_id": 1, "points": [[1, 1]], "labels": [1]}), 422, "frame 9"),
        (client.post(f"/api/videos/{vid}/prompts", json={"frame": 0, "object_id": 1, "points": [[500, 1]], "labels": [1]}), 422, "outside"),
        (client.post(f"/api/videos/{vid}/prompts", json={"frame": 0, "object_id": 1}), 422, "at least one point"),
        (client.post(f"/api/videos/{vid}/prompts", json={"frame": 0, "object_id": 1, "box": [1, 1, 9, 9], "clear_old_points": False}), 422, "clear_old_points"),
        (client.post(f"/api/videos/{vid}/propagate", json={}), 422, "no object has a prompt"),
        (client.post(f"/api/videos/{vid}/propagate", json={"direction": "sideways"}), 422, "direction"),
        (client.delete(f"/api/videos/{vid}/objects/7", headers=json_headers), 404, "no object 7"),
        (client.delete(f"/api/videos/{vid}/objects/7"), 415, "application/json"),
        (client.get(f"/api/videos/{vid}/export?format=gif"), 422, "format"),
    ]
    for response, status, message in cases:
        assert response.status_code == status, (response.request.url, response.text)
        assert message in response.json()["error"], response.json()

    # Unreadable uploads: 415, and nothing left on disk.
    root = client.app.state.videos.root  # type: ignore[attr-defined]
    before = sorted(root.iterdir())
    for name, data in (("garbage.mp4", b"\x00not a video" * 100), ("empty.mp4", b"")):
        response = client.post("/api/videos", files={"file": (name, data, "video/mp4")})
        assert response.status_code == 415, response.text
        assert "video" in response.json()["error"] and str(root) not in response.json()["error"]
    wait_until(lambda: sorted(root.iterdir()) == before, what="refused uploads to be deleted")

    stopped = client.post(f"/api/videos/{vid}/propagate/stop", json={})  # nothing running: a no-op
    assert stopped.status_code == 200 and stopped.json()["status"] == "idle"

    # A prompt while tracking runs is refused (409) instead of queued behind it.
    session = client.app.state.videos.get(vid)  # type: ignore[attr-defined]
    session.job.status = "running"
    try:
        busy = client.post(f"/api/videos/{vid}/prompts", json={"frame": 0, "object_id": 1, "points": [[5, 5]], "labels": [1]})
        assert busy.status_code == 409 and "tracking is running" in busy.json()["error"]
        again = client.post(f"/api/videos/{vid}/propagate", json={})
        assert again.status_code == 409  # one propagation per video at a time
        assert client.post(f"/api/videos/{vid}/reset", json={}).status_code == 409
    finally:
        session.job.status = "idle"


def test_limits_and_guards(video_model: Sam2Video, clip: Path, tmp_path: Path) -> None:
    size = clip.stat().st_size
    longer = write_mp4(tmp_path / "longer.mp4", num_frames=CLIP_FRAMES + 2)
    limit = max(size, longer.stat().st_size) + 100
    app = create_app(
        video_model, max_upload_bytes=size // 4, max_video_bytes=limit, max_video_frames=CLIP_FRAMES, token="secret-token"
    )
    auth = {"authorization": "Bearer secret-token"}
    with TestClient(app) as client:
        # The video limit, not the (smaller) image limit, applies to video uploads.
        ok = client.post("/api/videos", files={"file": ("a.mp4", clip.read_bytes(), "video/mp4")}, headers=auth)
        assert ok.status_code == 200, ok.text
        vid = ok.json()["id"]
        big = client.post("/api/videos", files={"file": ("b.mp4", clip.read_bytes() + b"\0" * (limit - size + 1), "video/mp4")}, headers=auth)
        assert big.status_code == 413 and "exceeds the limit" in big.json()["error"]
        image = client.post("/api/images", files={"file": ("a.png", b"\0" * (size // 2), "image/png")}, headers=auth)
        assert image.status_code == 413
        too_long = client.post("/api/videos", files={"file": ("c.mp4", longer.read_bytes(), "video/mp4")}, headers=auth)
        assert too_long.status_code == 413 and f"limit of {CLIP_FRAMES} frames" in too_long.json()["error"]
        # Token, origin and content-type guards cover the video routes.
        assert client.get(f"/api/videos/{vid}/frames/0").status_code == 401
        assert client.get(f"/api/videos/{vid}/frames/0", headers=auth).status_code == 200
        cross = client.post(
            f"/api/videos/{vid}/reset", json={}, headers={**auth, "origin": "http://evil.example", "sec-fetch-site": "cross-site"}
        )
        assert cross.status_code == 403
        form = client.post(f"/api/videos/{vid}/propagate", data={"x": "1"}, headers=auth)
        assert form.status_code == 415
        huge = client.post(
            f"/api/videos/{vid}/prompts", content=b"{" + b" " * 70_000 + b"}", headers={**auth, "content-type": "application/json"}
        )
        assert huge.status_code == 413
        video_upload = client.post(f"/api/videos", json={}, headers=auth)
        assert video_upload.status_code == 415 and "multipart/form-data" in video_upload.json()["error"]


def test_sessions_are_bounded_and_their_files_deleted(video_model: Sam2Video, clip: Path) -> None:
    app = create_app(video_model, max_video_sessions=2)
    with TestClient(app) as client:
        store = app.state.videos
        first = _upload(client, clip, "first.mp4")["id"]
        client.get(f"/api/videos/{first}/frames/3")  # a cached preview in its folder too
        first_folder = store.get(first).folder
        assert sorted(p.name for p in first_folder.iterdir()) == ["previews", "video.mp4"]
        assert oct(store.root.stat().st_mode & 0o777) == "0o700"
        second = _upload(client, clip, "second.mp4")["id"]
        client.get(f"/api/videos/{first}")  # first is now the most recently used
        third = _upload(client, clip, "third.mp4")["id"]
        assert sorted(store.sessions) == sorted([first, third])
        gone = client.get(f"/api/videos/{second}")
        assert gone.status_code == 404 and "at most 2 videos" in gone.json()["error"]
        assert len(list(store.root.iterdir())) == 2
        closed = client.delete(f"/api/videos/{third}", headers={"content-type": "application/json"})
        assert closed.status_code == 200
        wait_until(lambda: len(list(store.root.iterdir())) == 1, what="a closed video's folder to go")
        assert client.get("/api/health").json()["video_sessions"] == 1
        root = store.root
    assert not root.exists()  # app shutdown deletes everything
    assert not first_folder.exists()


def test_video_mode_is_off_with_a_sam1_model(clip: Path) -> None:
    with TestClient(create_app(make_tiny_model(0))) as client:
        health = client.get("/api/health").json()
        assert health["video"] is False and "SAM 2.x" in health["video_reason"]
        refused = client.post("/api/videos", files={"file": ("a.mp4", clip.read_bytes(), "video/mp4")})
        assert refused.status_code == 501 and "video mode is off" in refused.json()["error"]
        assert client.get("/api/videos/x/progress").status_code == 501
        page = client.get("/video")
        assert page.status_code == 200 and 'id="video-input"' in page.text and "/static/video.js" in page.text
        assert client.get("/static/video.js").status_code == 200
        schema = client.get("/openapi.json").json()
        for path in ("/api/videos", "/api/videos/{video_id}/prompts", "/api/videos/{video_id}/propagate",
                     "/api/videos/{video_id}/masks/{frame}", "/api/videos/{video_id}/export"):
            assert path in schema["paths"], path
        assert "VideoPromptRequest" in schema["components"]["schemas"]


@pytest.mark.parametrize("video_weights", [True, False])
def test_samkit_serve_builds_the_video_model(
    video_weights: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``samkit serve --model sam2.1_hiera_t``: a checkpoint with the video weights gives video mode
    (one Sam2Video serving images and videos); an image-only one serves images, video off (501)."""
    import torch
    import uvicorn

    from samkit.build_sam2 import get_sam2_config, get_sam2_video_config
    from samkit.cli import main
    from samkit.modeling.sam2 import Sam2

    from .support import free_port_socket

    torch.manual_seed(0)
    model = Sam2Video(get_sam2_video_config("sam2.1_hiera_t")) if video_weights else Sam2(get_sam2_config("sam2.1_hiera_t"))
    checkpoint = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": model.state_dict()}, checkpoint)
    served: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: served.update(app=app, **options))
    probe = free_port_socket()
    port = probe.getsockname()[1]
    probe.close()
    argv = ["serve", "--model", "sam2.1_hiera_t", "--checkpoint", str(checkpoint), "--port", str(port), "--device", "cpu",
            "--max-videos", "3", "--max-video-mb", "7", "--max-video-frames", "99"]
    assert main(argv) == 0
    app = served["app"]
    assert type(app.state.service.model) is type(model)
    expected = model.state_dict()
    assert all(torch.equal(t, expected[name]) for name, t in app.state.service.model.state_dict().items())
    with TestClient(app, base_url="http://127.0.0.1") as client:
        health = client.get("/api/health").json()
        refused = client.post("/api/videos", files={"file": ("a.mp4", b"x", "video/mp4")})
    if video_weights:
        assert health["video"] is True and app.state.videos.predictor.model is app.state.service.model
        assert (health["max_video_sessions"], health["max_video_bytes"], health["max_video_frames"]) == (3, 7 << 20, 99)
        assert refused.status_code == 415  # the model is there; the file is not a video
    else:
        assert health["video"] is False and "no SAM 2.x video weights" in health["video_reason"]
        assert refused.status_code == 501


def test_stop_and_eviction_while_tracking(video_model: Sam2Video, clip: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tracking held between frames by a gate: stop ends it early (masks so far kept); evicting a
    video that is tracking stops it and deletes its folder once the tracking thread lets go."""
    import threading

    app = create_app(video_model, max_video_sessions=2)
    gate = threading.Event()
    with TestClient(app) as client:
        store = app.state.videos
        original = store.predictor.propagate_in_video

        def gated(*args: Any, **kwargs: Any) -> Iterator[Any]:
            for item in original(*args, **kwargs):
                yield item
                gate.wait(10)

        monkeypatch.setattr(store.predictor, "propagate_in_video", gated)
        vid = _upload(client, clip)["id"]
        client.post(f"/api/videos/{vid}/prompts", json={"frame": 0, "object_id": 1, "points": [[40, 36]], "labels": [1]})
        assert client.post(f"/api/videos/{vid}/propagate", json={}).status_code == 202
        wait_until(lambda: client.get(f"/api/videos/{vid}/progress").json()["done"] == 1, what="the first frame")
        assert client.get(f"/api/videos/{vid}/progress").json()["status"] == "running"
        client.post(f"/api/videos/{vid}/propagate/stop", json={})
        gate.set()
        wait_until(lambda: client.get(f"/api/videos/{vid}/progress").json()["status"] != "running", what="the stop")
        progress = client.get(f"/api/videos/{vid}/progress").json()
        assert progress["status"] == "stopped" and 1 <= progress["done"] < CLIP_FRAMES == progress["total"]
        assert progress["tracked_frames"] == list(range(progress["done"]))

        gate.clear()
        assert client.post(f"/api/videos/{vid}/propagate", json={}).status_code == 202
        wait_until(lambda: client.get(f"/api/videos/{vid}/progress").json()["done"] == 1, what="the first frame")
        folder = store.get(vid).folder
        _upload(client, clip, "b.mp4")
        _upload(client, clip, "c.mp4")  # evicts the tracking video
        assert client.get(f"/api/videos/{vid}").status_code == 404
        assert folder.exists()  # its tracking thread still holds it
        gate.set()
        wait_until(lambda: not folder.exists(), what="the evicted video's folder to go")
