"""Run by test_memory_bound.py in a fresh process: upload many images, print RSS figures as JSON.

A fresh process, so allocator settings other tests changed (``keep_freed_memory``) and their
leftovers do not blur the figures.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server.support import make_tiny_model  # noqa: E402

from samkit.server import create_app  # noqa: E402


def rss_bytes() -> int:
    """Resident set size of this process (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def picture(seed: int, width: int, height: int) -> bytes:
    """A distinct PNG per seed (so every upload is a new cache entry)."""
    import io

    rng = np.random.default_rng(seed)
    pixels = np.full((height, width, 3), seed % 256, dtype=np.uint8)
    pixels[: height // 2, : width // 3] = rng.integers(0, 255, size=3, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def main() -> None:
    count, width, height, cache_mb = (int(v) for v in sys.argv[1:5])
    app = create_app(make_tiny_model(0), cache_bytes=cache_mb << 20, logits_cache_bytes=4 << 20)
    service = app.state.service
    figures: dict[str, object] = {}
    with TestClient(app) as client:
        for i in range(count):
            data = picture(i, width, height)
            response = client.post("/api/images", files={"file": ("p.png", data, "image/png")})
            assert response.status_code == 200, response.text
            image_id = response.json()["id"]
            predicted = client.post(f"/api/images/{image_id}/predict", json={"points": [[5, 5]], "labels": [1]})
            assert predicted.status_code == 200, predicted.text
            if i == 2:
                figures["rss_after_warmup"] = rss_bytes()
        figures.update(
            rss_end=rss_bytes(),
            cached_images=len(service.images),
            cache_bytes=service.images.nbytes,
            entry_bytes=service.images.nbytes // max(1, len(service.images)),
        )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
