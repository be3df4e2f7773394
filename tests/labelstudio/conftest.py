"""A tiny random SAM, a picture, and a stand-in for Label Studio's file server (token checked)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from samkit.modeling import Sam

from server.support import image_bytes, make_tiny_model

TOKEN = "0123456789abcdef0123456789abcdef01234567"
LABEL_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="tag" toName="image">
    <Label value="cat" background="#FF0000"/>
    <Label value="dog" background="#0000FF"/>
  </BrushLabels>
  <KeyPointLabels name="tag2" toName="image" smart="true">
    <Label value="cat" smart="true" background="#FF0000" showInline="true"/>
    <Label value="dog" smart="true" background="#0000FF" showInline="true"/>
  </KeyPointLabels>
  <RectangleLabels name="tag3" toName="image" smart="true">
    <Label value="cat" background="#FF0000" showInline="true"/>
    <Label value="dog" background="#0000FF" showInline="true"/>
  </RectangleLabels>
</View>"""


@pytest.fixture(scope="session")
def tiny_model() -> Sam:
    """The server tests' tiny random SAM."""
    return make_tiny_model(0)


@pytest.fixture(scope="session")
def picture() -> bytes:
    """A 160x120 PNG with flat shapes."""
    return image_bytes(160, 120, seed=3)


@dataclass
class FakeLabelStudio:
    """Serves ``/data/upload/1/pic.png`` to requests that carry the token; records the paths asked for."""

    url: str
    requests: list[tuple[str, str | None]]


@pytest.fixture
def fake_label_studio(picture: bytes) -> Iterator[FakeLabelStudio]:
    requests: list[tuple[str, str | None]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            requests.append((self.path, self.headers.get("Authorization")))
            if self.headers.get("Authorization") != f"Token {TOKEN}":
                self.send_error(401)
            elif self.path == "/data/upload/1/pic.png":
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(picture)))
                self.end_headers()
                self.wfile.write(picture)
            elif self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "http://example.com/pic.png")
                self.end_headers()
            else:
                self.send_error(404)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield FakeLabelStudio(f"http://127.0.0.1:{server.server_address[1]}", requests)
    finally:
        server.shutdown()
        server.server_close()
