"""How much work goes together, per device: the one place where batch sizes are chosen.

On a CPU, small pieces win: a few prompts decoded end to end keep each prompt's ~4-8 MB of
image-token intermediates in the cache, the upscaling runs a tile of tokens at a time, and the
full-size logits of segment-everything are post-processed a few MB at a time. On a GPU the same
pieces are thousands of tiny kernel launches and a host sync per chunk, so larger batches pay.
The outputs do not depend on the choice (tests compare both settings on the CPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Batching", "CPU_BATCHING", "ACCELERATOR_BATCHING", "batching_for"]


@dataclass(frozen=True)
class Batching:
    """Batch sizes of the decoder and of segment-everything's post-processing.

    Attributes:
        prompt_chunk: prompts decoded together, end to end (``MaskDecoder.forward`` and
            segment-everything's point decoder, which syncs with the host once per chunk).
        upscale_tile: image tokens upscaled per pair of matrix products.
        postprocess_pixels: full-size mask logits (pixels) post-processed at a time in
            segment-everything.
    """

    prompt_chunk: int
    upscale_tile: int
    postprocess_pixels: int


# Measured on a 2-core CPU with a 32 MB L3: 2-4 prompts beat both 1 and 64 by ~25%; logits
# post-processed 8 MB at a time (a few masks that stay in the cache, in blocks the allocator reuses).
CPU_BATCHING = Batching(prompt_chunk=4, upscale_tile=1024, postprocess_pixels=1 << 21)
# Not measured (no GPU was available): a whole default points_per_batch per chunk, the 64x64
# token grid in one tile, and ~256 MB of float32 logits per post-processing step.
ACCELERATOR_BATCHING = Batching(prompt_chunk=64, upscale_tile=4096, postprocess_pixels=1 << 26)


def batching_for(device: torch.device | str) -> Batching:
    """The batch sizes for work on ``device``: the CPU's, or the accelerators' (CUDA, MPS, ...)."""
    return CPU_BATCHING if torch.device(device).type == "cpu" else ACCELERATOR_BATCHING
