"""``SamPredictor``: encode an image once, then decode any number of prompts.

The surface follows the official predictor (``set_image``, ``predict``,
``predict_torch``, ``get_image_embedding``, ``reset_image``) so existing code works
unchanged; on top of it: several boxes in one numpy ``predict``, saving and
loading embeddings, and input validation with readable errors.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .embedding_file import EMBEDDING_FORMAT, embedding_file_bytes, read_embedding_file
from .io import to_rgb_uint8
from .memory import tensor_nbytes
from .modeling import ImageSideCache, Sam
from .modeling.hq_sam import HQImageCache, HQSam
from .modeling.sam2 import Sam2, Sam2ImageCache
from .prompts import as_boxes, as_labels, as_mask_input, as_points, check_torch_prompts
from .square_transform import ResizeSquare
from .transforms import ResizeLongestSide

__all__ = ["SamPredictor", "EMBEDDING_FORMAT"]

logger = logging.getLogger(__name__)



class SamPredictor:
    """Prompted mask prediction on one image at a time.

    Args:
        sam_model: a :class:`samkit.modeling.Sam` (see :func:`samkit.build_sam`).
    """

    def __init__(self, sam_model: Sam) -> None:
        if not isinstance(sam_model, (Sam, Sam2)):
            raise TypeError(f"sam_model: expected a samkit Sam model, got {type(sam_model).__name__}")
        self.model = sam_model
        # SAM 1 resizes the longest side and pads; SAM 2 stretches the image to the square.
        self.transform: ResizeLongestSide | ResizeSquare = (
            sam_model.image_transform() if isinstance(sam_model, Sam2) else ResizeLongestSide(sam_model.img_size)
        )
        self.reset_image()

    # ------------------------------------------------------------------ image
    @property
    def device(self) -> torch.device:
        """Device of the model."""
        return self.model.device

    def reset_image(self) -> None:
        """Forget the current image and its embedding."""
        self.is_image_set = False
        self.features: Tensor | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None
        self._cache: ImageSideCache | HQImageCache | Sam2ImageCache | None = None
        # Per image of set_image_batch: (features, decoder cache, original size, input size).
        self._batch: list[tuple[Tensor, Any, tuple[int, int], tuple[int, int]]] = []

    def set_image(self, image: np.ndarray | Image.Image, image_format: str = "RGB") -> None:
        """Encode an image; prompts given later refer to its pixels.

        Args:
            image: (H, W, 3) uint8 array in ``image_format`` order, or any array/PIL image that
                :func:`samkit.io.to_rgb_uint8` accepts (grayscale, RGBA, 16-bit, float in [0, 1]).
            image_format: "RGB" or "BGR" channel order of a 3-channel array.
        """
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format: expected 'RGB' or 'BGR', got {image_format!r}")
        array = to_rgb_uint8(image)
        if image_format != self.model.image_format and isinstance(image, np.ndarray):
            array = np.ascontiguousarray(array[..., ::-1])
        resized = self.transform.apply_image(array)  # (h, w, 3) uint8
        tensor = torch.from_numpy(np.array(resized)).permute(2, 0, 1).unsqueeze(0).to(self.device)  # (1, 3, h, w)
        self.set_torch_image(tensor, (int(array.shape[0]), int(array.shape[1])))

    @torch.inference_mode()
    def set_torch_image(self, transformed_image: Tensor, original_image_size: tuple[int, ...]) -> None:
        """Encode an image that is already resized (longest side = ``img_size``).

        Args:
            transformed_image: (1, 3, h, w) pixel values 0..255.
            original_image_size: (H, W) of the image before resizing.
        """
        if not isinstance(transformed_image, Tensor):
            raise TypeError("transformed_image: expected a torch.Tensor of shape (1, 3, h, w)")
        s = self.model.img_size
        if (
            transformed_image.ndim != 4
            or transformed_image.shape[:2] != (1, 3)
            or max(transformed_image.shape[2:]) != s
        ):
            raise ValueError(
                f"transformed_image: expected shape (1, 3, h, w) with longest side {s}, "
                f"got {tuple(transformed_image.shape)}"
            )
        self.reset_image()
        self.original_size = (int(original_image_size[0]), int(original_image_size[1]))
        self.input_size = (int(transformed_image.shape[-2]), int(transformed_image.shape[-1]))
        images = self.model.preprocess(transformed_image.to(self.device))
        self.features, self._cache = self.model.encode_for_decoding(images)
        self.is_image_set = True

    def nbytes(self) -> int:
        """Bytes of tensor memory held for the current image: the embedding and every tensor of
        the decoder's per-image cache (per-layer projections, HQ / high-resolution features).

        0 when no image is set. The server bounds its embedding cache with this.
        """
        return tensor_nbytes((self.features, self._cache))

    def get_image_embedding(self) -> Tensor:
        """The (1, 256, 64, 64) embedding of the current image."""
        self._require_image()
        assert self.features is not None
        return self.features

    @property
    def decoder_cache(self) -> ImageSideCache | HQImageCache | Sam2ImageCache | None:
        """The current image's per-image decoder state besides the embedding (what
        ``model.encode_for_decoding`` returned): prompt-independent transformer work for SAM 1,
        plus the HQ features (HQ-SAM) or the high-resolution levels (SAM 2). None without an image.

        Read-only for callers that decode on their own, such as segment-everything.
        """
        return self._cache

    @property
    def hq_features(self) -> Tensor | None:
        """HQ-SAM models: the (1, 32, 256, 256) HQ features of the current image; else None."""
        return self._cache.hq_features if isinstance(self._cache, HQImageCache) else None

    @property
    def high_res_features(self) -> tuple[Tensor, ...] | None:
        """SAM 2 models: the current image's projected stride-4 and stride-8 levels
        ((1, 32, 256, 256), (1, 64, 128, 128)) that the decoder's upscaling adds; else None."""
        return self._cache.high_res_features if isinstance(self._cache, Sam2ImageCache) else None

    def save_embedding(self, path: str | os.PathLike[str]) -> None:
        """Save the current embedding (safetensors, no pickle) to reuse it without re-encoding.

        HQ-SAM models also save the image's (1, 32, 256, 256) HQ features (``hq_features``).
        """
        from .io import atomic_write_bytes

        atomic_write_bytes(path, self.embedding_bytes())

    def embedding_bytes(self) -> bytes:
        """The content of the file :meth:`save_embedding` writes (for writers in another process)."""
        self._require_image()
        assert self.features is not None and self.original_size is not None and self.input_size is not None
        extra: dict[str, Tensor] = {}
        if isinstance(self._cache, HQImageCache):
            extra["hq_features"] = self._cache.hq_features
        if isinstance(self._cache, Sam2ImageCache):  # SAM 2: the decoder's high-resolution levels
            extra.update({f"high_res_features.{i}": level for i, level in enumerate(self._cache.high_res_features)})
        return embedding_file_bytes(self.model.config.name, self.original_size, self.input_size, self.features, extra)

    def load_embedding(self, path: str | os.PathLike[str]) -> None:
        """Load an embedding written by :meth:`save_embedding`; then predict as after ``set_image``."""
        stored = read_embedding_file(path)
        if stored.model != self.model.config.name:
            raise ValueError(
                f"{path}: embedding was computed by model {stored.model!r}, this predictor uses "
                f"{self.model.config.name!r}"
            )
        features, hq_features = stored.features, stored.extra.get("hq_features")
        high_res = [stored.extra[k] for k in sorted(stored.extra) if k.startswith("high_res_features.")]
        expected = (1, self.model.prompt_encoder.embed_dim, *self.model.prompt_encoder.image_embedding_size)
        if tuple(features.shape) != expected:
            raise ValueError(f"{path}: embedding has shape {tuple(features.shape)}, expected {expected}")
        hq_expected = (1, expected[1] // 8, 4 * expected[2], 4 * expected[3])
        if isinstance(self.model, HQSam) and (hq_features is None or tuple(hq_features.shape) != hq_expected):
            found = "none" if hq_features is None else str(tuple(hq_features.shape))
            raise ValueError(f"{path}: HQ features have shape {found}, expected {hq_expected}")
        self.reset_image()
        self.original_size, self.input_size = stored.original_size, stored.input_size
        with torch.inference_mode():
            self.features = features.to(device=self.device, dtype=self.model.dtype)
            if isinstance(self.model, Sam2):
                levels = [level.to(device=self.device, dtype=self.model.dtype) for level in high_res]
                try:
                    self._cache = self.model.decoder_cache(self.features, *levels)
                except ValueError as exc:
                    self.reset_image()
                    raise ValueError(f"{path}: {exc}") from None
            elif isinstance(self.model, HQSam):
                assert hq_features is not None
                hq = hq_features.to(device=self.device, dtype=self.model.dtype)
                self._cache = self.model.hq_cache(self.features, hq)
            else:
                self._cache = self.model.decoder_cache(self.features)
        self.is_image_set = True

    # ---------------------------------------------------------------- batches
    @torch.inference_mode()
    def set_image_batch(self, images: list[np.ndarray | Image.Image], image_format: str = "RGB") -> None:
        """Encode several images in one encoder forward; then prompt them with :meth:`predict_batch`.

        Each image is resized and normalized as :meth:`set_image` does; images of different sizes
        are fine (SAM 1 pads each to the square, SAM 2 stretches each to it). HQ-SAM models encode
        the images one at a time (their early features come from a per-image forward).

        Args:
            images: a non-empty list of images, as :meth:`set_image` takes them.
            image_format: "RGB" or "BGR" channel order of 3-channel arrays.
        """
        if not isinstance(images, (list, tuple)) or not images:
            raise ValueError("images: expected a non-empty list of images")
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format: expected 'RGB' or 'BGR', got {image_format!r}")
        self.reset_image()
        sizes, inputs, batch = [], [], []
        for image in images:
            array = to_rgb_uint8(image)
            if image_format != self.model.image_format and isinstance(image, np.ndarray):
                array = np.ascontiguousarray(array[..., ::-1])
            resized = self.transform.apply_image(array)  # (h, w, 3)
            tensor = torch.from_numpy(np.array(resized)).permute(2, 0, 1).unsqueeze(0).to(self.device)  # (1, 3, h, w)
            sizes.append((int(array.shape[0]), int(array.shape[1])))
            inputs.append((int(tensor.shape[-2]), int(tensor.shape[-1])))
            batch.append(self.model.preprocess(tensor))  # (1, 3, S, S)
        states: list[tuple[Tensor, Any]] = []
        if isinstance(self.model, HQSam):
            states = [self.model.encode_for_decoding(x) for x in batch]
        elif isinstance(self.model, Sam2):
            features, levels = self.model.encode_image_levels(torch.cat(batch))  # (B, C, h, w), per level (B, ...)
            for i in range(len(batch)):
                one = features[i : i + 1]
                states.append((one, self.model.decoder_cache(one, *(level[i : i + 1] for level in levels))))
        else:
            features = self.model.encode_image(torch.cat(batch))  # (B, C, h, w)
            states = [(features[i : i + 1], self.model.decoder_cache(features[i : i + 1])) for i in range(len(batch))]
        self._batch = [(f, c, size, inp) for (f, c), size, inp in zip(states, sizes, inputs)]

    def predict_batch(
        self,
        point_coords_batch: list[np.ndarray | None] | None = None,
        point_labels_batch: list[np.ndarray | None] | None = None,
        box_batch: list[np.ndarray | None] | None = None,
        mask_input_batch: list[np.ndarray | None] | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """:meth:`predict` on each image of :meth:`set_image_batch`, with one entry of each list per image.

        Returns:
            lists (one entry per image) of what :meth:`predict` returns.
        """
        if not self._batch:
            raise RuntimeError("no image batch is set: call set_image_batch(images) before predict_batch")
        n = len(self._batch)
        for name, values in (
            ("point_coords_batch", point_coords_batch),
            ("point_labels_batch", point_labels_batch),
            ("box_batch", box_batch),
            ("mask_input_batch", mask_input_batch),
        ):
            if values is not None and len(values) != n:
                raise ValueError(f"{name}: expected one entry per image ({n}), got {len(values)}")
        batch = self._batch
        results: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [])
        try:
            for i, (features, cache, original_size, input_size) in enumerate(batch):
                self.features, self._cache = features, cache
                self.original_size, self.input_size = original_size, input_size
                self.is_image_set = True
                outputs = self.predict(
                    None if point_coords_batch is None else point_coords_batch[i],
                    None if point_labels_batch is None else point_labels_batch[i],
                    None if box_batch is None else box_batch[i],
                    None if mask_input_batch is None else mask_input_batch[i],
                    multimask_output=multimask_output,
                    return_logits=return_logits,
                    normalize_coords=normalize_coords,
                )
                for collected, value in zip(results, outputs):
                    collected.append(value)
        finally:
            self.reset_image()
            self._batch = batch
        return results

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError("no image is set: call set_image(image) before predict / get_image_embedding")

    # ---------------------------------------------------------------- prompts
    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        *,
        hq_token_only: bool = False,
        normalize_coords: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predict masks for prompts given in original-image pixels.

        Args:
            point_coords: (N, 2) x, y points.
            point_labels: (N,) 1 = foreground, 0 = background.
            box: (4,) x0, y0, x1, y1; or (B, 4) for B boxes (the points and mask_input, if given,
                apply to each box).
            mask_input: (1, 256, 256) low-res logits from a previous call.
            multimask_output: 3 candidate masks instead of 1 (HQ-SAM: 1 mask either way, whose
                SAM part is the best of the 3 instead of the single-mask output).
            return_logits: return mask logits instead of booleans.
            hq_token_only: HQ-SAM models only: the HQ token's mask alone, without SAM's mask
                added (the official ``hq_token_only``); True raises ValueError for other models.
            normalize_coords: as SAM2ImagePredictor's: True (default) for points and boxes in
                pixels; False for coordinates already normalized to [0, 1] by the image's width
                (x) and height (y).

        Returns:
            masks (C, H, W), scores (C,), low_res_logits (C, 256, 256) (C = 1 for HQ-SAM); with B > 1 boxes each gets a
            leading B axis: (B, C, H, W), (B, C), (B, C, 256, 256). (A (1, 4) box returns the
            unbatched shapes, as the official predictor does.)
        """
        self._require_image()
        assert self.original_size is not None
        coords_t = labels_t = boxes_t = mask_t = None
        batch = 1
        if point_coords is not None:
            points = as_points(point_coords)
            labels = as_labels(point_labels, points.shape[0])
            if not normalize_coords:
                points = points * np.array([self.original_size[1], self.original_size[0]], dtype=np.float64)  # (N, 2) pixels
            coords_t = torch.from_numpy(self.transform.apply_coords(points, self.original_size))[None]  # (1, N, 2)
            labels_t = torch.from_numpy(labels)[None]  # (1, N)
        elif point_labels is not None:
            raise ValueError("point_labels: given without point_coords")
        if box is not None:
            boxes = as_boxes(box)
            batch = boxes.shape[0]
            if not normalize_coords:
                height, width = self.original_size
                boxes = boxes * np.array([width, height, width, height], dtype=np.float64)  # (B, 4) pixels
            boxes_t = torch.from_numpy(self.transform.apply_boxes(boxes, self.original_size))  # (B, 4)
        if mask_input is not None:
            mask = as_mask_input(mask_input, self.model.prompt_encoder.mask_input_size)
            mask_t = torch.from_numpy(mask)[None]  # (1, 1, 256, 256)
        if batch > 1:
            if coords_t is not None and labels_t is not None:
                coords_t = coords_t.expand(batch, -1, -1)
                labels_t = labels_t.expand(batch, -1)
            if mask_t is not None:
                mask_t = mask_t.expand(batch, -1, -1, -1)
        masks, scores, low_res = self.predict_torch(
            coords_t,
            labels_t,
            boxes_t,
            mask_t,
            multimask_output=multimask_output,
            return_logits=return_logits,
            hq_token_only=hq_token_only,
        )
        masks_np, scores_np, low_np = masks.cpu().numpy(), scores.cpu().numpy(), low_res.cpu().numpy()
        if batch == 1:
            return masks_np[0], scores_np[0], low_np[0]
        return masks_np, scores_np, low_np

    @torch.inference_mode()
    def predict_torch(
        self,
        point_coords: Tensor | None,
        point_labels: Tensor | None,
        boxes: Tensor | None = None,
        mask_input: Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        *,
        hq_token_only: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Predict masks for a batch of prompts already mapped to the resized image.

        Map original-pixel prompts with ``predictor.transform.apply_coords_torch`` /
        ``apply_boxes_torch`` first.

        Args:
            point_coords: (B, N, 2) float.
            point_labels: (B, N) int in {0, 1} (-1 marks padding points).
            boxes: (B, 4) float.
            mask_input: (B, 1, 256, 256) logits.
            multimask_output: 3 masks per prompt instead of 1 (HQ-SAM: see :meth:`predict`).
            return_logits: logits instead of booleans.
            hq_token_only: HQ-SAM models only (see :meth:`predict`).

        Returns:
            masks (B, C, H, W), iou predictions (B, C), low-res logits (B, C, 256, 256); C = 1 for HQ-SAM.
        """
        # The undecorated halves: with each half entering inference_mode again, the server's RSS
        # grew 50-130 MB instead of ~10 MB over 27 uploads (tests/server/test_memory_bound.py;
        # the cause inside torch was not found).
        low_res, iou = self._decode_low_res(
            point_coords, point_labels, boxes, mask_input, multimask_output, hq_token_only=hq_token_only
        )
        masks = self._upscale_masks(low_res, return_logits=return_logits)
        limit = self.model.low_res_logit_limit if isinstance(self.model, Sam2) else None
        if limit is not None:  # SAM 2 returns its low-res logits clamped (the masks use them unclamped)
            low_res = low_res.clamp(-limit, limit)
        return masks, iou, low_res

    @torch.inference_mode()
    def decode_low_res(
        self,
        point_coords: Tensor | None,
        point_labels: Tensor | None,
        boxes: Tensor | None = None,
        mask_input: Tensor | None = None,
        multimask_output: bool = True,
        *,
        hq_token_only: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """The first half of :meth:`predict_torch`: prompts -> low-res logits and IoU, no upscaling.

        Takes the arguments of :meth:`predict_torch`. Useful to upscale only the masks kept
        (:meth:`upscale_masks`), e.g. the best of three per prompt.

        Returns:
            low-res logits (B, C, 256, 256) (unclamped, what the masks are made of) and IoU
            predictions (B, C).
        """
        return self._decode_low_res(
            point_coords, point_labels, boxes, mask_input, multimask_output, hq_token_only=hq_token_only
        )

    def _decode_low_res(
        self,
        point_coords: Tensor | None,
        point_labels: Tensor | None,
        boxes: Tensor | None,
        mask_input: Tensor | None,
        multimask_output: bool,
        *,
        hq_token_only: bool,
    ) -> tuple[Tensor, Tensor]:
        self._require_image()
        assert self.features is not None
        check_torch_prompts(point_coords, point_labels, boxes, mask_input)
        hq_options: dict[str, bool] = {}
        if isinstance(self.model, HQSam):
            hq_options["hq_token_only"] = bool(hq_token_only)
        elif hq_token_only:
            raise ValueError(f"hq_token_only: only HQ-SAM models (hq_vit_*) have an HQ token, not {self.model.config.name}")
        if point_coords is None and boxes is None and mask_input is None:
            logger.debug("predict without prompts: decoding the 'no prompt' token only")
        return self.model.decode(  # type: ignore[no-any-return]
            self.features,
            point_coords,
            point_labels,
            boxes,
            mask_input,
            multimask_output=multimask_output,
            cache=self._cache,  # type: ignore[arg-type]
            **hq_options,
        )

    @torch.inference_mode()
    def upscale_masks(self, low_res: Tensor, return_logits: bool = False) -> Tensor:
        """The second half of :meth:`predict_torch`: (..., 256, 256) low-res logits of the image
        set -> (..., H, W) masks at its original size (logits with ``return_logits``)."""
        return self._upscale_masks(low_res, return_logits=return_logits)

    def _upscale_masks(self, low_res: Tensor, *, return_logits: bool) -> Tensor:
        self._require_image()
        assert self.original_size is not None and self.input_size is not None
        if return_logits:
            return self.transform.postprocess_masks(low_res, self.input_size, self.original_size)
        return self.transform.postprocess_to_masks(low_res, self.input_size, self.original_size, self.model.mask_threshold)
