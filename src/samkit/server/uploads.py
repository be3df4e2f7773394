"""Uploaded image files -> pixels, refusing what is too large or not an image.

Limits are checked before the pixels are decoded: the byte count first, then the pixel count
read from the file's header, so a decompression bomb is refused without being decoded.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..io import ImageReadError, load_image
from .errors import PayloadTooLarge, UnsupportedImage

__all__ = ["check_upload_size", "check_pixel_count", "decode_upload", "jpeg_preview"]


def check_upload_size(data: bytes, max_upload_bytes: int) -> None:
    """Refuse an upload over ``max_upload_bytes`` or an empty one.

    Raises:
        PayloadTooLarge: more than ``max_upload_bytes`` bytes.
        UnsupportedImage: no bytes at all.
    """
    if len(data) > max_upload_bytes:
        raise PayloadTooLarge(f"upload of {len(data)} bytes exceeds the limit of {max_upload_bytes} bytes")
    if not data:
        raise UnsupportedImage("empty upload: expected an image file")


def check_pixel_count(width: int, height: int, max_image_pixels: int) -> None:
    """Refuse an image of more than ``max_image_pixels`` pixels (W * H).

    Raises:
        PayloadTooLarge: ``width * height > max_image_pixels``.
    """
    if width * height > max_image_pixels:
        raise PayloadTooLarge(
            f"image of {width}x{height} = {width * height} pixels exceeds the limit of {max_image_pixels} pixels"
        )


def decode_upload(data: bytes, max_image_pixels: int) -> np.ndarray:
    """Encoded bytes -> (H, W, 3) uint8 RGB, checking the pixel count before decoding.

    Args:
        data: The encoded file (PNG, JPEG, WebP, BMP, TIFF, ...).
        max_image_pixels: Largest W * H accepted.

    Returns:
        (H, W, 3) uint8 pixels.

    Raises:
        PayloadTooLarge: too many pixels.
        UnsupportedImage: not an image file samkit can read.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as header:  # reads the header only
                width, height = header.size
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"image has too many pixels ({exc})") from None
    except UnidentifiedImageError:
        raise UnsupportedImage("not an image file samkit can read (expected PNG, JPEG, WebP, BMP, TIFF, ...)") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure (OSError, SyntaxError, ...) is the file's fault
        raise UnsupportedImage(f"cannot read the image header ({type(exc).__name__}: {exc})") from None
    check_pixel_count(width, height, max_image_pixels)
    try:
        return load_image(data, max_pixels=max_image_pixels)
    except ImageReadError as exc:
        raise UnsupportedImage(str(exc)) from None


def jpeg_preview(image: np.ndarray) -> bytes:
    """(H, W, 3) uint8 pixels -> a JPEG (quality 90), for browsers that cannot show the upload."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()
