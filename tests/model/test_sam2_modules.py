"""SAM 2 encoder pieces against the official modules on small inputs (fast, every run).

The Hiera trunk runs on 160x160 and 224x224 images, whose grids (40, 56; then 20/28, 10/14, 5/7)
make the windowed blocks pad their windows, which 1024 inputs of the released sizes never do.
"""

from __future__ import annotations

import pytest
import torch
from sam2.modeling.backbones.hieradet import Hiera as OfficialHiera
from sam2.modeling.position_encoding import PositionEmbeddingSine

from samkit.config_sam2 import HieraConfig
from samkit.modeling.fpn_neck import sine_position_encoding
from samkit.modeling.hiera import Hiera


@pytest.mark.parametrize("size", [(64, 64), (32, 48), (7, 5)])
def test_sine_position_encoding(size: tuple[int, int]) -> None:
    official = PositionEmbeddingSine(num_pos_feats=256, normalize=True, temperature=10000, warmup_cache=False)
    expected = official(torch.zeros(1, 256, *size))[0]  # (256, h, w)
    torch.testing.assert_close(sine_position_encoding(*size, 256), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("image_size", [160, 224])
def test_hiera_trunk(image_size: int) -> None:
    config = HieraConfig(
        embed_dim=32, num_heads=1, stages=(1, 2, 3, 2), global_att_blocks=(4, 5),
        window_pos_embed_bkg_spatial_size=(7, 7), window_spec=(8, 4, 14, 7),
    )
    official = OfficialHiera(
        embed_dim=32, num_heads=1, stages=(1, 2, 3, 2), global_att_blocks=(4, 5),
        window_pos_embed_bkg_spatial_size=(7, 7), window_spec=(8, 4, 14, 7),
    ).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in official.state_dict().values():
            tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.02)
    ours = Hiera(config).eval()
    ours.load_state_dict(official.state_dict(), strict=True)
    images = torch.randn(2, 3, image_size, image_size, generator=generator)
    with torch.no_grad():
        expected = official(images)
        got = ours(images)
    assert ours.channel_list == official.channel_list
    assert len(got) == len(expected) == 4
    for mine, theirs in zip(got, expected):
        scale = max(1.0, float(theirs.abs().max()))
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4 * scale)
