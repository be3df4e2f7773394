"""``samkit track``'s journal: what lets a killed run go on where it stopped, with the same outputs.

Two hidden files under ``--out``, removed once ``tracks.json`` is written:

* ``.track_frames.jsonl``: one line per finished frame, ``{"frame": F, "objects": {...}}`` as
  in ``tracks.json``, appended as frames finish (their PNGs are written before);
* ``.track_resume.safetensors``: the tracking memory (``SamVideoPredictor.export_memory``) with,
  in its metadata, a digest of the run's settings (video, model, checkpoint, dtype, image size,
  prompts), the pass (forwards / backwards), the last finished frame and the length of the
  frames file at that moment. It is replaced atomically every ``SAVE_INTERVAL_S`` seconds of
  tracking and at the end of each pass, after the frames file was synced.

A rerun with the same settings re-adds the prompts, imports the memory, keeps the frames file
up to that length (frames finished after the last save are tracked again, identically) and
goes on from the next frame. A resume file of other settings, or one that cannot be read or
does not fit (truncated, corrupt, another model), is ignored with one line: the run starts over.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..video import SamVideoPredictor, VideoState

__all__ = ["RECORDS_NAME", "RESUME_NAME", "SAVE_INTERVAL_S", "ResumePoint", "TrackJournal", "settings_digest"]

RESUME_NAME = ".track_resume.safetensors"
RECORDS_NAME = ".track_frames.jsonl"
RESUME_FORMAT = "samkit.track.resume/1"
#: Seconds of tracking between two saves of the resume file (it is also saved at the end of each pass).
SAVE_INTERVAL_S = 10.0


def settings_digest(settings: dict[str, Any]) -> str:
    """A digest of the run's settings: a resume file is only used by a run with the same one."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def direction(reverse: bool) -> str:
    """How a pass is named in the resume file and in messages."""
    return "backwards" if reverse else "forwards"


@dataclass
class ResumePoint:
    """Where an earlier run stopped.

    Attributes:
        reverse: the pass it was in (False: forwards from the first prompted frame).
        last_frame: the last frame that pass finished.
        memory: the tracking memory then (``SamVideoPredictor.import_memory``).
        frames: frame -> its ``tracks.json`` record, for every frame finished by then.
    """

    reverse: bool
    last_frame: int
    memory: dict[str, torch.Tensor]
    frames: dict[int, dict[str, Any]]


def finished_frames(first: int, num_frames: int, reverse: bool, last_frame: int) -> set[int]:
    """The frames a run has finished once its pass ``reverse`` finished ``last_frame``."""
    if not reverse:
        return set(range(first, last_frame + 1))
    return set(range(first, num_frames)) | set(range(last_frame, first))


