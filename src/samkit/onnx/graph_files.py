"""Writing an exported graph to disk: metadata, inline or external weights, check, atomic move.

The exporters (:mod:`samkit.onnx.export`) and the quantizer (:mod:`samkit.onnx.quantize`)
write into a temporary folder; :func:`finalize_graph` then stores the ``samkit.*``
metadata, gathers large weights into one ``NAME.onnx.data`` beside the graph when they must
(or may) live outside it, runs ``onnx.checker`` and moves the result into place, removing a
stale data file of an earlier export. onnx is imported inside the functions.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path

__all__ = ["require_onnx", "graph_uses_external_data", "finalize_graph"]

logger = logging.getLogger(__name__)


def require_onnx() -> None:
    """Raise a readable ImportError (with the install command) when onnx is missing."""
    try:
        importlib.import_module("onnx")
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError("ONNX export needs the 'onnx' package: pip install 'samkit[onnx]'") from exc


def graph_uses_external_data(path: Path) -> bool:
    """Whether the graph at ``path`` keeps tensors in external files."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    return any(uses_external_data(t) for t in model.graph.initializer)


def _remove_model_files(path: Path) -> None:
    """Delete a previous ``path`` and its ``path.data`` so stale weights never linger."""
    for candidate in (path, path.with_name(path.name + ".data")):
        if candidate.exists():
            candidate.unlink()


def _move_weights_to_one_file(model: object, source_dir: Path, data_path: Path, min_bytes: int = 1024) -> None:
    """Store every initializer of ``min_bytes`` or more in ``data_path``, one tensor at a time.

    Tensors already external (the exporter writes one file per tensor above 2 GB; the
    quantizer one file with offsets) are copied from ``source_dir`` without loading the
    whole model, so a vit_h export never holds two copies of its weights in memory.
    """
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    assert isinstance(model, onnx.ModelProto)
    with open(data_path, "wb") as sink:
        for tensor in model.graph.initializer:
            if uses_external_data(tensor):
                info = ExternalDataInfo(tensor)
                with open(source_dir / info.location, "rb") as source:
                    source.seek(info.offset or 0)
                    payload = source.read(info.length) if info.length is not None else source.read()
            elif tensor.HasField("raw_data") and len(tensor.raw_data) >= min_bytes:
                payload = tensor.raw_data
                tensor.ClearField("raw_data")
            else:
                continue
            offset = sink.tell()
            sink.write(payload)
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", data_path.name), ("offset", offset), ("length", len(payload))):
                tensor.external_data.add(key=key, value=str(value))


def finalize_graph(tmp_path: Path, path: Path, metadata: dict[str, str], external_data: bool | None) -> Path:
    """Add metadata, choose inline or external weights, check, and move into place atomically.

    Args:
        tmp_path: graph written by the exporter or quantizer (its external data, if any, beside it).
        path: final location.
        metadata: key/value pairs for ``metadata_props``.
        external_data: True/False to force, None to use external data only when the source
            already does (weights over protobuf's 2 GB limit: the vit_h encoder).
    """
    import onnx
    from onnx.external_data_helper import uses_external_data

    model = onnx.load(str(tmp_path), load_external_data=False)
    del model.metadata_props[:]
    for key, value in sorted(metadata.items()):
        model.metadata_props.add(key=key, value=value)
    source_external = any(uses_external_data(t) for t in model.graph.initializer)
    if external_data is None:
        external_data = source_external
    elif not external_data and source_external:
        onnx.load_external_data_for_model(model, str(tmp_path.parent))
    stage_dir = tmp_path.parent / "staged"  # final file names, so the data location is right
    stage_dir.mkdir()
    staged, staged_data = stage_dir / path.name, stage_dir / (path.name + ".data")
    if external_data:
        _move_weights_to_one_file(model, tmp_path.parent, staged_data)
    onnx.save_model(model, str(staged))
    del model
    onnx.checker.check_model(str(staged), full_check=True)  # the path form handles external data
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_model_files(path)
    if external_data:
        os.replace(staged_data, path.with_name(staged_data.name))
    os.replace(staged, path)
    logger.info("wrote %s (%.1f MB%s)", path, path.stat().st_size / 1e6, " + external data" if external_data else "")
    return path
