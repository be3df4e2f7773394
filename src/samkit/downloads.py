"""Known checkpoint files, the cache, and verified downloads.

Where a checkpoint *file* comes from: the table of official files (:data:`CHECKPOINTS`), the
cache directory, URL overrides, and :func:`download_checkpoint` / :func:`resolve_checkpoint`.
Reading a file and loading it into a model is :mod:`samkit.weights`.

Safety rules this module keeps:

* A download is written to ``<name>.part-<random>`` in the target directory, hashed while
  it streams, and moved into place with :func:`os.replace` only once it is complete and
  its size and sha256 match. A failed or interrupted download never leaves a file under
  the final name.
* A cached file with a known digest is hashed once; the verified digest, size and mtime
  are kept in ``<file>.sha256`` so later runs do not rehash gigabytes.

Every problem is raised as :class:`~samkit.weights.CheckpointError` with a one-line message.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import logging
import os
import re
import secrets
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import EllipsisType

from tqdm import tqdm

from .checkpoint_errors import CheckpointError

__all__ = [
    "CheckpointInfo",
    "CHECKPOINTS",
    "cache_dir",
    "checkpoint_url",
    "url_override_variable",
    "download_checkpoint",
    "resolve_checkpoint",
]

logger = logging.getLogger(__name__)

_CHUNK_BYTES = 1 << 20
_TIMEOUT_S = 60.0

@dataclass(frozen=True)
class CheckpointInfo:
    """One official checkpoint file.

    Attributes:
        variant: Model variant the file belongs to (``"vit_b"``, ...).
        filename: File name in the cache directory (and at the download base URL).
        url: Default download URL.
        sha256: Full lowercase sha256 hex digest of the file, or None when unknown (the
            download then works unverified and says so at WARNING level).
        size_bytes: Exact file size in bytes, or None when unknown.
    """

    variant: str
    filename: str
    url: str
    sha256: str | None
    size_bytes: int | None


# Digests and sizes were taken from public sources, not computed here (no network):
#   - sha256 of all four files: computational-cell-analytics/micro-sam, micro_sam/util.py (the
#     pooch registry), agreeing with many other repositories that pin the same values.
#   - sizes of the three ViT files: several independent model tables (e.g. SimpleSDXL's
#     models_info, ~100 repositories listing 375042383 / 1249524607 / 2564550879).
#   - mobile_sam.pt size 40_728_226: tables pinning MobileSAM commit f706ad9c together with
#     the same digest.
# The hex suffix in the official file names (01ec64, ...) is NOT a sha256 prefix.
_FB_BASE = "https://dl.fbaipublicfiles.com/segment_anything/"
CHECKPOINTS: dict[str, CheckpointInfo] = {
    "vit_b": CheckpointInfo(
        variant="vit_b",
        filename="sam_vit_b_01ec64.pth",
        url=_FB_BASE + "sam_vit_b_01ec64.pth",
        sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        size_bytes=375_042_383,
    ),
    "vit_l": CheckpointInfo(
        variant="vit_l",
        filename="sam_vit_l_0b3195.pth",
        url=_FB_BASE + "sam_vit_l_0b3195.pth",
        sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        size_bytes=1_249_524_607,
    ),
    "vit_h": CheckpointInfo(
        variant="vit_h",
        filename="sam_vit_h_4b8939.pth",
        url=_FB_BASE + "sam_vit_h_4b8939.pth",
        sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        size_bytes=2_564_550_879,
    ),
    "vit_t": CheckpointInfo(
        variant="vit_t",
        filename="mobile_sam.pt",
        url="https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
        sha256="6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
        size_bytes=40_728_226,
    ),
}
# HQ-SAM's released files (SysCV/sam-hq, mirrored on Hugging Face as lkeab/hq-sam). No public
# sha256 or byte size was found for them, so they download unverified (a WARNING says so),
# as the table allows for unknown digests.
_HQ_BASE = "https://huggingface.co/lkeab/hq-sam/resolve/main/"
for _variant in ("hq_vit_b", "hq_vit_l", "hq_vit_h", "hq_vit_tiny"):
    _file = "sam_" + _variant + ".pth"
    CHECKPOINTS[_variant] = CheckpointInfo(variant=_variant, filename=_file, url=_HQ_BASE + _file, sha256=None, size_bytes=None)
del _variant, _file
# SAM 2.1 (release 092824) and SAM 2.0 (072824) files from Meta, named as the official
# download script names them. No public sha256 or byte size was found for them (none could be
# computed here: no network), so they download unverified, with a WARNING, as for HQ-SAM.
_SAM2_BASE = "https://dl.fbaipublicfiles.com/segment_anything_2/"
_SAM2_SIZES = {"t": "tiny", "s": "small", "b+": "base_plus", "l": "large"}
for _size, _long in _SAM2_SIZES.items():
    for _variant, _file in ((f"sam2.1_hiera_{_size}", f"092824/sam2.1_hiera_{_long}.pt"), (f"sam2_hiera_{_size}", f"072824/sam2_hiera_{_long}.pt")):
        CHECKPOINTS[_variant] = CheckpointInfo(
            variant=_variant, filename=_file.split("/")[1], url=_SAM2_BASE + _file, sha256=None, size_bytes=None
        )
del _size, _long, _variant, _file


# --------------------------------------------------------------------------- locations


def _info(variant: str) -> CheckpointInfo:
    try:
        return CHECKPOINTS[variant]
    except KeyError:
        known = ", ".join(CHECKPOINTS)
        raise CheckpointError(f"unknown variant {variant!r}; choose one of {known}") from None


def cache_dir() -> Path:
    """Directory samkit caches files in (it is not created here).

    Returns:
        ``$SAMKIT_HOME`` if set, else ``$XDG_CACHE_HOME/samkit``, else ``~/.cache/samkit``.
        Checkpoints go to its ``checkpoints/`` subdirectory.
    """
    home = os.environ.get("SAMKIT_HOME")
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "samkit"
    return Path.home() / ".cache" / "samkit"


def _checkpoint_dir() -> Path:
    return cache_dir() / "checkpoints"


def checkpoint_url(variant: str) -> str:
    """Download URL of a variant's official checkpoint.

    Overrides, first match wins: ``SAMKIT_URL_<VARIANT>`` (e.g. ``SAMKIT_URL_VIT_B`` or
    ``SAMKIT_URL_SAM2_1_HIERA_B_PLUS``, see :func:`url_override_variable`; a full URL for that
    one file), then ``SAMKIT_DOWNLOAD_BASE`` (a mirror; the official file name
    is appended), then the official URL.

    Args:
        variant: ``"vit_b"``, ``"vit_l"``, ``"vit_h"`` or ``"vit_t"``.

    Returns:
        The URL (``http(s)://`` or ``file://``).

    Raises:
        CheckpointError: The variant is unknown.
    """
    info = _info(variant)
    full = os.environ.get(url_override_variable(variant))
    if full:
        return full
    base = os.environ.get("SAMKIT_DOWNLOAD_BASE")
    if base:
        return base.rstrip("/") + "/" + info.filename
    return info.url


def url_override_variable(variant: str) -> str:
    """Name of the environment variable that overrides one variant's download URL.

    Shells only allow letters, digits and ``_`` in names: ``+`` becomes ``_PLUS`` and every
    other character outside ``[A-Za-z0-9_]`` becomes ``_``; letters are upper-cased.

    Example: ``"vit_b"`` -> ``SAMKIT_URL_VIT_B``, ``"sam2.1_hiera_b+"`` -> ``SAMKIT_URL_SAM2_1_HIERA_B_PLUS``.
    """
    name = re.sub(r"[^A-Za-z0-9_]", "_", variant.replace("+", "_PLUS"))
    return "SAMKIT_URL_" + name.upper()


# --------------------------------------------------------------------------- hashing


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _marker_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _write_marker(path: Path, sha256: str) -> None:
    """Record that ``path`` (as it is now) has digest ``sha256``; best effort."""
    st = path.stat()
    record = {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    marker = _marker_path(path)
    tmp = marker.with_name(f"{marker.name}.part-{secrets.token_hex(4)}")
    try:
        tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
        os.replace(tmp, marker)
    except OSError as e:  # a read-only cache still works, it just rehashes next time
        logger.debug("could not write %s: %s", marker, e)
        tmp.unlink(missing_ok=True)


def _marker_matches(path: Path, sha256: str) -> bool:
    try:
        record = json.loads(_marker_path(path).read_text(encoding="utf-8"))
        st = path.stat()
    except (OSError, ValueError):
        return False
    return (
        isinstance(record, dict)
        and record.get("sha256") == sha256
        and record.get("size") == st.st_size
        and record.get("mtime_ns") == st.st_mtime_ns
    )


def _cached_file_ok(path: Path, sha256: str | None, size: int | None) -> bool:
    """Whether a cached file is the expected one (hashing it at most once)."""
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        logger.warning(
            "cached checkpoint %s has %d bytes, expected %d", path, actual_size, size
        )
        return False
    if sha256 is None:
        logger.debug("no sha256 known for %s; using it unverified", path)
        return True
    if _marker_matches(path, sha256):
        return True
    logger.info("verifying sha256 of cached checkpoint %s (once)", path)
    actual = _sha256_file(path)
    if actual != sha256:
        logger.warning(
            "cached checkpoint %s has sha256 %s, expected %s", path, actual, sha256
        )
        return False
    _write_marker(path, sha256)
    return True


# --------------------------------------------------------------------------- download


def _open_part_file(target: Path) -> tuple[Path, int]:
    """Create ``<target>.part-<random>`` exclusively (honouring the umask)."""
    while True:
        part = target.with_name(f"{target.name}.part-{secrets.token_hex(6)}")
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
            fd = os.open(part, flags, 0o666)
        except FileExistsError:
            continue
        return part, fd


def _download_failed(url: str, reason: object) -> CheckpointError:
    # download_checkpoint adds where a file fetched by hand goes.
    return CheckpointError(f"download of {url} failed ({reason})")


def _stream_to(url: str, fd: int, *, progress: bool, label: str) -> tuple[str, int]:
    """Stream ``url`` into the open file ``fd``; returns (sha256 hex, bytes written)."""
    request = urllib.request.Request(url, headers={"User-Agent": "samkit"})
    digest = hashlib.sha256()
    written = 0
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
            length_header = response.headers.get("Content-Length")
            expected = int(length_header) if length_header and length_header.isdigit() else None
            with open(fd, "wb", closefd=False) as out, tqdm(
                total=expected,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=label,
                disable=None if progress else True,  # None: off when stderr is not a TTY
                leave=False,
            ) as bar:
                while chunk := response.read(_CHUNK_BYTES):
                    out.write(chunk)
                    digest.update(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
                out.flush()
                os.fsync(out.fileno())
    except urllib.error.HTTPError as e:
        raise _download_failed(url, f"HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:
        raise _download_failed(url, e.reason) from e
    except (TimeoutError, socket.timeout) as e:
        raise _download_failed(url, "timed out") from e
    except http.client.HTTPException as e:
        raise _download_failed(url, f"{type(e).__name__}: {e}") from e
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise CheckpointError(f"no space left on device while downloading {url}") from e
        raise _download_failed(url, e) from e
    if expected is not None and written != expected:
        raise _download_failed(url, f"connection closed after {written} of {expected} bytes")
    return digest.hexdigest(), written


def download_checkpoint(
    variant: str,
    *,
    directory: Path | None = None,
    progress: bool = True,
    force: bool = False,
    url: str | None = None,
    sha256: str | None | EllipsisType = ...,
) -> Path:
    """Return the path of a variant's checkpoint, downloading it if it is not cached.

    A cached file is reused without any network access; if its digest is known it is
    verified once (the result is remembered in ``<file>.sha256``). A cached file that
    fails verification is downloaded again.

    Args:
        variant: ``"vit_b"``, ``"vit_l"``, ``"vit_h"`` or ``"vit_t"``.
        directory: Where to keep the file; default ``cache_dir() / "checkpoints"``.
        progress: Show a progress bar (only when stderr is a terminal).
        force: Download even if a verified file is cached.
        url: Download from here instead of :func:`checkpoint_url`.
        sha256: Expected digest. ``...`` (default): the table's digest and size.
            A string: that digest (the table's size is then not checked).
            None: do not verify (logged at WARNING).

    Returns:
        Path of the complete, verified file.

    Raises:
        CheckpointError: Unknown variant, download failure, or digest/size mismatch.
    """
    info = _info(variant)
    if sha256 is ...:
        expected_sha, expected_size = info.sha256, info.size_bytes
    else:
        expected_sha, expected_size = sha256, None
    if expected_sha is not None:
        expected_sha = expected_sha.strip().lower()
    directory = Path(directory).expanduser() if directory is not None else _checkpoint_dir()
    target = directory / info.filename

    if target.is_file() and not force:
        if _cached_file_ok(target, expected_sha, expected_size):
            logger.debug("using cached checkpoint %s", target)
            return target
        logger.warning("cached checkpoint %s failed verification; downloading it again", target)

    source = url if url is not None else checkpoint_url(variant)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"cannot create checkpoint directory {directory}: {e}") from e
    logger.info("downloading %s checkpoint from %s to %s", variant, source, target)
    part, fd = _open_part_file(target)
    try:
        try:
            actual_sha, actual_size = _stream_to(source, fd, progress=progress, label=info.filename)
        except CheckpointError as e:
            checked = "its sha256 is checked on first use" if expected_sha else "no sha256 is published for it"
            raise CheckpointError(
                f"{e}; offline? fetch that file by other means and put it at {target} ({checked}), "
                f"or point {url_override_variable(variant)} or SAMKIT_DOWNLOAD_BASE at a reachable mirror; "
                "the model commands also take a local file (--checkpoint PATH, or build_sam(variant, checkpoint=PATH))"
            ) from None
        finally:
            os.close(fd)
        if expected_size is not None and actual_size != expected_size:
            raise CheckpointError(
                f"downloaded {source} has {actual_size} bytes, expected {expected_size}; "
                "nothing was kept"
            )
        if expected_sha is None:
            logger.warning(
                "no sha256 known for %s: the downloaded file was not verified (sha256 %s)",
                info.filename,
                actual_sha,
            )
        elif actual_sha != expected_sha:
            raise CheckpointError(
                f"downloaded {source} has sha256 {actual_sha}, expected {expected_sha}; "
                "nothing was kept"
            )
        os.replace(part, target)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    if expected_sha is not None:
        _write_marker(target, expected_sha)
    else:
        _marker_path(target).unlink(missing_ok=True)
    return target


def resolve_checkpoint(
    variant: str, checkpoint: str | os.PathLike[str] | None, *, progress: bool = True
) -> Path:
    """Turn a ``checkpoint`` argument into an existing file path.

    Args:
        variant: Model variant; used only when ``checkpoint`` is None.
        checkpoint: None for the official file (cached or downloaded), else a local path.
        progress: Show a download progress bar.

    Returns:
        Path of an existing file.

    Raises:
        CheckpointError: The path does not exist or is not a file, or the download failed.
    """
    if checkpoint is None:
        return download_checkpoint(variant, progress=progress)
    path = Path(os.fspath(checkpoint)).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint is not a file: {path}")
    return path
