"""Which event loop `jobhook serve` runs on (`server.event_loop`).

uvloop (libuv underneath) answered about 10% more callbacks per second than asyncio's own loop in
`jobhook serve` on the same machine (bench/README.md), so `auto` takes it whenever it imports and falls
back to asyncio where it does not (Windows, a build without it). The choice goes to an `asyncio.Runner`
as its loop factory: no global event-loop policy, so nothing else in the process changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Literal

EventLoopSetting = Literal["auto", "uvloop", "asyncio"]
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def uvloop_factory() -> LoopFactory | None:
    """`uvloop.new_event_loop`, or None when uvloop cannot be imported."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def loop_factory(setting: EventLoopSetting) -> LoopFactory | None:
    """The factory for `asyncio.Runner(loop_factory=...)`; None is asyncio's own loop.

    Raises ImportError for `uvloop` when it cannot be imported (settings validation reports that first).
    """
    if setting == "asyncio":
        return None
    factory = uvloop_factory()
    if factory is None and setting == "uvloop":
        raise ImportError("server.event_loop is uvloop, but uvloop cannot be imported")
    return factory


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """What the startup line reports: the loop actually created, not the setting."""
    return "uvloop" if type(loop).__module__.partition(".")[0] == "uvloop" else "asyncio"
