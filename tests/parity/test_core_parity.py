"""Parity of samkit with the official segment-anything on full-size models.

Both implementations load the same perturbed official checkpoint (``torch.save`` of the
official ``state_dict``): samkit through ``samkit.build_sam(variant, path)``, the official
code through ``sam_model_registry[variant](checkpoint=path)``. They are compared only
through the public predictor APIs:

* image embeddings of ``set_image`` (fp32, to 1e-4 of their scale);
* every prompt kind (one point, positive + negative points, a box, a box with points,
  ``mask_input`` from a previous call, multimask on and off): scores, 256x256 logits and
  full-size logits to 1e-4 of their scale; boolean masks identical except where the
  official logit is within 1e-3 of zero;
* ``predict_torch`` with a batch of 5 prompts.

Encoding a 1024x1024 image takes ~10-20 s (vit_b) per implementation on 2 cores, so each
image is encoded once per side in a fixture; prompt cases then decode on the official
embedding in BOTH predictors (isolating the decoder), while one end-to-end pair per image
goes through ``set_image`` on both sides. vit_l and vit_h run once (one image, two
prompts), one side at a time so that two vit_h models never share memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import segment_anything
import torch
from torch import Tensor

import samkit

# Heavy (full-size models) but run in CI like everything else; `-m "not slow"` deselects them locally.
pytestmark = pytest.mark.slow

# name -> (height, width)
IMAGES: dict[str, tuple[int, int]] = {
    "landscape": (546, 967),
    "portrait": (800, 480),
    "tiny": (7, 10),
    "large": (2000, 3000),
}
IMAGE_SEEDS = {"landscape": 1, "portrait": 2, "tiny": 3, "large": 4}
END_TO_END_CASES = ("point", "box_points")
CHECKPOINT_SEEDS = {"vit_b": 100, "vit_l": 101, "vit_h": 102}

# fp32 tolerance of every comparison, relative to the scale of the compared tensor.
TOL = 1e-4


@dataclass
class Encoded:
    """One image encoded by both implementations, plus end-to-end outputs on each's own embedding."""

    name: str
    official_features: Tensor  # (1, 256, 64, 64)
    samkit_features: Tensor  # (1, 256, 64, 64)
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    end_to_end: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # case -> (ours, official)


def _use_embedding(
    predictor: Any, features: Tensor, original_size: tuple[int, int], input_size: tuple[int, int]
) -> None:
    """Leave a predictor (samkit or official) as ``set_image`` would, with a given embedding."""
    predictor.reset_image()
    predictor.original_size = original_size
    predictor.input_size = input_size
    if isinstance(predictor, samkit.SamPredictor):
        with torch.inference_mode():
            predictor.features = features.clone()
            predictor._cache = predictor.model.decoder_cache(predictor.features)
    else:
        predictor.features = features.clone()
    predictor.is_image_set = True


def _use_official_embedding(ours: samkit.SamPredictor, official: Any, enc: Encoded) -> None:
    """Put the official embedding of ``enc`` into both predictors."""
    for predictor in (ours, official):
        _use_embedding(predictor, enc.official_features, enc.original_size, enc.input_size)


def _official_builder(variant: str) -> Any:
    return segment_anything.sam_model_registry[variant]


# --------------------------------------------------------------------------- vit_b


# Class-scoped: the vit_b models are freed when TestVitB ends, before vit_l / vit_h load.
@pytest.fixture(scope="class")
def predictors(official_checkpoint: Any, parity: Any) -> Iterator[tuple[samkit.SamPredictor, Any]]:
    """(samkit, official) vit_b predictors loaded from the same perturbed official checkpoint."""
    path: Path = official_checkpoint(_official_builder("vit_b"), "vit_b", CHECKPOINT_SEEDS["vit_b"])
    official = segment_anything.sam_model_registry["vit_b"](checkpoint=str(path))
    ours = samkit.build_sam("vit_b", path)
    yield samkit.SamPredictor(ours), segment_anything.SamPredictor(official)
    del official, ours
    path.unlink()
    parity.release_memory()


