"""Decoder invariants on a tiny model: the image-side cache changes nothing, and a batch of
prompts (or of images) gives the same outputs as decoding them one by one."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from samkit.batching import CPU_BATCHING
from samkit.modeling import Sam, decoder_factored

PROMPT_CHUNK = CPU_BATCHING.prompt_chunk  # prompts decoded together on the CPU

pytestmark = pytest.mark.usefixtures("one_thread")


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-5) -> None:
    scale = max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * scale)


@pytest.fixture(scope="module")
def embedding(tiny_sam: Sam) -> torch.Tensor:
    """(1, C, 20, 20) embedding of a random image."""
    image = torch.rand(1, 3, 200, 320, generator=torch.Generator().manual_seed(0)) * 255  # (1, 3, h, w)
    with torch.inference_mode():
        return tiny_sam.encode_image(tiny_sam.preprocess(image))


def _prompts(kind: str, batch: int, size: int, seed: int) -> dict[str, Any]:
    """Random prompts of one kind in the resized-image space: kwargs of ``Sam.decode``."""
    g = torch.Generator().manual_seed(seed)
    points = torch.rand(batch, 3, 2, generator=g) * size  # (B, N, 2)
    labels = torch.randint(0, 2, (batch, 3), generator=g)  # (B, N)
    labels[:, 0] = 1
    corner = torch.rand(batch, 2, generator=g) * size / 2
    boxes = torch.cat([corner, corner + torch.rand(batch, 2, generator=g) * size / 2], dim=1)  # (B, 4)
    masks = torch.randn(batch, 1, size // 4, size // 4, generator=g) * 3  # (B, 1, 4h, 4w)
    padded_labels = labels.clone()
    padded_labels[:, -1] = -1  # a padding point, as batched generators use
    return {
        "none": {},
        "points": {"point_coords": points, "point_labels": labels},
        "padded_points": {"point_coords": points, "point_labels": padded_labels},
        "boxes": {"boxes": boxes},
        "points_boxes": {"point_coords": points, "point_labels": labels, "boxes": boxes},
        "mask": {"point_coords": points, "point_labels": labels, "mask_input": masks},
    }[kind]


KINDS = ["none", "points", "padded_points", "boxes", "points_boxes", "mask"]


@pytest.mark.parametrize("multimask", [True, False], ids=["multi", "single"])
@pytest.mark.parametrize("kind", KINDS)
def test_decoder_cache_equals_no_cache(tiny_sam: Sam, embedding: torch.Tensor, kind: str, multimask: bool) -> None:
    batch = 1 if kind == "none" else 3
    prompts = _prompts(kind, batch, tiny_sam.img_size, seed=1)
    with torch.inference_mode():
        cache = tiny_sam.decoder_cache(embedding)
        cached = tiny_sam.decode(embedding, **prompts, multimask_output=multimask, cache=cache)
        plain = tiny_sam.decode(embedding, **prompts, multimask_output=multimask)
    m = 3 if multimask else 1
    mask_side = 4 * tiny_sam.prompt_encoder.image_embedding_size[0]
    assert cached[0].shape == (batch, m, mask_side, mask_side)
    assert cached[1].shape == (batch, m)
    assert cached[0].dtype == cached[1].dtype == torch.float32
    _assert_close(cached[0], plain[0])
    _assert_close(cached[1], plain[1])


def test_decoder_cache_is_valid_for_another_image_only_if_rebuilt(tiny_sam: Sam, embedding: torch.Tensor) -> None:
    """Guard for the cache test: a cache of a different embedding changes the output."""
    prompts = _prompts("points", 2, tiny_sam.img_size, seed=2)
    with torch.inference_mode():
        own = tiny_sam.decode(embedding, **prompts, cache=tiny_sam.decoder_cache(embedding))
        other = tiny_sam.decode(embedding, **prompts, cache=tiny_sam.decoder_cache(embedding.flip(-1)))
    assert float((own[0] - other[0]).abs().max()) > 1e-3


@pytest.mark.parametrize("use_cache", [False, True], ids=["no-cache", "cache"])
@pytest.mark.parametrize("kind", KINDS[1:])
def test_batched_prompts_equal_single_prompts(
    tiny_sam: Sam, embedding: torch.Tensor, kind: str, use_cache: bool
) -> None:
    batch = PROMPT_CHUNK + 2  # the cached path decodes in chunks: one full, one partial
    prompts = _prompts(kind, batch, tiny_sam.img_size, seed=3)
    with torch.inference_mode():
        cache = tiny_sam.decoder_cache(embedding) if use_cache else None
        low_res, iou = tiny_sam.decode(embedding, **prompts, cache=cache)
        for i in range(batch):
            one = {name: value[i : i + 1] for name, value in prompts.items()}
            single_low, single_iou = tiny_sam.decode(embedding, **one, cache=cache)
            _assert_close(low_res[i : i + 1], single_low)
            _assert_close(iou[i : i + 1], single_iou)
    # the prompts differ, so do the outputs (the batch is not one prompt broadcast)
    assert float((low_res[0] - low_res[1]).abs().max()) > 1e-3


def test_batch_of_image_embeddings_equals_one_by_one(tiny_sam: Sam, embedding: torch.Tensor) -> None:
    """decode accepts (B, C, h, w) embeddings, one per prompt (B above the prompt chunk: each
    chunk takes its own embeddings and dense prompts)."""
    embeddings = torch.cat([embedding * (1 - 0.1 * i) for i in range(PROMPT_CHUNK + 2)], dim=0)  # (B, C, h, w)
    embeddings[1::2] = embeddings[1::2].flip(-1)
    batch = embeddings.shape[0]
    for kind in ("points_boxes", "mask"):
        prompts = _prompts(kind, batch, tiny_sam.img_size, seed=4)
        with torch.inference_mode():
            low_res, iou = tiny_sam.decode(embeddings, **prompts)
            for i in range(batch):
                one = {name: value[i : i + 1] for name, value in prompts.items()}
                single_low, single_iou = tiny_sam.decode(embeddings[i : i + 1], **one)
                _assert_close(low_res[i : i + 1], single_low)
                _assert_close(iou[i : i + 1], single_iou)


def test_forward_equals_encode_then_decode(tiny_sam: Sam) -> None:
    image = torch.rand(1, 3, 320, 240, generator=torch.Generator().manual_seed(5)) * 255
    prompts = _prompts("points", 2, tiny_sam.img_size, seed=6)
    with torch.inference_mode():
        x = tiny_sam.preprocess(image)
        assert x.shape == (1, 3, tiny_sam.img_size, tiny_sam.img_size)
        emb = tiny_sam.encode_image(x)
        expected = tiny_sam.decode(emb, **prompts)
        actual = tiny_sam(x, **prompts)
    _assert_close(actual[0], expected[0])
    _assert_close(actual[1], expected[1])


@pytest.mark.parametrize("kind", ["points", "boxes"])
def test_factored_second_layer_equals_materialized(
    tiny_sam: Sam, embedding: torch.Tensor, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second layer reads the first layer's image tokens in factored form (NormedImage)
    when the cache has its projections; without them it reads the materialized tokens. Both
    must give the same masks, and the factored projections must exist for a depth >= 2 model.
    The prompts have few enough tokens (7 x 2 heads < 16) for the factored path, and a guard
    counts its calls."""
    import dataclasses

    cache = tiny_sam.decoder_cache(embedding)
    assert len(tiny_sam.mask_decoder.transformer.layers) >= 2
    assert cache.second_t2i_gained_keys_by_head is not None
    assert cache.second_t2i_gained_values_by_head is not None and cache.second_i2t_gained_queries_by_head is not None
    plain = dataclasses.replace(
        cache,
        second_t2i_gained_keys_by_head=None,
        second_t2i_gained_values_by_head=None,
        second_i2t_gained_queries_by_head=None,
    )
    prompts = _few_token_prompts(kind, 3, seed=5)
    calls = []
    original = decoder_factored.tokens_to_normed_image
    monkeypatch.setattr(decoder_factored, "tokens_to_normed_image", lambda *a: calls.append(1) or original(*a))
    with torch.inference_mode():
        factored = tiny_sam.decode(embedding, **prompts, cache=cache)
        assert len(calls) == 1  # the factored second layer ran
        materialized = tiny_sam.decode(embedding, **prompts, cache=plain)
        assert len(calls) == 1  # and not without its projections
    _assert_close(factored[0], materialized[0])
    _assert_close(factored[1], materialized[1])


