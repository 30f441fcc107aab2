"""Notification rules (SPEC §5), compiled once at load.

Every regex, template and target name is checked here, so a bad rule fails `check-config` and `serve`
with its key path instead of failing a delivery hours later. Matching is then pure and cheap.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import jinja2

from notifiers.render import make_environment
from receiver.models import TERMINAL, Job, JobStatus
from receiver.settings import RuleSettings, Settings
from receiver.validation import FieldProblem

MatchKey = Literal["status", "jobType", "accountId", "error_code"]
ALL_STATUSES: tuple[str, ...] = tuple(status.value for status in JobStatus)
DEFAULT_RULE_NAME = "default"
DEFAULT_TARGET = "console"

# A literal value that cannot look like what a valid job carries would make its rule dead: say so at load.
_LITERAL_SHAPES: dict[str, tuple[re.Pattern[str], str]] = {
    "jobType": (re.compile(r"[A-Za-z]+Job"), "job types look like SomethingJob"),
    "accountId": (re.compile(r"[1-9A-HJ-NP-Za-km-z]{7}"), "account ids are 7 base58 characters"),
    "error_code": (re.compile(r"[a-z0-9_]{1,255}"), "error codes are lowercase letters, digits and _"),
}


@dataclass(frozen=True)
class ValueMatcher:
    """One value of a match key: a literal, or (written `~regex`) a pattern that must match in full."""

    text: str
    pattern: re.Pattern[str] | None = None

    def matches(self, value: str | None) -> bool:
        if value is None:  # a missing value (no error) never equals anything
            return False
        if self.pattern is not None:
            return self.pattern.fullmatch(value) is not None
        return value == self.text


@dataclass(frozen=True)
class KeyMatcher:
    """One match key: (no positive values, or any of them matches) and none of the `!` values matches."""

    key: MatchKey
    include: tuple[ValueMatcher, ...] = ()
    exclude: tuple[ValueMatcher, ...] = ()

    def matches(self, value: str | None) -> bool:
        if self.include and not any(m.matches(value) for m in self.include):
            return False
        return not any(m.matches(value) for m in self.exclude)


@dataclass(frozen=True)
class CompiledRule:
    """A rule ready to match and render. `index` is its position in `rules` (0 for the built-in default)."""

    name: str
    index: int
    targets: tuple[str, ...]
    stop: bool = False
    matchers: tuple[KeyMatcher, ...] = ()
    title: jinja2.Template | None = None
    body: jinja2.Template | None = None
    group_by: tuple[str, ...] = ()
    group_wait: float = 30.0
    group_interval: float = 300.0

    @property
    def path(self) -> str:
        """The rule's key path in the config, for messages: `rules[0]`."""
        return f"rules[{self.index}]"

    def matches(self, job: Job) -> bool:
        values = job_values(job)
        return all(m.matches(values[m.key]) for m in self.matchers)

    def accepts_status(self, status: str) -> bool:
        """Whether the `status` key alone lets `status` through (no status key: every status does)."""
        return all(m.matches(status) for m in self.matchers if m.key == "status")


def job_values(job: Job) -> dict[str, str | None]:
    """The values match keys look at; `error_code` is None for a job without an error."""
    return {
        "status": job.status.value,
        "jobType": job.jobType,
        "accountId": job.accountId,
        "error_code": job.error.code if job.error is not None else None,
    }


def default_rule(settings: Settings) -> CompiledRule:
    """What runs with no `rules`: every terminal status to the built-in `console` target."""
    terminal = tuple(ValueMatcher(status.value) for status in JobStatus if status in TERMINAL)
    return CompiledRule(DEFAULT_RULE_NAME, 0, (DEFAULT_TARGET,), matchers=(KeyMatcher("status", include=terminal),))


def compile_rules(settings: Settings) -> tuple[list[CompiledRule], list[FieldProblem]]:
    """Compile every rule, collecting every problem by key path; rules with problems are left out."""
    if not settings.rules:
        return [default_rule(settings)], []
    environment = make_environment()
    rules: list[CompiledRule] = []
    problems: list[FieldProblem] = []
    first_with_name: dict[str, int] = {}
    for index, rule_settings in enumerate(settings.rules):
        before = len(problems)
        name = rule_settings.name or f"rules[{index}]"
        if name in first_with_name:
            problems.append(
                _problem(index, "name", f"duplicate rule name {name!r} (also rules[{first_with_name[name]}])")
            )
        first_with_name.setdefault(name, index)
        rule = _compile_rule(index, name, rule_settings, settings, environment, problems)
        if len(problems) == before:
            rules.append(rule)
    return rules, problems


