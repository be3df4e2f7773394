"""``SamAutomaticMaskGenerator``: segment everything in an image with a grid of point prompts.

Same parameters, records and masks as the reference generator; the work differs:

* the prompt-independent decoder work is computed once per image (crop), not per batch;
* masks are filtered on predicted IoU *before* anything is upscaled, and the mask upscaling
  network runs only for prompts with at least one surviving mask;
* masks whose stability score provably fails are dropped before upscaling: bilinear resizing
  is a convex combination, so sound bounds of the stability counts follow from the low-res
  logits (:func:`~samkit.everything.filters.stability_bounds`); only masks that may pass are
  upscaled, and the kept set is exactly the reference's;
* the remaining logits are upscaled once (bit-identical to the reference), and the stability
  score, binary mask and box are computed from that one tensor, chunk by chunk;
* run-length encoding, NMS and decoding are vectorized; masks are kept as run lengths, so
  memory is bounded by ``points_per_batch``, not by the grid size or the number of masks.
"""

from __future__ import annotations

import logging
import math
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .. import batching
from ..io import to_rgb_uint8
from ..modeling import Sam
from ..modeling.hq_sam import HQImageCache, HQSam
from ..modeling.sam2 import Sam2, Sam2ImageCache
from ..predictor import SamPredictor
from ..transforms import preprocess_shape
from .decode import PointDecoder
from .hq_decode import HQPointDecoder
from .sam2_decode import Sam2PointDecoder
from .filters import (
    box_area,
    is_box_near_crop_edge,
    masks_to_boxes,
    nms,
    provably_unstable,
    stability_bounds,
    stability_from_counts,
)
from .grid import build_all_layer_point_grids, generate_crop_boxes
from .optional import require_cv2
from .options import check_grids, check_int, check_real
from .records import MaskSet, mask_records
from .regions import remove_small_regions
from .rle import encode_fortran, rle_to_mask

__all__ = ["SamAutomaticMaskGenerator", "OUTPUT_MODES", "SAM_PRED_IOU_THRESH", "SAM2_PRED_IOU_THRESH"]

logger = logging.getLogger(__name__)

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle", "polygons")
# The official generators' default predicted-IoU thresholds: segment-anything's and sam2's.
SAM_PRED_IOU_THRESH = 0.88
SAM2_PRED_IOU_THRESH = 0.8


def _count_above(logits: Tensor, thresholds: tuple[float, float]) -> tuple[Tensor, Tensor]:
    """Per-mask counts of pixels above each threshold: (N, H, W) logits -> two (N,) int32 tensors."""
    if logits.device.type == "cpu":
        # numpy's count_nonzero is ~10x faster than summing a bool tensor on CPU.
        array = logits.numpy()
        counts = np.array([[np.count_nonzero(m > t) for t in thresholds] for m in array], dtype=np.int32)  # (N, 2)
        counts_t = torch.from_numpy(counts.reshape(-1, len(thresholds)))  # (N, 2)
        return counts_t[:, 0], counts_t[:, 1]
    high = (logits > thresholds[0]).flatten(1).sum(-1, dtype=torch.int32).cpu()  # (N, H*W) -> (N,)
    low = (logits > thresholds[1]).flatten(1).sum(-1, dtype=torch.int32).cpu()  # (N, H*W) -> (N,)
    return high, low