def _few_token_prompts(kind: str, batch: int, seed: int) -> dict[str, Any]:
    """Prompts with few enough tokens for the tiny decoder's factored paths (2 heads x T < 16)."""
    prompts = _prompts(kind, batch, 320, seed=seed)
    if kind == "points":  # one point (plus the padding point)
        prompts = {"point_coords": prompts["point_coords"][:, :1], "point_labels": prompts["point_labels"][:, :1]}
    return prompts


@pytest.mark.parametrize("kind", ["points", "boxes"])
def test_factored_upscaling_equals_materialized(
    tiny_sam: Sam, embedding: torch.Tensor, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upscaling's first product reads the two-level factored image tokens with the cache's
    ``image_times_w12``; without it the upscaling multiplies the materialized tokens. Same masks;
    batches above the decoder's prompt chunk included."""
    import dataclasses

    cache = tiny_sam.decoder_cache(embedding)
    assert cache.image_times_w12 is not None
    plain = dataclasses.replace(cache, image_times_w12=None)
    prompts = _few_token_prompts(kind, 9, seed=11)  # 9 > PROMPT_CHUNK
    calls = []
    original = decoder_factored.factored_first_product
    monkeypatch.setattr(decoder_factored, "factored_first_product", lambda *a: calls.append(1) or original(*a))
    with torch.inference_mode():
        factored = tiny_sam.decode(embedding, **prompts, cache=cache)
        materialized = tiny_sam.decode(embedding, **prompts, cache=plain)
    # the factored path ran once per prompt chunk (and not for the plain cache)
    assert len(calls) == -(-9 // PROMPT_CHUNK)
    _assert_close(factored[0], materialized[0])
    _assert_close(factored[1], materialized[1])
