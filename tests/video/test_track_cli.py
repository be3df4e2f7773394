"""``samkit track``: the CLI's masks equal SamVideoPredictor's for the same prompts; bad input is one line, exit 2."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from video_oracle import write_clip, write_present_objects_checkpoint

from samkit.build_sam2 import get_sam2_video_config
from samkit.cli import main
from samkit.everything.rle import rle_to_mask, string_to_counts
from samkit.video import SamVideoPredictor

IMAGE_SIZE = 256  # the tiny input keeps a full hiera_t fast; every module follows it


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random sam2.1_hiera_t video checkpoint whose objects are present (video_oracle)."""
    return write_present_objects_checkpoint(tmp_path_factory.mktemp("ckpt") / "sam2.1_hiera_tiny.pt")


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clip") / "frames", num_frames=6)


@pytest.mark.slow
def test_track_writes_the_predictors_masks(tmp_path: Path, checkpoint: Path, clip: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    overlay = tmp_path / "overlay.mp4"
    argv = [
        "track", str(clip), "--checkpoint", str(checkpoint), "--image-size", str(IMAGE_SIZE), "--device", "cpu",
        "--point", "2,40,36", "--point", "car:2,90,20", "--box", "car:2,70,5,110,40", "--point", "4,50,36,0",
        "--out", str(out), "--overlay", str(overlay), "--no-progress",
    ]
    assert main(argv) == 0
    assert "2 object(s) over 6 frames" in capsys.readouterr().out

    # The same session through the API.
    from samkit.build_sam2 import build_sam_video

    model = build_sam_video(get_sam2_video_config("sam2.1_hiera_t").with_image_size(IMAGE_SIZE), checkpoint)
    predictor = SamVideoPredictor(model)
    state = predictor.init_state(clip)
    predictor.add_new_points_or_box(state, 2, 1, points=np.array([[40, 36]], np.float32), labels=np.array([1], np.int32))
    predictor.add_new_points_or_box(
        state, 2, "car", points=np.array([[90, 20]], np.float32), labels=np.array([1], np.int32),
        box=np.array([70, 5, 110, 40], np.float32),
    )
    predictor.add_new_points_or_box(state, 4, 1, points=np.array([[50, 36]], np.float32), labels=np.array([0], np.int32))
    expected: dict[int, dict[str, np.ndarray]] = {}
    for reverse in (False, True):
        for f, ids, logits in predictor.propagate_in_video(state, start_frame_idx=2, reverse=reverse):
            expected.setdefault(f, {str(i): (logits[k, 0] > 0).numpy() for k, i in enumerate(ids)})
    assert sorted(expected) == list(range(6))

    tracks = json.loads((out / "tracks.json").read_text())
    assert tracks["objects"] == ["1", "car"] and [f["frame"] for f in tracks["frames"]] == list(range(6))
    nonempty = 0
    for entry in tracks["frames"]:
        for obj, rec in entry["objects"].items():
            want = expected[entry["frame"]][obj]
            png = np.asarray(Image.open(out / "masks" / f"{entry['frame']:05d}_{obj}.png")) > 0
            rle = rle_to_mask({"size": rec["segmentation"]["size"], "counts": string_to_counts(rec["segmentation"]["counts"])})
            assert np.array_equal(png, want) and np.array_equal(rle, want)
            assert rec["area"] == int(want.sum())
            nonempty += int(want.any())
    assert nonempty >= 6  # the check compares real masks, not empty ones

    video = cv2.VideoCapture(str(overlay))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    video.release()

    # A finished run is not redone.
    assert main(argv) == 0
    assert "nothing to do" in capsys.readouterr().out
    # ... unless the video changed under the same path (here: a frame file rewritten later).
    frame = sorted(clip.iterdir())[0]
    stamp = frame.stat()
    os.utime(frame, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))
    assert main(argv) == 0
    assert "nothing to do" not in capsys.readouterr().out
    assert json.loads((out / "tracks.json").read_text())["frames"] == tracks["frames"]  # same frames, same masks


def test_track_bad_input_is_one_line(tmp_path: Path, checkpoint: Path, clip: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["track", "--checkpoint", str(checkpoint), "--image-size", str(IMAGE_SIZE), "--device", "cpu", "--no-progress"]
    cases = [
        ([str(clip), "--point", "9,10,10", "--out", str(tmp_path / "a")], "video has 6 frames"),
        ([str(tmp_path / "missing.mp4"), "--point", "0,10,10", "--out", str(tmp_path / "b")], ""),
        ([str(clip), "--out", str(tmp_path / "c")], "give at least one"),
        ([str(clip), "--point", "0.5,10,10", "--out", str(tmp_path / "d")], "whole number"),
        ([str(clip), "--point", "0,10,10", "--image-size", "100", "--out", str(tmp_path / "f")], "multiple of 64"),
    ]
    for argv, message in cases:
        assert main(base + argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("samkit track: error:") and "\n" not in err and message in err, err
    with pytest.raises(SystemExit) as exit_info:  # a usage error: SAM 1 models do not track
        main(base + [str(clip), "--point", "0,10,10", "--model", "vit_b", "--out", str(tmp_path / "e")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "invalid choice: 'vit_b'" in err and "\n" not in err
