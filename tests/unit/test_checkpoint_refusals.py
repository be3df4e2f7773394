"""Checkpoints refused with the true reason: text files, pickled code (no torch warning printed), NaN/inf tensors."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch

from samkit import build_sam
from samkit.checkpoint_checks import non_finite_tensors, not_a_checkpoint_reason
from samkit.config import ImageEncoderConfig, MaskDecoderConfig, PromptEncoderConfig, SamConfig
from samkit.weights import CheckpointError, read_state_dict

TINY = SamConfig(
    name="tiny_ckpt",
    image_encoder=ImageEncoderConfig(
        img_size=64, embed_dim=16, depth=1, num_heads=2, window_size=0, global_attn_indexes=(0,), out_chans=16
    ),
    prompt_encoder=PromptEncoderConfig(embed_dim=16, image_embedding_size=4, input_image_size=64),
    mask_decoder=MaskDecoderConfig(
        transformer_dim=16, transformer_depth=1, transformer_mlp_dim=16, transformer_num_heads=2, iou_head_hidden_dim=16
    ),
)


class _RunsCode:
    """Unpickling this runs ``os.system`` (what a malicious checkpoint does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"hello, this is a README\nnot weights\n", "text file (it starts with 'hello, this is a README')"),
        (b"cos\nsystem\n(S'echo hi'\ntR.", "text file"),  # protocol-0 text that the unpickler calls code
        (b"<!DOCTYPE html><html><body>404</body></html>", "text file"),
        (b"", "it is empty"),
        (bytes(range(7, 200)), "not a PyTorch or safetensors checkpoint"),
    ],
)
def test_a_file_that_is_no_checkpoint_is_called_what_it_is(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="weights.pth") as info:
        read_state_dict(path)
    assert fragment in str(info.value)
    assert "pickled code" not in str(info.value) and "truncated" not in str(info.value)


def test_real_checkpoints_are_not_mistaken_for_other_files(tmp_path: Path) -> None:
    path = tmp_path / "ok.pth"
    torch.save({"w": torch.ones(2)}, path)
    assert not_a_checkpoint_reason(path) is None
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    assert not_a_checkpoint_reason(legacy) is None
    assert torch.equal(read_state_dict(legacy)["w"], torch.ones(2))


def test_plain_pickle_with_code_is_one_line_and_torch_warns_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    with path.open("wb") as f:
        pickle.dump({"image_encoder.w": _RunsCode(marker)}, f, protocol=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError, match="pickled code") as info:
            read_state_dict(path)
    assert "\n" not in str(info.value)
    assert [str(w.message) for w in caught] == []  # torch's "Detected pickle protocol 4" is folded in
    assert not marker.exists()


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_non_finite_tensors_are_refused_by_name(tmp_path: Path, bad_value: float) -> None:
    torch.manual_seed(0)
    state_dict = build_sam(TINY).state_dict()
    name = "mask_decoder.iou_token.weight"
    state_dict[name] = state_dict[name].clone()
    state_dict[name][0, 3] = bad_value
    path = tmp_path / "bad.pth"
    torch.save(state_dict, path)
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")) as info:
        build_sam(TINY, path)
    kind = "1 NaN, 0 inf" if bad_value != bad_value else "0 NaN, 1 inf"
    assert kind in str(info.value)


def test_finite_checkpoint_loads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state_dict = build_sam(TINY).state_dict()
    assert non_finite_tensors(state_dict) == []
    path = tmp_path / "good.pth"
    torch.save(state_dict, path)
    loaded = build_sam(TINY, path).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state_dict.items())
