"""ONNX export and an ONNX Runtime predictor (optional extra: ``pip install 'samkit[onnx]'``).

``OnnxPredictor`` needs only numpy, Pillow and onnxruntime (no torch); the exporters
need torch and onnx. Attributes are imported lazily so ``import samkit.onnx`` stays
cheap and torch-free.

Every model family exports: SAM 1 and MobileSAM, SAM 2 / 2.1 (its encoder also gives the two
projected high-resolution levels) and HQ-SAM (its encoder also gives the HQ features; its decoder
takes ``multimask_output`` and ``hq_token_only``); names per family in :mod:`samkit.onnx.interfaces`.

Example::

    from samkit.onnx import export_onnx, OnnxPredictor
    export_onnx(build_sam("vit_b"), "sam_onnx")          # encoder.onnx + decoder.onnx
    predictor = OnnxPredictor.from_dir("sam_onnx")
    predictor.set_image(image)
    masks, scores, low_res = predictor.predict(point_coords=[[x, y]], point_labels=[1])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "DECODER_INPUTS",
    "DECODER_OUTPUTS",
    "OnnxPredictor",
    "export_decoder",
    "export_encoder",
    "export_onnx",
    "quantize_int8",
]

_LAZY = {
    "OnnxPredictor": ("samkit.onnx.predictor", "OnnxPredictor"),
    "export_onnx": ("samkit.onnx.export", "export_onnx"),
    "export_encoder": ("samkit.onnx.export", "export_encoder"),
    "export_decoder": ("samkit.onnx.export", "export_decoder"),
    "quantize_int8": ("samkit.onnx.quantize", "quantize_int8"),
    "DECODER_INPUTS": ("samkit.onnx.export", "DECODER_INPUTS"),
    "DECODER_OUTPUTS": ("samkit.onnx.export", "DECODER_OUTPUTS"),
}

if TYPE_CHECKING:  # pragma: no cover
    from .export import (
        DECODER_INPUTS,
        DECODER_OUTPUTS,
        export_decoder,
        export_encoder,
        export_onnx,
    )
    from .predictor import OnnxPredictor
    from .quantize import quantize_int8


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        value = getattr(importlib.import_module(module_name), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'samkit.onnx' has no attribute {name!r}")
