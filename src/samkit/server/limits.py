"""ASGI middleware guarding the app: request body size and the Host header.

:class:`BodySizeLimit`: a declared ``Content-Length`` over the limit is answered with 413
before any byte of the body is read; a body without one (chunked) is counted as it streams
in and the request fails with 413 as soon as it passes the limit.

:class:`HostCheck`: a server bound to loopback answers only requests addressed to a loopback
name, so a web page on another site cannot reach it through DNS rebinding.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodySizeLimit", "HostCheck", "LOOPBACK_HOSTS"]

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class BodySizeLimit:
    """Refuse request bodies larger than ``max_body_bytes`` with 413 and a JSON error.

    Args:
        app: The wrapped ASGI app.
        max_body_bytes: Largest body accepted, in bytes.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = int(max_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > limit:
                    await _send_413(send, f"request body of {declared} bytes exceeds the limit of {limit} bytes")
                    return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # FastAPI lets an HTTPException raised while reading the body through unchanged.
                    raise HTTPException(413, f"request body exceeds the limit of {limit} bytes")
            return message

        await self.app(scope, limited_receive, send)


class HostCheck:
    """Answer 400 unless the request's Host header (without port) is one of ``allowed_hosts``.

    Args:
        app: The wrapped ASGI app.
        allowed_hosts: Host names or IP literals (IPv6 without brackets).
    """

    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str]) -> None:
        self.app = app
        self.allowed = {h.lower().strip("[]") for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            host = ""
            for name, value in scope.get("headers", ()):
                if name == b"host":
                    host = value.decode("latin-1").lower()
                    break
            if host.startswith("["):  # [::1]:8000
                host = host[1 : host.find("]")] if "]" in host else host
            else:
                host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
            if host not in self.allowed:
                await _send_json(
                    send, 400, f"unexpected Host header {host!r}: this server answers {sorted(self.allowed)}"
                )
                return
        await self.app(scope, receive, send)


async def _send_413(send: Send, error: str) -> None:
    await _send_json(send, 413, error, close=True)


async def _send_json(send: Send, status: int, error: str, *, close: bool = False) -> None:
    body = json.dumps({"error": error}).encode()
    headers: list[tuple[bytes, Any]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
