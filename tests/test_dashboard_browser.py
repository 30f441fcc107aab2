"""The dashboard in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

A real `jobhook serve` process with an admin token, a rule that sends Failed jobs to a local JSON sink
that fails (max_attempts 1: dead at once); the browser logs in, sees the failure and the dead
notification, clicks Redeliver, sees it pending again (the sink then holds the new send, so it stays
pending while we look), opens the job's page, and screenshots land in tests/output/.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests import serve
from tests.jobs import job
from tests.peers import JsonSink, wait_until

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
OUTPUT = Path(__file__).parent / "output"
TOKEN = "dashboard-test-admin-token-0001"

pytestmark = pytest.mark.slow


def require_chromium() -> None:
    if CHROMIUM.exists():
        return
    message = f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run installs it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[str, JsonSink]]:
    async with JsonSink(status=500) as sink:
        port = serve.free_port()
        extra = (
            f"admin: {{token: {TOKEN}}}\n"
            f"targets: {{ops-hook: '{sink.url()}'}}\n"
            "rules: [{name: failed-jobs, match: {status: Failed}, notify: ops-hook}]\n"
            "delivery: {max_attempts: 1, timeout: 60s}\n"
        )
        config = serve.write_config(tmp_path, port, extra)
        proc = serve.start(config, tmp_path / "serve.log")
        try:
            await asyncio.to_thread(serve.wait_healthy, port, proc)
            yield f"http://127.0.0.1:{port}", sink
        finally:
            sink.status = 200
            await sink.__aexit__(None, None, None)  # releases a held send before the server drains
            proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(proc.wait, 30)
            proc.kill()


async def api(http: aiohttp.ClientSession, base: str, path: str) -> Any:
    async with http.get(base + path, headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_dashboard_in_chromium(server: tuple[str, JsonSink]) -> None:
    require_chromium()
    from playwright.async_api import async_playwright

    base, sink = server
    failed = job(
        status="Failed", jobType="DeleteFolderBatchJob", error={"code": "quota_exceeded", "message": "Over quota."}
    )
    others = [job(status="Succeeded"), job(status="Running", jobType="CopyFolderBatchJob"), job(status="Cancelled")]
    async with aiohttp.ClientSession() as http:
        for payload in [*others, failed]:
            async with http.post(f"{base}/webhooks/jobs", json=payload) as resp:
                assert resp.status == 202
        dead: list[Any] = []

        async def poll_dead() -> bool:
            dead[:] = (await api(http, base, "/api/notifications?state=dead"))["items"]
            return bool(dead)

        # The one send fails (500) and, with max_attempts 1, the notification is dead.
        await wait_until(poll_dead, within=20, every=0.1)
        [notification] = dead
        assert notification["jobId"] == failed["jobId"]
        sink.status, sink.delay = 200, 600.0  # the redelivered send is held in flight: pending while we look

        OUTPUT.mkdir(exist_ok=True)
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 900})
                await page.goto(base + "/")
                assert await page.locator("input[name=token]").count() == 1  # a token is set: log in first
                await page.fill("input[name=token]", TOKEN)
                await page.click("button[type=submit].primary")
                await page.wait_for_selector("#health")

                failures = page.locator("#failures")
                assert failed["jobId"] in await failures.inner_text()
                assert "quota_exceeded" in await failures.inner_text() and "Over quota." in await failures.inner_text()
                row = page.locator(f"#jobs tr[data-job='{failed['jobId']}']")
                assert "Failed" in await row.locator(".badge").inner_text()
                assert await page.inner_text("[data-count=dead]") == "1"
                dead_row = page.locator(f"#dead tr[data-notification='{notification['id']}']")
                assert "ops-hook" in await dead_row.inner_text() and "500" in await dead_row.inner_text()
                await page.screenshot(path=str(OUTPUT / "dashboard.png"), full_page=True)

                await dead_row.locator("button[data-redeliver]").click()
                await page.wait_for_load_state()
                assert page.url == base + "/"
                assert await page.inner_text("[data-count=dead]") == "0"
                assert await page.inner_text("[data-count=pending]") == "1"
                assert await page.locator("#dead").count() == 0
                detail = await api(http, base, f"/api/jobs/{failed['jobId']}")
                assert [n["state"] for n in detail["notifications"]] == ["pending"]
                await wait_until(lambda: len(sink.requests) == 2, within=30)  # really sent again

                await page.click(f"#failures a[href='/jobs/{failed['jobId']}']")
                await page.wait_for_selector("#timeline")
                assert failed["jobId"] in await page.inner_text("h1")
                assert "Failed" in await page.inner_text("#timeline")
                notifications = await page.inner_text("#notifications")
                assert "pending" in notifications and "ops-hook" in notifications and "500" in notifications
                await page.screenshot(path=str(OUTPUT / "dashboard-job.png"), full_page=True)
            finally:
                await browser.close()


def test_chromium_missing_fails_in_ci(tmp_path: Path) -> None:
    """The guard itself: under CI a missing browser is a failure with a clear message, never a skip."""
    script = (
        "import pathlib, pytest, tests.test_dashboard_browser as t\n"
        f"t.CHROMIUM = pathlib.Path({str(tmp_path / 'no-chromium')!r})\n"
        "try:\n    t.require_chromium()\nexcept BaseException as exc:\n    print(type(exc).__name__, exc)\n"
    )
    root = Path(__file__).parent.parent
    for ci, outcome in (("true", "Failed"), ("", "Skipped")):
        env = {**os.environ, "CI": ci, "PYTHONPATH": str(root)}
        if not ci:
            env.pop("CI")
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=root)
        assert out.stdout.startswith(outcome) and "apt-get install -y chromium" in out.stdout, out.stderr
