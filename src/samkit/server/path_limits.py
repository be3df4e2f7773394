"""Request body limits that differ by path: a video upload may be larger than an image.

:class:`BodySizeLimitByPath` sends each HTTP request through a
:class:`~samkit.server.limits.BodySizeLimit` with the limit of its path (exact match), or the
default limit for every other path.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.types import ASGIApp, Receive, Scope, Send

from .limits import BodySizeLimit

__all__ = ["BodySizeLimitByPath"]


class BodySizeLimitByPath:
    """413 for bodies over the limit of their path (see :class:`BodySizeLimit`).

    Args:
        app: The wrapped ASGI app.
        max_body_bytes: The limit of every path not in ``path_limits``.
        path_limits: path -> its own limit in bytes.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int, path_limits: Mapping[str, int]) -> None:
        self.default = BodySizeLimit(app, max_body_bytes)
        self.by_path = {path: BodySizeLimit(app, limit) for path, limit in path_limits.items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.by_path.get(scope.get("path", "")) if scope["type"] == "http" else None
        await (limit or self.default)(scope, receive, send)
