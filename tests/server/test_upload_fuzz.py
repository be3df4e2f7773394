"""Corrupt uploads: the server answers 200, 413 or 415 with a reason, never 500."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from image_mutants import FORMATS, mutants, png_with_corrupt_second_idat

from samkit.modeling import Sam
from samkit.server import create_app

UPLOADS_PER_FORMAT = 10  # each accepted upload is embedded by the tiny model; the decoder fuzz is in tests/unit


def test_corrupt_png_chunk_type_is_415_with_the_reason(tiny_model: Sam) -> None:
    with TestClient(create_app(tiny_model)) as client:
        response = client.post("/api/images", files={"file": ("x.png", png_with_corrupt_second_idat(), "image/png")})
    assert response.status_code == 415, response.text
    assert "broken PNG file" in response.json()["error"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_fuzzed_uploads_never_answer_500(tiny_model: Sam, fmt: str) -> None:
    statuses: dict[int, int] = {}
    with TestClient(create_app(tiny_model), raise_server_exceptions=False) as client:
        for i, data in enumerate(mutants(fmt, UPLOADS_PER_FORMAT, seed=23)):
            response = client.post("/api/images", files={"file": ("f", data, "application/octet-stream")})
            assert response.status_code in (200, 413, 415), f"{fmt} mutant {i}: {response.status_code} {response.text}"
            assert response.json().get("error") or response.status_code == 200
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
    assert statuses.get(415, 0) > 0, statuses
