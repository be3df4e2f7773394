"""Parity of samkit's ``vit_t`` (MobileSAM / TinyViT) with the reference MobileSAM code.

The oracle is the ``mobile_sam`` package (PyPI ``mobilesam-mirror``, needs ``timm``). Both
models load the same perturbed checkpoint in MobileSAM's format (a plain state dict that
includes TinyViT's unused classification head) and are compared through the public
predictors on two images and several prompts.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import samkit
from samkit.build import _IGNORED_PREFIXES
from samkit.modeling import Sam
from samkit.weights import CheckpointError, infer_variant, read_state_dict

with warnings.catch_warnings():
    # timm warns about the deprecated import paths MobileSAM uses and about MobileSAM
    # re-registering timm's own TinyViT model names.
    warnings.simplefilter("ignore", FutureWarning)
    warnings.simplefilter("ignore", UserWarning)
    import mobile_sam
    from mobile_sam import sam_model_registry as ref_registry

HEAD_PREFIXES = ("image_encoder.head.", "image_encoder.norm_head.")

# fp32 tolerances: both sides compute the same math in a different order.
ATOL = 1e-4
RTOL = 1e-4
# Binary masks may differ only where the logit is this close to the threshold.
MASK_MARGIN = 1e-3


def _perturb_(model: torch.nn.Module, seed: int) -> None:
    """Add seeded noise to every floating tensor of ``model`` (in place).

    N(0, 0.02) everywhere, except: BatchNorm running variances are scaled by exp(N(0, 0.2))
    (they must stay positive), and attention biases get N(0, 0.5) so that a wrong bias
    index would move the outputs far beyond the tolerances (they start at 0).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.dtype.is_floating_point:
                continue
            noise = torch.randn(t.shape, generator=g)
            if name.endswith("running_var"):
                t.mul_(torch.exp(0.2 * noise))
            elif name.endswith("attention_biases"):
                t.add_(0.5 * noise)
            else:
                t.add_(0.02 * noise)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A perturbed vit_t checkpoint in MobileSAM's format (plain state dict, head included)."""
    torch.manual_seed(0)
    ref = ref_registry["vit_t"]()
    _perturb_(ref, seed=1234)
    path = tmp_path_factory.mktemp("mobilesam") / "mobile_sam_perturbed.pt"
    torch.save(ref.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def ref_model(checkpoint: Path) -> torch.nn.Module:
    model = ref_registry["vit_t"](checkpoint=str(checkpoint))
    # MobileSAM's builder calls eval() *before* loading, and its attention caches the
    # gathered biases in eval(): the README's `.eval()` after building refreshes them.
    return model.eval()


@pytest.fixture(scope="module")
def our_model(checkpoint: Path) -> Sam:
    return samkit.build_sam("vit_t", checkpoint)


def _image(height: int, width: int, seed: int) -> np.ndarray:
    """Deterministic (H, W, 3) uint8 test image: gradient, a few shapes, mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([xx / width * 180, yy / height * 160, (xx + yy) / (width + height) * 120], axis=-1)
    for _ in range(5):
        cy, cx = rng.uniform(0.15, 0.85) * height, rng.uniform(0.15, 0.85) * width
        ry, rx = rng.uniform(0.08, 0.25) * height, rng.uniform(0.08, 0.25) * width
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        img[inside] = rng.uniform(0, 255, size=3)
    img += rng.normal(0, 4, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


IMAGES = {"landscape_967x546": (546, 967, 0), "portrait_420x700": (700, 420, 1)}


@dataclass
class Encoded:
    """Both predictors with the same image set."""

    image: np.ndarray
    ours: samkit.SamPredictor
    ref: mobile_sam.SamPredictor


@pytest.fixture(scope="module", params=sorted(IMAGES))
def encoded(request: pytest.FixtureRequest, our_model: Sam, ref_model: torch.nn.Module) -> Iterator[Encoded]:
    height, width, seed = IMAGES[request.param]
    image = _image(height, width, seed)
    ours = samkit.SamPredictor(our_model)
    ref = mobile_sam.SamPredictor(ref_model)
    ours.set_image(image)
    ref.set_image(image)
    yield Encoded(image, ours, ref)


def _prompt(name: str, height: int, width: int) -> dict[str, np.ndarray]:
    point = np.array([[0.45 * width, 0.40 * height]])
    negative = np.array([[0.70 * width, 0.75 * height]])
    box = np.array([0.20 * width, 0.15 * height, 0.70 * width, 0.80 * height])
    if name == "point":
        return {"point_coords": point, "point_labels": np.array([1])}
    if name == "pos_neg_points":
        return {"point_coords": np.concatenate([point, negative]), "point_labels": np.array([1, 0])}
    if name == "box":
        return {"box": box}
    if name == "box_point":
        return {"box": box, "point_coords": point, "point_labels": np.array([1])}
    raise ValueError(name)


def test_image_embedding(encoded: Encoded) -> None:
    ours = encoded.ours.get_image_embedding()
    ref = encoded.ref.get_image_embedding()
    assert ours.shape == ref.shape == (1, 256, 64, 64)
    assert encoded.ours.input_size == encoded.ref.input_size
    torch.testing.assert_close(ours.float(), ref, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("multimask", [True, False], ids=["multimask", "single"])
@pytest.mark.parametrize("prompt", ["point", "pos_neg_points", "box", "box_point"])
def test_predict(encoded: Encoded, prompt: str, multimask: bool) -> None:
    h, w = encoded.image.shape[:2]
    kwargs = _prompt(prompt, h, w)
    logits, iou, low = encoded.ours.predict(**kwargs, multimask_output=multimask, return_logits=True)
    r_logits, r_iou, r_low = encoded.ref.predict(**kwargs, multimask_output=multimask, return_logits=True)
    n_masks = 3 if multimask else 1
    assert logits.shape == r_logits.shape == (n_masks, h, w)
    np.testing.assert_allclose(low, r_low, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(iou, r_iou, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(logits, r_logits, atol=ATOL, rtol=RTOL)

    # The reference's binary masks are, by its code, its logits > 0 (mask_threshold): compare
    # our boolean output with them, so the reference decoder runs once per case.
    masks, _, _ = encoded.ours.predict(**kwargs, multimask_output=multimask)
    r_masks = r_logits > ref_threshold(encoded)
    assert masks.dtype == np.bool_
    differ = masks != r_masks
    assert not np.any(differ & (np.abs(r_logits) >= MASK_MARGIN)), "binary masks differ away from the threshold"
    # The comparison means something only if the masks are neither empty nor full.
    assert 0 < r_masks.mean() < 1


def ref_threshold(encoded: Encoded) -> float:
    threshold = encoded.ref.model.mask_threshold
    assert threshold == encoded.ours.model.mask_threshold == 0.0
    return threshold


def test_ignored_prefixes_are_exactly_the_classification_head(
    ref_model: torch.nn.Module, our_model: Sam
) -> None:
    ref_keys = set(ref_model.state_dict())
    our_keys = set(our_model.state_dict())
    assert our_keys <= ref_keys
    unused = ref_keys - our_keys
    assert unused == {k for k in ref_keys if k.startswith(HEAD_PREFIXES)}
    assert unused == {
        "image_encoder.head.weight",
        "image_encoder.head.bias",
        "image_encoder.norm_head.weight",
        "image_encoder.norm_head.bias",
    }
    assert _IGNORED_PREFIXES["vit_t"] == HEAD_PREFIXES
    # The attention-bias index is a non-persistent buffer on both sides: not in checkpoints.
    assert not any("attention_bias_idxs" in k for k in ref_keys | our_keys)


def test_checkpoint_with_head_loads(checkpoint: Path, our_model: Sam) -> None:
    state = read_state_dict(checkpoint)
    assert {"image_encoder.head.weight", "image_encoder.norm_head.weight"} <= set(state)
    assert infer_variant(state) == "vit_t"
    ours = our_model.state_dict()
    for key, value in ours.items():
        torch.testing.assert_close(value, state[key], atol=0, rtol=0, msg=key)


def test_unexpected_or_missing_key_still_errors(checkpoint: Path, tmp_path: Path) -> None:
    state = read_state_dict(checkpoint)
    extra = dict(state)
    # Starts like the head but is not under it: must not be swallowed by the ignore list.
    extra["image_encoder.head_extra.weight"] = torch.zeros(3)
    path = tmp_path / "extra.pt"
    torch.save(extra, path)
    with pytest.raises(CheckpointError, match="head_extra"):
        samkit.build_sam("vit_t", path)

    missing = {k: v for k, v in state.items() if k != "image_encoder.layers.2.blocks.0.attn.attention_biases"}
    path = tmp_path / "missing.pt"
    torch.save(missing, path)
    with pytest.raises(CheckpointError, match="attention_biases"):
        samkit.build_sam("vit_t", path)
