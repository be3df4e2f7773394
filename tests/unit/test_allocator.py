"""samkit.keep_freed_memory: glibc malloc keeps freed blocks for reuse."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import samkit
from samkit.allocator import MAX_MMAP_THRESHOLD

# Decodes 16 point prompts with a vit_b-sized mask decoder (random weights) on one thread
# after two warm-up calls; prints the minor page faults of each of the next five calls.
_FAULTS = textwrap.dedent(
    """
    import resource, sys, torch
    import samkit
    from samkit.config import VARIANTS
    torch.set_num_threads(1)
    if sys.argv[1] == "keep":
        assert samkit.keep_freed_memory()
    torch.manual_seed(0)
    model = samkit.build_sam(VARIANTS["vit_b"].with_overrides(name="vit_b_random"))
    features = torch.randn(1, 256, 64, 64)  # (1, C, h, w)
    points = torch.rand(16, 1, 2) * 1024  # (B, 1, 2)
    labels = torch.ones(16, 1, dtype=torch.int64)  # (B, 1)
    faults = []
    with torch.inference_mode():
        cache = model.decoder_cache(features)
        for call in range(7):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            model.decode(features, points, labels, cache=cache)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(" ".join(map(str, faults[2:])))
    """
)


def _faults(mode: str) -> list[int]:
    """Page faults of each steady-state decode call in a fresh process."""
    done = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    return [int(n) for n in done.stdout.strip().splitlines()[-1].split()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_keep_freed_memory_stops_remapping_freed_blocks() -> None:
    """By default glibc maps the decoder's MB-sized intermediates afresh and trims the heap
    after prompt chunks, so most calls fault their memory in again (tens of thousands of page
    faults per run); with it, the memory is reused and a steady-state run faults (almost)
    nothing. glibc's default is not deterministic: its dynamic mmap threshold sometimes settles
    into reuse by itself (seen as [7697, 0, 1, 0, 0] in one of four runs, and a CI run failed
    on a per-call minimum), so the baseline is the busiest of up to five fresh processes and
    the runs are compared by their totals."""
    kept = max((_faults("keep") for _ in range(2)), key=sum)  # two runs: a lucky quiet one cannot pass alone
    default: list[int] = []
    for _ in range(5):
        default = max(default, _faults("default"), key=sum)
        if sum(default) > 10_000:
            break
    assert sum(default) > 10_000, default  # the default really gives the memory back (else this proves nothing)
    assert sum(kept) * 10 < sum(default), (kept, default)


def test_keep_freed_memory_rejects_bad_thresholds() -> None:
    with pytest.raises(ValueError, match="mmap_threshold"):
        samkit.keep_freed_memory(mmap_threshold=MAX_MMAP_THRESHOLD + 1)
    with pytest.raises(ValueError, match="trim_threshold"):
        samkit.keep_freed_memory(trim_threshold=0)
