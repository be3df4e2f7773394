"""OnnxPredictor: same results as SamPredictor, int8 accuracy, errors, no torch needed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from onnx_support import (
    Exported,
    assert_logits_close,
    assert_masks_match,
    mask_iou,
    structured_image,
)

from samkit import SamPredictor
from samkit.onnx import OnnxPredictor

# Prompt sets in original-image pixels of a 700 x 500 (H x W) image.
CASES: dict[str, dict[str, Any]] = {
    "point": {"point_coords": [[250, 300]], "point_labels": [1]},
    "two points": {"point_coords": [[250, 300], [100, 620]], "point_labels": [1, 0]},
    "box": {"box": [60, 90, 420, 560]},
    "box+point": {"box": [60, 90, 420, 560], "point_coords": [[200.5, 333.25]], "point_labels": [1]},
    "two boxes": {"box": [[60, 90, 420, 560], [10, 10, 200, 250]]},
    "no prompt": {},
}
IMAGE_HW = (700, 500)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return structured_image(*IMAGE_HW, seed=5)


@pytest.fixture(scope="module")
def predictors(tiny1024: Exported, image: np.ndarray) -> tuple[SamPredictor, OnnxPredictor]:
    torch_predictor = SamPredictor(tiny1024.sam)
    torch_predictor.set_image(image)
    onnx_predictor = OnnxPredictor.from_dir(tiny1024.dir)
    onnx_predictor.set_image(image)
    return torch_predictor, onnx_predictor


def test_image_state_matches(predictors: tuple[SamPredictor, OnnxPredictor]) -> None:
    theirs, ours = predictors
    assert ours.is_image_set
    assert ours.original_size == theirs.original_size == IMAGE_HW
    assert ours.input_size == theirs.input_size == (1024, 731)
    assert ours.img_size == 1024 and ours.num_mask_outputs == 4 and ours.mask_threshold == 0.0
    assert_logits_close(ours.get_image_embedding(), theirs.get_image_embedding().numpy(), what="embedding", tol=1e-4)


@pytest.mark.parametrize("multimask", [True, False], ids=["multimask", "single"])
@pytest.mark.parametrize("case", list(CASES))
def test_predict_matches_sam_predictor(
    predictors: tuple[SamPredictor, OnnxPredictor], case: str, multimask: bool
) -> None:
    theirs, ours = predictors
    kwargs = {k: np.asarray(v) for k, v in CASES[case].items()}
    ref_logits, ref_scores, ref_low = theirs.predict(**kwargs, multimask_output=multimask, return_logits=True)
    logits, scores, low = ours.predict(**kwargs, multimask_output=multimask, return_logits=True)
    masks, scores_b, low_b = ours.predict(**kwargs, multimask_output=multimask)
    count = 3 if multimask else 1
    lead = (2,) if case == "two boxes" else ()
    assert logits.shape == (*lead, count, *IMAGE_HW) and logits.dtype == np.float32
    assert scores.shape == (*lead, count) and low.shape == (*lead, count, 256, 256)
    assert masks.dtype == bool
    assert_logits_close(logits, ref_logits.astype(np.float32), what=f"{case} masks")
    assert_logits_close(scores, ref_scores, what=f"{case} scores")
    assert_logits_close(low, ref_low, what=f"{case} low_res")
    assert_masks_match(masks, ref_logits, what=f"{case} binary")
    np.testing.assert_array_equal(scores_b, scores)
    np.testing.assert_array_equal(low_b, low)
    assert 0.02 < masks.mean() < 0.98 or case == "no prompt", "degenerate test mask"


def test_mask_input_round_trip(predictors: tuple[SamPredictor, OnnxPredictor]) -> None:
    theirs, ours = predictors
    point = {"point_coords": np.array([[250, 300]]), "point_labels": np.array([1])}
    _, scores, low = ours.predict(**point)
    previous = low[np.argmax(scores)][None]  # (1, 256, 256)
    for kwargs in ({**point, "mask_input": previous}, {"mask_input": previous}):
        ref = theirs.predict(**kwargs, multimask_output=False, return_logits=True)
        got = ours.predict(**kwargs, multimask_output=False, return_logits=True)
        for a, b, name in zip(got, ref, ("masks", "scores", "low_res")):
            assert_logits_close(a, np.asarray(b, dtype=np.float32), what=f"mask_input {sorted(kwargs)} {name}")


def test_bgr_and_pil_inputs(tiny256: Exported) -> None:
    from PIL import Image

    rgb = structured_image(200, 150, seed=9)
    predictor = OnnxPredictor.from_dir(tiny256.dir)
    predictor.set_image(rgb)
    expected = predictor.get_image_embedding().copy()
    predictor.set_image(np.ascontiguousarray(rgb[..., ::-1]), image_format="BGR")
    np.testing.assert_array_equal(predictor.get_image_embedding(), expected)
    predictor.set_image(Image.fromarray(rgb))
    np.testing.assert_array_equal(predictor.get_image_embedding(), expected)


def test_raw_input_encoder_gives_same_predictions(tiny256: Exported) -> None:
    image = structured_image(300, 180, seed=2)
    normal = OnnxPredictor.from_dir(tiny256.dir)
    raw = OnnxPredictor(tiny256.path("encoder.raw.onnx"), tiny256.path("decoder.onnx"))
    kwargs = {"point_coords": np.array([[90, 120]]), "point_labels": np.array([1]), "return_logits": True}
    normal.set_image(image)
    raw.set_image(image)
    assert_logits_close(raw.get_image_embedding(), normal.get_image_embedding(), what="embedding", tol=1e-5)
    for a, b in zip(raw.predict(**kwargs), normal.predict(**kwargs)):
        assert_logits_close(a, b, what="raw vs normalized input", tol=1e-4)


def test_single_mask_decoder_picks_like_the_official_export(tiny256: Exported) -> None:
    image = structured_image(200, 260, seed=4)
    full = OnnxPredictor.from_dir(tiny256.dir)
    single = OnnxPredictor(tiny256.path("encoder.onnx"), tiny256.path("decoder.single.onnx"))
    assert single.num_mask_outputs == 1
    full.set_image(image)
    single.set_image(image)
    # One point (+ padding) -> best multimask output by predicted IoU; two points -> token 0.
    one = {"point_coords": np.array([[100, 80]]), "point_labels": np.array([1]), "return_logits": True}
    masks, scores, _ = single.predict(**one)
    ref_masks, ref_scores, _ = full.predict(**one, multimask_output=True)
    best = int(np.argmax(ref_scores))
    assert masks.shape == (1, 200, 260)
    assert_logits_close(masks[0], ref_masks[best], what="single-mask choice")
    assert_logits_close(scores, ref_scores[best : best + 1], what="single-mask score")
    two = {"point_coords": np.array([[100, 80], [30, 150]]), "point_labels": np.array([1, 0]), "return_logits": True}
    assert_logits_close(single.predict(**two)[0], full.predict(**two, multimask_output=False)[0], what="token 0")


def test_int8_masks_agree_with_fp32(tiny256: Exported, report_figure: Callable[[str], None]) -> None:
    """The int8 pair (encoder.int8.onnx + decoder.onnx): mask IoU >= 0.97 against fp32 on every test prompt."""
    image = structured_image(240, 320, seed=8)
    fp32 = OnnxPredictor.from_dir(tiny256.dir)
    int8 = OnnxPredictor.from_dir(tiny256.dir, quantized=True)
    fp32.set_image(image)
    int8.set_image(image)
    prompts = [
        {"point_coords": np.array([[160, 120]]), "point_labels": np.array([1])},
        {"point_coords": np.array([[60, 50], [250, 200]]), "point_labels": np.array([1, 0])},
        {"box": np.array([40, 30, 280, 210])},
        {"box": np.array([100, 20, 310, 120]), "point_coords": np.array([[200, 70]]), "point_labels": np.array([1])},
    ]
    ious = []
    for prompt in prompts:
        for multimask in (True, False):
            ref, _, _ = fp32.predict(**prompt, multimask_output=multimask)
            got, _, _ = int8.predict(**prompt, multimask_output=multimask)
            ious.extend(mask_iou(a, b) for a, b in zip(got, ref))
    figure = f"tiny256 int8 vs fp32 mask IoU: min {min(ious):.4f}, mean {np.mean(ious):.4f} ({len(ious)} masks)"
    report_figure(figure)
    assert min(ious) >= 0.97, figure


def test_errors(tiny256: Exported, tiny1024: Exported, tmp_path: Path) -> None:
    predictor = OnnxPredictor.from_dir(tiny256.dir)
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict(point_coords=np.array([[1, 2]]), point_labels=np.array([1]))
    with pytest.raises(FileNotFoundError, match="encoder.int8.onnx"):
        OnnxPredictor.from_dir(tmp_path, quantized=True)
    with pytest.raises(FileNotFoundError, match="decoder_path"):
        OnnxPredictor(tiny256.path("encoder.onnx"), tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="do not belong together"):
        OnnxPredictor(tiny256.path("encoder.onnx"), tiny1024.path("decoder.onnx"))
    with pytest.raises(ValueError, match="not the SAM ONNX decoder interface"):
        OnnxPredictor(tiny256.path("encoder.onnx"), tiny256.path("encoder.onnx"))
    with pytest.raises(ValueError, match="NoSuchExecutionProvider"):
        OnnxPredictor.from_dir(tiny256.dir, providers=["NoSuchExecutionProvider"])
    predictor.set_image(structured_image(64, 80, seed=1))
    with pytest.raises(ValueError, match="point_labels"):
        predictor.predict(point_coords=np.array([[1, 2]]), point_labels=np.array([2]))
    with pytest.raises(ValueError, match="box"):
        predictor.predict(box=np.array([10, 10, 5, 20]))
    with pytest.raises(ValueError, match="mask_input"):
        predictor.predict(mask_input=np.zeros((1, 256, 256)))  # this model's masks are 64x64
    with pytest.raises(ValueError, match="image_format"):
        predictor.set_image(structured_image(8, 8, seed=0), image_format="HSV")
    predictor.reset_image()
    assert not predictor.is_image_set


def test_runs_without_torch(tiny256: Exported, tmp_path: Path) -> None:
    """samkit.onnx.predictor and what it imports never import torch (blocked in a subprocess)."""
    image = structured_image(120, 90, seed=6)
    np.save(tmp_path / "image.npy", image)
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.modules["torch"] = None  # any "import torch" now raises ImportError
        import numpy as np
        from samkit.onnx import OnnxPredictor
        import samkit.onnx.predictor
        p = OnnxPredictor.from_dir({str(tiny256.dir)!r})
        p.set_image(np.load({str(tmp_path / "image.npy")!r}))
        masks, scores, low = p.predict(point_coords=np.array([[40, 50]]), point_labels=np.array([1]))
        np.save({str(tmp_path / "scores.npy")!r}, scores)
        loaded = sorted(m for m, v in sys.modules.items() if m.split(".")[0] == "torch" and v is not None)
        print(json.dumps({{"torch_modules": loaded, "shape": list(masks.shape)}}))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"torch_modules": [], "shape": [3, 120, 90]}
    predictor = OnnxPredictor.from_dir(tiny256.dir)
    predictor.set_image(image)
    _, scores, _ = predictor.predict(point_coords=np.array([[40, 50]]), point_labels=np.array([1]))
    np.testing.assert_array_equal(np.load(tmp_path / "scores.npy"), scores)


def test_providers(tiny256: Exported, caplog: pytest.LogCaptureFixture) -> None:
    predictor = OnnxPredictor.from_dir(tiny256.dir)
    assert predictor.encoder.get_providers() == ["CPUExecutionProvider"]
    assert predictor.decoder.get_providers() == ["CPUExecutionProvider"]
    # A portable preference list: providers missing from this build are skipped, with a warning.
    preferred = OnnxPredictor.from_dir(tiny256.dir, providers=["NoSuchExecutionProvider", "CPUExecutionProvider"])
    assert preferred.encoder.get_providers() == ["CPUExecutionProvider"]
    assert "NoSuchExecutionProvider" in caplog.text
    assert "CPUExecutionProvider" in ort.get_available_providers()


def test_exports_without_family_metadata_still_load(tiny256: Exported, tmp_path: Path) -> None:
    """Graphs written before the samkit.family entry (and other exporters' SAM 1 graphs) are SAM 1 graphs."""
    import onnx

    for name in ("encoder.onnx", "decoder.onnx"):
        graph = onnx.load(str(tiny256.path(name)))
        kept = [p for p in graph.metadata_props if p.key not in ("samkit.family", "samkit.framing")]
        assert len(kept) == len(graph.metadata_props) - 2
        del graph.metadata_props[:]
        graph.metadata_props.extend(kept)
        onnx.save(graph, str(tmp_path / name))
    old = OnnxPredictor.from_dir(tmp_path)
    new = OnnxPredictor.from_dir(tiny256.dir)
    assert old.family == new.family == "sam"
    image = structured_image(150, 200, seed=7)
    old.set_image(image)
    new.set_image(image)
    prompt = {"point_coords": np.array([[90, 60]]), "point_labels": np.array([1]), "return_logits": True}
    for a, b in zip(old.predict(**prompt), new.predict(**prompt)):
        np.testing.assert_array_equal(a, b)
