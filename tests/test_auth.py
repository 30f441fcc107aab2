"""Authenticated intake: Standard Webhooks (library-signed, rotation, window, replay) and bearer tokens."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from receiver.app import create_app
from receiver.auth import AuthFailed, StandardWebhooksAuth, build_authenticator
from receiver.settings import ConfigError, Settings
from tests.conftest import AppClient, MakeClient, release
from tests.jobs import body, job
from tests.test_intake import assert_envelope

URL = "/webhooks/jobs"
OLD = "whsec_" + base64.b64encode(b"old-secret-of-at-least-24-bytes!").decode()
NEW = "whsec_" + base64.b64encode(b"new-secret-of-at-least-24-bytes!").decode()

# standard-webhooks/standard-webhooks libraries/python/tests/test_webhooks.py::test_sign_function
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID, VECTOR_TS, VECTOR_PAYLOAD = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
VECTOR_WRONG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="


def signed(secret: str, data: bytes, message_id: str = "msg_1", at: int | None = None) -> dict[str, str]:
    stamp = int(time.time()) if at is None else at
    signature = Webhook(secret).sign(message_id, datetime.fromtimestamp(stamp, tz=UTC), data.decode())
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": signature,
        "Content-Type": "application/json",
    }


def vector_headers(signature: str) -> dict[str, str]:
    return {"webhook-id": VECTOR_ID, "webhook-timestamp": str(VECTOR_TS), "webhook-signature": signature}


def test_published_vector_signs_and_verifies() -> None:
    stamp = datetime.fromtimestamp(VECTOR_TS, tz=UTC)
    assert Webhook(VECTOR_SECRET).sign(VECTOR_ID, stamp, VECTOR_PAYLOAD.decode()) == VECTOR_SIGNATURE
    auth = StandardWebhooksAuth([VECTOR_SECRET], 300, clock=lambda: VECTOR_TS + 10)
    auth.check_headers(vector_headers(VECTOR_SIGNATURE))
    assert auth.check_body(vector_headers(VECTOR_SIGNATURE), VECTOR_PAYLOAD) == VECTOR_ID
    # several signatures, unknown versions and decoys around the valid one
    crowded = f"v2,abc {VECTOR_WRONG} v1a,xyz {VECTOR_SIGNATURE}"
    assert auth.check_body(vector_headers(crowded), VECTOR_PAYLOAD) == VECTOR_ID


def test_published_negative_vector_fails() -> None:
    auth = StandardWebhooksAuth([VECTOR_SECRET], 300, clock=lambda: VECTOR_TS)
    with pytest.raises(AuthFailed, match="signature does not match"):
        auth.check_body(vector_headers(VECTOR_WRONG), VECTOR_PAYLOAD)


def test_timestamp_window_is_two_sided() -> None:
    auth = StandardWebhooksAuth([VECTOR_SECRET], 300, clock=lambda: VECTOR_TS)
    for offset, ok in [(-300, True), (300, True), (-301, False), (301, False)]:
        headers = {**vector_headers(VECTOR_SIGNATURE), "webhook-timestamp": str(VECTOR_TS + offset)}
        if ok:
            auth.check_headers(headers)
        else:
            with pytest.raises(AuthFailed, match="outside the allowed window"):
                auth.check_headers(headers)


@pytest.fixture
async def signed_client(make_client: MakeClient) -> AppClient:
    return await make_client(auth={"mode": "standard-webhooks", "secrets": [OLD, NEW], "tolerance_seconds": 300})


async def reason(resp: Any) -> str:
    answer = await resp.json()
    assert_envelope(answer, "unauthorized")
    return str(answer["error"]["message"])


async def test_either_secret_is_accepted_during_rotation(signed_client: AppClient) -> None:
    for secret, message_id in ((OLD, "msg_old"), (NEW, "msg_new")):
        data = body(job())
        resp = await signed_client.post(URL, data=data, headers=signed(secret, data, message_id))
        assert resp.status == 202, await resp.text()


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda h, d: (h, d + b" "), "signature does not match"),  # tampered body
        (lambda h, d: (signed(base_secret(), d), d), "signature does not match"),  # wrong secret
        (lambda h, d: (signed(OLD, d, at=int(time.time()) - 301), d), "outside the allowed window"),  # stale
        (lambda h, d: (signed(OLD, d, at=int(time.time()) + 301), d), "outside the allowed window"),  # future
        (
            lambda h, d: ({k: v for k, v in h.items() if k != "webhook-signature"}, d),
            "missing header: webhook-signature",
        ),
        (lambda h, d: ({"Content-Type": "application/json"}, d), "missing headers: webhook-id, webhook-timestamp"),
        (lambda h, d: ({**h, "webhook-timestamp": "soon"}, d), "not a Unix time"),
        (lambda h, d: ({**h, "webhook-signature": "v1a,abc"}, d), "no v1 signature"),
        (lambda h, d: ({**h, "webhook-signature": "v1,!!!notbase64"}, d), "no v1 signature"),
    ],
)
async def test_each_failed_check_is_a_401_with_its_own_reason(
    signed_client: AppClient, mutate: Any, expected: str
) -> None:
    data = body(job())
    headers, data = mutate(signed(OLD, data), data)
    resp = await signed_client.post(URL, data=data, headers=headers)
    assert resp.status == 401
    message = await reason(resp)
    assert expected in message
    assert OLD not in message and NEW not in message


def base_secret() -> str:
    return "whsec_" + base64.b64encode(b"some-other-secret-of-24-bytes!!!").decode()


async def test_a_replayed_message_is_rejected_even_with_a_valid_signature(signed_client: AppClient) -> None:
    data = body(job(status="Failed", error={"code": "x", "message": "m"}))
    headers = signed(OLD, data, "msg_replay")
    assert (await signed_client.post(URL, data=data, headers=headers)).status == 202
    resp = await signed_client.post(URL, data=data, headers=headers)
    assert resp.status == 401
    assert "replayed webhook-id" in await reason(resp)


async def test_an_unauthenticated_body_is_not_read(make_client: MakeClient) -> None:
    client = await make_client(auth={"mode": "standard-webhooks", "secrets": [OLD]}, server={"max_body_bytes": 1024})
    resp = await client.post(URL, data=b"x" * 100_000, headers={"Content-Type": "application/json"})
    assert resp.status == 401


async def test_token_mode(make_client: MakeClient) -> None:
    client = await make_client(auth={"mode": "token", "secrets": ["tok-old-123456", "tok-new-654321"]})
    for token in ("tok-old-123456", "tok-new-654321"):
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        resp = await client.post(URL, data=body(job()), headers=headers)
        assert resp.status == 202
    cases = [
        ({}, "missing Authorization header"),
        ({"Authorization": "Bearer nope"}, "wrong token"),
        ({"Authorization": "Basic dG9rLW9sZC0xMjM0NTY="}, "not a Bearer token"),
    ]
    for headers, expected in cases:
        resp = await client.post(URL, data=body(job()), headers={**headers, "Content-Type": "application/json"})
        assert resp.status == 401
        message = await reason(resp)
        assert expected in message and "tok-" not in message


@pytest.mark.parametrize(
    ("auth", "server", "field"),
    [
        ({}, {}, "auth.mode"),
        ({"mode": "standard-webhooks"}, {}, "auth.secrets"),
        ({"mode": "token", "secrets": [""]}, {}, "auth.secrets[0]"),
        ({"mode": "standard-webhooks", "secrets": ["whsec_!!!"]}, {}, "auth.secrets[0]"),
        ({"mode": "none"}, {"host": "0.0.0.0"}, "server.host"),
    ],
)
def test_auth_config_fails_closed(auth: dict[str, Any], server: dict[str, Any], field: str) -> None:
    settings = Settings.model_validate({"auth": auth, "server": server})
    _, problems = build_authenticator(settings)
    assert [p["field"] for p in problems] == [field]
    with pytest.raises(ConfigError):
        create_app(settings)


async def test_a_retry_after_a_503_is_not_a_replay(make_client: MakeClient, lock_holder: Any) -> None:
    client = await make_client(auth={"mode": "standard-webhooks", "secrets": [OLD]}, database={"busy_timeout": "200ms"})
    data = body(job())
    headers = signed(OLD, data, "msg_retried")
    holder = lock_holder()
    assert (await client.post(URL, data=data, headers=headers)).status == 503
    release(holder)
    assert (await client.post(URL, data=data, headers=headers)).status == 202
