"""``SamAutomaticMaskGenerator`` with an HQ-SAM model against the official HQ generator.

A small HQ model (2-block encoder at the real 1024 input, so 256x256 low-res masks) is built
by the official ``segment-anything-hq==0.3`` package, perturbed, saved in the official format
and loaded strictly into samkit. A perturbed model's masks are noisy and its predicted IoUs near
zero, so the filters that would drop them are off (IoU and stability thresholds 0, NMS at 1.0):
every grid point gives one record on both sides, and each is compared with its official twin.
Pixels may differ only where the official logit is within 1e-3 of the threshold (the decoders
agree to float rounding, not bit for bit).
"""

from __future__ import annotations

import warnings
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import samkit
from samkit.config import HQSamConfig
from samkit.everything import SamAutomaticMaskGenerator

from .conftest import make_image, perturb_, small_config

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # timm's deprecated import paths
    warnings.simplefilter("ignore", UserWarning)  # TinyViT names registered twice
    import segment_anything_hq
    from segment_anything_hq.modeling import ImageEncoderViT, MaskDecoderHQ, PromptEncoder, Sam, TwoWayTransformer

IMAGE_SIZE = (300, 420)  # (H, W)
FILTERS_OFF = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}
POINTS_PER_SIDE = 4


def build_official_small_hq(dim: int = 64) -> nn.Module:
    """The official HQ ``Sam`` with the architecture of ``small_config()`` plus the HQ decoder."""
    img_size, grid = 1024, 64
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=img_size,
            patch_size=16,
            embed_dim=64,
            depth=2,
            num_heads=2,
            mlp_ratio=4.0,
            out_chans=dim,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=14,
            global_attn_indexes=(1,),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim, image_embedding_size=(grid, grid), input_image_size=(img_size, img_size), mask_in_chans=16
        ),
        mask_decoder=MaskDecoderHQ(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=2 * dim, num_heads=1),
            transformer_dim=dim,
            iou_head_depth=3,
            iou_head_hidden_dim=dim,
            vit_dim=64,
        ),
    ).eval()


def small_hq_config() -> HQSamConfig:
    base = small_config()
    return HQSamConfig(
        name="everything_small_hq",
        image_encoder=base.image_encoder,
        prompt_encoder=base.prompt_encoder,
        mask_decoder=base.mask_decoder,
    )


@pytest.mark.parametrize("multimask_output", [True, False])
def test_hq_generator_matches_official(tmp_path: Path, multimask_output: bool) -> None:
    torch.manual_seed(7)
    official = build_official_small_hq()
    perturb_(official, seed=7)
    torch.save(official.state_dict(), tmp_path / "small_hq.pth")
    ours = samkit.build_sam(small_hq_config(), tmp_path / "small_hq.pth")
    image = make_image(*IMAGE_SIZE, seed=2)

    expected = segment_anything_hq.SamAutomaticMaskGenerator(
        official, points_per_side=POINTS_PER_SIDE, **FILTERS_OFF
    ).generate(image, multimask_output)
    actual = SamAutomaticMaskGenerator(ours, points_per_side=POINTS_PER_SIDE, **FILTERS_OFF).generate(
        image, multimask_output
    )
    assert len(expected) == POINTS_PER_SIDE**2  # one mask per point, none filtered
    assert len(actual) == len(expected)

    official_predictor = segment_anything_hq.SamPredictor(official)
    official_predictor.set_image(image)
    by_point = {tuple(np.round(r["point_coords"][0], 6)): r for r in actual}
    for j, ref in enumerate(expected):
        rec = by_point.pop(tuple(np.round(ref["point_coords"][0], 6)))
        what = f"mask {j} at {ref['point_coords'][0]}"
        assert rec["crop_box"] == ref["crop_box"], what
        assert abs(rec["predicted_iou"] - ref["predicted_iou"]) < 1e-4, what
        assert abs(float(rec["stability_score"]) - float(ref["stability_score"])) < 1e-3, what
        differ = rec["segmentation"] != ref["segmentation"]
        if differ.any():
            logits, _, _ = official_predictor.predict(
                np.array(ref["point_coords"]), np.array([1]), multimask_output=multimask_output, return_logits=True
            )  # (1, H, W)
            worst = float(np.abs(logits[0][differ]).max())
            assert worst < 1e-3, f"{what}: {int(differ.sum())} pixels differ, one at official logit {worst:.3g}"
        assert abs(rec["area"] - ref["area"]) <= int(differ.sum()), what


def test_hq_generator_one_record_per_point(tmp_path: Path) -> None:
    """With the filters off every point of a 3x3 grid yields exactly one HQ mask."""
    torch.manual_seed(8)
    model = samkit.build_sam(small_hq_config())
    generator = SamAutomaticMaskGenerator(model, points_per_side=3, **FILTERS_OFF)
    records = generator.generate(make_image(120, 160, seed=3))
    assert len(records) == 9
    assert generator.last_stats["prompts"] == 9 and generator.last_stats["masks"] == 9
    points = {tuple(r["point_coords"][0]) for r in records}
    assert len(points) == 9


def test_sam_generator_refuses_single_mask_output() -> None:
    """multimask_output=False is HQ-SAM's option; a SAM model says so instead of ignoring it."""
    torch.manual_seed(9)
    generator = SamAutomaticMaskGenerator(samkit.build_sam(small_config()), points_per_side=2)
    with pytest.raises(ValueError, match="multimask_output: False is only for HQ-SAM models"):
        generator.generate(make_image(64, 64, seed=1), multimask_output=False)
