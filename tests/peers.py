"""Real local peers for notification tests: an HTTP sink (json://, form://, xml://), a Slack webhook fake, an SMTP
server. apprise talks to them over 127.0.0.1 exactly as it would to the real services; nothing is mocked.

Each is an async context manager:

    async with JsonSink() as sink:
        sink.status = 500          # or sink.delay = 2.0
        ... send to sink.url("/hook") ...
        assert sink.requests[0].json()["title"] == "..."
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import inspect
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from types import TracebackType
from typing import Any, Self

from aiohttp import web
from aiosmtpd.controller import Controller


def free_port() -> int:
    """A port that was free a moment ago; with nothing listening, it is also a 'down' peer (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_until(predicate: Callable[[], object], within: float = 5.0, every: float = 0.01) -> None:
    """Poll `predicate()` until true (peers record from their own handlers or threads); an async predicate
    (one that asks the app over HTTP, say) is awaited each time."""
    deadline = time.monotonic() + within
    while not await _value(predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(every)


async def _value(result: object) -> object:
    return await result if inspect.isawaitable(result) else result


async def serve_locally(app: web.Application, port: int = 0) -> tuple[web.AppRunner, int]:
    """Serve `app` on loopback, on `port` or a free one; the caller cleans the runner up."""
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    port: int = sock.getsockname()[1]
    await web.SockSite(runner, sock).start()
    return runner, port


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)  # when the request reached the sink

    def json(self) -> Any:
        return json.loads(self.body)


class HttpSink:
    """An aiohttp server on 127.0.0.1 that records every request and answers `status` after `delay` seconds.

    A delayed answer is released early when the sink stops, so a test that gave up waiting does not hang.
    """

    response_text = "ok"

    def __init__(self, status: int = 200, delay: float = 0.0, port: int = 0) -> None:
        """`port`: listen there (e.g. where a test kept a 'down' peer until now); 0 picks a free one."""
        self.status = status
        self.delay = delay
        self.requests: list[Recorded] = []
        self.port = port
        self._runner: web.AppRunner | None = None
        self._released = asyncio.Event()

    def url(self, path: str = "/hook", scheme: str = "json") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append(
            Recorded(request.method, request.path, dict(request.query), dict(request.headers), await request.read())
        )
        if self.delay:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._released.wait(), self.delay)
        return web.Response(status=self.status, text=self.response_text)

    def _routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self._handle)

    async def __aenter__(self) -> Self:
        app = web.Application()
        self._routes(app)
        self._runner, self.port = await serve_locally(app, self.port)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._released.set()
        if self._runner is not None:
            await self._runner.cleanup()


class JsonSink(HttpSink):
    """Behind `json://127.0.0.1:PORT/hook`: apprise POSTs `{"version","title","message","attachments","type"}`."""


class SlackFake(HttpSink):
    """Speaks Slack's incoming-webhook protocol: POST /services/A/B/C with a JSON body, answered 200 "ok".

    Point apprise's real Slack plugin at it with
    `monkeypatch.setattr(apprise.plugins.slack.NotifySlack, "webhook_url", fake.webhook_url)`.
    """

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/services"

    def _routes(self, app: web.Application) -> None:
        app.router.add_post("/services/{a}/{b}/{c}", self._handle)


@dataclass
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage

    def text(self) -> str:
        """The text/plain part (apprise sends markdown as multipart text + HTML)."""
        part = self.message.get_body(preferencelist=("plain", "html"))
        return "" if part is None else str(part.get_content())


@dataclass
class _Recorder:
    messages: list[ReceivedMail] = field(default_factory=list)
    refuse: str | None = None  # an SMTP reply like "451 4.3.0 try again later": every message is refused with it
    refused: int = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.refuse is not None:
            self.refused += 1
            return self.refuse
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(ReceivedMail(envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"


class SmtpSink:
    """A real SMTP server (aiosmtpd, its own thread) on 127.0.0.1; `url()` is the matching plain-SMTP mailto://."""

    def __init__(self) -> None:
        self._recorder = _Recorder()
        self.port = free_port()
        self._controller = Controller(self._recorder, hostname="127.0.0.1", port=self.port)

    @property
    def messages(self) -> list[ReceivedMail]:
        return self._recorder.messages

    @property
    def refuse(self) -> str | None:
        """Set to an SMTP reply (`"451 4.3.0 try later"`, `"554 5.7.1 rejected"`) to refuse every message."""
        return self._recorder.refuse

    @refuse.setter
    def refuse(self, reply: str | None) -> None:
        self._recorder.refuse = reply

    @property
    def refused(self) -> int:
        return self._recorder.refused

    def url(self, sender: str = "jobs@example.com", to: str = "ops@example.com") -> str:
        return f"mailto://127.0.0.1:{self.port}?from={sender}&to={to}&mode=insecure"

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self._controller.start)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self._controller.stop)
