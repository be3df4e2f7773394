"""The video page in headless Chromium (Playwright): open a clip, click, track, scrub, correct, export.

What the page draws is compared with what the server holds (GET /api/videos/{id}/masks/{f}),
which test_video_server.py compares with SamVideoPredictor.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from samkit.server import create_app
from samkit.server.encoding import decode_rle

from .pages import overlay
from .support import LiveServer, make_tiny_model, start_live_server
from .video_support import CLIP_FRAMES, CLIP_H, CLIP_W, make_tiny_video_model, write_mp4


@pytest.fixture(scope="module")
def video_server() -> Iterator[LiveServer]:
    server = start_live_server(create_app(make_tiny_video_model()))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mp4(tmp_path_factory.mktemp("clip") / "shapes.mp4")


def _server_union(page, frame: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    """(H, W) bool: every object's mask on ``frame`` as the server holds it (fetched by the page)."""
    body = page.evaluate(
        "async (f) => (await fetch(`/api/videos/${document.body.dataset.videoId}/masks/${f}`)).json()", frame
    )
    union = np.zeros((CLIP_H, CLIP_W), dtype=bool)
    for obj in body["objects"]:
        union |= decode_rle(obj["mask"])
    return union


def _click(page, x: float, y: float, *, button: str = "left") -> dict:  # type: ignore[no-untyped-def]
    """Click video pixel (x, y) on the shown frame; returns the prompt request once its mask is drawn."""
    answered = page.evaluate("window.samkitVideo.promptsAnswered")
    box = page.locator("#prompt-layer").bounding_box()
    with page.expect_request(lambda r: r.url.endswith("/prompts")) as info:
        page.mouse.click(box["x"] + x / CLIP_W * box["width"], box["y"] + y / CLIP_H * box["height"], button=button)
    page.wait_for_function(f"window.samkitVideo.promptsAnswered > {answered}")
    return info.value.post_data_json


def _track(page) -> dict:  # type: ignore[no-untyped-def]
    finished = page.evaluate("window.samkitVideo.tracksFinished")
    with page.expect_request(lambda r: r.url.endswith("/propagate")) as info:
        page.click("#track-btn")
    page.wait_for_function(f"window.samkitVideo.tracksFinished > {finished}", timeout=30_000)
    return info.value.post_data_json


def _scrub(page, frame: int) -> None:  # type: ignore[no-untyped-def]
    """Move the slider to ``frame`` as a user does (input events) and wait until it is drawn."""
    drawn = page.evaluate("window.samkitVideo.masksDrawn")
    page.eval_on_selector(
        "#frame-slider", "(s, f) => { s.value = String(f); s.dispatchEvent(new Event('input')); }", frame
    )
    page.wait_for_function(
        f"window.samkitVideo.drawnFrame === {frame} && window.samkitVideo.masksDrawn > {drawn}"
    )
    assert page.inner_text("#frame-label") == f"frame {frame} / {CLIP_FRAMES - 1}"


