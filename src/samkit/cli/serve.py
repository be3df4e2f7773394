"""``samkit serve``: the interactive web app and HTTP API on a local port."""

from __future__ import annotations

import argparse
import ipaddress
import socket

from .common import add_model_args

__all__ = ["register", "run", "access_token", "TOKEN_ENV"]

_MIB = 1024 * 1024
TOKEN_ENV = "SAMKIT_TOKEN"


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``serve`` subcommand."""
    parser = subparsers.add_parser(
        "serve",
        help="interactive web app + HTTP API (needs the server extra)",
        description="Serve the interactive segmentation page and the JSON API (OpenAPI at /docs). "
        "Binds to 127.0.0.1 unless --host says otherwise. Needs: pip install 'samkit[server]'.",
    )
    add_model_args(parser, sam2=True)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument(
        "--token",
        default=None,
        help=f"access token required on every API call and the page (default: ${TOKEN_ENV}; "
        "generated and printed when --host is not a loopback address)",
    )
    limits = parser.add_argument_group("limits")
    limits.add_argument("--cache-mb", type=int, default=1024, help="memory for cached image embeddings (default 1024)")
    limits.add_argument("--max-upload-mb", type=int, default=50, help="largest uploaded file (default 50)")
    limits.add_argument(
        "--max-pixels", type=int, default=40_000_000, help="largest image, width x height (default 40000000)"
    )
    limits.add_argument(
        "--max-video-mb", type=int, default=200, help="largest uploaded video file, SAM 2.x models (default 200)"
    )
    limits.add_argument("--max-video-frames", type=int, default=1000, help="most frames of a video (default 1000)")
    limits.add_argument(
        "--max-videos", type=int, default=2, help="videos open at once; the least recently used is closed (default 2)"
    )
    parser.set_defaults(func=run)


def _check_port_free(host: str, port: int) -> None:
    from . import UserError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def access_token(args: argparse.Namespace) -> str | None:
    """--token, else $SAMKIT_TOKEN, else a new one when binding beyond loopback, else None.

    Raises:
        samkit.cli.UserError: a token too short or with characters a cookie cannot carry.
    """
    import os
    import re

    from ..server.guards import new_token
    from . import UserError

    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    if token is not None and not re.fullmatch(r"[A-Za-z0-9._~-]{8,}", token):
        source = "--token" if args.token is not None else f"${TOKEN_ENV}"
        raise UserError(f"{source}: use at least 8 characters from A-Z a-z 0-9 . _ ~ -")
    if token is None and not _is_loopback(args.host):
        token = new_token()
    return token


def run(args: argparse.Namespace) -> int:
    """Load the model, then serve until interrupted."""
    from . import UserError

    if not 0 < args.port < 65536:
        raise UserError(f"--port: expected 1..65535, got {args.port}")
    for option, value in (
        ("--cache-mb", args.cache_mb),
        ("--max-upload-mb", args.max_upload_mb),
        ("--max-pixels", args.max_pixels),
        ("--max-video-mb", args.max_video_mb),
        ("--max-video-frames", args.max_video_frames),
        ("--max-videos", args.max_videos),
    ):
        if value < 1:
            raise UserError(f"{option}: must be >= 1, got {value}")
    try:
        import uvicorn

        from ..server import create_app
    except ImportError as exc:
        raise UserError(
            f"samkit serve needs the server extra ({exc.name} is missing): pip install 'samkit[server]'"
        ) from None
    _check_port_free(args.host, args.port)
    token = access_token(args)

    from ..server.limits import LOOPBACK_HOSTS

    model, video_model, video_reason = _load_models(args)
    app = create_app(
        model,
        video_model=video_model,
        video_unavailable_reason=video_reason,
        max_video_bytes=args.max_video_mb * _MIB,
        max_video_frames=args.max_video_frames,
        max_video_sessions=args.max_videos,
        max_image_pixels=args.max_pixels,
        max_upload_bytes=args.max_upload_mb * _MIB,
        cache_bytes=args.cache_mb * _MIB,
        # On loopback, answer only requests addressed to loopback (no DNS rebinding).
        allowed_hosts=(*LOOPBACK_HOSTS, args.host) if _is_loopback(args.host) else None,
        token=token,
    )
    shown = f"[{args.host}]" if ":" in args.host else args.host
    query = f"?token={token}" if token else ""
    print(
        f"samkit serve: {args.model} ({args.dtype}) on http://{shown}:{args.port}/{query}  (Ctrl+C to stop)", flush=True
    )
    if video_model is not None:
        print(f"samkit serve: video mode at http://{shown}:{args.port}/video", flush=True)
    else:
        print(f"samkit serve: video mode off: {video_reason}", flush=True)
    if token:
        print(f"samkit serve: API calls need the header 'Authorization: Bearer {token}'", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info" if args.verbose else "warning")
    return 0


def _load_models(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """(model, video model or None, why there is no video model or None).

    A SAM 2.x name builds the video model (``build_sam_video``), which serves images too; a
    checkpoint without the video weights (an image-only state dict) falls back to the image
    model with video mode off. Other models have no video mode.
    """
    from ..checkpoint_errors import CheckpointError
    from .common import SAM2_MODEL_CHOICES, existing_file, load_model, model_device, model_dtype

    if args.model not in SAM2_MODEL_CHOICES:
        reason = f"video tracking needs a SAM 2.x model and this server runs {args.model}: use --model sam2.1_hiera_t"
        return load_model(args), None, reason
    import torch

    from ..build_sam2 import build_sam_video

    device = model_device(args)
    checkpoint = None if args.checkpoint is None else existing_file(args.checkpoint, "--checkpoint")
    dtype = model_dtype(args, device)
    try:
        video_model = build_sam_video(args.model, checkpoint, device=device, dtype=getattr(torch, dtype))
    except CheckpointError as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return load_model(args), None, f"the checkpoint has no SAM 2.x video weights ({first_line[:300]})"
    return video_model, video_model, None
