"""``OnnxPredictor``: the ``SamPredictor`` surface on ONNX Runtime, without torch.

Only numpy, Pillow and onnxruntime are imported (here and in everything this module
imports), so the predictor runs where torch is not installed.

It drives the graphs written by :func:`samkit.onnx.export_onnx` for every family (SAM 1,
MobileSAM, SAM 2 / 2.1, HQ-SAM; the ``samkit.family`` metadata entry says which, see
:mod:`samkit.onnx.interfaces`) and any decoder with the official SAM ONNX interface (e.g. one
written by segment-anything's ``scripts/export_onnx_model.py``; graphs without the entry are
SAM 1 graphs). Which encoder input is expected is read from the graph: a (1, 3, S, S) float
input gets the normalized, padded image (SAM 2: stretched to the square); an (h, w, 3) uint8
input (``--raw-input`` export) gets the resized pixels.
"""

from __future__ import annotations

import json
import logging
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..hardware import cpu_has_int8_dot_product
from ..geometry import map_boxes, map_coords, resize_longest_side
from ..io import to_rgb_uint8
from ..prompts import as_boxes, as_labels, as_mask_input, as_points
from .interfaces import FAMILY_KEY, INTERFACES, GraphInterface
from .square_geometry import map_coords_to_square, resize_to_square

__all__ = ["OnnxPredictor"]

logger = logging.getLogger(__name__)

_RESULT_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")  # what predict returns, every family
# SAM's defaults, used when a graph carries no samkit metadata (e.g. an official export).
_DEFAULT_IMG_SIZE = 1024
_DEFAULT_MEAN = (123.675, 116.28, 103.53)
_DEFAULT_STD = (58.395, 57.12, 57.375)
_LABEL_PADDING = -1.0
_LABEL_BOX_CORNERS = (2.0, 3.0)


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError("OnnxPredictor needs onnxruntime: pip install 'samkit[onnx]'") from exc
    return onnxruntime


def _static_dim(dim: Any) -> int | None:
    return dim if isinstance(dim, int) else None


