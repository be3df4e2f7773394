"""Parity of samkit's HQ-SAM with the official ``segment-anything-hq==0.3`` package.

The official builders load checkpoints with ``strict=False``, so the oracle here is built
without a checkpoint, perturbed (every floating tensor gets seeded N(0, 0.02) noise), saved in
the official format and then loaded strictly into BOTH sides: samkit through
``samkit.build_sam(variant, path)`` (its own strict loader), the official model with
``load_state_dict(strict=True)``. Each test also checks that both sides hold the same tensors.

* A tiny HQ model (grid 20, window 7: padded windows) runs every prompt case with
  ``multimask_output`` and ``hq_token_only`` both ways, ``mask_input``, batched
  ``predict_torch`` (more prompts than the decoder's chunk) and an embedding round trip.
* hq_vit_b and hq_vit_tiny (the released architectures) run end to end on one image.
* hq_vit_l and hq_vit_h (``slow``) run one call each, one side at a time.

Tolerances as for SAM 1: logits and scores to 1e-4 of their scale; boolean masks identical
except where the official logit is within 1e-3 of zero.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import samkit
from samkit.config import HQSamConfig
from samkit.modeling.hq_sam import HQSam

with warnings.catch_warnings():
    # timm warns about deprecated import paths and about the package re-registering TinyViT names.
    warnings.simplefilter("ignore", FutureWarning)
    warnings.simplefilter("ignore", UserWarning)
    import segment_anything_hq
    from segment_anything_hq.modeling import ImageEncoderViT, MaskDecoderHQ, PromptEncoder, Sam, TwoWayTransformer

TOL = 1e-4
TINY_IMG_SIZE = 320
TINY_WINDOW = 7
# TinyViT's classification head is in the official checkpoints and not built by samkit.
TINY_VIT_HEAD = ("image_encoder.head.", "image_encoder.norm_head.")
OFFICIAL_NAMES = {"hq_vit_b": "vit_b", "hq_vit_l": "vit_l", "hq_vit_h": "vit_h", "hq_vit_tiny": "vit_tiny"}


# --------------------------------------------------------------------------- helpers


def build_official(variant: str) -> nn.Module:
    """The official HQ model of a released variant, without weights (no checkpoint: no print)."""
    return segment_anything_hq.sam_model_registry[OFFICIAL_NAMES[variant]]()


def build_tiny_official() -> Sam:
    """An official HQ-SAM with the tiny architecture of :func:`tiny_hq_config`."""
    grid = TINY_IMG_SIZE // 16
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=TINY_IMG_SIZE,
            patch_size=16,
            embed_dim=64,
            depth=3,
            num_heads=2,
            mlp_ratio=4.0,
            out_chans=32,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=TINY_WINDOW,
            global_attn_indexes=(1,),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=32, image_embedding_size=(grid, grid), input_image_size=(TINY_IMG_SIZE, TINY_IMG_SIZE), mask_in_chans=16
        ),
        mask_decoder=MaskDecoderHQ(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=32, mlp_dim=64, num_heads=2),
            transformer_dim=32,
            iou_head_depth=3,
            iou_head_hidden_dim=32,
            vit_dim=64,
        ),
    ).eval()


def tiny_hq_config(parity: Any) -> HQSamConfig:
    """samkit's config of :func:`build_tiny_official` (the SAM 1 parity tests' tiny model, HQ)."""
    base = parity.tiny_config()
    return HQSamConfig(
        name="tiny_hq_parity",
        image_encoder=base.image_encoder,
        prompt_encoder=base.prompt_encoder,
        mask_decoder=base.mask_decoder,
    )


def load_official(builder: Callable[[], nn.Module], path: Path) -> nn.Module:
    """An official model with the checkpoint loaded strictly; ``eval()`` after loading (TinyViT
    caches its attention biases in ``eval()``)."""
    model = builder()
    model.load_state_dict(torch.load(path, weights_only=True), strict=True)
    return model.eval()


def assert_same_tensors(ours: nn.Module, official: nn.Module, ignored: tuple[str, ...] = ()) -> None:
    """samkit holds exactly the official tensors: same keys (but ``ignored`` prefixes), equal values."""
    ours_sd, official_sd = ours.state_dict(), official.state_dict()
    expected = {k for k in official_sd if not k.startswith(ignored)}
    assert set(ours_sd) == expected, f"keys differ: {sorted(set(ours_sd) ^ expected)[:5]}"
    differ = [k for k in expected if not torch.equal(ours_sd[k], official_sd[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


def hq_prompt_cases(parity: Any, height: int, width: int) -> dict[str, dict[str, Any]]:
    """Every SAM 1 prompt case with ``hq_token_only`` False and True."""
    return {
        f"{case}/hq_only={hq_only}": {**parity.prompt_kwargs(case, height, width), "hq_token_only": hq_only}
        for case in parity.prompt_cases
        for hq_only in (False, True)
    }


# --------------------------------------------------------------------------- tiny HQ model


@pytest.fixture(scope="module")
def tiny_pair(parity: Any, official_checkpoint: Any) -> Iterator[tuple[samkit.SamPredictor, Any]]:
    """(samkit predictor, official predictor) of the tiny HQ model, one perturbed checkpoint."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread beats two
    path: Path = official_checkpoint(build_tiny_official, "tiny_hq", seed=21)
    official = load_official(build_tiny_official, path)
    ours = samkit.build_sam(tiny_hq_config(parity), path)
    assert isinstance(ours, HQSam)
    assert_same_tensors(ours, official)
    yield samkit.SamPredictor(ours), segment_anything_hq.SamPredictor(official)
    torch.set_num_threads(threads)


