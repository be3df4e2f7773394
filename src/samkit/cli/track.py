"""``samkit track``: follow objects through a video with a SAM 2.x model.

Prompts name a frame and, optionally, an object: ``--point [ID:]F,X,Y[,LABEL]`` and
``--box [ID:]F,X0,Y0,X1,Y1`` (pixels of the video's frames; ID defaults to ``--object``).
Tracking runs forwards from the earliest prompted frame and, when that is not frame 0,
backwards from it too, so every frame gets a mask per object.

Writes, under ``--out``: ``masks/<frame>_<object>.png`` (0 / 255, the frame's size) and
``tracks.json`` (per frame and object: COCO RLE, area, bbox XYWH), and with ``--overlay`` an
mp4 of the masks drawn over the video. A finished run (``tracks.json`` for the same video (path, size, modification time),
model and prompts) is not redone. An interrupted one (Ctrl-C, killed, a crash) resumes where it
stopped: while tracking, the session's memory (the tracked frames' outputs the predictor keeps) is saved to
``.track_resume.safetensors`` every 10 s and at the end of each pass, and each finished frame's
record is appended to ``.track_frames.jsonl``; a rerun with the same settings re-adds the
prompts, restores that memory and goes on from the frame after the last save, writing the same
PNGs and ``tracks.json`` as an uninterrupted run (``track_resume.py``; both hidden files go once
``tracks.json`` is written). With the released SAM 2.x configs the resume file holds at most 31
tracked frames' outputs per object in the forward pass and 46 in the backward one, ~0.79 MB each
at image size 1024 (24 / 36 MB per object).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import add_model_args, existing_file, model_device, parse_floats
from .track_resume import ResumePoint, TrackJournal, direction

logger = logging.getLogger(__name__)

__all__ = ["register", "run"]

SAM2_DEFAULT_MODEL = "sam2.1_hiera_t"


@dataclass
class FramePrompt:
    """Every prompt one object gets on one frame."""

    points: list[list[float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    box: list[float] | None = None


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``track`` subcommand."""
    parser = subparsers.add_parser(
        "track",
        help="track objects through a video (SAM 2.x)",
        description="Click or box objects on any frames of a video (a video file or a folder of JPEG/PNG "
        "frames) and track them through every frame with a SAM 2.x model. Writes per-frame mask PNGs, "
        "tracks.json (COCO RLE per frame and object) and optionally an overlay video. An interrupted run resumes "
        "where it stopped when run again with the same options (the outputs are those of an uninterrupted run).",
    )
    parser.add_argument("video", help="a video file (OpenCV reads it) or a folder of JPEG/PNG frames")
    parser.add_argument(
        "--point",
        action="append",
        default=[],
        metavar="[ID:]F,X,Y[,LABEL]",
        help="a point on frame F in its pixels; LABEL 1 = object (default), 0 = background; ID: the object. Repeatable.",
    )
    parser.add_argument(
        "--box", action="append", default=[], metavar="[ID:]F,X0,Y0,X1,Y1", help="a box on frame F (one per object and frame). Repeatable."
    )
    parser.add_argument("--object", default="1", metavar="ID", help="object of the prompts without an ID: prefix (default 1)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--overlay", default=None, metavar="OUT.mp4", help="also write the masks drawn over the video (mp4)")
    parser.add_argument("--fps", type=float, default=24.0, help="frame rate of the overlay video (default 24)")
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="model input size, a multiple of 64 (default the model's 1024; smaller is faster and coarser)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress output")
    add_model_args(parser, default_model=SAM2_DEFAULT_MODEL, sam2_only=True)
    parser.set_defaults(func=run)


def _split_object(text: str, default: str) -> tuple[str, str]:
    if ":" in text:
        obj, _, rest = text.partition(":")
        return obj.strip() or default, rest
    return default, text


def _object_id(text: str) -> Hashable:
    """Object ids as the official API takes them: ints where they look like ints."""
    return int(text) if text.lstrip("-").isdigit() else text


def parse_prompts(points: list[str], boxes: list[str], default_object: str) -> dict[tuple[int, Hashable], FramePrompt]:
    """``--point`` / ``--box`` values grouped by (frame, object), in the order given.

    Raises:
        samkit.cli.UserError: a malformed value, a label other than 0 / 1, an inverted box, two
            boxes for one object on one frame, or no prompt at all.
    """
    from . import UserError

    prompts: dict[tuple[int, Hashable], FramePrompt] = {}

    def frame_of(value: float, option: str, text: str) -> int:
        if value != int(value) or value < 0:
            raise UserError(f"{option}: the frame F must be a whole number >= 0, got {text!r}")
        return int(value)

    for text in points:
        obj, rest = _split_object(text, default_object)
        values = parse_floats(rest, "--point", (3, 4))
        label = 1.0 if len(values) == 3 else values[3]
        if label not in (0.0, 1.0):
            raise UserError(f"--point: LABEL must be 1 (object) or 0 (background), got {text!r}")
        prompt = prompts.setdefault((frame_of(values[0], "--point", text), _object_id(obj)), FramePrompt())
        prompt.points.append(values[1:3])
        prompt.labels.append(int(label))
    for text in boxes:
        obj, rest = _split_object(text, default_object)
        values = parse_floats(rest, "--box", (5,))
        if values[3] < values[1] or values[4] < values[2]:
            raise UserError(f"--box: expected F,X0,Y0,X1,Y1 with X1 >= X0 and Y1 >= Y0, got {text!r}")
        prompt = prompts.setdefault((frame_of(values[0], "--box", text), _object_id(obj)), FramePrompt())
        if prompt.box is not None:
            raise UserError(f"--box: object {obj} already has a box on frame {int(values[0])}")
        prompt.box = values[1:]
    if not prompts:
        raise UserError("give at least one --point F,X,Y or --box F,X0,Y0,X1,Y1")
    return prompts


