"""The service's refusals: each error carries the HTTP status the app answers with.

The service raises these and knows nothing of HTTP; :mod:`samkit.server.app` turns a
:class:`ServiceError` into a JSON error answer with ``status``.
"""

from __future__ import annotations

__all__ = [
    "ServiceError",
    "NotFound",
    "PayloadTooLarge",
    "UnsupportedImage",
    "InvalidPrompt",
    "Busy",
    "Unavailable",
]


class ServiceError(Exception):
    """A request the service refuses; ``status`` is the HTTP status to answer with."""

    status: int = 400


class NotFound(ServiceError):
    """Unknown (or evicted) image id or logits handle."""

    status = 404


class PayloadTooLarge(ServiceError):
    """Upload over the byte or pixel limit."""

    status = 413


class UnsupportedImage(ServiceError):
    """The upload is not an image samkit can read."""

    status = 415


class InvalidPrompt(ServiceError):
    """Prompts that do not fit the image (outside it, mismatched labels, ...)."""

    status = 422


class Busy(ServiceError):
    """Too many embeddings queued."""

    status = 503


class Unavailable(ServiceError):
    """A feature this build lacks."""

    status = 501
