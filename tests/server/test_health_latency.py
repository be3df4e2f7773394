"""/api/health keeps answering fast while heavy requests are in flight (a live uvicorn server).

Latencies are compared with the idle latency measured in the same test, so a busy CI machine
does not fail it; a blocked event loop (the old 43 MB JSON body parsed on it for ~8 s) would.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from samkit.modeling import Sam
from samkit.server import create_app

from .support import LiveServer, image_bytes, start_live_server

HEALTH_BUDGET_S = 0.050  # the target on an idle machine


@pytest.fixture(scope="module")
def server(tiny_model: Sam) -> Iterator[LiveServer]:
    live = start_live_server(create_app(tiny_model))
    try:
        yield live
    finally:
        live.stop()


def _health_latencies(client: httpx.Client, url: str, n: int = 10) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        assert client.get(f"{url}/api/health").status_code == 200
        out.append(time.perf_counter() - start)
        time.sleep(0.01)
    return out


def _while_running(work: Callable[[], object], client: httpx.Client, url: str) -> list[float]:
    """Health latencies measured, one every ~10 ms, for as long as ``work`` runs in a thread."""
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    time.sleep(0.05)
    latencies = []
    while thread.is_alive():
        latencies += _health_latencies(client, url, n=1)
    thread.join()
    return latencies


def test_health_stays_fast_while_heavy_requests_run(server: LiveServer) -> None:
    url = server.url
    with httpx.Client(timeout=120) as client:
        idle = statistics.median(_health_latencies(client, url))
        bound = max(HEALTH_BUDGET_S, 3 * idle)

        picture = client.post(f"{url}/api/images", files={"file": ("p.png", image_bytes(400, 300, seed=4), "image/png")})
        image_id = picture.json()["id"]

        def everything() -> None:
            with httpx.Client(timeout=120) as other:
                other.post(f"{url}/api/images/{image_id}/everything", json={"points_per_side": 12})

        def uploads() -> None:
            data = os.urandom(40 * 1024 * 1024)  # the multipart parser reads 40 MB
            with httpx.Client(timeout=120) as other:
                other.post(f"{url}/api/images", files={"file": ("r.png", data, "image/png")})

        for name, work in (("everything", everything), ("40 MB uploads", uploads)):
            latencies = _while_running(work, client, url)
            assert len(latencies) >= 3, f"{name} finished too fast to measure anything; make it heavier"
            assert statistics.median(latencies) <= bound, (name, idle, latencies)
            assert max(latencies) < 1.0, (name, latencies)


def test_oversized_json_is_refused_while_it_streams(server: LiveServer) -> None:
    """A 30 MB JSON body (120k points) gets 413 at once instead of being parsed on the event loop."""
    url = server.url
    body = json.dumps({"points": [[1.5, 2.5]] * 1_200_000, "labels": [1] * 1_200_000}).encode()
    with httpx.Client(timeout=120) as client:
        image_id = client.post(
            f"{url}/api/images", files={"file": ("p.png", image_bytes(80, 60, seed=5), "image/png")}
        ).json()["id"]

        def chunks() -> Iterator[bytes]:
            for start in range(0, len(body), 1 << 16):
                yield body[start : start + (1 << 16)]

        start = time.perf_counter()
        declared = client.post(
            f"{url}/api/images/{image_id}/predict", content=body, headers={"Content-Type": "application/json"}
        )
        streamed = client.post(
            f"{url}/api/images/{image_id}/predict", content=chunks(), headers={"Content-Type": "application/json"}
        )
        elapsed = time.perf_counter() - start
        assert declared.status_code == 413 and streamed.status_code == 413, (declared.text, streamed.text)
        assert elapsed < 3.0
