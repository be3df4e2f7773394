"""The Label Studio backend's HTTP API: images only from the configured host, with its token;
clear 4xx on bad requests; embeddings cached per image; the brush RLE round trip."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from samkit import SamPredictor, load_image
from samkit.labelstudio.backend import create_backend
from samkit.labelstudio.brush import brush_rle_to_mask, mask_to_brush_rle
from samkit.modeling import Sam

from .conftest import LABEL_CONFIG, TOKEN, FakeLabelStudio


def _request(image: str, context: Any, config: str = LABEL_CONFIG) -> dict[str, Any]:
    return {"tasks": [{"id": 1, "data": {"image": image}}], "label_config": config, "project": "1.0", "params": {"context": context}}


def _click(x: float, y: float, positive: bool = True) -> dict[str, Any]:
    return {"type": "keypointlabels", "from_name": "tag2", "to_name": "image", "is_positive": positive,
            "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": ["cat"]}}


@pytest.fixture
def client(tiny_model: Sam, fake_label_studio: FakeLabelStudio) -> TestClient:
    return TestClient(create_backend(tiny_model, label_studio_url=fake_label_studio.url, api_key=TOKEN, cache_images=1))


def test_health_setup_webhook(client: TestClient) -> None:
    assert client.get("/health").json()["status"] == "UP"
    version = client.post("/setup", json={"project": "1.0", "schema": LABEL_CONFIG}).json()["model_version"]
    assert version.startswith("samkit-")
    refused = client.post("/setup", json={"schema": "<View><Image name='i' value='$i'/></View>"})
    assert refused.status_code == 422 and "BrushLabels" in refused.json()["error"]
    assert client.post("/webhook", json={"action": "ANNOTATION_CREATED"}).json()["status"] == "ok"


def test_click_gives_the_predictor_mask_and_the_embedding_is_cached(
    client: TestClient, tiny_model: Sam, fake_label_studio: FakeLabelStudio, picture: bytes
) -> None:
    answer = client.post("/predict", json=_request("/data/upload/1/pic.png", {"result": [_click(30.0, 60.0)]}))
    assert answer.status_code == 200, answer.text
    region = answer.json()["results"][0]["result"][0]
    predictor = SamPredictor(tiny_model)
    predictor.set_image(load_image(picture))
    masks, scores, _ = predictor.predict(point_coords=np.array([[0.3 * 160, 0.6 * 120]]), point_labels=np.array([1]))
    assert np.array_equal(brush_rle_to_mask(region["value"]["rle"], 120, 160), masks[int(np.argmax(scores))])
    assert region["value"]["brushlabels"] == ["cat"] and region["from_name"] == "tag"
    again = client.post("/predict", json=_request("/data/upload/1/pic.png", {"result": [_click(30.0, 60.0), _click(80.0, 10.0, False)]}))
    assert again.status_code == 200
    assert fake_label_studio.requests == [("/data/upload/1/pic.png", f"Token {TOKEN}")]  # fetched and embedded once
    assert client.get("/health").json()["cached_images"] == 1


@pytest.mark.parametrize(
    "image, context, config, status, message",
    [
        ("http://example.com/pic.png", {"result": [_click(10, 10)]}, LABEL_CONFIG, 422, "not on the configured Label Studio"),
        ("https://127.0.0.1/data/upload/1/pic.png", {"result": [_click(10, 10)]}, LABEL_CONFIG, 422, "not on the configured"),
        ("/redirect", {"result": [_click(10, 10)]}, LABEL_CONFIG, 422, "redirects"),
        ("/data/upload/1/missing.png", {"result": [_click(10, 10)]}, LABEL_CONFIG, 422, "answered 404"),
        ("/data/upload/1/pic.png", {"result": [_click(150, 10)]}, LABEL_CONFIG, 422, "outside"),
        ("/data/upload/1/pic.png", {"result": [{"type": "keypointlabels", "value": {"x": "a", "y": 1}}]}, LABEL_CONFIG, 422, "'x'"),
        ("/data/upload/1/pic.png", {"result": [_click(10, 10)]}, "<View>", 422, "XML"),
    ],
)
def test_bad_requests_get_a_clear_4xx(client: TestClient, image: str, context: Any, config: str, status: int, message: str) -> None:
    answer = client.post("/predict", json=_request(image, context, config))
    assert answer.status_code == status and message in answer.json()["error"], answer.text


def test_malformed_bodies(client: TestClient) -> None:
    assert client.post("/predict", content=b"{not json", headers={"Content-Type": "application/json"}).status_code == 400
    assert client.post("/predict", json={"tasks": []}).status_code == 400
    no_field = {"tasks": [{"data": {"picture": "/x.png"}}], "label_config": LABEL_CONFIG, "params": {"context": {"result": [_click(1, 1)]}}}
    assert "no 'image' field" in client.post("/predict", json=no_field).json()["error"]
    assert client.post("/predict", json=_request("/data/upload/1/pic.png", None)).json() == {"results": []}  # nothing to segment


def test_wrong_token_is_not_accepted_by_label_studio(tiny_model: Sam, fake_label_studio: FakeLabelStudio) -> None:
    client = TestClient(create_backend(tiny_model, label_studio_url=fake_label_studio.url, api_key="wrong"))
    answer = client.post("/predict", json=_request("/data/upload/1/pic.png", {"result": [_click(10, 10)]}))
    assert answer.status_code == 422 and "answered 401" in answer.json()["error"]


@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (300, 500)])
def test_brush_rle_round_trip(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    mask = rng.random(shape) < 0.4
    if shape == (300, 500):  # runs longer than one chunk (65536 values)
        mask[:] = False
        mask[10:290, :] = True
    assert np.array_equal(brush_rle_to_mask(mask_to_brush_rle(mask), *shape), mask)


def test_click_with_an_hq_model_gives_the_hq_predictor_mask(fake_label_studio: FakeLabelStudio, picture: bytes) -> None:
    """HQ-SAM behind the backend (``samkit label-studio --model hq_vit_*``): the HQ predictor's mask comes back."""
    from server.support import make_tiny_hq_model

    model = make_tiny_hq_model(1)
    client = TestClient(create_backend(model, label_studio_url=fake_label_studio.url, api_key=TOKEN, cache_images=1))
    answer = client.post("/predict", json=_request("/data/upload/1/pic.png", {"result": [_click(30.0, 60.0)]}))
    assert answer.status_code == 200, answer.text
    region = answer.json()["results"][0]["result"][0]
    predictor = SamPredictor(model)
    predictor.set_image(load_image(picture))
    masks, scores, _ = predictor.predict(point_coords=np.array([[0.3 * 160, 0.6 * 120]]), point_labels=np.array([1]))
    assert np.array_equal(brush_rle_to_mask(region["value"]["rle"], 120, 160), masks[int(np.argmax(scores))])