class TrackJournal:
    """The resume file and the finished-frames file of one ``samkit track`` output folder.

    Args:
        out: the output folder.
        settings: the run's settings (``track.py``); only a resume file of the same is used.
        say: where one-line notices go (default: stderr with the ``samkit track:`` prefix).
    """

    def __init__(self, out: Path, settings: dict[str, Any], say: Any = None) -> None:
        self.resume_path = out / RESUME_NAME
        self.records_path = out / RECORDS_NAME
        self.digest = settings_digest(settings)
        self.say = say or (lambda line: print(f"samkit track: {line}", file=sys.stderr, flush=True))
        self._records: Any = None
        self._last_save = time.monotonic()

    # ------------------------------------------------------------------ reading

    def resume_point(self, num_frames: int, first: int) -> ResumePoint | None:
        """The point an earlier run of the same settings saved, or None (with a line saying why)."""
        from ..video.resume import read_memory_file

        if not self.resume_path.is_file():
            return None
        try:
            memory, meta = read_memory_file(self.resume_path)
            if meta.get("format") != RESUME_FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {RESUME_FORMAT!r}")
            if meta.get("settings") != self.digest:
                self.say(f"{self.resume_path} is from a run with other settings (video, model or prompts); starting over")
                return None
            reverse = {"forwards": False, "backwards": True}[meta["pass"]]
            last_frame, records_bytes = int(meta["last_frame"]), int(meta["records_bytes"])
            if int(meta["num_frames"]) != num_frames:
                raise ValueError(f"it was saved for {meta['num_frames']} frames, the video has {num_frames}")
            frames = self._read_records(records_bytes)
            expected = finished_frames(first, num_frames, reverse, last_frame)
            if set(frames) != expected or not 0 <= last_frame < num_frames or (last_frame < first) != reverse:
                raise ValueError(f"{self.records_path.name} does not list the frames finished by then")
        except (OSError, ValueError, KeyError) as exc:
            self.say(f"cannot resume from {self.resume_path} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); starting over")
            return None
        return ResumePoint(reverse, last_frame, memory, frames)

    def _read_records(self, records_bytes: int) -> dict[int, dict[str, Any]]:
        with open(self.records_path, "rb") as handle:
            data = handle.read(records_bytes)
        if len(data) != records_bytes:
            raise ValueError(f"{self.records_path.name} is shorter than when the resume file was saved")
        frames: dict[int, dict[str, Any]] = {}
        for line in data.decode("utf-8").splitlines():
            entry = json.loads(line)
            frames[int(entry["frame"])] = entry["objects"]
        return frames

    def unusable(self, reason: Exception) -> None:
        """Say that the resume point read cannot be used after all (e.g. another model made it)."""
        self.say(f"cannot resume from {self.resume_path} ({reason}); starting over")

    # ------------------------------------------------------------------ writing

    def open(self, resume: ResumePoint | None) -> None:
        """Start the frames file: cut to the resume point's frames, or empty when starting over."""
        from ..io import atomic_write_bytes

        for stale in self.resume_path.parent.glob(f".{RESUME_NAME}.tmp-*"):  # left by a kill mid-save
            stale.unlink(missing_ok=True)
        if resume is None:
            self.resume_path.unlink(missing_ok=True)
            atomic_write_bytes(self.records_path, b"")
        else:
            text = "".join(self._line(f, record) for f, record in resume.frames.items())
            atomic_write_bytes(self.records_path, text.encode("utf-8"))
        self._records = open(self.records_path, "ab")  # noqa: SIM115 - closed by close()
        self._last_save = time.monotonic()

    @staticmethod
    def _line(frame_idx: int, record: dict[str, Any]) -> str:
        return json.dumps({"frame": frame_idx, "objects": record}) + "\n"

    def add(self, frame_idx: int, record: dict[str, Any]) -> None:
        """Append one finished frame's record."""
        self._records.write(self._line(frame_idx, record).encode("utf-8"))

    def save_if_due(
        self, predictor: SamVideoPredictor, state: VideoState, reverse: bool, frame_idx: int, *, force: bool = False
    ) -> None:
        """Replace the resume file by one at ``frame_idx`` (just finished) when one is due or ``force``."""
        from ..io import atomic_write_bytes
        from ..video.resume import memory_file_bytes

        if not force and time.monotonic() - self._last_save < SAVE_INTERVAL_S:
            return
        self._records.flush()
        os.fsync(self._records.fileno())
        meta = {
            "format": RESUME_FORMAT,
            "settings": self.digest,
            "num_frames": str(state.num_frames),
            "pass": direction(reverse),
            "last_frame": str(frame_idx),
            "records_bytes": str(self._records.tell()),
        }
        atomic_write_bytes(self.resume_path, memory_file_bytes(predictor.export_memory(state), meta))
        self._last_save = time.monotonic()

    def close(self) -> None:
        """Close the frames file (both files stay for a rerun)."""
        if self._records is not None:
            self._records.close()
            self._records = None

    def finish(self) -> None:
        """The run is complete (``tracks.json`` written): remove both files."""
        self.close()
        self.resume_path.unlink(missing_ok=True)
        self.records_path.unlink(missing_ok=True)
