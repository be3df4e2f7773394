"""Export-friendly torch wrappers around a :class:`samkit.modeling.sam2.Sam2` (SAM 2 / 2.1).

Traced by :mod:`samkit.onnx.export`; they call the model's own methods (encoder levels, the
mask decoder's all-token prediction and its single-mask fallback) and add nothing learned.

Encoder: ``image`` (1, 3, S, S) float32, the image stretched to the square (bilinear with
antialiasing) and normalized -> three outputs, what :meth:`Sam2.encode_image_levels` gives:

==================  ======================  ================================================
output              shape                   meaning
==================  ======================  ================================================
image_embeddings    (1, C, S/16, S/16)      stride-16 level plus ``no_mem_embed``
high_res_feats_0    (1, C/8, S/4, S/4)      stride-4 level projected by ``conv_s0``
high_res_feats_1    (1, C/4, S/8, S/8)      stride-8 level projected by ``conv_s1``
==================  ======================  ================================================

Decoder inputs: the three encoder outputs plus the SAM 1 ONNX prompt inputs
(``point_coords`` (1, N, 2) in the model's square, ``point_labels`` (1, N) with 2/3 for box
corners and -1 for padding, ``mask_input`` (1, 1, 4h, 4w), ``has_mask_input`` (1,),
``orig_im_size`` (2,) = (H, W)). The graph appends no padding point: SAM 2 always has one after
the points, so callers append (0, 0) labelled -1 after any prompt, box corners first
(``[x0, y0], [x1, y1]`` labelled 2, 3, then the clicks, then the padding point), as
:class:`samkit.onnx.OnnxPredictor` does.

Decoder outputs: ``masks`` (1, 4, H, W) logits at the original size (one bilinear resize),
``iou_predictions`` (1, 4) (sigmoid applied, as SAM 2 does), ``low_res_masks`` (1, 4, 4h, 4w)
clamped to +-32 as the predictor returns them (``masks`` are upscaled from the unclamped
logits), and ``object_score_logits`` (1, 1) (> 0: an object is present; the image predictor
does not use it). Slot 0 is what ``multimask_output=False`` returns: the single-mask token, or,
where its stability score is below the threshold, the best of the three multimask outputs by
predicted IoU (SAM 2's dynamic fallback); slots 1..3 are the three multimask outputs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..modeling.sam2 import Sam2
from .mask_upscaling import upscale_stretched

__all__ = ["Sam2DecoderForExport", "Sam2EncoderForExport"]


class Sam2EncoderForExport(nn.Module):
    """(1, 3, S, S) normalized square image -> embedding and the two projected high-res levels."""

    def __init__(self, sam: Sam2) -> None:
        super().__init__()
        if not sam.config.use_high_res_features:
            raise ValueError(f"{sam.config.name}: ONNX export needs a SAM 2 model with high-resolution features")
        self.sam = sam

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(1, 3, S, S) -> (1, C, S/16, S/16), (1, C/8, S/4, S/4), (1, C/4, S/8, S/8)."""
        embedding, (feat_s0, feat_s1) = self.sam.encode_image_levels(image)
        return embedding, feat_s0, feat_s1


class Sam2DecoderForExport(nn.Module):
    """Prompt encoder + SAM 2 mask decoder + mask upscaling (interface in the module docstring)."""

    def __init__(self, sam: Sam2) -> None:
        super().__init__()
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder
        self.dynamic_single_mask = sam.config.dynamic_multimask_via_stability
        self.low_res_logit_limit = sam.low_res_logit_limit
        self.register_buffer("image_pe", sam.prompt_encoder.get_dense_pe().detach().clone(), persistent=False)

    def _dense_embedding(self, mask_input: Tensor, has_mask_input: Tensor) -> Tensor:
        """The mask embedding where ``has_mask_input`` is 1, the learned no-mask embedding where 0: (1, C, h, w)."""
        pe = self.prompt_encoder
        masked = pe.embed_masks(mask_input)  # (1, C, h, w)
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1)  # (1, C, 1, 1)
        use = has_mask_input.reshape(1, 1, 1, 1)
        return use * masked + (1 - use) * no_mask

    def forward(
        self,
        image_embeddings: Tensor,
        high_res_feats_0: Tensor,
        high_res_feats_1: Tensor,
        point_coords: Tensor,
        point_labels: Tensor,
        mask_input: Tensor,
        has_mask_input: Tensor,
        orig_im_size: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Decode one prompt set.

        Returns:
            masks (1, 4, H, W), iou_predictions (1, 4), low_res_masks (1, 4, 4h, 4w) (clamped),
            object_score_logits (1, 1).
        """
        sparse = self.prompt_encoder.embed_points(point_coords, point_labels, pad=False)  # (1, N, C)
        dense = self._dense_embedding(mask_input, has_mask_input)  # (1, C, h, w)
        decoder = self.mask_decoder
        all_masks, all_iou, object_scores = decoder.predict_all_masks(
            image_embeddings, self.image_pe, sparse, dense, (high_res_feats_0, high_res_feats_1), None
        )  # (1, 4, 4h, 4w), (1, 4), (1, 1)
        if self.dynamic_single_mask:
            single_mask, single_iou = decoder.single_mask_with_fallback(all_masks, all_iou)  # (1, 1, 4h, 4w), (1, 1)
        else:
            single_mask, single_iou = all_masks[:, :1], all_iou[:, :1]
        low_res = torch.cat([single_mask, all_masks[:, 1:]], dim=1)  # (1, 4, 4h, 4w)
        iou = torch.cat([single_iou, all_iou[:, 1:]], dim=1)  # (1, 4)
        masks = upscale_stretched(low_res, orig_im_size)  # (1, 4, H, W)
        if self.low_res_logit_limit is not None:
            limit = float(self.low_res_logit_limit)
            low_res = low_res.clamp(-limit, limit)
        return masks, iou, low_res, object_scores