def test_sam2_model_gives_the_predictor_masks(fake_label_studio: FakeLabelStudio, picture: bytes) -> None:
    """SAM 2.1 behind the backend (``samkit label-studio --model sam2.1_hiera_*``): a click (best of three),
    a click refined by a negative one and a box give the SAM 2 predictor's masks and scores."""
    from server.support import make_tiny_sam2_model

    model = make_tiny_sam2_model(2)
    client = TestClient(create_backend(model, label_studio_url=fake_label_studio.url, api_key=TOKEN, cache_images=1))
    assert client.post("/setup", json={"project": "1.0", "schema": LABEL_CONFIG}).json()["model_version"] == "samkit-tiny_sam2.1"
    predictor = SamPredictor(model)
    predictor.set_image(load_image(picture))
    box = {"type": "rectanglelabels", "from_name": "tag3", "to_name": "image",
           "value": {"x": 10.0, "y": 20.0, "width": 50.0, "height": 40.0, "rotation": 0, "rectanglelabels": ["dog"]}}
    cases = [
        ([_click(30.0, 60.0)], {"point_coords": np.array([[48.0, 72.0]]), "point_labels": np.array([1])}),
        ([_click(30.0, 60.0), _click(80.0, 10.0, False)],
         {"point_coords": np.array([[48.0, 72.0], [128.0, 12.0]]), "point_labels": np.array([1, 0]), "multimask_output": False}),
        ([box], {"box": np.array([16.0, 24.0, 96.0, 72.0]), "multimask_output": False}),
    ]
    for context, prompt in cases:
        answer = client.post("/predict", json=_request("/data/upload/1/pic.png", {"result": context}))
        assert answer.status_code == 200, answer.text
        region = answer.json()["results"][0]["result"][0]
        masks, scores, _ = predictor.predict(**prompt)
        best = int(np.argmax(scores))
        assert 0 < masks[best].sum() < masks[best].size  # a mask with an inside and an outside
        assert np.array_equal(brush_rle_to_mask(region["value"]["rle"], 120, 160), masks[best]), prompt
        assert region["score"] == pytest.approx(float(scores[best]), abs=1e-6)
    assert region["value"]["brushlabels"] == ["dog"]
    assert fake_label_studio.requests == [("/data/upload/1/pic.png", f"Token {TOKEN}")]  # embedded once
