"""Trace-friendly stand-ins for runtime-optimized torch kernels, used only while exporting.

The encoder's fused attention (``samkit.modeling.attention.rel_pos_attention``) is tuned for
eager PyTorch: it writes query chunks into preallocated buffers with ``out=`` and slice
assignment, which the TorchScript ONNX exporter cannot translate (or turns into scatter
ops). While tracing, :func:`traceable_attention` swaps in :func:`traceable_rel_pos_attention`:
the same math (decomposed rel-pos bias as the additive mask of
``F.scaled_dot_product_attention``, in query chunks) written functionally.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from ..modeling import attention

__all__ = ["EXPORT_QUERY_CHUNK", "traceable_attention", "traceable_rel_pos_attention"]

# Query rows per attention chunk in the exported graph: the (B, nh, chunk, N) bias and
# scores of a vit_b global block then take ~200 MB each in ONNX Runtime instead of ~800 MB.
EXPORT_QUERY_CHUNK = 1024


def traceable_rel_pos_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    rel_pos_h: Tensor | None,
    rel_pos_w: Tensor | None,
    hw: tuple[int, int],
    *,
    query_chunk: int | None = EXPORT_QUERY_CHUNK,
) -> Tensor:
    """Attention with decomposed relative-position bias, without in-place writes.

    Args and returns as :func:`samkit.modeling.attention.rel_pos_attention`:
    q, k, v (B, nh, N, hd), N = H*W -> (B, nh, N, hd).
    """
    if rel_pos_h is None or rel_pos_w is None:
        return F.scaled_dot_product_attention(q, k, v)
    rel_h, rel_w = attention.decomposed_rel_pos_terms(q, rel_pos_h, rel_pos_w, hw)  # (B, nh, N, H), (B, nh, N, W)
    b, nh, n, _ = q.shape
    chunk = n if query_chunk is None else query_chunk
    outputs = []
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        bias = rel_h[:, :, start:stop, :, None] + rel_w[:, :, start:stop, None, :]  # (B, nh, c, H, W)
        bias = bias.reshape(b, nh, stop - start, hw[0] * hw[1])  # (B, nh, c, N)
        outputs.append(F.scaled_dot_product_attention(q[:, :, start:stop], k, v, attn_mask=bias))  # (B, nh, c, hd)
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)  # (B, nh, N, hd)


@contextlib.contextmanager
def traceable_attention() -> Iterator[None]:
    """Use :func:`traceable_rel_pos_attention` in the encoder for the duration of the block.

    The swap is process-wide: a model running eagerly in another thread meanwhile computes
    the same values through the functional path.
    """
    original = attention.rel_pos_attention
    attention.rel_pos_attention = traceable_rel_pos_attention
    try:
        yield
    finally:
        attention.rel_pos_attention = original