def _video_stamp(video: Path) -> list[int]:
    """Size and modification time of a video file, or count, total size and newest modification
    time of a frame folder's files: a different video under the same path does not match."""
    try:
        if video.is_dir():
            stats = [entry.stat() for entry in video.iterdir() if entry.is_file()]
            return [len(stats), sum(st.st_size for st in stats), max((st.st_mtime_ns for st in stats), default=0)]
        st = video.stat()
        return [st.st_size, st.st_mtime_ns]
    except OSError:
        return []  # unreadable: opening it says why


def _settings(args: argparse.Namespace, prompts: dict[tuple[int, Hashable], FramePrompt]) -> dict[str, Any]:
    return {
        "video": str(Path(args.video).resolve()),
        "video_stamp": _video_stamp(Path(args.video)),
        "model": args.model,
        "checkpoint": None if args.checkpoint is None else str(Path(args.checkpoint).resolve()),
        "dtype": args.dtype,
        "image_size": args.image_size,
        "prompts": [
            {"frame": f, "object": obj, "points": p.points, "labels": p.labels, "box": p.box}
            for (f, obj), p in prompts.items()
        ],
    }


def _load_video_model(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from ..build_sam2 import build_sam_video, get_sam2_video_config
    from . import UserError

    device = model_device(args)
    checkpoint = None if args.checkpoint is None else existing_file(args.checkpoint, "--checkpoint")
    config: Any = args.model
    if args.image_size is not None:
        if args.image_size < 64 or args.image_size % 64:
            raise UserError(f"--image-size: expected a multiple of 64, got {args.image_size}")
        config = get_sam2_video_config(args.model).with_image_size(args.image_size)
    dtype = None if args.dtype in ("float32", "auto") else getattr(__import__("torch"), args.dtype)
    return build_sam_video(config, checkpoint, device=device, dtype=dtype)


def _legs(first: int, num_frames: int, resume: ResumePoint | None) -> list[tuple[bool, int]]:
    """The propagation legs still to run, as (reverse, start frame)."""
    legs = [(False, first)] + ([(True, first)] if first > 0 else [])
    if resume is None:
        return legs
    if not resume.reverse:
        following = resume.last_frame + 1
        return ([(False, following)] if following < num_frames else []) + legs[1:]
    return [(True, resume.last_frame - 1)] if resume.last_frame > 0 else []


def _frame_record(masks_dir: Path, frame_idx: int, obj_ids: list[Hashable], logits: Any) -> dict[str, Any]:
    """Write one frame's mask PNGs; its ``tracks.json`` record (per object: RLE, area, bbox)."""
    import numpy as np

    from ..everything.rle import counts_to_string, mask_to_rle
    from ..pictures import save_mask_png

    binary = (logits[:, 0] > 0).cpu().numpy()  # (N_obj, H, W)
    record: dict[str, Any] = {}
    for obj, mask, rle in zip(obj_ids, binary, mask_to_rle(binary)):
        save_mask_png(masks_dir / f"{frame_idx:05d}_{obj}.png", mask)
        ys, xs = np.nonzero(mask)
        bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)] if len(xs) else [0, 0, 0, 0]
        record[str(obj)] = {
            "segmentation": {"size": rle["size"], "counts": counts_to_string(rle["counts"])},
            "area": int(mask.sum()),
            "bbox": bbox,
        }
    return record


