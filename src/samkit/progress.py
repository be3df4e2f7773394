"""Progress for batch work: a tqdm bar on a terminal, periodic plain lines anywhere else.

Off a terminal (a log file, CI, ``nohup``) a tqdm bar is either hidden or a stream of
carriage returns; :class:`LineProgress` writes one complete line instead, every
``interval`` seconds and at the end, so a long run always shows it is alive and how far it got.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

__all__ = ["LineProgress", "make_progress"]


class LineProgress:
    """tqdm-like counter that writes ``DESC: N/TOTAL UNIT (P%), T s elapsed, ~R s left`` lines.

    Args:
        total: Number of steps.
        desc: Line prefix, e.g. ``"samkit everything"``.
        unit: Name of a step, e.g. ``"images"``.
        initial: Steps already done (e.g. skipped as complete).
        interval: Seconds between lines (the first comes after ``first_after`` seconds).
        first_after: Seconds before the first line, so short runs stay quiet.
        stream: Where lines go (default stderr).
    """

    def __init__(
        self,
        total: int,
        *,
        desc: str,
        unit: str = "images",
        initial: int = 0,
        interval: float = 10.0,
        first_after: float = 2.0,
        stream: TextIO | None = None,
    ) -> None:
        self.total = int(total)
        self.n = int(initial)
        self.desc = desc
        self.unit = unit
        self.interval = float(interval)
        self.stream = stream if stream is not None else sys.stderr
        self._initial = self.n
        self._start = time.monotonic()
        self._next = self._start + float(first_after)
        self._written = False

    def update(self, n: int = 1) -> None:
        """Count ``n`` more steps; writes a line when one is due."""
        self.n += n
        now = time.monotonic()
        if now >= self._next:
            self._write(now)
            self._next = now + self.interval

    def close(self) -> None:
        """Write the final line (only if a line was written before: short runs stay quiet)."""
        if self._written:
            self._write(time.monotonic())

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, now: float) -> None:
        elapsed = now - self._start
        done_here = self.n - self._initial
        left = self.total - self.n
        percent = f" ({100.0 * self.n / self.total:.0f}%)" if self.total else ""
        line = f"{self.desc}: {self.n}/{self.total} {self.unit}{percent}, {elapsed:.0f} s elapsed"
        if done_here > 0 and left > 0:
            line += f", ~{elapsed / done_here * left:.0f} s left"
        self.stream.write(line + "\n")
        self.stream.flush()
        self._written = True


def make_progress(
    total: int, *, desc: str, unit: str = "images", initial: int = 0, enabled: bool = True, stream: TextIO | None = None
) -> Any:
    """A progress counter with ``update(n)`` and ``close()``: tqdm on a terminal, :class:`LineProgress` elsewhere.

    Args:
        total: Number of steps.
        desc: Label.
        unit: Name of a step.
        initial: Steps already done.
        enabled: False gives a counter that writes nothing.
        stream: Output stream (default stderr); its ``isatty()`` picks the kind.

    Returns:
        A tqdm bar or a :class:`LineProgress` (both usable as context managers).
    """
    out = stream if stream is not None else sys.stderr
    if enabled and out.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, unit=unit, desc=desc, dynamic_ncols=True, file=out)
    if not enabled:
        return LineProgress(total, desc=desc, unit=unit, initial=initial, first_after=float("inf"), stream=out)
    return LineProgress(total, desc=desc, unit=unit, initial=initial, stream=out)
