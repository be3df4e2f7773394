"""Dynamic int8 quantization of exported graphs (onnxruntime ``quantize_dynamic``).

:func:`quantize_int8` is the recipe ``samkit export-onnx --quantize int8`` applies to the
encoder of every family; its docstring gives the choices and the accuracy they cost. Needs
onnx and onnxruntime, both imported inside the functions.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from .graph_files import finalize_graph, graph_uses_external_data

__all__ = ["QuantizeWeightType", "quantize_int8"]

QuantizeWeightType = Literal["quint8", "qint8"]


def _low_rank_input_nodes(model: object, max_rows: int = 8) -> list[str]:
    """MatMul / Gemm nodes whose constant weight has at most ``max_rows`` input rows.

    In SAM these are the random-Fourier coordinate projections ((2, C/2) weights) of the
    prompt encoder: quantizing them saves nothing and the error is amplified by 2*pi inside
    sin/cos, which visibly moves mask borders.

    A Gemm is listed twice: as itself and as ``NAME_MatMul``, the name of the MatMul that
    ``quantize_dynamic`` turns it into before it applies ``nodes_to_exclude``.
    """
    import onnx

    assert isinstance(model, onnx.ModelProto)
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and node.input[1] in shapes:
            dims = shapes[node.input[1]]
            rows = dims[-1] if node.op_type == "Gemm" and _gemm_trans_b(node) else dims[0]
            if len(dims) == 2 and rows <= max_rows:
                nodes.append(node.name)
                if node.op_type == "Gemm":
                    nodes.append(node.name + "_MatMul")
    return nodes


def _gemm_trans_b(node: object) -> bool:
    return any(a.name == "transB" and a.i == 1 for a in node.attribute)  # type: ignore[attr-defined]


class _DropQuantizerChatter(logging.Filter):
    """Drops onnxruntime.quantization's advice and per-tensor notes (logged on the root logger)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Silence the quantizer's root-logger chatter without configuring logging for the caller.

    ``logging.warning()`` calls ``basicConfig()`` when the root logger has no handler; a
    temporary NullHandler prevents that side effect.
    """
    root = logging.getLogger()
    quiet = _DropQuantizerChatter()
    placeholder = logging.NullHandler() if not root.handlers else None
    if placeholder is not None:
        root.addHandler(placeholder)
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)
        if placeholder is not None:
            root.removeHandler(placeholder)


def quantize_int8(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    weight_type: QuantizeWeightType = "quint8",
) -> Path:
    """Dynamic int8 quantization (onnxruntime ``quantize_dynamic``) of an exported graph.

    The recipe (what ``samkit export-onnx --quantize int8`` applies to the encoder):

    - every MatMul / Gemm with a constant weight runs as ``MatMulInteger``: weights stored as
      8-bit, quantized per output channel; activations quantized per tensor at run time
      (``DynamicQuantizeLinear``). In the encoder these are the qkv, proj, lin1 and lin2
      MatMuls of every block, ~3/4 of its multiply-adds (vit_b); the products of two
      activations (attention, most of the rest; relative positions) and the convolutions
      (patch embedding, neck) stay float32;
    - ``quint8`` weights: onnxruntime multiplies u8 x u8 exactly on every x86 CPU, whereas
      u8 x s8 (``qint8``) saturates 16-bit sums on CPUs without AVX-VNNI;
    - the prompt encoder's coordinate projections stay float32 (see
      :func:`_low_rank_input_nodes`).

    Measured on a perturbed vit_b (random init + N(0, 0.02) noise, as in the tests), the
    vit_b ONNX test's image and 4 prompts, all 16 masks (3 multimask + 1 single each), int8
    against float32 ONNX Runtime, on an AVX2 CPU:

    ===================================  =======  ========  =================
    graphs                               min IoU  mean IoU  encoder + decoder
    ===================================  =======  ========  =================
    float32                              1        1         359 MB + 29 MB
    int8 encoder, float32 decoder (*)    0.9778   0.9895    105 MB + 29 MB
    both int8, decoder per tensor        0.9643   0.9812    105 MB + 18 MB
    both int8, decoder per channel       0.9681   0.9836    105 MB + 18 MB
    ===================================  =======  ========  =================

    (*) what ``export_onnx(quantize="int8")`` writes; two more images: min 0.9795, 0.9792.
    These masks are a stress test: the perturbed model's mask logits all lie within 0.5 of
    the threshold, so small errors move many pixels. A decoder run costs under 1% of an
    encoder run, and any quantization of it, even 8-bit weights with float32 arithmetic (min
    0.971 on its own), costs more IoU than the whole int8 encoder, so the export keeps it
    float32. Other encoder options (min IoU through the float32 decoder): per tensor 0.9776;
    ``reduce_range`` 0.9701; ``qint8`` 0.9688; ``qint8`` + ``reduce_range`` 0.9636; lin2
    MatMuls left float32 0.9857 but 190 MB; onnxruntime's 8-bit ``MatMulNBits`` 0.985 but
    slower than float32 on AVX2.

    Args:
        src: float32 graph written by :func:`~samkit.onnx.export_encoder` / :func:`~samkit.onnx.export_decoder`
            (a decoder can be quantized too, with the accuracy cost above).
        dst: output path.
        weight_type: "quint8" (unsigned, the default) or "qint8" (signed; for CPUs with
            AVX-VNNI / AVX512-VNNI or ARM, where u8 x s8 does not saturate).

    Returns:
        the written path; its ``samkit.quantization`` metadata is
        ``dynamic_<weight_type>_per_channel``.
    """
    import onnx

    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError("int8 quantization needs onnxruntime: pip install 'samkit[onnx]'") from exc
    types = {"quint8": QuantType.QUInt8, "qint8": QuantType.QInt8}
    if weight_type not in types:
        raise ValueError(f"weight_type: expected one of {sorted(types)}, got {weight_type!r}")
    src, dst = Path(src), Path(dst)
    graph = onnx.load(str(src), load_external_data=False)
    source_meta = {p.key: p.value for p in graph.metadata_props}
    excluded = _low_rank_input_nodes(graph)
    del graph
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".samkit-quant-") as tmp:
        tmp_path = Path(tmp) / dst.name
        with _quiet_quantizer():
            quantize_dynamic(
                str(src),
                str(tmp_path),
                op_types_to_quantize=["MatMul", "Gemm"],
                per_channel=True,
                weight_type=types[weight_type],
                nodes_to_exclude=excluded,
                use_external_data_format=graph_uses_external_data(src),
            )
        source_meta["samkit.quantization"] = f"dynamic_{weight_type}_per_channel"
        return finalize_graph(tmp_path, dst, source_meta, external_data=None)
