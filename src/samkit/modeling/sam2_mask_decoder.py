"""SAM 2 mask decoder: SAM's two-way transformer with SAM 2's heads.

What differs from SAM 1's :class:`~samkit.modeling.mask_decoder.MaskDecoder`:

* an object-score token comes first (``obj_score_token``), then the IoU token and the four mask
  tokens; the object-score head reads it (``pred_obj_score_head``, a 3-layer MLP);
* the upscaling adds the high-resolution encoder features: after the first transposed
  convolution the stride-8 features projected by ``conv_s1``, after the second the stride-4
  features projected by ``conv_s0`` (the model applies both projections once per image);
* IoU predictions pass through a sigmoid;
* with ``multimask_output=False`` the single-mask output falls back to the best of the three
  multimask outputs when its stability score (area above +delta over area above -delta of the
  low-res logits) is below the threshold.

The two-way transformer is samkit's shared one; its token MLPs are named ``mlp.layers.0/1`` in
SAM 2 checkpoints (``mlp.lin1/lin2`` in SAM 1), so they are swapped for the same ReLU MLP under
those names. Prompts without a mask input may use the transformer's cached image side
(:class:`~samkit.modeling.transformer.ImageSideCache`). Given the high-resolution features in
pixel-block order too (what :meth:`Sam2MaskDecoder.high_res_blocks` makes once per image), the
upscaling runs as matrix products on pixel blocks (:mod:`samkit.modeling.pixel_blocks`);
``reference=True`` runs the official-shaped path (materialized transformer, transposed
convolutions) instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import MaskDecoderConfig
from .common import MLP, LayerNorm2d
from .. import batching
from .decoder_cache import ImageSideCache
from .pixel_blocks import conv_transpose_as_matrix, masks_from_pixel_blocks, to_pixel_blocks
from .transformer import TwoWayTransformer

__all__ = ["Sam2MaskDecoder"]


class Sam2MaskDecoder(nn.Module):
    """Mask logits (4h x 4w), IoU predictions and object-score logits from prompt tokens.

    Args:
        config: transformer and head sizes (as SAM 1).
        use_high_res_features: add the projected stride-4/stride-8 features in the upscaling.
        iou_prediction_use_sigmoid: sigmoid on the IoU head.
        pred_obj_scores: object-score token and head.
        pred_obj_scores_mlp: the object-score head is a 3-layer MLP, else one linear layer.
        dynamic_multimask_via_stability: the single-mask fallback described above.
        stability_delta, stability_thresh: its test.
    """

    def __init__(
        self,
        config: MaskDecoderConfig,
        *,
        use_high_res_features: bool,
        iou_prediction_use_sigmoid: bool,
        pred_obj_scores: bool,
        pred_obj_scores_mlp: bool,
        dynamic_multimask_via_stability: bool,
        stability_delta: float,
        stability_thresh: float,
    ) -> None:
        super().__init__()
        dim = config.transformer_dim
        self.transformer_dim = dim
        self.transformer = TwoWayTransformer(
            depth=config.transformer_depth,
            embedding_dim=dim,
            num_heads=config.transformer_num_heads,
            mlp_dim=config.transformer_mlp_dim,
            attention_downsample_rate=config.attention_downsample_rate,
        )
        for layer in self.transformer.layers:
            layer.mlp = MLP(dim, config.transformer_mlp_dim, dim, 2)  # SAM 2's names, same function
        self.num_multimask_outputs = config.num_multimask_outputs
        self.num_mask_tokens = config.num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        self.pred_obj_scores = pred_obj_scores
        if pred_obj_scores:
            self.obj_score_token = nn.Embedding(1, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.use_high_res_features = use_high_res_features
        if use_high_res_features:
            self.conv_s0 = nn.Conv2d(dim, dim // 8, kernel_size=1)
            self.conv_s1 = nn.Conv2d(dim, dim // 4, kernel_size=1)
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(dim, config.iou_head_hidden_dim, self.num_mask_tokens, config.iou_head_depth)
        self.iou_prediction_use_sigmoid = iou_prediction_use_sigmoid
        if pred_obj_scores:
            self.pred_obj_score_head: nn.Module = MLP(dim, dim, 1, 3) if pred_obj_scores_mlp else nn.Linear(dim, 1)
        self.dynamic_multimask_via_stability = dynamic_multimask_via_stability
        self.stability_delta = stability_delta
        self.stability_thresh = stability_thresh

    @property
    def num_output_tokens(self) -> int:
        """Tokens in front of the prompt tokens: object score (if any), IoU, mask tokens."""
        return int(self.pred_obj_scores) + 1 + self.num_mask_tokens

    def project_high_res(self, stride4: Tensor, stride8: Tensor) -> tuple[Tensor, Tensor]:
        """Project the (B, C, 4h, 4w) and (B, C, 2h, 2w) encoder levels for the upscaling.

        Returns:
            (B, C/8, 4h, 4w) and (B, C/4, 2h, 2w).
        """
        return self.conv_s0(stride4), self.conv_s1(stride8)

    @staticmethod
    def high_res_blocks(feat_s0: Tensor, feat_s1: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`project_high_res`'s (B, C/8, 4h, 4w) and (B, C/4, 2h, 2w) levels in pixel-block order.

        Returns:
            (B, h, w, 2, 2, 2, 2, C/8) and (B, h, w, 2, 2, C/4), for the fast upscaling.
        """
        return to_pixel_blocks(feat_s0, 2), to_pixel_blocks(feat_s1, 1)

    def prepare_image(self, image_embeddings: Tensor, image_pe: Tensor, no_mask_dense: Tensor) -> ImageSideCache:
        """Prompt-independent transformer work for one (1, C, h, w) image (prompts without mask input)."""
        return self.transformer.prepare_image(image_embeddings + no_mask_dense, image_pe)

    def forward(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor | None,
        multimask_output: bool,
        high_res_features: tuple[Tensor, Tensor] | None,
        *,
        cache: ImageSideCache | None = None,
        high_res_blocks: tuple[Tensor, Tensor] | None = None,
        reference: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Decode B prompts on one image (or one image per prompt).

        Args:
            image_embeddings: (1 or B, C, h, w).
            image_pe: (1, C, h, w).
            sparse_prompt_embeddings: (B, T, C).
            dense_prompt_embeddings: (1 or B, C, h, w); unused with ``cache``.
            multimask_output: the three multimask outputs instead of one mask.
            high_res_features: :meth:`project_high_res` of the image, (1 or B, ...) each.
            cache: :meth:`prepare_image` of the image, for prompts without a mask input.
            high_res_blocks: :meth:`high_res_blocks` of ``high_res_features``: upscale on pixel
                blocks (the fast path).
            reference: the official-shaped path; ``cache`` and ``high_res_blocks`` are ignored.

        Returns:
            mask logits (B, M, 4h, 4w), IoU predictions (B, M) (M = 3 or 1) and object-score
            logits (B, 1).
        """
        if reference:
            cache, high_res_blocks = None, None
        b = sparse_prompt_embeddings.shape[0]
        chunk = batching.batching_for(sparse_prompt_embeddings.device).prompt_chunk  # per device, one place
        if b > chunk and not torch.jit.is_tracing():
            # A few prompts at a time, so that each one's upscaled features stay small.
            def part(x: Tensor | None, s: int) -> Tensor | None:
                return x[s : s + chunk] if x is not None and x.shape[0] == b else x

            parts = [
                self.forward(
                    part(image_embeddings, s),  # type: ignore[arg-type]
                    image_pe,
                    sparse_prompt_embeddings[s : s + chunk],
                    part(dense_prompt_embeddings, s),
                    multimask_output,
                    None if high_res_features is None else (part(high_res_features[0], s), part(high_res_features[1], s)),  # type: ignore[arg-type]
                    cache=cache,
                    high_res_blocks=None if high_res_blocks is None else (part(high_res_blocks[0], s), part(high_res_blocks[1], s)),  # type: ignore[arg-type]
                )
                for s in range(0, b, chunk)
            ]
            return tuple(torch.cat([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]
        masks, iou_pred, object_score_logits = self.predict_all_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, high_res_features, cache,
            high_res_blocks,
            reference=reference,
        )
        if multimask_output:
            return masks[:, 1:], iou_pred[:, 1:], object_score_logits
        if self.dynamic_multimask_via_stability and not self.training:
            masks, iou_pred = self.single_mask_with_fallback(masks, iou_pred)
            return masks, iou_pred, object_score_logits
        return masks[:, 0:1], iou_pred[:, 0:1], object_score_logits

    def predict_all_masks(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor | None,
        high_res_features: tuple[Tensor, Tensor] | None,
        cache: ImageSideCache | None,
        high_res_blocks: tuple[Tensor, Tensor] | None = None,
        *,
        reference: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """All mask tokens' logits (B, 1+3, 4h, 4w), IoU (B, 1+3) and object scores (B, 1)."""
        masks, iou_pred, _, object_score_logits = self.predict_all_masks_and_tokens(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, high_res_features, cache,
            high_res_blocks, reference=reference,
        )
        return masks, iou_pred, object_score_logits

    def predict_all_masks_and_tokens(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor | None,
        high_res_features: tuple[Tensor, Tensor] | None,
        cache: ImageSideCache | None,
        high_res_blocks: tuple[Tensor, Tensor] | None = None,
        *,
        reference: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """:meth:`predict_all_masks`, plus the (B, 1+3, C) mask-token outputs (video object pointers).

        ``reference``: the official-shaped path (materialized transformer, transposed convolutions).
        """
        b = sparse_prompt_embeddings.shape[0]
        dtype = sparse_prompt_embeddings.dtype
        heads = [self.iou_token.weight, self.mask_tokens.weight]
        if self.pred_obj_scores:
            heads.insert(0, self.obj_score_token.weight)
        output_tokens = torch.cat(heads, dim=0).to(dtype)  # (K, C)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(b, -1, -1), sparse_prompt_embeddings], dim=1)  # (B, K+T, C)
        keep = self.num_output_tokens
        if cache is not None and not reference:
            hs, image_tokens = self.transformer(None, None, tokens, cache=cache, keep_tokens=keep)
        else:
            assert dense_prompt_embeddings is not None
            src = image_embeddings + dense_prompt_embeddings  # (B or 1, C, h, w)
            if src.shape[0] != b:
                src = src.expand(b, -1, -1, -1)
            if reference:
                hs, image_tokens = self.transformer(src, image_pe, tokens, reference=True)
            else:
                hs, image_tokens = self.transformer(src, image_pe, tokens, keep_tokens=keep)
        assert isinstance(image_tokens, Tensor)
        first = int(self.pred_obj_scores)
        iou_token_out = hs[:, first, :]  # (B, C)
        mask_tokens_out = hs[:, first + 1 : first + 1 + self.num_mask_tokens, :]  # (B, 4, C)
        h, w = image_pe.shape[-2:]
        c = self.transformer_dim
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )  # (B, 4, C/8)
        if high_res_blocks is not None and not reference:
            masks = self.masks_on_pixel_blocks(image_tokens, (h, w), hyper_in, high_res_blocks)  # (B, 4, 4h, 4w)
        else:
            src = image_tokens.transpose(1, 2).reshape(b, c, h, w)  # (B, C, h, w)
            upscaled = self.upscale(src, high_res_features)  # (B, C/8, 4h, 4w)
            _, c8, uh, uw = upscaled.shape
            masks = (hyper_in @ upscaled.reshape(b, c8, uh * uw)).view(b, -1, uh, uw)  # (B, 4, 4h, 4w)
        iou_pred = self.iou_prediction_head(iou_token_out)  # (B, 4)
        if self.iou_prediction_use_sigmoid:
            iou_pred = iou_pred.sigmoid()
        if self.pred_obj_scores:
            object_score_logits = self.pred_obj_score_head(hs[:, 0, :])  # (B, 1)
        else:
            # No object-score head: the object is taken as present (sigmoid(10) ~ 1).
            object_score_logits = iou_pred.new_full((b, 1), 10.0)
        return masks, iou_pred, mask_tokens_out, object_score_logits

    def upscale(self, src: Tensor, high_res_features: tuple[Tensor, Tensor] | None) -> Tensor:
        """(B, C, h, w) image tokens -> (B, C/8, 4h, 4w), adding the high-res features if used."""
        up1, norm, act1, up2, act2 = self.output_upscaling
        if not self.use_high_res_features:
            return act2(up2(act1(norm(up1(src)))))
        if high_res_features is None:
            raise ValueError("this decoder needs the image's high-resolution features")
        feat_s0, feat_s1 = high_res_features
        x = act1(norm(up1(src) + feat_s1))  # (B, C/4, 2h, 2w)
        return act2(up2(x) + feat_s0)  # (B, C/8, 4h, 4w)

    def masks_on_pixel_blocks(
        self,
        image_tokens: Tensor,
        size: tuple[int, int],
        hyper_in: Tensor,
        high_res_blocks: tuple[Tensor, Tensor] | None,
    ) -> Tensor:
        """:meth:`upscale` and the hypernetwork product, run on pixel blocks (see :mod:`.pixel_blocks`).

        Args:
            image_tokens: (B, h*w, C) transformer output.
            size: (h, w).
            hyper_in: (B, M, C/8) hypernetwork outputs.
            high_res_blocks: :meth:`high_res_blocks` of the image (1 or B), or None for a decoder
                without high-resolution features.

        Returns:
            (B, M, 4h, 4w) mask logits.
        """
        if self.use_high_res_features and high_res_blocks is None:
            raise ValueError("this decoder needs the image's high-resolution features")
        up1, norm, act1, up2, act2 = self.output_upscaling
        b, (h, w), c = image_tokens.shape[0], size, self.transformer_dim
        matrix1, bias1 = conv_transpose_as_matrix(up1)
        x = torch.addmm(bias1, image_tokens.reshape(b * h * w, c), matrix1).view(b, h, w, 2, 2, c // 4)  # (B, h, w, a1, b1, C/4)
        if high_res_blocks is not None:
            x = x + high_res_blocks[1]
        x = act1(F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps))
        matrix2, bias2 = conv_transpose_as_matrix(up2)
        y = torch.addmm(bias2, x.reshape(-1, c // 4), matrix2).view(b, h, w, 2, 2, 2, 2, c // 8)  # (B, h, w, a1, b1, a2, b2, C/8)
        if high_res_blocks is not None:
            y = y + high_res_blocks[0]
        y = act2(y)
        masks = torch.bmm(y.view(b, -1, c // 8), hyper_in.transpose(1, 2))  # (B, 16hw, M)
        return masks_from_pixel_blocks(masks.view(b, h, w, 2, 2, 2, 2, -1))  # (B, M, 4h, 4w)

    def stability_scores(self, mask_logits: Tensor) -> Tensor:
        """(B, M, H, W) logits -> (B, M) area above +delta over area above -delta (1 when empty)."""
        flat = mask_logits.flatten(-2)  # (B, M, H*W)
        inner = (flat > self.stability_delta).sum(-1).float()
        outer = (flat > -self.stability_delta).sum(-1).float()
        return torch.where(outer > 0, inner / outer, torch.ones_like(inner))

    def single_mask_with_fallback(self, all_masks: Tensor, all_iou: Tensor) -> tuple[Tensor, Tensor]:
        """Token 0's mask, or the best-IoU multimask output where token 0's mask is unstable.

        Args:
            all_masks: (B, 4, H, W) logits of every mask token.
            all_iou: (B, 4) their IoU predictions.

        Returns:
            (B, 1, H, W) logits and (B, 1) IoU.
        """
        best = all_iou[:, 1:].argmax(dim=-1)  # (B,)
        rows = torch.arange(all_iou.shape[0], device=all_iou.device)
        best_masks = all_masks[:, 1:][rows, best].unsqueeze(1)  # (B, 1, H, W)
        best_iou = all_iou[:, 1:][rows, best].unsqueeze(1)  # (B, 1)
        single_masks, single_iou = all_masks[:, 0:1], all_iou[:, 0:1]
        stable = self.stability_scores(single_masks) >= self.stability_thresh  # (B, 1)
        masks = torch.where(stable[..., None, None], single_masks, best_masks)
        iou = torch.where(stable, single_iou, best_iou)
        return masks, iou