def run(args: argparse.Namespace) -> int:
    """Track the prompted objects and write the outputs; 0 on success."""
    import numpy as np

    from ..io import atomic_write_text
    from ..outputs import check_output_dir
    from ..progress import make_progress
    from ..video import SamVideoPredictor
    from . import UserError

    prompts = parse_prompts(args.point, args.box, args.object)
    out = Path(args.out)
    check_output_dir(out, what="--out")
    settings = _settings(args, prompts)
    tracks_path = out / "tracks.json"
    journal = TrackJournal(out, settings)
    if tracks_path.is_file():
        try:
            previous = json.loads(tracks_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = {}
        if previous.get("settings") == settings:
            journal.finish()  # a run killed between tracks.json and the clean-up
            print(f"samkit track: {tracks_path} is complete for these prompts; nothing to do")
            return 0

    predictor = SamVideoPredictor(_load_video_model(args))
    state = predictor.init_state(args.video)
    try:
        num_frames, height, width = state.num_frames, state.video_height, state.video_width
        for (frame, obj), prompt in prompts.items():
            if frame >= num_frames:
                raise UserError(f"a prompt is on frame {frame}, but the video has {num_frames} frames (0..{num_frames - 1})")
            predictor.add_new_points_or_box(
                state,
                frame,
                obj,
                points=np.array(prompt.points, dtype=np.float32) if prompt.points else None,
                labels=np.array(prompt.labels, dtype=np.int32) if prompt.labels else None,
                box=np.array(prompt.box, dtype=np.float32) if prompt.box is not None else None,
            )
        first = min(frame for frame, _ in prompts)
        resume = journal.resume_point(num_frames, first)
        if resume is not None:
            try:
                predictor.import_memory(state, resume.memory)
            except ValueError as exc:
                journal.unusable(exc)
                resume = None
        legs = _legs(first, num_frames, resume)
        frames: dict[int, dict[str, Any]] = {} if resume is None else resume.frames
        if resume is not None:
            reverse, leg_start = legs[0] if legs else (False, num_frames)
            following = leg_start - 1 if reverse and leg_start == first else leg_start  # `first` is done
            where = f"frame {following} ({direction(reverse)})" if legs else "the end (every frame was tracked)"
            journal.say(f"resuming at {where}: {len(frames)} of {num_frames} frames were done")
        journal.open(resume)
        masks_dir = out / "masks"
        masks_dir.mkdir(parents=True, exist_ok=True)
        tracked_now = 0
        start = time.perf_counter()
        # every frame once: forwards from `first`, backwards before it
        with make_progress(num_frames, desc="samkit track", unit="frames", initial=len(frames), enabled=not args.no_progress) as bar:
            for reverse, leg_start in legs:
                for frame_idx, obj_ids, logits in predictor.propagate_in_video(state, start_frame_idx=leg_start, reverse=reverse):
                    if reverse and frame_idx == first:
                        continue  # tracked by the forward pass
                    frames[frame_idx] = record = _frame_record(masks_dir, frame_idx, obj_ids, logits)
                    journal.add(frame_idx, record)
                    journal.save_if_due(predictor, state, reverse, frame_idx, force=frame_idx == (0 if reverse else num_frames - 1))
                    tracked_now += 1
                    bar.update(1)
        seconds = time.perf_counter() - start
        journal.close()
        document = {
            "settings": settings,
            "num_frames": num_frames,
            "height": height,
            "width": width,
            "objects": [str(o) for o in state.obj_ids],
            "frames": [{"frame": f, "objects": frames[f]} for f in sorted(frames)],
        }
        if args.overlay:
            _write_overlay(Path(args.overlay), state, frames, document["objects"], args.fps)
        atomic_write_text(tracks_path, json.dumps(document) + "\n")
        journal.finish()
    finally:
        journal.close()
        state.close()
    fps = tracked_now / seconds if seconds > 0 else float("inf")
    resumed = f", {len(frames) - tracked_now} of them from the interrupted run" if resume is not None else ""
    print(
        f"samkit track: {len(document['objects'])} object(s) over {len(frames)} frames{resumed}; "
        f"tracked {tracked_now} frames in {seconds:.1f} s ({fps:.2f} frames/s); masks in {masks_dir}, tracks in {tracks_path}",
        file=sys.stdout,
    )
    return 0


def _write_overlay(path: Path, state: Any, frames: dict[int, dict[str, Any]], objects: list[str], fps: float) -> None:
    """The masks over each frame, as an mp4 (OpenCV's mp4v codec)."""
    import cv2
    import numpy as np

    from ..everything.rle import rle_to_mask, string_to_counts
    from ..pictures import draw_overlay, palette
    from . import UserError

    if path.suffix.lower() != ".mp4":
        raise UserError(f"--overlay: expected an .mp4 file name, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    colors = palette(max(len(objects), 1))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (state.video_width, state.video_height))
    if not writer.isOpened():
        raise UserError(f"--overlay: OpenCV cannot write {path}")
    try:
        for frame_idx in sorted(frames):
            masks = [
                rle_to_mask({"size": rec["segmentation"]["size"], "counts": string_to_counts(rec["segmentation"]["counts"])})
                for rec in (frames[frame_idx][obj] for obj in objects)
            ]
            stacked = np.stack(masks) if masks else np.zeros((0, state.video_height, state.video_width), bool)
            picture = draw_overlay(state.frames.rgb(frame_idx), stacked, colors=colors)
            writer.write(np.ascontiguousarray(picture[..., ::-1]))  # RGB -> BGR
    finally:
        writer.release()
