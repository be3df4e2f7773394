"""The request guard: access token, cross-origin refusal, content types, the JSON body limit."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from samkit.cli import main, serve
from samkit.modeling import Sam
from samkit.server import create_app

from .support import image_bytes

TOKEN = "test-token-0123456789"


@pytest.fixture
def open_client(tiny_model: Sam) -> Iterator[TestClient]:
    with TestClient(create_app(tiny_model)) as client:
        yield client


@pytest.fixture
def token_client(tiny_model: Sam) -> Iterator[TestClient]:
    with TestClient(create_app(tiny_model, token=TOKEN)) as client:
        yield client


def _upload(client: TestClient, **kwargs: object) -> str:
    response = client.post("/api/images", files={"file": ("a.png", image_bytes(64, 48), "image/png")}, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()["id"]


# ------------------------------------------------------------------ token


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/api/health"), ("GET", "/"), ("POST", "/api/images"), ("GET", "/openapi.json")]
)
def test_without_the_token_everything_but_static_files_is_401(token_client: TestClient, method: str, path: str) -> None:
    response = token_client.request(method, path)
    assert response.status_code == 401 and "token" in response.json()["error"]
    wrong = token_client.request(method, path, headers={"Authorization": "Bearer wrong-token-xyz"})
    assert wrong.status_code == 401
    assert token_client.get("/static/app.js").status_code == 200


def test_token_by_header_or_cookie(token_client: TestClient) -> None:
    assert token_client.get("/api/health", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert token_client.get("/api/health", headers={"X-Samkit-Token": TOKEN}).status_code == 200
    image_id = _upload(token_client, headers={"Authorization": f"Bearer {TOKEN}"})
    # The printed URL sets an HttpOnly, SameSite=Strict cookie and drops the token from the address.
    opened = token_client.get(f"/?token={TOKEN}", follow_redirects=False)
    assert opened.status_code == 303 and opened.headers["location"] == "/"
    cookie = opened.headers["set-cookie"]
    assert f"samkit_token={TOKEN}" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    token_client.cookies.clear()
    assert token_client.get(f"/?token=wrong-{TOKEN}", follow_redirects=False).status_code == 401
    token_client.cookies.set("samkit_token", TOKEN)
    assert "<canvas" in token_client.get("/").text
    predicted = token_client.post(f"/api/images/{image_id}/predict", json={"points": [[10, 10]], "labels": [1]})
    assert predicted.status_code == 200, predicted.text


def test_bad_tokens_are_refused() -> None:
    from samkit.server.guards import RequestGuard

    with pytest.raises(ValueError, match="8 characters"):
        RequestGuard(None, token="short")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="8 characters"):
        RequestGuard(None, token="has space; x=1")  # type: ignore[arg-type]


def _serve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


def test_serve_token_sources(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(serve.TOKEN_ENV, raising=False)
    assert serve.access_token(_serve_args()) is None  # loopback: no token unless asked for
    generated = serve.access_token(_serve_args("--host", "0.0.0.0"))
    assert generated is not None and len(generated) >= 24
    assert generated != serve.access_token(_serve_args("--host", "0.0.0.0"))
    assert serve.access_token(_serve_args("--token", "given-token-1")) == "given-token-1"
    monkeypatch.setenv(serve.TOKEN_ENV, "from-the-environment")
    assert serve.access_token(_serve_args("--host", "0.0.0.0")) == "from-the-environment"
    assert main(["serve", "--token", "bad token"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--token" in err[0]


# ------------------------------------------------------------------ cross-origin and content types


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "http://testserver:9999"},
    ],
)
def test_cross_origin_state_changes_are_403(open_client: TestClient, headers: dict[str, str]) -> None:
    image_id = _upload(open_client)
    for response in (
        open_client.post(f"/api/images/{image_id}/everything", json={}, headers=headers),
        open_client.post(f"/api/images/{image_id}/predict", json={"points": [[1, 1]], "labels": [1]}, headers=headers),
        open_client.post("/api/images", files={"file": ("b.png", image_bytes(30, 20, seed=5), "image/png")}, headers=headers),
    ):
        assert response.status_code == 403, response.text
        assert "refused" in response.json()["error"]
    assert open_client.get("/api/health").json()["cached_images"] == 1  # the refused upload did nothing


def test_same_origin_requests_pass(open_client: TestClient) -> None:
    same = {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
    image_id = _upload(open_client, headers=same)
    ok = open_client.post(f"/api/images/{image_id}/predict", json={"points": [[5, 5]], "labels": [1]}, headers=same)
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_json_endpoints_need_the_json_content_type(open_client: TestClient, content_type: str | None) -> None:
    image_id = _upload(open_client)
    headers = {"Content-Type": content_type} if content_type else {}
    body = json.dumps({"points": [[1, 1]], "labels": [1]})
    for path in (f"/api/images/{image_id}/predict", f"/api/images/{image_id}/everything"):
        response = open_client.post(path, content=body, headers=headers)
        assert response.status_code == 415, response.text
        assert "application/json" in response.json()["error"]


def test_upload_needs_multipart(open_client: TestClient) -> None:
    response = open_client.post("/api/images", content=image_bytes(30, 20), headers={"Content-Type": "image/png"})
    assert response.status_code == 415 and "multipart/form-data" in response.json()["error"]


# ------------------------------------------------------------------ JSON body size


def test_json_body_over_the_limit_is_413_before_parsing(tiny_model: Sam) -> None:
    with TestClient(create_app(tiny_model, max_json_bytes=4096)) as client:
        image_id = _upload(client)
        points = [[1.0, 1.0]] * 2000
        declared = client.post(f"/api/images/{image_id}/predict", json={"points": points, "labels": [1] * 2000})
        assert declared.status_code == 413 and "4096" in declared.json()["error"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it streams
            yield b'{"points": ['
            for _ in range(100_000):
                yield b"[1.0, 1.0], " * 10
            yield b"[1, 1]], \"labels\": [1]}"

        streamed = client.post(
            f"/api/images/{image_id}/predict", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert streamed.status_code == 413 and "limit of 4096" in streamed.json()["error"]


def test_default_json_limit_fits_the_largest_valid_request(open_client: TestClient) -> None:
    image_id = _upload(open_client)
    points = [[47.123456789012345, 31.987654321098765]] * 256  # MAX_POINTS, written as long as JSON gets
    body = {"points": points, "labels": [1] * 256, "box": [0.5, 0.5, 40.123456789012345, 30.123456789012345]}
    response = open_client.post(f"/api/images/{image_id}/predict", json=body)
    assert response.status_code == 200, response.text


# ------------------------------------------------------------------ uploads at once


def test_uploads_beyond_the_concurrent_limit_are_503_before_reading(tiny_model: Sam) -> None:
    import threading
    import time

    import httpx

    from .support import start_live_server

    server = start_live_server(create_app(tiny_model, max_concurrent_uploads=1))
    boundary = "samkitboundary"
    head = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    data = image_bytes(64, 48, seed=11)
    tail = f"\r\n--{boundary}--\r\n".encode()
    started = threading.Event()
    slow_status: list[int] = []

    def slow_body() -> Iterator[bytes]:
        yield head
        started.set()
        step = max(1, len(data) // 40)  # ~40 pieces, 0.1 s apart: the upload stays in flight ~4 s
        for start in range(0, len(data), step):
            time.sleep(0.1)
            yield data[start : start + step]
        yield tail

    def slow_upload() -> None:
        response = httpx.post(
            f"{server.url}/api/images",
            content=slow_body(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            timeout=60,
        )
        slow_status.append(response.status_code)

    try:
        thread = threading.Thread(target=slow_upload)
        thread.start()
        assert started.wait(10)
        # The client has sent the first upload's head; on a busy machine the server may take a
        # moment to start receiving it, so ask again (while it is in flight) until it holds the slot.
        statuses: list[int] = []
        deadline = time.monotonic() + 3
        while True:
            time.sleep(0.1)
            second = httpx.post(
                f"{server.url}/api/images", files={"file": ("b.png", image_bytes(30, 20, seed=12), "image/png")}, timeout=60
            )
            statuses.append(second.status_code)
            if second.status_code == 503 or time.monotonic() > deadline or not thread.is_alive():
                break
        thread.join(60)
        assert second.status_code == 503 and "being received" in second.json()["error"], (statuses, second.text)
        assert slow_status == [200]
        again = httpx.post(
            f"{server.url}/api/images", files={"file": ("b.png", image_bytes(30, 20, seed=12), "image/png")}, timeout=60
        )
        assert again.status_code == 200, again.text
    finally:
        server.stop()
