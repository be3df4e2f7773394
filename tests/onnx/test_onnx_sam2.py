"""SAM 2.1 ONNX graphs (``samkit export-onnx --model sam2.1_hiera_t``): OnnxPredictor equals SamPredictor.

One export of a perturbed sam2.1_hiera_t (written by the CLI from a ``{"model": sd}`` file) serves the
whole module; the torch predictor runs the in-memory model the file was saved from.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx_support import CliExport, assert_logits_close, assert_masks_match, structured_image

from samkit import SamPredictor
from samkit.onnx import OnnxPredictor, export_decoder
from samkit.onnx.interfaces import INTERFACES

IMAGE_HW = (600, 860)  # not square: SAM 2 stretches it
CASES: dict[str, dict[str, Any]] = {
    "point": {"point_coords": [[430, 250]], "point_labels": [1]},
    "two points": {"point_coords": [[430, 250], [100, 520]], "point_labels": [1, 0]},
    "box": {"box": [120, 80, 700, 510]},
    "box+point": {"box": [120, 80, 700, 510], "point_coords": [[300.5, 333.25]], "point_labels": [0]},
    "two boxes": {"box": [[120, 80, 700, 510], [10, 10, 300, 250]]},
    "no prompt": {},
}


@pytest.fixture(scope="module")
def predictors(sam2_cli: CliExport) -> tuple[SamPredictor, OnnxPredictor]:
    image = structured_image(*IMAGE_HW, seed=11)
    theirs = SamPredictor(sam2_cli.model)
    theirs.set_image(image)
    ours = OnnxPredictor.from_dir(sam2_cli.dir)
    ours.set_image(image)
    return theirs, ours


def test_cli_writes_sam2_graphs(sam2_cli: CliExport) -> None:
    assert sam2_cli.report["model"] == "sam2.1_hiera_t"
    interface = INTERFACES["sam2"]
    for role, inputs, outputs in (
        ("encoder", ["image"], list(interface.encoder_outputs)),
        ("decoder", list(interface.decoder_inputs), list(interface.decoder_outputs)),
    ):
        path = sam2_cli.dir / f"{role}.onnx"
        assert sam2_cli.report[role] == str(path)
        graph = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(graph)
        meta = {p.key: p.value for p in graph.metadata_props}
        assert (meta["samkit.family"], meta["samkit.framing"], meta["samkit.model"]) == ("sam2", "stretch", "sam2.1_hiera_t")
        assert meta["samkit.role"] == role
        assert [i.name for i in graph.graph.input] == inputs
        assert [o.name for o in graph.graph.output] == outputs


def test_image_state_matches(predictors: tuple[SamPredictor, OnnxPredictor]) -> None:
    theirs, ours = predictors
    assert ours.family == "sam2" and ours.num_mask_outputs == 4 and ours.img_size == 1024
    assert ours.original_size == theirs.original_size == IMAGE_HW
    assert ours.input_size == theirs.input_size == (1024, 1024)
    assert_logits_close(ours.get_image_embedding(), theirs.get_image_embedding().numpy(), what="embedding", tol=1e-4)
    assert ours.high_res_features is not None and theirs.high_res_features is not None and ours.hq_features is None
    for i, (a, b) in enumerate(zip(ours.high_res_features, theirs.high_res_features)):
        assert_logits_close(a, b.numpy(), what=f"high_res_feats_{i}", tol=1e-4)


@pytest.mark.parametrize("multimask", [True, False], ids=["multimask", "single"])
@pytest.mark.parametrize("case", list(CASES))
def test_predict_matches_sam_predictor(predictors: tuple[SamPredictor, OnnxPredictor], case: str, multimask: bool) -> None:
    theirs, ours = predictors
    kwargs = {k: np.asarray(v) for k, v in CASES[case].items()}
    ref_logits, ref_scores, ref_low = theirs.predict(**kwargs, multimask_output=multimask, return_logits=True)
    logits, scores, low = ours.predict(**kwargs, multimask_output=multimask, return_logits=True)
    masks, _, _ = ours.predict(**kwargs, multimask_output=multimask)
    lead = (2,) if case == "two boxes" else ()
    count = 3 if multimask else 1
    assert logits.shape == (*lead, count, *IMAGE_HW) and low.shape == (*lead, count, 256, 256)
    assert_logits_close(logits, ref_logits, what=f"{case} masks")
    assert_logits_close(scores, ref_scores, what=f"{case} scores")
    assert_logits_close(low, ref_low, what=f"{case} low_res (clamped)")
    assert_masks_match(masks, ref_logits, what=f"{case} binary")
    assert np.abs(low).max() <= 32.0


def _decoder_feed(ours: OnnxPredictor, coords: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """A SAM 2 decoder feed for prompts already in the model's square (padding point included)."""
    assert ours.high_res_features is not None
    return {
        "image_embeddings": ours.get_image_embedding(),
        "high_res_feats_0": ours.high_res_features[0],
        "high_res_feats_1": ours.high_res_features[1],
        "point_coords": coords.astype(np.float32),
        "point_labels": labels.astype(np.float32),
        "mask_input": np.zeros((1, 1, 256, 256), dtype=np.float32),
        "has_mask_input": np.zeros(1, dtype=np.float32),
        "orig_im_size": np.asarray(IMAGE_HW, dtype=np.float32),
    }


