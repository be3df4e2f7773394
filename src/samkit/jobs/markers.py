"""The resume scheme of every job: an image is complete when its marker, written last, matches.

A marker is a JSON record of the image's source file, the settings that made its outputs, and
anything else that changes them (an output format, an image id). Commands write it atomically
after the image's outputs (``samkit everything``: ``OUT/<image>/.done``; ``samkit annotate``:
beside the stored result), and a rerun skips an image only when the marker it finds equals the
one this run would write: changed settings or a half-written image redo the image. Jobs that
write one file per image (:func:`samkit.scale.run_job`) record the settings once for the whole
folder (``job.json``) and let the atomically written file stand for its marker.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["Markers", "canonical_json", "read_json"]


def canonical_json(value: Any) -> Any:
    """``value`` as it reads back from JSON with sorted keys (tuples become lists)."""
    return json.loads(json.dumps(value, sort_keys=True))


def read_json(path: Path) -> Any:
    """The JSON content of ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class Markers:
    """Makes and checks the markers of one run's settings.

    Args:
        settings: JSON-able settings that produced the outputs (model, options, ...).
    """

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = canonical_json(settings)

    def marker(self, source: Path, **extra: Any) -> dict[str, Any]:
        """The marker of the image read from ``source``; ``extra`` keys go between source and settings."""
        return {"source": str(source.resolve()), **extra, "settings": self.settings}

    def matches(self, recorded: Any, source: Path, **extra: Any) -> bool:
        """Whether a marker read back from disk is the one this run would write."""
        return recorded is not None and recorded == self.marker(source, **extra)
