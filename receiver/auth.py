"""Who may post job callbacks: Standard Webhooks signatures, a bearer token, or (loopback only) anyone.

Every failure says which check failed and never what was expected. Standard Webhooks signing is the
`standardwebhooks` library's (`Webhook.sign`); this module owns only what the library fixes or lacks:
a configurable two-sided timestamp window, several secrets at once for rotation, replay protection,
and never raising on malformed headers.
"""

from __future__ import annotations

import binascii
import hmac
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime

from standardwebhooks.webhooks import EmptyWebhookSecretError, Webhook

from receiver.settings import Settings
from receiver.validation import FieldProblem


class AuthFailed(Exception):
    """The request is not authenticated; the message names the failed check and is safe to return."""


class TokenAuth:
    """`Authorization: Bearer <token>`, compared in constant time with every configured token."""

    def __init__(self, tokens: Sequence[str]) -> None:
        self._tokens = [token.encode() for token in tokens]

    def check_headers(self, headers: Mapping[str, str]) -> None:
        header = headers.get("Authorization")
        if header is None:
            raise AuthFailed("missing Authorization header (expected: Bearer <token>)")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise AuthFailed("Authorization header is not a Bearer token")
        candidate = given.strip().encode()
        matches = [hmac.compare_digest(candidate, token) for token in self._tokens]  # no early exit
        if not any(matches):
            raise AuthFailed("wrong token")

    def check_body(self, headers: Mapping[str, str], body: bytes) -> str | None:
        return None

    def accepted(self, message_id: str | None) -> None:
        """Nothing to remember: a token carries no message identity."""


class ReplayGuard:
    """Remembers accepted `webhook-id`s for the timestamp window: within it, a repeat is a replay."""

    def __init__(self, window_seconds: float, clock: Callable[[], float] = time.monotonic, limit: int = 1_000_000):
        self._window = window_seconds
        self._clock = clock
        self._limit = limit
        self._seen: OrderedDict[str, float] = OrderedDict()

    def seen(self, message_id: str) -> bool:
        expiry = self._seen.get(message_id)
        return expiry is not None and expiry > self._clock()

    def remember(self, message_id: str) -> None:
        now = self._clock()
        self._seen[message_id] = now + self._window
        self._seen.move_to_end(message_id)
        while self._seen and (next(iter(self._seen.values())) <= now or len(self._seen) > self._limit):
            self._seen.popitem(last=False)


class StandardWebhooksAuth:
    """`webhook-id`, `webhook-timestamp`, `webhook-signature` (v1, HMAC-SHA256 over the raw body)."""

    def __init__(self, secrets: Sequence[str], tolerance_seconds: int, clock: Callable[[], float] = time.time) -> None:
        self._hooks = [Webhook(secret) for secret in secrets]
        self._tolerance = tolerance_seconds
        self._clock = clock
        # A replayed id can only be valid while its timestamp is inside the window: remember it that long
        # (both sides of the window, since a timestamp may be up to `tolerance` in the future).
        self.replays = ReplayGuard(2 * tolerance_seconds)

    def check_headers(self, headers: Mapping[str, str]) -> None:
        missing = [name for name in ("webhook-id", "webhook-timestamp", "webhook-signature") if not headers.get(name)]
        if missing:
            raise AuthFailed(f"missing header{'s' if len(missing) > 1 else ''}: {', '.join(missing)}")
        stamp = headers["webhook-timestamp"]
        if not stamp.isdigit() or len(stamp) > 12:
            raise AuthFailed("webhook-timestamp is not a Unix time in seconds")
        if abs(self._clock() - int(stamp)) > self._tolerance:
            raise AuthFailed(f"webhook-timestamp is outside the allowed window of ±{self._tolerance} s")

    def check_body(self, headers: Mapping[str, str], body: bytes) -> str | None:
        """Verify the signature; returns the webhook-id, to be remembered once the event is stored."""
        message_id = headers["webhook-id"]
        try:
            text = body.decode()
        except UnicodeDecodeError:
            raise AuthFailed("signature does not match (body is not UTF-8)") from None
        timestamp = datetime.fromtimestamp(int(headers["webhook-timestamp"]), tz=UTC)
        given = _v1_signatures(headers["webhook-signature"])
        if not given:
            raise AuthFailed("webhook-signature has no v1 signature")
        valid = False
        for hook in self._hooks:
            expected = binascii.a2b_base64(hook.sign(message_id, timestamp, text).split(",", 1)[1])
            for signature in given:
                valid |= hmac.compare_digest(expected, signature)
        if not valid:
            raise AuthFailed("signature does not match")
        if self.replays.seen(message_id):
            raise AuthFailed("replayed webhook-id: this message was already accepted")
        return message_id

    def accepted(self, message_id: str | None) -> None:
        """Called once the event is stored: only then does its id count, so a retry after a 503 passes."""
        if message_id is not None:
            self.replays.remember(message_id)


def _v1_signatures(header: str) -> list[bytes]:
    signatures = []
    for entry in header.split():
        version, _, value = entry.partition(",")
        if version != "v1":
            continue  # verifiers skip versions they do not know (v1a, future ones)
        try:
            signatures.append(binascii.a2b_base64(value, strict_mode=True))
        except (binascii.Error, ValueError):
            continue
    return signatures


Authenticator = TokenAuth | StandardWebhooksAuth


def build_authenticator(settings: Settings) -> tuple[Authenticator | None, list[FieldProblem]]:
    """None means no authentication (mode none, loopback only). Fails closed: problems name the key, never a secret."""
    auth = settings.auth
    secrets = [secret.get_secret_value() for secret in auth.secrets]
    if auth.mode is None:
        return None, [
            {
                "field": "auth.mode",
                "message": "is not set: choose standard-webhooks or token "
                "(or none, which only a loopback server.host accepts)",
            }
        ]
    if auth.mode == "none":
        if settings.server.is_loopback:
            return None, []
        return None, [
            {
                "field": "server.host",
                "message": f"{settings.server.host} is not a loopback address: "
                "refusing unauthenticated callbacks from the network (auth.mode is none)",
            }
        ]
    problems: list[FieldProblem] = [
        {"field": f"auth.secrets[{i}]", "message": "is empty (an unset environment variable?)"}
        for i, secret in enumerate(secrets)
        if not secret
    ]
    if not secrets:
        problems.append({"field": "auth.secrets", "message": f"auth.mode {auth.mode} needs at least one secret"})
    if problems:
        return None, problems
    if auth.mode == "token":
        return TokenAuth(secrets), []
    for i, secret in enumerate(secrets):
        try:
            Webhook(secret)
        except (binascii.Error, ValueError, EmptyWebhookSecretError):
            problems.append(
                {
                    "field": f"auth.secrets[{i}]",
                    "message": "is not a Standard Webhooks secret (whsec_ followed by base64)",
                }
            )
    if problems:
        return None, problems
    return StandardWebhooksAuth(secrets, auth.tolerance_seconds), []