@pytest.mark.parametrize("size", [(546, 967), (7, 10)], ids=["landscape", "tiny"])
def test_tiny_hq_every_prompt(tiny_pair: tuple[Any, Any], parity: Any, size: tuple[int, int]) -> None:
    ours, official = tiny_pair
    h, w = size
    image = parity.image(h, w, seed=h)
    ours.set_image(image)
    official.set_image(image)
    parity.close(ours.get_image_embedding(), official.get_image_embedding(), tol=TOL, what="embedding")
    for name, kwargs in hq_prompt_cases(parity, h, w).items():
        parity.compare_predict(ours, official, kwargs, what=name, tol=TOL)
    # mask_input (the plain decoder path) from a previous call's low-res logits, fed to both.
    _, _, low_res = official.predict(**parity.prompt_kwargs("point", h, w))
    for hq_only in (False, True):
        refine = {**parity.prompt_kwargs("pos_neg", h, w), "mask_input": low_res, "hq_token_only": hq_only}
        parity.compare_predict(ours, official, refine, what=f"mask_input/hq_only={hq_only}", tol=TOL)


def test_tiny_hq_predict_torch_batch(tiny_pair: tuple[Any, Any], parity: Any) -> None:
    """Seven prompts (the decoder runs them in chunks of four) with points and boxes."""
    ours, official = tiny_pair
    h, w = 300, 420
    image = parity.image(h, w, seed=5)
    ours.set_image(image)
    official.set_image(image)
    rng = np.random.default_rng(0)
    batch = 7
    points = torch.from_numpy(rng.uniform(0, [w, h], size=(batch, 2, 2)))
    labels = torch.tensor([[1, 0]] * batch)
    corners = np.sort(rng.uniform(0, [w, h], size=(batch, 2, 2)), axis=1)
    boxes = torch.from_numpy(corners.reshape(batch, 4))
    coords = official.transform.apply_coords_torch(points, (h, w))
    boxes = official.transform.apply_boxes_torch(boxes, (h, w))
    for multimask in (True, False):
        for hq_only in (False, True):
            kwargs = {"multimask_output": multimask, "hq_token_only": hq_only, "return_logits": True}
            off_logits, off_iou, off_low = official.predict_torch(coords, labels, boxes, **kwargs)
            our_logits, our_iou, our_low = ours.predict_torch(coords, labels, boxes, **kwargs)
            assert our_logits.shape == (batch, 1, h, w)
            what = f"predict_torch multimask={multimask} hq_only={hq_only}"
            parity.close(our_iou, off_iou, tol=TOL, what=f"{what} iou")
            parity.close(our_low, off_low, tol=TOL, what=f"{what} low-res")
            parity.close(our_logits, off_logits, tol=TOL, what=f"{what} logits")


def test_tiny_hq_embedding_round_trip(tiny_pair: tuple[Any, Any], parity: Any, tmp_path: Path) -> None:
    """A saved embedding carries the HQ features: the reloaded predictor still gives the official masks."""
    ours, official = tiny_pair
    h, w = 200, 320
    image = parity.image(h, w, seed=9)
    official.set_image(image)
    ours.set_image(image)
    ours.save_embedding(tmp_path / "hq.emb")
    ours.reset_image()
    ours.load_embedding(tmp_path / "hq.emb")
    for case in ("point", "box"):
        kwargs = {**parity.prompt_kwargs(case, h, w), "hq_token_only": False}
        parity.compare_predict(ours, official, kwargs, what=f"reloaded/{case}", tol=TOL)


