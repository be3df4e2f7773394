"""The web page with SAM 2.1 and HQ-SAM models (tiny random weights), in headless Chromium:
upload, click, the mask back, accept with a category, export.

What ``samkit serve --model sam2.1_hiera_t`` / ``--model hq_vit_tiny`` build is checked in
``test_cli_serve.py``; here the page runs against the same model classes in small.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from samkit import SamPredictor
from samkit.io import load_image
from samkit.server import create_app

from .pages import click_and_wait, overlay, png_masks, yolo_line_mask
from .support import LiveServer, image_bytes, make_tiny_hq_model, make_tiny_sam2_model, start_live_server

W, H = 240, 160


@pytest.fixture(scope="module")
def sam2_server() -> Iterator[LiveServer]:
    server = start_live_server(create_app(make_tiny_sam2_model(0)))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def hq_server() -> Iterator[LiveServer]:
    server = start_live_server(create_app(make_tiny_hq_model(0)))
    try:
        yield server
    finally:
        server.stop()


def _open(page, server: LiveServer, tmp_path: Path, seed: int, family: str) -> tuple[SamPredictor, str]:  # type: ignore[no-untyped-def]
    """Open the page and an image; returns a predictor on the server's model with the image set."""
    data = image_bytes(W, H, seed=seed)
    path = tmp_path / f"shot{seed}.png"
    path.write_bytes(data)
    page.goto(server.url)
    page.wait_for_function(f"document.body.dataset.modelFamily === '{family}'")
    page.set_input_files("#file-input", str(path))
    page.wait_for_function("document.body.dataset.imageId", timeout=30_000)
    reference = SamPredictor(server.app.state.service.model)  # type: ignore[attr-defined]
    reference.set_image(load_image(data))
    return reference, path.stem


def test_sam21_page(browser, sam2_server: LiveServer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    reference, stem = _open(page, sam2_server, tmp_path, seed=31, family="sam2")
    assert page.locator("#hq-row").is_hidden()
    clicked = click_and_wait(page, 80, 60)
    assert "hq_token_only" not in clicked["request"]
    got = png_masks(clicked["body"])
    (x, y), = clicked["request"]["points"]
    expected, scores, _ = reference.predict(np.array([[x, y]]), np.array([1]))
    assert got.shape == (3, H, W)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_allclose(clicked["body"]["scores"], scores, rtol=1e-5, atol=1e-6)
    best = int(np.argmax(scores))
    assert 0 < expected[best].sum() < W * H
    np.testing.assert_array_equal(overlay(page, "mask-canvas"), expected[best])

    page.fill("#category", "leaf")
    page.press("#category", "Enter")
    assert page.inner_text("#object-count") == "1"
    with page.expect_download() as download_info:
        page.click("#export-coco-btn")
    coco_path = tmp_path / "sam2_coco.json"
    download_info.value.save_as(coco_path)
    assert download_info.value.suggested_filename == f"{stem}_coco.json"
    coco = COCO(str(coco_path))
    assert coco.loadCats(coco.getCatIds()) == [{"id": 1, "name": "leaf"}]
    (annotation,) = coco.loadAnns(coco.getAnnIds())
    np.testing.assert_array_equal(coco.annToMask(annotation).astype(bool), expected[best])
    assert errors == []
    page.close()


def test_hq_page_with_the_hq_token_only_option(browser, hq_server: LiveServer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    reference, stem = _open(page, hq_server, tmp_path, seed=32, family="hq_sam")
    assert page.locator("#hq-row").is_visible()
    clicked = click_and_wait(page, 120, 70)
    assert "hq_token_only" not in clicked["request"]
    (x, y), = clicked["request"]["points"]
    plain = png_masks(clicked["body"])
    expected_plain, _, _ = reference.predict(np.array([[x, y]]), np.array([1]))
    assert plain.shape == (1, H, W)  # HQ-SAM: one mask per prompt
    np.testing.assert_array_equal(plain, expected_plain)

    # Ticking the option asks again for the HQ token's mask alone.
    drawn = page.evaluate("window.samkit.predictsDrawn")
    with page.expect_response(lambda r: r.url.endswith("/predict")) as info:
        page.check("#hq-token-only")
    assert info.value.status == 200 and info.value.request.post_data_json["hq_token_only"] is True
    page.wait_for_function(f"window.samkit.predictsDrawn > {drawn}")
    hq_only = png_masks(info.value.json())
    expected_hq, _, _ = reference.predict(np.array([[x, y]]), np.array([1]), hq_token_only=True)
    np.testing.assert_array_equal(hq_only, expected_hq)
    assert not np.array_equal(hq_only, plain)
    assert 0 < hq_only[0].sum() < W * H
    np.testing.assert_array_equal(overlay(page, "mask-canvas"), hq_only[0])

    page.fill("#category", "cable")
    page.press("#category", "Enter")
    with page.expect_download() as download_info:
        page.click("#export-yolo-btn")
    zip_path = tmp_path / "hq_yolo.zip"
    download_info.value.save_as(zip_path)
    with zipfile.ZipFile(zip_path) as archive:
        assert archive.read("classes.txt").decode() == "cable\n"
        (line,) = archive.read(f"labels/{stem}.txt").decode().splitlines()
    index, polygon_mask = yolo_line_mask(line, W, H)
    assert index == 0
    assert (polygon_mask & hq_only[0]).sum() / (polygon_mask | hq_only[0]).sum() >= 0.9
    assert errors == []
    page.close()
