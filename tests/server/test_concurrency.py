"""A live uvicorn server on loopback: embeddings do not block, concurrent clients, load."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import statistics
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from samkit import SamPredictor
from samkit.io import load_image
from samkit.server import create_app

from .support import image_bytes, make_tiny_model, start_live_server

W, H = 160, 120


def _mask(b64: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(b64))) as image:
        return np.asarray(image).astype(bool)


def _upload(client: httpx.Client, data: bytes) -> dict:
    response = client.post("/api/images", files={"file": ("x.png", data, "image/png")})
    assert response.status_code == 200, response.text
    return response.json()


def test_health_and_predicts_answer_while_an_embedding_runs() -> None:
    model = make_tiny_model(1)
    original = model.image_encoder.forward
    gate = threading.Event()
    entered = threading.Event()

    def slow_forward(x: torch.Tensor) -> torch.Tensor:
        if gate.is_set():  # only the second upload is slow
            entered.set()
            time.sleep(3.0)  # a long embedding; sleep releases the GIL like torch kernels do
        return original(x)

    model.image_encoder.forward = slow_forward  # type: ignore[method-assign]
    server = start_live_server(create_app(model))
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            ready = _upload(client, image_bytes(W, H, seed=1))
            gate.set()
            pool = concurrent.futures.ThreadPoolExecutor(1)
            slow = pool.submit(_upload, httpx.Client(base_url=server.url, timeout=30), image_bytes(W, H, seed=2))
            assert entered.wait(10), "the slow embedding did not start"
            health_times, predict_times = [], []
            for i in range(5):
                t0 = time.perf_counter()
                health = client.get("/api/health")
                health_times.append(time.perf_counter() - t0)
                assert health.status_code == 200 and health.json()["pending_embeddings"] == 1
                t0 = time.perf_counter()
                predict = client.post(
                    f"/api/images/{ready['id']}/predict", json={"points": [[10 + 20 * i, 50]], "labels": [1]}
                )
                predict_times.append(time.perf_counter() - t0)
                assert predict.status_code == 200 and len(predict.json()["masks"]) == 3
            # All answered while the 3 s embedding was still running (not queued behind it).
            assert not slow.done(), "the embedding finished before the checks: the test proved nothing"
            assert max(health_times) < 1.0 and max(predict_times) < 2.0
            assert slow.result(timeout=30)["cached"] is False
            assert client.get("/api/health").json()["pending_embeddings"] == 0
            pool.shutdown()
    finally:
        server.stop()


def test_simultaneous_uploads_of_one_image_share_one_embedding() -> None:
    model = make_tiny_model(2)
    calls = []
    original = model.image_encoder.forward

    def counted(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        time.sleep(0.5)  # keep it in flight while the other uploads arrive
        return original(x)

    model.image_encoder.forward = counted  # type: ignore[method-assign]
    server = start_live_server(create_app(model))
    data = image_bytes(W, H, seed=5)
    try:

        def upload() -> dict:
            with httpx.Client(base_url=server.url, timeout=30) as c:
                return _upload(c, data)

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: upload(), range(4)))
        assert len({r["id"] for r in results}) == 1
        assert sum(not r["cached"] for r in results) == 1
        assert len(calls) == 1
    finally:
        server.stop()


def test_load_8_clients_x_50_predicts(live_server, tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = image_bytes(W, H, seed=11)
    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        image_id = _upload(client, data)["id"]
    reference = SamPredictor(tiny_model)
    reference.set_image(load_image(data))
    prompts = [([[float(8 + 15 * k), float(10 + 9 * k)]], [1]) for k in range(10)]
    expected = [reference.predict(np.array(p), np.array(lab))[0] for p, lab in prompts]  # each (3, H, W)
    clients, per_client = 8, 50
    errors: list[str] = []
    latencies: list[float] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        with httpx.Client(base_url=live_server.url, timeout=60) as client:
            for j in range(per_client):
                k = (index + j) % len(prompts)
                points, labels = prompts[k]
                t0 = time.perf_counter()
                response = client.post(f"/api/images/{image_id}/predict", json={"points": points, "labels": labels})
                elapsed = time.perf_counter() - t0
                if response.status_code != 200:
                    with lock:
                        errors.append(f"{response.status_code} {response.text[:200]}")
                    continue
                masks = np.stack([_mask(m) for m in response.json()["masks"]])
                if not np.array_equal(masks, expected[k]):
                    with lock:
                        errors.append(f"client {index} request {j}: wrong masks for prompt {k}")
                with lock:
                    latencies.append(elapsed)

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    wall = time.perf_counter() - started
    assert errors == []
    assert len(latencies) == clients * per_client
    ordered = sorted(latencies)
    p50 = statistics.median(ordered) * 1000
    p95 = ordered[int(0.95 * (len(ordered) - 1))] * 1000
    report = {
        "clients": clients,
        "requests": len(latencies),
        "errors": len(errors),
        "p50_ms": round(p50, 1),
        "p95_ms": round(p95, 1),
        "throughput_rps": round(len(latencies) / wall, 1),
    }
    (tmp_path / "load_test.json").write_text(json.dumps(report))
    print(f"\nserver load test (tiny model, {W}x{H}): {report}")
    with httpx.Client(base_url=live_server.url, timeout=5) as client:
        assert client.get("/api/health").status_code == 200