def test_tiny_hq_features_matter(tiny_pair: tuple[Any, Any], parity: Any, tmp_path: Path) -> None:
    """Guard for the tests above: the HQ token and the HQ features (zeroed in a saved embedding)
    change the masks."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    ours, _ = tiny_pair
    h, w = 200, 320
    ours.set_image(parity.image(h, w, seed=9))
    kwargs = {**parity.prompt_kwargs("point", h, w), "return_logits": True}
    both, _, _ = ours.predict(**kwargs)
    hq_only, _, _ = ours.predict(**kwargs, hq_token_only=True)
    assert float(np.abs(both - hq_only).max()) > 1e-2
    ours.save_embedding(tmp_path / "hq.emb")
    tensors = load_file(tmp_path / "hq.emb")
    tensors["hq_features"].zero_()
    with safe_open(str(tmp_path / "hq.emb"), framework="pt") as handle:
        metadata = handle.metadata()
    save_file(tensors, tmp_path / "zeroed.emb", metadata=metadata)
    ours.load_embedding(tmp_path / "zeroed.emb")
    without_features, _, _ = ours.predict(**kwargs)
    assert float(np.abs(both - without_features).max()) > 1e-2


# --------------------------------------------------------------------------- released architectures


@pytest.mark.parametrize("variant", ["hq_vit_b", "hq_vit_tiny"])
def test_released_variant(variant: str, parity: Any, official_checkpoint: Any) -> None:
    """hq_vit_b / hq_vit_tiny end to end on one image: three calls covering both options."""
    builder = partial(build_official, variant)
    path: Path = official_checkpoint(builder, variant, seed=31)
    official = load_official(builder, path)
    ours = samkit.build_sam(variant, path)
    ignored = TINY_VIT_HEAD if variant == "hq_vit_tiny" else ()
    assert_same_tensors(ours, official, ignored)
    h, w = 546, 967
    image = parity.image(h, w, seed=1)
    ours_predictor, official_predictor = samkit.SamPredictor(ours), segment_anything_hq.SamPredictor(official)
    ours_predictor.set_image(image)
    official_predictor.set_image(image)
    parity.close(ours_predictor.get_image_embedding(), official_predictor.get_image_embedding(), tol=TOL, what="embedding")
    calls = {
        "point/multimask/hq_only": {**parity.prompt_kwargs("point", h, w), "hq_token_only": True},
        "point/multimask": {**parity.prompt_kwargs("point", h, w), "hq_token_only": False},
        "box_points/single": {**parity.prompt_kwargs("box_points", h, w), "multimask_output": False},
    }
    for name, kwargs in calls.items():
        parity.compare_predict(ours_predictor, official_predictor, kwargs, what=f"{variant}/{name}", tol=TOL)
    del ours, official, ours_predictor, official_predictor
    path.unlink()
    parity.release_memory()


@pytest.mark.once  # asked to pass once (it did, 2026-12-03: 451 s and 1262 s on a loaded 2-core VM)
@pytest.mark.parametrize("variant", ["hq_vit_l", "hq_vit_h"])
def test_large_variant_one_call(variant: str, parity: Any, official_checkpoint: Any) -> None:
    """hq_vit_l / hq_vit_h: one predict call, one side at a time (vit_h is 2.5 GB per copy)."""
    builder = partial(build_official, variant)
    path: Path = official_checkpoint(builder, variant, seed=41)
    h, w = 546, 967
    image = parity.image(h, w, seed=1)
    kwargs = {**parity.prompt_kwargs("point", h, w), "hq_token_only": False}

    official = load_official(builder, path)
    official_tensors = {k: v.clone() for k, v in official.mask_decoder.state_dict().items()}
    predictor = segment_anything_hq.SamPredictor(official)
    predictor.set_image(image)
    expected = parity.run_predict(predictor, kwargs)
    del official, predictor
    parity.release_memory()

    ours = samkit.build_sam(variant, path)
    ours_decoder = ours.mask_decoder.state_dict()
    assert set(ours_decoder) == set(official_tensors)
    assert all(torch.equal(ours_decoder[k], v) for k, v in official_tensors.items())
    predictor = samkit.SamPredictor(ours)
    predictor.set_image(image)
    actual = parity.run_predict(predictor, kwargs)
    del ours, predictor
    path.unlink()
    parity.release_memory()
    parity.compare_outputs(actual, expected, what=f"{variant}/point", tol=TOL)
