"""HQ-SAM model plumbing on tiny models: early encoder features, strict loading, predictor options.

Parity of the outputs with the official HQ-SAM package is in ``tests/parity/test_hq_parity.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import samkit
from samkit.config import HQSamConfig, SamConfig, TinyViTConfig
from samkit.modeling.hq_sam import HQImageCache, HQSam
from samkit.modeling.image_encoder import ImageEncoderViT
from samkit.modeling.tiny_vit import TinyViT
from samkit.weights import CheckpointError, infer_variant, load_state_dict_strict

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_VIT = TinyViTConfig(
    img_size=256, embed_dims=(16, 32, 40, 64), depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4), out_chans=32
)


def hq_config(base: SamConfig) -> HQSamConfig:
    """The HQ version of a (tiny) SAM config."""
    return HQSamConfig(
        name=base.name + "_hq",
        image_encoder=base.image_encoder,
        prompt_encoder=base.prompt_encoder,
        mask_decoder=base.mask_decoder,
    )


@pytest.fixture(scope="module")
def tiny_hq(tiny_config: Callable[..., SamConfig], perturbed_model: Callable[..., HQSam]) -> HQSam:
    """A perturbed tiny HQ-SAM (grid 20, window 7); do not modify it in tests."""
    model = perturbed_model(hq_config(tiny_config()), seed=3)
    assert isinstance(model, HQSam)
    return model


@torch.no_grad()
def _perturbed(module: nn.Module, seed: int) -> nn.Module:
    """``module`` in eval mode with seeded N(0, 0.02) noise on every floating tensor."""
    generator = torch.Generator().manual_seed(seed)
    for tensor in module.state_dict().values():
        if tensor.dtype.is_floating_point:
            tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.02)
    return module.eval()


def _output_of(module: nn.Module, run: object) -> Tensor:
    """What ``module`` returned while ``run()`` ran (a forward hook)."""
    seen: list[Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        run()  # type: ignore[operator]
    finally:
        handle.remove()
    assert len(seen) == 1
    return seen[0]


@torch.no_grad()
def test_vit_early_features_are_the_first_global_block(tiny_config: Callable[..., SamConfig]) -> None:
    config = tiny_config(depth=4, global_attn_indexes=(2, 3))
    encoder = _perturbed(ImageEncoderViT(config.image_encoder), seed=1)
    x = torch.randn(1, 3, 320, 320, generator=torch.Generator().manual_seed(0))
    plain = encoder(x)
    embeddings, early = encoder.forward_with_early_features(x)
    torch.testing.assert_close(embeddings, plain, rtol=0, atol=0)
    block_out = _output_of(encoder.blocks[2], lambda: encoder(x))  # (1, 20, 20, C)
    assert early.shape == (1, 64, 20, 20)
    torch.testing.assert_close(early, block_out.permute(0, 3, 1, 2), rtol=0, atol=0)


@torch.no_grad()
def test_tiny_vit_early_features_are_stage_one() -> None:
    encoder = _perturbed(TinyViT(TINY_VIT), seed=2)
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    plain = encoder(x)
    embeddings, early = encoder.forward_with_early_features(x)
    torch.testing.assert_close(embeddings, plain, rtol=0, atol=0)
    stage_out = _output_of(encoder.layers[1], lambda: encoder(x))
    assert early.shape == (1, 40, 16, 16)  # embed_dims[2] channels at the final grid
    torch.testing.assert_close(early, stage_out, rtol=0, atol=0)
    assert HQSamConfig(name="t", image_encoder=TINY_VIT).early_feature_dim == 40


def test_infer_variant_knows_hq() -> None:
    sd = {"image_encoder.pos_embed": torch.zeros(1, 64, 64, 768), "image_encoder.blocks.11.norm1.weight": torch.ones(768)}
    assert infer_variant(sd) == "vit_b"
    assert infer_variant({**sd, "mask_decoder.hf_token.weight": torch.zeros(1, 256)}) == "hq_vit_b"
    tiny = {"image_encoder.layers.0.blocks.0.conv1.c.weight": torch.zeros(1), "mask_decoder.hf_token.weight": torch.zeros(1)}
    assert infer_variant(tiny) == "hq_vit_tiny"


def test_sam_checkpoint_is_refused_as_hq(tiny_hq: HQSam) -> None:
    """A plain SAM ViT-B checkpoint named as hq_vit_b (and the reverse) is refused, saying which it is."""
    sam_b = {"image_encoder.pos_embed": torch.zeros(1, 64, 64, 768), "image_encoder.blocks.11.norm1.weight": torch.ones(768)}
    with pytest.raises(CheckpointError, match="it is vit_b, not hq_vit_b"):
        load_state_dict_strict(tiny_hq, sam_b, variant="hq_vit_b")
    hq_b = {**sam_b, "mask_decoder.hf_token.weight": torch.zeros(1, 256)}
    with pytest.raises(CheckpointError, match="and an HQ output token: it is hq_vit_b, not vit_b"):
        load_state_dict_strict(tiny_hq, hq_b, variant="vit_b")


def test_strict_loading_names_hq_keys(tiny_hq: HQSam, tmp_path: Path) -> None:
    config = tiny_hq.config
    state = {k: v.clone() for k, v in tiny_hq.state_dict().items()}
    missing = {k: v for k, v in state.items() if not k.startswith("mask_decoder.hf_mlp.")}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"6 missing keys \(mask_decoder\.hf_mlp\.layers\.0\.weight"):
        samkit.build_sam(config, tmp_path / "missing.pth")
    shaped = {**state, "mask_decoder.hf_token.weight": torch.zeros(2, 32)}
    torch.save(shaped, tmp_path / "shaped.pth")
    with pytest.raises(CheckpointError, match=r"mask_decoder\.hf_token\.weight: checkpoint \(2, 32\) vs model \(1, 32\)"):
        samkit.build_sam(config, tmp_path / "shaped.pth")
    torch.save(state, tmp_path / "ok.pth")
    loaded = samkit.build_sam(config, tmp_path / "ok.pth")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())


def test_hq_predictor_shapes_and_options(tiny_hq: HQSam) -> None:
    predictor = samkit.SamPredictor(tiny_hq)
    image = np.random.default_rng(0).integers(0, 255, size=(120, 200, 3), dtype=np.uint8)
    predictor.set_image(image)
    point = {"point_coords": np.array([[50, 60]]), "point_labels": np.array([1])}
    for multimask in (True, False):
        masks, scores, low_res = predictor.predict(**point, multimask_output=multimask)
        assert masks.shape == (1, 120, 200) and scores.shape == (1,) and low_res.shape == (1, 80, 80)
    boxes = np.array([[10, 10, 90, 100], [100, 20, 190, 110]])
    masks, scores, _ = predictor.predict(box=boxes, hq_token_only=True)
    assert masks.shape == (2, 1, 120, 200) and scores.shape == (2, 1)


def test_hq_token_only_is_refused_for_sam(tiny_sam: samkit.modeling.Sam) -> None:
    predictor = samkit.SamPredictor(tiny_sam)
    predictor.set_image(np.zeros((40, 60, 3), dtype=np.uint8))
    point = {"point_coords": np.array([[5, 5]]), "point_labels": np.array([1])}
    masks, _, _ = predictor.predict(**point, hq_token_only=False)
    assert masks.shape == (3, 40, 60)
    with pytest.raises(ValueError, match="hq_token_only: only HQ-SAM models"):
        predictor.predict(**point, hq_token_only=True)


def test_hq_decode_needs_its_cache(tiny_hq: HQSam) -> None:
    embeddings = torch.zeros(1, 32, 20, 20)
    coords, labels = torch.tensor([[[10.0, 10.0]]]), torch.tensor([[1]])
    with pytest.raises(TypeError, match="HQImageCache"):
        tiny_hq.decode(embeddings, coords, labels, cache=None)
    low_res, iou = tiny_hq.decode(embeddings, coords, labels, cache=HQImageCache(hq_features=torch.zeros(1, 4, 80, 80)))
    assert low_res.shape == (1, 1, 80, 80) and iou.shape == (1, 1)


def test_hq_embedding_without_hq_features_is_refused(tiny_hq: HQSam, tiny_sam: samkit.modeling.Sam, tmp_path: Path) -> None:
    """An embedding file without HQ features cannot drive the HQ decoder: a clear error."""
    sam_predictor = samkit.SamPredictor(tiny_sam)
    sam_predictor.set_image(np.zeros((40, 60, 3), dtype=np.uint8))
    sam_predictor.save_embedding(tmp_path / "sam.emb")
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(tmp_path / "sam.emb"), framework="pt") as handle:
        metadata = {**handle.metadata(), "model": tiny_hq.config.name}
        features = handle.get_tensor("features")
    save_file({"features": features}, tmp_path / "relabelled.emb", metadata=metadata)
    with pytest.raises(ValueError, match=r"HQ features have shape none, expected \(1, 4, 80, 80\)"):
        samkit.SamPredictor(tiny_hq).load_embedding(tmp_path / "relabelled.emb")


def test_hq_forward_equals_the_predictor_path(tiny_hq: HQSam) -> None:
    """``HQSam.forward`` (plain decoder path, no image-side cache) gives the predictor's logits."""
    predictor = samkit.SamPredictor(tiny_hq)
    image = np.random.default_rng(1).integers(0, 255, size=(320, 320, 3), dtype=np.uint8)
    predictor.set_image(image)
    coords, labels = torch.tensor([[[100.0, 120.0]], [[250.0, 40.0]]]), torch.tensor([[1], [1]])
    for multimask in (True, False):
        _, iou, low_res = predictor.predict_torch(coords, labels, multimask_output=multimask, hq_token_only=False)
        with torch.inference_mode():
            images = tiny_hq.preprocess(torch.from_numpy(image).permute(2, 0, 1)[None].float())  # (1, 3, 320, 320)
            forward_low_res, forward_iou = tiny_hq(images, coords, labels, multimask_output=multimask)
        torch.testing.assert_close(forward_low_res, low_res, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(forward_iou, iou, rtol=1e-4, atol=1e-4)


def test_hq_bfloat16_mode_runs(tiny_config: Callable[..., SamConfig], tmp_path: Path) -> None:
    """The fast mode (bf16 encoder, fp32 decoder on CPU) feeds the HQ decoder float32 features."""
    torch.manual_seed(0)
    config = hq_config(tiny_config())
    torch.save(samkit.build_sam(config).state_dict(), tmp_path / "hq.pth")
    fp32 = samkit.SamPredictor(samkit.build_sam(config, tmp_path / "hq.pth"))
    bf16 = samkit.SamPredictor(samkit.build_sam(config, tmp_path / "hq.pth", dtype=torch.bfloat16))
    image = np.random.default_rng(2).integers(0, 255, size=(200, 320, 3), dtype=np.uint8)
    point = {"point_coords": np.array([[100, 80]]), "point_labels": np.array([1]), "return_logits": True}
    outputs = []
    for predictor in (fp32, bf16):
        predictor.set_image(image)
        assert predictor.hq_features is not None and predictor.hq_features.dtype == torch.float32
        outputs.append(predictor.predict(**point)[2])
    assert np.isfinite(outputs[1]).all()
    assert float(np.abs(outputs[1] - outputs[0]).max()) < 0.1 * max(1.0, float(np.abs(outputs[0]).max()))
