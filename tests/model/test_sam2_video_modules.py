"""SAM 2 video model pieces: configs against the official yaml, RoPE, strict loading, batching.

Fast checks that need no official model (the parity file compares the math with ``sam2``).
The models here run at a 256 input (16 x 16 memory grid) with random weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import samkit
from samkit.checkpoint_errors import CheckpointError
from samkit.config_sam2 import SAM2_VIDEO_VARIANTS, Sam2VideoConfig
from samkit.modeling.memory_attention import apply_rope, axial_rope_angles, rope_tables
from samkit.modeling.sam2_video import Sam2Video

SMALL = 256


# ------------------------------------------------------------------ configs


def official_yaml(name: str) -> dict[str, Any]:
    """The ``model`` section of the official config of ``name`` (read from the installed sam2)."""
    omegaconf = pytest.importorskip("omegaconf")
    sam2 = pytest.importorskip("sam2")
    folder = "sam2.1" if name.startswith("sam2.1_") else "sam2"
    path = Path(sam2.__file__).parent / "configs" / folder / f"{name}.yaml"
    return omegaconf.OmegaConf.to_container(omegaconf.OmegaConf.load(path))["model"]  # type: ignore[index]


# The official yaml leaves these at SAM2Base's defaults.
SAM2BASE_DEFAULTS = {
    "max_cond_frames_in_attn": -1,
    "memory_temporal_stride_for_eval": 1,
    "non_overlap_masks_for_mem_enc": False,
    "max_obj_ptrs_in_encoder": 16,
    "soft_no_obj_ptr": False,
    "add_tpos_enc_to_obj_ptrs": True,
    "proj_tpos_enc_in_obj_ptrs": False,
    "use_signed_tpos_enc_to_obj_ptrs": False,
    "no_obj_embed_spatial": False,
    "backbone_stride": 16,
}


@pytest.mark.parametrize("name", sorted(SAM2_VIDEO_VARIANTS))
def test_video_config_matches_official_yaml(name: str) -> None:
    config = SAM2_VIDEO_VARIANTS[name]
    model = official_yaml(name)
    skipped = {"_target_", "image_encoder", "memory_attention", "memory_encoder", "compile_image_encoder",
               "image_size", "directly_add_no_mem_embed", "use_high_res_features_in_sam",
               "iou_prediction_use_sigmoid", "pred_obj_scores", "pred_obj_scores_mlp"}
    for key, value in model.items():
        if key not in skipped:
            assert getattr(config, key) == value, f"{name}: {key}"
    for key, value in SAM2BASE_DEFAULTS.items():
        if key not in model:
            assert getattr(config, key) == value, f"{name}: {key} (SAM2Base default)"
    assert config.image_size == model["image_size"]
    image = config.image
    assert (image.directly_add_no_mem_embed, image.use_high_res_features) == (
        model["directly_add_no_mem_embed"], model["use_high_res_features_in_sam"])
    assert (image.pred_obj_scores, image.pred_obj_scores_mlp, image.iou_prediction_use_sigmoid) == (
        model["pred_obj_scores"], model["pred_obj_scores_mlp"], model["iou_prediction_use_sigmoid"])
    # The memory modules.
    attention = model["memory_attention"]
    layer = attention["layer"]
    ours = config.memory_attention
    assert (ours.d_model, ours.num_layers, ours.pos_enc_at_input) == (
        attention["d_model"], attention["num_layers"], attention["pos_enc_at_input"])
    assert (ours.dim_feedforward, ours.pos_enc_at_attn, ours.pos_enc_at_cross_attn_keys,
            ours.pos_enc_at_cross_attn_queries) == (layer["dim_feedforward"], layer["pos_enc_at_attn"],
                                                   layer["pos_enc_at_cross_attn_keys"], layer["pos_enc_at_cross_attn_queries"])
    assert layer["activation"] == "relu"
    for attn in (layer["self_attention"], layer["cross_attention"]):
        assert (attn["num_heads"], attn["rope_theta"], tuple(attn["feat_sizes"])) == (
            ours.num_heads, ours.rope_theta, ours.rope_feat_sizes)
    assert layer["cross_attention"]["kv_in_dim"] == ours.kv_in_dim and layer["cross_attention"]["rope_k_repeat"]
    encoder = model["memory_encoder"]
    mine = config.memory_encoder
    assert (mine.out_dim, mine.mask_kernel_size, mine.mask_stride, mine.mask_padding) == (
        encoder["out_dim"], encoder["mask_downsampler"]["kernel_size"], encoder["mask_downsampler"]["stride"],
        encoder["mask_downsampler"]["padding"])
    assert encoder["position_encoding"]["num_pos_feats"] == mine.out_dim
    fuser = encoder["fuser"]
    assert (mine.fuser_layers, mine.fuser_kernel_size, mine.fuser_padding) == (
        fuser["num_layers"], fuser["layer"]["kernel_size"], fuser["layer"]["padding"])


def test_with_image_size() -> None:
    config = SAM2_VIDEO_VARIANTS["sam2.1_hiera_t"].with_image_size(512)
    assert config.image_size == 512
    assert config.image.prompt_encoder.image_embedding_size == 32
    assert config.image.prompt_encoder.input_image_size == 512
    assert config.memory_attention.rope_feat_sizes == (32, 32)
    with pytest.raises(ValueError):
        config.with_image_size(500)


# ------------------------------------------------------------------ RoPE


def complex_rotation(x: torch.Tensor, side: int, copies: int) -> torch.Tensor:
    """An independent RoPE: features as complex pairs times unit phasors (the official formulation)."""
    d = x.shape[-1]
    angles = axial_rope_angles(d, side, side).repeat(copies, 1)  # (r*N, d/2)
    phasors = torch.polar(torch.ones_like(angles), angles)
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], d // 2, 2).contiguous())
    return torch.view_as_real(pairs * phasors).flatten(-2)


@pytest.mark.parametrize(("copies", "excluded"), [(1, 0), (3, 0), (2, 5)])
def test_rope_equals_complex_rotation(copies: int, excluded: int) -> None:
    x = torch.randn(2, 2, copies * 64 + excluded, 16, generator=torch.Generator().manual_seed(0))
    tables = rope_tables(16, 64, 10000.0, torch.device("cpu"))
    rotated = apply_rope(x, tables, num_exclude=excluded)
    grid = copies * 64
    torch.testing.assert_close(rotated[:, :, :grid], complex_rotation(x[:, :, :grid], 8, copies), rtol=0, atol=1e-6)
    assert torch.equal(rotated[:, :, grid:], x[:, :, grid:])  # pointer tokens untouched


def test_rope_scores_depend_on_offsets_only() -> None:
    """Rotated q . k is the same for two token pairs with the same (dx, dy)."""
    d, side = 32, 8
    tables = rope_tables(d, side * side, 10000.0, torch.device("cpu"))
    generator = torch.Generator().manual_seed(1)
    q, k = torch.randn(d, generator=generator), torch.randn(d, generator=generator)
    grid = torch.stack([q] * side * side).view(1, 1, side * side, d)
    keys = torch.stack([k] * side * side).view(1, 1, side * side, d)
    rq, rk = apply_rope(grid, tables)[0, 0], apply_rope(keys, tables)[0, 0]

    def token(x: int, y: int) -> int:
        return y * side + x

    first = rq[token(1, 2)] @ rk[token(4, 3)]
    second = rq[token(3, 5)] @ rk[token(6, 6)]  # same offset (3, 1)
    other = rq[token(3, 5)] @ rk[token(6, 7)]  # offset (3, 2)
    torch.testing.assert_close(first, second, rtol=1e-5, atol=1e-5)
    assert not torch.isclose(first, other, rtol=1e-3, atol=1e-3)


def test_rope_rejects_non_square_grids() -> None:
    with pytest.raises(ValueError, match="square"):
        rope_tables(16, 48, 10000.0, torch.device("cpu"))


# ------------------------------------------------------------------ strict loading


@pytest.fixture(scope="module")
def saved_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, torch.Tensor], Path]]:
    """A random sam2.1_hiera_t video state dict (shapes do not depend on the input size)."""
    torch.manual_seed(0)
    model = Sam2Video(SAM2_VIDEO_VARIANTS["sam2.1_hiera_t"].with_image_size(SMALL))
    # Noise on every tensor (several start at zero), and an object-score bias that makes objects present.
    state = {k: v + 0.02 * torch.randn(v.shape) for k, v in model.state_dict().items()}
    state["sam_mask_decoder.pred_obj_score_head.layers.2.bias"] += 2.0
    path = tmp_path_factory.mktemp("video_ckpt") / "sam2.1_hiera_tiny.pt"
    torch.save({"model": state}, path)
    yield state, path


def save(tmp_path: Path, state: dict[str, torch.Tensor]) -> Path:
    path = tmp_path / "edited.pt"
    torch.save({"model": state}, path)
    return path


def test_checkpoint_loads_every_key(saved_state: tuple[dict[str, torch.Tensor], Path]) -> None:
    state, path = saved_state
    model = samkit.build_sam_video("sam2.1_hiera_t", path)
    assert isinstance(model, Sam2Video) and not model.training
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    for key in ("memory_attention.layers.3.cross_attn_image.k_proj.weight", "maskmem_tpos_enc",
                "no_obj_embed_spatial", "obj_ptr_tpos_proj.weight", "memory_encoder.fuser.layers.1.gamma"):
        assert torch.equal(loaded[key], state[key]), key


@pytest.mark.parametrize("key", ["memory_attention.layers.2.norm2.bias", "obj_ptr_tpos_proj.weight", "no_mem_pos_enc"])
def test_missing_video_key_is_named(saved_state: tuple[dict[str, torch.Tensor], Path], tmp_path: Path, key: str) -> None:
    state, _ = saved_state
    path = save(tmp_path, {k: v for k, v in state.items() if k != key})
    with pytest.raises(CheckpointError, match="missing") as error:
        samkit.build_sam_video("sam2.1_hiera_t", path)
    assert key in str(error.value)


def test_unknown_key_is_named(saved_state: tuple[dict[str, torch.Tensor], Path], tmp_path: Path) -> None:
    state, _ = saved_state
    path = save(tmp_path, dict(state, **{"memory_encoder.fuser.layers.2.gamma": torch.zeros(256)}))
    with pytest.raises(CheckpointError, match="unexpected") as error:
        samkit.build_sam_video("sam2.1_hiera_t", path)
    assert "memory_encoder.fuser.layers.2.gamma" in str(error.value)


def test_misshaped_key_is_named(saved_state: tuple[dict[str, torch.Tensor], Path], tmp_path: Path) -> None:
    state, _ = saved_state
    path = save(tmp_path, dict(state, maskmem_tpos_enc=torch.zeros(6, 1, 1, 64)))
    with pytest.raises(CheckpointError, match="maskmem_tpos_enc"):
        samkit.build_sam_video("sam2.1_hiera_t", path)


def test_other_version_is_refused(saved_state: tuple[dict[str, torch.Tensor], Path]) -> None:
    _, path = saved_state
    with pytest.raises(CheckpointError, match="SAM 2.1 file"):
        samkit.build_sam_video("sam2_hiera_t", path)


def test_unknown_name() -> None:
    with pytest.raises(ValueError, match="unknown video variant"):
        samkit.build_sam_video("vit_b", "unused.pt")


# ------------------------------------------------------------------ batching and memory dtype


@pytest.fixture(scope="module")
def small_model(saved_state: tuple[dict[str, torch.Tensor], Path]) -> Sam2Video:
    config: Sam2VideoConfig = SAM2_VIDEO_VARIANTS["sam2.1_hiera_t"].with_image_size(SMALL)
    return samkit.build_sam_video(config, saved_state[1])


@pytest.fixture(scope="module")
def small_frames(small_model: Sam2Video) -> list[tuple[list[torch.Tensor], list[torch.Tensor], list[tuple[int, int]]]]:
    """Flattened features of two random frames: (vision_feats, vision_pos_embeds, feat_sizes) each."""
    generator = torch.Generator().manual_seed(2)
    frames = torch.randn(2, 3, SMALL, SMALL, generator=generator)
    return [small_model.prepare_backbone_features(small_model.forward_image(frames[t : t + 1]))[1:] for t in range(2)]


def track(model: Sam2Video, features: Any, t: int, clicks: dict[str, torch.Tensor] | None, bank: dict[str, Any], b: int):
    feats, pos, sizes = features[t]
    feats = [f.expand(-1, b, -1) for f in feats]  # (HW, B, C)
    pos = [p.expand(-1, b, -1) for p in pos]
    return model.track_step(t, t == 0, feats, pos, sizes, clicks, None, bank, num_frames=2)


def run_two_frames(model: Sam2Video, features: Any, clicks: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    """Frame 0 clicked, frame 1 tracked; returns both outputs."""
    bank: dict[str, dict[int, Any]] = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    b = clicks["point_coords"].shape[0]
    first = track(model, features, 0, clicks, bank, b)
    bank["cond_frame_outputs"][0] = first
    return [first, track(model, features, 1, None, bank, b)]


def test_objects_batched_equal_one_at_a_time(small_model: Sam2Video, small_frames: Any) -> None:
    clicks = {
        "point_coords": torch.tensor([[[60.0, 80.0]], [[200.0, 150.0]]]),
        "point_labels": torch.tensor([[1], [1]], dtype=torch.int32),
    }
    batched = run_two_frames(small_model, small_frames, clicks)
    assert (batched[1]["object_score_logits"] > 0).all()  # objects present: the masks carry content
    for i in range(2):
        single = run_two_frames(small_model, small_frames, {k: v[i : i + 1] for k, v in clicks.items()})
        for t in range(2):
            for key in ("pred_masks", "obj_ptr", "object_score_logits", "maskmem_features"):
                torch.testing.assert_close(batched[t][key][i : i + 1], single[t][key], rtol=1e-4, atol=1e-4,
                                           msg=lambda m: f"object {i} frame {t} {key}: {m}")


def test_bfloat16_memory_is_read_as_float32(small_model: Sam2Video, small_frames: Any) -> None:
    """A bank holding bf16 memory (as the official predictor stores it) gives what its float32 values give."""
    clicks = {"point_coords": torch.tensor([[[100.0, 90.0]]]), "point_labels": torch.tensor([[1]], dtype=torch.int32)}
    first = track(small_model, small_frames, 0, clicks, {}, 1)
    memory = first["maskmem_features"].to(torch.bfloat16)
    outputs = []
    for stored in (memory, memory.float()):
        bank = {"cond_frame_outputs": {0: dict(first, maskmem_features=stored)}, "non_cond_frame_outputs": {}}
        outputs.append(track(small_model, small_frames, 1, None, bank, 1))
    assert outputs[0]["pred_masks"].dtype == torch.float32
    for key in ("pred_masks", "obj_ptr", "maskmem_features"):
        assert torch.equal(outputs[0][key], outputs[1][key]), key
