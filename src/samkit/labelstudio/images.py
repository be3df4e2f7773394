"""Reading task images from the Label Studio the backend is configured for, and from nowhere else.

Task data holds URLs such as ``/data/upload/1/abc.png`` (uploads) or
``/data/local-files/?d=img/a.png`` (local files); they are read from the configured Label Studio
with its API token. An absolute URL is read only when it names that same host (scheme, host and
port), and redirects are not followed, so a task cannot make the backend fetch from elsewhere
(or send the token elsewhere).
"""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from typing import Any

__all__ = ["ImageFetchError", "LabelStudioImages"]

DEFAULT_MAX_BYTES = 50 * 1024 * 1024


class ImageFetchError(Exception):
    """An image URL the backend refuses or cannot read; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        raise ImageFetchError(f"image URL redirects to {newurl}; redirects are not followed", 422)


def _origin(url: urllib.parse.SplitResult) -> tuple[str, str, int | None]:
    default = {"http": 80, "https": 443}.get(url.scheme)
    return url.scheme, (url.hostname or "").lower(), url.port or default


class LabelStudioImages:
    """Fetches task images from one Label Studio.

    Args:
        base_url: the Label Studio, e.g. ``http://localhost:8080``.
        api_key: its API token (sent as ``Authorization: Token ...``); None sends none.
        max_bytes: refuse images larger than this.
        timeout: seconds per request.
    """

    def __init__(self, base_url: str, api_key: str | None, *, max_bytes: int = DEFAULT_MAX_BYTES, timeout: float = 30.0) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"Label Studio URL: expected http(s)://host[:port], got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._origin = _origin(parsed)
        self._api_key = api_key
        self._max_bytes = max_bytes
        self._timeout = timeout
        self._opener = urllib.request.build_opener(_NoRedirects())

    def resolve(self, url: str) -> str:
        """The absolute URL to read, if it is on the configured Label Studio.

        Raises:
            ImageFetchError: (422) a URL on another host or of another scheme.
        """
        if not isinstance(url, str) or not url:
            raise ImageFetchError("task data: the image field is empty", 422)
        absolute = urllib.parse.urljoin(self.base_url + "/", url)
        if _origin(urllib.parse.urlsplit(absolute)) != self._origin:
            raise ImageFetchError(f"image URL {url!r} is not on the configured Label Studio ({self.base_url})", 422)
        return absolute

    def fetch(self, url: str) -> bytes:
        """The bytes of the image at ``url`` (relative to Label Studio, or absolute on it).

        Raises:
            ImageFetchError: refused URL (422), not found or not allowed there (422), too large
                (413), or Label Studio unreachable (502).
        """
        request = urllib.request.Request(self.resolve(url))
        if self._api_key:
            request.add_header("Authorization", f"Token {self._api_key}")
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                data = response.read(self._max_bytes + 1)
        except urllib.error.HTTPError as exc:
            raise ImageFetchError(f"Label Studio answered {exc.code} for image {url!r}", 422) from None
        except (urllib.error.URLError, OSError) as exc:
            raise ImageFetchError(f"cannot reach Label Studio for image {url!r}: {exc}", 502) from None
        if len(data) > self._max_bytes:
            raise ImageFetchError(f"image {url!r} is larger than {self._max_bytes} bytes", 413)
        return data