def _torch_all_tokens(model: Any, theirs: SamPredictor, coords: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, ...]:
    """The torch decoder's logits (1, 4, 256, 256), IoU (1, 4) and object scores (1, 1) of every mask token."""
    pe = model.prompt_encoder
    with torch.inference_mode():
        sparse = pe.embed_points(torch.from_numpy(coords), torch.from_numpy(labels), pad=False)  # (1, N, C)
        dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, *pe.image_embedding_size)
        return model.mask_decoder.predict_all_masks(
            theirs.features, pe.get_dense_pe(), sparse, dense, theirs.high_res_features, None
        )


PROMPTS_IN_SQUARE = {  # (coords, labels) in the 1024 square, SAM 2 order, padding point last
    "click": (np.array([[[512.0, 300.0], [0.0, 0.0]]]), np.array([[1.0, -1.0]])),
    "box": (np.array([[[100.0, 140.0], [830.0, 900.0], [0.0, 0.0]]]), np.array([[2.0, 3.0, -1.0]])),
}


def test_single_mask_slot_follows_the_stability_fallback(
    sam2_cli: CliExport, predictors: tuple[SamPredictor, OnnxPredictor], tmp_path: Any
) -> None:
    """Slot 0 is SAM 2's dynamic single mask: token 0 where its stability score reaches the threshold,
    else the best multimask output. The perturbed model's token-0 masks are unstable (fallback taken);
    a second decoder exported with the threshold at -1 (every mask stable) must return token 0."""
    theirs, ours = predictors
    decoder = sam2_cli.model.mask_decoder
    saved = decoder.stability_thresh
    decoder.stability_thresh = -1.0
    try:
        export_decoder(sam2_cli.model, tmp_path / "always_stable.onnx")
    finally:
        decoder.stability_thresh = saved
    session = ort.InferenceSession(str(sam2_cli.dir / "decoder.onnx"), providers=["CPUExecutionProvider"])
    stable = ort.InferenceSession(str(tmp_path / "always_stable.onnx"), providers=["CPUExecutionProvider"])
    for name, (coords, labels) in PROMPTS_IN_SQUARE.items():
        feed = _decoder_feed(ours, coords, labels)
        every, every_iou, object_scores = _torch_all_tokens(sam2_cli.model, theirs, coords, labels)
        assert decoder.stability_scores(every[:, :1]).item() < decoder.stability_thresh, "expected an unstable token 0"
        best = 1 + int(every_iou[0, 1:].argmax())
        _, iou, low, objects = session.run(None, feed)
        assert_logits_close(low[0, 0], every[0, best].clamp(-32, 32).numpy(), what=f"{name}: fallback mask")
        assert_logits_close(iou[0, 0], every_iou[0, best].numpy(), what=f"{name}: fallback IoU")
        assert_logits_close(iou[0, 1:], every_iou[0, 1:].numpy(), what=f"{name}: multimask IoU")
        assert_logits_close(objects, object_scores.numpy(), what=f"{name}: object_score_logits")
        _, iou, low, _ = stable.run(None, feed)
        assert_logits_close(low[0, 0], every[0, 0].clamp(-32, 32).numpy(), what=f"{name}: stable token 0")
        assert_logits_close(iou[0, 0], every_iou[0, 0].numpy(), what=f"{name}: token 0 IoU")


def test_mask_input_round_trip(predictors: tuple[SamPredictor, OnnxPredictor]) -> None:
    theirs, ours = predictors
    point = {"point_coords": np.array([[430, 250]]), "point_labels": np.array([1])}
    _, scores, low = ours.predict(**point)
    previous = low[np.argmax(scores)][None]  # (1, 256, 256), clamped as SAM 2 returns it
    for kwargs in ({**point, "mask_input": previous}, {"mask_input": previous}):
        for multimask in (False, True):
            ref = theirs.predict(**kwargs, multimask_output=multimask, return_logits=True)
            got = ours.predict(**kwargs, multimask_output=multimask, return_logits=True)
            for a, b, name in zip(got, ref, ("masks", "scores", "low_res")):
                assert_logits_close(a, np.asarray(b, dtype=np.float32), what=f"mask_input {sorted(kwargs)} {name}")


def test_sam2_errors(predictors: tuple[SamPredictor, OnnxPredictor], sam2_cli: CliExport, hq_cli: CliExport) -> None:
    _, ours = predictors
    with pytest.raises(ValueError, match="hq_token_only: only HQ-SAM models"):
        ours.predict(point_coords=np.array([[10, 10]]), point_labels=np.array([1]), hq_token_only=True)
    with pytest.raises(ValueError, match="do not belong together: the encoder is a sam2 graph, the decoder a hq graph"):
        OnnxPredictor(sam2_cli.dir / "encoder.onnx", hq_cli.dir / "decoder.onnx")
    with pytest.raises(ValueError, match="stretched to 1024 x 1024"):
        ours.set_resized_image(np.zeros((1024, 700, 3), dtype=np.uint8), (1400, 957))
