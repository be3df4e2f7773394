"""Opt-in ``torch.compile`` of a model's image encoder, with an eager fallback.

Inductor fuses the encoder's elementwise work (LayerNorm, GELU, residual adds, the rel-pos bias)
into generated C++ kernels and, with freezing, prepacks the linear weights for oneDNN. It needs a
C++ compiler at run time and takes minutes to compile on a small CPU, so it is never on by
default: ``build_sam(..., compile=True)`` / ``--compile`` ask for it. When there is no compiler,
or compiling fails, the encoder runs eagerly (the readable reference path) after one warning.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["compile_encoder", "c_compiler_available", "CompileState"]

logger = logging.getLogger(__name__)


def c_compiler_available() -> bool:
    """Whether Inductor's CPU backend can find a C++ compiler (``$CXX``, g++, clang++ or c++)."""
    candidates = [os.environ.get("CXX", ""), "g++", "clang++", "c++"]
    return any(name and shutil.which(name) for name in candidates)


class CompileState:
    """How a compiled forward fared: ``compiled`` (bool), ``compile_seconds`` of its first call, ``error``."""

    def __init__(self) -> None:
        self.compiled = False
        self.compile_seconds: float | None = None
        self.error: str | None = None


def compile_encoder(encoder: nn.Module, *, freezing: bool = True) -> CompileState:
    """Make ``encoder``'s forward a compiled one, in place (parameter names unchanged).

    The first call compiles (its time is recorded in the returned state); if that fails, the
    encoder falls back to its eager forward for good, with one warning. Failures after a
    successful first call are real errors and propagate.

    Args:
        encoder: the image encoder module (any ``nn.Module``).
        freezing: let Inductor treat the weights as constants (prepacked for oneDNN); only valid
            for inference, which is how samkit runs encoders.

    Returns:
        A :class:`CompileState`, also kept as ``encoder.compile_state``.
    """
    state = CompileState()
    encoder.compile_state = state  # type: ignore[assignment]
    eager_forward: Callable[..., Any] = encoder.forward
    if not c_compiler_available():
        state.error = "no C++ compiler found"
        warnings.warn("compile=True: no C++ compiler found (Inductor needs one); running eagerly", stacklevel=3)
        return state
    compiled_forward = torch.compile(eager_forward, options={"freezing": freezing})

    @functools.wraps(eager_forward)
    def forward(*args: Any, **kwargs: Any) -> Any:
        if state.error is not None:
            return eager_forward(*args, **kwargs)
        if state.compiled:
            return compiled_forward(*args, **kwargs)
        start = time.perf_counter()
        try:
            out = compiled_forward(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any compiler failure means: run eagerly
            state.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            warnings.warn(f"compile=True: compiling the encoder failed ({state.error}); running eagerly", stacklevel=2)
            return eager_forward(*args, **kwargs)
        state.compiled = True
        state.compile_seconds = time.perf_counter() - start
        logger.info("encoder compiled in %.1f s (first call)", state.compile_seconds)
        return out

    encoder.forward = forward  # type: ignore[method-assign]
    return state
