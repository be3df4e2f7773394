"""SAM 2 checkpoints through samkit's strict loader: what loads, what is set aside, what is refused.

The files are official-format ``{"model": state_dict}`` dicts written from a samkit model plus
stand-ins for the video-only entries (no official package needed here; the parity tests load
real official state dicts).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import samkit
from samkit.build_sam2 import get_sam2_config
from samkit.modeling.sam2 import Sam2
from samkit.weights import CheckpointError

VIDEO_ONLY = {
    "memory_attention.layers.0.norm1.weight": torch.ones(256),
    "memory_encoder.out_proj.weight": torch.ones(64, 256, 1, 1),
    "obj_ptr_proj.layers.0.weight": torch.ones(256, 256),
    "mask_downsample.weight": torch.ones(1, 1, 4, 4),
    "maskmem_tpos_enc": torch.ones(7, 1, 1, 64),
    "no_mem_pos_enc": torch.ones(1, 1, 256),
    "no_obj_ptr": torch.ones(1, 256),
}


@pytest.fixture(scope="module")
def image_state() -> dict[str, torch.Tensor]:
    """A seeded hiera_t image model's state dict."""
    torch.manual_seed(0)
    model = Sam2(get_sam2_config("sam2.1_hiera_t"))
    return {k: v.clone() for k, v in model.state_dict().items()}


def save(path: Path, state: dict[str, torch.Tensor]) -> Path:
    torch.save({"model": state}, path)
    return path


def sam21_file(tmp_path: Path, image_state: dict[str, torch.Tensor], **changes: torch.Tensor | None) -> Path:
    state = {**image_state, **VIDEO_ONLY, "no_obj_embed_spatial": torch.ones(1, 64)}
    for key, value in changes.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    return save(tmp_path / "sam2.1_hiera_tiny.pt", state)


def test_official_layout_loads_and_video_entries_are_set_aside(tmp_path: Path, image_state: dict) -> None:
    model = samkit.build_sam("sam2.1_hiera_t", sam21_file(tmp_path, image_state))
    loaded = model.state_dict()
    assert set(loaded) == set(image_state)
    for key, value in image_state.items():
        assert torch.equal(loaded[key], value), key
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_missing_key_is_named(tmp_path: Path, image_state: dict) -> None:
    path = sam21_file(tmp_path, image_state, **{"sam_mask_decoder.conv_s0.weight": None})
    with pytest.raises(CheckpointError, match=r"1 missing keys \(sam_mask_decoder\.conv_s0\.weight\)"):
        samkit.build_sam("sam2.1_hiera_t", path)


def test_unknown_key_is_named(tmp_path: Path, image_state: dict) -> None:
    path = sam21_file(tmp_path, image_state, **{"image_encoder.trunk.extra.weight": torch.ones(3)})
    with pytest.raises(CheckpointError, match=r"unexpected keys \(image_encoder\.trunk\.extra\.weight\)"):
        samkit.build_sam("sam2.1_hiera_t", path)


def test_wrong_shape_is_named(tmp_path: Path, image_state: dict) -> None:
    path = sam21_file(tmp_path, image_state, **{"no_mem_embed": torch.ones(1, 1, 128)})
    with pytest.raises(CheckpointError, match=r"no_mem_embed: checkpoint \(1, 1, 128\) vs model \(1, 1, 256\)"):
        samkit.build_sam("sam2.1_hiera_t", path)


def test_other_size_is_refused(tmp_path: Path, image_state: dict) -> None:
    with pytest.raises(CheckpointError, match="does not fit the sam2.1_hiera_s model"):
        samkit.build_sam("sam2.1_hiera_s", sam21_file(tmp_path, image_state))


def test_versions_are_told_apart(tmp_path: Path, image_state: dict) -> None:
    sam20 = save(tmp_path / "sam2_hiera_tiny.pt", {**image_state, **VIDEO_ONLY})
    with pytest.raises(CheckpointError, match="is a SAM 2.0 file, not sam2.1_hiera_t"):
        samkit.build_sam("sam2.1_hiera_t", sam20)
    assert isinstance(samkit.build_sam("sam2_hiera_t", sam20), Sam2)
    with pytest.raises(CheckpointError, match="is a SAM 2.1 file, not sam2_hiera_t"):
        samkit.build_sam("sam2_hiera_t", sam21_file(tmp_path, image_state))


def test_truncated_file(tmp_path: Path, image_state: dict) -> None:
    path = sam21_file(tmp_path, image_state)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        samkit.build_sam("sam2.1_hiera_t", path)


def test_sam1_checkpoint_is_refused(tmp_path: Path) -> None:
    state = {"image_encoder.pos_embed": torch.zeros(1, 64, 64, 768), "image_encoder.blocks.0.norm1.weight": torch.ones(768)}
    with pytest.raises(CheckpointError, match="sam2.1_hiera_t"):
        samkit.build_sam("sam2.1_hiera_t", save(tmp_path / "sam.pth", state))
