"""Command-line options of the batch commands that pick an engine (``samkit everything``, ``embed``, ``annotate``)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

__all__ = ["add_engine_args", "engine_kwargs", "model_factory", "build_worker_model", "WorkerModelFactory"]


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    """Add --engine, --ray-address, --workers and --threads."""
    group = parser.add_argument_group("engine")
    group.add_argument(
        "--engine",
        default="local",
        choices=("local", "ray"),
        help="local: one model in this process (default); ray: a pool of model replicas on Ray (pip install 'samkit[ray]')",
    )
    group.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster to join, e.g. auto or ray://host:10001 (default: start a local one); needs --engine ray",
    )
    group.add_argument("--workers", type=int, default=1, help="model replicas (Ray actors); needs --engine ray")
    group.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: automatic)")
    group.add_argument("--no-progress", action="store_true", help="no progress bar")


def engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The engine keyword arguments named by :func:`add_engine_args` (those of :func:`samkit.scale.run_job`).

    Raises:
        samkit.cli.UserError: inconsistent options.
    """
    from . import UserError

    if args.workers < 1:
        raise UserError(f"--workers: expected at least 1, got {args.workers}")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads: expected at least 1, got {args.threads}")
    if args.engine == "local" and (args.workers != 1 or args.ray_address is not None):
        raise UserError("--workers and --ray-address need --engine ray")
    if args.engine == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise UserError("--engine ray needs Ray: pip install 'samkit[ray]'") from None
    return {
        "engine": args.engine,
        "ray_address": args.ray_address,
        "workers": args.workers,
        "threads": args.threads,
        "progress": not args.no_progress,
    }


def model_factory(args: argparse.Namespace) -> tuple[Any, str]:
    """A picklable factory for the model named by ``samkit.cli.common.add_model_args`` options.

    Returns:
        (factory, job_id): a :class:`WorkerModelFactory` (each worker builds its own replica on
        its own device) and a string identifying model and weights.
    """
    from .common import existing_file

    checkpoint = None if args.checkpoint is None else str(existing_file(args.checkpoint, "--checkpoint").resolve())
    if checkpoint is None:
        from ..weights import resolve_checkpoint

        checkpoint = str(resolve_checkpoint(args.model, None))  # download once here, not in every worker
    factory = WorkerModelFactory(args.model, checkpoint, getattr(args, "device", None), args.dtype)
    return factory, f"{args.model}:{checkpoint}:{args.dtype}"


@dataclasses.dataclass(frozen=True)
class WorkerModelFactory:
    """Picklable model factory for workers; ``device`` tells the Ray engine whether actors need GPUs.

    Attributes:
        variant: model variant.
        checkpoint: checkpoint path (the same on every node).
        device: ``--device`` as given (``auto``, ``cpu``, ``cuda``, ...), resolved in each worker.
        dtype: ``--dtype`` as given.
    """

    variant: str
    checkpoint: str
    device: str | None
    dtype: str

    def __call__(self) -> Any:
        return build_worker_model(self.variant, self.checkpoint, self.device, self.dtype)


def build_worker_model(variant: str, checkpoint: str, device: str | None, dtype: str) -> Any:
    """Build one replica in the worker process, on ``device`` as this worker sees it
    (``auto``/None: its GPU when Ray gave it one, else the CPU; see :func:`samkit.devices.resolve_device`)."""
    from ..build import build_sam
    from ..devices import resolve_device

    return build_sam(variant, checkpoint, device=resolve_device(device), dtype=dtype)
