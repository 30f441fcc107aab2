"""Targets against real local peers: apprise's real plugins talk HTTP/SMTP to 127.0.0.1; nothing is mocked."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import apprise
import apprise.plugins.slack
import pytest

from notifiers.redaction import Redactor
from notifiers.targets import SendResult, Target, load_targets, send
from receiver.settings import Settings
from tests.peers import JsonSink, SlackFake, SmtpSink, free_port, wait_until

TITLE = "Failed: DeleteFolderBatchJob 01ARZ3NDEKTSV4RRFFQ69G5FAV in A623uY2"
BODY = "**quota_exceeded**: the account\nquota was exceeded"


async def deliver(*urls: str, within: float = 10.0, notify_type: str = "failure", **kwargs: Any) -> SendResult:
    redactor = kwargs.pop("redactor", None) or Redactor.from_urls(urls)
    return await send(
        Target("t", urls, None), title=TITLE, body=BODY, notify_type=notify_type, timeout=within, redactor=redactor
    )


@pytest.fixture
async def sink() -> AsyncIterator[JsonSink]:
    async with JsonSink() as peer:
        yield peer


@pytest.fixture
async def smtp() -> AsyncIterator[SmtpSink]:
    async with SmtpSink() as peer:
        yield peer


@pytest.fixture
async def slack(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[SlackFake]:
    async with SlackFake() as peer:
        # A seam, not a mock: the real plugin builds and posts its real payload, only to a local host.
        monkeypatch.setattr(apprise.plugins.slack.NotifySlack, "webhook_url", peer.webhook_url)
        yield peer


# --- json:// ------------------------------------------------------------------------------------------------


async def test_json_target_delivers(sink: JsonSink) -> None:
    result = await deliver(sink.url("/hook"))
    assert result.ok and result.error is None and result.elapsed < 5
    [request] = sink.requests
    assert request.method == "POST" and request.path == "/hook"
    payload = request.json()
    assert payload["title"] == TITLE and payload["message"] == BODY and payload["type"] == "failure"


async def test_json_500_is_a_retryable_failure_with_the_status_in_the_error(sink: JsonSink) -> None:
    sink.status = 500
    result = await deliver(sink.url("/hook"))
    assert not result.ok and result.retryable
    assert result.error is not None and "500" in result.error
    assert result.error.startswith(f"json://127.0.0.1:{sink.port}/hook: Failed to send JSON POST notification")


async def test_json_4xx_is_not_retryable(sink: JsonSink) -> None:
    sink.status = 404
    result = await deliver(sink.url("/hook"))
    assert not result.ok and not result.retryable and "404" in (result.error or "")


async def test_429_stays_retryable(sink: JsonSink) -> None:
    sink.status = 429
    result = await deliver(sink.url("/hook"))
    assert not result.ok and result.retryable


async def test_down_peer_is_a_retryable_failure() -> None:
    result = await deliver(f"json://127.0.0.1:{free_port()}/hook")
    assert not result.ok and result.retryable
    assert "Connection error" in (result.error or "")


async def test_slow_peer_times_out_without_blocking_the_loop(sink: JsonSink) -> None:
    sink.delay = 3.0
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    ticking = asyncio.create_task(ticker())
    try:
        result = await deliver(sink.url("/hook"), within=0.5)
    finally:
        ticking.cancel()
    assert not result.ok and result.retryable
    assert result.error == "timed out after 0.5 s"
    assert 0.5 <= result.elapsed < 1.5
    assert len(sink.requests) == 1  # the sink, on this same loop, was served while the send waited
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert len(ticks) > 20 and max(gaps) < 0.25, max(gaps)


async def test_loop_keeps_serving_while_a_slow_send_is_in_flight(sink: JsonSink) -> None:
    async with JsonSink() as other:
        sink.delay = 1.0
        slow = asyncio.create_task(deliver(sink.url("/slow")))
        await wait_until(lambda: sink.requests)
        started = time.monotonic()
        fast = await deliver(other.url("/fast"))
        assert fast.ok and time.monotonic() - started < 0.5 and not slow.done()
        assert (await slow).ok


async def test_partial_failure_names_only_the_failed_url_and_no_secret(sink: JsonSink) -> None:
    async with JsonSink(status=500) as failing:
        bad = failing.url("/hook").replace("json://", "json://user:Sup3r-S3cret-pw@") + (
            "?+X-Api-Key=k3y-9f8e7d6c&-X-Token=qtok-55aa11"
        )
        result = await deliver(sink.url("/ok"), bad)
        assert not result.ok and result.retryable and len(sink.requests) == 1
        # The real request carried the credentials, so they were live secrets in this send.
        [request] = failing.requests
        assert request.headers["X-Api-Key"] == "k3y-9f8e7d6c" and request.query["X-Token"] == "qtok-55aa11"
        assert request.headers["Authorization"].startswith("Basic ")
        error = result.error or ""
        assert f":{failing.port}/hook" in error and f":{sink.port}/ok" not in error and "500" in error
        for secret in ("Sup3r-S3cret-pw", "k3y-9f8e7d6c", "qtok-55aa11"):
            assert secret not in error


async def test_invalid_url_at_send_time_is_permanent_and_names_no_part_of_it() -> None:
    result = await deliver("console://", "slakc://user:Pl4nted-Passw0rd@T1/B2/C3")
    assert not result.ok and not result.retryable
    assert result.error == "target 't' URL #2: not a valid apprise URL (scheme 'slakc')"


# --- mailto:// ----------------------------------------------------------------------------------------------


async def test_email_arrives_and_two_sends_in_a_row_are_not_throttled(smtp: SmtpSink) -> None:
    for n in (1, 2):
        started = time.monotonic()
        result = await deliver(smtp.url())
        assert result.ok, result.error
        assert time.monotonic() - started < 2.0  # a reused apprise object would sleep 5.5 s here
        await wait_until(lambda n=n: len(smtp.messages) == n)  # type: ignore[misc]
    mail = smtp.messages[-1]
    assert mail.mail_from == "jobs@example.com" and mail.rcpt_tos == ["ops@example.com"]
    assert mail.message["Subject"] == TITLE
    assert "quota_exceeded" in mail.text()


async def test_email_to_a_down_server_fails_without_leaking_the_password() -> None:
    url = f"mailto://jobs:Pl4nted-Passw0rd@127.0.0.1:{free_port()}?from=jobs@example.com&to=ops@example.com"
    result = await deliver(url + "&mode=insecure")
    assert not result.ok and result.retryable
    assert "Pl4nted-Passw0rd" not in (result.error or "") and "127.0.0.1" in (result.error or "")


# --- slack:// (the real plugin, local webhook host) ---------------------------------------------------------


async def test_slack_plugin_posts_its_webhook_payload(slack: SlackFake) -> None:
    result = await deliver("slack://TokenA/TokenB/TokenC/#alerts")
    assert result.ok, result.error
    [request] = slack.requests
    assert request.method == "POST" and request.path == "/services/TokenA/TokenB/TokenC"
    payload = request.json()
    assert payload["channel"] == "#alerts"
    [attachment] = payload["attachments"]
    assert attachment["title"] == TITLE
    assert "quota_exceeded" in attachment["text"]


async def test_slack_error_is_redacted(slack: SlackFake) -> None:
    slack.status = 500
    result = await deliver("slack://T0AAAAAAA/B0BBBBBBB/cccccccccccccccccccccccc/#alerts")
    assert not result.ok and result.retryable and "500" in (result.error or "")
    for token in ("T0AAAAAAA", "B0BBBBBBB", "cccccccccccccccccccccccc"):
        assert token not in (result.error or "")


# --- console:// ---------------------------------------------------------------------------------------------


async def test_console_target_logs_one_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="jobhook.console"):
        failed = await deliver("console://", notify_type="failure")
        done = await deliver("console://", notify_type="success")
    assert failed.ok and done.ok
    records = [r for r in caplog.records if r.name == "jobhook.console"]
    assert [r.levelno for r in records] == [logging.WARNING, logging.INFO]
    line = records[0].getMessage()
    assert line == f"[failure] {TITLE} — quota_exceeded: the account · quota was exceeded"  # markdown dropped
    assert "\n" not in line and records[1].getMessage().startswith("[success] ")


async def test_console_truncates_long_bodies(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="jobhook.console"):
        target = Target("console", ("console://",), None)
        result = await send(target, title="t", body="word " * 500, notify_type="info", timeout=5, redactor=Redactor())
    assert result.ok
    [record] = [r for r in caplog.records if r.name == "jobhook.console"]
    assert len(record.getMessage()) < 330 and record.getMessage().endswith("…")


# --- load_targets -------------------------------------------------------------------------------------------

PASSWORD = "Pl4nted-Passw0rd"


def test_default_settings_give_the_console_target() -> None:
    targets, problems = load_targets(Settings())
    assert problems == []
    assert targets == {"console": Target("console", ("console://",), None)}


def test_every_form_of_target_loads() -> None:
    settings = Settings.model_validate(
        {
            "targets": {
                "one": "json://127.0.0.1:9/hook",
                "many": ["console://", f"mailto://u:{PASSWORD}@127.0.0.1:25?from=a@example.com&to=b@example.com"],
                "mapped": {"urls": "slack://TokenA/TokenB/TokenC", "rate_limit": 6},
            }
        }
    )
    targets, problems = load_targets(settings)
    assert problems == []
    assert targets["one"].urls == ("json://127.0.0.1:9/hook",)
    assert len(targets["many"].urls) == 2 and targets["many"].rate_limit is None
    assert targets["mapped"] == Target("mapped", ("slack://TokenA/TokenB/TokenC",), 6)


def test_bad_urls_are_reported_by_key_path_without_any_part_of_them(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings.model_validate(
        {
            "targets": {
                "typo": f"slakc://user:{PASSWORD}@T1234/B5678/XXXXXXXX",
                "listed": ["console://", f"slack://user:{PASSWORD}@onlyone"],
                "mapped": {"urls": ["json://127.0.0.1/ok", f"{PASSWORD}"], "rate_limit": 3},
                "single": {"urls": ""},
                "empty": [],
                "good": "console://",
            }
        }
    )
    targets, problems = load_targets(settings)
    assert set(targets) - {"console"} == {"good"}  # console:// is built in whatever the file says
    by_field = {p["field"]: p["message"] for p in problems}
    assert by_field == {
        "targets.typo": "not a valid apprise URL (scheme 'slakc')",
        "targets.listed[1]": (
            "not a valid apprise URL (scheme 'slack' is supported, but its tokens or parameters were rejected)"
        ),
        "targets.mapped.urls[1]": "not a valid apprise URL (expected scheme://...)",
        "targets.single.urls": "is empty (an unset environment variable?)",
        "targets.empty": "needs at least one apprise URL",
    }
    pieces = {PASSWORD[i : i + 4] for i in range(len(PASSWORD) - 3)} | {"onlyone", "T1234", "B5678", "XXXXXXXX"}
    for message in by_field.values():
        assert not [piece for piece in pieces if piece in message], message
    # apprise's own log lines mask URL passwords; a bare string is never handed to it (it would log it verbatim).
    assert PASSWORD not in caplog.text
