"""The web app's HTTP API with a SAM 2.1 model: masks and scores equal to the predictor's."""

from __future__ import annotations

import base64
import io

import numpy as np
import torch
from fastapi.testclient import TestClient
from PIL import Image

from samkit import SamPredictor, build_sam
from samkit.build_sam2 import get_sam2_config
from samkit.io import load_image
from samkit.server import create_app

from .support import image_bytes

W, H = 200, 120


def test_sam21_predict_equals_the_predictor() -> None:
    torch.manual_seed(0)
    model = build_sam(get_sam2_config("sam2.1_hiera_t").with_overrides(name="sam2.1_random"))
    picture = image_bytes(W, H, seed=3)
    reference = SamPredictor(model)
    reference.set_image(load_image(picture))
    with TestClient(create_app(model)) as client:
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
