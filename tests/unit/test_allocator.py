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
    after each prompt chunk, so every call faults its memory in again (thousands of page
    faults per call); with it, the memory is reused and a steady-state call faults (almost)
    nothing. Compared per call, at their quietest, so the load of the machine cannot decide it
    (totals over a run moved 2x between an idle and a busy machine)."""
    default, kept = _faults("default"), _faults("keep")
    assert min(default) > 1_000, default  # the default really gives the memory back (else this proves nothing)
    assert min(kept) * 10 < min(default), (kept, default)


def test_keep_freed_memory_rejects_bad_thresholds() -> None:
    with pytest.raises(ValueError, match="mmap_threshold"):
        samkit.keep_freed_memory(mmap_threshold=MAX_MMAP_THRESHOLD + 1)
    with pytest.raises(ValueError, match="trim_threshold"):
        samkit.keep_freed_memory(trim_threshold=0)
