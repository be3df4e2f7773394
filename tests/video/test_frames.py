"""Frame sources: ordering, the official preprocessing, lazy decoding, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from samkit.video import VideoReadError, open_frames
from samkit.video.frames import FrameFolder, VideoFile

cv2 = pytest.importorskip("cv2")


def random_frames(count: int, height: int = 30, width: int = 44, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8) for _ in range(count)]


def test_folder_matches_official_loader(tmp_path: Path) -> None:
    """Model inputs equal the official loader's, bit for bit, for JPEG frames."""
    from sam2.utils.misc import load_video_frames_from_jpg_images

    for i, frame in enumerate(random_frames(3)):
        Image.fromarray(frame).save(tmp_path / f"{i:05d}.jpg")
    official, height, width = load_video_frames_from_jpg_images(
        str(tmp_path), 64, offload_video_to_cpu=True, compute_device=torch.device("cpu")
    )
    frames = open_frames(tmp_path)
    assert isinstance(frames, FrameFolder)
    assert (frames.num_frames, frames.video_height, frames.video_width) == (3, height, width)
    for i in range(3):
        assert torch.equal(frames.model_input(i, 64), official[i])


def test_folder_order_is_numeric(tmp_path: Path) -> None:
    frames = random_frames(12)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / f"frame_{i}.png")  # frame_10 sorts after frame_9
    (tmp_path / "notes.txt").write_text("not a frame")
    source = open_frames(tmp_path)
    assert len(source) == 12
    for i in (0, 2, 9, 10, 11):
        assert np.array_equal(source.rgb(i), frames[i])


def test_cache_is_bounded(tmp_path: Path) -> None:
    for i, frame in enumerate(random_frames(6)):
        Image.fromarray(frame).save(tmp_path / f"{i}.png")
    source = open_frames(tmp_path, cache_frames=2)
    first = source.model_input(0, 32)
    assert source.model_input(0, 32) is first  # served from the cache
    for i in range(6):
        source.model_input(i, 32)
    assert len(source._cache) == 2  # noqa: SLF001 - the bound is the point of the test


def test_video_file_random_access(tmp_path: Path) -> None:
    """Frames read out of order (reverse tracking) equal the frames read in order."""
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (44, 30))
    for frame in random_frames(30):
        writer.write(frame)
    writer.release()
    in_order = VideoFile(path)
    sequential = [in_order.rgb(i) for i in range(len(in_order))]
    assert len(sequential) == 30
    source = open_frames(path)
    assert (source.video_height, source.video_width) == (30, 44)
    for i in (29, 28, 3, 15, 0, 27, 14, 13):
        assert np.array_equal(source.rgb(i), sequential[i]), f"frame {i}"
    source.close()


@pytest.mark.parametrize("case", ["missing", "empty folder", "not a video", "no number"])
def test_errors_are_one_line(tmp_path: Path, case: str) -> None:
    if case == "missing":
        target, expected = tmp_path / "nope", "no such file or folder"
    elif case == "empty folder":
        target, expected = tmp_path, "no JPEG or PNG frames"
    elif case == "not a video":
        target = tmp_path / "clip.mp4"
        target.write_bytes(b"this is not a video")
        expected = "cannot read"
    else:
        Image.fromarray(random_frames(1)[0]).save(tmp_path / "frame.png")
        target, expected = tmp_path, "no frame number"
    with pytest.raises(VideoReadError, match=expected) as info:
        open_frames(target)
    assert "\n" not in str(info.value)


def test_frame_index_out_of_range(tmp_path: Path) -> None:
    Image.fromarray(random_frames(1)[0]).save(tmp_path / "0.jpg")
    with pytest.raises(IndexError, match=r"frame 3 does not exist: .* frames 0\.\.0"):
        open_frames(tmp_path).rgb(3)
