"""The HTTP API in-process (FastAPI TestClient): results, caching, errors."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import struct
import zlib
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from samkit import SamPredictor
from samkit.io import load_image
from samkit.modeling import Sam
from samkit.server import create_app
from samkit.server.encoding import decode_rle, mask_outline

from .support import image_bytes

W, H = 200, 120


def _png_mask(b64: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(b64))) as image:
        return np.asarray(image).astype(bool)


@pytest.fixture
def client(tiny_model: Sam) -> Iterator[TestClient]:
    with TestClient(create_app(tiny_model)) as c:
        yield c


@pytest.fixture(scope="module")
def picture() -> bytes:
    return image_bytes(W, H, seed=3)


@pytest.fixture(scope="module")
def reference(tiny_model: Sam, picture: bytes) -> SamPredictor:
    predictor = SamPredictor(tiny_model)
    predictor.set_image(load_image(picture))
    return predictor


def _upload(client: TestClient, data: bytes, name: str = "a.png") -> dict:
    response = client.post("/api/images", files={"file": (name, data, "image/png")})
    assert response.status_code == 200, response.text
    return response.json()


def _assert_error(response, status: int, fragment: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert fragment in body["error"], body["error"]


# ---------------------------------------------------------------------------- happy paths


def test_health(client: TestClient) -> None:
    body = client.get("/api/health").json()
    assert body["status"] == "ok"
    assert body["model"] == "tiny"
    assert body["cached_images"] == 0


def test_upload_returns_content_hash_and_size(client: TestClient, picture: bytes) -> None:
    body = _upload(client, picture)
    assert body["id"] == hashlib.sha256(picture).hexdigest()
    assert (body["width"], body["height"]) == (W, H)
    assert body["cached"] is False
    assert client.get(f"/api/images/{body['id']}").json()["width"] == W


def test_preview_is_the_decoded_image(client: TestClient, picture: bytes) -> None:
    image_id = _upload(client, picture)["id"]
    response = client.get(f"/api/images/{image_id}/preview")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(response.content)) as image:
        preview = np.asarray(image.convert("RGB")).astype(int)
    assert preview.shape == (H, W, 3)
    assert np.abs(preview - load_image(picture).astype(int)).mean() < 4  # JPEG quality 90
    _assert_error(client.get("/api/images/deadbeef/preview"), 404, "unknown image id")


def test_embedding_is_computed_once_per_content(
    client: TestClient, tiny_model: Sam, picture: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    original = tiny_model.encode_image

    def counting(images: torch.Tensor) -> torch.Tensor:
        calls.append(images.shape)
        return original(images)

    monkeypatch.setattr(tiny_model, "encode_image", counting)
    first = _upload(client, picture, "one.png")
    second = _upload(client, picture, "renamed.png")
    other = _upload(client, image_bytes(W, H, seed=4))
    assert first["id"] == second["id"] != other["id"]
    assert (first["cached"], second["cached"], other["cached"]) == (False, True, False)
    assert len(calls) == 2


def test_predict_png_equals_the_predictor(client: TestClient, picture: bytes, reference: SamPredictor) -> None:
    image_id = _upload(client, picture)["id"]
    points, labels = [[50.5, 60.0], [150.0, 30.0]], [1, 0]
    response = client.post(f"/api/images/{image_id}/predict", json={"points": points, "labels": labels})
    assert response.status_code == 200, response.text
    assert "decode;dur=" in response.headers["server-timing"]
    body = response.json()
    masks, scores, _ = reference.predict(np.array(points), np.array(labels), multimask_output=True)
    assert body["format"] == "png" and (body["width"], body["height"]) == (W, H)
    assert len(body["masks"]) == len(body["logits_ids"]) == 3
    got = np.stack([_png_mask(m) for m in body["masks"]])
    np.testing.assert_array_equal(got, masks)
    np.testing.assert_allclose(body["scores"], scores, rtol=1e-6, atol=1e-6)
    assert body["areas"] == [int(m.sum()) for m in masks]
    assert 0 < max(body["areas"]) < W * H  # a real mask, not trivially empty or full


def test_predict_outlined_png_equals_the_predictor(client: TestClient, picture: bytes, reference: SamPredictor) -> None:
    image_id = _upload(client, picture)["id"]
    request = {"points": [[90.0, 70.0]], "labels": [1], "format": "outlined_png"}
    body = client.post(f"/api/images/{image_id}/predict", json=request).json()
    masks, _, _ = reference.predict(np.array(request["points"]), np.array([1]), multimask_output=True)
    assert body["format"] == "outlined_png" and len(body["masks"]) == 3
    for b64, mask in zip(body["masks"], masks, strict=True):
        with Image.open(io.BytesIO(base64.b64decode(b64))) as image:
            indices = np.asarray(image)
        np.testing.assert_array_equal(indices != 0, mask)
        np.testing.assert_array_equal(indices == 2, mask_outline(mask))


def test_predict_rle_box_single_mask(client: TestClient, picture: bytes, reference: SamPredictor) -> None:
    image_id = _upload(client, picture)["id"]
    request = {"box": [20, 10, 140, 100], "points": [[80, 50]], "labels": [1], "multimask": False, "format": "rle"}
    body = client.post(f"/api/images/{image_id}/predict", json=request).json()
    masks, scores, _ = reference.predict(
        np.array([[80.0, 50.0]]), np.array([1]), box=np.array([20.0, 10.0, 140.0, 100.0]), multimask_output=False
    )
    assert body["format"] == "rle" and len(body["masks"]) == 1
    assert body["masks"][0]["size"] == [H, W]
    np.testing.assert_array_equal(decode_rle(body["masks"][0]), masks[0])
    np.testing.assert_allclose(body["scores"], scores, rtol=1e-6, atol=1e-6)


def test_mask_input_id_feeds_back_the_low_res_logits(
    client: TestClient, picture: bytes, reference: SamPredictor
) -> None:
    image_id = _upload(client, picture)["id"]
    first = client.post(f"/api/images/{image_id}/predict", json={"points": [[60, 40]], "labels": [1]}).json()
    _, _, low_res = reference.predict(np.array([[60.0, 40.0]]), np.array([1]))
    best = int(np.argmax(first["scores"]))
    request = {"points": [[60, 40], [120, 90]], "labels": [1, 1], "mask_input_id": first["logits_ids"][best]}
    body = client.post(f"/api/images/{image_id}/predict", json=request).json()
    masks, _, _ = reference.predict(
        np.array([[60.0, 40.0], [120.0, 90.0]]), np.array([1, 1]), mask_input=low_res[best : best + 1]
    )
    np.testing.assert_array_equal(np.stack([_png_mask(m) for m in body["masks"]]), masks)
    # The logits alone are a prompt too.
    only_mask = client.post(f"/api/images/{image_id}/predict", json={"mask_input_id": first["logits_ids"][0]})
    assert only_mask.status_code == 200


def test_openapi_schema_describes_the_api(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/api/health", "/api/images", "/api/images/{image_id}/predict", "/api/images/{image_id}/everything"} <= set(
        schema["paths"]
    )
    predict_props = schema["components"]["schemas"]["PredictRequest"]["properties"]
    assert {"points", "labels", "box", "mask_input_id", "multimask", "format"} <= set(predict_props)
    assert client.get("/").text.lstrip().startswith("<!doctype html>")
    assert client.get("/static/app.js").status_code == 200


# ---------------------------------------------------------------------------- bad input


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny file declaring a huge 1-bit image (the pixel data is a few kB of zeros)."""
    row = b"\x00" * (1 + (width + 7) // 8)
    raw = zlib.compress(row * min(height, 64), 9)  # truncated on purpose: never decoded

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def test_bad_uploads_are_refused_and_the_server_keeps_serving(tiny_model: Sam, picture: bytes) -> None:
    app = create_app(tiny_model, max_upload_bytes=20_000, max_image_pixels=100_000)
    with TestClient(app) as client:
        _assert_error(
            client.post("/api/images", files={"file": ("a.txt", b"hello world", "text/plain")}), 415, "not an image"
        )
        _assert_error(client.post("/api/images", files={"file": ("a.png", b"", "image/png")}), 415, "empty")
        truncated = picture[: len(picture) // 2]
        response = client.post("/api/images", files={"file": ("t.png", truncated, "image/png")})
        assert response.status_code == 415 and "error" in response.json()
        # Over the byte limit (declared Content-Length: refused before the body is read).
        _assert_error(client.post("/api/images", files={"file": ("big.bin", b"\x00" * 200_000)}), 413, "exceeds")
        # Decompression bomb: 30000 x 30000 declared in a ~100-byte file.
        bomb = _bomb_png(30_000, 30_000)
        assert len(bomb) < 2000
        _assert_error(client.post("/api/images", files={"file": ("bomb.png", bomb, "image/png")}), 413, "pixels")
        _assert_error(client.post("/api/images"), 415, "multipart/form-data")  # no body, no content type
        assert client.get("/api/health").json()["cached_images"] == 0
        assert _upload(client, picture)["width"] == W  # still serving


def test_upload_without_content_length_is_cut_at_the_limit(tiny_model: Sam) -> None:
    app = create_app(tiny_model, max_upload_bytes=10_000)
    boundary = "XbOuNdArY"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + b"\x00" * 200_000
        + f"\r\n--{boundary}--\r\n".encode()
    )

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 8192):
            yield body[i : i + 8192]

    with TestClient(app) as client:
        response = client.post(
            "/api/images", content=chunks(), headers={"content-type": f"multipart/form-data; boundary={boundary}"}
        )
        _assert_error(response, 413, "exceeds")
        assert client.get("/api/health").status_code == 200


