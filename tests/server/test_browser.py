"""The web page in headless Chromium (Playwright): upload, click, overlay pixels, keys, export."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from samkit.io import load_image
from samkit.server.encoding import mask_outline

from .pages import canvas_alpha, click_and_wait, overlay, png_masks, screen_point, yolo_line_mask
from .support import image_bytes

W, H = 240, 160

MASK_ALPHA = 130  # app.js: the current object's fill; its outline is opaque


def _open(page, live_server, tmp_path: Path, seed: int) -> tuple[Path, bytes]:  # type: ignore[no-untyped-def]
    data = image_bytes(W, H, seed=seed)
    path = tmp_path / f"picture{seed}.png"
    path.write_bytes(data)
    page.goto(live_server.url)
    page.set_input_files("#file-input", str(path))
    page.wait_for_function("document.body.dataset.imageId", timeout=30_000)
    assert page.evaluate("document.body.dataset.imageId") == hashlib.sha256(data).hexdigest()
    return path, data


def _markers(page, selector: str) -> list[tuple[float, float, float, float]]:  # type: ignore[no-untyped-def]
    """Screen boxes (x, y, width, height) of the point / box markers over the image matching selector."""
    markers = page.locator(f"#canvas-wrap .mark:not(.anchor){selector}").all()
    return [tuple(b.values()) for b in (m.bounding_box() for m in markers)]


def _centre_at(marker: tuple[float, float, float, float], screen: tuple[float, float]) -> bool:
    x, y, width, height = marker
    return abs(x + width / 2 - screen[0]) < 1.5 and abs(y + height / 2 - screen[1]) < 1.5


def test_click_overlay_undo_accept_and_export(browser, live_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    _open(page, live_server, tmp_path, seed=21)

    # Left click: one positive point at the image pixel under the cursor.
    first = click_and_wait(page, 70, 50)
    ((x, y),) = first["request"]["points"]
    assert abs(x - 70) < 1.0 and abs(y - 50) < 1.0
    assert first["request"]["labels"] == [1]
    masks = png_masks(first["body"])
    best = int(np.argmax(first["body"]["scores"]))
    assert 0 < masks[best].sum() < W * H
    np.testing.assert_array_equal(overlay(page, "mask-canvas"), masks[best])
    (marker,) = _markers(page, ".point.positive")  # the point is shown where it was clicked
    assert _centre_at(marker, screen_point(page, 70, 50))
    # Drawn as a translucent fill with an opaque outline (the recoloured outlined PNG).
    alpha = canvas_alpha(page, "mask-canvas")
    outline = mask_outline(masks[best])
    assert first["request"]["format"] == "outlined_png"
    assert outline.any() and (masks[best] & ~outline).any()
    assert (alpha[outline] == 255).all() and (alpha[masks[best] & ~outline] == MASK_ALPHA).all()

    # Keys 1/2/3 switch the candidate shown.
    other = (best + 1) % 3
    page.keyboard.press(str(other + 1))
    page.wait_for_function(f"window.samkit.shownIndex === {other}")  # it may still be decoding
    np.testing.assert_array_equal(overlay(page, "mask-canvas"), masks[other])
    assert page.locator("#candidates button.selected").get_attribute("data-index") == str(other)
    page.keyboard.press(str(best + 1))
    page.wait_for_function(f"window.samkit.shownIndex === {best}")

    # Right click: a negative point; Backspace undoes it without a new request.
    second = click_and_wait(page, 200, 120, button="right")
    assert second["request"]["labels"] == [1, 0]
    (marker,) = _markers(page, ".point.negative")
    assert _centre_at(marker, screen_point(page, 200, 120)) and len(_markers(page, ".point")) == 2
    assert not np.array_equal(png_masks(second["body"]), masks)
    page.keyboard.press("Backspace")
    page.wait_for_function(f"window.samkit.shownIndex === {best}")
    np.testing.assert_array_equal(overlay(page, "mask-canvas"), masks[best])
    assert page.evaluate("window.samkit.state.points.length") == 1
    assert len(_markers(page, ".point.positive")) == 1 and not _markers(page, ".point.negative")

    # Enter accepts: the object moves to the objects layer, the current mask clears.
    page.keyboard.press("Enter")
    assert page.inner_text("#object-count") == "1"
    assert not overlay(page, "mask-canvas").any()
    np.testing.assert_array_equal(overlay(page, "objects-canvas"), masks[best])

    # COCO JSON export.
    with page.expect_download() as download_info:
        page.click("#export-coco-btn")
    coco_path = tmp_path / "export.json"
    download_info.value.save_as(coco_path)
    assert download_info.value.suggested_filename == "picture21_coco.json"
    coco = COCO(str(coco_path))
    annotations = coco.loadAnns(coco.getAnnIds())
    assert len(annotations) == 1
    (annotation,) = annotations
    assert annotation["area"] == int(masks[best].sum())
    np.testing.assert_array_equal(coco.annToMask(annotation).astype(bool), masks[best])
    rle = mask_utils.encode(np.asfortranarray(masks[best].astype(np.uint8)))
    assert annotation["bbox"] == mask_utils.toBbox(rle).tolist()
    assert coco.loadImgs(annotation["image_id"])[0]["width"] == W
    assert json.loads(coco_path.read_text())["annotations"][0]["point_labels"] == [1]

    # PNG masks in a zip.
    with page.expect_download() as download_info:
        page.click("#export-png-btn")
    zip_path = tmp_path / "masks.zip"
    download_info.value.save_as(zip_path)
    with zipfile.ZipFile(zip_path) as archive:
        assert archive.testzip() is None
        names = archive.namelist()
        assert names == ["picture21_mask_001.png"]
        with Image.open(io.BytesIO(archive.read(names[0]))) as image:
            assert image.size == (W, H)
            np.testing.assert_array_equal(np.asarray(image).astype(bool), masks[best])

    # Undo with no prompts removes the last accepted object.
    page.keyboard.press("Control+z")
    assert page.inner_text("#object-count") == "0"
    assert not overlay(page, "objects-canvas").any()
    assert errors == []
    page.close()


def test_dropped_file_opens_then_drag_draws_a_box_and_escape_clears(browser, live_server) -> None:  # type: ignore[no-untyped-def]
    page = browser.new_page()
    page.goto(live_server.url)
    data = image_bytes(W, H, seed=22)
    transfer = page.evaluate_handle(
        """(b64) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
            return dt;
        }""",
        base64.b64encode(data).decode(),
    )
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})
    page.wait_for_function("document.body.dataset.imageId", timeout=30_000)
    assert page.evaluate("document.body.dataset.imageId") == hashlib.sha256(data).hexdigest()
    assert "dropped.png" in page.inner_text("#file-name")
    drawn = page.evaluate("window.samkit.predictsDrawn")
    with page.expect_response(lambda r: r.url.endswith("/predict")) as info:
        page.mouse.move(*screen_point(page, 30, 20))
        page.mouse.down()
        page.mouse.move(*screen_point(page, 100, 70), steps=4)
        page.mouse.move(*screen_point(page, 180, 130), steps=4)
        page.mouse.up()
    request = info.value.request.post_data_json
    assert request["points"] == [] and request["labels"] == []
    assert np.allclose(request["box"], [30, 20, 180, 130], atol=1.0)
    page.wait_for_function(f"window.samkit.predictsDrawn > {drawn}")
    body = info.value.json()
    best = int(np.argmax(body["scores"]))
    np.testing.assert_array_equal(overlay(page, "mask-canvas"), png_masks(body)[best])
    ((x, y, width, height),) = _markers(page, ".box")
    (x0, y0), (x1, y1) = screen_point(page, 30, 20), screen_point(page, 180, 130)
    assert np.allclose([x, y, x + width, y + height], [x0, y0, x1, y1], atol=1.5)
    page.keyboard.press("Escape")
    assert not overlay(page, "mask-canvas").any()
    assert page.evaluate("window.samkit.state.box") is None
    assert not _markers(page, "")
    page.close()


def test_format_the_browser_cannot_show_uses_the_server_preview(browser, live_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    picture = load_image(image_bytes(W, H, seed=24))
    path = tmp_path / "scan.tif"
    Image.fromarray(picture).save(path, format="TIFF")  # Chromium does not decode TIFF
    page = browser.new_page()
    previews: list[str] = []
    page.on("request", lambda r: previews.append(r.url) if r.url.endswith("/preview") else None)
    page.goto(live_server.url)
    page.set_input_files("#file-input", str(path))
    page.wait_for_function("document.body.dataset.imageId", timeout=30_000)
    assert len(previews) == 1
    shown = np.array(
        page.evaluate(
            """() => {
                const c = document.getElementById('image-canvas');
                return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data);
            }"""
        )
    ).reshape(H, W, 4)
    assert np.abs(shown[..., :3].astype(int) - picture.astype(int)).mean() < 4
    click_and_wait(page, 100, 80)  # and it segments as usual
    page.close()


def test_segment_everything_button(browser, live_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    page = browser.new_page()
    _open(page, live_server, tmp_path, seed=23)
    page.select_option("#points-per-side", "8")
    sent: list[dict] = []

    def lower_thresholds(route) -> None:  # type: ignore[no-untyped-def]
        # The random tiny model scores low: keep every mask so the overlay has something to show.
        body = route.request.post_data_json
        sent.append(body)
        route.continue_(post_data=json.dumps({**body, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}))

    page.route("**/everything", lower_thresholds)
    with page.expect_response(lambda r: r.url.endswith("/everything"), timeout=60_000) as info:
        page.click("#everything-btn")
    assert info.value.status == 200, info.value.text()
    assert sent == [{"points_per_side": 8}]
    body = info.value.json()
    page.wait_for_function("document.body.dataset.busy === '0'")
    expected = [m for m in body["masks"] if m["area"] > 0]
    assert expected, "no masks to show: the check below would prove nothing"
    assert int(page.inner_text("#object-count")) == len(expected)
    union = np.zeros((H, W), dtype=bool)
    for record in expected:
        rle = {"size": record["segmentation"]["size"], "counts": record["segmentation"]["counts"].encode()}
        union |= mask_utils.decode(rle).astype(bool)
    np.testing.assert_array_equal(overlay(page, "objects-canvas"), union)
    # One undo removes the whole segment-everything batch.
    page.keyboard.press("Backspace")
    assert page.inner_text("#object-count") == "0"
    page.close()


def test_label_two_objects_with_categories_and_export_coco_and_yolo(browser, live_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    _open(page, live_server, tmp_path, seed=25)
    assert page.input_value("#category") == "object"  # the default category

    # Object 1: "cat", accepted with Enter on the image.
    page.fill("#category", "cat")
    first = click_and_wait(page, 60, 45)
    cat_mask = png_masks(first["body"])[int(np.argmax(first["body"]["scores"]))]
    page.keyboard.press("Enter")
    # Object 2: a typo, accepted with Enter in the category box; the box keeps the name for the next object.
    page.fill("#category", "dgo")
    second = click_and_wait(page, 190, 125)
    dog_mask = png_masks(second["body"])[int(np.argmax(second["body"]["scores"]))]
    page.press("#category", "Enter")
    assert page.inner_text("#object-count") == "2"
    assert page.input_value("#category") == "dgo"
    object_inputs = page.locator("#objects li input.category")
    assert [object_inputs.nth(i).input_value() for i in range(2)] == ["cat", "dgo"]
    # Fixed on the object itself: the unused typo leaves the category list.
    object_inputs.nth(1).fill("dog")
    object_inputs.nth(1).press("Enter")
    assert page.evaluate("window.samkit.state.objects.map((o) => o.category)") == ["cat", "dog"]
    options = page.eval_on_selector_all("#category-names option", "(os) => os.map((o) => o.value)")
    assert options == ["cat", "dog"]

    # COCO: the user's categories, each annotation's category_id, the masks.
    with page.expect_download() as download_info:
        page.click("#export-coco-btn")
    assert download_info.value.suggested_filename == "picture25_coco.json"
    coco_path = tmp_path / "labels_coco.json"
    download_info.value.save_as(coco_path)
    coco = COCO(str(coco_path))
    assert coco.loadCats(coco.getCatIds()) == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    annotations = coco.loadAnns(coco.getAnnIds())
    assert [a["category_id"] for a in annotations] == [1, 2]
    for annotation, mask in zip(annotations, (cat_mask, dog_mask)):
        np.testing.assert_array_equal(coco.annToMask(annotation).astype(bool), mask)
        assert annotation["area"] == int(mask.sum())
    assert coco.loadImgs(annotations[0]["image_id"])[0]["file_name"] == "picture25.png"

    # YOLO-seg: classes in the same order, one normalized polygon per object.
    with page.expect_download() as download_info:
        page.click("#export-yolo-btn")
    assert download_info.value.suggested_filename == "picture25_yolo.zip"
    zip_path = tmp_path / "labels_yolo.zip"
    download_info.value.save_as(zip_path)
    with zipfile.ZipFile(zip_path) as archive:
        assert sorted(archive.namelist()) == ["classes.txt", "labels/picture25.txt"]
        assert archive.read("classes.txt").decode() == "cat\ndog\n"
        lines = archive.read("labels/picture25.txt").decode().splitlines()
    assert len(lines) == 2
    for line, (index, mask) in zip(lines, enumerate((cat_mask, dog_mask))):
        got_index, polygon_mask = yolo_line_mask(line, W, H)
        assert got_index == index
        assert (polygon_mask & mask).sum() / (polygon_mask | mask).sum() >= 0.9

    # The categories stay with the tab: the next image offers them and numbers them the same,
    # also after a reload of the page.
    before = page.evaluate("document.body.dataset.imageId")
    next_image = tmp_path / "next.png"
    next_image.write_bytes(image_bytes(W, H, seed=26))
    page.set_input_files("#file-input", str(next_image))
    page.wait_for_function(f"document.body.dataset.imageId && document.body.dataset.imageId !== '{before}'")
    assert page.inner_text("#object-count") == "0"
    assert page.input_value("#category") == "dgo"  # what was typed last, unchanged
    assert page.evaluate("window.samkit.state.categories") == ["cat", "dog"]
    page.reload()
    page.wait_for_function("document.getElementById('category-names').options.length === 2")
    assert page.evaluate("window.samkit.state.categories") == ["cat", "dog"]
    assert errors == []
    page.close()
