"""Shared pytest fixtures."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest


@dataclass
class HttpFileServer:
    """A loopback HTTP server serving the files under ``root`` at ``url``."""

    root: Path
    url: str
    _server: http.server.ThreadingHTTPServer = field(repr=False)
    _thread: threading.Thread = field(repr=False)
    requests: list[str] = field(default_factory=list)

    def stop(self) -> None:
        """Shut the server down (idempotent); later connections are refused."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=10)
        self._server.server_close()


@pytest.fixture
def http_file_server(tmp_path: Path) -> Iterator[HttpFileServer]:
    """Serve ``tmp_path / "www"`` over HTTP on 127.0.0.1 (random port); no internet needed.

    Write files under ``.root`` and fetch them from ``.url + "/" + name``. ``.requests`` lists
    the paths requested so far; ``.stop()`` shuts the server down early.
    """
    root = tmp_path / "www"
    root.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            requests.append(self.path)

    handler = functools.partial(Handler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="http_file_server", daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    fixture = HttpFileServer(
        root=root, url=f"http://{host}:{port}", _server=server, _thread=thread, requests=requests
    )
    try:
        yield fixture
    finally:
        fixture.stop()
