"""A killed ``samkit track`` resumes where it stopped, with the outputs of an uninterrupted run.

CLI level: runs interrupted (a KeyboardInterrupt from inside the propagation, after k frames) in
the forward or the backward pass, then rerun, write byte-identical PNGs and the same
tracks.json as one uninterrupted run, and track only the frames left; a changed prompt or a
damaged resume file starts over. Predictor level: ``export_memory`` / ``import_memory`` through a
safetensors file continues with bit-identical masks, and on a long clip (a stand-in model that
records reads) with exactly the retained outputs of an uninterrupted session.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fake_video_model import ReadCheckingModel
from PIL import Image
from video_oracle import write_clip, write_present_objects_checkpoint

import samkit.cli.track as track_cli
import samkit.cli.track_resume as track_resume
from samkit.build_sam2 import build_sam_video, get_sam2_video_config
from samkit.cli import main
from samkit.video import SamVideoPredictor
from samkit.video.resume import memory_file_bytes, read_memory_file

IMAGE_SIZE = 256  # the tiny input keeps a full hiera_t fast
NUM_FRAMES = 7
# One object here (the predictor-level tests below have two): a click on frame 3, a background click on 5.
PROMPTS = ["--point", "3,40,36", "--point", "5,50,36,0"]
# Frames each pass yields from the predictor: forwards 3..6, backwards 3 (skipped: done) ..0.
FORWARD, BACKWARD = 4, 4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random sam2.1_hiera_t video checkpoint whose objects are present (video_oracle)."""
    return write_present_objects_checkpoint(tmp_path_factory.mktemp("ckpt") / "sam2.1_hiera_tiny.pt")


@pytest.fixture(scope="module")
def video_model(checkpoint: Path) -> Any:
    """The model ``samkit track`` builds for these options (built once for the module)."""
    return build_sam_video(get_sam2_video_config("sam2.1_hiera_t").with_image_size(IMAGE_SIZE), checkpoint)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clip") / "frames", num_frames=NUM_FRAMES)


