"""The SAM 2 decoder's upscaling as matrix products on pixel blocks (the fast path).

The official upscaling (``Sam2MaskDecoder.upscale``, kept as the reference) is

    x = GELU(LayerNorm2d(ConvT1(src) + s1));  y = GELU(ConvT2(x) + s0);  masks = hyper @ y

with ``ConvT`` a transposed convolution of kernel 2 and stride 2. Such a convolution reads one
input pixel per output pixel: output pixel (2i + a, 2j + b) is ``W[:, :, a, b]^T x[:, i, j] +
bias``. So it is one matrix product per input pixel, (C_in) -> (2, 2, C_out), followed by a
depth-to-space shuffle. Everything after it (the added high-resolution features, the channel
LayerNorm, GELU, the second transposed convolution, the hypernetwork product) is per pixel too,
so the shuffle can wait: the whole chain runs channels-last on "pixel blocks", tensors ordered
(B, h, w, a1, b1, [a2, b2,] C) where (a1, b1) is the position inside the first 2x2 block and
(a2, b2) inside the second. The high-resolution features are put in that order once per image
(:func:`to_pixel_blocks`), and only the final (B, 4, ...) mask logits, 4 channels instead of 32,
are shuffled back to (B, 4, 4h, 4w) (:func:`masks_from_pixel_blocks`). Equal to the reference up
to float rounding (the sums run in another order); ``tests/model/test_sam2_pixel_blocks.py``
checks it.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["conv_transpose_as_matrix", "masks_from_pixel_blocks", "to_pixel_blocks"]


def conv_transpose_as_matrix(conv: nn.ConvTranspose2d) -> tuple[Tensor, Tensor]:
    """A kernel-2 stride-2 transposed convolution as a (C_in, 2 * 2 * C_out) matrix and its bias.

    Column ``(a * 2 + b) * C_out + o`` maps an input pixel to channel ``o`` of output pixel
    (a, b) of its 2x2 block, so ``x @ matrix + bias`` viewed as (..., 2, 2, C_out) is the block.
    """
    if tuple(conv.kernel_size) != (2, 2) or tuple(conv.stride) != (2, 2) or tuple(conv.padding) != (0, 0):
        raise ValueError(f"expected a kernel-2 stride-2 transposed convolution, got {conv}")
    c_in, c_out = conv.weight.shape[:2]
    matrix = conv.weight.permute(0, 2, 3, 1).reshape(c_in, 4 * c_out)  # (C_in, a, b, C_out) -> (C_in, 4 C_out)
    bias = conv.bias.repeat(4) if conv.bias is not None else conv.weight.new_zeros(4 * c_out)  # (4 C_out,)
    return matrix, bias


def to_pixel_blocks(features: Tensor, levels: int) -> Tensor:
    """(B, C, h * 2^L, w * 2^L) -> (B, h, w, [2, 2] * L, C), contiguous, for ``levels`` L of 1 or 2."""
    b, c, height, width = features.shape
    h, w = height >> levels, width >> levels
    if levels == 1:
        blocks = features.view(b, c, h, 2, w, 2).permute(0, 2, 4, 3, 5, 1)  # (B, h, w, a1, b1, C)
    elif levels == 2:
        blocks = features.view(b, c, h, 2, 2, w, 2, 2).permute(0, 2, 5, 3, 6, 4, 7, 1)  # (B, h, w, a1, b1, a2, b2, C)
    else:
        raise ValueError(f"levels: expected 1 or 2, got {levels}")
    return blocks.contiguous()


def masks_from_pixel_blocks(blocks: Tensor) -> Tensor:
    """(B, h, w, 2, 2, 2, 2, M) mask logits in pixel-block order -> (B, M, 4h, 4w)."""
    b, h, w, *_, m = blocks.shape
    image = blocks.permute(0, 7, 1, 3, 5, 2, 4, 6)  # (B, M, h, a1, a2, w, b1, b2)
    return image.reshape(b, m, 4 * h, 4 * w)  # (B, M, 4h, 4w)
