"""Helpers for driving the web page in Playwright: canvas pixels, clicks in image pixels, masks."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

_ALPHA_JS = """(id) => {
  const c = document.getElementById(id);
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const out = new Array(c.width * c.height);
  for (let i = 0; i < out.length; i++) out[i] = d[4 * i + 3];
  return {width: c.width, height: c.height, alpha: out};
}"""


def canvas_alpha(page, canvas_id: str) -> np.ndarray:  # type: ignore[no-untyped-def]
    """(H, W) uint8: the canvas's alpha channel."""
    data = page.evaluate(_ALPHA_JS, canvas_id)
    return np.array(data["alpha"], dtype=np.uint8).reshape(data["height"], data["width"])


def overlay(page, canvas_id: str) -> np.ndarray:  # type: ignore[no-untyped-def]
    """(H, W) bool: where the canvas has any opacity."""
    return canvas_alpha(page, canvas_id) > 0


def png_masks(body: dict) -> np.ndarray:
    """(C, H, W) bool: the masks of a predict answer in a PNG format."""
    out = []
    for b64 in body["masks"]:
        with Image.open(io.BytesIO(base64.b64decode(b64))) as image:
            out.append(np.asarray(image).astype(bool))
    return np.stack(out)


def screen_point(page, x: float, y: float) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Image pixel -> page coordinates over the prompt layer."""
    box = page.locator("#prompt-layer").bounding_box()
    width, height = page.evaluate("[window.samkit.state.width, window.samkit.state.height]")
    return box["x"] + x / width * box["width"], box["y"] + y / height * box["height"]


def click_and_wait(page, x: float, y: float, *, button: str = "left") -> dict:  # type: ignore[no-untyped-def]
    """Click the image pixel (x, y); returns the predict request and answer once the mask is drawn."""
    drawn = page.evaluate("window.samkit.predictsDrawn")
    with page.expect_response(lambda r: r.url.endswith("/predict")) as info:
        page.mouse.click(*screen_point(page, x, y), button=button)
    response = info.value
    assert response.status == 200
    page.wait_for_function(f"window.samkit.predictsDrawn > {drawn}")
    return {"request": response.request.post_data_json, "body": response.json()}


def yolo_line_mask(line: str, width: int, height: int) -> tuple[int, np.ndarray]:
    """A YOLO-seg line -> (class index, (H, W) bool: its polygon filled as cv2.fillPoly does)."""
    import cv2

    values = line.split()
    coords = np.array([float(v) for v in values[1:]]).reshape(-1, 2)  # (K, 2) normalized x, y
    assert ((coords >= 0) & (coords <= 1)).all()
    canvas = np.zeros((height, width), dtype=np.uint8)
    cv2.fillPoly(canvas, [np.round(coords * [width, height]).astype(np.int32)], 1)
    return int(values[0]), canvas.astype(bool)