@pytest.fixture(scope="class", params=list(IMAGES))
def encoded(request: pytest.FixtureRequest, predictors: tuple[Any, Any], parity: Any) -> Encoded:
    """``set_image`` of one image on both sides, and end-to-end predictions on each's own embedding."""
    ours, official = predictors
    name: str = request.param
    h, w = IMAGES[name]
    image = parity.image(h, w, IMAGE_SEEDS[name])
    official.set_image(image)
    ours.set_image(image)
    assert ours.original_size == tuple(official.original_size)
    assert ours.input_size == tuple(official.input_size)
    enc = Encoded(
        name=name,
        official_features=official.get_image_embedding().clone(),
        samkit_features=ours.get_image_embedding().clone(),
        original_size=tuple(official.original_size),  # type: ignore[arg-type]
        input_size=tuple(official.input_size),  # type: ignore[arg-type]
    )
    for case in END_TO_END_CASES:
        kwargs = parity.prompt_kwargs(case, h, w)
        enc.end_to_end[case] = (parity.run_predict(ours, kwargs), parity.run_predict(official, kwargs))
    return enc


class TestVitB:
    """vit_b on four images of different sizes and aspect ratios, every prompt kind."""

    def test_embedding(self, encoded: Encoded, parity: Any) -> None:
        assert encoded.samkit_features.dtype == torch.float32
        parity.close(encoded.samkit_features, encoded.official_features, tol=TOL, what=f"{encoded.name} embedding")

    @pytest.mark.parametrize("case", END_TO_END_CASES)
    def test_end_to_end(self, encoded: Encoded, parity: Any, case: str) -> None:
        ours, official = encoded.end_to_end[case]
        parity.compare_outputs(ours, official, tol=TOL, what=f"{encoded.name}/{case} (own embeddings)")

    @pytest.mark.parametrize("case", ["point", "point_single", "pos_neg", "box", "box_points"])
    def test_prompt(self, encoded: Encoded, predictors: tuple[Any, Any], parity: Any, case: str) -> None:
        ours, official = predictors
        _use_official_embedding(ours, official, encoded)
        h, w = IMAGES[encoded.name]
        parity.compare_predict(ours, official, parity.prompt_kwargs(case, h, w), tol=TOL, what=f"{encoded.name}/{case}")

    def test_mask_input(self, encoded: Encoded, predictors: tuple[Any, Any], parity: Any) -> None:
        ours, official = predictors
        _use_official_embedding(ours, official, encoded)
        h, w = IMAGES[encoded.name]
        _, scores, low_res = official.predict(**parity.prompt_kwargs("point", h, w))
        mask_input = low_res[int(np.argmax(scores))][None]  # (1, 256, 256)
        for case in ("pos_neg", "point"):  # single- and multi-mask refinement
            kwargs = {**parity.prompt_kwargs(case, h, w), "mask_input": mask_input}
            parity.compare_predict(ours, official, kwargs, tol=TOL, what=f"{encoded.name}/mask_input+{case}")

    @pytest.mark.parametrize("encoded", ["landscape"], indirect=True)  # one image is enough
    @pytest.mark.parametrize("with_boxes", [False, True], ids=["points", "points+boxes"])
    def test_batched_predict_torch(
        self, predictors: tuple[Any, Any], encoded: Encoded, parity: Any, with_boxes: bool
    ) -> None:
        ours, official = predictors
        _use_official_embedding(ours, official, encoded)
        h, w = IMAGES[encoded.name]
        rng = np.random.default_rng(7)
        batch = 5
        points = torch.from_numpy(rng.uniform([0, 0], [w, h], size=(batch, 2, 2))).float()  # (B, N, 2)
        labels = torch.tensor([[1, 0], [1, 1], [1, 0], [0, 1], [1, 1]], dtype=torch.int)  # (B, N)
        coords = official.transform.apply_coords_torch(points, encoded.original_size)
        boxes = None
        if with_boxes:
            x0y0 = rng.uniform([0, 0], [0.5 * w, 0.5 * h], size=(batch, 2))
            x1y1 = x0y0 + rng.uniform([0.1 * w, 0.1 * h], [0.5 * w, 0.5 * h], size=(batch, 2))
            raw_boxes = torch.from_numpy(np.concatenate([x0y0, x1y1], axis=1)).float()  # (B, 4)
            boxes = official.transform.apply_boxes_torch(raw_boxes, encoded.original_size)
        for multimask in (True, False):
            off_logits, off_iou, off_low = official.predict_torch(
                coords, labels, boxes, multimask_output=multimask, return_logits=True
            )
            our_logits, our_iou, our_low = ours.predict_torch(
                coords, labels, boxes, multimask_output=multimask, return_logits=True
            )
            m = 3 if multimask else 1
            assert our_logits.shape == (batch, m, h, w)
            what = f"predict_torch B={batch} multimask={multimask}"
            parity.close(our_iou, off_iou, tol=TOL, what=f"{what} iou")
            parity.close(our_low, off_low, tol=TOL, what=f"{what} low-res logits")
            parity.close(our_logits, off_logits, tol=TOL, what=f"{what} logits")
            if multimask:  # the boolean path once is enough
                off_masks, _, _ = official.predict_torch(coords, labels, boxes, multimask_output=True)
                our_masks, _, _ = ours.predict_torch(coords, labels, boxes, multimask_output=True)
                parity.masks_match(our_masks.numpy(), off_masks.numpy(), off_logits.numpy(), what=f"{what} masks")