@pytest.mark.parametrize(
    ("payload", "status", "fragment"),
    [
        ('{"points": [[1, 2]], "labels": [1]', 400, "malformed JSON"),
        ("[1, 2, 3]", 422, "valid dictionary"),
        ('{"points": [[1, 2]], "labels": [1], "colour": "red"}', 422, "colour"),
        ('{"points": [[1]], "labels": [1]}', 422, "points"),
        ('{"points": [[1, 2]], "labels": [1, 0]}', 422, "2 labels for 1 points"),
        ('{"points": [[1, 2]], "labels": [2]}', 422, "labels[0]"),
        ('{"points": [[1, 2]], "labels": ["x"]}', 422, "labels"),
        ('{"points": [[1e400, 2]], "labels": [1]}', 422, "points"),
        ('{"points": [[NaN, 2]], "labels": [1]}', 422, "points"),
        (f'{{"points": [[{W + 1}, 2]], "labels": [1]}}', 422, "outside"),
        ('{"points": [[-0.5, 2]], "labels": [1]}', 422, "outside"),
        (f'{{"points": [[5, {H + 0.5}]], "labels": [1]}}', 422, "outside"),
        ('{"box": [50, 10, 20, 40]}', 422, "box"),
        (f'{{"box": [0, 0, {W + 5}, 40]}}', 422, "box"),
        ('{"box": [0, 0, 1]}', 422, "box"),
        ("{}", 422, "at least one point"),
        ('{"points": [[1, 2]], "labels": [1], "format": "jpeg"}', 422, "format"),
        ('{"mask_input_id": "nope"}', 404, "mask_input_id"),
    ],
)
def test_bad_predict_requests(client: TestClient, picture: bytes, payload: str, status: int, fragment: str) -> None:
    image_id = _upload(client, picture)["id"]
    response = client.post(
        f"/api/images/{image_id}/predict", content=payload, headers={"content-type": "application/json"}
    )
    _assert_error(response, status, fragment)
    ok = client.post(f"/api/images/{image_id}/predict", json={"points": [[W, H]], "labels": [1]})  # corner is inside
    assert ok.status_code == 200


