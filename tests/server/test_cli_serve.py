"""``samkit serve``: options, user errors, and a real server process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

from samkit import build_sam
from samkit.cli import main
from samkit.config import VARIANTS

from .support import free_port_socket


def test_serve_defaults_bind_to_loopback() -> None:
    import argparse

    from samkit.cli import serve

    parser = argparse.ArgumentParser()
    serve.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve"])
    assert (args.host, args.port, args.model, args.dtype) == ("127.0.0.1", 8000, "vit_b", "float32")
    assert args.func is serve.run


def test_port_in_use_is_a_user_error(capsys: pytest.CaptureFixture[str]) -> None:
    busy = free_port_socket()
    busy.listen(1)
    try:
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port), "--model", "vit_t", "--checkpoint", "missing.pth"]) == 2
        assert "cannot listen on 127.0.0.1" in capsys.readouterr().err
    finally:
        busy.close()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve", "--port", "0"], "--port"),
        (["serve", "--cache-mb", "0"], "--cache-mb"),
        (["serve", "--port", "70000"], "--port"),
    ],
)
def test_bad_options(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_missing_checkpoint_is_a_user_error(capsys: pytest.CaptureFixture[str]) -> None:
    probe = free_port_socket()
    port = probe.getsockname()[1]
    probe.close()
    assert main(["serve", "--model", "vit_t", "--checkpoint", "/nonexistent/sam.pth", "--port", str(port)]) == 2
    assert "--checkpoint: no such file" in capsys.readouterr().err


def test_serve_process_end_to_end(tmp_path: Path) -> None:
    torch.manual_seed(0)
    checkpoint = tmp_path / "vit_t_random.pth"
    torch.save(build_sam(VARIANTS["vit_t"].with_overrides(name="vit_t_random")).state_dict(), checkpoint)
    probe = free_port_socket()
    port = probe.getsockname()[1]
    probe.close()
    env = dict(os.environ, SAMKIT_HOME=str(tmp_path / "home"))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "samkit",
            "serve",
            "--model",
            "vit_t",
            "--checkpoint",
            str(checkpoint),
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            try:
                health = httpx.get(f"{url}/api/health", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "samkit serve did not come up"
                time.sleep(0.25)
        assert health.json()["model"] == "vit_t"
        assert "<canvas" in httpx.get(url + "/").text
        rebound = httpx.get(f"{url}/api/health", headers={"host": f"attacker.example:{port}"})
        assert rebound.status_code == 400 and "Host" in rebound.json()["error"]
        # The API itself is tested in-process; here only that the process serves it (no
        # embedding: a 1024x1024 vit_t encode costs seconds on 2 shared cores).
        refused = httpx.post(f"{url}/api/images", files={"file": ("a.txt", b"not an image", "text/plain")})
        assert refused.status_code == 415 and "error" in refused.json()
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}/" in output


@pytest.mark.parametrize(("variant", "family"), [("sam2.1_hiera_t", "sam2"), ("hq_vit_tiny", "hq_sam")])
def test_serve_runs_sam2_and_hq_models(
    variant: str, family: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``samkit serve --model sam2.1_hiera_t`` / ``hq_vit_tiny`` serve that model, checkpoint loaded.

    uvicorn is replaced by a stand-in that keeps the app; no image is embedded here (the page with
    these model classes is tested in test_browser_models.py).
    """
    import uvicorn
    from fastapi.testclient import TestClient

    from samkit.build_sam2 import get_sam2_config
    from samkit.modeling.hq_sam import HQSam
    from samkit.modeling.sam2 import Sam2

    torch.manual_seed(0)
    checkpoint = tmp_path / f"{variant}.pt"
    if family == "sam2":
        model: torch.nn.Module = Sam2(get_sam2_config(variant))
        torch.save({"model": model.state_dict()}, checkpoint)  # Meta's checkpoint layout
    else:
        model = HQSam(VARIANTS[variant])
        torch.save(model.state_dict(), checkpoint)
    served: dict[str, object] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: served.update(app=app, **options))
    probe = free_port_socket()
    port = probe.getsockname()[1]
    probe.close()
    assert main(["serve", "--model", variant, "--checkpoint", str(checkpoint), "--port", str(port)]) == 0
    assert (served["host"], served["port"]) == ("127.0.0.1", port)
    app = served["app"]
    loaded = app.state.service.model  # type: ignore[attr-defined]
    assert type(loaded) is type(model)
    expected = model.state_dict()
    assert all(torch.equal(tensor, expected[name]) for name, tensor in loaded.state_dict().items())
    with TestClient(app, base_url="http://127.0.0.1") as client:  # type: ignore[arg-type]
        health = client.get("/api/health").json()
        assert (health["model"], health["model_family"]) == (variant, family)
        assert 'id="hq-token-only"' in client.get("/").text
