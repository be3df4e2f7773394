"""Video frame sources: a folder of JPEG/PNG frames or a video file, decoded lazily.

The official predictor (``sam2.utils.misc.load_video_frames``) decodes the whole clip into one
(T, 3, S, S) float32 tensor up front: 12 MB per frame at S=1024, so a 256-frame clip holds 3 GB
before tracking starts. samkit decodes a frame when the tracker asks for it and keeps only the
last ``cache_frames`` preprocessed frames, so memory does not grow with the length of the video.

Preprocessing is the official one, step for step (``load_video_frames_from_jpg_images``):
``PIL.Image.convert("RGB").resize((S, S))`` (Pillow's default filter for RGB images, bicubic,
on uint8), divided by 255 in float64, stored as float32, then ``(x - mean) / std`` with the
ImageNet mean and std in float32. Video files are decoded with OpenCV and then go through the
same PIL path, so a video file and its frames extracted losslessly give the same model input
(the official reads video files with decord, which resizes inside the decoder).
"""

from __future__ import annotations

import logging
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ..io import ImageReadError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "FRAME_SUFFIXES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "FrameFolder",
    "FrameSource",
    "VideoFile",
    "VideoReadError",
    "open_frames",
    "preprocess_frame",
]

logger = logging.getLogger(__name__)

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_NUMBER = re.compile(r"\d+")


class VideoReadError(ImageReadError):
    """A video or frame folder that cannot be read (missing, empty, undecodable)."""


def preprocess_frame(frame: Image.Image, image_size: int) -> torch.Tensor:
    """One frame as the model's input, exactly as the official video loader prepares it.

    Args:
        frame: a decoded frame, any PIL mode.
        image_size: side S of the square model input.

    Returns:
        (3, S, S) float32, normalized with the ImageNet mean and std.
    """
    import torch

    resized = np.asarray(frame.convert("RGB").resize((image_size, image_size), Image.Resampling.BICUBIC))
    scaled = torch.from_numpy(resized / 255.0).permute(2, 0, 1).float()  # (3, S, S), float64 -> float32
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None, None]  # (3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32)[:, None, None]  # (3, 1, 1)
    return (scaled - mean) / std


