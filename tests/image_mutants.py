"""Seeded corruptions of small image files, for the decoder fuzz tests (unit and server)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

FORMATS = ("PNG", "JPEG", "GIF", "TIFF", "WEBP", "BMP")
MUTANTS_PER_FORMAT = 300


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_in_chunks(pixels: np.ndarray, parts: int, *, second_type: bytes = b"IDAT") -> bytes:
    """An RGB PNG of ``pixels`` whose image data is split over ``parts`` IDAT chunks.

    Args:
        pixels: (H, W, 3) uint8.
        parts: Number of IDAT chunks (corruptions between them reach code paths a single
            chunk never does).
        second_type: Type bytes written for the second chunk.
    """
    height, width = pixels.shape[:2]
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)
    idat = zlib.compress(raw)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    bounds = np.linspace(0, len(idat), parts + 1).astype(int)
    body = b"".join(
        _png_chunk(second_type if i == 1 else b"IDAT", idat[bounds[i] : bounds[i + 1]]) for i in range(parts)
    )
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + body + _png_chunk(b"IEND", b"")


def png_with_corrupt_second_idat() -> bytes:
    """A PNG whose image data is split over two IDAT chunks, the second with garbage type bytes.

    Pillow raises ``SyntaxError: broken PNG file`` on it (the failure of issue #17).
    """
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    return png_in_chunks(pixels, parts=2, second_type=b"I\x00\xffT")


def seed_file(fmt: str) -> bytes:
    """A small valid file of ``fmt`` with some structure (two frames for GIF/TIFF)."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)
    pixels[4:12, 5:15] = (200, 30, 30)
    if fmt == "PNG":
        return png_in_chunks(pixels, parts=6)
    frame = Image.fromarray(pixels)
    buffer = io.BytesIO()
    if fmt in ("GIF", "TIFF"):
        frame.save(buffer, format=fmt, save_all=True, append_images=[Image.fromarray(255 - pixels)])
    else:
        frame.save(buffer, format=fmt)
    return buffer.getvalue()


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One random corruption: flipped bytes, a truncation, a duplicated or deleted span, junk."""
    out = bytearray(data)
    kind = int(rng.integers(0, 5))
    if kind == 0:  # a few random bytes changed
        for _ in range(int(rng.integers(1, 8))):
            out[int(rng.integers(0, len(out)))] = int(rng.integers(0, 256))
    elif kind == 1:  # truncated
        out = out[: int(rng.integers(1, len(out)))]
    elif kind == 2:  # a span duplicated
        start = int(rng.integers(0, len(out)))
        span = out[start : start + int(rng.integers(1, 64))]
        at = int(rng.integers(0, len(out)))
        out[at:at] = span
    elif kind == 3:  # a span deleted
        start = int(rng.integers(0, len(out)))
        del out[start : start + int(rng.integers(1, 64))]
    else:  # a span overwritten with junk, often near the header where parsers branch
        start = int(rng.integers(0, min(len(out), 128)))
        junk = rng.integers(0, 256, int(rng.integers(1, 16)), dtype=np.uint8).tobytes()
        out[start : start + len(junk)] = junk
    return bytes(out)


def mutants(fmt: str, count: int, seed: int) -> list[bytes]:
    """``count`` seeded mutations of :func:`seed_file` for ``fmt``."""
    rng = np.random.default_rng([seed, FORMATS.index(fmt)])
    data = seed_file(fmt)
    return [mutate(data, rng) for _ in range(count)]
