"""SamVideoPredictor's bookkeeping and errors, on the instant stand-in model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fake_video_model import ReadCheckingModel
from PIL import Image

import samkit
from samkit.video import NO_OBJ_SCORE, SamVideoPredictor, VideoReadError, VideoState


@pytest.fixture
def predictor_and_state(tmp_path: Path) -> tuple[SamVideoPredictor, VideoState]:
    for i in range(10):
        Image.fromarray(np.full((6, 8, 3), i, dtype=np.uint8)).save(tmp_path / f"{i:05d}.jpg")
    predictor = SamVideoPredictor(ReadCheckingModel())  # type: ignore[arg-type]
    return predictor, predictor.init_state(tmp_path)


def test_exported_from_samkit() -> None:
    assert samkit.SamVideoPredictor is SamVideoPredictor


def test_objects_keep_their_first_prompt_order(predictor_and_state: tuple[SamVideoPredictor, VideoState]) -> None:
    predictor, state = predictor_and_state
    _, ids, masks = predictor.add_new_points_or_box(state, 2, "car", points=[[1, 1]], labels=[1])
    assert ids == ["car"] and masks.shape == (1, 1, 6, 8)
    _, ids, masks = predictor.add_new_points_or_box(state, 4, 7, box=[0, 0, 5, 5])
    assert ids == ["car", 7] and masks.shape == (2, 1, 6, 8)
    # "car" has nothing on frame 4: the placeholder logit everywhere.
    assert bool((masks[0] == NO_OBJ_SCORE).all()) and not bool((masks[1] == NO_OBJ_SCORE).all())
    frames = [f for f, _, _ in predictor.propagate_in_video(state)]
    assert frames == list(range(2, 10))  # from the earliest prompted frame


def test_remove_object_and_reset(predictor_and_state: tuple[SamVideoPredictor, VideoState]) -> None:
    predictor, state = predictor_and_state
    predictor.add_new_points_or_box(state, 0, 1, points=[[1, 1]], labels=[1])
    predictor.add_new_points_or_box(state, 0, 2, points=[[2, 2]], labels=[1])
    list(predictor.propagate_in_video(state))
    ids, updated = predictor.remove_object(state, 1)
    assert ids == [2] and [f for f, _ in updated] == [0] and updated[0][1].shape == (1, 1, 6, 8)
    assert predictor.remove_object(state, 99) == ([2], [])
    with pytest.raises(KeyError, match="no such object"):
        predictor.remove_object(state, 99, strict=True)
    predictor.reset_state(state)
    assert state.obj_ids == [] and state.stored_outputs() == 0
    state.close()
    assert state.features.backbone_out is None


def test_clearing_the_only_prompt_leaves_the_object_without_one(
    predictor_and_state: tuple[SamVideoPredictor, VideoState],
) -> None:
    predictor, state = predictor_and_state
    predictor.add_new_points_or_box(state, 3, 1, points=[[1, 1]], labels=[1])
    frame, ids, masks = predictor.clear_all_prompts_in_frame(state, 3, 1)
    assert (frame, ids) == (3, [1]) and bool((masks == NO_OBJ_SCORE).all())
    with pytest.raises(ValueError, match="object 1 has no prompt"):
        list(predictor.propagate_in_video(state))


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"frame_idx": 10, "points": [[1, 1]], "labels": [1]}, IndexError, r"frame 10 does not exist: .* 0\.\.9"),
        ({"frame_idx": 0, "points": [[1, 1]]}, ValueError, "together"),
        ({"frame_idx": 0}, ValueError, "points and labels, a box, or both"),
        ({"frame_idx": 0, "points": [[1, 1], [2, 2]], "labels": [1]}, ValueError, "2 points but 1 labels"),
        ({"frame_idx": 0, "box": [0, 0, 3, 3], "clear_old_points": False}, ValueError, "clear_old_points=True"),
        ({"frame_idx": 0, "box": [0, 0, 3]}, ValueError, "x0, y0, x1, y1"),
        ({"frame_idx": 0, "points": [[np.nan, 1]], "labels": [1]}, ValueError, "NaN"),
    ],
)
def test_bad_prompts(
    predictor_and_state: tuple[SamVideoPredictor, VideoState], kwargs: dict, error: type, message: str
) -> None:
    predictor, state = predictor_and_state
    with pytest.raises(error, match=message):
        predictor.add_new_points_or_box(state, obj_id=1, **kwargs)


def test_nothing_to_propagate(predictor_and_state: tuple[SamVideoPredictor, VideoState]) -> None:
    predictor, state = predictor_and_state
    with pytest.raises(ValueError, match="no object has a prompt"):
        list(predictor.propagate_in_video(state))


def test_bad_mask_and_bad_video(predictor_and_state: tuple[SamVideoPredictor, VideoState], tmp_path: Path) -> None:
    predictor, state = predictor_and_state
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        predictor.add_new_mask(state, 0, 1, np.zeros((2, 3, 4)))
    _, _, masks = predictor.add_new_mask(state, 0, 1, torch.ones(6, 8, dtype=torch.bool))
    assert masks.shape == (1, 1, 6, 8)
    with pytest.raises(VideoReadError, match="no such file or folder"):
        predictor.init_state(tmp_path / "missing.mp4")