class FrameSource:
    """Frames of one video, decoded on demand, with a small LRU cache of model inputs.

    Subclasses implement ``_read(index) -> PIL.Image``; everything else is shared.

    Attributes:
        num_frames: T, the number of frames.
        video_height, video_width: H, W of the original frames.
        name: what to call the video in messages.
    """

    num_frames: int
    video_height: int
    video_width: int
    name: str

    def __init__(self, cache_frames: int = 2) -> None:
        if cache_frames < 1:
            raise ValueError(f"cache_frames: expected >= 1, got {cache_frames}")
        self.cache_frames = cache_frames
        self._cache: OrderedDict[tuple[int, int, str], torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return self.num_frames

    def _check_index(self, index: int) -> int:
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise TypeError(f"frame index: expected an int, got {type(index).__name__}")
        if not 0 <= index < self.num_frames:
            raise IndexError(f"frame {index} does not exist: {self.name} has frames 0..{self.num_frames - 1}")
        return int(index)

    def _read(self, index: int) -> Image.Image:
        raise NotImplementedError

    def rgb(self, index: int) -> np.ndarray:
        """The original frame ``index`` as (H, W, 3) uint8 RGB (not cached)."""
        return np.asarray(self._read(self._check_index(index)).convert("RGB"))

    def model_input(self, index: int, image_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Frame ``index`` preprocessed for the model, from the cache when it is there.

        Returns:
            (3, S, S) float32 on ``device``.
        """
        import torch

        index = self._check_index(index)
        key = (index, image_size, str(torch.device(device)))
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        image = preprocess_frame(self._read(index), image_size).to(device)
        self._cache[key] = image
        while len(self._cache) > self.cache_frames:
            self._cache.popitem(last=False)
        return image

    def close(self) -> None:
        """Release the decoder and the cache."""
        self._cache.clear()

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _frame_number(path: Path) -> int:
    numbers = _NUMBER.findall(path.stem)
    if not numbers:
        raise VideoReadError(f"cannot order frames in {path.parent}: {path.name} has no frame number in its name")
    return int(numbers[-1])


class FrameFolder(FrameSource):
    """A folder of JPEG/PNG frames ordered by the (last) number in each file name.

    ``00000.jpg, 00001.jpg, ...`` (what ``ffmpeg -start_number 0 %05d.jpg`` writes, the official
    layout) and ``frame_1.png, frame_2.png, ..., frame_10.png`` both sort numerically.
    """

    def __init__(self, folder: str | os.PathLike[str], cache_frames: int = 2) -> None:
        super().__init__(cache_frames)
        folder = Path(folder)
        self.name = str(folder)
        if not folder.exists():
            raise VideoReadError(f"cannot read {folder}: no such folder")
        if not folder.is_dir():
            raise VideoReadError(f"cannot read {folder}: not a folder")
        files = [p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES and p.is_file()]
        if not files:
            raise VideoReadError(f"cannot read {folder}: no JPEG or PNG frames in it")
        self.paths = sorted(files, key=lambda p: (_frame_number(p), p.name))
        self.num_frames = len(self.paths)
        self.video_width, self.video_height = self._size(self.paths[0])

    def _size(self, path: Path) -> tuple[int, int]:
        try:
            with Image.open(path) as image:
                return image.size
        except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
            raise VideoReadError(f"cannot read frame {path}: {type(e).__name__}: {e}") from e

    def _read(self, index: int) -> Image.Image:
        path = self.paths[index]
        try:
            with Image.open(path) as image:
                image.load()
                frame = image
        except Exception as e:  # noqa: BLE001
            raise VideoReadError(f"cannot read frame {path}: {type(e).__name__}: {e}") from e
        if frame.size != (self.video_width, self.video_height):
            raise VideoReadError(
                f"frame {path} is {frame.size[0]}x{frame.size[1]}, the first frame is "
                f"{self.video_width}x{self.video_height}: all frames must have one size"
            )
        return frame


class VideoFile(FrameSource):
    """A video file decoded with OpenCV, one frame at a time.

    The frame count is taken by grabbing every frame once when the file is opened (container
    headers are often wrong). Reading forward decodes sequentially; a jump backwards (reverse
    tracking) or far forward seeks with ``CAP_PROP_POS_FRAMES``.
    """

    #: forward jumps up to this many frames are decoded through rather than sought.
    max_grab_ahead = 32

    def __init__(self, path: str | os.PathLike[str], cache_frames: int = 2) -> None:
        super().__init__(cache_frames)
        from ..everything.optional import require_cv2

        self._cv2 = require_cv2("reading a video file")
        path = Path(path)
        self.name = str(path)
        if not path.exists():
            raise VideoReadError(f"cannot read {path}: no such file")
        if path.is_dir():
            raise VideoReadError(f"cannot read {path}: it is a directory")
        self.path = path
        self._capture: Any = None
        self._next = 0  # index of the frame the next read() returns
        capture = self._open()
        count = 0
        while capture.grab():
            count += 1
        if count == 0:
            self.close()
            raise VideoReadError(f"cannot read {path}: no decodable video frames")
        self.num_frames = count
        self._open()  # back to frame 0
        first = self._decode(0)
        self.video_height, self.video_width = first.shape[:2]

    def _open(self) -> Any:
        if self._capture is not None:
            self._capture.release()
        capture = self._cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            raise VideoReadError(f"cannot read {self.path}: not a video OpenCV can decode")
        self._capture, self._next = capture, 0
        return capture

    def _decode(self, index: int) -> np.ndarray:
        """Frame ``index`` as (H, W, 3) uint8 RGB."""
        cv2 = self._cv2
        capture = self._capture if self._capture is not None else self._open()
        if index < self._next or index > self._next + self.max_grab_ahead:
            if not capture.set(cv2.CAP_PROP_POS_FRAMES, index):  # some backends cannot seek
                capture = self._open()
            else:
                self._next = index
        while self._next < index:
            if not capture.grab():
                break
            self._next += 1
        ok, bgr = capture.read()
        if not ok or self._next != index:
            self._capture = None
            raise VideoReadError(f"cannot read frame {index} of {self.path}: the decoder stopped")
        self._next = index + 1
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def _read(self, index: int) -> Image.Image:
        return Image.fromarray(self._decode(index))

    def close(self) -> None:
        super().close()
        if self._capture is not None:
            self._capture.release()
            self._capture = None


def open_frames(video: str | os.PathLike[str] | FrameSource, cache_frames: int = 2) -> FrameSource:
    """A frame source for a folder of frames, a video file, or an already open source.

    Raises:
        VideoReadError: missing path, empty folder, undecodable video (one-line message).
    """
    if isinstance(video, FrameSource):
        return video
    path = Path(video)
    if path.is_dir():
        return FrameFolder(path, cache_frames=cache_frames)
    if not path.exists():
        raise VideoReadError(f"cannot read {path}: no such file or folder")
    return VideoFile(path, cache_frames=cache_frames)
