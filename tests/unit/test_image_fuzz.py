"""Corrupt image files: every decoder failure becomes samkit's one ImageReadError naming the file.

The fuzz test mutates small valid files of each format (seeded, a few hundred per format,
:mod:`image_mutants`) and feeds them to :func:`samkit.io.load_image`; the only exception
allowed out is :class:`samkit.io.ImageReadError`.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from image_mutants import FORMATS, MUTANTS_PER_FORMAT, mutants, png_with_corrupt_second_idat
from PIL import features

from samkit.io import ImageReadError, load_image


def test_corrupt_png_chunk_type_is_an_image_read_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(png_with_corrupt_second_idat())
    with pytest.raises(ImageReadError, match="broken.png") as info:
        load_image(path)
    assert "broken PNG file" in str(info.value)
    with pytest.raises(ImageReadError, match="image bytes"):
        load_image(path.read_bytes())


@pytest.mark.parametrize("fmt", FORMATS)
def test_fuzzed_files_raise_only_image_read_error(fmt: str) -> None:
    if fmt == "WEBP" and not features.check("webp"):
        pytest.fail("this Pillow lacks WebP support; the fuzz test needs it")
    start = time.perf_counter()
    outcomes = {"decoded": 0, "refused": 0}
    for i, data in enumerate(mutants(fmt, MUTANTS_PER_FORMAT, seed=17)):
        try:
            image = load_image(data)
        except ImageReadError as exc:
            assert str(exc).startswith("cannot read image bytes"), str(exc)
            outcomes["refused"] += 1
        except Exception as exc:  # noqa: BLE001 - the point of the test
            pytest.fail(f"{fmt} mutant {i}: {type(exc).__name__} escaped load_image: {exc}")
        else:
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
            outcomes["decoded"] += 1
    # Both outcomes occur, so the mutations neither all break nor all miss the decoder.
    assert outcomes["refused"] > 0 and outcomes["decoded"] > 0, outcomes
    assert time.perf_counter() - start < 20.0