class SamAutomaticMaskGenerator:
    """Generates masks for a whole image from a grid of point prompts.

    Drop-in for ``segment_anything.SamAutomaticMaskGenerator`` (same arguments, same records).

    Args:
        model: a :class:`samkit.modeling.Sam` (see :func:`samkit.build_sam`).
        points_per_side: points along each side of the grid (``points_per_side**2`` prompts);
            None when ``point_grids`` is given.
        points_per_batch: prompts decoded together; bounds the peak memory.
        pred_iou_thresh: keep masks whose predicted IoU is above this (<= 0 disables the
            filter, as in the official generator). None: each family's official default,
            0.88 for SAM 1 / MobileSAM / HQ-SAM and 0.8 for SAM 2.x (its official generator's).
        stability_score_thresh: keep masks whose stability score is at least this (<= 0
            disables the filter, as in the official generator).
        stability_score_offset: logit offset of the stability score's two thresholds.
        box_nms_thresh: box IoU above which duplicate masks of one crop are removed.
        crop_n_layers: extra layers of crops (layer i has ``(2**i)**2`` crops).
        crop_nms_thresh: box IoU above which duplicates between crops are removed.
        crop_overlap_ratio: overlap of first-layer crops, as a fraction of the short side.
        crop_n_points_downscale_factor: points per side in layer i are divided by this ``**i``.
        point_grids: explicit grids, one (N, 2) array of [0, 1] points per crop layer.
        min_mask_region_area: if > 0, fill holes and remove islands smaller than this many
            pixels (needs OpenCV).
        output_mode: ``"binary_mask"`` ((H, W) bool arrays), ``"uncompressed_rle"``,
            ``"coco_rle"`` (string counts, JSON-ready) or ``"polygons"`` (outer contours, needs
            OpenCV).
        progress: show a progress bar over prompt batches.
        mask_threshold: logit threshold of the masks and the centre of the stability score's
            thresholds (the official SAM 2 generator's option); None: the model's (0.0).
        multimask_output: three masks per point (default), else one; SAM 2 models only, as the
            official ``SAM2AutomaticMaskGenerator(multimask_output=...)`` (HQ-SAM takes its
            option in :meth:`generate`, as the official HQ generator does).
        use_m2m: SAM 2 models only, as the official option: refine every mask once with its
            own low-res logits as mask input before the filters.

    Raises:
        TypeError: ``model`` is not a samkit model.
        ValueError: an argument is out of range (the message names it).
        ImportError: OpenCV is missing but needed.
    """

    def __init__(
        self,
        model: Sam,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float | None = None,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        *,
        progress: bool = False,
        mask_threshold: float | None = None,
        multimask_output: bool = True,
        use_m2m: bool = False,
    ) -> None:
        if not isinstance(model, (Sam, Sam2)):
            raise TypeError(f"model: expected a samkit Sam model, got {type(model).__name__}")
        self.crop_n_layers = check_int("crop_n_layers", crop_n_layers, 0)
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("points_per_side, point_grids: give exactly one of them")
        self.crop_n_points_downscale_factor = check_int(
            "crop_n_points_downscale_factor", crop_n_points_downscale_factor, 1
        )
        if points_per_side is not None:
            points_per_side = check_int("points_per_side", points_per_side, 1)
            self.point_grids = build_all_layer_point_grids(
                points_per_side, self.crop_n_layers, self.crop_n_points_downscale_factor
            )
        else:
            self.point_grids = check_grids(point_grids, self.crop_n_layers)
        self.points_per_batch = check_int("points_per_batch", points_per_batch, 1)
        # Any finite value, as the official generator takes them: <= 0 turns the filter off;
        # above 1 is legal too (predicted IoUs can exceed 1; no stability score does).
        if pred_iou_thresh is None:
            pred_iou_thresh = SAM2_PRED_IOU_THRESH if isinstance(model, Sam2) else SAM_PRED_IOU_THRESH
        self.pred_iou_thresh = check_real("pred_iou_thresh", pred_iou_thresh, -math.inf, math.inf)
        self.stability_score_thresh = check_real("stability_score_thresh", stability_score_thresh, -math.inf, math.inf)
        self.stability_score_offset = check_real("stability_score_offset", stability_score_offset, 0.0, math.inf)
        self.box_nms_thresh = check_real("box_nms_thresh", box_nms_thresh, 0.0, 1.0)
        self.crop_nms_thresh = check_real("crop_nms_thresh", crop_nms_thresh, 0.0, 1.0)
        self.crop_overlap_ratio = check_real("crop_overlap_ratio", crop_overlap_ratio, 0.0, 1.0, high_open=True)
        if isinstance(min_mask_region_area, bool) or not isinstance(min_mask_region_area, Real):
            raise ValueError(f"min_mask_region_area: expected a number, got {min_mask_region_area!r}")
        self.min_mask_region_area = check_real("min_mask_region_area", min_mask_region_area, 0.0, math.inf)
        if isinstance(min_mask_region_area, Integral):
            self.min_mask_region_area = int(min_mask_region_area)
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode: expected one of {', '.join(OUTPUT_MODES)}; got {output_mode!r}")
        self.output_mode = output_mode
        if self.min_mask_region_area > 0:
            require_cv2("min_mask_region_area > 0")
        if output_mode == "polygons":
            require_cv2("output_mode='polygons'")
        self.progress = bool(progress)
        self.mask_threshold = (
            model.mask_threshold if mask_threshold is None else check_real("mask_threshold", mask_threshold, -math.inf, math.inf)
        )
        if not multimask_output and not isinstance(model, Sam2):
            raise ValueError("multimask_output: False is supported for SAM 2 models only")
        self.multimask_output = bool(multimask_output)
        if use_m2m and not isinstance(model, Sam2):
            raise ValueError("use_m2m: supported for SAM 2 models only")
        self.use_m2m = bool(use_m2m)
        self.predictor = SamPredictor(model)
        self._multimask_output = True  # set by each generate(): HQ-SAM's choice of SAM mask
        self.last_stats: dict[str, int] = {}
        """Counts from the last :meth:`generate`: ``prompts`` decoded, ``masks`` candidates (3 per
        prompt), ``iou_passed`` (the predicted-IoU filter), ``pruned_early`` (of those,
        provably below the stability threshold from their low-res logits, never upscaled),
        ``stability_passed`` and ``kept`` (records returned)."""

    @property
    def model(self) -> Sam:
        """The SAM model."""
        return self.predictor.model

    # ------------------------------------------------------------------ public
    @torch.inference_mode()
    def generate(
        self, image: np.ndarray | Image.Image, multimask_output: bool = True, *, progress: bool | None = None
    ) -> list[dict[str, Any]]:
        """Find all masks in an image.

        Args:
            image: (H, W, 3) uint8 RGB array (or anything :func:`samkit.io.to_rgb_uint8` takes).
            multimask_output: HQ-SAM models: the SAM part of each point's mask is the best of
                SAM's 3 candidates (True, the default) or its single-mask output (False), as the
                official HQ generator's ``generate(image, multimask_output)``. SAM models always
                decode the 3 candidates; False raises ValueError for them.
            progress: show a progress bar over prompt batches (default: the constructor's).

        Returns:
            one record per mask, in the reference order, with keys ``segmentation`` (per
            ``output_mode``), ``area`` (int), ``bbox`` (XYWH ints), ``predicted_iou``,
            ``point_coords`` (``[[x, y]]``), ``stability_score`` and ``crop_box`` (XYWH).
        """
        if not multimask_output and not isinstance(self.model, HQSam):
            raise ValueError("multimask_output: False is only for HQ-SAM models; SAM decodes 3 masks per point")
        self._multimask_output = bool(multimask_output)
        rgb = to_rgb_uint8(image)
        self.last_stats = dict.fromkeys(
            ("prompts", "masks", "iou_passed", "pruned_early", "stability_passed", "kept"), 0
        )
        data = self._generate_masks(rgb, self.progress if progress is None else progress)
        if self.min_mask_region_area > 0:
            data = self._remove_small_regions(
                data, rgb.shape[:2], self.min_mask_region_area, max(self.box_nms_thresh, self.crop_nms_thresh)
            )
        self.last_stats["kept"] = len(data)
        logger.debug("segment everything: %s", self.last_stats)
        return mask_records(data, rgb.shape[:2], self.output_mode)

    # --------------------------------------------------------------- pipeline
    def _generate_masks(self, image: np.ndarray, progress: bool) -> MaskSet:
        orig_size = (int(image.shape[0]), int(image.shape[1]))
        crop_boxes, layer_idxs = generate_crop_boxes(orig_size, self.crop_n_layers, self.crop_overlap_ratio)
        n_batches = sum(math.ceil(len(self.point_grids[layer]) / self.points_per_batch) for layer in layer_idxs)
        from tqdm.auto import tqdm

        with tqdm(total=n_batches, disable=not progress, desc="prompt batches", unit="batch", leave=False) as bar:
            parts = [
                self._process_crop(image, crop_box, layer, orig_size, bar)
                for crop_box, layer in zip(crop_boxes, layer_idxs)
            ]
        data = MaskSet.concat(parts)
        if len(crop_boxes) > 1 and len(data):
            scores = 1 / box_area(data.crop_boxes)  # prefer masks from smaller crops
            # On the model's device, as the reference does: its final tie-breaking sort runs there.
            device = self.model.device
            keep = nms(data.boxes.float().to(device), scores.to(device), self.crop_nms_thresh)
            data = data.select(keep)
        return data

    def _process_crop(
        self, image: np.ndarray, crop_box: list[int], layer: int, orig_size: tuple[int, int], bar: Any
    ) -> MaskSet:
        x0, y0, x1, y1 = crop_box
        crop = image[y0:y1, x0:x1, :]
        crop_size = (int(crop.shape[0]), int(crop.shape[1]))
        predictor = self.predictor
        predictor.set_image(crop)
        assert predictor.features is not None and predictor.input_size is not None
        decoder: PointDecoder | HQPointDecoder | Sam2PointDecoder
        if isinstance(predictor.model, Sam2):  # SAM 2: three masks per point, stretched framing
            assert isinstance(predictor.decoder_cache, Sam2ImageCache)
            decoder = Sam2PointDecoder(
                predictor.model,
                predictor.features,
                predictor.decoder_cache,
                multimask_output=self.multimask_output,
                refine=self.use_m2m,
            )
        elif isinstance(predictor.model, HQSam):  # one mask per point (best SAM mask + HQ mask)
            assert isinstance(predictor.decoder_cache, HQImageCache)
            decoder = HQPointDecoder(
                predictor.model, predictor.features, predictor.decoder_cache, multimask_output=self._multimask_output
            )
        else:
            decoder = PointDecoder(predictor.model, predictor.features, predictor.decoder_cache)  # type: ignore[arg-type]
        input_size = predictor.input_size

        points = self.point_grids[layer] * np.array(crop_size, dtype=np.int64)[None, ::-1]  # (P, 2) x, y pixels
        new_h, new_w = preprocess_shape(crop_size[0], crop_size[1], predictor.model.img_size)
        scale = np.array([new_w / crop_size[1], new_h / crop_size[0]], dtype=np.float64)
        parts = []
        for start in range(0, len(points), self.points_per_batch):
            batch_points = points[start : start + self.points_per_batch]  # (B, 2)
            if isinstance(predictor.model, Sam2):  # as the official SAM 2: float32, / side * 1024
                model_points = predictor.transform.apply_coords(batch_points, crop_size)  # (B, 2)
            else:
                model_points = batch_points * scale  # (B, 2) float64
            parts.append(
                self._process_batch(decoder, batch_points, model_points, input_size, crop_size, crop_box, orig_size)
            )
            bar.update(1)
        predictor.reset_image()
        data = MaskSet.concat(parts)
        if len(data) == 0:
            return data
        device = self.model.device  # the reference runs this NMS on the model's device
        keep = nms(data.boxes.float().to(device), data.iou_preds.to(device), self.box_nms_thresh)  # duplicates within the crop
        data = data.select(keep)
        data.boxes = data.boxes + torch.tensor([[x0, y0, x0, y0]], dtype=torch.int64)  # (N, 4) image frame
        data.points = data.points + np.array([[x0, y0]], dtype=np.int64)  # (N, 2) image frame
        data.crop_boxes = torch.tensor([crop_box], dtype=torch.int64).expand(len(data), 4).clone()  # (N, 4)
        return data

    def _process_batch(
        self,
        decoder: PointDecoder | HQPointDecoder,
        points: np.ndarray,
        model_points: np.ndarray,
        input_size: tuple[int, int],
        crop_size: tuple[int, int],
        crop_box: list[int],
        orig_size: tuple[int, int],
    ) -> MaskSet:
        threshold = self.pred_iou_thresh if self.pred_iou_thresh > 0.0 else None
        iou, index, low_res = decoder.decode(model_points, threshold)  # (3B,), (N,), (N, h, w)
        n_out = len(iou) // len(points)
        stats = self.last_stats
        stats["prompts"] = stats.get("prompts", 0) + len(points)
        stats["masks"] = stats.get("masks", 0) + len(iou)
        stats["iou_passed"] = stats.get("iou_passed", 0) + len(index)
        if len(index) == 0:
            return MaskSet()
        mask_threshold = self.mask_threshold
        offset = self.stability_score_offset
        if self.stability_score_thresh > 0.0 and not isinstance(self.model, Sam2):
            # (The bounds assume SAM 1's two-step upscaling; SAM 2 upscales in one step.)
            # Drop masks whose stability provably fails, from bounds on the low-res logits,
            # before the (costly) upscaling; the kept set is unchanged.
            upper_high, lower_low = stability_bounds(
                low_res, input_size, crop_size, self.model.img_size, (mask_threshold + offset, mask_threshold - offset)
            )  # (N,) each
            survive = ~provably_unstable(upper_high, lower_low, self.stability_score_thresh)  # (N,)
            stats["pruned_early"] = stats.get("pruned_early", 0) + int((~survive).sum())
            if not bool(survive.all()):
                index, low_res = index[survive], low_res[survive.to(low_res.device)]  # (N',), (N', h, w)
            if len(index) == 0:
                return MaskSet()
        crop_h, crop_w = crop_size
        chunk = max(1, batching.batching_for(low_res.device).postprocess_pixels // (crop_h * crop_w))
        kept_idx, stabilities, boxes, rles = [], [], [], []
        for start in range(0, len(index), chunk):
            logits = self.predictor.transform.postprocess_masks(low_res[start : start + chunk], input_size, crop_size)  # (n, h, w)
            high, low = _count_above(logits, (mask_threshold + offset, mask_threshold - offset))  # (n,) each
            stability = stability_from_counts(high, low)  # (n,) float32
            sel = torch.arange(len(stability))
            if self.stability_score_thresh > 0.0:
                sel = (stability >= self.stability_score_thresh).nonzero().flatten()  # (k,)
            stats["stability_passed"] = stats.get("stability_passed", 0) + len(sel)
            if len(sel) == 0:
                continue
            masks = logits[sel.to(logits.device)] > mask_threshold  # (k, h, w)
            del logits
            box = masks_to_boxes(masks).cpu()  # (k, 4) crop frame
            inside = ~is_box_near_crop_edge(box, crop_box, [0, 0, orig_size[1], orig_size[0]])
            if not bool(inside.all()):
                masks, box, sel = masks[inside.to(masks.device)], box[inside], sel[inside]
            kept_idx.append(index[start + sel])
            stabilities.append(stability[sel])
            boxes.append(box)
            rles.extend(self._encode(masks, crop_box, orig_size))
        if not rles:
            return MaskSet()
        kept = torch.cat(kept_idx)
        return MaskSet(
            rles=rles,
            boxes=torch.cat(boxes),
            iou_preds=iou[kept],
            stability=torch.cat(stabilities),
            points=points[(kept // n_out).numpy()],
            crop_boxes=torch.zeros((len(rles), 4), dtype=torch.int64),
        )

    @staticmethod
    def _encode(masks: Tensor, crop_box: list[int], orig_size: tuple[int, int]) -> list[np.ndarray]:
        """Run lengths over the whole image of (k, h, w) crop masks."""
        k, h, w = masks.shape
        height, width = orig_size
        x0, y0 = crop_box[0], crop_box[1]
        columns = masks.transpose(1, 2).cpu()  # (k, w, h): column-major pixel order
        if h != height:  # pad each column to the image height
            padded = torch.zeros((k, w, height), dtype=torch.bool)
            padded[:, :, y0 : y0 + h] = columns
            columns = padded
        flat = columns.reshape(k, w * height)  # (k, w*H)
        return encode_fortran(flat, total=width * height, offset=x0 * height)

    @staticmethod
    def _remove_small_regions(
        data: MaskSet, orig_size: tuple[int, int], min_area: float, nms_thresh: float
    ) -> MaskSet:
        """Fill small holes, drop small islands, then NMS again (unchanged masks preferred)."""
        if len(data) == 0:
            return data
        height, width = orig_size
        new_boxes = torch.zeros((len(data), 4), dtype=torch.int64)
        scores = []
        new_rles: dict[int, np.ndarray] = {}
        for i, counts in enumerate(data.rles):
            mask = rle_to_mask({"size": [height, width], "counts": counts})
            mask, changed_holes = remove_small_regions(mask, min_area, "holes")
            mask, changed_islands = remove_small_regions(mask, min_area, "islands")
            changed = changed_holes or changed_islands
            scores.append(0.0 if changed else 1.0)
            mask_t = torch.from_numpy(np.ascontiguousarray(mask))[None]  # (1, H, W)
            new_boxes[i] = masks_to_boxes(mask_t)[0]
            if changed:
                new_rles[i] = encode_fortran(mask_t.transpose(1, 2).reshape(1, -1))[0]  # (1, W*H) column-major
        keep = nms(new_boxes.float(), torch.as_tensor(scores, dtype=torch.float32), nms_thresh)
        data = MaskSet(
            rles=[new_rles.get(i, counts) for i, counts in enumerate(data.rles)],
            boxes=torch.where(torch.tensor(scores)[:, None] == 0.0, new_boxes, data.boxes),
            iou_preds=data.iou_preds,
            stability=data.stability,
            points=data.points,
            crop_boxes=data.crop_boxes,
        )
        return data.select(keep)
