"""The server's memory is bounded by its limits: the cache counts every tensor it holds, and RSS stays flat."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from samkit import SamPredictor
from samkit.memory import tensor_nbytes
from samkit.modeling import Sam
from samkit.modeling.decoder_cache import ImageSideCache

PROBE = Path(__file__).resolve().parent / "rss_probe.py"


def test_tensor_nbytes_counts_nested_lists_and_each_storage_once() -> None:
    a = torch.zeros(10, dtype=torch.float32)  # 40 bytes
    b = torch.zeros(4, 4, dtype=torch.float64)  # 128 bytes
    assert tensor_nbytes({"x": [a, (b, a[2:])], "y": 3}) == 40 + 128  # a view is not counted twice
    assert tensor_nbytes(None) == 0


def test_predictor_nbytes_counts_the_per_layer_projections(tiny_model: Sam) -> None:
    predictor = SamPredictor(tiny_model)
    assert predictor.nbytes() == 0
    predictor.set_image(np.zeros((40, 60, 3), dtype=np.uint8))
    cache = predictor._cache
    assert isinstance(cache, ImageSideCache)
    listed = [t for f in dataclasses.fields(cache) if isinstance(getattr(cache, f.name), list) for t in getattr(cache, f.name)]
    assert listed, "the cache holds per-layer lists"
    list_bytes = sum(t.untyped_storage().nbytes() for t in listed)
    plain = sum(
        getattr(cache, f.name).untyped_storage().nbytes()
        for f in dataclasses.fields(cache)
        if isinstance(getattr(cache, f.name), torch.Tensor)
    )
    features = predictor.features
    assert features is not None
    assert cache.nbytes() == plain + list_bytes
    assert predictor.nbytes() == features.untyped_storage().nbytes() + plain + list_bytes


def test_rss_stays_bounded_while_many_images_are_uploaded() -> None:
    """30 distinct 1600x1000 uploads (~5 MB each in the cache) into a 16 MB cache.

    Unbounded, the cache alone would grow by ~135 MB after the warm-up; the documented bound
    is the cache and logits limits plus one image's work in flight.
    """
    count, width, height, cache_mb = 30, 1600, 1000, 16
    result = subprocess.run(
        [sys.executable, str(PROBE), str(count), str(width), str(height), str(cache_mb)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["cached_images"] < count  # evicted
    assert figures["cache_bytes"] <= (cache_mb << 20) + figures["entry_bytes"]
    growth = figures["rss_end"] - figures["rss_after_warmup"]
    one_image_in_flight = 3 * width * height * 4  # decoded pixels, resized copy, float input
    assert growth < (cache_mb << 20) + (4 << 20) + one_image_in_flight + (16 << 20), figures