class Tracker:
    """Runs ``samkit track`` in process; counts the frames the predictor yields, can interrupt."""

    def __init__(
        self, checkpoint: Path, clip: Path, model: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        self.base = ["track", str(clip), "--checkpoint", str(checkpoint), "--image-size", str(IMAGE_SIZE), "--device", "cpu", "--no-progress"]
        self.capsys = capsys
        self.yielded = 0
        self.interrupt_after: int | None = None
        original = SamVideoPredictor.propagate_in_video
        tracker = self

        def counting(predictor: SamVideoPredictor, *args: Any, **kwargs: Any) -> Iterator[Any]:
            for item in original(predictor, *args, **kwargs):
                if tracker.interrupt_after is not None and tracker.yielded >= tracker.interrupt_after:
                    raise KeyboardInterrupt
                tracker.yielded += 1
                yield item

        monkeypatch.setattr(SamVideoPredictor, "propagate_in_video", counting)
        monkeypatch.setattr(track_cli, "_load_video_model", lambda args: model)  # the reference run loads it

    def __call__(self, out: Path, prompts: list[str] = PROMPTS, interrupt_after: int | None = None) -> tuple[int, int, str]:
        """(exit status, frames yielded, stderr) of one run."""
        self.yielded, self.interrupt_after = 0, interrupt_after
        status = main(self.base + prompts + ["--out", str(out)])
        return status, self.yielded, self.capsys.readouterr().err


@pytest.fixture
def track(
    checkpoint: Path, clip: Path, video_model: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Tracker:
    monkeypatch.setattr(track_resume, "SAVE_INTERVAL_S", 0.0)  # a resume file after every frame
    return Tracker(checkpoint, clip, video_model, monkeypatch, capsys)


@pytest.fixture(scope="module")
def reference(checkpoint: Path, clip: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """(a) One uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "out"
    argv = ["track", str(clip), "--checkpoint", str(checkpoint), "--image-size", str(IMAGE_SIZE), "--device", "cpu", "--no-progress"]
    assert main(argv + PROMPTS + ["--out", str(out)]) == 0
    return out


def assert_same_outputs(expected: Path, got: Path) -> None:
    """Every mask PNG and tracks.json byte for byte (same settings), no journal files left."""
    pngs = sorted(p.name for p in (expected / "masks").iterdir())
    assert len(pngs) == NUM_FRAMES and sorted(p.name for p in (got / "masks").iterdir()) == pngs
    for name in pngs:
        assert (got / "masks" / name).read_bytes() == (expected / "masks" / name).read_bytes(), name
    assert (got / "tracks.json").read_bytes() == (expected / "tracks.json").read_bytes()
    have = json.loads((got / "tracks.json").read_text())
    assert [f["frame"] for f in have["frames"]] == list(range(NUM_FRAMES))
    assert all(rec["area"] > 0 for f in have["frames"] for rec in f["objects"].values())  # real masks
    assert sorted(p.name for p in got.iterdir()) == ["masks", "tracks.json"]


def test_interrupted_forward_pass_resumes(track: Tracker, reference: Path, tmp_path: Path) -> None:
    """(b) Killed after 2 forward frames (3, 4): the rerun tracks 5.. and then the backward pass."""
    out = tmp_path / "out"
    status, yielded, err = track(out, interrupt_after=2)
    assert status == 130 and yielded == 2 and (out / track_resume.RESUME_NAME).is_file()
    status, yielded, err = track(out)
    assert status == 0 and "resuming at frame 5 (forwards): 2 of 7 frames were done" in err, err
    assert yielded == FORWARD + BACKWARD - 2
    assert_same_outputs(reference, out)


@pytest.mark.parametrize("interval", [0.0, pytest.param(float("inf"), marks=pytest.mark.slow)])
def test_interrupted_backward_pass_resumes(track: Tracker, reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interval: float) -> None:
    """(c) Killed in the backward pass after frame 2: with a save after every frame the rerun goes
    on at frame 1; with saves only at the end of each pass it redoes the backward pass."""
    monkeypatch.setattr(track_resume, "SAVE_INTERVAL_S", interval)
    out = tmp_path / "out"
    assert track(out, interrupt_after=FORWARD + 2)[0] == 130
    status, yielded, err = track(out)
    if interval == 0.0:
        assert status == 0 and "resuming at frame 1 (backwards): 5 of 7 frames were done" in err, err
        assert yielded == 2
    else:
        assert status == 0 and "resuming at frame 2 (backwards): 4 of 7 frames were done" in err, err
        assert yielded == BACKWARD
    assert_same_outputs(reference, out)


@pytest.mark.slow  # 3 runs; these slow ones add ~9 runs of the 7-frame clip
def test_changed_prompt_starts_over(track: Tracker, tmp_path: Path) -> None:
    """(d) The resume file of other prompts is ignored (one line) and the run starts over."""
    changed = PROMPTS[:-1] + ["5,52,30,0"]
    expected = tmp_path / "expected"
    assert track(expected, prompts=changed)[0] == 0
    out = tmp_path / "out"
    assert track(out, interrupt_after=3)[0] == 130
    status, yielded, err = track(out, prompts=changed)
    assert status == 0 and yielded == FORWARD + BACKWARD and "resuming" not in err
    assert [line for line in err.splitlines() if "other settings" in line and "starting over" in line] == err.splitlines(), err
    assert_same_outputs(expected, out)


@pytest.mark.slow  # 4 runs
def test_damaged_resume_file_starts_over(track: Tracker, reference: Path, tmp_path: Path) -> None:
    """(e) A truncated or corrupt resume file, or a frames file shorter than it says: one line, start over."""
    interrupted = tmp_path / "interrupted"
    assert track(interrupted, interrupt_after=FORWARD + 1)[0] == 130
    for damage in ("truncated", "garbage", "frames file cut"):
        out = tmp_path / damage
        shutil.copytree(interrupted, out)
        resume, records = out / track_resume.RESUME_NAME, out / track_resume.RECORDS_NAME
        if damage == "truncated":
            resume.write_bytes(resume.read_bytes()[: resume.stat().st_size // 2])
        elif damage == "garbage":
            resume.write_bytes(b"\x00\xff" * 1000)
        else:
            records.write_bytes(records.read_bytes()[:-10])
        status, yielded, err = track(out)
        assert status == 0 and yielded == FORWARD + BACKWARD, damage
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("samkit track: cannot resume from"), err
        assert lines[0].endswith("starting over"), err
        assert_same_outputs(reference, out)


# ---------------------------------------------------------------------- predictor level


def add_prompts(predictor: SamVideoPredictor, state: Any) -> None:
    predictor.add_new_points_or_box(state, 3, 1, points=np.array([[40, 36]], np.float32), labels=np.array([1], np.int32))
    predictor.add_new_points_or_box(
        state, 3, "car", points=np.array([[90, 20]], np.float32), labels=np.array([1], np.int32),
        box=np.array([70, 5, 110, 40], np.float32),
    )


def test_exported_memory_continues_bit_exactly(video_model: Any, clip: Path, tmp_path: Path) -> None:
    predictor = SamVideoPredictor(video_model)
    state = predictor.init_state(clip)
    add_prompts(predictor, state)
    expected = {f: m for f, _, m in predictor.propagate_in_video(state, start_frame_idx=3)}
    expected.update({f: m for f, _, m in predictor.propagate_in_video(state, start_frame_idx=3, reverse=True)})

    first = predictor.init_state(clip)
    add_prompts(predictor, first)
    for f, _, _ in predictor.propagate_in_video(first, start_frame_idx=3):
        if f == 4:
            break  # the session ends here
    path = tmp_path / "memory.safetensors"
    path.write_bytes(memory_file_bytes(predictor.export_memory(first), {"note": "test"}))
    tensors, meta = read_memory_file(path)
    assert meta == {"note": "test"}

    second = predictor.init_state(clip)
    add_prompts(predictor, second)
    predictor.import_memory(second, tensors)
    assert second.frontier == 4
    got = {f: m for f, _, m in predictor.propagate_in_video(second, start_frame_idx=5)}
    got.update({f: m for f, _, m in predictor.propagate_in_video(second, start_frame_idx=3, reverse=True)})
    assert sorted(got) == [f for f in range(NUM_FRAMES) if f != 4]
    for f, masks in got.items():
        assert torch.equal(masks, expected[f]), f
    assert all((m > 0).any() for m in got.values())  # real masks, not empty ones
    for obj, twin in zip(state.objects, second.objects):
        assert obj.tracked == twin.tracked and list(obj.non_cond) == list(twin.non_cond)
        for t, out in obj.non_cond.items():
            for name in ("pred_masks", "obj_ptr", "object_score_logits", "maskmem_features"):
                assert torch.equal(getattr(out, name), getattr(twin.non_cond[t], name)), (t, name)


def test_import_refuses_another_session(video_model: Any, clip: Path) -> None:
    predictor = SamVideoPredictor(video_model)
    state = predictor.init_state(clip)
    add_prompts(predictor, state)
    list(predictor.propagate_in_video(state, start_frame_idx=3, max_frame_num_to_track=1))
    memory = predictor.export_memory(state)

    other = predictor.init_state(clip)
    predictor.add_new_points_or_box(other, 2, 1, points=np.array([[40, 36]], np.float32), labels=np.array([1], np.int32))
    with pytest.raises(ValueError, match="objects"):
        predictor.import_memory(other, memory)
    predictor.add_new_points_or_box(other, 2, "car", points=np.array([[90, 20]], np.float32), labels=np.array([1], np.int32))
    with pytest.raises(ValueError, match=r"prompts on frames \[3\], this session has them on \[2\]"):
        predictor.import_memory(other, memory)
    assert other.frontier is None and all(not o.non_cond and not o.tracked for o in other.objects)
    with pytest.raises(ValueError, match="propagate first"):
        predictor.add_new_points_or_box(state, 5, 1, points=np.array([[40, 36]], np.float32), labels=np.array([1], np.int32))
        predictor.export_memory(state)


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("long_clip")
    frame = np.zeros((6, 8, 3), dtype=np.uint8)
    for i in range(200):
        Image.fromarray(frame).save(folder / f"{i:05d}.png")
    return folder


def test_resumed_long_session_reads_and_keeps_what_the_uninterrupted_does(long_clip: Path) -> None:
    """On 200 frames (retention drops outputs): stop forwards at 150 or backwards at 60, resume."""
    model = ReadCheckingModel()  # one model: it remembers every frame produced, so misses show
    predictor = SamVideoPredictor(model)  # type: ignore[arg-type]

    def prompted() -> Any:
        state = predictor.init_state(long_clip)
        predictor.add_new_points_or_box(state, 100, "a", points=[[2, 2]], labels=[1])
        predictor.add_new_points_or_box(state, 110, "a", points=[[3, 3]], labels=[0])
        predictor.add_new_points_or_box(state, 100, "b", points=[[5, 3]], labels=[1])
        return state

    whole = prompted()
    list(predictor.propagate_in_video(whole, start_frame_idx=100))
    list(predictor.propagate_in_video(whole, start_frame_idx=100, reverse=True))
    for reverse, stop in ((False, 150), (True, 60)):
        state = prompted()
        if reverse:
            list(predictor.propagate_in_video(state, start_frame_idx=100))
        for f, _, _ in predictor.propagate_in_video(state, start_frame_idx=100, reverse=reverse):
            if f == stop:
                break
        memory = predictor.export_memory(state)
        assert sum(name.endswith(".maskmem_features") for name in memory) == state.stored_outputs() - 3
        resumed = prompted()
        predictor.import_memory(resumed, memory)
        model.misses.clear()
        if not reverse:
            list(predictor.propagate_in_video(resumed, start_frame_idx=stop + 1))
        list(predictor.propagate_in_video(resumed, start_frame_idx=stop - 1 if reverse else 100, reverse=True))
        assert model.misses == []
        for obj, twin in zip(whole.objects, resumed.objects):
            assert sorted(obj.non_cond) == sorted(twin.non_cond) and obj.tracked == twin.tracked
            assert len(obj.non_cond) < 100  # retention dropped outputs: the test covers it


def test_journal_files_are_hidden_and_named() -> None:
    assert track_resume.RESUME_NAME.startswith(".") and track_resume.RECORDS_NAME.startswith(".")
    assert track_resume.finished_frames(3, 7, False, 4) == {3, 4}
    assert track_resume.finished_frames(3, 7, True, 1) == {1, 2, 3, 4, 5, 6}
