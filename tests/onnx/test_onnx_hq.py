"""HQ-SAM ONNX graphs (``samkit export-onnx --model hq_vit_tiny``): OnnxPredictor equals SamPredictor.

One export of a perturbed hq_vit_tiny (written by ``samkit export-onnx --raw-input`` from a state-dict
file: the encoder takes the resized uint8 pixels) serves the whole module; the torch predictor runs the
in-memory model the file was saved from.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import pytest
from onnx_support import CliExport, assert_logits_close, assert_masks_match, mask_iou, structured_image

from samkit import SamPredictor
from samkit.onnx import OnnxPredictor, quantize_int8
from samkit.onnx.interfaces import INTERFACES

IMAGE_HW = (540, 720)
CASES: dict[str, dict[str, Any]] = {
    "point": {"point_coords": [[360, 250]], "point_labels": [1]},
    "two points": {"point_coords": [[360, 250], [90, 470]], "point_labels": [1, 0]},
    "box": {"box": [100, 60, 600, 480]},
    "box+point": {"box": [100, 60, 600, 480], "point_coords": [[300.5, 233.25]], "point_labels": [1]},
    "two boxes": {"box": [[100, 60, 600, 480], [10, 10, 300, 250]]},
}


@pytest.fixture(scope="module")
def predictors(hq_cli: CliExport) -> tuple[SamPredictor, OnnxPredictor]:
    image = structured_image(*IMAGE_HW, seed=12)
    theirs = SamPredictor(hq_cli.model)
    theirs.set_image(image)
    ours = OnnxPredictor.from_dir(hq_cli.dir)
    ours.set_image(image)
    return theirs, ours


def test_cli_writes_hq_graphs(hq_cli: CliExport) -> None:
    assert hq_cli.report["model"] == "hq_vit_tiny"
    interface = INTERFACES["hq"]
    for role, inputs, outputs in (
        ("encoder", ["image"], list(interface.encoder_outputs)),
        ("decoder", list(interface.decoder_inputs), list(interface.decoder_outputs)),
    ):
        graph = onnx.load(str(hq_cli.dir / f"{role}.onnx"))
        onnx.checker.check_model(graph)
        meta = {p.key: p.value for p in graph.metadata_props}
        assert (meta["samkit.family"], meta["samkit.framing"], meta["samkit.role"]) == ("hq", "pad", role)
        assert [i.name for i in graph.graph.input] == inputs
        assert [o.name for o in graph.graph.output] == outputs
        if role == "encoder":
            assert meta["samkit.encoder_input"] == "raw_uint8_hwc"
            assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8


def test_image_state_matches(predictors: tuple[SamPredictor, OnnxPredictor]) -> None:
    theirs, ours = predictors
    assert ours.family == "hq" and ours.num_mask_outputs == 1
    assert ours.input_size == theirs.input_size == (768, 1024)
    assert_logits_close(ours.get_image_embedding(), theirs.get_image_embedding().numpy(), what="embedding", tol=1e-4)
    assert ours.hq_features is not None and theirs.hq_features is not None and ours.high_res_features is None
    assert_logits_close(ours.hq_features, theirs.hq_features.numpy(), what="hq_features", tol=1e-4)


# Every prompt with SAM's mask added; the HQ token alone on three of them (it shares all the code but the sum).
COMBINATIONS = [(case, False) for case in CASES] + [(case, True) for case in ("point", "box+point", "two boxes")]
COMBINATION_IDS = [f"{case}-{'hq' if hq_only else 'hq+sam'}" for case, hq_only in COMBINATIONS]


@pytest.mark.parametrize("multimask", [True, False], ids=["multimask", "single"])
@pytest.mark.parametrize(("case", "hq_token_only"), COMBINATIONS, ids=COMBINATION_IDS)
def test_predict_matches_sam_predictor(
    predictors: tuple[SamPredictor, OnnxPredictor], case: str, multimask: bool, hq_token_only: bool
) -> None:
    theirs, ours = predictors
    kwargs: dict[str, Any] = {k: np.asarray(v) for k, v in CASES[case].items()}
    kwargs.update(multimask_output=multimask, hq_token_only=hq_token_only)
    ref_logits, ref_scores, ref_low = theirs.predict(**kwargs, return_logits=True)
    logits, scores, low = ours.predict(**kwargs, return_logits=True)
    masks, _, _ = ours.predict(**kwargs)
    lead = (2,) if case == "two boxes" else ()
    assert logits.shape == (*lead, 1, *IMAGE_HW) and scores.shape == (*lead, 1) and low.shape == (*lead, 1, 256, 256)
    assert_logits_close(logits, ref_logits, what=f"{case} masks")
    assert_logits_close(scores, ref_scores, what=f"{case} scores")
    assert_logits_close(low, ref_low, what=f"{case} low_res")
    assert_masks_match(masks, ref_logits, what=f"{case} binary")


def test_switches_change_the_mask(predictors: tuple[SamPredictor, OnnxPredictor]) -> None:
    """multimask_output and hq_token_only are live graph inputs: each changes the result."""
    _, ours = predictors
    point = {"point_coords": np.array([[360, 250]]), "point_labels": np.array([1]), "return_logits": True}
    results = [ours.predict(**point, multimask_output=m, hq_token_only=h) for m in (False, True) for h in (False, True)]
    (single_sam, single_hq, multi_sam, multi_hq) = (r[2] for r in results)
    assert np.abs(single_sam - single_hq).max() > 1e-2 and np.abs(multi_sam - multi_hq).max() > 1e-2
    assert np.abs(single_sam - multi_sam).max() > 1e-2
    np.testing.assert_array_equal(single_hq, multi_hq)  # the HQ token's mask alone ignores the SAM choice
    assert results[0][1] == results[1][1] and results[0][1] != results[2][1]  # the SAM token's IoU either way


def test_mask_input_round_trip(predictors: tuple[SamPredictor, OnnxPredictor]) -> None:
    theirs, ours = predictors
    point = {"point_coords": np.array([[360, 250]]), "point_labels": np.array([1])}
    _, _, low = ours.predict(**point)
    for kwargs, hq_token_only in (({**point, "mask_input": low}, False), ({"mask_input": low}, True)):
        ref = theirs.predict(**kwargs, multimask_output=False, return_logits=True, hq_token_only=hq_token_only)
        got = ours.predict(**kwargs, multimask_output=False, return_logits=True, hq_token_only=hq_token_only)
        for a, b, name in zip(got, ref, ("masks", "scores", "low_res")):
            assert_logits_close(a, np.asarray(b, dtype=np.float32), what=f"mask_input {sorted(kwargs)} {name}")


def test_int8_encoder(
    hq_cli: CliExport, predictors: tuple[SamPredictor, OnnxPredictor], tmp_path: Any, report_figure: Callable[[str], None]
) -> None:
    """The int8 recipe applies to the HQ encoder too: masks close to float32 (IoU >= 0.95 on every prompt)."""
    _, ours = predictors
    quantize_int8(hq_cli.dir / "encoder.onnx", tmp_path / "encoder.int8.onnx")
    int8 = OnnxPredictor(tmp_path / "encoder.int8.onnx", hq_cli.dir / "decoder.onnx")
    int8.set_image(structured_image(*IMAGE_HW, seed=12))
    ious = []
    for case in ("point", "two points", "box", "box+point"):
        kwargs = {k: np.asarray(v) for k, v in CASES[case].items()}
        for hq_token_only in (False, True):
            ref, _, _ = ours.predict(**kwargs, hq_token_only=hq_token_only)
            got, _, _ = int8.predict(**kwargs, hq_token_only=hq_token_only)
            ious.append(mask_iou(got[0], ref[0]))
    figure = f"hq_vit_tiny int8 (quint8) vs fp32 mask IoU: min {min(ious):.4f}, mean {np.mean(ious):.4f} ({len(ious)} masks)"
    report_figure(figure)
    assert min(ious) >= 0.95, figure


def test_hq_vit_encoder_path(tmp_path: Any) -> None:
    """The ViT early-feature path of hq_vit_b/l/h (the tests above run TinyViT's), on a tiny 256-px HQ ViT."""
    from onnx_support import perturb_, tiny_config

    from samkit.config import HQSamConfig
    from samkit.modeling.hq_sam import HQSam
    from samkit.onnx import export_onnx

    base = tiny_config(256)
    config = HQSamConfig(
        name="tiny_hq_vit",
        image_encoder=base.image_encoder,
        prompt_encoder=base.prompt_encoder,
        mask_decoder=base.mask_decoder,
    )
    model = perturb_(HQSam(config), seed=6)
    export_onnx(model, tmp_path)
    image = structured_image(200, 150, seed=3)
    theirs, ours = SamPredictor(model), OnnxPredictor.from_dir(tmp_path)
    theirs.set_image(image)
    ours.set_image(image)
    assert ours.hq_features is not None and theirs.hq_features is not None
    assert_logits_close(ours.hq_features, theirs.hq_features.numpy(), what="tiny HQ ViT hq_features", tol=1e-4)
    point = {"point_coords": np.array([[70, 90]]), "point_labels": np.array([1]), "return_logits": True}
    for hq_token_only in (False, True):
        ref = theirs.predict(**point, hq_token_only=hq_token_only)
        got = ours.predict(**point, hq_token_only=hq_token_only)
        for a, b, name in zip(got, ref, ("masks", "scores", "low_res")):
            assert_logits_close(a, b, what=f"tiny HQ ViT {name}")
