"""Run-length encoding of binary masks: uncompressed (COCO order) and COCO strings.

An uncompressed RLE is ``{"size": [H, W], "counts": [...]}``: the lengths of alternating
runs of 0s and 1s (starting with 0s, so the first count may be 0) over the mask read in
column-major (Fortran) order, the convention of the COCO API. A COCO (compressed) RLE has the
same ``size`` and ``counts`` as the ASCII string ``pycocotools`` produces.

Everything here is vectorized: no Python loop runs per pixel or per run; the only loops are
per mask (to split the result into one array per mask).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "encode_fortran",
    "mask_to_rle",
    "rle_to_mask",
    "rle_area",
    "counts_to_string",
    "string_to_counts",
    "rle_to_coco",
    "coco_to_rle",
]

# Each COCO character carries 5 bits; a 32-bit count delta (with sign) needs at most 7.
_MAX_CHARS_PER_COUNT = 7


def encode_fortran(
    masks: Tensor | np.ndarray, *, total: int | None = None, offset: int = 0
) -> list[np.ndarray]:
    """Run lengths of masks that are already flattened in column-major order.

    The masks may cover a window ``[offset, offset + L)`` of a longer flattened frame of
    ``total`` pixels (every pixel outside the window is 0); this is how a mask of a crop
    that spans whole columns of the image is encoded without building the full mask.

    Args:
        masks: (N, L) bool, each row a mask flattened in column-major order.
        total: length of the whole frame (default ``L``).
        offset: position of the window in the frame.

    Returns:
        N int64 arrays of run lengths, starting with a (possibly empty) run of 0s and never
        ending with an empty run; they sum to ``total``.
    """
    flat = torch.as_tensor(masks)
    if flat.dtype != torch.bool or flat.ndim != 2:
        raise ValueError(f"masks: expected an (N, L) bool array, got {flat.dtype} of shape {tuple(flat.shape)}")
    n, length = flat.shape
    total = length if total is None else int(total)
    if offset < 0 or offset + length > total:
        raise ValueError(f"offset: window [{offset}, {offset + length}) does not fit a frame of {total}")
    if n == 0:
        return []
    flat = flat.cpu()
    # Run boundaries: positions p where ext[p] != ext[p + 1] with ext = [0, mask, 0].
    edges = torch.empty((n, length + 1), dtype=torch.bool)  # (N, L+1)
    edges[:, 0] = flat[:, 0]
    edges[:, -1] = flat[:, -1]
    torch.ne(flat[:, 1:], flat[:, :-1], out=edges[:, 1:-1])
    hits = np.flatnonzero(edges.numpy())  # (K,) global positions, sorted by mask then position
    rows = hits // (length + 1)
    bounds = hits - rows * (length + 1) + offset  # (K,) boundary positions in the frame
    ends = np.searchsorted(rows, np.arange(1, n + 1))  # (N,) one past each mask's last boundary
    starts = np.concatenate(([0], ends[:-1]))
    runs = np.diff(bounds, prepend=0)  # (K,) distance to the previous boundary ...
    has_bounds = ends > starts
    runs[starts[has_bounds]] = bounds[starts[has_bounds]]  # ... or to the frame start for a mask's first
    out = []
    for i in range(n):
        s, e = starts[i], ends[i]
        last = bounds[e - 1] if e > s else 0
        tail = total - last
        out.append(np.concatenate((runs[s:e], [tail])) if tail > 0 or e == s else runs[s:e].copy())
    return out


def mask_to_rle(masks: Tensor | np.ndarray) -> list[dict[str, Any]]:
    """Uncompressed COCO RLEs of binary masks.

    Args:
        masks: (N, H, W) or (H, W) bool.

    Returns:
        one ``{"size": [H, W], "counts": list[int]}`` per mask.
    """
    tensor = torch.as_tensor(masks)
    if tensor.ndim == 2:
        tensor = tensor[None]
    if tensor.dtype != torch.bool or tensor.ndim != 3:
        raise ValueError(f"masks: expected (N, H, W) bool, got {tensor.dtype} of shape {tuple(tensor.shape)}")
    n, h, w = tensor.shape
    flat = tensor.transpose(1, 2).reshape(n, w * h)  # (N, W*H) column-major
    return [{"size": [h, w], "counts": counts.tolist()} for counts in encode_fortran(flat)]


def _counts_array(rle: dict[str, Any]) -> np.ndarray:
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        return string_to_counts(counts)
    return np.asarray(counts, dtype=np.int64)


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Decode an uncompressed (or COCO string) RLE.

    Returns:
        (H, W) bool; a column-major (Fortran-ordered) array, as the official code returns.
    """
    h, w = (int(v) for v in rle["size"])
    counts = _counts_array(rle)
    if counts.sum() != h * w:
        raise ValueError(f"rle: counts sum to {int(counts.sum())}, expected {h}*{w}={h * w}")
    values = (np.arange(len(counts)) % 2).astype(bool)  # runs alternate 0, 1, 0, ...
    flat = np.repeat(values, counts)  # (W*H,)
    return flat.reshape(w, h).T  # (H, W)


