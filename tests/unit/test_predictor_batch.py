"""``SamPredictor.set_image_batch`` / ``predict_batch`` equal one ``set_image`` / ``predict`` per image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import samkit
from samkit.config import VARIANTS


@pytest.fixture(scope="module")
def predictor() -> samkit.SamPredictor:
    torch.manual_seed(0)
    config = VARIANTS["vit_b"].with_overrides(name="vit_b_random")
    small = config.image_encoder.__class__(embed_dim=64, depth=2, num_heads=2, global_attn_indexes=(1,))
    return samkit.SamPredictor(samkit.build_sam(config.with_overrides(image_encoder=small)))


def test_batch_equals_single_images(predictor: samkit.SamPredictor) -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(120, 200, 3), dtype=np.uint8), rng.integers(0, 256, size=(90, 60, 3), dtype=np.uint8)]
    points = [np.array([[50.0, 40.0]]), np.array([[20.0, 70.0], [5.0, 5.0]])]
    labels = [np.array([1]), np.array([1, 0])]
    predictor.set_image_batch(images)
    batch = predictor.predict_batch(points, labels, return_logits=True)
    assert not predictor.is_image_set  # the single-image API stays unset
    for i, image in enumerate(images):
        predictor.set_image(image)
        single = predictor.predict(points[i], labels[i], return_logits=True)
        for a, b in zip((batch[0][i], batch[1][i], batch[2][i]), single):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(b).max())))


def test_batch_errors(predictor: samkit.SamPredictor) -> None:
    predictor.reset_image()
    with pytest.raises(RuntimeError, match="set_image_batch"):
        predictor.predict_batch([np.array([[1.0, 1.0]])], [np.array([1])])
    with pytest.raises(ValueError, match="non-empty list"):
        predictor.set_image_batch([])
    predictor.set_image_batch([np.zeros((10, 10, 3), dtype=np.uint8)])
    with pytest.raises(ValueError, match="point_coords_batch: expected one entry per image"):
        predictor.predict_batch([np.array([[1.0, 1.0]])] * 2, [np.array([1])] * 2)
