"""Everything the notifiers need from the configuration, compiled and checked once, at load."""

from __future__ import annotations

from dataclasses import dataclass

from notifiers.redaction import Redactor
from notifiers.retry import RetryPolicy
from notifiers.rules import CompiledRule, compile_rules, notifiable_statuses
from notifiers.targets import Target, load_targets
from receiver.settings import ConfigError, Settings
from receiver.validation import FieldProblem


@dataclass(frozen=True)
class NotifierConfig:
    rules: list[CompiledRule]
    targets: dict[str, Target]
    redactor: Redactor
    policy: RetryPolicy
    lease: float

    @property
    def notify_statuses(self) -> frozenset[str]:
        return notifiable_statuses(self.rules)


def check_notifiers(settings: Settings) -> tuple[NotifierConfig, list[FieldProblem]]:
    """Compile rules and targets; problems name their key path and never a URL or secret."""
    targets, target_problems = load_targets(settings)
    rules, rule_problems = compile_rules(settings)
    delivery = settings.delivery
    config = NotifierConfig(
        rules=rules,
        targets=targets,
        redactor=Redactor.from_settings(settings),
        policy=RetryPolicy.from_settings(delivery),
        lease=delivery.lease if delivery.lease is not None else delivery.timeout + 30,
    )
    return config, target_problems + rule_problems


def load_notifiers(settings: Settings, source: str = "config") -> NotifierConfig:
    config, problems = check_notifiers(settings)
    if problems:
        raise ConfigError(source, problems)
    return config
