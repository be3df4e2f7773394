"""Label Studio's brush RLE: the ``rle`` list of a ``brushlabels`` result.

Label Studio stores a brush mask as the RGBA bytes of the picture (row-major, 4 bytes per
pixel, 255 where the mask is on), packed by the run-length bit stream of the ``rle-pack``
JavaScript library that its editor decodes:

* header: the number of values (32 bits), the word size minus 1 (5 bits), then four run-length
  field widths minus 1 (4 bits each);
* then chunks: a repeat flag (1 bit), the index of the run-length field width (2 bits), the
  chunk's length minus 1 (in that many bits), then one word (repeat) or ``length`` words;
* bits are written most significant first; the last byte is padded with zeros.

The result is a list of byte values (0..255). Masks are encoded as repeat chunks only (every
run of a binary mask is at least 4 bytes long), with 8-bit words and field widths 3, 4, 8, 16
(what Label Studio's own tools write), vectorized over the runs.
"""

from __future__ import annotations

import numpy as np

__all__ = ["mask_to_brush_rle", "brush_rle_to_mask", "decode_brush_rle"]

_WORD_BITS = 8
_LENGTH_BITS = np.array([3, 4, 8, 16], dtype=np.int64)
_MAX_CHUNK = 1 << int(_LENGTH_BITS[-1])
_CHANNELS = 4  # RGBA


def _pack_fields(values: np.ndarray, widths: np.ndarray) -> bytes:
    """Concatenate unsigned ``values`` of ``widths`` bits each, most significant bit first, into bytes."""
    starts = np.concatenate(([0], np.cumsum(widths)[:-1]))  # (F,) first bit of each field
    field_of_bit = np.repeat(np.arange(len(widths)), widths)  # (total,)
    position = np.arange(int(widths.sum())) - starts[field_of_bit]  # (total,) bit index within its field
    shift = (widths[field_of_bit] - 1 - position).astype(np.uint64)
    bits = (values[field_of_bit].astype(np.uint64) >> shift) & np.uint64(1)
    return np.packbits(bits.astype(np.uint8)).tobytes()


def mask_to_brush_rle(mask: np.ndarray) -> list[int]:
    """Encode a binary mask as Label Studio brush RLE.

    Args:
        mask: (H, W) bool (or 0/1) mask.

    Returns:
        the ``rle`` list (byte values) of a ``brushlabels`` result of an H x W image.
    """
    flat = np.asarray(mask).astype(bool).reshape(-1)  # (H*W,) row-major
    if flat.size == 0:
        raise ValueError("mask: empty image")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1  # (R-1,) where a new run starts
    run_starts = np.concatenate(([0], change))
    run_lengths = np.diff(np.concatenate((run_starts, [flat.size]))) * _CHANNELS  # (R,) bytes per run
    run_values = np.where(flat[run_starts], 255, 0)  # (R,)
    chunks_per_run = -(-run_lengths // _MAX_CHUNK)
    chunk_values = np.repeat(run_values, chunks_per_run)  # (C,)
    chunk_lengths = np.full(len(chunk_values), _MAX_CHUNK, dtype=np.int64)
    last_chunk = np.cumsum(chunks_per_run) - 1
    chunk_lengths[last_chunk] = run_lengths - (chunks_per_run - 1) * _MAX_CHUNK
    size_index = np.searchsorted(1 << _LENGTH_BITS, chunk_lengths - 1, side="right")  # smallest width that holds length-1
    header_values = np.array([flat.size * _CHANNELS, _WORD_BITS - 1, *(_LENGTH_BITS - 1)], dtype=np.int64)
    header_widths = np.array([32, 5, 4, 4, 4, 4], dtype=np.int64)
    chunk_fields = np.stack([np.ones_like(chunk_values), size_index, chunk_lengths - 1, chunk_values], axis=1)  # (C, 4)
    chunk_widths = np.stack(
        [np.ones_like(size_index), np.full_like(size_index, 2), _LENGTH_BITS[size_index], np.full_like(size_index, _WORD_BITS)],
        axis=1,
    )  # (C, 4)
    values = np.concatenate((header_values, chunk_fields.reshape(-1)))
    widths = np.concatenate((header_widths, chunk_widths.reshape(-1)))
    return list(_pack_fields(values, widths))


class _BitReader:
    """Reads unsigned fields, most significant bit first, from bytes."""

    def __init__(self, data: bytes) -> None:
        self.bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
        self.pos = 0

    def read(self, width: int) -> int:
        if self.pos + width > len(self.bits):
            raise ValueError("brush rle: truncated")
        field = self.bits[self.pos : self.pos + width]
        self.pos += width
        return int(field.dot(1 << np.arange(width - 1, -1, -1, dtype=np.int64))) if width else 0


def decode_brush_rle(rle: list[int] | bytes) -> np.ndarray:
    """Decode a brush RLE into its flat values.

    Args:
        rle: the ``rle`` list (byte values).

    Returns:
        (N,) the decoded values (for a picture: H*W*4 RGBA bytes).

    Raises:
        ValueError: not a valid stream.
    """
    data = bytes(rle)
    reader = _BitReader(data)
    count = reader.read(32)
    word_bits = reader.read(5) + 1
    length_bits = [reader.read(4) + 1 for _ in range(4)]
    out = np.zeros(count, dtype=np.int64)
    i = 0
    while i < count:
        repeat = reader.read(1)
        end = i + 1 + reader.read(length_bits[reader.read(2)])
        if end > count:
            raise ValueError("brush rle: a chunk runs past the end")
        if repeat:
            out[i:end] = reader.read(word_bits)
        else:
            for j in range(i, end):
                out[j] = reader.read(word_bits)
        i = end
    return out


def brush_rle_to_mask(rle: list[int] | bytes, height: int, width: int) -> np.ndarray:
    """The (H, W) bool mask of a brush RLE (its alpha channel, on where > 0).

    Raises:
        ValueError: the stream does not hold H*W RGBA pixels.
    """
    values = decode_brush_rle(rle)
    if values.size != height * width * _CHANNELS:
        raise ValueError(f"brush rle: holds {values.size} values, expected {height}*{width}*4")
    return values.reshape(height, width, _CHANNELS)[..., 3] > 0
