"""Each fast form of the mask decoder's attentions against the reference (tests per identity).

Part 1: every function of :mod:`samkit.modeling.decoder_folding` and
:mod:`samkit.modeling.decoder_factored` against ``DecoderAttention``
(the reference: projections on materialized tokens), in float64 on random tokens, at token
counts on both sides of ``low_rank_pays`` (the identities hold for any count).

Part 2: the mask decoder's fast path (the default) against its reference path
(``reference=True``, the official computation) on a tiny perturbed model, for points and boxes,
with and without a mask input. The fast path folds projections into the prompt tokens only when
``nh * T`` is below the attention's internal width (tiny decoder: 2 heads, width 16, so T <= 7
tokens); each case names the token count it decodes, and guards count which fast functions ran.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from samkit import batching
from samkit.config import MaskDecoderConfig
from samkit.modeling import Sam, decoder_factored, decoder_folding
from samkit.modeling.decoder_factored import NormedImage
from samkit.modeling.decoder_folding import heads_first, heads_transposed, low_rank_pays
from samkit.modeling.mask_decoder import MaskDecoder
from samkit.modeling.transformer import DecoderAttention, TwoWayTransformer

pytestmark = pytest.mark.usefixtures("one_thread")

C, N, B = 32, 60, 3  # model width, image tokens, prompts
FEW, MANY = 3, 9  # token counts: 2 heads x 3 < 16 (folding pays), 2 x 9 >= 16 (it does not)


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-9)


@pytest.fixture(scope="module")
def attention() -> DecoderAttention:
    """A float64 cross-attention like the tiny decoder's (2 heads, internal width 16), perturbed."""
    torch.manual_seed(0)
    module = DecoderAttention(C, 2, downsample_rate=2).double()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # biases far from 0 (each identity handles them)
    return module


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _normed(
    pre_norm: torch.Tensor, probs: torch.Tensor, mixed: torch.Tensor, norm: torch.nn.LayerNorm, base: NormedImage | None = None
) -> NormedImage:
    """LN(pre_norm) kept with its factors, as the cached layers build it."""
    out, mean, rstd = torch.native_layer_norm(pre_norm, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    return NormedImage(out, probs, mixed, mean.transpose(1, 2), rstd.transpose(1, 2), norm.weight, norm.bias, base)


def _layer_norm(seed: int) -> torch.nn.LayerNorm:
    norm = torch.nn.LayerNorm(C).double()
    with torch.no_grad():
        norm.weight.copy_(1 + 0.5 * _randn(C, seed=seed))
        norm.bias.copy_(0.5 * _randn(C, seed=seed + 1))
    return norm


def _normed_image(attention: DecoderAttention, image: torch.Tensor, t: int, seed: int) -> NormedImage:
    """X1 = LN(K + P^T M) with P, M from an image->token attention over t random tokens."""
    tokens = _randn(B, t, C, seed=seed)
    queries = heads_transposed(attention.q_proj(image), attention.num_heads)  # (nh, hd, N)
    pre_norm, probs, mixed = decoder_folding.projected_image_to_tokens_residual(attention, image, tokens, tokens, queries)
    return _normed(pre_norm, probs, mixed, _layer_norm(seed + 1))


@pytest.mark.parametrize("t", [FEW, MANY])
@pytest.mark.parametrize("image_batch", [1, B])
def test_tokens_to_image(attention: DecoderAttention, t: int, image_batch: int) -> None:
    assert low_rank_pays(attention, t) == (t == FEW)
    tokens, keys, values = _randn(B, t, C, seed=1), _randn(image_batch, N, C, seed=2), _randn(image_batch, N, C, seed=3)
    _close(decoder_folding.tokens_to_image(attention, tokens, keys, values), attention(tokens, keys, values))


@pytest.mark.parametrize("t", [FEW, MANY])
@pytest.mark.parametrize("image_batch", [1, B])
def test_image_to_tokens(attention: DecoderAttention, t: int, image_batch: int) -> None:
    image, keys, values = _randn(image_batch, N, C, seed=4), _randn(B, t, C, seed=5), _randn(B, t, C, seed=6)
    _close(decoder_folding.image_to_tokens(attention, image, keys, values), attention(image, keys, values))


@pytest.mark.parametrize("t", [FEW, MANY])
def test_tokens_to_projected_image(attention: DecoderAttention, t: int) -> None:
    tokens, keys, values = _randn(B, t, C, seed=7), _randn(1, N, C, seed=8), _randn(1, N, C, seed=9)
    keys_by_head = heads_transposed(attention.k_proj(keys), attention.num_heads)  # (nh, hd, N)
    values_by_head = heads_first(attention.v_proj(values), attention.num_heads)  # (nh, N, hd)
    actual = decoder_folding.tokens_to_projected_image(attention, tokens, keys_by_head, values_by_head)
    _close(actual, attention(tokens, keys, values))


@pytest.mark.parametrize("t", [FEW, MANY])
@pytest.mark.parametrize("image_batch", [1, B])
def test_tokens_to_image_with_pe(attention: DecoderAttention, t: int, image_batch: int) -> None:
    tokens, image, pe = _randn(B, t, C, seed=10), _randn(image_batch, N, C, seed=11), _randn(1, N, C, seed=12)
    pe_keys = heads_transposed(F.linear(pe, attention.k_proj.weight), attention.num_heads)  # (nh, hd, N)
    _close(decoder_folding.tokens_to_image_with_pe(attention, tokens, image, pe_keys), attention(tokens, image + pe, image))


@pytest.mark.parametrize("t", [FEW, MANY])
def test_projected_image_to_tokens_residual(attention: DecoderAttention, t: int) -> None:
    image, queries = _randn(1, N, C, seed=13), _randn(1, N, C, seed=14)
    keys, values = _randn(B, t, C, seed=15), _randn(B, t, C, seed=16)
    queries_by_head = heads_transposed(attention.q_proj(queries), attention.num_heads)  # (nh, hd, N)
    out, probs, mixed = decoder_folding.projected_image_to_tokens_residual(attention, image, keys, values, queries_by_head)
    expected = image + attention(queries, keys, values)
    _close(out, expected)
    _close(image + probs.transpose(1, 2) @ mixed, expected)  # the factors P, M of identity 1
    assert probs.shape == (B, attention.num_heads * t, N)


@pytest.mark.parametrize("t", [FEW, MANY])
@pytest.mark.parametrize("image_batch", [1, B])
def test_image_with_pe_to_tokens_residual(attention: DecoderAttention, t: int, image_batch: int) -> None:
    image, pe = _randn(image_batch, N, C, seed=17), _randn(1, N, C, seed=18)
    keys, values = _randn(B, t, C, seed=19), _randn(B, t, C, seed=20)
    pe_queries = heads_transposed(F.linear(pe, attention.q_proj.weight), attention.num_heads)  # (nh, hd, N)
    actual = decoder_folding.image_with_pe_to_tokens_residual(attention, image, keys, values, pe_queries)
    _close(actual, image + attention(image + pe, keys, values))


@pytest.mark.parametrize("t", [FEW, MANY])
def test_tokens_to_normed_image(attention: DecoderAttention, t: int) -> None:
    fixed, pe = _randn(1, N, C, seed=21), _randn(1, N, C, seed=22)
    normed = _normed_image(attention, fixed, 4, seed=23)  # X1 from 4 earlier tokens
    gained = fixed * normed.gain  # (1, N, C) K * g
    gained_keys = heads_transposed(F.linear(gained, attention.k_proj.weight), attention.num_heads)
    gained_values = heads_first(F.linear(gained, attention.v_proj.weight), attention.num_heads)
    pe_keys = heads_transposed(F.linear(pe, attention.k_proj.weight), attention.num_heads)
    tokens = _randn(B, t, C, seed=25)
    actual = decoder_factored.tokens_to_normed_image(attention, tokens, normed, gained_keys, gained_values, pe_keys)
    x1 = normed.materialized
    assert x1 is not None
    _close(actual, attention(tokens, x1 + pe, x1))


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("t", [FEW, MANY])
def test_normed_image_to_tokens_residual(attention: DecoderAttention, t: int, in_place: bool) -> None:
    fixed, pe = _randn(1, N, C, seed=26), _randn(1, N, C, seed=27)
    normed = _normed_image(attention, fixed, 4, seed=28)
    x1 = normed.materialized.clone()  # type: ignore[union-attr]
    gained = fixed * normed.gain  # (1, N, C)
    gained_queries = heads_transposed(F.linear(gained, attention.q_proj.weight), attention.num_heads)
    pe_queries = heads_transposed(F.linear(pe, attention.q_proj.weight), attention.num_heads)
    keys, values = _randn(B, t, C, seed=30), _randn(B, t, C, seed=31)
    out, probs, mixed = decoder_factored.normed_image_to_tokens_residual(
        attention, normed, keys, values, gained_queries, pe_queries, in_place=in_place
    )
    expected = x1 + attention(x1 + pe, keys, values)
    _close(out, expected)
    _close(x1 + probs.transpose(1, 2) @ mixed, expected)
    assert (out.data_ptr() == normed.materialized.data_ptr()) == in_place  # type: ignore[union-attr]


def test_factored_first_product(attention: DecoderAttention) -> None:
    """Identity 5: the upscaling's first product of two-level factored tokens."""
    fixed = _randn(1, N, C, seed=32)
    first = _normed_image(attention, fixed, 4, seed=33)
    x1 = first.materialized
    assert x1 is not None
    tokens = _randn(B, 7, C, seed=35)
    # X2 = LN2(X1 + P2^T M2) from a second image->token attention on X1.
    queries_by_head = heads_transposed(attention.q_proj(x1[:1]), attention.num_heads)
    pre_norm, probs, mixed = decoder_folding.projected_image_to_tokens_residual(
        attention, x1, tokens, tokens, queries_by_head
    )
    second = _normed(pre_norm, probs, mixed, _layer_norm(36), base=first)
    w1, b1 = _randn(C, 4 * C // 4, seed=38), _randn(4 * C // 4, seed=39)
    image_times_w12 = fixed[0] @ ((first.gain * second.gain)[:, None] * w1)  # (N, 4 * C/4) K W12
    left, right, scale, const = decoder_factored.factored_first_product(second, image_times_w12, w1, b1)
    actual = scale * image_times_w12 + left @ right + const  # (B, N, 4 * C/4)
    _close(actual, second.materialized @ w1 + b1)  # type: ignore[operator]


@pytest.mark.parametrize("depth", [1, 3])
@pytest.mark.parametrize("t", [7, 9])
def test_cached_transformer_of_other_depths(t: int, depth: int, calls: Counter[str]) -> None:
    """SAM's decoders have depth 2; the cached path also serves other depths: depth 1 (no
    factored layer) and depth 3 (layer 3 reads the positional encoding's cached projections)."""
    torch.manual_seed(2)
    transformer = TwoWayTransformer(depth, C, 2, 2 * C).double()
    with torch.no_grad():
        for p in transformer.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    image, pe, tokens = _randn(1, C, 5, 6, seed=50), _randn(1, C, 5, 6, seed=51), _randn(B, t, C, seed=52)
    with torch.inference_mode():
        expected = transformer(image.expand(B, -1, -1, -1), pe, tokens, reference=True)
        cached = transformer(None, None, tokens, cache=transformer.prepare_image(image, pe))
        folded = transformer(image, pe, tokens)
    for actual in (cached, folded):
        _close(actual[0], expected[0])
        _close(actual[1], expected[1])
    folds = t == 7  # 2 heads x 7 < 16
    assert calls["tokens_to_normed_image"] == (1 if depth == 3 and folds else 0)
    assert calls["image_with_pe_to_tokens_residual"] == (1 if depth == 3 and folds else 0)
    assert calls["tokens_to_image_with_pe"] == ((2 if depth == 3 else 1) if folds else 0)  # layer 3, final
    assert calls["image_to_tokens"] == (depth if folds else 0)  # the uncached call


def test_masks_from_image_tokens_equals_official_upscaling() -> None:
    """The upscaling as tiled sub-pixel GEMMs == ConvTranspose2d upscaling + hypernetwork product."""
    torch.manual_seed(1)
    config = MaskDecoderConfig(transformer_dim=C, transformer_mlp_dim=2 * C, transformer_num_heads=2, iou_head_hidden_dim=C)
    decoder = MaskDecoder(config).double()
    with torch.no_grad():
        for p in decoder.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    h, w = 5, 6
    tokens, hyper = _randn(B, h * w, C, seed=40), _randn(B, 3, C // 8, seed=41)
    upscaled = decoder.output_upscaling(tokens.transpose(1, 2).reshape(B, C, h, w))  # (B, C/8, 4h, 4w)
    expected = (hyper @ upscaled.flatten(2)).view(B, 3, 4 * h, 4 * w)
    for tile in (7, h * w):
        with torch.inference_mode():
            _close(decoder.masks_from_image_tokens(tokens, hyper, (h, w), tile=tile), expected)



# The fast functions whose calls the guards count.
FOLDED = ("tokens_to_image", "image_to_tokens")
CACHED = ("tokens_to_projected_image", "projected_image_to_tokens_residual")
WITH_PE = ("tokens_to_image_with_pe", "image_with_pe_to_tokens_residual")
NORMED = ("tokens_to_normed_image", "normed_image_to_tokens_residual")


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-5) -> None:
    scale = max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * scale)


@pytest.fixture(scope="module")
def embedding(tiny_sam: Sam) -> torch.Tensor:
    """(1, C, 20, 20) embedding of a random image."""
    image = torch.rand(1, 3, 200, 320, generator=torch.Generator().manual_seed(0)) * 255  # (1, 3, h, w)
    with torch.inference_mode():
        return tiny_sam.encode_image(tiny_sam.preprocess(image))


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """Counts the calls of every fast function of ``decoder_folding`` and ``decoder_factored`` (the guards)."""
    counter: Counter[str] = Counter()
    for name in FOLDED + CACHED + WITH_PE + NORMED + ("factored_first_product",):
        module = decoder_factored if name in NORMED + ("factored_first_product",) else decoder_folding
        original = getattr(module, name)

        def spy(*args: Any, _name: str = name, _original: Any = original, **kwargs: Any) -> Any:
            counter[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    yield counter


def _prompts(kind: str, batch: int, seed: int, size: int = 320) -> tuple[dict[str, Any], int]:
    """Random prompts (``Sam.decode`` kwargs) and the decoder's token count T for them.

    T = 5 output tokens + the prompt's sparse tokens (points, plus a padding point when there
    is no box; two corners per box).
    """
    g = torch.Generator().manual_seed(seed)
    points = torch.rand(batch, 3, 2, generator=g) * size  # (B, 3, 2)
    labels = torch.randint(0, 2, (batch, 3), generator=g)  # (B, 3)
    labels[:, 0] = 1
    corner = torch.rand(batch, 2, generator=g) * size / 2
    boxes = torch.cat([corner, corner + torch.rand(batch, 2, generator=g) * size / 2], dim=1)  # (B, 4)
    masks = torch.randn(batch, 1, size // 4, size // 4, generator=g) * 3  # (B, 1, 4h, 4w)
    one_point = {"point_coords": points[:, :1], "point_labels": labels[:, :1]}
    three_points = {"point_coords": points, "point_labels": labels}
    return {
        "1 point": (one_point, 7),
        "3 points": (three_points, 9),
        "box": ({"boxes": boxes}, 7),
        "3 points + box": ({**three_points, "boxes": boxes}, 10),
        "1 point + mask": ({**one_point, "mask_input": masks}, 7),
        "3 points + mask": ({**three_points, "mask_input": masks}, 9),
        "box + mask": ({"boxes": boxes, "mask_input": masks}, 7),
    }[kind]


KINDS = ["1 point", "3 points", "box", "3 points + box", "1 point + mask", "3 points + mask", "box + mask"]


def _reference(sam: Sam, embedding: torch.Tensor, prompts: dict[str, Any], multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
    sparse, dense = sam.embed_prompts(
        prompts.get("point_coords"), prompts.get("point_labels"), prompts.get("boxes"), prompts.get("mask_input")
    )
    return sam.mask_decoder(
        embedding, sam.prompt_encoder.get_dense_pe(), sparse, dense, multimask, reference=True
    )


@pytest.mark.parametrize("multimask", [True, False], ids=["multi", "single"])
@pytest.mark.parametrize("kind", KINDS)
def test_fast_decoder_equals_reference(
    tiny_sam: Sam, embedding: torch.Tensor, kind: str, multimask: bool, calls: Counter[str]
) -> None:
    """Fast path (with the image's cache, as the predictor runs it) == reference path, and
    the fast path took the folded side of ``low_rank_pays`` exactly when it pays."""
    batch = 3
    prompts, num_tokens = _prompts(kind, batch, seed=1)
    attention = tiny_sam.mask_decoder.transformer.layers[0].cross_attn_token_to_image
    folds = decoder_folding.low_rank_pays(attention, num_tokens)
    with torch.inference_mode():
        expected = _reference(tiny_sam, embedding, prompts, multimask)
        fast = tiny_sam.decode(embedding, **prompts, multimask_output=multimask, cache=tiny_sam.decoder_cache(embedding))
    m = 3 if multimask else 1
    assert fast[0].shape == expected[0].shape == (batch, m, 80, 80)
    _assert_close(fast[0], expected[0])
    _assert_close(fast[1], expected[1])
    assert float((expected[0][0] - expected[0][1]).abs().max()) > 1e-3  # the prompts differ
    # Guards: which fast functions ran.
    cached = "mask" not in kind
    assert (calls["tokens_to_projected_image"] > 0) == cached
    assert (calls["projected_image_to_tokens_residual"] > 0) == cached
    if cached:
        assert (calls["tokens_to_normed_image"] > 0) == folds
        assert (calls["normed_image_to_tokens_residual"] > 0) == folds
        assert (calls["factored_first_product"] > 0) == folds
        assert calls["tokens_to_image_with_pe"] > 0  # the final attention reads 5 tokens: always folded
        assert calls["tokens_to_image"] == calls["image_to_tokens"] == 0
    else:
        assert calls["tokens_to_image"] == (tiny_sam.mask_decoder.config.transformer_depth if folds else 0) + 1
        assert calls["image_to_tokens"] == (tiny_sam.mask_decoder.config.transformer_depth if folds else 0)
        assert sum(calls[name] for name in CACHED + WITH_PE + NORMED) == 0


@pytest.mark.parametrize("kind", ["1 point", "3 points + box", "box + mask"])
def test_fast_decoder_equals_reference_in_chunks(tiny_sam: Sam, embedding: torch.Tensor, kind: str) -> None:
    """Batches above the prompt chunk (one full chunk and a partial one) and one embedding per
    prompt (the uncached path with image tokens of batch B)."""
    batch = batching.CPU_BATCHING.prompt_chunk + 2
    prompts, _ = _prompts(kind, batch, seed=2)
    embeddings = torch.cat([embedding * (1 - 0.1 * i) for i in range(batch)])  # (B, C, h, w)
    with torch.inference_mode():
        expected = _reference(tiny_sam, embedding, prompts, True)
        fast = tiny_sam.decode(embedding, **prompts, cache=tiny_sam.decoder_cache(embedding))
        expected_per_image = _reference(tiny_sam, embeddings, prompts, True)
        fast_per_image = tiny_sam.decode(embeddings, **prompts)
    for actual, wanted in ((fast, expected), (fast_per_image, expected_per_image)):
        _assert_close(actual[0], wanted[0])
        _assert_close(actual[1], wanted[1])
    assert float((expected[0] - expected_per_image[0]).abs().max()) > 1e-3  # the embeddings differ


def test_reference_path_takes_no_fast_function(tiny_sam: Sam, embedding: torch.Tensor, calls: Counter[str]) -> None:
    """``reference=True`` runs none of the folded, cached or factored functions."""
    prompts, _ = _prompts("1 point", 2, seed=3)
    with torch.inference_mode():
        _reference(tiny_sam, embedding, prompts, True)
    assert sum(calls.values()) == 0