class OnnxPredictor:
    """Prompted mask prediction with ONNX Runtime sessions of an exported encoder and decoder.

    Args:
        encoder_path: image encoder graph (``encoder.onnx``).
        decoder_path: decoder graph of the same export (``decoder.onnx``), or a decoder with the
            official SAM ONNX interface.
        providers: ONNX Runtime execution providers in order of preference (default CPU), e.g.
            ``["CUDAExecutionProvider", "CPUExecutionProvider"]``; those missing from this
            onnxruntime build are skipped with a warning (an error if none is left).
        session_options: an ``onnxruntime.SessionOptions`` for both sessions (threads, ...).

    Attributes:
        family: "sam" (SAM 1, MobileSAM), "sam2" (SAM 2 / 2.1) or "hq" (HQ-SAM).
        img_size: side S of the square model input (1024).
        mask_threshold: logit threshold of binary masks (0.0).
        num_mask_outputs: masks per decoder run: 4 (token 0 + three multimask tokens; both
            ``multimask_output`` settings served; SAM 2: slot 0 is the single mask after SAM 2's
            stability fallback), or 1: an HQ-SAM graph (``multimask_output`` and ``hq_token_only``
            are graph inputs) or a ``--return-single-mask`` graph, which picks its mask itself
            (the best multimask output for one point or a box alone, the single-mask output
            otherwise; ``multimask_output`` is then ignored).
    """

    def __init__(
        self,
        encoder_path: str | os.PathLike[str],
        decoder_path: str | os.PathLike[str],
        providers: list[str] | None = None,
        *,
        session_options: Any = None,
    ) -> None:
        ort = _import_onnxruntime()
        for label, path in (("encoder_path", encoder_path), ("decoder_path", decoder_path)):
            if not Path(path).is_file():
                raise FileNotFoundError(f"{label}: no such ONNX file: {path}")
        requested = list(providers) if providers else ["CPUExecutionProvider"]
        available = set(ort.get_available_providers())
        providers = [p for p in requested if p in available]
        if not providers:
            raise ValueError(
                f"providers: none of {requested} is available in this onnxruntime build "
                f"(available: {sorted(available)})"
            )
        if len(providers) < len(requested):
            skipped = [p for p in requested if p not in available]
            logger.warning("execution providers %s are not available; using %s", skipped, providers)
        self.encoder = ort.InferenceSession(os.fspath(encoder_path), session_options, providers=providers)
        self.decoder = ort.InferenceSession(os.fspath(decoder_path), session_options, providers=providers)
        self._configure_encoder()
        self._configure_decoder()
        self.reset_image()

    @classmethod
    def from_dir(
        cls,
        directory: str | os.PathLike[str],
        *,
        quantized: bool = False,
        providers: list[str] | None = None,
        session_options: Any = None,
    ) -> OnnxPredictor:
        """Open ``encoder.onnx`` + ``decoder.onnx`` in ``directory``.

        With ``quantized=True``: ``encoder.int8.onnx`` + ``decoder.onnx`` (the decoder is not
        quantized; see :func:`samkit.onnx.quantize_int8`). Other pairs: the constructor.
        """
        root = Path(directory)
        encoder, decoder = root / ("encoder.int8.onnx" if quantized else "encoder.onnx"), root / "decoder.onnx"
        if not encoder.is_file() or not decoder.is_file():
            raise FileNotFoundError(
                f"{root}: expected {encoder.name} and {decoder.name} (written by `samkit export-onnx"
                f"{' --quantize int8' if quantized else ''}`)"
            )
        return cls(encoder, decoder, providers, session_options=session_options)

    # ------------------------------------------------------------ graph facts
    def _configure_encoder(self) -> None:
        meta = self.encoder.get_modelmeta().custom_metadata_map
        self.family = meta.get(FAMILY_KEY, "sam")
        if self.family not in INTERFACES:
            raise ValueError(f"encoder: unknown model family {self.family!r} (this samkit reads {sorted(INTERFACES)})")
        self._interface: GraphInterface = INTERFACES[self.family]
        self._model_name = meta.get("samkit.model", "this model")
        outputs = [o.name for o in self.encoder.get_outputs()]
        missing = [name for name in self._interface.encoder_outputs if name not in outputs]
        if self.family != "sam" and missing:
            raise ValueError(f"encoder: a {self.family} encoder lacks the outputs {missing} (it has {outputs})")
        inputs = self.encoder.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"encoder: expected one input (the image), got {[i.name for i in inputs]}")
        spec = inputs[0]
        self._encoder_input = spec.name
        self._raw_input = spec.type == "tensor(uint8)"
        if self._raw_input:
            if self._interface.framing != "pad":
                raise ValueError(f"encoder: a {self.family} encoder takes a float (1, 3, S, S) image, not uint8 pixels")
            if len(spec.shape) != 3:
                raise ValueError(f"encoder: a uint8 input must be (h, w, 3), got shape {spec.shape}")
            self.img_size = int(meta.get("samkit.img_size", _DEFAULT_IMG_SIZE))
        else:
            if spec.type != "tensor(float)" or len(spec.shape) != 4:
                raise ValueError(f"encoder: expected a (1, 3, S, S) float input, got {spec.type} {spec.shape}")
            side = _static_dim(spec.shape[-1])
            self.img_size = side if side is not None else int(meta.get("samkit.img_size", _DEFAULT_IMG_SIZE))
        mean = json.loads(meta["samkit.pixel_mean"]) if "samkit.pixel_mean" in meta else _DEFAULT_MEAN
        std = json.loads(meta["samkit.pixel_std"]) if "samkit.pixel_std" in meta else _DEFAULT_STD
        self._pixel_mean = np.asarray(mean, dtype=np.float32).reshape(1, 1, 3)
        self._pixel_std = np.asarray(std, dtype=np.float32).reshape(1, 1, 3)
        self.image_format = meta.get("samkit.image_format", "RGB")
        signed_weights = meta.get("samkit.quantization", "").startswith("dynamic_qint8")
        if signed_weights and platform.machine().lower() in ("x86_64", "amd64") and not cpu_has_int8_dot_product():
            logger.warning(
                "the encoder's int8 weights are signed (qint8), which onnxruntime computes with saturating "
                "16-bit sums on CPUs without VNNI: masks may be degraded; export with weight_type='quint8' for this CPU"
            )

    def _configure_decoder(self) -> None:
        meta = self.decoder.get_modelmeta().custom_metadata_map
        family = meta.get(FAMILY_KEY, "sam")
        if family != self.family:
            raise ValueError(
                f"encoder and decoder do not belong together: the encoder is a {self.family} graph, "
                f"the decoder a {family} graph"
            )
        inputs = {i.name: i for i in self.decoder.get_inputs()}
        missing = [name for name in self._interface.decoder_inputs if name not in inputs]
        outputs = [o.name for o in self.decoder.get_outputs()]
        missing_out = [name for name in _RESULT_OUTPUTS if name not in outputs]
        if missing or missing_out:
            raise ValueError(
                f"decoder: not the SAM ONNX decoder interface (missing inputs {missing}, outputs {missing_out})"
            )
        produced = self.encoder.get_outputs()[0].shape
        expected = inputs["image_embeddings"].shape
        if len(produced) != len(expected) or any(
            _static_dim(a) is not None and _static_dim(b) is not None and a != b for a, b in zip(produced, expected)
        ):
            raise ValueError(
                f"encoder and decoder do not belong together: the encoder makes {produced} embeddings, "
                f"the decoder expects {expected}"
            )
        mask_shape = inputs["mask_input"].shape
        mh, mw = _static_dim(mask_shape[-2]), _static_dim(mask_shape[-1])
        self.mask_input_size = (mh or 256, mw or 256)
        iou_shape = next(o.shape for o in self.decoder.get_outputs() if o.name == "iou_predictions")
        count = _static_dim(iou_shape[-1]) if len(iou_shape) == 2 else None
        self.num_mask_outputs = count if count is not None else int(meta.get("samkit.num_mask_outputs", 4))
        self.mask_threshold = float(meta.get("samkit.mask_threshold", 0.0))

    # ------------------------------------------------------------------ image
    def reset_image(self) -> None:
        """Forget the current image and its embedding."""
        self.is_image_set = False
        self.features: np.ndarray | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None
        # Every encoder output by name: the decoder's per-image inputs (embedding, HQ / high-res features).
        self._image_outputs: dict[str, np.ndarray] = {}

    def set_image(self, image: np.ndarray | Image.Image, image_format: str = "RGB") -> None:
        """Encode an image; prompts given later refer to its pixels.

        Args:
            image: (H, W, 3) uint8 array in ``image_format`` order, or anything
                :func:`samkit.io.to_rgb_uint8` accepts.
            image_format: "RGB" or "BGR" channel order of a 3-channel array.
        """
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format: expected 'RGB' or 'BGR', got {image_format!r}")
        array = to_rgb_uint8(image)
        if image_format != self.image_format and isinstance(image, np.ndarray):
            array = np.ascontiguousarray(array[..., ::-1])
        resized: np.ndarray
        if self._interface.framing == "stretch":
            resized = resize_to_square(array, self.img_size)  # (S, S, 3) float32
        else:
            resized = resize_longest_side(array, self.img_size)  # (h, w, 3) uint8
        self.set_resized_image(resized, (int(array.shape[0]), int(array.shape[1])))

    def set_resized_image(self, resized: np.ndarray, original_size: tuple[int, int]) -> None:
        """Encode an image already resized into the model's square.

        Args:
            resized: (h, w, 3) uint8 RGB, max(h, w) == ``img_size``; SAM 2 models: the image
                stretched to (S, S, 3), float32 pixel values 0..255 (uint8 accepted).
            original_size: (H, W) of the image before resizing.
        """
        stretch = self._interface.framing == "stretch"
        if resized.ndim != 3 or resized.shape[2] != 3 or (resized.dtype != np.uint8 and not stretch):
            raise ValueError(f"resized: expected an (h, w, 3) uint8 array, got {resized.dtype} {resized.shape}")
        h, w = int(resized.shape[0]), int(resized.shape[1])
        if stretch and (h, w) != (self.img_size, self.img_size):
            side = self.img_size
            raise ValueError(f"resized: a {self.family} model takes the image stretched to {side} x {side}, got {(h, w)}")
        if max(h, w) != self.img_size:
            raise ValueError(f"resized: longest side must be {self.img_size}, got {(h, w)}")
        if self._raw_input:
            model_input = np.ascontiguousarray(resized)  # (h, w, 3) uint8
        else:
            model_input = self._normalize_and_pad(resized)  # (1, 3, S, S) float32
        outputs = self.encoder.run(None, {self._encoder_input: model_input})
        names = [o.name for o in self.encoder.get_outputs()]
        self.reset_image()
        if self.family == "sam":  # one output, whatever its name (encoders of other exporters)
            self._image_outputs = {"image_embeddings": outputs[0]}
        else:
            self._image_outputs = {name: outputs[names.index(name)] for name in self._interface.encoder_outputs}
        self.features = self._image_outputs["image_embeddings"]
        self.original_size = (int(original_size[0]), int(original_size[1]))
        self.input_size = (h, w)
        self.is_image_set = True

    def _normalize_and_pad(self, resized: np.ndarray) -> np.ndarray:
        """(h, w, 3) pixels -> (1, 3, S, S) float32 normalized, zero-padded bottom/right."""
        s = self.img_size
        h, w = resized.shape[:2]
        normalized = (resized.astype(np.float32) - self._pixel_mean) / self._pixel_std  # (h, w, 3)
        padded = np.zeros((1, 3, s, s), dtype=np.float32)
        padded[0, :, :h, :w] = normalized.transpose(2, 0, 1)  # (3, h, w)
        return padded

    def get_image_embedding(self) -> np.ndarray:
        """The (1, C, h, w) float32 embedding of the current image."""
        self._require_image()
        assert self.features is not None
        return self.features

    @property
    def hq_features(self) -> np.ndarray | None:
        """HQ-SAM graphs: the (1, C/8, 4h, 4w) HQ features of the current image; else None."""
        return self._image_outputs.get("hq_features")

    @property
    def high_res_features(self) -> tuple[np.ndarray, np.ndarray] | None:
        """SAM 2 graphs: the projected stride-4 and stride-8 levels of the current image; else None."""
        if "high_res_feats_0" not in self._image_outputs:
            return None
        return self._image_outputs["high_res_feats_0"], self._image_outputs["high_res_feats_1"]

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
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predict masks for prompts given in original-image pixels (as ``SamPredictor.predict``).

        Args:
            point_coords: (N, 2) x, y points.
            point_labels: (N,) 1 = foreground, 0 = background.
            box: (4,) x0, y0, x1, y1; or (B, 4) for B boxes (the points and mask_input, if given,
                apply to each box; one decoder run per box).
            mask_input: (1, 256, 256) low-res logits from a previous call.
            multimask_output: the 3 multimask outputs instead of the single-mask output (HQ-SAM:
                one mask either way, whose SAM part is the best of the 3 instead of the single one).
            return_logits: return mask logits instead of booleans.
            hq_token_only: HQ-SAM graphs only: the HQ token's mask alone, without SAM's mask
                added; True raises ValueError for other graphs.

        Returns:
            masks (C, H, W) bool (or float32 logits), scores (C,) float32, low-res logits
            (C, 256, 256) float32 (C = 1 for HQ-SAM); with B > 1 boxes each gets a leading B axis.
        """
        self._require_image()
        assert self.original_size is not None and self.features is not None
        if hq_token_only and self.family != "hq":
            raise ValueError(f"hq_token_only: only HQ-SAM models (hq_vit_*) have an HQ token, not {self._model_name}")
        stretch = self._interface.framing == "stretch"
        coords = np.zeros((0, 2), dtype=np.float32)
        labels = np.zeros((0,), dtype=np.float32)
        if point_coords is not None:
            points = as_points(point_coords)
            if stretch:
                coords = map_coords_to_square(points, self.original_size, self.img_size)  # (N, 2) float32
            else:
                coords = map_coords(points, self.original_size, self.img_size)  # (N, 2) float32
            labels = as_labels(point_labels, points.shape[0]).astype(np.float32)  # (N,)
        elif point_labels is not None:
            raise ValueError("point_labels: given without point_coords")
        boxes: np.ndarray | None = None
        if box is not None:
            checked = as_boxes(box)  # (B, 4)
            if stretch:
                boxes = map_coords_to_square(checked.reshape(-1, 2, 2), self.original_size, self.img_size).reshape(-1, 4)
            else:
                boxes = map_boxes(checked, self.original_size, self.img_size)  # (B, 4) float32
        mask = np.zeros((1, 1, *self.mask_input_size), dtype=np.float32)
        has_mask = np.zeros((1,), dtype=np.float32)
        if mask_input is not None:
            mask = as_mask_input(mask_input, self.mask_input_size)[None]  # (1, 1, 256, 256)
            has_mask[0] = 1.0

        results = []
        arrange = self._sam2_points if self.family == "sam2" else self._official_points
        for single_box in [None] if boxes is None else list(boxes):
            prompt_coords, prompt_labels = arrange(coords, labels, single_box)
            results.append(
                self._decode(prompt_coords, prompt_labels, mask, has_mask, multimask_output, return_logits, hq_token_only)
            )
        masks, scores, low_res = (np.stack(parts) for parts in zip(*results))
        if boxes is None or boxes.shape[0] == 1:
            return masks[0], scores[0], low_res[0]
        return masks, scores, low_res

    @staticmethod
    def _official_points(
        coords: np.ndarray, labels: np.ndarray, box: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Points in the official decoder encoding: (1, N', 2) coords and (1, N') labels.

        A box becomes two corner points labelled 2 and 3 after the points; without a box a
        padding point (0, 0) labelled -1 is appended, except when there is no point at all
        (then no sparse prompt is given, as ``SamPredictor`` does for a mask-only or empty
        prompt).
        """
        if box is not None:
            coords = np.concatenate([coords, box.reshape(2, 2)], axis=0)  # (N+2, 2)
            labels = np.concatenate([labels, np.asarray(_LABEL_BOX_CORNERS, dtype=np.float32)])
        elif coords.shape[0] > 0:
            coords = np.concatenate([coords, np.zeros((1, 2), dtype=np.float32)], axis=0)  # (N+1, 2)
            labels = np.concatenate([labels, np.asarray([_LABEL_PADDING], dtype=np.float32)])
        return coords[None].astype(np.float32), labels[None].astype(np.float32)

    @staticmethod
    def _sam2_points(coords: np.ndarray, labels: np.ndarray, box: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Points in SAM 2's order: (1, N', 2) coords and (1, N') labels.

        A box becomes two corner points labelled 2 and 3 before the points, and a padding
        point (0, 0) labelled -1 always follows (SAM 2's prompt encoder appends it even after a
        box); without points and box no sparse prompt is given.
        """
        if box is not None:
            coords = np.concatenate([box.reshape(2, 2), coords], axis=0)  # (2+N, 2)
            labels = np.concatenate([np.asarray(_LABEL_BOX_CORNERS, dtype=np.float32), labels])
        if coords.shape[0] > 0:
            coords = np.concatenate([coords, np.zeros((1, 2), dtype=np.float32)], axis=0)  # (N'+1, 2)
            labels = np.concatenate([labels, np.asarray([_LABEL_PADDING], dtype=np.float32)])
        return coords[None].astype(np.float32), labels[None].astype(np.float32)

    def _decode(
        self,
        coords: np.ndarray,
        labels: np.ndarray,
        mask: np.ndarray,
        has_mask: np.ndarray,
        multimask_output: bool,
        return_logits: bool,
        hq_token_only: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One decoder run -> masks (C, H, W), scores (C,), low-res logits (C, 256, 256)."""
        assert self.features is not None and self.original_size is not None
        feed = {
            **self._image_outputs,
            "point_coords": coords,
            "point_labels": labels,
            "mask_input": mask,
            "has_mask_input": has_mask,
            "orig_im_size": np.asarray(self.original_size, dtype=np.float32),
        }
        if self.family == "hq":
            feed["multimask_output"] = np.asarray([float(multimask_output)], dtype=np.float32)
            feed["hq_token_only"] = np.asarray([float(hq_token_only)], dtype=np.float32)
        masks, scores, low_res = self.decoder.run(list(_RESULT_OUTPUTS), feed)  # (1, M, H, W), (1, M), ...
        if masks.shape[1] > 1:
            selected = slice(1, None) if multimask_output else slice(0, 1)
            masks, scores, low_res = masks[:, selected], scores[:, selected], low_res[:, selected]
        if not return_logits:
            masks = masks > self.mask_threshold
        return masks[0], scores[0], low_res[0]
