"""Reading images, and writing any output file atomically.

Images enter samkit as ``(H, W, 3) uint8`` RGB arrays. :func:`to_rgb_uint8` defines how
everything else gets there:

========================  ===============================================================
input                     conversion
========================  ===============================================================
PIL ``RGB``               as is
PIL ``L`` / ``1``         grey replicated to 3 channels (``1``: 0/255)
PIL ``LA`` / ``RGBA``     alpha dropped (not composited onto a background)
PIL ``P`` / ``PA``        palette looked up, alpha dropped
PIL ``CMYK``/``YCbCr``..  PIL's conversion to RGB
PIL ``I;16*`` / ``I``     treated as 16-bit: clipped to [0, 65535], then ``>> 8``
PIL ``F``                 as a float array (below)
numpy ``uint8``           as is
numpy ``uint16``          ``>> 8`` (so 65535 -> 255, 257 -> 1)
other numpy integers      must lie in [0, 255]
numpy ``bool``            False/True -> 0/255
numpy float               must be finite and lie in [0, 1]; ``round(x * 255)``
``(H, W)``/``(H, W, 1)``  replicated to 3 channels
``(H, W, 2)``             grey + alpha: alpha dropped, grey replicated
``(H, W, 4)``             alpha dropped
========================  ===============================================================

When reading a file (or a PIL image) with :func:`load_image` the EXIF orientation is
applied first, and only the first frame of multi-frame files is used.

Mask PNGs and overlay pictures are :mod:`samkit.pictures`. Every writer is atomic: the data goes to a temporary file in the destination
directory that is :func:`os.replace`-d onto the target, so a crash never leaves a
half-written output under the final name.
"""

from __future__ import annotations

import io
import logging
import os
import secrets
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "ImageReadError",
    "DEFAULT_MAX_PIXELS",
    "load_image",
    "to_rgb_uint8",
    "save_image",
    "atomic_write_bytes",
    "atomic_write_text",
]

logger = logging.getLogger(__name__)

#: Largest image :func:`load_image` accepts by default (PIL's own warning threshold).
DEFAULT_MAX_PIXELS = 178_956_970


class ImageReadError(ValueError):
    """An image could not be read (missing, not an image, corrupt, too large, ...)."""


# --------------------------------------------------------------------------- conversion


