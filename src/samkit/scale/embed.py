"""``samkit embed``'s per-image work: encode an image, return its embedding file's bytes."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..io import ImageReadError, load_image
from ..jobs import ImageTask, TaskFailed, build_model

__all__ = ["EmbedWork", "embed_task"]


def embed_task(predictor: Any, task: ImageTask) -> bytes:
    """Encode one image.

    Args:
        predictor: a :class:`samkit.SamPredictor`.
        task: the image.

    Returns:
        what :meth:`samkit.SamPredictor.save_embedding` writes: a safetensors file holding
        ``features`` (1, C, h, w) float32 (and the HQ / SAM 2 decoder's extra levels) and the
        image sizes; read back with ``SamPredictor.load_embedding``.

    Raises:
        samkit.jobs.TaskFailed: the file is not a readable image.
    """
    import torch

    try:
        image = load_image(task.path)  # (H, W, 3) uint8
    except (ImageReadError, OSError, ValueError) as exc:
        raise TaskFailed(f"cannot read image: {exc}") from None
    with torch.inference_mode():
        predictor.set_image(image)
        data = predictor.embedding_bytes()
        predictor.reset_image()
    return data


@dataclass(frozen=True)
class EmbedWork:
    """:func:`embed_task` as an :class:`samkit.jobs.ImageWork` (built in each worker).

    Attributes:
        model_factory: builds the model; must pickle for the Ray engine.
    """

    model_factory: Callable[[], Any]

    def build(self) -> Callable[[ImageTask], bytes]:
        """A predictor around a new model replica, bound into :func:`embed_task`."""
        from ..predictor import SamPredictor

        return functools.partial(embed_task, SamPredictor(build_model(self.model_factory)))
