"""The notification sink for bench.delivery: a minimal aiohttp server that counts what jobhook sends it.

POST /hook reads the body and answers 200; GET /stats answers JSON {count, distinct, first, last}: requests
received, how many distinct bodies among them, and the `time.monotonic()` of the first and the last (null
before any). CLOCK_MONOTONIC is system-wide, so the benchmark can compare these with its own clock.
`python -m bench.sink --port N`; run as its own process, so its CPU never competes for jobhook's GIL.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence

from aiohttp import web

from bench.bare import run


class Counter:
    def __init__(self) -> None:
        self.count = 0
        self.bodies: set[bytes] = set()
        self.first: float | None = None
        self.last: float | None = None


COUNTER = web.AppKey("counter", Counter)


async def hook(request: web.Request) -> web.Response:
    body = await request.read()
    now = time.monotonic()
    counter = request.app[COUNTER]
    counter.count += 1
    counter.bodies.add(hashlib.blake2b(body, digest_size=16).digest())
    if counter.first is None:
        counter.first = now
    counter.last = now
    return web.Response(status=200)


async def stats(request: web.Request) -> web.Response:
    counter = request.app[COUNTER]
    return web.json_response(
        {"count": counter.count, "distinct": len(counter.bodies), "first": counter.first, "last": counter.last}
    )


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def create_app() -> web.Application:
    app = web.Application()
    app[COUNTER] = Counter()
    app.router.add_post("/hook", hook)
    app.router.add_get("/stats", stats)
    app.router.add_get("/healthz", healthz)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    run(create_app(), "python -m bench.sink", __doc__, argv)


if __name__ == "__main__":
    main()
