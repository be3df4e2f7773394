"""Expanding what a user names on the command line (files, folders, globs) into files.

One rule for every command that takes many images (``samkit everything``, ``samkit embed``,
:func:`samkit.scale.run_job`):

* a file is taken as named (even a hidden one);
* a folder gives its non-hidden files, sorted; with ``recursive`` also those of its non-hidden
  subfolders (depth first, each folder sorted);
* a glob pattern (``*``, ``?``, ``[...]``; ``**`` spans folders) gives the non-hidden files it
  matches, sorted;
* files are not filtered by suffix: a file that is not an image is read, fails and is reported,
  never silently dropped;
* a path found twice is kept once (the first time);
* each file carries the path it had below the folder, or the fixed leading folders of the glob,
  it was found through (``train/a.png`` for ``data/train/a.png`` found in ``data``); a file
  named itself carries its name. Output formats that name images (COCO's ``file_name``) use it,
  so ``train/a.png`` and ``val/a.png`` stay apart. Where two files would still carry the same
  name (``a/img.png`` and ``b/img.png`` found through the folders ``a`` and ``b``), each gets
  the name of its folder in front (``a/img.png``), and if that does not separate them either,
  its absolute path;
* an ``exclude`` folder (the output folder, when it lies inside an input folder) is never
  entered by the recursion and its files never match a glob, so a rerun does not read its own
  outputs as inputs (a folder or file named itself is always read).
"""

from __future__ import annotations

import glob
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["InputFile", "expand_inputs"]


@dataclass(frozen=True)
class InputFile:
    """One file found in the inputs.

    Attributes:
        path: the file, as found (not resolved).
        relative: its path below the folder (or the fixed leading folders of the glob pattern)
            it was found through, '/'-separated; its name when it was named itself; made
            distinct from the other files' (see the module docstring).
    """

    path: Path
    relative: str


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def _under(path: Path, folders: Sequence[Path]) -> bool:
    """Whether ``path`` (resolved) is one of ``folders`` (resolved) or inside one."""
    return any(path == folder or folder in path.parents for folder in folders)


def _folder_files(folder: Path, recursive: bool, excluded: Sequence[Path], visited: set[Path] | None = None) -> list[Path]:
    """Non-hidden files of ``folder`` (sorted), and of its non-hidden subfolders if ``recursive``.

    ``visited`` holds the resolved folders already walked: a symlink back up the tree is
    entered once, not forever.
    """
    visited = set() if visited is None else visited
    visited.add(folder.resolve())
    files: list[Path] = []
    for entry in sorted(folder.iterdir()):
        if _is_hidden(entry):
            continue
        if entry.is_file():
            files.append(entry)
        elif recursive and entry.is_dir():
            target = entry.resolve()
            if target not in visited and not _under(target, excluded):
                files.extend(_folder_files(entry, recursive, excluded, visited))
    return files


def expand_inputs(
    inputs: Iterable[str | os.PathLike[str]],
    *,
    recursive: bool = False,
    exclude: Iterable[str | os.PathLike[str]] = (),
) -> list[InputFile]:
    """Files named by ``inputs``, by the rules in this module's docstring.

    Args:
        inputs: files, folders and glob patterns (``~`` is expanded).
        recursive: also take the files of subfolders of the folders named.
        exclude: folders the recursion does not enter and globs do not match in.

    Returns:
        the files, in input order, each once.

    Raises:
        FileNotFoundError: an input names nothing (no file or folder, or a glob matching no file).
    """
    excluded = [Path(e).expanduser().resolve() for e in exclude]
    found: list[tuple[InputFile, Path, bool]] = []  # (file, folder it is named below, check ``excluded``)
    for item in inputs:
        text = os.fspath(item)
        path = Path(text).expanduser()
        if path.is_dir():
            found.extend((InputFile(f, _relative(f, path)), path, False) for f in _folder_files(path, recursive, excluded))
        elif path.is_file():
            found.append((InputFile(path, path.name), path.parent, False))
        elif glob.has_magic(text):
            matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(text), recursive=True))
            files = [m for m in matches if m.is_file() and not _is_hidden(m)]
            if not files:
                raise FileNotFoundError(f"input {text!r}: the pattern matches no file")
            base = _fixed_prefix(path)
            found.extend((InputFile(f, _relative(f, base)), base, True) for f in files)
        else:
            raise FileNotFoundError(f"input {text!r}: no such file or folder")
    unique: list[tuple[InputFile, Path]] = []
    seen: set[Path] = set()
    for entry, base, check in found:
        key = entry.path.resolve()
        if key in seen or (check and _under(key, excluded)):
            continue
        seen.add(key)
        unique.append((entry, base))
    return _separate_names(unique)


def _separate_names(entries: list[tuple[InputFile, Path]]) -> list[InputFile]:
    """The files, with ``relative`` names that collide made distinct (see the module docstring)."""
    counts = Counter(entry.relative for entry, _ in entries)
    if all(n == 1 for n in counts.values()):
        return [entry for entry, _ in entries]
    prefixed = [
        f"{base.resolve().name}/{entry.relative}" if counts[entry.relative] > 1 else entry.relative
        for entry, base in entries
    ]
    again = Counter(prefixed)
    return [
        InputFile(entry.path, name if again[name] == 1 else entry.path.resolve().as_posix())
        for (entry, _), name in zip(entries, prefixed, strict=True)
    ]


def _fixed_prefix(pattern: Path) -> Path:
    """The leading folders of a glob pattern that hold no wildcard (``data`` of ``data/**/*.png``)."""
    fixed = []
    for part in pattern.parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path()


def _relative(path: Path, base: Path) -> str:
    """``path`` below ``base``, '/'-separated (the file name if it is not below it)."""
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.name
