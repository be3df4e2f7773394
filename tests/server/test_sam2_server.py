"""The web app's HTTP API with a SAM 2.1 model: masks and scores equal to the predictor's.

The model is SAM 2.1 in small (tiny random weights, 256-pixel inputs): the server's SAM 2 path is
the same for every size, and a full hiera_t costs ~10 s per embedding on 2 cores. What
``samkit serve --model sam2.1_hiera_t`` builds is checked in test_cli_serve.py.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from samkit import SamPredictor
from samkit.io import load_image
from samkit.server import create_app

from .support import image_bytes, make_tiny_sam2_model

W, H = 200, 120


def test_sam21_predict_equals_the_predictor() -> None:
    model = make_tiny_sam2_model(0)
    picture = image_bytes(W, H, seed=3)
    reference = SamPredictor(model)
    reference.set_image(load_image(picture))
    with TestClient(create_app(model)) as client:
        assert client.get("/api/health").json()["model_family"] == "sam2"
        upload = client.post("/api/images", files={"file": ("a.png", picture, "image/png")})
        assert upload.status_code == 200, upload.text
        points, labels = [[50.5, 60.0], [150.0, 30.0]], [1, 0]
        response = client.post(f"/api/images/{upload.json()['id']}/predict", json={"points": points, "labels": labels})
        assert response.status_code == 200, response.text
        body = response.json()
    masks, scores, _ = reference.predict(np.array(points), np.array(labels), multimask_output=True)
    assert len(body["masks"]) == 3
    for encoded, mask in zip(body["masks"], masks):
        with Image.open(io.BytesIO(base64.b64decode(encoded))) as image:
            np.testing.assert_array_equal(np.asarray(image).astype(bool), mask)
    np.testing.assert_allclose(body["scores"], scores, rtol=1e-6, atol=1e-6)


def test_sam21_everything_equals_the_generator() -> None:
    from samkit.everything import SamAutomaticMaskGenerator

    model = make_tiny_sam2_model(0)
    picture = image_bytes(W, H, seed=5)
    options = {"points_per_side": 6, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    expected = SamAutomaticMaskGenerator(model, output_mode="coco_rle", **options).generate(load_image(picture))
    with TestClient(create_app(model)) as client:
        upload = client.post("/api/images", files={"file": ("a.png", picture, "image/png")})
        response = client.post(f"/api/images/{upload.json()['id']}/everything", json=options)
        assert response.status_code == 200, response.text
        masks = response.json()["masks"]
    assert len(masks) == len(expected) > 0
    for got, want in zip(masks, expected):
        assert got["segmentation"]["counts"] == want["segmentation"]["counts"]
        assert got["predicted_iou"] == pytest.approx(float(want["predicted_iou"]), rel=1e-6)
