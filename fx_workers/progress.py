"""How long work reports progress without depending on a UI: the CLI passes rich bars, library
callers and tests pass nothing."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable


class ProgressFactory(Protocol):
    """``progress(description, total)`` is a context manager yielding ``advance(n)``."""

    def __call__(self, description: str, total: int | None) -> AbstractContextManager[Callable[[int], None]]: ...


def no_progress(description: str, total: int | None) -> AbstractContextManager[Callable[[int], None]]:
    """Report nothing."""
    return nullcontext(lambda n: None)
