"""What a job did: one :class:`JobSummary` for every batch command."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["JobSummary"]

# command -> (what was done to an image, what an image gave)
_WORDS = {"everything": ("segmented", "mask"), "embed": ("embedded", "embedding"), "annotate": ("annotated", "mask")}


@dataclass
class JobSummary:
    """Counts of one run of a batch command.

    Attributes:
        command: ``"everything"``, ``"embed"`` or ``"annotate"``.
        engine: ``"local"``, ``"ray"``, or ``"custom"`` for an engine passed in.
        total: images in the job.
        done, skipped, failed: images processed now, complete from an earlier run, failed now.
        masks: what the images processed now gave (masks; embeddings for ``embed``).
        seconds: wall time of the run (listing inputs to the last file; with Ray, starting the
            workers and loading their models too).
        work_seconds: of it, the time spent in the per-image function (summed over workers).
        failures: (image path, reason) of each failed image.
        outputs: the job-wide files written (``"coco"``, ``"manifest"``, ``"yolo"``, ...).
        details: the engine's counters (Ray: actors, resubmitted images, GPU use).
        bad_rows: input rows skipped (``annotate``'s detections; see
            :class:`samkit.annotation.detections.BadRow`).
        below_score: ``annotate``'s detections under the minimum score.
    """

    command: str
    engine: str = "local"
    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    masks: int = 0
    seconds: float = 0.0
    work_seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)
    outputs: dict[str, Path] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    bad_rows: list[Any] = field(default_factory=list)
    below_score: int = 0

    @property
    def processed(self) -> int:
        """Images processed in this run (``done``)."""
        return self.done

    @property
    def images_per_second(self) -> float:
        """Images processed in this run per second of wall time."""
        return self.done / self.seconds if self.seconds > 0 else 0.0

    @property
    def coco_path(self) -> Path | None:
        """The COCO file, when one was written."""
        return self.outputs.get("coco")

    @property
    def manifest(self) -> Path | None:
        """The manifest (:func:`samkit.scale.run_job`), when one was written."""
        return self.outputs.get("manifest")

    def line(self) -> str:
        """One-line human summary."""
        verb, noun = _WORDS.get(self.command, ("processed", "output"))
        text = (
            # "failed" only for images not processed; "already complete" only for earlier runs' work.
            f"{self.done} image(s) {verb}, {self.skipped} already complete, {self.failed} failed (not {verb}); "
            f"{self.masks} {noun}(s)"
        )
        if self.command == "annotate":
            rate = self.masks / self.work_seconds if self.work_seconds > 0 else 0.0
            text += f" ({rate:.1f} boxes/s including reading and embedding images); {len(self.bad_rows)} bad row(s) skipped"
            if self.below_score:
                text += f", {self.below_score} below the minimum score"
        text += f"; {self.seconds:.1f} s ({self.images_per_second:.2f} images/s)"
        if self.engine != "local":
            text += f" on {self.engine}"
        for kind in ("coco", "manifest"):
            if kind in self.outputs:
                text += f"; {'COCO' if kind == 'coco' else kind}: {self.outputs[kind]}"
        return text
