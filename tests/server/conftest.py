"""Fixtures for the server tests: a tiny random SAM, a live uvicorn server, headless Chromium."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from samkit.modeling import Sam

from .support import CHROMIUM, CHROMIUM_ARGS, LiveServer, make_tiny_model, start_live_server


@pytest.fixture(scope="session")
def tiny_model() -> Sam:
    """One tiny SAM shared by the server tests (read-only)."""
    return make_tiny_model(0)


@pytest.fixture(scope="module")
def live_server(tiny_model: Sam) -> Iterator[LiveServer]:
    """The app around the tiny model, served on a free loopback port for this module."""
    from samkit.server import create_app

    server = start_live_server(create_app(tiny_model))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """Headless Debian Chromium driven by Playwright (fresh profile)."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} missing: apt-get install chromium"
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            accept_downloads=True,
            viewport={"width": 1280, "height": 800},
        )
        try:
            yield context
        finally:
            context.close()
