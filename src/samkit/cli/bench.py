"""``samkit bench``: samkit against the official implementation, side by side."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``bench`` subcommand."""
    from ..benchmark import DEFAULT_ROWS, GPU_ROWS, ROWS

    parser = subparsers.add_parser(
        "bench",
        help="benchmark samkit against the official code on the same weights",
        description="Builds the official model and samkit's from the same perturbed weights, runs them "
        "alternately and prints median times, speed-ups, peak memory and an output check per row. "
        "Needs the bench extra (pip install -e '.[bench]') and bench/baselines.py from the repository.",
    )
    parser.add_argument(
        "--rows",
        default=None,
        help=f"comma-separated rows to run, from: {', '.join(ROWS)} (default on a CPU: {','.join(DEFAULT_ROWS)}; "
        f"on a GPU: {','.join(GPU_ROWS)}); 'all' runs every row",
    )
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per row after one warm-up (default 3)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--baselines", default=None, metavar="PATH", help="reference adapters (default bench/baselines.py)")
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu (default), cuda, cuda:N, mps, or auto (cuda, then mps, then cpu); both sides run there",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument(
        "--onnx-providers",
        default=None,
        metavar="LIST",
        help="ONNX Runtime providers of the onnx rows, e.g. cuda,cpu (default: those for --device)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the rows, print a markdown table; exit 1 if an output check failed."""
    import torch

    from ..benchmark import ROWS, default_rows, format_table, run_benchmark, to_json
    from ..devices import DeviceUnavailable, resolve_device
    from ..hardware import machine_info
    from ..io import atomic_write_text
    from . import UserError

    if args.rounds < 1:
        raise UserError("--rounds must be >= 1")
    if args.json:
        from ..outputs import check_output_file

        check_output_file(args.json, what="--json")  # before minutes of benchmarking
    try:
        device = str(resolve_device(args.device))
    except DeviceUnavailable as exc:
        raise UserError(f"--device: {exc}") from None
    onnx_providers = None
    if args.onnx_providers is not None:
        from ..onnx.providers import parse_providers

        try:
            onnx_providers = parse_providers(args.onnx_providers)
        except ValueError as exc:
            raise UserError(f"--onnx-providers: {exc}") from None
    if args.rows is None:
        rows = default_rows(device)
    elif args.rows.strip() == "all":
        rows = tuple(ROWS)
    else:
        rows = tuple(r.strip() for r in args.rows.split(",") if r.strip())

    def show(row) -> None:  # type: ignore[no-untyped-def]
        ratio = f"{row.ratio:.2f}x" if row.ratio else "-"
        print(f"  {row.name}: baseline {row.baseline_s} s, samkit {row.samkit_s} s, {ratio}; {row.check}", flush=True)

    threads_before = torch.get_num_threads()
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        print(f"machine: {machine_info().header()}", flush=True)
        results = run_benchmark(
            rows, rounds=args.rounds, baselines=args.baselines, device=device, on_row=show, onnx_providers=onnx_providers
        )
    finally:
        torch.set_num_threads(threads_before)  # main() may be called in-process (tests, notebooks)
    print(format_table(results))
    if args.json:
        atomic_write_text(args.json, to_json(results))
    failed = [r.name for r in results if not r.ok]
    if failed:
        print(f"output checks failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
