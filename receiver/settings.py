"""The configuration model (SPEC §5): YAML, `${VAR}` / `${VAR:-default}` from the environment, strict keys.

Every problem is reported with its dotted key path (`rules[0].notify`, `delivery.backoff_max`), and
never with the offending value, which may be a secret.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from receiver.durations import now_ms, parse_duration, parse_time
from receiver.event_loop import EventLoopSetting, uvloop_factory
from receiver.validation import FieldProblem, dotted_path, field_problems

DEFAULT_CONFIG_PATH = Path("config/jobhook.yaml")
Duration = Annotated[float, BeforeValidator(parse_duration)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(256 * 1024, ge=1, le=64 * 1024 * 1024)
    idle_timeout: Duration = 15.0  # to send a complete request, and between requests on one connection
    read_timeout: Duration = 10.0  # to send the body once the headers are in
    max_connections: int = Field(1024, ge=1)
    event_loop: EventLoopSetting = "auto"  # auto: uvloop when it imports, else asyncio

    @field_validator("event_loop")
    @classmethod
    def _loop_available(cls, choice: EventLoopSetting) -> EventLoopSetting:
        if choice == "uvloop" and uvloop_factory() is None:
            raise ValueError("uvloop cannot be imported here (pip install uvloop); use auto or asyncio")
        return choice

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


class DatabaseSettings(_Section):
    url: str = "sqlite:///data/jobhook.db"
    synchronous: Literal["full", "normal"] = "full"
    busy_timeout: Duration = 5.0

    @field_validator("url")
    @classmethod
    def _known_engine(cls, url: str) -> str:
        if url.startswith(("postgres://", "postgresql://")):
            return url
        if not url.startswith("sqlite:///") or url in ("sqlite:///", "sqlite:////"):
            raise ValueError(
                "expected sqlite:///relative/path.db, sqlite:////absolute/path.db or postgresql://user@host/database"
            )
        return url


class AuthSettings(_Section):
    # No default: a configuration must say how callbacks are authenticated (fail closed).
    mode: Literal["standard-webhooks", "token", "none"] | None = None
    secrets: list[SecretStr] = []
    tolerance_seconds: int = Field(300, ge=1)


class AdminSettings(_Section):
    token: SecretStr = SecretStr("")


def _target_shape(value: Any) -> str:
    """Which form of target a value is, so that errors name that form's fields only (see `dotted_path`)."""
    if isinstance(value, dict | TargetSettings):
        return "[mapping]"
    return "[list]" if isinstance(value, list) else "[url]"


Urls = Annotated[
    Annotated[str, Tag("[url]")] | Annotated[list[str], Tag("[list]")],
    Discriminator(
        _target_shape,
        custom_error_type="invalid_urls",
        custom_error_message="expected an apprise URL or a list of them",
    ),
]


class TargetSettings(_Section):
    urls: Urls
    rate_limit: int | None = Field(None, ge=1)  # messages in any 60 s window; more are held, then merged


TargetValue = Annotated[
    Annotated[str, Tag("[url]")] | Annotated[list[str], Tag("[list]")] | Annotated[TargetSettings, Tag("[mapping]")],
    Discriminator(
        _target_shape,
        custom_error_type="invalid_target",
        custom_error_message="expected an apprise URL, a list of them, or a mapping {urls, rate_limit}",
    ),
]


class RuleSettings(_Section):
    name: str | None = None
    match: dict[Literal["status", "jobType", "accountId", "error_code"], str | list[str]] = {}
    notify: str | list[str]
    title: str | None = None
    body: str | None = None
    stop: bool = False
    # Flood control: fold a burst of matching transitions into digests (SPEC §5, §7).
    group_by: list[Literal["jobType", "accountId", "status", "error_code"]] = []
    group_wait: Annotated[Duration, Field(ge=0)] = 30.0
    group_interval: Annotated[Duration, Field(gt=0)] = 300.0

    @field_validator("group_by")
    @classmethod
    def _each_key_once(cls, keys: list[str]) -> list[str]:
        if len(keys) != len(set(keys)):
            raise ValueError("names a key twice")
        return keys


class DeliverySettings(_Section):
    max_attempts: int = Field(10, ge=1)
    backoff_initial: Duration = 10.0
    backoff_factor: float = Field(2.0, ge=1.0)
    backoff_max: Duration = 3600.0
    timeout: Duration = 30.0
    concurrency: int = Field(8, ge=1, le=1024)
    lease: Duration | None = None
    # Circuit breaker per target: after this many consecutive failed sends (timeouts, refusals, 5xx, 429)
    # nothing is sent to the target for `circuit_cooloff`, then one probe. 0 (the default, so that behaviour
    # without flood control stays as it was) turns it off; 5 is a good value.
    circuit_threshold: int = Field(0, ge=0)
    circuit_cooloff: Annotated[Duration, Field(gt=0)] = 30.0


