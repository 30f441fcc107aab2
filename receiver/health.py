"""GET /healthz (the process serves) and GET /readyz (the store takes writes and the worker runs)."""

from __future__ import annotations

from aiohttp import web

from receiver.errors import RETRY_AFTER_SECONDS, error_response
from receiver.keys import STORE, WORKER
from receiver.store import StoreUnavailable


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    problems = []
    try:
        await request.app[STORE].check_writable()
    except StoreUnavailable as exc:
        problems.append(f"store cannot commit: {exc}")
    if not request.app[WORKER].running:
        problems.append("the outbox worker is not running")
    if problems:
        return error_response(503, "not_ready", "; ".join(problems), headers={"Retry-After": RETRY_AFTER_SECONDS})
    return web.json_response({"status": "ready"})
