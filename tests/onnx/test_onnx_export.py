"""ONNX graphs: structure, the official decoder interface, and parity with torch and the official model."""

from __future__ import annotations

import functools
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx_support import Exported, assert_logits_close, official_sam, structured_image
from segment_anything.utils.onnx import SamOnnxModel

from samkit.hardware import cpu_has_int8_dot_product
from samkit.onnx import DECODER_INPUTS, DECODER_OUTPUTS, export_encoder
from samkit.onnx.graph_files import finalize_graph
from samkit.transforms import postprocess_masks, preprocess_shape

CPU = ["CPUExecutionProvider"]


@functools.lru_cache(maxsize=16)
def session(path: Path) -> ort.InferenceSession:
    """One CPU session per graph file for this test module."""
    return ort.InferenceSession(str(path), providers=CPU)


@functools.lru_cache(maxsize=2)
def official_onnx_model(exported: Exported, single: bool) -> SamOnnxModel:
    """The official SamOnnxModel wrapping an official Sam with the exported model's weights."""
    sam = exported.sam
    return SamOnnxModel(official_sam(sam.config, sam.state_dict()), return_single_mask=single)


def decoder_feed(
    exported: Exported, embedding: np.ndarray, coords: list[list[float]], labels: list[float],
    orig_size: tuple[int, int], mask: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Inputs exactly as an official-interface front end builds them."""
    mh, mw = exported.sam.prompt_encoder.mask_input_size
    return {
        "image_embeddings": embedding.astype(np.float32),
        "point_coords": np.asarray([coords], dtype=np.float32),
        "point_labels": np.asarray([labels], dtype=np.float32),
        "mask_input": (mask if mask is not None else np.zeros((1, 1, mh, mw))).astype(np.float32),
        "has_mask_input": np.asarray([0.0 if mask is None else 1.0], dtype=np.float32),
        "orig_im_size": np.asarray(orig_size, dtype=np.float32),
    }


def _weight_matmuls(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Float MatMul / Gemm nodes whose second input is a stored weight."""
    weights = {t.name for t in graph.initializer}
    return [n for n in graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in weights]


def test_graphs_pass_checker_and_carry_metadata(tiny256: Exported) -> None:
    for name in ("encoder.onnx", "decoder.onnx", "encoder.int8.onnx", "decoder.int8.onnx", "encoder.raw.onnx"):
        path = tiny256.path(name)
        onnx.checker.check_model(str(path), full_check=True)
        meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        assert meta["samkit.img_size"] == "256", name
        assert meta["samkit.role"] == ("encoder" if name.startswith("encoder") else "decoder"), name
    # export_onnx picks the weights' sign for this CPU; quantize_int8 defaults to unsigned.
    encoder_weights = "qint8" if cpu_has_int8_dot_product() else "quint8"
    for name, weights in (("encoder.int8.onnx", encoder_weights), ("decoder.int8.onnx", "quint8")):
        meta = {p.key: p.value for p in onnx.load(str(tiny256.path(name))).metadata_props}
        assert meta["samkit.quantization"] == f"dynamic_{weights}_per_channel", name
    # Encoder: the 4 weight MatMuls of each of the 2 blocks are int8; convolutions stay float32.
    encoder = onnx.load(str(tiny256.path("encoder.int8.onnx"))).graph
    encoder_ops = Counter(n.op_type for n in encoder.node)
    assert _weight_matmuls(encoder) == [] and encoder_ops["MatMulInteger"] == 8 and encoder_ops["ConvInteger"] == 0
    # Decoder (quantize_int8 on decoder.onnx): the coordinate projection, a (2, C/2) weight, stays float32.
    decoder = onnx.load(str(tiny256.path("decoder.int8.onnx"))).graph
    assert [n.name for n in _weight_matmuls(decoder)] == ["/MatMul"]
    assert Counter(n.op_type for n in decoder.node)["MatMulInteger"] > 10
    assert not list(tiny256.dir.glob("*.data")), "small graphs keep their weights inline"
    assert not list(tiny256.dir.glob(".samkit-*")), "temporary export folders are removed"


def test_decoder_interface_matches_official_export(tiny1024: Exported) -> None:
    """Names, dtypes and shapes of the official decoder export (dynamic number of points)."""
    dec = session(tiny1024.path("decoder.onnx"))
    inputs = {i.name: (i.type, i.shape) for i in dec.get_inputs()}
    c = tiny1024.sam.prompt_encoder.embed_dim
    assert list(inputs) == list(DECODER_INPUTS)
    assert inputs["image_embeddings"] == ("tensor(float)", [1, c, 64, 64])
    assert inputs["point_coords"][0] == "tensor(float)" and inputs["point_coords"][1][0::2] == [1, 2]
    assert isinstance(inputs["point_coords"][1][1], str), "number of points must be dynamic"
    assert inputs["point_labels"][0] == "tensor(float)" and inputs["point_labels"][1][0] == 1
    assert inputs["point_labels"][1][1] == inputs["point_coords"][1][1]
    assert inputs["mask_input"] == ("tensor(float)", [1, 1, 256, 256])
    assert inputs["has_mask_input"] == ("tensor(float)", [1])
    assert inputs["orig_im_size"] == ("tensor(float)", [2])
    assert [o.name for o in dec.get_outputs()] == list(DECODER_OUTPUTS)
    enc = session(tiny1024.path("encoder.onnx"))
    (image,) = enc.get_inputs()
    assert (image.name, image.type, image.shape) == ("image", "tensor(float)", [1, 3, 1024, 1024])
    assert enc.get_outputs()[0].name == "image_embeddings"


@pytest.mark.parametrize("fixture", ["tiny256", "tiny1024"])
def test_encoder_matches_torch(fixture: str, request: pytest.FixtureRequest) -> None:
    exported: Exported = request.getfixturevalue(fixture)
    sam = exported.sam
    s = sam.img_size
    image = structured_image(s, (s * 3) // 4, seed=3)
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None]  # (1, 3, h, w)
    with torch.inference_mode():
        x = sam.preprocess(pixels)
        ref = sam.encode_image(x).numpy()
    (ours,) = session(exported.path("encoder.onnx")).run(None, {"image": x.numpy()})
    assert_logits_close(ours, ref, what=f"{fixture} encoder", tol=1e-4)


def test_raw_input_encoder_normalizes_and_pads_in_graph(tiny256: Exported) -> None:
    sam = tiny256.sam
    enc = session(tiny256.path("encoder.raw.onnx"))
    (image,) = enc.get_inputs()
    assert image.type == "tensor(uint8)" and image.shape[2] == 3 and all(isinstance(d, str) for d in image.shape[:2])
    for h, w in ((256, 170), (99, 256), (256, 256)):
        pixels = structured_image(h, w, seed=h + w)
        with torch.inference_mode():
            ref = sam.encode_image(sam.preprocess(torch.from_numpy(pixels).permute(2, 0, 1)[None])).numpy()
        (ours,) = enc.run(None, {"image": pixels})
        assert_logits_close(ours, ref, what=f"raw encoder {h}x{w}", tol=1e-4)


# Official-interface prompts in the resized (S) space: (coords, labels).
PROMPTS_256 = {
    "point+pad": ([[100.0, 80.0], [0.0, 0.0]], [1.0, -1.0]),
    "two points+pad": ([[100.0, 80.0], [40.5, 150.25], [0.0, 0.0]], [1.0, 0.0, -1.0]),
    "box": ([[30.0, 40.0], [200.0, 170.0]], [2.0, 3.0]),
    "point+box": ([[120.0, 90.0], [30.0, 40.0], [200.0, 170.0]], [1.0, 2.0, 3.0]),
    "pad+box": ([[0.0, 0.0], [30.0, 40.0], [200.0, 170.0]], [-1.0, 2.0, 3.0]),
}


@pytest.mark.parametrize("single", [False, True], ids=["all-masks", "single-mask"])
@pytest.mark.parametrize("case", list(PROMPTS_256))
def test_decoder_matches_official_onnx_model(tiny256: Exported, case: str, single: bool) -> None:
    """Same inputs into our ORT graph and the official SamOnnxModel (same weights): same outputs."""
    official = official_onnx_model(tiny256, single)
    dec = session(tiny256.path("decoder.single.onnx" if single else "decoder.onnx"))
    rng = np.random.default_rng(7)
    embedding = rng.standard_normal((1, 32, 16, 16)).astype(np.float32)
    mask = rng.standard_normal((1, 1, 64, 64)).astype(np.float32) * 4
    coords, labels = PROMPTS_256[case]
    for orig_size, mask_in in (((480, 640), None), ((300, 113), mask), ((256, 256), None)):
        feed = decoder_feed(tiny256, embedding, coords, labels, orig_size, mask_in)
        ours = dec.run(list(DECODER_OUTPUTS), feed)
        with torch.no_grad():
            ref = official(*(torch.from_numpy(feed[name]) for name in DECODER_INPUTS))
        expected_masks = 1 if single else 4
        assert ours[0].shape == (1, expected_masks, *orig_size)
        for name, a, b in zip(DECODER_OUTPUTS, ours, ref):
            assert_logits_close(a, b.numpy(), what=f"{case} {orig_size} {name}")


@pytest.mark.parametrize("with_padding_point", [False, True])
def test_official_box_inputs_match_samkit_decode(tiny1024: Exported, with_padding_point: bool) -> None:
    """A box as corner points labelled 2, 3 (optionally after a padding point) == samkit's box prompt."""
    sam = tiny1024.sam
    rng = np.random.default_rng(11)
    embedding = rng.standard_normal((1, 32, 64, 64)).astype(np.float32)
    box = [150.0, 220.5, 700.0, 610.0]
    orig_size = (900, 1200)  # resized input (768, 1024)
    coords = [[box[0], box[1]], [box[2], box[3]]]
    labels = [2.0, 3.0]
    if with_padding_point:
        coords, labels = [[0.0, 0.0], *coords], [-1.0, *labels]
    masks, iou, low_res = session(tiny1024.path("decoder.onnx")).run(
        list(DECODER_OUTPUTS), decoder_feed(tiny1024, embedding, coords, labels, orig_size)
    )
    emb_t = torch.from_numpy(embedding)
    points = None
    if with_padding_point:
        points = (torch.zeros(1, 1, 2), torch.full((1, 1), -1))
    input_size = preprocess_shape(*orig_size, sam.img_size)
    for multimask, tokens in ((True, slice(1, None)), (False, slice(0, 1))):
        with torch.inference_mode():
            ref_low, ref_iou = sam.decode(
                emb_t, *(points or (None, None)), torch.tensor([box]), multimask_output=multimask
            )
            ref_masks = postprocess_masks(ref_low, input_size, orig_size, sam.img_size)
        assert_logits_close(low_res[:, tokens], ref_low.numpy(), what=f"low_res multimask={multimask}")
        assert_logits_close(iou[:, tokens], ref_iou.numpy(), what=f"iou multimask={multimask}")
        assert_logits_close(masks[:, tokens], ref_masks.numpy(), what=f"masks multimask={multimask}")


def test_forced_external_data_round_trip(tiny256: Exported, tmp_path: Path) -> None:
    """The >2 GB storage path (vit_h): weights in NAME.onnx.data, still checks and runs the same."""
    path = export_encoder(tiny256.sam, tmp_path / "encoder.onnx", external_data=True)
    session.cache_clear()  # the file is rewritten below
    data = tmp_path / "encoder.onnx.data"
    assert data.is_file() and data.stat().st_size > path.stat().st_size
    onnx.checker.check_model(str(path), full_check=True)
    x = np.random.default_rng(0).standard_normal((1, 3, 256, 256)).astype(np.float32)
    (ours,) = session(path).run(None, {"image": x})
    (inline,) = session(tiny256.path("encoder.onnx")).run(None, {"image": x})
    np.testing.assert_array_equal(ours, inline)
    # Re-exporting inline removes the stale data file.
    export_encoder(tiny256.sam, path, external_data=False)
    assert not data.exists()


def test_per_tensor_external_files_are_gathered_into_one(tiny256: Exported, tmp_path: Path) -> None:
    """Above 2 GB the exporter writes one file per tensor; the final graph gets one NAME.onnx.data."""
    source = tmp_path / "exporter"
    source.mkdir()
    model = onnx.load(str(tiny256.path("encoder.onnx")))
    onnx.save_model(model, str(source / "encoder.onnx"), save_as_external_data=True, all_tensors_to_one_file=False,
                    size_threshold=0)
    assert len(list(source.iterdir())) > 20
    final = finalize_graph(source / "encoder.onnx", tmp_path / "out" / "encoder.onnx", {"samkit.role": "encoder"}, None)
    assert sorted(p.name for p in final.parent.iterdir()) == ["encoder.onnx", "encoder.onnx.data"]
    x = np.random.default_rng(1).standard_normal((1, 3, 256, 256)).astype(np.float32)
    (ours,) = session(final).run(None, {"image": x})
    (inline,) = session(tiny256.path("encoder.onnx")).run(None, {"image": x})
    np.testing.assert_array_equal(ours, inline)


def test_traceable_attention_equals_runtime_attention() -> None:
    """The out-of-place path taken while tracing computes what the eager encoder computes."""
    from samkit.modeling.attention import rel_pos_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 12 * 12, 8, generator=g) for _ in range(3))  # (B, nh, N, hd)
    rel_h, rel_w = torch.randn(23, 8, generator=g), torch.randn(23, 8, generator=g)
    expected = rel_pos_attention(q, k, v, rel_h, rel_w, (12, 12), query_chunk=None)
    for chunk in (None, 50, 144):
        traced = torch.jit.trace(
            lambda q, k, v, c=chunk: rel_pos_attention(q, k, v, rel_h, rel_w, (12, 12), query_chunk=c), (q, k, v)
        )
        got = traced(q, k, v)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_decoder_keeps_one_row_of_a_very_thin_image(tiny256: Exported) -> None:
    """orig_im_size 1 x 1000 at img_size 256: the crop keeps 1 row (the official graph keeps 0)."""
    rng = np.random.default_rng(13)
    embedding = rng.standard_normal((1, 32, 16, 16)).astype(np.float32)
    orig_size = (1, 1000)
    masks, _, low_res = session(tiny256.path("decoder.onnx")).run(
        list(DECODER_OUTPUTS), decoder_feed(tiny256, embedding, [[500.0, 0.5], [0.0, 0.0]], [1.0, -1.0], orig_size)
    )
    assert masks.shape == (1, 4, *orig_size)
    input_size = preprocess_shape(*orig_size, tiny256.sam.img_size)
    assert input_size == (1, 256)
    expected = postprocess_masks(torch.from_numpy(low_res), input_size, orig_size, tiny256.sam.img_size)
    assert_logits_close(masks, expected.numpy(), what="1 x 1000 masks")