class RetentionSettings(_Section):
    # Epoch ms, ISO 8601 or a duration back from now (SPEC §7); None or "" keeps everything.
    events: str | None = "90d"

    @field_validator("events", mode="before")
    @classmethod
    def _a_time(cls, value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str) and value.strip():
            try:
                parse_time("retention.events", value, now_ms())
            except ValueError:
                raise ValueError(
                    "expected epoch milliseconds, an ISO 8601 time or a duration back from now like 90d"
                ) from None
        return value

    def cutoff(self, now: int) -> int | None:
        """The epoch ms before which events are removed, or None when retention is off."""
        if not self.events or not self.events.strip():
            return None
        return parse_time("retention.events", self.events, now)


class BytescaleSource(_Section):
    account_id: Annotated[str, Field(pattern=r"^[1-9A-HJ-NP-Za-km-z]{7}$")]
    api_key: SecretStr
    job_types: Annotated[list[Annotated[str, Field(pattern=r"^[A-Za-z]+Job$")]], Field(min_length=1)] = [
        "CopyFileBatchJob",
        "CopyFolderBatchJob",
        "DeleteFileBatchJob",
        "DeleteFolderBatchJob",
    ]
    interval: Annotated[Duration, Field(gt=0)] = 15.0
    base_url: Annotated[str, Field(pattern=r"^https?://")] = "https://api.bytescale.com"
    timeout: Annotated[Duration, Field(gt=0)] = 10.0  # per request
    concurrency: int = Field(4, ge=1, le=32)  # requests in flight at once for this account


class SourcesSettings(_Section):
    bytescale: BytescaleSource | list[BytescaleSource] = []

    @property
    def bytescale_accounts(self) -> list[BytescaleSource]:
        return self.bytescale if isinstance(self.bytescale, list) else [self.bytescale]

    @model_validator(mode="after")
    def _one_entry_per_account(self) -> SourcesSettings:
        seen = [source.account_id for source in self.bytescale_accounts]
        if len(seen) != len(set(seen)):
            raise ValueError("each account_id may appear only once in sources.bytescale")
        return self


CONSOLE_TARGET = "console"


class Settings(_Section):
    server: ServerSettings = ServerSettings()
    database: DatabaseSettings = DatabaseSettings()
    auth: AuthSettings = AuthSettings()
    admin: AdminSettings = AdminSettings()
    targets: dict[str, TargetValue] = {"console": "console://"}
    rules: list[RuleSettings] = []
    delivery: DeliverySettings = DeliverySettings()
    retention: RetentionSettings = RetentionSettings()
    sources: SourcesSettings = SourcesSettings()

    @model_validator(mode="after")
    def _console_is_built_in(self) -> Settings:
        # The console target exists even when `targets` does not list it: it is the default.
        self.targets.setdefault(CONSOLE_TARGET, "console://")
        return self


# With no configuration file at all, jobhook runs for a quick local try: loopback, no authentication.
BUILT_IN_DEFAULTS = Settings(auth=AuthSettings(mode="none"))


class ConfigError(Exception):
    """The configuration cannot be used; `problems` says where and why, one item per problem."""

    def __init__(self, source: str, problems: list[FieldProblem]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(f"{p['field']}: {p['message']}" for p in problems))


_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(
    value: Any, env: Mapping[str, str], path: tuple[int | str, ...] = (), problems: list[FieldProblem] | None = None
) -> Any:
    """Replace `${VAR}` and `${VAR:-default}` in every string of a parsed YAML tree."""
    problems = [] if problems is None else problems
    if isinstance(value, dict):
        return {k: interpolate(v, env, (*path, str(k)), problems) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, (*path, i), problems) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env and (env[name] or default is None):
            return env[name]
        if default is not None:
            return default
        problems.append(
            {
                "field": dotted_path(path) or "(root)",
                "message": f"environment variable {name} is not set (use ${{{name}:-default}} for a default)",
            }
        )
        return ""

    return _VARIABLE.sub(substitute, value)


def resolve_config_path(explicit: str | None, env: Mapping[str, str]) -> Path | None:
    """--config, then $JOBHOOK_CONFIG, then config/jobhook.yaml if it exists; None means built-in defaults."""
    if explicit:
        return Path(explicit)
    if env.get("JOBHOOK_CONFIG"):
        return Path(env["JOBHOOK_CONFIG"])
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None


def parse_settings(text: str, env: Mapping[str, str], source: str = "config") -> Settings:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(root)"
        reason = " ".join(str(getattr(exc, "problem", None) or exc).split())  # one line, whatever YAML said
        raise ConfigError(source, [{"field": where, "message": f"not valid YAML: {reason}"}]) from None
    except RecursionError:
        raise ConfigError(source, [{"field": "(root)", "message": "not valid YAML: nested too deeply"}]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [{"field": "(root)", "message": "the configuration must be a mapping of sections"}])
    problems: list[FieldProblem] = []
    data = interpolate(data, env, (), problems)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        problems += field_problems(exc)
        raise ConfigError(source, problems) from None
    if problems:
        raise ConfigError(source, problems)
    return settings


def load_settings(explicit: str | None = None, env: Mapping[str, str] | None = None) -> tuple[Settings, Path | None]:
    """The settings to run with and the file they came from (None: built-in defaults)."""
    env = os.environ if env is None else env
    path = resolve_config_path(explicit, env)
    if path is None:
        return BUILT_IN_DEFAULTS, None
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [{"field": "(file)", "message": f"cannot read: {exc.strerror or exc}"}]) from None
    return parse_settings(text, env, str(path)), path