def test_too_many_points(client: TestClient, picture: bytes) -> None:
    image_id = _upload(client, picture)["id"]
    points = [[1.0, 1.0]] * 300
    response = client.post(f"/api/images/{image_id}/predict", json={"points": points, "labels": [1] * 300})
    _assert_error(response, 422, "at most")


def test_unknown_ids(client: TestClient, picture: bytes) -> None:
    _assert_error(
        client.post("/api/images/deadbeef/predict", json={"points": [[1, 1]], "labels": [1]}), 404, "unknown image id"
    )
    _assert_error(client.get("/api/images/deadbeef"), 404, "unknown image id")
    _assert_error(client.post("/api/images/deadbeef/everything", json={}), 404, "unknown image id")
    _assert_error(client.get("/api/nothing-here"), 404, "Not Found")
    first = _upload(client, picture)["id"]
    second = _upload(client, image_bytes(W, H, seed=9))["id"]
    handle = client.post(f"/api/images/{first}/predict", json={"points": [[5, 5]], "labels": [1]}).json()["logits_ids"][
        0
    ]
    response = client.post(
        f"/api/images/{second}/predict", json={"points": [[5, 5]], "labels": [1], "mask_input_id": handle}
    )
    _assert_error(response, 422, "different image")


def test_host_check_refuses_foreign_host_names(tiny_model: Sam) -> None:
    from samkit.server.limits import LOOPBACK_HOSTS

    app = create_app(tiny_model, allowed_hosts=LOOPBACK_HOSTS)
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        assert client.get("/api/health").status_code == 200
        assert client.get("/api/health", headers={"host": "localhost:8000"}).status_code == 200
        assert client.get("/api/health", headers={"host": "[::1]:8000"}).status_code == 200
        _assert_error(client.get("/api/health", headers={"host": "evil.example:8000"}), 400, "Host")
        _assert_error(client.get("/", headers={"host": "127.0.0.1.evil.example"}), 400, "Host")


