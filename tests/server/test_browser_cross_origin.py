"""A web page on another origin (a second local server, another port) cannot make samkit work.

Headless Chromium opens the attacker's page, which fires what any site could: a no-cors
``text/plain`` POST to segment-everything, a no-cors multipart upload, a form post, and a
CORS JSON predict. None may reach the service; the page's own origin still works.
"""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from samkit.modeling import Sam
from samkit.server import create_app

from .support import LiveServer, image_bytes, start_live_server

ATTACK_PAGE = """<!doctype html><html><body>
<form id="f" method="POST" enctype="text/plain" target="sink" action="{api}/images/{image_id}/everything">
  <input name='{{"points_per_side": 2, "x":"' value='"}}'>
</form>
<iframe name="sink"></iframe>
<script>
window.attack = async () => {{
  const results = [];
  const attempt = async (name, promise) => {{
    try {{ const r = await promise; results.push(name + ":" + r.type + ":" + r.status); }}
    catch (e) {{ results.push(name + ":error"); }}
  }};
  await attempt("everything-text", fetch("{api}/images/{image_id}/everything",
      {{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}}, body: '{{"points_per_side": 2}}'}}));
  const form = new FormData();
  form.append("file", new Blob([new Uint8Array({png})], {{type: "image/png"}}), "x.png");
  await attempt("upload", fetch("{api}/images", {{method: "POST", mode: "no-cors", body: form}}));
  await attempt("predict-json", fetch("{api}/images/{image_id}/predict",
      {{method: "POST", headers: {{"Content-Type": "application/json"}}, body: '{{"points": [[5, 5]], "labels": [1]}}'}}));
  document.getElementById("f").submit();
  await new Promise((resolve) => setTimeout(resolve, 1500));
  return results;
}};
</script></body></html>"""


@pytest.fixture(scope="module")
def target(tiny_model: Sam) -> Iterator[tuple[LiveServer, list[str]]]:
    """The samkit app, with every call into the service's work methods recorded."""
    app = create_app(tiny_model)
    service = app.state.service
    calls: list[str] = []
    for name in ("add_image", "predict", "everything"):
        real = getattr(service, name)

        def recording(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            calls.append(_name)
            return _real(*args, **kwargs)

        setattr(service, name, recording)
    server = start_live_server(app)
    try:
        yield server, calls
    finally:
        server.stop()


@pytest.fixture(scope="module")
def attacker_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A plain HTTP server on another loopback port: (its URL, its folder)."""
    root = tmp_path_factory.mktemp("attacker")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def test_another_origin_cannot_trigger_work(browser: Any, target: tuple[LiveServer, list[str]], attacker_site: tuple[str, Path]) -> None:
    server, calls = target
    uploaded = httpx.post(f"{server.url}/api/images", files={"file": ("a.png", image_bytes(60, 40, seed=1), "image/png")})
    assert uploaded.status_code == 200, uploaded.text
    image_id = uploaded.json()["id"]
    calls.clear()
    site, root = attacker_site
    png = list(image_bytes(50, 30, seed=2))
    (root / "index.html").write_text(ATTACK_PAGE.format(api=f"{server.url}/api", image_id=image_id, png=png))
    page = browser.new_page()
    try:
        page.goto(f"{site}/index.html")
        results = page.evaluate("window.attack()")
    finally:
        page.close()
    assert len(results) == 3, results
    assert results[2] == "predict-json:error", results  # CORS: the preflight is not answered with a grant
    assert calls == [], f"the service did work for another origin: {calls} ({results})"
    health = httpx.get(f"{server.url}/api/health").json()
    assert health["cached_images"] == 1

    # The samkit page's own origin is served as before.
    page = browser.new_page()
    try:
        page.goto(server.url + "/")
        status = page.evaluate(
            """async (id) => (await fetch(`/api/images/${id}/predict`, {method: "POST",
                headers: {"Content-Type": "application/json"},
                body: JSON.stringify({points: [[5, 5]], labels: [1]})})).status""",
            image_id,
        )
    finally:
        page.close()
    assert status == 200 and calls == ["predict"]
