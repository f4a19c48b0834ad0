"""The one place that chooses the event loop: uvloop when importable, asyncio's otherwise."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a hard dependency, kept soft for odd platforms
        return asyncio.run(main)
    return uvloop.run(main)