def rle_area(rle: dict[str, Any]) -> int:
    """Number of 1-pixels of an RLE (the sum of its odd runs)."""
    return int(_counts_array(rle)[1::2].sum())


def counts_to_string(counts: np.ndarray | list[int]) -> str:
    """COCO's compressed form of run lengths (equal to ``pycocotools``' string).

    Each count is stored as the difference to the count two places before (from the fourth
    on), in little-endian groups of 5 bits with a continuation bit, offset into printable
    ASCII (+48).
    """
    cnts = np.asarray(counts, dtype=np.int64)
    if cnts.ndim != 1:
        raise ValueError(f"counts: expected a 1-D sequence, got shape {cnts.shape}")
    if len(cnts) == 0:
        return ""
    x = cnts.copy()
    x[3:] -= cnts[1:-2]
    chars = np.zeros((len(x), _MAX_CHARS_PER_COUNT), dtype=np.uint8)  # (m, 7)
    valid = np.zeros((len(x), _MAX_CHARS_PER_COUNT), dtype=bool)  # (m, 7)
    active = np.ones(len(x), dtype=bool)
    for k in range(_MAX_CHARS_PER_COUNT):
        c = x & 0x1F
        x = x >> 5  # arithmetic shift, like the C code
        more = np.where((c & 0x10) != 0, x != -1, x != 0)
        chars[:, k] = (c | (more.astype(np.int64) << 5)) + 48
        valid[:, k] = active
        active &= more
    if active.any():
        raise ValueError("counts: values too large for the COCO encoding")
    return chars[valid].tobytes().decode("ascii")


def string_to_counts(string: str | bytes) -> np.ndarray:
    """Inverse of :func:`counts_to_string`.

    Returns:
        (m,) int64 run lengths.
    """
    data = np.frombuffer(string.encode("ascii") if isinstance(string, str) else bytes(string), dtype=np.uint8)
    if len(data) == 0:
        return np.zeros(0, dtype=np.int64)
    c = data.astype(np.int64) - 48
    if (c < 0).any() or (c > 63).any():
        raise ValueError("string: not a COCO RLE string")
    last = (c & 0x20) == 0  # (P,) a count ends at each char without the continuation bit
    if not last[-1]:
        raise ValueError("string: truncated COCO RLE string")
    value_id = np.concatenate(([0], np.cumsum(last)[:-1]))  # (P,) which count each char belongs to
    first = np.concatenate(([0], np.flatnonzero(last)[:-1] + 1))  # (m,) first char of each count
    k = np.arange(len(c)) - first[value_id]  # (P,) position of the char within its count
    x = np.zeros(len(first), dtype=np.int64)
    np.add.at(x, value_id, (c & 0x1F) << (5 * k))
    n_chars = np.bincount(value_id)
    negative = (c[last] & 0x10) != 0
    x[negative] -= np.left_shift(1, 5 * n_chars[negative])  # sign extension
    cnts = x.copy()
    cnts[1::2] = np.cumsum(x[1::2])  # count i = delta i + count i-2, for i > 2
    cnts[2::2] = np.cumsum(x[2::2])
    return cnts


def rle_to_coco(rle: dict[str, Any]) -> dict[str, Any]:
    """Uncompressed RLE -> COCO RLE ``{"size": [H, W], "counts": str}`` (JSON-ready)."""
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        string = counts if isinstance(counts, str) else counts.decode("ascii")
    else:
        string = counts_to_string(counts)
    return {"size": [int(v) for v in rle["size"]], "counts": string}


def coco_to_rle(coco: dict[str, Any]) -> dict[str, Any]:
    """COCO RLE (string counts) -> uncompressed RLE with a list of counts."""
    return {"size": [int(v) for v in coco["size"]], "counts": _counts_array(coco).tolist()}
