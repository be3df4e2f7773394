"""samkit.inputs.expand_inputs: the one rule for files, folders and globs of every batch command."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from samkit.inputs import InputFile, expand_inputs


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    """root/{b.png, a.jpg, notes.txt, .hidden.png, sub/{c.png, deep/d.png}, .git/e.png, out/f.png}."""
    for name in ["b.png", "a.jpg", "notes.txt", ".hidden.png", "sub/c.png", "sub/deep/d.png", ".git/e.png", "out/f.png"]:
        path = tmp_path / "root" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    return tmp_path / "root"


def _names(found: list[InputFile], root: Path) -> list[str]:
    return [f.path.relative_to(root).as_posix() for f in found]


def test_folder_gives_its_visible_files_sorted_and_unfiltered(tree: Path) -> None:
    assert _names(expand_inputs([tree]), tree) == ["a.jpg", "b.png", "notes.txt"]


def test_recursive_walks_visible_subfolders_but_not_the_excluded_one(tree: Path) -> None:
    found = _names(expand_inputs([tree], recursive=True, exclude=[tree / "out"]), tree)
    assert found == ["a.jpg", "b.png", "notes.txt", "sub/c.png", "sub/deep/d.png"]
    assert "out/f.png" in _names(expand_inputs([tree], recursive=True), tree)


def test_globs_files_and_duplicates(tree: Path) -> None:
    found = expand_inputs([tree / "b.png", str(tree / "*.png"), str(tree / "**" / "*.png"), tree / ".hidden.png"])
    # b.png once (first occurrence), ** spans folders, hidden files only when named, out/ excluded below
    assert _names(found, tree) == ["b.png", "out/f.png", "sub/c.png", "sub/deep/d.png", ".hidden.png"]
    found = expand_inputs([str(tree / "**" / "*.png")], exclude=[tree / "out"])
    assert _names(found, tree) == ["b.png", "sub/c.png", "sub/deep/d.png"]


def test_each_file_knows_its_path_below_the_folder_or_glob_it_came_from(tree: Path) -> None:
    found = expand_inputs([tree, tree / "sub" / "c.png", str(tree / "sub" / "**" / "*.png")], recursive=True)
    relative = {f.path.relative_to(tree).as_posix(): f.relative for f in found}
    assert relative["b.png"] == "b.png" and relative["out/f.png"] == "out/f.png"
    assert relative["sub/c.png"] == "sub/c.png"  # first found through the folder
    flat = expand_inputs([tree / "sub" / "c.png", str(tree / "sub" / "**" / "*.png")])
    assert [f.relative for f in flat] == ["c.png", "deep/d.png"]  # named itself; below the glob's sub/


def test_names_that_would_collide_are_told_apart(tmp_path: Path) -> None:
    for name in ["a/img.png", "b/img.png", "b/other.png", "x/data/img.png", "y/data/img.png"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = expand_inputs([tmp_path / "a", tmp_path / "b"])
    assert [f.relative for f in found] == ["a/img.png", "b/img.png", "other.png"]  # only colliding ones prefixed
    found = expand_inputs([tmp_path / "x" / "data", tmp_path / "y" / "data"])
    assert [f.relative for f in found] == [(tmp_path / p).resolve().as_posix() for p in ["x/data/img.png", "y/data/img.png"]]


def test_a_folder_named_itself_is_read_even_when_excluded(tree: Path) -> None:
    assert _names(expand_inputs([tree / "out"], exclude=[tree / "out"]), tree) == ["out/f.png"]


def test_inputs_that_name_nothing_raise(tree: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        expand_inputs([tree / "missing.png"])
    with pytest.raises(FileNotFoundError, match="matches no file"):
        expand_inputs([str(tree / "*.tif")])


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_a_symlink_loop_is_walked_once(tree: Path) -> None:
    (tree / "sub" / "loop").symlink_to(tree, target_is_directory=True)
    found = _names(expand_inputs([tree], recursive=True, exclude=[tree / "out"]), tree)
    assert found == ["a.jpg", "b.png", "notes.txt", "sub/c.png", "sub/deep/d.png"]
