"""Reading the items of a JSON array together with the line each one starts on.

Bad detection rows are reported with their line, so that a user can find them in the file;
:mod:`json` alone gives the values but not where they were.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["array_items_with_lines"]

_DECODER = json.JSONDecoder()
_SPACE = " \t\n\r"


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _SPACE:
        pos += 1
    return pos


def _expect(text: str, pos: int, char: str) -> int:
    pos = _skip_space(text, pos)
    if pos >= len(text) or text[pos] != char:
        found = text[pos] if pos < len(text) else "end of file"
        raise ValueError(f"expected {char!r} at line {text.count(chr(10), 0, pos) + 1}, found {found!r}")
    return pos + 1


def _array_items(text: str, pos: int) -> tuple[list[tuple[Any, int]], int]:
    """Items of the array starting at ``pos`` (at its '['), each with its 1-based line; and the end."""
    pos = _expect(text, pos, "[")
    items: list[tuple[Any, int]] = []
    pos = _skip_space(text, pos)
    if pos < len(text) and text[pos] == "]":
        return items, pos + 1
    while True:
        pos = _skip_space(text, pos)
        value, end = _DECODER.raw_decode(text, pos)
        items.append((value, text.count("\n", 0, pos) + 1))
        pos = _skip_space(text, end)
        if pos < len(text) and text[pos] == "]":
            return items, pos + 1
        pos = _expect(text, pos, ",")


def array_items_with_lines(text: str, key: str | None = None) -> tuple[Any, list[tuple[Any, int]]]:
    """The whole document, and the items of one of its arrays with their line numbers.

    Args:
        text: a JSON document.
        key: None for a document that is an array; else the key of a top-level object whose
            value is the array (``"annotations"`` of a COCO data set). A missing key gives no
            items.

    Returns:
        (the parsed document, [(item, line), ...]).

    Raises:
        ValueError: not valid JSON, or not of the expected shape.
    """
    document = json.loads(text)
    if key is None:
        if not isinstance(document, list):
            raise ValueError("expected a JSON array")
        items, _ = _array_items(text, _skip_space(text, 0))
        return document, items
    if not isinstance(document, dict):
        raise ValueError("expected a JSON object")
    if key not in document:
        return document, []
    pos = _expect(text, 0, "{")
    while True:
        pos = _skip_space(text, pos)
        name, pos = _DECODER.raw_decode(text, pos)
        pos = _expect(text, pos, ":")
        pos = _skip_space(text, pos)
        if name == key:
            if not isinstance(document[key], list):
                raise ValueError(f"{key!r}: expected a JSON array")
            items, _ = _array_items(text, pos)
            return document, items
        _, pos = _DECODER.raw_decode(text, pos)
        pos = _expect(text, pos, ",")
