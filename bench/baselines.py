"""Reference implementations that ``samkit bench`` measures samkit against.

This file is the only place the benchmark touches the official code; it lives outside
``src/samkit`` on purpose (the package never imports the oracles). It needs the bench
extra: ``pip install -e ".[bench]"`` (segment-anything, torchvision, mobilesam-mirror, timm).

Every function returns objects with the official API (``SamPredictor``,
``SamAutomaticMaskGenerator``), which samkit's classes mirror.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import nn


def official_available() -> bool:
    """True when the official ``segment_anything`` package imports."""
    try:
        import segment_anything  # noqa: F401
    except ImportError:
        return False
    return True


def mobilesam_available() -> bool:
    """True when the reference MobileSAM package imports."""
    try:
        import mobile_sam  # noqa: F401
    except ImportError:
        return False
    return True


def _perturb_(model: torch.nn.Module, seed: int) -> None:
    """Add N(0, 0.02) noise to every floating tensor (official init leaves rel_pos/pos_embed at 0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.dtype.is_floating_point:
                continue
            noise = torch.randn(tensor.shape, generator=generator) * 0.02
            if name.endswith("running_var"):
                tensor.copy_(tensor.abs() + noise.abs())  # keep BN variances positive
            else:
                tensor.add_(noise)


def make_checkpoint(
    variant: str,
    path: str | os.PathLike[str],
    seed: int = 0,
    *,
    construct_for: np.ndarray | None = None,
    **construct_kwargs: Any,
) -> str:
    """Write a perturbed official-format checkpoint for ``variant`` to ``path``.

    Args:
        variant: ``vit_b``, ``vit_l``, ``vit_h``, ``vit_t``, ``hq_vit_*`` or ``sam2.1_hiera_*``.
        path: where to write the state dict (SAM 2: ``{"model": state_dict}``).
        seed: seed of the initial weights and of the N(0, 0.02) perturbation.
        construct_for: if given, an (H, W, 3) uint8 RGB image for which the decoder is then
            constructed to make point-local, stable masks (:func:`construct_decoder_`), so that
            segment-everything comparisons keep a meaningful number of masks.
        construct_kwargs: passed to :func:`construct_decoder_` (``taus``, ``sharpness``,
            ``iou_shift``, ...).

    Returns:
        ``path`` as a string.
    """
    with torch.random.fork_rng():  # seeded initial weights too: the same checkpoint every run
        torch.manual_seed(seed)
        model = _official_model(variant, None)
    _perturb_(model, seed)
    if variant.startswith("sam2"):
        if construct_for is not None or construct_kwargs:
            raise ValueError("the constructed decoder is SAM 1's")
        torch.save({"model": model.state_dict()}, path)  # SAM 2's released files wrap the state dict
        return os.fspath(path)
    if construct_for is not None:
        construct_decoder_(model, construct_for, **construct_kwargs)
    elif construct_kwargs:
        raise ValueError("construct_kwargs given without construct_for")
    torch.save(model.state_dict(), path)
    return os.fspath(path)


# samkit SAM 2 name -> the official config inside the installed sam2 package.
SAM2_CONFIGS = {
    "sam2.1_hiera_t": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_hiera_s": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_hiera_b+": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_l": "configs/sam2.1/sam2.1_hiera_l.yaml",
}


def _official_model(variant: str, checkpoint: str | None) -> torch.nn.Module:
    """The reference model of ``variant`` (vit_*, vit_t = MobileSAM, hq_vit_*, sam2.1_hiera_*)."""
    if variant.startswith("sam2"):
        from sam2.build_sam import build_sam2

        # apply_postprocessing (the dynamic single-mask fallback) is what samkit's SAM 2 does too.
        return build_sam2(SAM2_CONFIGS[variant], ckpt_path=checkpoint, device="cpu", apply_postprocessing=True).eval()
    if variant.startswith("hq_"):
        from segment_anything_hq import sam_model_registry as registry

        return registry[variant.removeprefix("hq_")](checkpoint=checkpoint).eval()
    if variant == "vit_t":
        from mobile_sam import sam_model_registry as registry
    else:
        from segment_anything import sam_model_registry as registry
    return registry[variant](checkpoint=checkpoint).eval()


def build_model(variant: str, checkpoint: str) -> torch.nn.Module:
    """The reference model for ``variant`` with the given checkpoint, in eval mode."""
    return _official_model(variant, checkpoint)


def predictor(model: torch.nn.Module, variant: str = "vit_b") -> Any:
    """The reference predictor for a model (``SAM2ImagePredictor`` for SAM 2)."""
    if variant.startswith("sam2"):
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        return SAM2ImagePredictor(model)
    if variant.startswith("hq_"):
        from segment_anything_hq import SamPredictor
    elif variant == "vit_t":
        from mobile_sam import SamPredictor
    else:
        from segment_anything import SamPredictor
    return SamPredictor(model)


def mask_generator(model: torch.nn.Module, variant: str = "vit_b", **kwargs: Any) -> Any:
    """The official automatic mask generator of ``variant``'s family (segment-anything's or sam2's)."""
    if variant.startswith("sam2"):
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

        return SAM2AutomaticMaskGenerator(model, **kwargs)
    from segment_anything import SamAutomaticMaskGenerator

    return SamAutomaticMaskGenerator(model, **kwargs)


# ------------------------------------------------------------------ constructed decoder
# A randomly perturbed SAM predicts IoUs near 0 and noisy, image-wide masks (every box is the
# whole image, so NMS keeps one), so a segment-everything comparison on it says little.
# ``construct_decoder_`` turns a perturbed official model into one that behaves like a (toy)
# trained SAM by choosing decoder weights, which both implementations then load from the same
# checkpoint:
#
# * in the last two-way layer, image tokens attend to the prompt point through its positional
#   encoding only (q/k projections pick matching sin/cos channels), so the attention to the
#   point is a bump around it that also depends a little on the image content;
# * that layer's output is scaled up so the bump dominates the image tokens, and the upscaling
#   convolutions are made spatially uniform (no checkerboard);
# * the hypernetwork outputs are fitted (least squares) so that mask k = {bump > tau_k}: three
#   nested masks per point, like SAM's whole / part / sub-part, with sharp edges (stable) and
#   boxes that differ from point to point;
# * the IoU head's bias is shifted so its predictions straddle the thresholds.


@torch.no_grad()
def construct_decoder_(
    model: nn.Module,
    image: np.ndarray,
    *,
    taus: tuple[float, float, float] = (0.6, 0.7, 0.8),
    sharpness: float = 60.0,
    iou_shift: float = 0.8,
    attention_gain: float = 4.0,
    pe_scale: float = 0.8,
) -> None:
    """Choose decoder weights of a perturbed official model so that it makes point-local masks.

    See the comment above. ``image`` ((H, W, 3) uint8 RGB) is used to fit the hypernetwork outputs
    (a few points). The model is changed in place.
    """
    from segment_anything import SamPredictor

    decoder, prompt_encoder = model.mask_decoder, model.prompt_encoder
    prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.mul_(pe_scale)  # lower frequencies: wider bumps
    decoder.iou_prediction_head.layers[-1].bias.add_(iou_shift)
    for module in decoder.output_upscaling:
        if isinstance(module, nn.ConvTranspose2d):  # same kernel at the 4 positions: no checkerboard
            module.weight.copy_(module.weight.mean(dim=(2, 3), keepdim=True).expand_as(module.weight))
    first, last = decoder.transformer.layers[0], decoder.transformer.layers[-1]
    first.norm4.weight.mul_(0.1)  # image tokens small next to the positional encoding ...
    first.norm4.bias.mul_(0.1)
    last.norm3.weight.mul_(0.05)  # ... and prompt tokens small next to theirs
    last.norm3.bias.mul_(0.05)
    attn = last.cross_attn_image_to_token
    attn.v_proj.weight.mul_(20.0)
    inner, dim = attn.q_proj.weight.shape
    heads = attn.num_heads
    per_head = inner // heads // 2  # frequencies per head: their sin and cos channels
    select = torch.zeros(inner, dim)
    for h in range(heads):
        for j in range(per_head):
            f = h * per_head + j
            select[h * 2 * per_head + j, f] = 1.0  # sin of frequency f
            select[h * 2 * per_head + per_head + j, dim // 2 + f] = 1.0  # cos of frequency f
    attn.q_proj.weight.copy_(select * attention_gain**0.5)
    attn.k_proj.weight.copy_(select * attention_gain**0.5)
    attn.q_proj.bias.zero_()
    attn.k_proj.bias.zero_()
    attn.out_proj.weight.mul_(30.0)
    used = select.sum(0) > 0  # token channels the q/k read: silence them in the learned embeddings
    for table in [decoder.iou_token.weight, decoder.mask_tokens.weight, prompt_encoder.not_a_point_embed.weight]:
        table[:, used] *= 0.05
    for embedding in prompt_encoder.point_embeddings:
        embedding.weight[:, used] *= 0.05

    # Fit the hypernetwork outputs: mask k ~ sharpness * (attention to the point - tau_k).
    predictor = SamPredictor(model)
    predictor.set_image(image)
    captured: dict[str, Any] = {}
    hooks = [
        attn.register_forward_hook(lambda m, a, kw, o: captured.__setitem__("qk", (kw["q"], kw["k"])), with_kwargs=True),
        decoder.output_upscaling.register_forward_hook(lambda m, i, o: captured.__setitem__("up", o)),
    ]
    rng = np.random.default_rng(0)
    n = 5
    points = np.stack([rng.uniform(0, image.shape[1], n), rng.uniform(0, image.shape[0], n)], axis=1)
    coords = torch.as_tensor(predictor.transform.apply_coords(points, image.shape[:2]))
    predictor.predict_torch(coords[:, None], torch.ones(n, 1, dtype=torch.int))
    for hook in hooks:
        hook.remove()
    q, k = captured["qk"]
    qh = attn._separate_heads(attn.q_proj(q), heads)  # (n, nh, N, hd)
    kh = attn._separate_heads(attn.k_proj(k), heads)  # (n, nh, T, hd)
    to_point = torch.softmax(qh @ kh.transpose(-1, -2) / qh.shape[-1] ** 0.5, dim=-1)[..., -2].mean(1)  # (n, N)
    side = int(to_point.shape[1] ** 0.5)
    bump = nn.functional.interpolate(to_point.view(n, 1, side, side), scale_factor=4, mode="bilinear")  # (n, 1, 4s, 4s)
    upscaled = captured["up"]  # (n, C/8, 4s, 4s)
    features = upscaled.permute(0, 2, 3, 1).reshape(-1, upscaled.shape[1]).double()  # (n*16s^2, C/8)
    for tau, mlp in zip(taus, decoder.output_hypernetworks_mlps[1:]):
        target = (bump.reshape(-1).double() - tau) * sharpness
        weights = torch.linalg.lstsq(features, target[:, None]).solution[:, 0]
        mlp.layers[-1].weight.zero_()
        mlp.layers[-1].bias.copy_(weights.float())
    single = decoder.output_hypernetworks_mlps[0].layers[-1]
    single.weight.zero_()
    single.bias.copy_(decoder.output_hypernetworks_mlps[2].layers[-1].bias)


# ------------------------------------------------------------------ video (SAM 2.x)
def make_video_checkpoint(variant: str, path: str | os.PathLike[str], seed: int = 0, object_score_bias: float = 0.5) -> str:
    """A perturbed official video checkpoint (``{"model": state_dict}``) whose objects are present.

    Perturbed default-init weights score every object about -0.2 ("absent": every mask the
    -1024 placeholder), so the object-score head's last bias gets ``object_score_bias`` and the
    tracked masks carry information.
    """
    from sam2.build_sam import build_sam2_video_predictor

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_sam2_video_predictor(SAM2_CONFIGS[variant], None, device="cpu")
    _perturb_(model, seed)
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.add_(object_score_bias)
    torch.save({"model": model.state_dict()}, path)
    return os.fspath(path)


def _opencv_connected_components(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels, areas) of 8-connected components per mask, shaped like sam2's CUDA extension returns."""
    import cv2

    labels_out = torch.zeros(mask.shape, dtype=torch.int32)
    areas_out = torch.zeros(mask.shape, dtype=torch.int32)
    for i in range(mask.shape[0]):
        m = mask[i, 0].to(torch.uint8).numpy()
        count, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
        labels_t = torch.from_numpy(labels.astype(np.int32))
        areas = torch.from_numpy(stats[:, cv2.CC_STAT_AREA].astype(np.int32))
        labels_out[i, 0] = labels_t
        areas_out[i, 0] = torch.where(labels_t > 0, areas[labels_t.long()], torch.zeros_like(labels_t))
    return labels_out, areas_out


def video_predictor(variant: str, checkpoint: str, image_size: int | None = None) -> Any:
    """The official ``SAM2VideoPredictor`` on the CPU, with OpenCV's connected components in place
    of the CUDA extension a CPU install lacks (otherwise it skips hole filling, which samkit does).
    ``image_size``: the model input (the official ``++model.image_size`` override); None keeps 1024."""
    import sam2.utils.misc as misc
    from sam2.build_sam import build_sam2_video_predictor

    misc.get_connected_components = _opencv_connected_components
    overrides = [] if image_size is None else [f"++model.image_size={image_size}"]
    return build_sam2_video_predictor(SAM2_CONFIGS[variant], checkpoint, device="cpu", hydra_overrides_extra=overrides)
