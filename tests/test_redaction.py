"""Planted secrets never survive `Redactor.redact`, in any form they may take in text; ordinary words do."""

from __future__ import annotations

from urllib.parse import quote, quote_plus

import apprise
import pytest

from notifiers.redaction import Redactor, secrets_in_url
from receiver.settings import Settings

# (URL, the secrets planted in it, ordinary parts that must stay readable)
URLS = [
    (
        "json://127.0.0.1:8080/hook?+Authorization=Bearer%20tok-9f8e7d6c&-X-Token=qtok-55aa11&format=markdown",
        ["tok-9f8e7d6c", "qtok-55aa11"],
        ["127.0.0.1", "hook", "markdown"],
    ),
    (
        "json://user:Sup3r%2FS3cret%40@hooks.internal.example.com/notify/ci?token=tk_0ddba11c",
        ["Sup3r/S3cret@", "tk_0ddba11c"],
        ["user", "hooks.internal.example.com", "notify"],
    ),
    (
        "mailtos://alerts:Pl4nted-Passw0rd@smtp.example.com?to=oncall@example.com&from=jobs@example.com",
        ["Pl4nted-Passw0rd"],
        ["alerts", "smtp.example.com", "oncall@example.com"],
    ),
    ("slack://T1234/B5678/XXXXXXXX/#alerts", ["T1234", "B5678", "XXXXXXXX"], ["#alerts"]),
    (
        "slack://jobhook@T0AAAAAAA/B0BBBBBBB/cccccccccccccccccccccccc",
        ["T0AAAAAAA", "B0BBBBBBB", "cccccccccccccccccccccccc"],
        ["jobhook"],
    ),
    (
        "https://hooks.slack.com/services/T0123ABCD/B0456EFGH/abcdEFGHijklMNOPqrstUVWX",
        ["T0123ABCD", "B0456EFGH", "abcdEFGHijklMNOPqrstUVWX"],
        ["hooks.slack.com", "services"],
    ),
    (
        "discord://1122334455667788990/Zx9_Yw8-Vu7Ts6Rq5Po4Nm3Lk2Ji1",
        ["1122334455667788990", "Zx9_Yw8-Vu7Ts6Rq5Po4Nm3Lk2Ji1"],
        [],
    ),
]
ORDINARY = "Failed: DeleteFolderBatchJob 01ARZ3 in A623uY2 — quota_exceeded: the account quota was exceeded (alerts)"


def privacy_url(url: str) -> str:
    """What apprise itself shows for `url` in its logs and results."""
    plugin = apprise.Apprise.instantiate(url)
    assert plugin is not None
    return str(plugin.url(privacy=True))  # type: ignore[no-untyped-call]


def _forms(secret: str) -> list[str]:
    return [secret, quote(secret, safe=""), quote_plus(secret)]


@pytest.mark.parametrize(
    ("url", "planted", "ordinary"), URLS, ids=[u.split(":")[0] + str(i) for i, (u, *_) in enumerate(URLS)]
)
def test_planted_secrets_never_survive(url: str, planted: list[str], ordinary: list[str]) -> None:
    redactor = Redactor(secrets_in_url(url))
    privacy = privacy_url(url)
    text = "\n".join(
        [
            ORDINARY,
            f"sending to {url}",
            f"apprise says {privacy}",
            *(f"quoted {f}!" for s in planted for f in _forms(s)),
        ]
    )
    redacted = redactor.redact(text)
    for secret in planted:
        for form in _forms(secret):
            assert form not in redacted, (form, redacted)
    assert ORDINARY in redacted
    for word in ordinary:
        assert word in redacted


def test_privacy_url_leaks_that_we_close() -> None:
    """apprise's own privacy URL leaves +Header and -param values readable (notify-anchors §2.6)."""
    url = "json://u:pw-123456@127.0.0.1/x?+Authorization=Bearer%20tok123abc&-X-Token=abcdefgh"
    privacy = privacy_url(url)
    assert "tok123abc" in privacy and "abcdefgh" in privacy
    cleaned = Redactor(secrets_in_url(url)).redact(privacy)
    assert "tok123abc" not in cleaned and "abcdefgh" not in cleaned and "pw-123456" not in cleaned


def test_user_is_kept_and_plain_paths_are_not_secrets() -> None:
    found = secrets_in_url("mailto://alice:hunter2-x@smtp.example.com/ops@example.com?from=a@example.com")
    assert "hunter2-x" in found
    assert not {"alice", "smtp.example.com", "a@example.com"} & found
    assert secrets_in_url("json://localhost:8080/services/hook") == set()
    assert secrets_in_url("console://") == set()


def test_generic_shapes_without_prior_knowledge() -> None:
    redactor = Redactor()
    text = (
        "GET https://bob:s3cr3t-pw@example.com/x with Authorization: Bearer abc.DEF-123_xyz; "
        "signing key whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw, api key secret_12a1yekATwJ6Fc5eqYsMpP, "
        "xoxb-1234-5678-abcdEFGH; Basic authentication failed; the secret_key setting; a Bearer token is needed"
    )
    redacted = redactor.redact(text)
    for secret in (
        "s3cr3t-pw",
        "abc.DEF-123_xyz",
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "12a1yekATwJ6Fc5eqYsMpP",
        "1234-5678",
    ):
        assert secret not in redacted
    assert "https://bob:****@example.com/x" in redacted
    assert "Bearer ****" in redacted
    for phrase in ("Basic authentication failed", "the secret_key setting", "a Bearer token is needed"):
        assert phrase in redacted


def test_longest_secret_goes_whole_and_short_ones_are_ignored() -> None:
    redactor = Redactor(["abcd1234", "abcd1234efgh5678", "abc", ""])
    assert redactor.redact("x abcd1234efgh5678 y abcd1234 z abc") == "x **** y **** z abc"
    assert "abc" not in redactor


def test_from_settings_collects_every_configured_secret() -> None:
    settings = Settings.model_validate(
        {
            "auth": {"mode": "standard-webhooks", "secrets": ["whsec_QUJDREVGR0hJSktMTU5PUA==", "plain-token-77"]},
            "admin": {"token": "adm-0a1b2c3d"},
            "targets": {
                "ops": "slack://T0AAAAAAA/B0BBBBBBB/cccccccccccccccccccccccc",
                "mail": ["mailtos://u:Pl4nted-Passw0rd@smtp.example.com?to=x@example.com"],
                "hook": {"urls": "json://127.0.0.1/x?+X-Api-Key=k3y-998877", "rate_limit": 5},
            },
            "sources": {"bytescale": {"account_id": "A623uY2", "api_key": "secret_ZZZ111yyy222XXX333"}},
        }
    )
    redactor = Redactor.from_settings(settings)
    planted = [
        "whsec_QUJDREVGR0hJSktMTU5PUA==",
        "QUJDREVGR0hJSktMTU5PUA==",
        "plain-token-77",
        "adm-0a1b2c3d",
        "cccccccccccccccccccccccc",
        "Pl4nted-Passw0rd",
        "k3y-998877",
        "secret_ZZZ111yyy222XXX333",
        "ZZZ111yyy222XXX333",
    ]
    redacted = redactor.redact(" | ".join(planted) + " | account A623uY2 target ops")
    for secret in planted:
        assert secret not in redacted
    assert "account A623uY2 target ops" in redacted


def test_default_settings_hold_no_secrets() -> None:
    assert len(Redactor.from_settings(Settings())) == 0