def _problem(index: int, field: str, message: str) -> FieldProblem:
    return {"field": f"rules[{index}].{field}", "message": message}


def _compile_rule(
    index: int,
    name: str,
    rule: RuleSettings,
    settings: Settings,
    environment: jinja2.Environment,
    problems: list[FieldProblem],
) -> CompiledRule:
    targets = _targets(index, rule, settings, problems)
    matchers = tuple(
        _key_matcher(index, key, [raw] if isinstance(raw, str) else raw, problems) for key, raw in rule.match.items()
    )
    templates = {
        field: _template(index, field, source, environment, problems)
        for field, source in (("title", rule.title), ("body", rule.body))
    }
    return CompiledRule(
        name=name,
        index=index,
        targets=targets,
        stop=rule.stop,
        matchers=matchers,
        title=templates["title"],
        body=templates["body"],
        group_by=tuple(rule.group_by),
        group_wait=rule.group_wait,
        group_interval=rule.group_interval,
    )


def _targets(index: int, rule: RuleSettings, settings: Settings, problems: list[FieldProblem]) -> tuple[str, ...]:
    names = [rule.notify] if isinstance(rule.notify, str) else rule.notify
    if not names:
        problems.append(_problem(index, "notify", "names no target"))
    configured = ", ".join(sorted(settings.targets)) or "(none)"
    for target in names:
        if target not in settings.targets:
            problems.append(_problem(index, "notify", f"unknown target {target!r}; configured: {configured}"))
    return tuple(dict.fromkeys(names))  # a target named twice in one rule still gets one delivery


def _key_matcher(index: int, key: MatchKey, values: list[str], problems: list[FieldProblem]) -> KeyMatcher:
    field = f"match.{key}"
    if not values:
        problems.append(_problem(index, field, "empty list; omit the key to match any value"))
    include: list[ValueMatcher] = []
    exclude: list[ValueMatcher] = []
    for raw in values:
        negated = raw.startswith("!")
        text = raw[1:] if negated else raw
        problem = _value_problem(key, text)
        if problem is not None:
            problems.append(_problem(index, field, problem))
            continue
        matcher = ValueMatcher(text, re.compile(text[1:]) if text.startswith("~") else None)
        (exclude if negated else include).append(matcher)
    return KeyMatcher(key, tuple(include), tuple(exclude))


def _value_problem(key: MatchKey, text: str) -> str | None:
    """Why `text` (a match value without its `!`) cannot work, or None."""
    if text.startswith("~"):
        try:
            pattern = re.compile(text[1:])
        except re.error as exc:
            return f"invalid regex {text!r}: {exc}"
        if key == "status" and not any(pattern.fullmatch(status) for status in ALL_STATUSES):
            return f"regex {text!r} matches no status; statuses: {', '.join(ALL_STATUSES)}"
        return None
    if not text:
        return "empty value"
    if key == "status":
        if text in ALL_STATUSES:
            return None
        close = difflib.get_close_matches(text, ALL_STATUSES, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"statuses: {', '.join(ALL_STATUSES)}"
        return f"unknown status {text!r}; {hint}"
    shape, rule = _LITERAL_SHAPES[key]
    if shape.fullmatch(text) is None:
        return f"{key} {text!r} can never match: {rule} (use ~regex for a pattern)"
    return None


def _template(
    index: int, field: str, source: str | None, environment: jinja2.Environment, problems: list[FieldProblem]
) -> jinja2.Template | None:
    if source is None:
        return None
    try:
        return environment.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        problems.append(_problem(index, field, f"invalid template: {exc.message or exc} (line {exc.lineno})"))
        return None


def match(rules: Sequence[CompiledRule], job: Job) -> list[tuple[CompiledRule, str]]:
    """(rule, target) pairs to deliver, in rule then target order; a matching `stop: true` rule ends the walk.

    The same target under two matching rules gives two pairs: one delivery per rule x target (SPEC §2).
    """
    pairs: list[tuple[CompiledRule, str]] = []
    for rule in rules:
        if not rule.matches(job):
            continue
        pairs.extend((rule, target) for target in rule.targets)
        if rule.stop:
            break
    return pairs


def notifiable_statuses(rules: Iterable[CompiledRule]) -> frozenset[str]:
    """The statuses any rule can match, judging by its `status` key alone: which transitions need an outbox row."""
    rules = list(rules)
    return frozenset(status for status in ALL_STATUSES if any(rule.accepts_status(status) for rule in rules))
