"""The backend against a real Label Studio (the ``label-studio`` package, started here).

Label Studio runs from its own virtual environment (its pinned dependencies conflict with the
test environment's): ``scripts/install_test_deps.sh`` installs it into ``.venv-labelstudio``;
``$SAMKIT_LABEL_STUDIO`` may name another ``label-studio`` executable. The test starts it on
loopback with a temporary data directory (sqlite), creates a project with a brush + keypoint +
rectangle config through its REST API, imports an image task, connects the backend and asks
for interactive predictions the way the labeling editor does. Label Studio's own brush decoder
(``label_studio_sdk.converter.brush``, run in its environment) must give back samkit's mask.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from samkit import SamPredictor, load_image
from samkit.labelstudio.backend import create_backend
from samkit.labelstudio.brush import brush_rle_to_mask
from samkit.modeling import Sam

from server.support import free_port_socket, make_tiny_sam2_model, start_live_server
from .conftest import LABEL_CONFIG, TOKEN

REPO = Path(__file__).resolve().parents[2]
STARTUP_SECONDS = 600  # migrations of a fresh sqlite database take minutes on a busy 2-core machine


def _label_studio_executable() -> Path:
    named = os.environ.get("SAMKIT_LABEL_STUDIO")
    candidates = [Path(named)] if named else [REPO / ".venv-labelstudio" / "bin" / "label-studio"]
    found = shutil.which("label-studio")
    if found and not named:
        candidates.append(Path(found))
    for path in candidates:
        if path.is_file():
            return path
    raise AssertionError("label-studio not found: run scripts/install_test_deps.sh (installs it into .venv-labelstudio)")


class LabelStudio:
    """A running Label Studio and its REST API (legacy token auth)."""

    def __init__(self, url: str, executable: Path) -> None:
        self.url = url
        self.python = executable.parent / "python"

    def call(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None, content_type: str | None = None) -> Any:
        headers = {"Authorization": f"Token {TOKEN}"}
        data = raw
        if body is not None:
            data, content_type = json.dumps(body).encode(), "application/json"
        if content_type:
            headers["Content-Type"] = content_type
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                text = response.read()
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{method} {path}: {exc.code} {exc.read()[:500]!r}") from None
        return json.loads(text) if text else None


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudio]:
    executable = _label_studio_executable()
    data_dir = tmp_path_factory.mktemp("label-studio")
    sock = free_port_socket()
    port = sock.getsockname()[1]
    sock.close()
    env = {
        **os.environ,
        "ML_BLOCK_LOCAL_IP": "false",  # the backend listens on loopback ...
        "SSRF_PROTECTION_ENABLED": "false",  # ... which Label Studio refuses to call by default
        "LATEST_VERSION_CHECK": "false",
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "false",
    }
    log = (data_dir / "label-studio.log").open("wb")
    process = subprocess.Popen(
        [str(executable), "start", "--no-browser", "--data-dir", str(data_dir / "data"), "--internal-host", "127.0.0.1",
         "--port", str(port), "--username", "admin@example.com", "--password", uuid.uuid4().hex,
         "--user-token", TOKEN, "--enable-legacy-api-token"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=data_dir,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            assert process.poll() is None, (data_dir / "label-studio.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            assert time.monotonic() < deadline, "Label Studio did not start in time"
            time.sleep(1)
        yield LabelStudio(url, executable)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _multipart(name: str, filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n"
        f"Content-Type: image/png\r\n\r\n"
    ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def _label_studio_decode(studio: LabelStudio, rle: list[int], height: int, width: int) -> np.ndarray:
    """The mask Label Studio's own brush decoder reads from ``rle`` (run in its environment)."""
    script = (
        "import json, sys; from label_studio_sdk.converter.brush import decode_rle; "
        "rle, h, w = json.load(sys.stdin); "
        "print(json.dumps(decode_rle(rle).reshape(h, w, 4)[:, :, 3].tolist()))"
    )
    done = subprocess.run([str(studio.python), "-c", script], input=json.dumps([rle, height, width]),
                          capture_output=True, text=True, check=True, timeout=120)
    return np.array(json.loads(done.stdout)) > 0


