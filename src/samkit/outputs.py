"""Output locations checked before any work starts, and leftovers of killed runs removed.

A command that will write files checks, before it loads a model, that it can: the output
folder can be created and a file written in it (:func:`check_output_dir`), or the output
file's folder exists and is writable (:func:`check_output_file`). A problem is one
:class:`OutputPathError` naming the path and the reason, not a ``PermissionError`` traceback
after minutes of computing.

Every writer in samkit writes through :func:`samkit.io.atomic_write_bytes`: a hidden
``.NAME.tmp-<12 hex digits>`` file next to the target, renamed onto it when complete. A run
killed mid-write (``kill -9``, power loss) leaves that temp file behind;
:func:`remove_stale_temp_files` removes such files, and the batch jobs call it when they start
on an output folder. Two runs writing into the same output folder at the same time are not
supported (the second would remove the first one's temp files).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from pathlib import Path

__all__ = [
    "OutputPathError",
    "TEMP_FILE_PATTERN",
    "check_output_dir",
    "check_output_file",
    "remove_stale_temp_files",
]

logger = logging.getLogger(__name__)

#: Names of the temp files :func:`samkit.io.atomic_write_bytes` writes: ``.NAME.tmp-<12 hex>``.
TEMP_FILE_PATTERN = re.compile(r"^\..+\.tmp-[0-9a-f]{12}$")


class OutputPathError(ValueError):
    """An output path cannot be created or written; the message names it and says why."""


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _probe_write(folder: Path, what: str) -> None:
    """Create and remove a small file in ``folder``; OutputPathError if that fails."""
    probe = folder / f".samkit-write-check-{secrets.token_hex(6)}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        probe.unlink()
    except OSError as exc:
        raise OutputPathError(f"{what}: cannot write in {folder}: {_reason(exc)}") from None


def check_output_dir(path: str | os.PathLike[str], *, what: str = "output folder") -> Path:
    """Create the output folder if needed and check that files can be written in it.

    Args:
        path: The folder (created with its parents when missing).
        what: How the message names it (e.g. ``"--out"``).

    Returns:
        The folder as a :class:`~pathlib.Path`.

    Raises:
        OutputPathError: It is a file, lies below a file, cannot be created, or is not
            writable.
    """
    folder = Path(os.fspath(path)).expanduser()
    if folder.exists() and not folder.is_dir():
        raise OutputPathError(f"{what}: {folder} is a file, not a folder")
    for parent in folder.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputPathError(f"{what}: cannot create {folder}: {parent} is a file, not a folder")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"{what}: cannot create {folder}: {_reason(exc)}") from None
    _probe_write(folder, what)
    return folder


def check_output_file(path: str | os.PathLike[str], *, what: str = "output file") -> Path:
    """Check that a file can be written at ``path``: its folder exists and is writable.

    The folder is not created: a missing folder is more often a typo than a wish.

    Args:
        path: The file to be written (it may exist; it will be replaced).
        what: How the message names it (e.g. ``"--out"``).

    Returns:
        The path as a :class:`~pathlib.Path`.

    Raises:
        OutputPathError: The path is a folder, its folder is missing or is a file, or it is
            not writable.
    """
    target = Path(os.fspath(path)).expanduser()
    if target.is_dir():
        raise OutputPathError(f"{what}: {target} is a folder; give a file name")
    folder = target.parent
    if not folder.exists():
        raise OutputPathError(f"{what}: the folder {folder} does not exist (create it first)")
    if not folder.is_dir():
        raise OutputPathError(f"{what}: {folder} is a file, not a folder")
    _probe_write(folder, what)
    return target


def remove_stale_temp_files(folder: str | os.PathLike[str]) -> int:
    """Remove the ``.NAME.tmp-<hex>`` files of killed runs under ``folder`` (recursively).

    Only names matching :data:`TEMP_FILE_PATTERN` are touched; a missing folder is no error.

    Args:
        folder: An output folder.

    Returns:
        How many files were removed.
    """
    root = Path(os.fspath(folder))
    if not root.is_dir():
        return 0
    removed = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            if TEMP_FILE_PATTERN.match(name):
                try:
                    (Path(dirpath) / name).unlink()
                except OSError as exc:
                    logger.warning("could not remove the stale temp file %s: %s", Path(dirpath) / name, _reason(exc))
                    continue
                removed += 1
    if removed:
        logger.info("removed %d temp file(s) a killed run left in %s", removed, root)
    return removed
