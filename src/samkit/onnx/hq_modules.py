"""Export-friendly torch wrappers around a :class:`samkit.modeling.hq_sam.HQSam` (HQ-SAM).

Traced by :mod:`samkit.onnx.export`; they use the model's own modules and add nothing learned.

Encoder: ``image`` as for SAM 1 ((1, 3, S, S) float32 normalized and zero-padded, or with
``raw_input`` the (h, w, 3) uint8 image resized to longest side S) -> ``image_embeddings``
(1, C, S/16, S/16) and ``hq_features`` (1, C/8, S/4, S/4). The HQ features are what the HQ
decoder reads from the encoder's early (interm) features: ``compress_vit_feat(early) +
embedding_encoder(embedding)``, computed once per image in the encoder graph, as
:meth:`HQSam.encode_image_hq` does, rather than once per prompt in the decoder.

Decoder inputs: ``image_embeddings``, ``hq_features``, the SAM 1 ONNX prompt inputs
(``point_coords``, ``point_labels``, ``mask_input``, ``has_mask_input``, ``orig_im_size``,
with the SAM 1 point conventions: box corners labelled 2/3 after the points, a padding point
(0, 0) labelled -1 only when there is no box), and two (1,) float32 switches, 0 or 1:

* ``multimask_output``: the SAM part of the mask is the best of mask tokens 1..3 by predicted
  IoU (1) instead of the single-mask token 0 (0);
* ``hq_token_only``: the HQ token's mask alone (1) instead of the SAM part plus it (0).

Decoder outputs, one mask per prompt as the torch predictor returns: ``masks`` (1, 1, H, W)
logits at the original size, ``iou_predictions`` (1, 1) (the SAM token's prediction, as
HQ-SAM reports it), ``low_res_masks`` (1, 1, 4h, 4w).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..modeling.hq_sam import HQSam
from .mask_upscaling import upscale_padded

__all__ = ["HQDecoderForExport", "HQEncoderForExport"]


class HQEncoderForExport(nn.Module):
    """Image -> embedding and HQ features (input kinds in the module docstring).

    Args:
        sam: the HQ-SAM model.
        raw_input: the input is (h, w, 3) uint8 pixels; normalization and padding run in the graph.
    """

    def __init__(self, sam: HQSam, raw_input: bool = False) -> None:
        super().__init__()
        self.image_encoder = sam.image_encoder
        self.mask_decoder = sam.mask_decoder
        self.img_size = sam.img_size
        self.raw_input = raw_input
        self.register_buffer("mean", sam.pixel_mean.detach().float().clone(), persistent=False)  # (3, 1, 1)
        self.register_buffer("std", sam.pixel_std.detach().float().clone(), persistent=False)  # (3, 1, 1)

    def _normalize_and_pad(self, image: Tensor) -> Tensor:
        """(h, w, 3) uint8 RGB, longest side S -> (1, 3, S, S) normalized, zero-padded bottom/right."""
        x = image.permute(2, 0, 1).unsqueeze(0).float()  # (1, 3, h, w)
        x = (x - self.mean) / self.std
        h, w = x.shape[-2:]
        return F.pad(x, (0, self.img_size - w, 0, self.img_size - h))  # (1, 3, S, S)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """Image -> (1, C, S/16, S/16) embedding and (1, C/8, S/4, S/4) HQ features."""
        x = self._normalize_and_pad(image) if self.raw_input else image
        embedding, early = self.image_encoder.forward_with_early_features(x)  # (1, C, h, w), (1, C_early, h, w)
        return embedding, self.mask_decoder.hq_features(embedding, early)


class HQDecoderForExport(nn.Module):
    """Prompt encoder + HQ mask decoder + mask upscaling (interface in the module docstring)."""

    def __init__(self, sam: HQSam) -> None:
        super().__init__()
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder
        self.img_size = sam.img_size
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
        hq_features: Tensor,
        point_coords: Tensor,
        point_labels: Tensor,
        mask_input: Tensor,
        has_mask_input: Tensor,
        orig_im_size: Tensor,
        multimask_output: Tensor,
        hq_token_only: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Decode one prompt set into one HQ mask.

        Returns:
            masks (1, 1, H, W), iou_predictions (1, 1), low_res_masks (1, 1, 4h, 4w).
        """
        dec = self.mask_decoder
        sparse = self.prompt_encoder.embed_points(point_coords, point_labels, pad=False)  # (1, N, C)
        dense = self._dense_embedding(mask_input, has_mask_input)  # (1, C, h, w)
        b = sparse.shape[0]
        output_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight, dec.hf_token.weight], dim=0)  # (1+T+1, C)
        n_out = output_tokens.shape[0]
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)  # (B, 1+T+1+N, C)
        # The transformer's reference path (the official computation), as the SAM 1 export traces it.
        src = image_embeddings + dense  # (1, C, h, w)
        hs, image_tokens = dec.transformer(src, self.image_pe, tokens, reference=True)  # (B, K+N, C), (B, hw, C)
        c, h, w = self.image_pe.shape[1:]
        image = image_tokens.transpose(1, 2).reshape(b, c, h, w)  # (B, C, h, w)
        upscaled_sam = dec.output_upscaling(image)  # (B, C/8, 4h, 4w)
        upscaled_hq = dec.embedding_maskfeature(upscaled_sam) + hq_features  # (B, C/8, 4h, 4w)
        hq_weights = dec.hf_mlp(hs[:, n_out - 1, :])  # (B, C/8)
        hq_mask = torch.bmm(hq_weights.unsqueeze(1), upscaled_hq.flatten(2))  # (B, 1, 16hw)

        # The SAM part: token 0, or (multimask) the best of tokens 1..3 by predicted IoU.
        iou_all = dec.iou_prediction_head(hs[:, 0, :])  # (B, T)
        best = torch.argmax(iou_all[:, 1:], dim=1, keepdim=True) + 1  # (B, 1) in 1..T-1
        multi = multimask_output.reshape(1, 1).to(torch.int64)  # (1, 1) 0 or 1
        chosen = best * multi  # (B, 1): token 0 unless multimask
        iou = torch.gather(iou_all, 1, chosen)  # (B, 1)
        sam_weights = dec.hypernetwork_weights(hs, slice(0, None))  # (B, T, C/8)
        index = chosen[:, :, None].expand(-1, -1, sam_weights.shape[2])  # (B, 1, C/8)
        sam_weights = torch.gather(sam_weights, 1, index)  # (B, 1, C/8)
        sam_mask = torch.bmm(sam_weights, upscaled_sam.flatten(2))  # (B, 1, 16hw)
        keep_sam = 1 - hq_token_only.reshape(1, 1, 1)  # (1, 1, 1) 0 or 1
        low_res = (hq_mask + keep_sam * sam_mask).reshape(b, 1, 4 * h, 4 * w)  # (B, 1, 4h, 4w)
        return upscale_padded(low_res, orig_im_size, self.img_size), iou, low_res