def _pil_to_array(image: Image.Image) -> np.ndarray:
    """PIL image -> (H, W, 3) uint8, or a numpy array for :func:`_array_to_rgb`."""
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image)
    if mode.startswith("I;16") or mode == "I":
        # 16-bit PNG/TIFF data; PIL gives uint16 (any byte order) or int32.
        values = np.asarray(image)
        return np.clip(values, 0, 65535).astype(np.uint16)
    if mode in ("1", "L", "F"):
        return np.asarray(image)
    if mode in ("LA", "La"):
        return np.asarray(image.getchannel("L"))
    if mode in ("P", "PA"):
        return np.asarray(image.convert("RGBA"))[..., :3]
    try:
        return np.asarray(image.convert("RGB"))
    except (ValueError, OSError) as e:
        raise ValueError(f"image: cannot convert PIL mode {mode!r} to RGB ({e})") from e


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    if array.dtype.kind not in "biuf":
        raise TypeError(f"image: expected a numeric array, got dtype {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    elif array.ndim != 3:
        raise ValueError(f"image: expected shape (H, W) or (H, W, C), got {array.shape}")
    channels = array.shape[2]
    if channels not in (1, 2, 3, 4):
        raise ValueError(f"image: expected 1, 2, 3 or 4 channels, got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"image: empty image of shape {array.shape}")
    if channels in (1, 2):
        array = np.repeat(array[:, :, :1], 3, axis=2)  # grey (+ alpha dropped)
    elif channels == 4:
        array = array[:, :, :3]  # alpha dropped

    kind = array.dtype.kind
    if array.dtype == np.uint8:
        out = array
    elif kind == "b":
        out = array.astype(np.uint8) * np.uint8(255)
    elif array.dtype == np.uint16:
        out = (array >> 8).astype(np.uint8)
    elif kind in "iu":
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise ValueError(
                f"image: {array.dtype} values must lie in [0, 255], got [{low}, {high}]"
            )
        out = array.astype(np.uint8)
    else:  # float
        if not np.isfinite(array).all():
            raise ValueError("image: contains NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"image: float values must lie in [0, 1], got [{low:g}, {high:g}]; "
                "scale it (or cast to uint8) first"
            )
        out = np.rint(array.astype(np.float32) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(out)


def to_rgb_uint8(image: np.ndarray | Image.Image) -> np.ndarray:
    """Convert an array or PIL image to ``(H, W, 3) uint8`` RGB.

    The conversions are listed in this module's docstring: alpha is dropped (not
    composited), 16-bit data is scaled by ``>> 8``, floats must lie in [0, 1] and are
    mapped by ``round(x * 255)``, bools become 0/255, grey is replicated. EXIF orientation is
    *not* applied here (see :func:`load_image`).

    Args:
        image: ``(H, W)``, ``(H, W, 1..4)`` numeric array, or a PIL image of any common mode.

    Returns:
        ``(H, W, 3) uint8`` C-contiguous array; it may share memory with ``image`` when no
        conversion was needed.

    Raises:
        TypeError: Not an array/PIL image, or a non-numeric dtype.
        ValueError: Wrong shape, no pixels, NaN/inf, or values out of the allowed range.
    """
    if isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:
            raise ValueError(f"image: empty image of size {image.size}")
        array = _pil_to_array(image)
    elif isinstance(image, np.ndarray):
        array = image
    else:
        raise TypeError(
            f"image: expected a numpy array or PIL image, got {type(image).__name__}"
        )
    return _array_to_rgb(array)


def load_image(
    source: str | os.PathLike[str] | bytes | Image.Image | np.ndarray,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Read an image as ``(H, W, 3) uint8`` RGB.

    The EXIF orientation of files, encoded bytes and PIL images is applied (a portrait
    photo stored sideways comes out upright); then :func:`to_rgb_uint8` converts it. Only the
    first frame of an animated/multi-page file is used.

    Args:
        source: File path, encoded file bytes, a PIL image, or an array (converted only).
        max_pixels: Refuse images with more pixels than this (decompression-bomb guard),
            None for no samkit limit. PIL's own hard limit (twice
            ``PIL.Image.MAX_IMAGE_PIXELS``) still applies to files.

    Returns:
        ``(H, W, 3) uint8`` array.

    Raises:
        ImageReadError: Missing file, not an image, truncated/corrupt data, too many pixels,
            or pixel data samkit cannot convert. Any failure of a decoder on a file's
            contents (PIL raises ``SyntaxError``, ``ValueError``, ``struct.error``, ... on
            some corrupt files) becomes this one error, naming the file.
        TypeError: ``source`` is of an unsupported type.
    """
    if isinstance(source, np.ndarray):
        if source.ndim >= 2:
            _check_pixels(source.shape[0] * source.shape[1], max_pixels, "image")
        return to_rgb_uint8(source)
    if isinstance(source, Image.Image):
        return _decode(source, "image", max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        name = "image bytes"
        opener: str | os.PathLike[str] | io.BytesIO = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        path = Path(os.fspath(source)).expanduser()
        name = str(path)
        if not path.exists():
            raise ImageReadError(f"cannot read {name}: no such file")
        if path.is_dir():
            raise ImageReadError(f"cannot read {name}: it is a directory")
        opener = path
    else:
        raise TypeError(
            "source: expected a path, bytes, PIL image or numpy array, "
            f"got {type(source).__name__}"
        )
    try:
        with warnings.catch_warnings():
            # samkit applies its own max_pixels limit below; silence PIL's softer warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(opener) as image:
                return _decode(image, name, max_pixels)
    except UnidentifiedImageError as e:
        raise ImageReadError(f"cannot read {name}: not an image file ({e})") from e
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"cannot read {name}: too many pixels ({e})") from e
    except OSError as e:
        raise ImageReadError(f"cannot read {name}: truncated or corrupt image ({e})") from e
    except ImageReadError:
        raise
    except (MemoryError, RecursionError) as e:
        raise ImageReadError(f"cannot read {name}: the decoder ran out of resources ({type(e).__name__})") from e
    except Exception as e:  # noqa: BLE001 - any other decoder failure (PIL raises SyntaxError, ValueError, ...)
        raise ImageReadError(f"cannot read {name}: corrupt image ({type(e).__name__}: {e})") from e


def _check_pixels(count: int, max_pixels: int | None, name: str) -> None:
    if max_pixels is not None and count > max_pixels:
        raise ImageReadError(
            f"cannot read {name}: {count} pixels exceed the limit of {max_pixels} "
            "(max_pixels); pass a larger max_pixels if the image is trusted"
        )


def _decode(image: Image.Image, name: str, max_pixels: int | None) -> np.ndarray:
    _check_pixels(image.width * image.height, max_pixels, name)
    image.load()  # decode now so truncation surfaces as OSError here
    upright = ImageOps.exif_transpose(image)
    try:
        return to_rgb_uint8(upright if upright is not None else image)
    except (TypeError, ValueError) as e:
        raise ImageReadError(f"cannot read {name}: {e}") from e


# --------------------------------------------------------------------------- writing


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same directory + replace).

    The file gets the usual permissions (0666 minus the umask); the directory must exist.

    Args:
        path: Destination file.
        data: The complete contents.

    Raises:
        OSError: The write failed; nothing was left behind.
    """
    target = Path(os.fspath(path))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = target.with_name(f".{target.name}.tmp-{secrets.token_hex(6)}")
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        break
    try:
        with open(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically; see :func:`atomic_write_bytes`.

    Args:
        path: Destination file.
        text: The complete contents.
        encoding: Text encoding.
    """
    atomic_write_bytes(path, text.encode(encoding))


def _format_for(path: Path) -> str:
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"path: cannot tell the image format from the suffix of {path}")
    return fmt


def save_image(path: str | os.PathLike[str], image: np.ndarray) -> None:
    """Save an image atomically; the format follows the suffix (``.png``, ``.jpg``, ...).

    Args:
        path: Destination file.
        image: Anything :func:`to_rgb_uint8` accepts; saved as 8-bit RGB.

    Raises:
        ValueError: Unknown suffix or unconvertible image.
    """
    target = Path(os.fspath(path))
    fmt = _format_for(target)
    buffer = io.BytesIO()
    options = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    Image.fromarray(to_rgb_uint8(image)).save(buffer, format=fmt, **options)
    atomic_write_bytes(target, buffer.getvalue())