def test_cache_is_bounded_by_bytes(tiny_model: Sam) -> None:
    pictures = [image_bytes(W, H, seed=s) for s in (20, 21, 22)]
    with TestClient(create_app(tiny_model)) as probe:
        one = _upload(probe, pictures[0])
        per_image = probe.get("/api/health").json()["cache_bytes"]
    assert per_image > W * H * 3  # pixels + embedding + decoder cache
    with TestClient(create_app(tiny_model, cache_bytes=int(per_image * 2.5))) as client:
        ids = [_upload(client, p)["id"] for p in pictures]
        health = client.get("/api/health").json()
        assert health["cached_images"] == 2
        assert health["cache_bytes"] <= health["cache_limit_bytes"]
        _assert_error(
            client.post(f"/api/images/{ids[0]}/predict", json={"points": [[5, 5]], "labels": [1]}), 404, "evicted"
        )
        assert client.post(f"/api/images/{ids[2]}/predict", json={"points": [[5, 5]], "labels": [1]}).status_code == 200
        again = _upload(client, pictures[0])
        assert again["id"] == one["id"] and again["cached"] is False


def test_everything_endpoint(client: TestClient, picture: bytes) -> None:
    image_id = _upload(client, picture)["id"]
    response = client.post(
        f"/api/images/{image_id}/everything",
        json={"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["width"], body["height"]) == (W, H)
    assert body["masks"], "the tiny model finds some mask with the thresholds at 0"
    for record in body["masks"]:
        mask = decode_rle(record["segmentation"])
        assert mask.shape == (H, W)
        assert int(mask.sum()) == record["area"]
        assert len(record["bbox"]) == 4 and len(record["crop_box"]) == 4
        assert set(record) >= {"predicted_iou", "stability_score", "point_coords"}
    _assert_error(
        client.post(f"/api/images/{image_id}/everything", json={"points_per_side": 0}), 422, "points_per_side"
    )
    assert json.loads(client.get("/api/health").text)["status"] == "ok"
