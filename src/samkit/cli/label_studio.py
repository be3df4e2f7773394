"""``samkit label-studio``: serve SAM to Label Studio as an ML backend (clicks / boxes -> brush masks)."""

from __future__ import annotations

import argparse
import os

from .common import add_model_args, load_model

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``label-studio`` subcommand."""
    parser = subparsers.add_parser(
        "label-studio",
        help="Label Studio ML backend: interactive brush masks from clicks and boxes",
        description="Serve SAM over Label Studio's ML backend protocol (/health, /setup, /predict, /webhook). "
        "Add http://HOST:PORT as the project's model with interactive preannotations on. Task images are read "
        "only from --label-studio-url, with --api-key (a legacy API token).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9090, help="port (default 9090)")
    parser.add_argument(
        "--label-studio-url",
        default=os.environ.get("LABEL_STUDIO_URL"),
        help="the Label Studio whose task images are read (default $LABEL_STUDIO_URL), e.g. http://localhost:8080",
    )
    parser.add_argument(
        "--api-key", default=os.environ.get("LABEL_STUDIO_API_KEY"), help="its API token (default $LABEL_STUDIO_API_KEY)"
    )
    parser.add_argument("--cache-images", type=int, default=16, help="image embeddings kept in memory (default 16)")
    add_model_args(parser, sam2=True)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the backend until interrupted."""
    from . import UserError

    if not args.label_studio_url:
        raise UserError("--label-studio-url (or $LABEL_STUDIO_URL) is required: the Label Studio to read images from")
    if args.cache_images < 1:
        raise UserError(f"--cache-images: expected at least 1, got {args.cache_images}")
    if not 0 < args.port < 65536:
        raise UserError(f"--port: expected 1-65535, got {args.port}")
    try:
        import uvicorn

        from ..labelstudio.backend import create_backend
    except ImportError:
        raise UserError("samkit label-studio needs the server extra: pip install 'samkit[server]'") from None
    from ..labelstudio.images import LabelStudioImages

    LabelStudioImages(args.label_studio_url, args.api_key)  # checks the URL before the model loads
    model = load_model(args)
    app = create_backend(model, label_studio_url=args.label_studio_url, api_key=args.api_key, cache_images=args.cache_images)
    print(f"samkit label-studio: serving {model.config.name} on http://{args.host}:{args.port} for {args.label_studio_url}")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
