"""``SamAutomaticMaskGenerator`` with a SAM 2.1 model against the official ``SAM2AutomaticMaskGenerator``.

Both load one perturbed official-format hiera_t checkpoint. Perturbed random weights make
image-wide masks that NMS would merge into one, so box NMS and both score filters are off
here: every candidate of a 4x4 grid (48 masks) is compared one to one. Pixels may differ only
where the official logit is within 1e-3 of the threshold.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
from sam2.sam2_image_predictor import SAM2ImagePredictor

import samkit
from samkit.everything import SamAutomaticMaskGenerator

from .conftest import make_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "parity"))
from sam2_oracle import perturbed_official  # noqa: E402

OPTIONS = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}


def assert_records_match(
    ours: list[dict[str, Any]], official: list[dict[str, Any]], logits_of: Any, threshold: float = 0.0
) -> None:
    """One-to-one by prompt point and predicted IoU; masks equal except where the official logit
    is within 1e-3 of ``threshold``."""
    assert len(ours) == len(official)
    used: set[int] = set()
    for j, ref in enumerate(official):
        same = [
            i for i, rec in enumerate(ours)
            if i not in used
            and np.allclose(rec["point_coords"], ref["point_coords"], rtol=0, atol=1e-4)
            and abs(rec["predicted_iou"] - ref["predicted_iou"]) < 1e-4
        ]
        assert same, f"official mask {j} (point {ref['point_coords']}) has no samkit record"
        ref_mask = np.asarray(ref["segmentation"], dtype=bool)
        i = min(same, key=lambda k: int((np.asarray(ours[k]["segmentation"], dtype=bool) != ref_mask).sum()))
        used.add(i)
        rec = ours[i]
        assert rec["crop_box"] == [int(v) for v in ref["crop_box"]]
        stability, ref_stability = float(rec["stability_score"]), float(ref["stability_score"])
        assert (np.isnan(stability) and np.isnan(ref_stability)) or abs(stability - ref_stability) < 1e-3
        differ = np.asarray(rec["segmentation"], dtype=bool) != ref_mask
        if differ.any():
            worst = float(np.abs(logits_of(ref)[differ] - threshold).max())
            assert worst < 1e-3, f"mask {j}: {int(differ.sum())} pixels differ, official logit {worst:.3g} there"
        else:
            assert rec["area"] == ref["area"] and rec["bbox"] == [int(v) for v in ref["bbox"]]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("extra", "count"),
    [
        ({}, 48),
        ({"points_per_side": 3, "multimask_output": False, "mask_threshold": 0.2}, 9),
        ({"points_per_side": 2, "use_m2m": True}, 12),
    ],
    ids=["defaults", "single_mask_threshold", "m2m"],
)
def test_sam21_hiera_t_every_candidate(tmp_path: Path, extra: dict[str, Any], count: int) -> None:
    path = tmp_path / "sam2.1_hiera_tiny.pt"
    official_model = perturbed_official("sam2.1_hiera_t", path, seed=9)
    image = make_image(546, 967, seed=2)
    options = {**OPTIONS, **extra}
    official = SAM2AutomaticMaskGenerator(official_model, **options).generate(image)
    ours = SamAutomaticMaskGenerator(samkit.build_sam("sam2.1_hiera_t", path), **options).generate(image)
    assert len(official) == count
    multimask = options.get("multimask_output", True)
    threshold = options.get("mask_threshold", 0.0)

    predictor: list[SAM2ImagePredictor] = []

    def logits_of(ref: dict[str, Any]) -> np.ndarray:
        """The official full-size logits of a record's mask (its prompt's output with its IoU)."""
        if not predictor:
            predictor.append(SAM2ImagePredictor(official_model))
            predictor[0].set_image(image)
        point = {"point_coords": np.array(ref["point_coords"]), "point_labels": np.array([1])}
        logits, scores, low_res = predictor[0].predict(**point, multimask_output=multimask, return_logits=True)
        if options.get("use_m2m", False):  # the official refinement of each of the point's masks
            refined = [
                predictor[0].predict(**point, mask_input=mask[None], multimask_output=False, return_logits=True)
                for mask in low_res
            ]
            logits = np.concatenate([r[0] for r in refined])
            scores = np.concatenate([r[1] for r in refined])
        return logits[int(np.argmin(np.abs(scores - ref["predicted_iou"])))]

    assert_records_match(ours, official, logits_of, threshold)


def test_default_iou_threshold_follows_the_model_family() -> None:
    """Unset, pred_iou_thresh is each official generator's default (sam2: 0.8, segment-anything: 0.88)."""
    from samkit.build_sam2 import get_sam2_config
    from samkit.modeling.sam2 import Sam2

    sam2_model = Sam2(get_sam2_config("sam2.1_hiera_t"))
    assert SamAutomaticMaskGenerator(sam2_model).pred_iou_thresh == 0.8
    assert SamAutomaticMaskGenerator(sam2_model, pred_iou_thresh=0.88).pred_iou_thresh == 0.88
    from samkit.config import get_config
    from samkit.modeling import Sam

    assert SamAutomaticMaskGenerator(Sam(get_config("vit_t"))).pred_iou_thresh == 0.88