@pytest.mark.parametrize("family", ["sam", "sam2.1"])
def test_interactive_click_and_box_give_samkit_masks(family: str, label_studio: LabelStudio, tiny_model: Sam, picture: bytes) -> None:
    """One Label Studio start, one project per model family (a tiny SAM, a tiny SAM 2.1: ``--model sam2.1_hiera_*``)."""
    model = tiny_model if family == "sam" else make_tiny_sam2_model(2)
    studio = label_studio
    project = studio.call("POST", "/api/projects", {"title": f"samkit test {family}", "label_config": LABEL_CONFIG})
    body, content_type = _multipart("file", "pic.png", picture)
    studio.call("POST", f"/api/projects/{project['id']}/import", raw=body, content_type=content_type)
    tasks = studio.call("GET", f"/api/tasks?project={project['id']}")
    tasks = tasks["tasks"] if isinstance(tasks, dict) else tasks
    assert len(tasks) == 1
    task = tasks[0]
    assert task["data"]["image"].startswith("/data/upload/")

    backend = start_live_server(create_backend(model, label_studio_url=studio.url, api_key=TOKEN, cache_images=2))
    try:
        ml = studio.call("POST", "/api/ml", {"url": backend.url, "project": project["id"], "title": "samkit", "is_interactive": True})
        image = load_image(picture)
        height, width = image.shape[:2]
        predictor = SamPredictor(model)
        predictor.set_image(image)

        def region(kind: str, value: dict[str, Any], **extra: Any) -> dict[str, Any]:
            return {"id": uuid.uuid4().hex[:10], "type": kind, "from_name": "tag2" if kind == "keypointlabels" else "tag3",
                    "to_name": "image", "original_width": width, "original_height": height, "image_rotation": 0,
                    "origin": "manual", "value": value, **extra}

        click = region("keypointlabels", {"x": 40.0, "y": 50.0, "width": 0.5, "keypointlabels": ["dog"]}, is_positive=True)
        answer = studio.call("POST", f"/api/ml/{ml['id']}/interactive-annotating", {"task": task["id"], "context": {"result": [click]}})
        assert "errors" not in answer, answer
        result = answer["data"]["result"][0]
        assert (result["type"], result["from_name"], result["to_name"]) == ("brushlabels", "tag", "image")
        assert result["value"]["brushlabels"] == ["dog"] and result["value"]["format"] == "rle"
        masks, scores, _ = predictor.predict(point_coords=np.array([[0.40 * width, 0.50 * height]]), point_labels=np.array([1]))
        expected = masks[int(np.argmax(scores))]
        assert expected.any()
        assert np.array_equal(brush_rle_to_mask(result["value"]["rle"], height, width), expected)
        assert np.array_equal(_label_studio_decode(studio, result["value"]["rle"], height, width), expected)
        assert result["score"] == pytest.approx(float(scores.max()), abs=1e-6)

        # A second, negative click refines the same object; then a box.
        negative = region("keypointlabels", {"x": 70.0, "y": 20.0, "width": 0.5, "keypointlabels": ["dog"]}, is_positive=False)
        answer = studio.call("POST", f"/api/ml/{ml['id']}/interactive-annotating", {"task": task["id"], "context": {"result": [click, negative]}})
        points = np.array([[0.40 * width, 0.50 * height], [0.70 * width, 0.20 * height]])
        masks, _, _ = predictor.predict(point_coords=points, point_labels=np.array([1, 0]), multimask_output=False)
        assert np.array_equal(brush_rle_to_mask(answer["data"]["result"][0]["value"]["rle"], height, width), masks[0])
        box = region("rectanglelabels", {"x": 10.0, "y": 20.0, "width": 50.0, "height": 40.0, "rotation": 0, "rectanglelabels": ["cat"]})
        answer = studio.call("POST", f"/api/ml/{ml['id']}/interactive-annotating", {"task": task["id"], "context": {"result": [box]}})
        masks, _, _ = predictor.predict(box=np.array([0.1 * width, 0.2 * height, 0.6 * width, 0.6 * height]), multimask_output=False)
        result = answer["data"]["result"][0]
        assert result["value"]["brushlabels"] == ["cat"]
        assert np.array_equal(brush_rle_to_mask(result["value"]["rle"], height, width), masks[0])
    finally:
        backend.stop()
