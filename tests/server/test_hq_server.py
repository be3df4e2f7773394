"""The web app's HTTP API with an HQ-SAM model: one mask per prompt, equal to the predictor's,
with and without ``hq_token_only``."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from samkit import SamPredictor, build_sam
from samkit.config import HQSamConfig
from samkit.io import load_image
from samkit.server import create_app

from .support import TINY_CONFIG, image_bytes

W, H = 200, 120


def test_hq_predict_equals_the_predictor() -> None:
    torch.manual_seed(0)
    config = HQSamConfig(
        name="tiny_hq",
        image_encoder=TINY_CONFIG.image_encoder,
        prompt_encoder=TINY_CONFIG.prompt_encoder,
        mask_decoder=TINY_CONFIG.mask_decoder,
    )
    model = build_sam(config)
    picture = image_bytes(W, H, seed=3)
    reference = SamPredictor(model)
    reference.set_image(load_image(picture))
    points, labels = [[50.5, 60.0], [150.0, 30.0]], [1, 0]
    got: dict[bool, np.ndarray] = {}
    with TestClient(create_app(model)) as client:
        assert client.get("/api/health").json()["model_family"] == "hq_sam"
        upload = client.post("/api/images", files={"file": ("a.png", picture, "image/png")})
        assert upload.status_code == 200, upload.text
        url = f"/api/images/{upload.json()['id']}/predict"
        for hq_token_only in (False, True):
            body_json = {"points": points, "labels": labels, "hq_token_only": hq_token_only}
            response = client.post(url, json=body_json)
            assert response.status_code == 200, response.text
            body = response.json()
            masks, scores, _ = reference.predict(
                np.array(points), np.array(labels), multimask_output=True, hq_token_only=hq_token_only
            )
            assert len(body["masks"]) == len(body["logits_ids"]) == 1  # HQ-SAM: one mask per prompt
            with Image.open(io.BytesIO(base64.b64decode(body["masks"][0]))) as image:
                got[hq_token_only] = np.asarray(image).astype(bool)
            np.testing.assert_array_equal(got[hq_token_only], masks[0])
            np.testing.assert_allclose(body["scores"], scores, rtol=1e-6, atol=1e-6)
        # The option reaches the model: the HQ token's mask alone is another mask.
        assert not np.array_equal(got[False], got[True])
        bad = client.post(url, json={"points": points, "labels": labels, "hq_token_only": "sometimes"})
        assert bad.status_code == 422 and "hq_token_only" in bad.json()["error"]


@pytest.mark.parametrize("value", [None, 1.5])
def test_hq_token_only_must_be_a_boolean(value: object) -> None:
    from pydantic import ValidationError

    from samkit.server.schemas import PredictRequest

    with pytest.raises(ValidationError, match="hq_token_only"):
        PredictRequest.model_validate({"points": [[1, 2]], "labels": [1], "hq_token_only": value})


def test_hq_everything_equals_the_generator() -> None:
    from samkit.everything import SamAutomaticMaskGenerator

    from .support import make_tiny_hq_model

    model = make_tiny_hq_model(0)
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
