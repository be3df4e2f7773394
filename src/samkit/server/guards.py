"""ASGI middleware that decides whether a request may reach the app at all.

:class:`RequestGuard` applies, in this order, before the app reads a byte of the body:

1. **Access token** (when the app has one): every ``/api/`` call, the page and the API docs
   need it, as ``Authorization: Bearer TOKEN``, an ``X-Samkit-Token: TOKEN`` header, or the
   ``samkit_token`` cookie. Opening ``/?token=TOKEN`` (the URL ``samkit serve`` prints) sets
   that cookie (HttpOnly, SameSite=Strict) and redirects to ``/``, so the page's own requests
   carry it and the token leaves the address bar. Static files (the page's script and style)
   need no token; they hold nothing private. Wrong or missing: 401.
2. **Cross-origin requests** to state-changing methods (POST, PUT, PATCH, DELETE) are refused
   with 403: a ``Sec-Fetch-Site`` other than ``same-origin`` / ``none``, or an ``Origin`` other
   than the app's own (``scheme://Host``). Browsers send these headers on every cross-site
   POST, so a web page the user visits cannot make the server do work (CSRF), whatever
   content type it picks.
3. **Content types**: the upload takes ``multipart/form-data`` only; the other state-changing
   API calls take ``application/json`` only (a form or ``text/plain`` body, which browsers
   send cross-site without a preflight, is refused with 415).
4. **JSON body size**: requests other than the upload may carry at most ``max_json_bytes``
   (the largest valid request, 256 points with long numbers, is ~15 KB). A declared
   ``Content-Length`` over it is refused at once; a chunked body is counted as it arrives and
   refused as soon as it passes the limit, so a huge body is never buffered or parsed. The
   upload's own limit is :class:`samkit.server.limits.BodySizeLimit`'s.
5. **Uploads at once**: at most ``max_concurrent_uploads`` uploads are received at the same
   time; one more is answered 503 before its body is read, so uploads in flight hold at most
   that many times the upload limit in memory.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import Sequence
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "RequestGuard",
    "TOKEN_COOKIE",
    "TOKEN_HEADER",
    "DEFAULT_MAX_JSON_BYTES",
    "DEFAULT_MAX_CONCURRENT_UPLOADS",
    "new_token",
]

TOKEN_COOKIE = "samkit_token"
TOKEN_HEADER = "x-samkit-token"
DEFAULT_MAX_JSON_BYTES = 64 * 1024
DEFAULT_MAX_CONCURRENT_UPLOADS = 8
_UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_SAME_SITE_VALUES = frozenset({"same-origin", "none"})
_PUBLIC_PREFIXES = ("/static/",)
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9._~-]{8,}")


def new_token() -> str:
    """A fresh random access token (32 URL-safe characters, 192 bits)."""
    return secrets.token_urlsafe(24)


def _headers(scope: Scope) -> dict[str, str]:
    """Request headers, lower-cased names; the last one wins for repeated names."""
    return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope.get("headers", ())}


class RequestGuard:
    """Token, same-origin, content-type and JSON-size checks in front of the app.

    Args:
        app: The wrapped ASGI app.
        token: The access token, or None for none (loopback use).
        max_json_bytes: Largest body of a request other than the upload.
        upload_paths: Paths that take a multipart upload (their body limit is checked elsewhere).
        max_concurrent_uploads: Uploads received at the same time; more get 503.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str | None,
        max_json_bytes: int = DEFAULT_MAX_JSON_BYTES,
        upload_paths: Sequence[str] = ("/api/images",),
        max_concurrent_uploads: int = DEFAULT_MAX_CONCURRENT_UPLOADS,
    ) -> None:
        if token is not None and not _TOKEN_SHAPE.fullmatch(token):
            raise ValueError("token: use at least 8 characters from A-Z a-z 0-9 . _ ~ -")
        if max_json_bytes < 1:
            raise ValueError(f"max_json_bytes must be >= 1, got {max_json_bytes}")
        self.app = app
        self.token = token
        self.max_json_bytes = int(max_json_bytes)
        self.upload_paths = frozenset(upload_paths)
        if max_concurrent_uploads < 1:
            raise ValueError(f"max_concurrent_uploads must be >= 1, got {max_concurrent_uploads}")
        self.max_concurrent_uploads = int(max_concurrent_uploads)
        self._uploads_in_flight = 0  # only touched on the event loop

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        method: str = scope.get("method", "GET").upper()
        headers = _headers(scope)

        if self.token is not None and not path.startswith(_PUBLIC_PREFIXES):
            query_token = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [None])[0]
            if path == "/" and method == "GET" and query_token is not None and self._matches(query_token):
                await _redirect_with_cookie(send, query_token)
                return
            if not self._authorized(headers):
                await _send_json(
                    send,
                    401,
                    "missing or wrong access token: open the URL that samkit serve printed (it ends in ?token=...), "
                    "or send the header 'Authorization: Bearer TOKEN'",
                    extra=[(b"www-authenticate", b'Bearer realm="samkit"')],
                )
                return

        upload = path in self.upload_paths
        if method in _UNSAFE_METHODS:
            refusal = self._cross_origin_refusal(scope, headers)
            if refusal is not None:
                await _send_json(send, 403, refusal)
                return
            if path.startswith("/api/"):
                media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
                wanted = "multipart/form-data" if upload else "application/json"
                if media_type != wanted:
                    shown = media_type or "none"
                    await _send_json(send, 415, f"{method} {path} takes Content-Type {wanted}, got {shown}")
                    return

        if upload:
            if method in _UNSAFE_METHODS:
                if self._uploads_in_flight >= self.max_concurrent_uploads:
                    await _send_json(
                        send,
                        503,
                        f"{self._uploads_in_flight} uploads are being received; try again shortly",
                        close=True,
                        extra=[(b"retry-after", b"1")],
                    )
                    return
                self._uploads_in_flight += 1
                try:
                    await self.app(scope, receive, send)
                finally:
                    self._uploads_in_flight -= 1
                return
            await self.app(scope, receive, send)
            return
        limit = self.max_json_bytes
        declared = headers.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                size = -1
            if size > limit:
                await _discard_body(receive)
                await _send_json(
                    send, 413, f"request body of {size} bytes exceeds the limit of {limit} bytes", close=True
                )
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    if message.get("more_body", False):
                        await _discard_body(receive)
                    # FastAPI lets an HTTPException raised while reading the body through unchanged.
                    raise HTTPException(413, f"request body exceeds the limit of {limit} bytes")
            return message

        await self.app(scope, limited_receive, send)

    def _matches(self, candidate: str) -> bool:
        assert self.token is not None
        return secrets.compare_digest(candidate.encode("utf-8", "replace"), self.token.encode("utf-8"))

    def _authorized(self, headers: dict[str, str]) -> bool:
        authorization = headers.get("authorization", "")
        if authorization[:7].lower() == "bearer " and self._matches(authorization[7:].strip()):
            return True
        if TOKEN_HEADER in headers and self._matches(headers[TOKEN_HEADER].strip()):
            return True
        cookie_header = headers.get("cookie")
        if cookie_header:
            cookies: SimpleCookie = SimpleCookie()
            try:
                cookies.load(cookie_header)
            except Exception:  # noqa: BLE001 - a malformed Cookie header is just "no token"
                return False
            morsel = cookies.get(TOKEN_COOKIE)
            if morsel is not None and self._matches(morsel.value):
                return True
        return False

    @staticmethod
    def _cross_origin_refusal(scope: Scope, headers: dict[str, str]) -> str | None:
        site = headers.get("sec-fetch-site")
        if site is not None and site.lower() not in _SAME_SITE_VALUES:
            return f"cross-site request refused (Sec-Fetch-Site: {site}); use the samkit page itself"
        origin = headers.get("origin")
        if origin is None:
            return None  # not a browser's cross-origin request (curl, Python clients, same-origin GET-born forms)
        scheme = scope.get("scheme", "http")
        own = f"{scheme}://{headers.get('host', '')}".lower()
        if origin.lower().rstrip("/") != own:
            return f"cross-origin request from {origin} refused; this server answers {own} only"
        return None


