"""The baseline: a bare aiohttp server whose only handler answers POST /webhooks/jobs with 202.

It neither reads nor validates the body; `python -m bench.bare --port N [--loop asyncio|uvloop]`. Same
`access_log=None` as `jobhook serve`, and it must run on the same event loop as the jobhook it is
compared with (uvloop by default, `server.event_loop`), so that the difference is jobhook's own work.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from aiohttp import web

from receiver.event_loop import loop_factory


async def accept(request: web.Request) -> web.Response:
    return web.json_response({"accepted": True}, status=202)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/webhooks/jobs", accept)
    app.router.add_get("/healthz", healthz)
    return app


def run(app: web.Application, prog: str, description: str | None, argv: Sequence[str] | None = None) -> None:
    """`python -m bench.X --port N [--host H]`: serve `app` the way the benchmarks need (no access log)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio", help="the event loop")
    args = parser.parse_args(argv)
    factory = loop_factory(args.loop)
    loop = factory() if factory is not None else None  # None: run_app's own asyncio loop
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None, loop=loop)


def main(argv: Sequence[str] | None = None) -> None:
    run(create_app(), "python -m bench.bare", __doc__, argv)


if __name__ == "__main__":
    main()
