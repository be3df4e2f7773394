"""Interactive web app and HTTP API (optional extra: ``pip install 'samkit[server]'``).

``create_app(model)`` returns a FastAPI app; ``samkit serve`` runs it with uvicorn.
FastAPI is imported on first use, so importing this package stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["create_app"]

if TYPE_CHECKING:  # pragma: no cover
    from .app import create_app


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module 'samkit.server' has no attribute {name!r}")
