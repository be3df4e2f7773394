"""The video session holds a bounded number of outputs, and never one the tracker still reads.

A stand-in model (``fake_video_model.ReadCheckingModel``) returns tiny outputs instantly and
records every read the official tracker would make that the memory bank cannot serve. The
retention rule in ``samkit.video.state`` may only drop outputs no such read needs, for the
workflows it promises.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fake_video_model import ReadCheckingModel
from PIL import Image

from samkit.video import SamVideoPredictor


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("long_clip")
    frame = np.zeros((6, 8, 3), dtype=np.uint8)
    for i in range(256):
        Image.fromarray(frame).save(folder / f"{i:05d}.png")
    return folder


def session(folder: Path, num_frames: int, keep_all: bool = False) -> tuple[SamVideoPredictor, Any]:
    """A predictor on the first ``num_frames`` frames of the clip (the rest are moved away)."""
    from samkit.video.frames import FrameFolder

    frames = FrameFolder(folder)
    frames.paths = frames.paths[:num_frames]
    frames.num_frames = num_frames
    predictor = SamVideoPredictor(ReadCheckingModel(), keep_all_frames=keep_all)  # type: ignore[arg-type]
    return predictor, predictor.init_state(frames)


@pytest.mark.parametrize("num_frames", [8, 64, 256])
def test_stored_outputs_do_not_grow_with_the_video(long_clip: Path, num_frames: int) -> None:
    predictor, state = session(long_clip, num_frames)
    predictor.add_new_points_or_box(state, 0, "a", points=[[2, 2]], labels=[1])
    predictor.add_new_points_or_box(state, 0, "b", points=[[5, 3]], labels=[1])
    assert [f for f, _, _ in predictor.propagate_in_video(state)] == list(range(num_frames))
    reach = predictor.reach
    assert reach == 15
    # Per object: the prompted frame, `reach` frames after it, `reach + 1` frames up to the end.
    assert state.stored_outputs() == 2 * min(num_frames, 1 + reach + reach + 1)
    assert predictor.model.misses == []


def test_keep_all_frames_keeps_every_output(long_clip: Path) -> None:
    predictor, state = session(long_clip, 64, keep_all=True)
    predictor.add_new_points_or_box(state, 0, "a", points=[[2, 2]], labels=[1])
    list(predictor.propagate_in_video(state))
    assert state.stored_outputs() == 64


def test_supported_workflows_read_everything_the_official_reads(long_clip: Path) -> None:
    """Prompt mid-video, track forwards in two legs, backwards, correct near the prompt, re-track."""
    predictor, state = session(long_clip, 256)
    model = predictor.model
    predictor.add_new_points_or_box(state, 120, 1, points=[[2, 2]], labels=[1])
    list(predictor.propagate_in_video(state, max_frame_num_to_track=60))  # 120..180
    list(predictor.propagate_in_video(state, start_frame_idx=181))  # continue to the end
    list(predictor.propagate_in_video(state, reverse=True))  # 120..0
    predictor.add_new_points_or_box(state, 126, 1, points=[[3, 3]], labels=[0])  # correction near the prompt
    list(predictor.propagate_in_video(state, start_frame_idx=127, max_frame_num_to_track=20))
    predictor.add_new_points_or_box(state, 145, 1, points=[[3, 3]], labels=[1])  # near the last frame tracked
    list(predictor.propagate_in_video(state, start_frame_idx=146, max_frame_num_to_track=5))
    assert model.misses == []
    assert state.stored_outputs() <= 4 * (2 * predictor.reach + 1)


@pytest.mark.parametrize("workflow", ["restart far away", "return to dropped frames"])
def test_the_documented_limit(long_clip: Path, workflow: str, caplog: pytest.LogCaptureFixture) -> None:
    """Reading outputs dropped earlier reads less than the official (and says so); keep_all_frames fixes it."""
    for keep_all, expect_misses in ((False, True), (True, False)):
        caplog.clear()
        predictor, state = session(long_clip, 128, keep_all=keep_all)
        predictor.add_new_points_or_box(state, 30, 1, points=[[2, 2]], labels=[1])
        list(predictor.propagate_in_video(state))  # 30..127
        if workflow == "restart far away":
            list(predictor.propagate_in_video(state, start_frame_idx=80, max_frame_num_to_track=2))
        else:
            list(predictor.propagate_in_video(state, reverse=True))  # 30..0: frames 46..111 dropped
            predictor.add_new_points_or_box(state, 60, 1, points=[[3, 3]], labels=[1])  # a correction there
        assert bool(predictor.model.misses) == expect_misses
        assert ("were not kept" in caplog.text) == expect_misses
