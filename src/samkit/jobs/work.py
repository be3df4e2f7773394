"""Per-image work that can be built in another process (a Ray actor).

A command gives the local engine its per-image function directly (bound to a model it already
has). For the Ray engine it gives an :class:`ImageWork`: a small picklable description that each
actor turns into that same function with :meth:`ImageWork.build`, around its own model replica.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["ImageWork", "build_model", "model_name"]


class ImageWork(Protocol):
    """A picklable recipe for a per-image function.

    Attributes:
        model_factory: builds the model in the process that does the work; its ``device``
            attribute, when it has one (``auto``, ``cpu``, ``cuda``, ...), tells the Ray engine
            whether actors take a GPU.
    """

    model_factory: Callable[[], Any]

    def build(self) -> Callable[[Any], Any]:
        """Build the model and return the per-image function (task -> the command's output)."""
        ...


def build_model(model_factory: Callable[[], Any]) -> Any:
    """Call the factory and check that it gave a samkit image model.

    Raises:
        TypeError: it returned something else.
    """
    from ..modeling import Sam
    from ..modeling.sam2 import Sam2

    model = model_factory()
    if not isinstance(model, (Sam, Sam2)):
        raise TypeError(f"model_factory: expected it to return a samkit Sam, got {type(model).__name__}")
    return model


def model_name(model_factory: Callable[[], Any]) -> str:
    """The name of the model a factory builds (its config's ``name``), without building it
    when the factory says: a ``variant`` attribute (the CLI's factory), or a
    ``functools.partial(build_sam, name_or_config, ...)``. Any other factory is called once."""
    variant = getattr(model_factory, "variant", None)
    if isinstance(variant, str):
        return variant  # variant names are their configs' names
    if isinstance(model_factory, functools.partial) and model_factory.args:
        first = model_factory.args[0]
        if isinstance(first, str):
            return first
        if isinstance(getattr(first, "name", None), str):
            return str(first.name)
    return str(build_model(model_factory).config.name)
