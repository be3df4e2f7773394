"""Export a samkit model to ONNX: encoder, decoder, optional int8 copies.

Every family exports: SAM 1 and MobileSAM (``vit_b/l/h``, ``vit_t``), SAM 2 / 2.1
(``sam2.1_hiera_t`` ...) and HQ-SAM (``hq_vit_b`` ..., ``hq_vit_tiny``). SAM 2 and HQ-SAM
encoders have more outputs than the embedding, which their decoders take as inputs; the
names per family are in :mod:`samkit.onnx.interfaces`.

Files written into the output directory:

=====================  ===================================================================
file                   content
=====================  ===================================================================
``encoder.onnx``       image encoder; input ``image`` (1, 3, S, S) float32 normalized and
                       zero-padded (SAM 2: stretched to the square) (or, with ``raw_input``,
                       (h, w, 3) uint8 pixels of the image resized to longest side S; not
                       SAM 2); output ``image_embeddings`` (+ HQ / high-res features)
``decoder.onnx``       prompt encoder + mask decoder + mask upscaling with the official SAM
                       ONNX interface (see :mod:`samkit.onnx.modules`), plus the family's
                       extra inputs and outputs (:mod:`samkit.onnx.sam2_modules`,
                       :mod:`samkit.onnx.hq_modules`)
``*.onnx.data``        the weights, next to a graph larger than 2 GB (vit_h encoder)
``encoder.int8.onnx``  with ``quantize="int8"``: the encoder, dynamically quantized (8-bit
                       MatMul weights, activations quantized at run time; see
                       :func:`quantize_int8`). The decoder is not quantized: the int8 pair is
                       ``encoder.int8.onnx`` + ``decoder.onnx``.
=====================  ===================================================================

Every graph passes ``onnx.checker`` and carries ``samkit.*`` metadata (family, framing, image
size, input kind, normalization, mask threshold) that :class:`samkit.onnx.OnnxPredictor` reads.

The graphs are traced with the TorchScript exporter (``torch.onnx.export(dynamo=False)``),
which gives predictable graphs for these static-shape models. Writing the files (metadata,
external weights, checker, atomic move) is :mod:`samkit.onnx.graph_files`; the int8 recipe
is :mod:`samkit.onnx.quantize`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from ..hardware import cpu_has_int8_dot_product
from ..modeling import Sam
from ..modeling.hq_sam import HQSam
from ..modeling.sam2 import Sam2
from .graph_files import finalize_graph, require_onnx
from .hq_modules import HQDecoderForExport, HQEncoderForExport
from .interfaces import FAMILY_KEY, INTERFACES
from .modules import DecoderForExport, EncoderForExport, RawEncoderForExport
from .quantize import QuantizeWeightType, quantize_int8
from .sam2_modules import Sam2DecoderForExport, Sam2EncoderForExport

__all__ = [
    "DECODER_INPUTS",
    "DECODER_OUTPUTS",
    "export_decoder",
    "export_encoder",
    "export_onnx",
    "model_family",
]

logger = logging.getLogger(__name__)

#: The SAM 1 decoder's inputs and outputs (the official SAM ONNX interface); other families: INTERFACES.
DECODER_INPUTS: tuple[str, ...] = INTERFACES["sam"].decoder_inputs
DECODER_OUTPUTS: tuple[str, ...] = INTERFACES["sam"].decoder_outputs


def _metadata(sam: Sam | Sam2, role: str, **extra: object) -> dict[str, str]:
    """samkit.* metadata stored in each graph (all values are strings)."""
    interface = INTERFACES[model_family(sam)]
    meta: dict[str, object] = {
        "samkit.format": 1,
        "samkit.role": role,
        FAMILY_KEY: interface.family,
        "samkit.framing": interface.framing,
        "samkit.model": sam.config.name,
        "samkit.img_size": sam.img_size,
        "samkit.mask_threshold": sam.mask_threshold,
        "samkit.pixel_mean": json.dumps([float(v) for v in sam.pixel_mean.flatten().tolist()]),
        "samkit.pixel_std": json.dumps([float(v) for v in sam.pixel_std.flatten().tolist()]),
        "samkit.image_format": sam.image_format,
    }
    meta.update(extra)
    return {key: str(value) for key, value in meta.items()}


def _trace_to_onnx(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    *,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    opset: int,
) -> None:
    """TorchScript-export ``module`` (float32, CPU, eval) to ``path``."""
    with warnings.catch_warnings():
        # The tracer warns about Python-level shape checks (batch sizes, always equal here: the
        # graphs have batch 1) and about the TorchScript exporter being the legacy one.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*feature will be removed.*")
        # SAM 2's single-mask fallback indexes with argmax / arange results, never negative.
        warnings.filterwarnings("ignore", message=".*aten::index operator of advanced indexing.*")
        with torch.no_grad():
            torch.onnx.export(
                module,
                args,
                str(path),  # a str path lets the exporter write >2 GB weights as external data
                dynamo=False,
                export_params=True,
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
            )


def _float32_cpu(sam: Sam | Sam2) -> Sam | Sam2:
    if sam.dtype != torch.float32 or sam.device.type != "cpu" or sam.encoder_dtype != torch.float32:
        raise ValueError(
            f"export a float32 CPU model (build_sam(..., device='cpu', dtype=torch.float32)); "
            f"got {sam.encoder_dtype} on {sam.device}"
        )
    return sam.eval()


def model_family(sam: Sam | Sam2) -> str:
    """The graph family of a model: "sam" (SAM 1, MobileSAM), "sam2" (SAM 2 / 2.1) or "hq" (HQ-SAM)."""
    if isinstance(sam, Sam2):
        return "sam2"
    if isinstance(sam, HQSam):
        return "hq"
    if isinstance(sam, Sam):
        return "sam"
    raise TypeError(f"sam: expected a samkit Sam, HQSam or Sam2 model, got {type(sam).__name__}")


def export_encoder(
    sam: Sam | Sam2,
    path: str | os.PathLike[str],
    *,
    opset: int = 17,
    raw_input: bool = False,
    external_data: bool | None = None,
) -> Path:
    """Export the image encoder.

    Args:
        sam: float32 CPU model (SAM 1, MobileSAM, HQ-SAM or SAM 2).
        path: output ``.onnx`` file.
        opset: ONNX opset (>= 14 for attention; 17 by default, as the official export).
        raw_input: input ``image`` is (h, w, 3) uint8 pixels of the image resized to longest
            side S (``samkit.geometry.resize_longest_side``), normalized and padded in the
            graph; otherwise (1, 3, S, S) float32, already normalized and padded. Not for SAM 2
            models, whose input is the image stretched to the square as float pixels.
        external_data: store weights in ``path.data``; None: only when they exceed 2 GB.

    Returns:
        the written path. Output ``image_embeddings`` is (1, C, S/16, S/16) float32; HQ-SAM
        encoders add ``hq_features``, SAM 2 encoders ``high_res_feats_0`` and
        ``high_res_feats_1`` (see :mod:`samkit.onnx.hq_modules`, :mod:`samkit.onnx.sam2_modules`).

    Raises:
        ValueError: ``raw_input`` for a SAM 2 model; a model that is not float32 on the CPU.
    """
    family = model_family(sam)
    if raw_input and family == "sam2":
        raise ValueError(
            f"raw_input: not available for SAM 2 models ({sam.config.name}): their input is the image "
            "stretched to the square with antialiasing, as float pixels"
        )
    require_onnx()
    sam = _float32_cpu(sam)
    path = Path(path)
    s = sam.img_size
    module: nn.Module
    if family == "sam2":
        assert isinstance(sam, Sam2)
        module = Sam2EncoderForExport(sam).eval()
    elif family == "hq":
        assert isinstance(sam, HQSam)
        module = HQEncoderForExport(sam, raw_input=raw_input).eval()
    elif raw_input:
        module = RawEncoderForExport(sam).eval()
    else:
        module = EncoderForExport(sam).eval()
    if raw_input:
        example = torch.zeros((s, (3 * s) // 4, 3), dtype=torch.uint8)  # (h, w, 3), landscape-agnostic
        dynamic_axes = {"image": {0: "height", 1: "width"}}
        input_kind = "raw_uint8_hwc"
    else:
        example = torch.zeros((1, 3, s, s), dtype=torch.float32)
        dynamic_axes = {}
        input_kind = "normalized_square_nchw" if family == "sam2" else "normalized_padded_nchw"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".samkit-export-") as tmp:
        tmp_path = Path(tmp) / path.name
        _trace_to_onnx(
            module,
            (example,),
            tmp_path,
            input_names=["image"],
            output_names=list(INTERFACES[family].encoder_outputs),
            dynamic_axes=dynamic_axes,
            opset=opset,
        )
        meta = _metadata(sam, "encoder", **{"samkit.encoder_input": input_kind})
        return finalize_graph(tmp_path, path, meta, external_data)


def export_decoder(
    sam: Sam | Sam2,
    path: str | os.PathLike[str],
    *,
    opset: int = 17,
    return_single_mask: bool = False,
) -> Path:
    """Export prompt encoder + mask decoder (+ the upscaling to the original image size).

    SAM 1 / MobileSAM decoders have the official SAM ONNX decoder interface
    (:mod:`samkit.onnx.modules`); SAM 2 and HQ-SAM decoders take that interface's inputs plus
    their per-image features (:mod:`samkit.onnx.sam2_modules`, :mod:`samkit.onnx.hq_modules`).

    Args:
        sam: float32 CPU model.
        path: output ``.onnx`` file.
        opset: ONNX opset.
        return_single_mask: SAM 1 models only: one mask chosen in the graph (as the official
            ``--return-single-mask`` export) instead of all four mask tokens.

    Returns:
        the written path.

    Raises:
        ValueError: ``return_single_mask`` for a SAM 2 model (its slot 0 already is its single
            mask) or an HQ-SAM model (one mask per prompt anyway).
    """
    family = model_family(sam)
    if return_single_mask and family != "sam":
        raise ValueError(
            f"return_single_mask: SAM 1 decoders only; the {sam.config.name} decoder "
            + ("returns one mask per prompt anyway" if family == "hq" else "returns its single mask in slot 0")
        )
    require_onnx()
    sam = _float32_cpu(sam)
    path = Path(path)
    pe = sam.prompt_encoder
    c = pe.embed_dim
    h, w = pe.image_embedding_size
    mh, mw = pe.mask_input_size
    features: tuple[torch.Tensor, ...] = (torch.zeros(1, c, h, w),)  # image_embeddings
    prompts = (
        torch.tensor([[[10.0, 20.0], [0.0, 0.0]]]),  # point_coords (1, N, 2)
        torch.tensor([[1.0, -1.0]]),  # point_labels (1, N)
        torch.zeros(1, 1, mh, mw),  # mask_input
        torch.zeros(1),  # has_mask_input
        torch.tensor([float(sam.img_size // 2), float(sam.img_size)]),  # orig_im_size (H, W)
    )
    switches: tuple[torch.Tensor, ...] = ()
    module: nn.Module
    if family == "sam2":
        assert isinstance(sam, Sam2)
        module = Sam2DecoderForExport(sam).eval()
        features += (torch.zeros(1, c // 8, 4 * h, 4 * w), torch.zeros(1, c // 4, 2 * h, 2 * w))  # high_res_feats_0/1
        num_masks = sam.mask_decoder.num_mask_tokens
    elif family == "hq":
        assert isinstance(sam, HQSam)
        module = HQDecoderForExport(sam).eval()
        features += (torch.zeros(1, c // 8, 4 * h, 4 * w),)  # hq_features
        switches = (torch.ones(1), torch.zeros(1))  # multimask_output, hq_token_only
        num_masks = 1
    else:
        module = DecoderForExport(sam, return_single_mask=return_single_mask).eval()
        num_masks = 1 if return_single_mask else sam.mask_decoder.num_mask_tokens
    interface = INTERFACES[family]
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".samkit-export-") as tmp:
        tmp_path = Path(tmp) / path.name
        _trace_to_onnx(
            module,
            features + prompts + switches,
            tmp_path,
            input_names=list(interface.decoder_inputs),
            output_names=list(interface.decoder_outputs),
            dynamic_axes={
                "point_coords": {1: "num_points"},
                "point_labels": {1: "num_points"},
                "masks": {2: "height", 3: "width"},
            },
            opset=opset,
        )
        meta = _metadata(sam, "decoder", **{"samkit.num_mask_outputs": num_masks})
        return finalize_graph(tmp_path, path, meta, external_data=False)


def export_onnx(
    sam: Sam | Sam2,
    out_dir: str | os.PathLike[str],
    *,
    opset: int = 17,
    raw_input: bool = False,
    quantize: Literal["int8"] | None = None,
    return_single_mask: bool = False,
    weight_type: QuantizeWeightType | Literal["auto"] = "auto",
) -> dict[str, Path]:
    """Write ``encoder.onnx`` and ``decoder.onnx`` (and int8 copies) into ``out_dir``.

    Args:
        sam: float32 CPU model of any family (SAM 1, MobileSAM, SAM 2 / 2.1, HQ-SAM).
        out_dir: output directory (created).
        opset: ONNX opset.
        raw_input: encoder takes resized uint8 (h, w, 3) pixels (see :func:`export_encoder`).
        quantize: "int8" to also write ``encoder.int8.onnx`` (see :func:`quantize_int8`; the
            same recipe for every family); the decoder stays float32 and ``decoder.onnx``
            serves both encoders.
        return_single_mask: see :func:`export_decoder`.
        weight_type: int8 flavour, see :func:`quantize_int8`; "auto" (default) picks signed
            weights ("qint8", ~2x faster) when the exporting machine's CPU has u8 x s8
            dot-product instructions (VNNI, AMX-INT8, ARM dot product), else "quint8". Export
            with "quint8" for CPUs without them, where signed weights saturate.

    Returns:
        {"encoder": path, "decoder": path[, "encoder_int8": path]}.
    """
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize: expected None or 'int8', got {quantize!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "encoder": export_encoder(sam, out / "encoder.onnx", opset=opset, raw_input=raw_input),
        "decoder": export_decoder(sam, out / "decoder.onnx", opset=opset, return_single_mask=return_single_mask),
    }
    if quantize == "int8":
        if weight_type == "auto":
            weight_type = "qint8" if cpu_has_int8_dot_product() else "quint8"
        paths["encoder_int8"] = quantize_int8(paths["encoder"], out / "encoder.int8.onnx", weight_type=weight_type)
    return paths
