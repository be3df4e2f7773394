"""Parity of a tiny SAM (grid 20, window 7: padded windows) with the official implementation.

Same checks as ``test_core_parity.py`` on a model small enough to run every prompt case
end to end through ``set_image`` on both sides, in a few seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import segment_anything
import torch

import samkit

# The 3000x2000 image is covered by the vit_b parity test; here it would only time full-size upscaling.
IMAGES = {"landscape": (546, 967), "portrait": (800, 480), "tiny": (7, 10)}


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models: one thread is faster than two (OpenMP synchronisation dominates)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_pair(parity: Any, official_checkpoint: Any) -> Iterator[tuple[Any, Any]]:
    """(samkit predictor, official predictor) loaded from one perturbed official checkpoint."""
    path: Path = official_checkpoint(parity.build_tiny_official, "tiny", seed=11)
    official = parity.build_tiny_official()
    official.load_state_dict(torch.load(path, weights_only=True))
    ours = samkit.build_sam(parity.tiny_config(), path)
    yield samkit.SamPredictor(ours), segment_anything.SamPredictor(official)


@pytest.mark.parametrize("image_name", list(IMAGES))
def test_tiny_end_to_end(tiny_pair: tuple[Any, Any], parity: Any, image_name: str) -> None:
    ours, official = tiny_pair
    h, w = IMAGES[image_name]
    image = parity.image(h, w, seed=len(image_name))
    ours.set_image(image)
    official.set_image(image)
    assert ours.original_size == tuple(official.original_size)
    assert ours.input_size == tuple(official.input_size)
    parity.close(ours.get_image_embedding(), official.get_image_embedding(), what=f"{image_name} embedding")
    for case in parity.prompt_cases:
        parity.compare_predict(ours, official, parity.prompt_kwargs(case, h, w), what=f"{image_name}/{case}")
    # mask_input from a previous call's low-res logits (the same array fed to both).
    first = parity.prompt_kwargs("point", h, w)
    _, scores, low_res = official.predict(**first)
    refine = {**parity.prompt_kwargs("pos_neg", h, w), "mask_input": low_res[np.argmax(scores)][None]}
    parity.compare_predict(ours, official, refine, what=f"{image_name}/mask_input")


def test_tiny_encoder_is_not_trivially_equal(tiny_pair: tuple[Any, Any], parity: Any) -> None:
    """The perturbed weights make rel-pos and pos_embed matter (guards the parity test itself)."""
    ours, _ = tiny_pair
    encoder = ours.model.image_encoder
    assert float(encoder.pos_embed.abs().max()) > 0.01
    for block in encoder.blocks:
        assert float(block.attn.rel_pos_h.abs().max()) > 0.01
        assert float(block.attn.rel_pos_w.abs().max()) > 0.01
    image = parity.image(200, 320, seed=3)
    ours.set_image(image)
    reference = ours.get_image_embedding().clone()
    with torch.no_grad():
        saved = [b.attn.rel_pos_h.clone() for b in encoder.blocks]
        for block in encoder.blocks:
            block.attn.rel_pos_h.zero_()
        try:
            ours.set_image(image)
            changed = ours.get_image_embedding()
        finally:
            for block, table in zip(encoder.blocks, saved, strict=True):
                block.attn.rel_pos_h.copy_(table)
    assert float((changed - reference).abs().max()) > 1e-3
