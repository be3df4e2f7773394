"""Input and output names of the exported graphs, per model family (no torch, no onnx import).

Every graph written by :mod:`samkit.onnx.export` names its family in the ``samkit.family``
metadata entry; graphs without it (exports older than this entry, and the official SAM
export) are SAM 1 graphs.

======  ==========================================  ====================================
family  models                                      modules that define the graphs
======  ==========================================  ====================================
sam     vit_b, vit_l, vit_h, vit_t (MobileSAM)      :mod:`samkit.onnx.modules`
sam2    sam2.1_hiera_t/s/b+/l, sam2_hiera_t/s/b+/l  :mod:`samkit.onnx.sam2_modules`
hq      hq_vit_b, hq_vit_l, hq_vit_h, hq_vit_tiny   :mod:`samkit.onnx.hq_modules`
======  ==========================================  ====================================
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FAMILY_KEY", "GraphInterface", "INTERFACES", "PROMPT_INPUTS"]

#: The metadata entry naming the family of a graph.
FAMILY_KEY = "samkit.family"

#: The prompt inputs every decoder takes (the official SAM ONNX decoder's, minus the embedding).
PROMPT_INPUTS: tuple[str, ...] = ("point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size")


@dataclass(frozen=True)
class GraphInterface:
    """The names a family's encoder writes and its decoder reads.

    Attributes:
        family: "sam", "sam2" or "hq".
        encoder_outputs: the encoder's outputs, which are also decoder inputs, in this order.
        decoder_inputs: all decoder inputs, in graph order.
        decoder_outputs: the decoder's outputs, in graph order.
        framing: how the image reaches the model's square: "pad" (resized to longest side S,
            zero-padded bottom/right) or "stretch" (resized to S x S).
    """

    family: str
    encoder_outputs: tuple[str, ...]
    decoder_inputs: tuple[str, ...]
    decoder_outputs: tuple[str, ...]
    framing: str


INTERFACES: dict[str, GraphInterface] = {
    "sam": GraphInterface(
        family="sam",
        encoder_outputs=("image_embeddings",),
        decoder_inputs=("image_embeddings", *PROMPT_INPUTS),
        decoder_outputs=("masks", "iou_predictions", "low_res_masks"),
        framing="pad",
    ),
    "sam2": GraphInterface(
        family="sam2",
        encoder_outputs=("image_embeddings", "high_res_feats_0", "high_res_feats_1"),
        decoder_inputs=("image_embeddings", "high_res_feats_0", "high_res_feats_1", *PROMPT_INPUTS),
        decoder_outputs=("masks", "iou_predictions", "low_res_masks", "object_score_logits"),
        framing="stretch",
    ),
    "hq": GraphInterface(
        family="hq",
        encoder_outputs=("image_embeddings", "hq_features"),
        decoder_inputs=("image_embeddings", "hq_features", *PROMPT_INPUTS, "multimask_output", "hq_token_only"),
        decoder_outputs=("masks", "iou_predictions", "low_res_masks"),
        framing="pad",
    ),
}