def test_open_click_track_scrub_correct_export(browser, video_server: LiveServer, clip: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(video_server.url + "/")
    page.click("a[href='/video']")  # the image page links to the video page
    page.wait_for_url("**/video")
    page.wait_for_function("document.body.dataset.video === 'on'")
    page.set_input_files("#video-input", str(clip))
    page.wait_for_function("document.body.dataset.videoId && window.samkitVideo.drawnFrame === 0", timeout=30_000)
    assert page.evaluate("[window.samkitVideo.state.width, window.samkitVideo.state.height]") == [CLIP_W, CLIP_H]
    frame_pixels = page.evaluate(
        "() => Array.from(document.getElementById('frame-canvas').getContext('2d').getImageData(0, 0, 120, 72).data)"
    )
    assert np.array(frame_pixels).reshape(CLIP_H, CLIP_W, 4)[..., :3].std() > 10  # the frame is drawn

    # Frame 2: a click on the disc for object 1; its mask is drawn over the frame.
    _scrub(page, 2)
    request = _click(page, 40, 36)
    assert request["frame"] == 2 and request["object_id"] == 1 and request["labels"] == [1]
    ((x, y),) = request["points"]
    assert abs(x - 40) < 1 and abs(y - 36) < 1
    shown = overlay(page, "masks-canvas")
    assert shown.any() and not shown.all()
    np.testing.assert_array_equal(shown, _server_union(page, 2))

    # A second object with a box drag.
    page.click("#new-object-btn")
    box = page.locator("#prompt-layer").bounding_box()
    to_screen = lambda px, py: (box["x"] + px / CLIP_W * box["width"], box["y"] + py / CLIP_H * box["height"])  # noqa: E731
    answered = page.evaluate("window.samkitVideo.promptsAnswered")
    page.mouse.move(*to_screen(70, 5))
    page.mouse.down()
    page.mouse.move(*to_screen(90, 20), steps=3)
    page.mouse.move(*to_screen(110, 40), steps=3)
    page.mouse.up()
    page.wait_for_function(f"window.samkitVideo.promptsAnswered > {answered}")
    assert page.locator("#video-objects li").count() == 2
    np.testing.assert_array_equal(overlay(page, "masks-canvas"), _server_union(page, 2))

    # Track: both ways from frame 2; then another frame shows the tracked masks.
    plan = _track(page)
    assert plan == {"start_frame": 2, "direction": "both"}
    assert page.evaluate("window.samkitVideo.state.tracked.size") == CLIP_FRAMES
    _scrub(page, 5)
    tracked = overlay(page, "masks-canvas")
    assert tracked.any()
    np.testing.assert_array_equal(tracked, _server_union(page, 5))
    _scrub(page, 0)  # backwards from the first prompted frame too
    np.testing.assert_array_equal(overlay(page, "masks-canvas"), _server_union(page, 0))
    assert _server_union(page, 0).any()

    # Correct object 2 on frame 5 (right click: background), then Track runs on from there.
    _scrub(page, 5)
    page.click("#video-objects li[data-object-id='2']")
    before = _server_union(page, 6)
    request = _click(page, 100, 20, button="right")
    assert request["frame"] == 5 and request["object_id"] == 2 and request["labels"] == [0]
    np.testing.assert_array_equal(overlay(page, "masks-canvas"), _server_union(page, 5))
    plan = _track(page)
    assert plan == {"start_frame": 5, "direction": "forward"}
    _scrub(page, 6)
    after = _server_union(page, 6)
    np.testing.assert_array_equal(overlay(page, "masks-canvas"), after)
    assert not np.array_equal(before, after)  # the correction reached the next frame

    # Export: the downloads are the server's documents.
    with page.expect_download() as download_info:
        page.click("#export-json-btn")
    assert download_info.value.suggested_filename == "shapes_tracks.json"
    saved = tmp_path / "tracks.json"
    download_info.value.save_as(saved)
    document = json.loads(saved.read_text())
    assert document["objects"] == ["1", "2"] and len(document["frames"]) == CLIP_FRAMES
    served = page.evaluate(
        "async () => (await fetch(`/api/videos/${document.body.dataset.videoId}/export`)).json()"
    )
    assert document == served
    with page.expect_download() as download_info:
        page.click("#export-zip-btn")
    assert download_info.value.suggested_filename == "shapes_masks.zip"
    import zipfile

    download_info.value.save_as(tmp_path / "masks.zip")
    names = zipfile.ZipFile(tmp_path / "masks.zip").namelist()
    assert len(names) == 2 * CLIP_FRAMES + 1 and "masks/00006_2.png" in names

    # Removing object 1 takes its masks off every frame.
    page.click("#video-objects li[data-object-id='1'] button.remove")
    page.wait_for_function("window.samkitVideo.state.objects.length === 1")
    _scrub(page, 3)
    np.testing.assert_array_equal(overlay(page, "masks-canvas"), _server_union(page, 3))
    assert page.evaluate(
        "async () => (await fetch(`/api/videos/${document.body.dataset.videoId}`)).json()"
    )["objects"] == [2]
    assert not errors, errors
    page.close()


def test_video_page_says_why_it_is_off(browser) -> None:  # type: ignore[no-untyped-def]
    server = start_live_server(create_app(make_tiny_model(0)))
    try:
        page = browser.new_page()
        page.goto(server.url + "/video")
        page.wait_for_function("document.body.dataset.video === 'off'")
        assert "SAM 2.x" in page.inner_text("#video-off")
        assert page.is_disabled("#open-video-btn")
        page.close()
    finally:
        server.stop()


def test_the_video_page_is_served_without_a_model_call() -> None:
    with TestClient(create_app(make_tiny_model(0))) as client:
        page = client.get("/video")
        assert page.status_code == 200 and page.headers["cache-control"] == "no-cache"
        assert "/static/video.css" in page.text and client.get("/static/video.css").status_code == 200
