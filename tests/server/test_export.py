"""The export endpoints: labelled objects -> COCO (pycocotools) and YOLO-seg (polygons back to masks)."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from samkit.everything.rle import mask_to_rle, rle_to_coco
from samkit.modeling import Sam
from samkit.server import create_app
from samkit.server.encoding import decode_rle

from .pages import yolo_line_mask
from .support import image_bytes

W, H = 200, 120


@pytest.fixture(scope="module")
def client(tiny_model: Sam) -> Iterator[TestClient]:
    with TestClient(create_app(tiny_model, max_image_pixels=10_000_000)) as c:
        yield c


def _rle(mask: np.ndarray) -> dict[str, Any]:
    return rle_to_coco(mask_to_rle(mask)[0])


def _ring() -> np.ndarray:
    """(H, W) bool: a rectangle with a hole and a separate blob (one object, two regions)."""
    mask = np.zeros((H, W), dtype=bool)
    mask[10:60, 20:90] = True
    mask[25:40, 40:60] = False
    mask[80:100, 150:180] = True
    return mask


def _predicted_mask(client: TestClient) -> tuple[np.ndarray, float]:
    """The best mask of a real predict on an uploaded picture, as the page would keep it."""
    upload = client.post("/api/images", files={"file": ("p.png", image_bytes(W, H, seed=3), "image/png")})
    assert upload.status_code == 200, upload.text
    body = client.post(
        f"/api/images/{upload.json()['id']}/predict", json={"points": [[60, 40]], "labels": [1], "format": "rle"}
    ).json()
    best = int(np.argmax(body["scores"]))
    mask = decode_rle(body["masks"][best])
    assert 0 < mask.sum() < W * H
    return mask, body["scores"][best]


def _export(client: TestClient, fmt: str, document: dict[str, Any] | str):  # type: ignore[no-untyped-def]
    text = document if isinstance(document, str) else json.dumps(document)
    return client.post(f"/api/export/{fmt}", files={"annotations": ("annotations.json", text, "application/json")})


def _document(objects: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"file_name": "shots/picture.png", "width": W, "height": H, **extra, "objects": objects}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_coco_export_carries_the_categories(client: TestClient, tmp_path: Path) -> None:
    predicted, score = _predicted_mask(client)
    ring = _ring()
    document = _document(
        [
            {"segmentation": _rle(predicted), "category": "dog", "score": score, "point_coords": [[60, 40]], "point_labels": [1]},
            {"segmentation": _rle(ring), "category": "cat", "box": [20, 10, 180, 100]},
        ],
        categories=["cat", "dog"],
    )
    response = _export(client, "coco", document)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-disposition"] == 'attachment; filename="picture_coco.json"'
    path = tmp_path / "coco.json"
    path.write_bytes(response.content)
    coco = COCO(str(path))
    assert coco.loadCats(coco.getCatIds()) == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    (image,) = coco.loadImgs(coco.getImgIds())
    assert (image["file_name"], image["width"], image["height"]) == ("picture.png", W, H)  # folders dropped
    dog, cat = coco.loadAnns(coco.getAnnIds())
    for annotation, mask, category in ((dog, predicted, 2), (cat, ring, 1)):
        assert annotation["category_id"] == category
        np.testing.assert_array_equal(coco.annToMask(annotation).astype(bool), mask)
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert annotation["area"] == int(mask_utils.area(rle)) == int(mask.sum())
        assert annotation["bbox"] == mask_utils.toBbox(rle).tolist()
    assert coco.getAnnIds(catIds=[2]) == [dog["id"]]
    assert dog["predicted_iou"] == pytest.approx(score) and dog["point_coords"] == [[60, 40]]
    assert dog["point_labels"] == [1] and dog["prompt_box"] is None
    assert cat["prompt_box"] == [20, 10, 180, 100] and cat["point_coords"] == []


def test_coco_polygons_and_categories_in_order_of_first_use(client: TestClient) -> None:
    square = np.zeros((H, W), dtype=bool)
    square[30:70, 40:100] = True
    objects = [{"segmentation": _rle(square), "category": name} for name in ("tree", "car", "tree")]
    response = _export(client, "coco", _document(objects, polygons=True))
    assert response.status_code == 200, response.text
    coco = response.json()
    assert coco["categories"] == [{"id": 1, "name": "tree"}, {"id": 2, "name": "car"}]
    assert [a["category_id"] for a in coco["annotations"]] == [1, 2, 1]
    (polygon,) = coco["annotations"][0]["segmentation"]
    rle = mask_utils.merge(mask_utils.frPyObjects([polygon], H, W))
    assert _iou(mask_utils.decode(rle).astype(bool), square) > 0.95


def test_yolo_export_polygons_give_back_the_masks(client: TestClient) -> None:
    predicted, _ = _predicted_mask(client)
    ring = _ring()
    document = _document(
        [{"segmentation": _rle(ring), "category": "cat"}, {"segmentation": _rle(predicted), "category": "dog"}],
        categories=["dog", "cat", "bird"],
    )
    response = _export(client, "yolo", document)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert response.headers["content-disposition"] == 'attachment; filename="picture_yolo.zip"'
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert sorted(archive.namelist()) == ["classes.txt", "labels/picture.txt"]
        assert archive.read("classes.txt").decode() == "dog\ncat\nbird\n"
        lines = archive.read("labels/picture.txt").decode().splitlines()
    assert len(lines) == 2
    (cat_class, cat_mask), (dog_class, dog_mask) = (yolo_line_mask(line, W, H) for line in lines)
    assert (cat_class, dog_class) == (1, 0)
    assert _iou(cat_mask, ring) >= 0.9 and _iou(dog_mask, predicted) >= 0.9


@pytest.mark.parametrize(
    ("change", "status", "fragment"),
    [
        ({"categories": ["cat"]}, 422, "objects[0].category: 'dog' is not one of categories"),
        ({"categories": ["dog", "dog"]}, 422, "'dog' is listed twice"),
        ({"categories": [""]}, 422, "categories.0"),
        ({"width": W + 1}, 422, "objects[0].segmentation: size [120, 200]"),
        ({"file_name": ".."}, 422, "file_name"),
        ({"file_name": "a\nb.png"}, 422, "file_name"),
        ({"file_name": "\ud800.png"}, 400, "malformed JSON"),  # lone surrogates: no file name could hold one
        ({"categories": ["dog", "hot\ndog"]}, 422, "categories[1]"),
        ({"file_name": "x" * 201}, 422, "file_name"),
        ({"objects": [{"segmentation": _rle(_ring()), "category": "\ud800"}]}, 400, "malformed JSON"),
        ({"objects": [{"segmentation": {"size": [H, W], "counts": "0"}, "category": "dog"}]}, 422, "counts sum to"),
        ({"objects": [{"segmentation": {"size": [H, W], "counts": "\x7f"}, "category": "dog"}]}, 422, "COCO RLE"),
        ({"objects": [{"segmentation": _rle(np.zeros((H, W), bool)), "category": "dog"}]}, 422, "empty"),
        ({"objects": [{"segmentation": _rle(_ring()), "category": "dog", "point_coords": [[1, 2]]}]}, 422, "0 labels for 1 points"),
        ({"objects": [{"segmentation": _rle(_ring()), "category": "dog", "colour": "red"}]}, 422, "colour"),
        ({"objects": [{"segmentation": _rle(_ring()), "category": "dog", "score": "NaN"}]}, 422, "score"),
        ({"width": 5000, "height": 5000}, 413, "exceeds the limit"),
        ({"objects": [{"segmentation": _rle(_ring()), "category": "dog"}] * 5001}, 422, "objects"),
    ],
)
def test_bad_exports(client: TestClient, change: dict[str, Any], status: int, fragment: str) -> None:
    document = {**_document([{"segmentation": _rle(_ring()), "category": "dog"}]), **change}
    response = _export(client, "coco", document)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"], response.json()["error"]


def test_export_transport_errors(client: TestClient) -> None:
    response = _export(client, "coco", '{"objects": [')
    assert response.status_code == 400 and "malformed JSON" in response.json()["error"]
    as_json = client.post("/api/export/yolo", json=_document([]))  # the masks travel as a multipart part
    assert as_json.status_code == 415 and "multipart/form-data" in as_json.json()["error"]
    assert client.post("/api/export/coco", files={"other": ("a", b"{}")}).status_code == 422
    cross_site = client.post(
        "/api/export/coco",
        files={"annotations": ("a.json", json.dumps(_document([])), "application/json")},
        headers={"origin": "https://evil.example"},
    )
    assert cross_site.status_code == 403
    empty = _export(client, "coco", _document([]))
    assert empty.status_code == 200 and empty.json()["annotations"] == []
    longest = _export(client, "yolo", {**_document([{"segmentation": _rle(_ring()), "category": "a"}]), "file_name": "x" * 200})
    assert longest.status_code == 200, longest.text  # its label file name still fits the file system


def test_openapi_lists_the_exports_and_hq_token_only(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/api/export/coco", "/api/export/yolo"} <= set(schema["paths"])
    export_request = schema["components"]["schemas"]["ExportRequest"]
    assert {"file_name", "width", "height", "categories", "objects", "polygons"} <= set(export_request["properties"])
    assert export_request["properties"]["objects"]["items"]["$ref"] == "#/components/schemas/ExportObject"
    assert "category" in schema["components"]["schemas"]["ExportObject"]["properties"]
    assert "hq_token_only" in schema["components"]["schemas"]["PredictRequest"]["properties"]
    assert client.get("/api/health").json()["model_family"] == "sam"


def test_hq_token_only_is_refused_for_other_models(client: TestClient) -> None:
    upload = client.post("/api/images", files={"file": ("p.png", image_bytes(W, H, seed=3), "image/png")})
    url = f"/api/images/{upload.json()['id']}/predict"
    response = client.post(url, json={"points": [[5, 5]], "labels": [1], "hq_token_only": True})
    assert response.status_code == 422 and "only HQ-SAM models" in response.json()["error"]
    response = client.post(url, json={"points": [[5, 5]], "labels": [1], "hq_token_only": "maybe"})
    assert response.status_code == 422 and "hq_token_only" in response.json()["error"]
    assert client.post(url, json={"points": [[5, 5]], "labels": [1], "hq_token_only": False}).status_code == 200


def test_exports_need_the_token_when_the_server_has_one(tiny_model: Sam) -> None:
    files = {"annotations": ("a.json", json.dumps(_document([{"segmentation": _rle(_ring()), "category": "a"}])), "application/json")}
    with TestClient(create_app(tiny_model, token="s3cret-token")) as client:
        assert client.post("/api/export/coco", files=files).status_code == 401
        allowed = client.post("/api/export/coco", files=files, headers={"Authorization": "Bearer s3cret-token"})
        assert allowed.status_code == 200 and allowed.json()["categories"] == [{"id": 1, "name": "a"}]
