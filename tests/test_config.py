"""Configuration: interpolation, defaults, and errors that name the key path (never the value)."""

from __future__ import annotations

from pathlib import Path

import pytest

from receiver.durations import parse_duration
from receiver.settings import ConfigError, Settings, load_settings, parse_settings

REPO = Path(__file__).resolve().parent.parent


def problems_of(text: str, env: dict[str, str] | None = None) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        parse_settings(text, env or {})
    return [(p["field"], p["message"]) for p in caught.value.problems]


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings, path = load_settings(None, {})
    assert path is None
    assert settings.auth.mode == "none"  # built-in defaults: a loopback-only local try
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 8080)
    assert settings.database.url == "sqlite:///data/jobhook.db"
    assert settings.database.synchronous == "full"


def test_config_path_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "jobhook.yaml").write_text("server: {port: 1111}\n")
    (tmp_path / "env.yaml").write_text("server: {port: 2222}\n")
    (tmp_path / "flag.yaml").write_text("server: {port: 3333}\n")
    assert load_settings(None, {})[0].server.port == 1111
    assert load_settings(None, {"JOBHOOK_CONFIG": "env.yaml"})[0].server.port == 2222
    assert load_settings("flag.yaml", {"JOBHOOK_CONFIG": "env.yaml"})[0].server.port == 3333


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(str(tmp_path / "absent.yaml"), {})
    assert caught.value.problems[0]["field"] == "(file)"


def test_interpolation() -> None:
    text = "server:\n  port: ${PORT:-9000}\n  host: ${HOST}\nadmin:\n  token: ${ADMIN:-}\n"
    settings = parse_settings(text, {"HOST": "127.0.0.2"})
    assert (settings.server.port, settings.server.host) == (9000, "127.0.0.2")
    assert settings.admin.token.get_secret_value() == ""
    assert parse_settings(text, {"HOST": "::1", "PORT": "81"}).server.port == 81
    # an empty variable falls back to the default, like the shell's :-
    assert parse_settings(text, {"HOST": "h", "PORT": ""}).server.port == 9000


def test_unset_variable_names_key_and_variable() -> None:
    [(field, message)] = problems_of("auth:\n  secrets: ['${JOBHOOK_SECRET}']\n")
    assert field == "auth.secrets[0]"
    assert "JOBHOOK_SECRET" in message


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("server:\n  prot: 8080\n", "server.prot"),
        ("sever:\n  port: 8080\n", "sever"),
        ("server:\n  port: http\n", "server.port"),
        ("server:\n  port: 70000\n", "server.port"),
        ("database:\n  synchronous: sometimes\n", "database.synchronous"),
        ("database:\n  url: mysql://x\n", "database.url"),
        ("database:\n  url: postgres:/db/jobhook\n", "database.url"),
        ("delivery:\n  backoff_max: soon\n", "delivery.backoff_max"),
        ("delivery:\n  concurrency: 0\n", "delivery.concurrency"),
        ("auth:\n  mode: magic\n", "auth.mode"),
        ("rules:\n  - match: {status: Failed}\n", "rules[0].notify"),
        ("rules:\n  - notify: [console]\n    match: {colour: red}\n", "rules[0].match.colour"),
    ],
)
def test_bad_values_name_the_key_path(text: str, field: str) -> None:
    assert field in [f for f, _ in problems_of(text)]


def test_secret_values_never_appear_in_errors() -> None:
    secret = "whsec_c2VjcmV0LXZhbHVlLXRoYXQtbXVzdC1ub3QtbGVhaw"
    for text in (f"auth:\n  mode: {secret}\n", f"server:\n  port: {secret}\n", f"admin:\n  token: [{secret}]\n"):
        for field, message in problems_of(text):
            assert secret not in field + message


def test_not_yaml_and_not_a_mapping() -> None:
    [(field, _message)] = problems_of("server: [unclosed\n")
    assert field.startswith("line ")
    assert problems_of("- a\n- b\n") == [("(root)", "the configuration must be a mapping of sections")]


def test_empty_file_is_defaults() -> None:
    assert parse_settings("", {}) == Settings()


def test_shipped_configs_are_valid() -> None:
    env = {
        "JOBHOOK_SECRET": "whsec_x",
        "SLACK_WEBHOOK_URL": "slack://a/b/c",
        "SMTP_PASSWORD": "p",
        "BYTESCALE_SECRET_KEY": "secret_x",
    }
    for name in ("jobhook.yaml", "jobhook.example.yaml"):
        parse_settings((REPO / "config" / name).read_text(), env)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("10s", 10), ("5m", 300), ("1h", 3600), ("90d", 7_776_000), (12, 12), ("1.5", 1.5)],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten", "5 weeks", "-1s", True, -3, None])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)
