"""One redactor for every text that may leave the process: logs, delivery errors, the API, the database.

apprise's `url(privacy=True)` masks passwords and path tokens but leaves `+Header` values and extra query
parameters readable, and error texts may quote anything. So we collect the secrets we know of (from the
configured URLs and the auth/admin/source settings) and mask them, in raw and URL-encoded forms, plus a few
generic shapes (`user:pass@` in URLs, `Bearer ...`, `whsec_...`, `secret_...`) that need no prior knowledge.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import quote, quote_plus, unquote, unquote_plus

from receiver.logs import record_fields

if TYPE_CHECKING:
    from receiver.settings import Settings

MASK = "****"
MIN_SECRET_LENGTH = 4  # shorter strings would mask ordinary text everywhere

# Schemes whose host is a real host name and whose path is an ordinary endpoint path; elsewhere (slack://,
# discord://, tgram://, ...) apprise puts tokens in the host and path slots.
_PLAIN_SCHEMES = frozenset(
    {"json", "jsons", "xml", "xmls", "form", "forms", "mailto", "mailtos", "http", "https", "console"}
)
_SECRET_KEYS = frozenset(
    {"token", "key", "apikey", "api_key", "password", "pass", "secret", "webhook", "access_token", "auth"}
)
_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>.*)$", re.DOTALL)
_PORT = re.compile(r":\d*$")
_PLAIN_WORD = re.compile(r"[a-z]+(?:[-_][a-z]+)*")
_HOSTNAME = re.compile(r"(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,24}\.?|\d{1,3}(?:\.\d{1,3}){3}|\[[0-9A-Fa-f:.]+\]|localhost")
_EMAIL = re.compile(r"[^@\s/]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_AUTH_SCHEME = re.compile(r"^(?:Bearer|Basic|Token)\s+(?P<credential>\S+)$", re.IGNORECASE)

# Secrets recognisable by shape alone, for text whose secrets were never configured with us.
_USERINFO = re.compile(r"(?P<prefix>\b[A-Za-z][A-Za-z0-9+.-]*://[^:/@?#\s]*):(?P<password>[^@/?#\s]+)@")
_GENERIC = re.compile(
    r"(?P<prefix>\b(?:Bearer|Basic)(?:\s+|%20|\+)|\bwhsec_|\bsecret_|\bxox[abposr]-)(?P<credential>[A-Za-z0-9._~+/=-]+)",
    re.IGNORECASE,
)


def _variants(value: str) -> set[str]:
    """The forms a value may take in text: as configured, decoded, and re-encoded the ways apprise and HTTP do."""
    forms = {value, unquote(value), unquote_plus(value)}
    for form in list(forms):
        forms |= {quote(form, safe=""), quote(form), quote_plus(form)}
    return {form for form in forms if form}


def _is_plain_word(value: str) -> bool:
    return _PLAIN_WORD.fullmatch(value) is not None


def _looks_like_token(value: str, *, service: bool) -> bool:
    """Path/host parts of service URLs are tokens even when short; elsewhere only token-shaped parts are."""
    if not value or value.startswith(("#", "@", "%23")) or _HOSTNAME.fullmatch(value) or _EMAIL.fullmatch(value):
        return False  # channels (#alerts), users (@bob), host names and e-mail addresses are addresses, not secrets
    if service:
        return len(value) >= 8 or (len(value) >= MIN_SECRET_LENGTH and not _is_plain_word(value))
    return len(value) >= 6 and not _is_plain_word(value)


def secrets_in_url(url: str) -> set[str]:
    """The secret-bearing parts of an apprise URL, raw and URL-decoded (and re-encoded).

    Password, token-like host/path parts (all of them for service schemes such as slack://), and the values of
    `+Header` / `-param` query entries and of credential-named parameters (`token=`, `apikey=`, ...). The user
    name is kept (it is an address), unless it is shaped like a generated key. Something that does not parse as
    a URL at all is treated as one secret when it looks like a token, since it may be a bare credential.
    """
    url = url.strip()
    match = _URL.match(url)
    if match is None:
        return _variants(url) if _looks_like_token(url, service=True) else set()
    scheme = match.group("scheme").lower()
    service = scheme not in _PLAIN_SCHEMES
    rest = match.group("rest")
    locator, _, query = rest.partition("?")
    authority, _, path = locator.partition("/")
    userinfo, at, hostport = authority.rpartition("@")
    if not at:
        userinfo, hostport = "", authority

    found: set[str] = set()
    user, colon, password = userinfo.partition(":")
    if colon and password:
        found |= _variants(password)
    if user and service and len(user) >= 16 and re.search(r"\d", user) and re.search(r"[A-Za-z]", user):
        found |= _variants(user)  # e.g. pover://USERKEY@TOKEN: a generated key, not a name

    host = hostport if hostport.startswith("[") else _PORT.sub("", hostport)
    if service and _looks_like_token(unquote(host), service=True):
        found |= _variants(host)
    for segment in path.split("/"):
        if _looks_like_token(unquote(segment), service=service):
            found |= _variants(segment)

    for item in query.split("&"):
        key, equals, value = item.partition("=")
        key = unquote(key).strip()
        if equals and value and (key.startswith(("+", "-")) or key.lower() in _SECRET_KEYS):
            for form in _variants(value):
                found.add(form)
                credential = _AUTH_SCHEME.match(form)
                if credential:  # "Bearer tok": the bare token may be quoted on its own elsewhere
                    found |= _variants(credential.group("credential"))
    return {secret for secret in found if len(secret) >= MIN_SECRET_LENGTH}


class Redactor:
    """Masks known secrets (longest first, so a secret containing another goes whole) and generic secret shapes."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        known: set[str] = set()
        for secret in secrets:
            if secret and len(secret.strip()) >= MIN_SECRET_LENGTH:
                known |= {form for form in _variants(secret) if len(form) >= MIN_SECRET_LENGTH}
        self._secrets = frozenset(known)
        ordered = sorted(known, key=lambda s: (-len(s), s))
        self._known = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __len__(self) -> int:
        return len(self._secrets)

    def __contains__(self, secret: object) -> bool:
        return secret in self._secrets

    @classmethod
    def from_urls(cls, urls: Iterable[str], extra: Iterable[str] = ()) -> Redactor:
        """The secrets of these apprise URLs (see `secrets_in_url`) plus `extra` plain secrets."""
        found: set[str] = set(extra)
        for url in urls:
            found |= secrets_in_url(url)
        return cls(found)

    @classmethod
    def from_settings(cls, settings: Settings) -> Redactor:
        """Every secret the configuration holds: target URLs, auth secrets, the admin token, source API keys."""
        urls: list[str] = []
        for target in settings.targets.values():
            value = target if isinstance(target, str | list) else target.urls
            urls += [value] if isinstance(value, str) else value
        extra = [s.get_secret_value() for s in settings.auth.secrets]
        extra += [s.removeprefix("whsec_") for s in extra if s.startswith("whsec_")]
        extra.append(settings.admin.token.get_secret_value())
        sources = settings.sources.bytescale
        for source in sources if isinstance(sources, list) else [sources]:
            key = source.api_key.get_secret_value()
            extra += [key, key.removeprefix("secret_")]
        return cls.from_urls(urls, extra)

    def redact(self, text: str) -> str:
        """`text` with every known secret and every generic secret shape replaced by `****`."""
        if self._known is not None:
            text = self._known.sub(MASK, text)
        if "@" in text and "://" in text:  # what _USERINFO needs; most text (a log line a request) has neither
            text = _USERINFO.sub(lambda m: f"{m.group('prefix')}:{MASK}@", text)
        if _may_hold_generic(text):
            text = _GENERIC.sub(_mask_credential, text)
        return text


_GENERIC_HINTS = ("bearer", "basic", "whsec_", "secret_", "xox")


def _may_hold_generic(text: str) -> bool:
    """False only when _GENERIC cannot match: ASCII text (where lower() is exact) without any of its prefixes.

    The substring tests cost a fifth of the regex scan, and a log line is redacted for every request.
    """
    if not text.isascii():
        return True
    lowered = text.lower()
    return any(hint in lowered for hint in _GENERIC_HINTS)


def _mask_credential(match: re.Match[str]) -> str:
    """`Bearer abc123...` -> `Bearer ****`, but `Basic authentication failed` and `secret_key` stay readable."""
    credential = match.group("credential")
    if len(credential) < MIN_SECRET_LENGTH or _is_plain_word(credential):
        return match[0]
    prefix = match.group("prefix")
    return (prefix if prefix[0] in "Bb" else "") + MASK


class RedactingFilter(logging.Filter):
    """Applies the redactor to every log record, whoever wrote it (jobhook, aiohttp, apprise)."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.redactor.redact(message)
        fields = record_fields(record)  # a receiver.logs.Template's arguments are JSON fields too
        if fields:
            if redacted != message:  # a secret somewhere in the message: mask each field on its own too
                fields = {name: self.redactor.redact(v) if isinstance(v, str) else v for name, v in fields.items()}
            record.fields = fields
        record.msg, record.args = redacted, None  # formatted once: the formatter's getMessage() reuses it
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor.redact(record.exc_text)
        return True
