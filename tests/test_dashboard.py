"""The dashboard's HTML routes through the real app: rendering, escaping, access, CSRF, errors, paging."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from receiver.dashboard import access
from receiver.dashboard.render import ago, when
from tests.conftest import AppClient, MakeClient
from tests.jobs import job
from tests.peers import JsonSink, wait_until
from tests.test_intake import assert_envelope, post

pytestmark = pytest.mark.stores("sqlite", "postgres")

HTML = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
JSON_ONLY = {"Accept": "application/json"}
TOKEN = "dash-admin-token-for-tests"
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def same_origin(client: AppClient) -> dict[str, str]:
    return {"Origin": f"http://{client.host}:{client.port}"}


def rows(html: str, kind: str) -> list[str]:
    return re.findall(rf'data-{kind}="([^"]+)"', html)


# --- pure parts --------------------------------------------------------------------------------------
def test_session_cookie_is_bound_to_the_token_and_expires() -> None:
    now = time.time()
    value = access.session_value(TOKEN, int(now) + 60)
    assert TOKEN not in value
    assert access.session_valid(value, TOKEN, now)
    assert not access.session_valid(value, TOKEN, now + 61)  # expired
    assert not access.session_valid(value, "another-token", now)  # the token was rotated
    assert not access.session_valid(value, "", now)
    forged = f"{int(now) + 10**6}.{value.split('.')[1]}"  # a later expiry with the old signature
    assert not access.session_valid(forged, TOKEN, now)
    for junk in (None, "", "x", "1.2", value + "0", "ü" * 10, value.upper()):
        assert not access.session_valid(junk, TOKEN, now)


@pytest.mark.parametrize(
    ("headers", "refused"),
    [
        ({"Sec-Fetch-Site": "same-origin"}, False),
        ({"Sec-Fetch-Site": "same-origin", "Origin": "http://evil.example"}, False),  # the browser's word wins
        ({"Origin": "http://127.0.0.1:8080"}, False),
        ({"Origin": "https://127.0.0.1:8080"}, False),  # behind a TLS proxy the scheme differs, the host not
        ({"Sec-Fetch-Site": "cross-site"}, True),
        ({"Sec-Fetch-Site": "same-site"}, True),
        ({"Sec-Fetch-Site": "none"}, True),
        ({"Origin": "http://evil.example"}, True),
        ({"Origin": "http://127.0.0.1:8081"}, True),
        ({"Origin": "null"}, True),
        ({}, True),
    ],
)
def test_cross_site_form_posts_are_refused(headers: dict[str, str], refused: bool) -> None:
    problem = access.cross_site_problem(headers, "127.0.0.1:8080")
    assert (problem is not None) is refused


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/jobs/X?a=1", "/jobs/X?a=1"),
        ("//evil.example/", "/"),
        ("https://evil.example/", "/"),
        ("", "/"),
        (None, "/"),
        ("/\\evil.example", "/"),
        ("jobs", "/"),
    ],
)
def test_redirects_stay_on_this_server(target: str | None, expected: str) -> None:
    assert access.local_path(target) == expected


def test_times_read_naturally() -> None:
    now = 1_800_000_000_000
    assert when(now) == "2027-01-15 08:00:00 UTC"
    assert when(2**63 - 1) == f"{2**63 - 1} ms after 1970"  # valid in a job object, past datetime's year 9999
    assert ago(2**63 - 1, now)
    assert [ago(now - ms, now) for ms in (0, 42_000, 300_000, 3 * 3600_000, 12 * 86400_000)] == [
        "just now",
        "42 s ago",
        "5 min ago",
        "3 h ago",
        "12 d ago",
    ]
    assert ago(now - 400 * 86400_000, now) == "2025-12-11" and ago(now + 5000, now) == "2027-01-15"
    assert access.prefers_json("application/json") and not access.prefers_json(HTML["Accept"])
    assert not access.prefers_json("*/*") and not access.prefers_json("")


# --- the pages ----------------------------------------------------------------------------------------
async def test_overview_lists_jobs_failures_and_health(client: AppClient) -> None:
    failed = job(status="Failed", error={"code": "quota_exceeded", "message": "Over quota."})
    running = job(status="Running")
    for payload in (failed, running):
        assert (await post(client, payload))[0] == 202
    resp = await client.get("/", headers=HTML)
    assert resp.status == 200 and resp.content_type == "text/html"
    assert (
        resp.headers["X-Frame-Options"] == "DENY"
        and "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
    )
    html = await resp.text()
    assert rows(html, "job") == [running["jobId"], failed["jobId"]]  # newest first (same time: by id, descending)
    failures = html.split('id="failures"')[1].split("</section>")[0]
    assert failed["jobId"] in failures and running["jobId"] not in failures
    assert "quota_exceeded" in failures and "Over quota." in failures
    assert re.search(r'data-count="dead">0<', html)


async def test_json_index_stays_for_api_clients(client: AppClient) -> None:
    resp = await client.get("/", headers=JSON_ONLY)
    assert resp.status == 200 and (await resp.json())["service"] == "jobhook"
    resp = await client.get("/jobs/01UNKNOWN0000000000000000X", headers=JSON_ONLY)
    assert resp.status == 404
    assert_envelope(await resp.json(), "not_found")


async def test_unknown_job_is_an_html_404_for_browsers(client: AppClient) -> None:
    resp = await client.get("/jobs/01UNKNOWN0000000000000000X", headers=HTML)
    assert resp.status == 404 and resp.content_type == "text/html"
    assert "no job &#39;01UNKNOWN0000000000000000X&#39; is stored" in await resp.text()
    resp = await client.get("/?status=Exploded", headers=HTML)
    assert resp.status == 400 and "invalid_query" in await resp.text()


async def test_hostile_text_is_escaped_everywhere(client: AppClient) -> None:
    payload = job(status="Failed", error={"code": "boom", "message": HOSTILE}, note=HOSTILE)
    assert (await post(client, payload))[0] == 202
    pages = [
        await (await client.get("/", headers=HTML)).text(),
        await (await client.get("/", params={"jobType": HOSTILE, "accountId": '"><b>x'}, headers=HTML)).text(),
        await (await client.get(f"/jobs/{payload['jobId']}", headers=HTML)).text(),
        await (await client.get("/jobs/" + "%3Cscript%3E", headers=HTML)).text(),
    ]
    for html in pages:
        assert "<script>" not in html and "<img" not in html and '"><b>' not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in pages[0]  # the error message, shown escaped
    assert 'value="&lt;script&gt;' in pages[1] and 'value="&#34;&gt;&lt;b&gt;x"' in pages[1]  # the filter, echoed
    assert pages[2].count("&lt;script&gt;") >= 2  # the error message and the raw payload's extra key


async def test_filters_and_pages_walk_every_job_once(client: AppClient) -> None:
    ids = []
    for n in range(7):
        payload = job(status="Failed" if n % 2 else "Succeeded", lastUpdated=1_700_000_000_000 + n)
        ids.append(payload["jobId"])
        assert (await post(client, payload))[0] == 202
    seen: list[str] = []
    url = "/?limit=3"
    while url:
        html = await (await client.get(url.replace("&amp;", "&"), headers=HTML)).text()
        seen += rows(html, "job")
        older = re.search(r'href="([^"]+)" rel="next"', html)
        url = older[1] if older else ""
    assert seen == ids[::-1]
    html = await (await client.get("/?status=Failed&jobType=&accountId=", headers=HTML)).text()  # blank = any
    assert rows(html, "job") == ids[5::-2]
    assert '<option value="Failed" selected>' in html


# --- access -------------------------------------------------------------------------------------------
async def test_with_a_token_browsers_log_in_and_get_a_session_cookie(make_client: MakeClient) -> None:
    client = await make_client(admin={"token": TOKEN})
    resp = await client.get("/jobs/01UNKNOWN0000000000000000X?x=1", headers=HTML)
    assert resp.status == 401 and 'name="token"' in (html := await resp.text())
    assert 'name="next" value="/jobs/01UNKNOWN0000000000000000X?x=1"' in html
    resp = await client.get("/", headers=JSON_ONLY)
    assert resp.status == 401
    assert_envelope(await resp.json(), "unauthorized")
    assert (await client.get("/", headers={**HTML, "Authorization": f"Bearer {TOKEN}"})).status == 200

    form = {"token": "wrong", "next": "/?status=Failed"}
    resp = await client.post("/login", data=form, headers=same_origin(client), allow_redirects=False)
    assert resp.status == 401 and "not the admin token" in await resp.text() and "Set-Cookie" not in resp.headers
    resp = await client.post("/login", data={**form, "token": TOKEN}, allow_redirects=False)
    assert resp.status == 403 and "Set-Cookie" not in resp.headers  # no Origin: not a form of ours
    resp = await client.post(
        "/login", data={**form, "token": TOKEN}, headers=same_origin(client), allow_redirects=False
    )
    assert resp.status == 303 and resp.headers["Location"] == "/?status=Failed"
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie and TOKEN not in cookie
    session = resp.cookies[access.COOKIE].value
    client.session.cookie_jar.clear()
    with_cookie = {**HTML, "Cookie": f"{access.COOKIE}={session}"}
    assert (await client.get("/", headers=with_cookie)).status == 200
    assert (await client.get("/api/jobs", headers=with_cookie)).status == 401  # the API still wants the Bearer
    tampered = {**HTML, "Cookie": f"{access.COOKIE}={session[:-1]}{'0' if session[-1] != '0' else '1'}"}
    assert (await client.get("/", headers=tampered)).status == 401
    resp = await client.post("/logout", headers={**with_cookie, **same_origin(client)}, allow_redirects=False)
    assert resp.status == 303 and f'{access.COOKIE}=""' in resp.headers["Set-Cookie"]


async def test_without_a_token_only_loopback_browsers(client: AppClient) -> None:
    resp = await client.get("/login", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/"  # nothing to log in to


async def dead_notification(client: AppClient, db: Any) -> int:
    assert (await post(client, job(status="Failed", error={"code": "e", "message": "m"})))[0] == 202
    await wait_until(lambda: db("SELECT count(*) FROM deliveries WHERE state = 'dead'") == [(1,)], within=30)
    [(delivery_id,)] = db("SELECT id FROM deliveries")
    return int(delivery_id)


async def test_redeliver_form_refuses_cross_site_posts(make_client: MakeClient, db: Any) -> None:
    async with JsonSink(status=500) as sink:
        client = await make_client(
            targets={"hook": sink.url()},
            rules=[{"match": {"status": "Failed"}, "notify": "hook"}],
            delivery={"max_attempts": 1},
        )
        delivery_id = await dead_notification(client, db)
        url = f"/notifications/{delivery_id}/redeliver"
        for headers in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}, {}):
            resp = await client.post(url, data={"next": "/"}, headers={**HTML, **headers}, allow_redirects=False)
            assert resp.status == 403 and "refused" in await resp.text()
        resp = await client.post(url, headers={**JSON_ONLY, "Origin": "http://evil.example"})
        assert resp.status == 403
        assert_envelope(await resp.json(), "forbidden")
        assert db("SELECT state FROM deliveries") == [("dead",)]  # nothing changed

        sink.status = 200
        back = "/jobs/x?from=dead"
        resp = await client.post(
            url, data={"next": back}, headers={**HTML, "Sec-Fetch-Site": "same-origin"}, allow_redirects=False
        )
        assert resp.status == 303 and resp.headers["Location"] == back
        await wait_until(lambda: db("SELECT state FROM deliveries") == [("sent",)], within=30)
        assert len(sink.requests) == 2
        resp = await client.post("/notifications/999/redeliver", headers={**HTML, **same_origin(client)})
        assert resp.status == 404 and "no notification" in await resp.text()


async def test_a_dead_digest_and_an_open_circuit_are_shown(make_client: MakeClient, db: Any) -> None:
    async with JsonSink(status=500) as sink:
        client = await make_client(
            targets={"hook": sink.url()},
            rules=[{"match": {"status": "Failed"}, "notify": "hook", "group_by": ["jobType"], "group_wait": "100ms"}],
            delivery={"max_attempts": 1, "circuit_threshold": 1, "circuit_cooloff": "1h"},
        )
        html = await (await client.get("/", headers=HTML)).text()
        assert re.search(
            r'data-target="hook">\s*<td><strong>hook</strong></td>\s*<td><span class="badge ok">closed', html
        )
        payloads = [job(status="Failed", error={"code": "e", "message": "m"}) for _ in range(2)]
        for payload in payloads:
            assert (await post(client, payload))[0] == 202
        await wait_until(lambda: db("SELECT count(*) FROM deliveries WHERE state = 'dead'") == [(1,)], within=30)
        html = await (await client.get("/", headers=HTML)).text()
        dead = html.split('id="dead"')[1].split("</table>")[0]
        assert "digest of 2 jobs" in dead and all(f"/jobs/{p['jobId']}" in dead for p in payloads)
        assert re.search(
            r'data-target="hook">\s*<td><strong>hook</strong></td>\s*<td><span class="badge bad">open', html
        )
        job_page = await (await client.get(f"/jobs/{payloads[0]['jobId']}", headers=HTML)).text()
        assert "in a digest of 2 jobs" in job_page