# How much of a refused body is read and thrown away before the error response goes out.
DISCARD_BYTES = 64 * 1024 * 1024
DISCARD_SECONDS = 2.0


async def _discard_body(receive: Receive) -> None:
    """Read and drop the rest of a refused request body, within a byte and a time budget.

    A client still sending its body when the server answers and closes gets a connection reset,
    which can destroy the answer in flight (seen with httpx and a 30 MB body): it then sees
    "peer closed connection" instead of 413. Reading the rest first lets the answer arrive.
    Nothing is buffered or parsed, and each read yields to the event loop; a body beyond the
    budget (or a client that stalls) is cut off with the connection, as before.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DISCARD_SECONDS
    discarded = 0
    while discarded < DISCARD_BYTES:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return
        try:
            message = await asyncio.wait_for(receive(), timeout=remaining)
        except asyncio.TimeoutError:
            return
        if message["type"] != "http.request":
            return
        discarded += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


async def _redirect_with_cookie(send: Send, token: str) -> None:
    cookie = f"{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
    await send(
        {
            "type": "http.response.start",
            "status": 303,
            "headers": [(b"location", b"/"), (b"set-cookie", cookie.encode()), (b"content-length", b"0")],
        }
    )
    await send({"type": "http.response.body", "body": b""})


async def _send_json(
    send: Send, status: int, error: str, *, close: bool = False, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps({"error": error}).encode()
    headers: list[tuple[bytes, Any]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