# --------------------------------------------------------------------------- vit_l, vit_h


@dataclass
class LargeRun:
    """Outputs of one large variant, computed one implementation at a time."""

    variant: str
    official_features: Tensor
    samkit_features: Tensor
    official: dict[str, Any]  # case -> PredictOutputs, official end to end
    samkit_own: dict[str, Any]  # case -> PredictOutputs, samkit end to end
    samkit_on_official: dict[str, Any]  # case -> PredictOutputs, samkit decoder on the official embedding


@pytest.fixture(scope="module", params=["vit_l", "vit_h"])
def large_run(request: pytest.FixtureRequest, official_checkpoint: Any, parity: Any) -> Iterator[LargeRun]:
    """Encode one image and decode two prompts with a large variant on both sides.

    The official side runs and is freed before samkit's model is built (vit_h fp32 is
    2.5 GB per copy), then the checkpoint file is deleted.
    """
    variant: str = request.param
    path: Path = official_checkpoint(_official_builder(variant), variant, CHECKPOINT_SEEDS[variant])
    h, w = IMAGES["landscape"]
    image = parity.image(h, w, IMAGE_SEEDS["landscape"])
    cases = {case: parity.prompt_kwargs(case, h, w) for case in END_TO_END_CASES}

    model = segment_anything.sam_model_registry[variant](checkpoint=str(path))
    predictor = segment_anything.SamPredictor(model)
    predictor.set_image(image)
    official_features = predictor.get_image_embedding().clone()
    official_outputs = {case: parity.run_predict(predictor, kwargs) for case, kwargs in cases.items()}
    sizes = (tuple(predictor.original_size), tuple(predictor.input_size))
    del model, predictor
    parity.release_memory()

    ours = samkit.SamPredictor(samkit.build_sam(variant, path))
    ours.set_image(image)
    samkit_features = ours.get_image_embedding().clone()
    own_outputs = {case: parity.run_predict(ours, kwargs) for case, kwargs in cases.items()}
    assert (ours.original_size, ours.input_size) == sizes
    _use_embedding(ours, official_features, *sizes)
    on_official = {case: parity.run_predict(ours, kwargs) for case, kwargs in cases.items()}
    del ours
    path.unlink()
    parity.release_memory()
    yield LargeRun(variant, official_features, samkit_features, official_outputs, own_outputs, on_official)


def test_large_embedding(large_run: LargeRun, parity: Any) -> None:
    parity.close(large_run.samkit_features, large_run.official_features, tol=TOL, what=f"{large_run.variant} embedding")


@pytest.mark.parametrize("case", END_TO_END_CASES)
def test_large_end_to_end(large_run: LargeRun, parity: Any, case: str) -> None:
    parity.compare_outputs(
        large_run.samkit_own[case], large_run.official[case], tol=TOL, what=f"{large_run.variant}/{case} end to end"
    )


@pytest.mark.parametrize("case", END_TO_END_CASES)
def test_large_decoder_on_official_embedding(large_run: LargeRun, parity: Any, case: str) -> None:
    parity.compare_outputs(
        large_run.samkit_on_official[case], large_run.official[case], tol=TOL, what=f"{large_run.variant}/{case}"
    )
