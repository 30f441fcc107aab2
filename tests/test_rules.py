"""Rule compilation and matching (SPEC §5): a table of rules x jobs -> (rule, target) pairs, and load-time problems."""

from __future__ import annotations

import json
from typing import Any

import pytest

from notifiers.rules import CompiledRule, compile_rules, match, notifiable_statuses
from receiver.models import Job
from receiver.settings import Settings
from tests.jobs import CURRENT_SHAPE, SEED_EXAMPLE, job

TARGETS = {"console": "console://", "ops-slack": "slack://T/B/C", "pager": "json://localhost/pager"}
ALL = {"Created", "Pending", "Running", "Rollback", "Cancelling", "Succeeded", "Failed", "Cancelled"}
NOT_FOUND = {"code": "file_not_found", "message": "File not found."}


def settings(rules: list[dict[str, Any]], targets: dict[str, Any] | None = None) -> Settings:
    return Settings.model_validate({"targets": TARGETS if targets is None else targets, "rules": rules})


def compiled(rules: list[dict[str, Any]], targets: dict[str, Any] | None = None) -> list[CompiledRule]:
    result, problems = compile_rules(settings(rules, targets))
    assert problems == []
    return result


def as_job(payload: dict[str, Any]) -> Job:
    return Job.model_validate_json(json.dumps(payload))  # strict model: JSON input, as the store hands it over


def pairs(rules: list[CompiledRule], payload: dict[str, Any]) -> list[tuple[str, str]]:
    return [(rule.name, target) for rule, target in match(rules, as_job(payload))]


def one(match_: dict[str, Any], **extra: Any) -> list[dict[str, Any]]:
    return [{"name": "r", "match": match_, "notify": "console", **extra}]


HIT = [("r", "console")]

MATCH_CASES: list[tuple[str, list[dict[str, Any]], dict[str, Any], list[tuple[str, str]]]] = [
    ("no match keys = any job", one({}), job(status="Running"), HIT),
    ("status value", one({"status": "Failed"}), job(status="Failed"), HIT),
    ("status value, other status", one({"status": "Failed"}), job(status="Succeeded"), []),
    ("status list, any of", one({"status": ["Failed", "Cancelled"]}), job(status="Cancelled"), HIT),
    ("status list, none of", one({"status": ["Failed", "Cancelled"]}), job(status="Running"), []),
    ("values are case-sensitive", one({"jobType": "copyFileBatchJob"}), job(), []),
    ("regex full-matches", one({"jobType": "~Delete.*"}), job(jobType="DeleteFolderBatchJob"), HIT),
    ("regex prefix alone is no match", one({"jobType": "~Delete"}), job(jobType="DeleteFolderBatchJob"), []),
    ("regex alternation", one({"jobType": "~(Copy|Delete)File.*"}), job(jobType="CopyFileBatchJob"), HIT),
    ("future job type by regex", one({"jobType": "~Process.*Job"}), CURRENT_SHAPE, HIT),
    ("negation excludes", one({"status": "!Running"}), job(status="Running"), []),
    ("negation lets others through", one({"status": "!Running"}), job(status="Failed"), HIT),
    ("negated regex excludes", one({"jobType": "!~Copy.*"}), job(jobType="CopyFolderBatchJob"), []),
    ("negated regex lets others through", one({"jobType": "!~Copy.*"}), job(jobType="DeleteFileBatchJob"), HIT),
    (
        "positive and negative together",
        one({"jobType": ["~.*BatchJob", "!DeleteFileBatchJob"]}),
        job(jobType="DeleteFileBatchJob"),
        [],
    ),
    ("positive and negative, allowed", one({"jobType": ["~.*BatchJob", "!DeleteFileBatchJob"]}), job(), HIT),
    ("negative alone ignores missing value", one({"error_code": "!file_not_found"}), job(), HIT),
    ("error_code present", one({"error_code": "file_not_found"}), job(status="Failed", error=NOT_FOUND), HIT),
    ("error_code other code", one({"error_code": "quota_exceeded"}), job(status="Failed", error=NOT_FOUND), []),
    ("error_code absent never matches a value", one({"error_code": "file_not_found"}), job(status="Failed"), []),
    ("error_code absent never matches a regex", one({"error_code": "~.*"}), job(error=None), []),
    ("error_code any-code regex", one({"error_code": "~.*"}), CURRENT_SHAPE, HIT),
    ("error_code negated regex: jobs without error", one({"error_code": "!~.*"}), job(), HIT),
    ("error_code negated regex excludes errors", one({"error_code": "!~.*"}), SEED_EXAMPLE, []),
    ("error_code negation, other code", one({"error_code": "!quota_exceeded"}), SEED_EXAMPLE, HIT),
    ("accountId", one({"accountId": "A623uY2"}), SEED_EXAMPLE, HIT),
    ("accountId other", one({"accountId": "W142hJk"}), SEED_EXAMPLE, []),
    ("all keys must match", one({"status": "Cancelled", "jobType": "DeleteFileBatchJob"}), SEED_EXAMPLE, HIT),
    ("one key failing fails the rule", one({"status": "Failed", "jobType": "DeleteFileBatchJob"}), SEED_EXAMPLE, []),
    (
        "several targets, in order",
        [{"name": "r", "notify": ["pager", "ops-slack", "console"]}],
        job(),
        [("r", "pager"), ("r", "ops-slack"), ("r", "console")],
    ),
    (
        "a target named twice in one rule: one delivery",
        [{"name": "r", "notify": ["pager", "pager"]}],
        job(),
        [("r", "pager")],
    ),
    (
        "every matching rule fires, in order",
        [
            {"name": "a", "match": {"status": "Failed"}, "notify": "pager"},
            {"name": "b", "match": {"status": "Running"}, "notify": "pager"},
            {"name": "c", "notify": ["ops-slack", "pager"]},
        ],
        job(status="Failed"),
        [("a", "pager"), ("c", "ops-slack"), ("c", "pager")],
    ),
    (
        "same target under two rules: two pairs",
        [{"name": "a", "notify": "console"}, {"name": "b", "notify": "console"}],
        job(),
        [("a", "console"), ("b", "console")],
    ),
    (
        "a matching stop rule fires and ends the walk",
        [
            {"name": "a", "notify": "console"},
            {"name": "b", "match": {"status": "Failed"}, "notify": "pager", "stop": True},
            {"name": "c", "notify": "ops-slack"},
        ],
        job(status="Failed"),
        [("a", "console"), ("b", "pager")],
    ),
    (
        "a stop rule that does not match stops nothing",
        [
            {"name": "b", "match": {"status": "Failed"}, "notify": "pager", "stop": True},
            {"name": "c", "notify": "ops-slack"},
        ],
        job(status="Succeeded"),
        [("c", "ops-slack")],
    ),
    (
        "unnamed rules are named by position",
        [{"match": {"status": "Running"}, "notify": "console"}, {"notify": "pager"}],
        job(status="Failed"),
        [("rules[1]", "pager")],
    ),
]


@pytest.mark.parametrize(
    ("rules", "payload", "expected"), [c[1:] for c in MATCH_CASES], ids=[c[0] for c in MATCH_CASES]
)
def test_match(rules: list[dict[str, Any]], payload: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert pairs(compiled(rules), payload) == expected


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("Failed", [("default", "console")]),
        ("Succeeded", [("default", "console")]),
        ("Cancelled", [("default", "console")]),
        ("Running", []),
        ("Created", []),
        ("Cancelling", []),
    ],
)
def test_default_rule_notifies_terminal_statuses_on_console(status: str, expected: list[tuple[str, str]]) -> None:
    rules = compiled([], {"console": "console://", "ops-slack": "slack://T/B/C"})
    assert [rule.name for rule in rules] == ["default"]
    assert pairs(rules, job(status=status)) == expected


def test_default_rule_uses_the_built_in_console_even_when_targets_omit_it() -> None:
    rules = compiled([], {"ops-slack": "slack://T/B/C", "pager": "json://localhost/pager"})
    assert pairs(rules, job(status="Failed")) == [("default", "console")]


def test_default_rule_with_built_in_targets() -> None:
    rules, problems = compile_rules(Settings())
    assert problems == []
    assert pairs(rules, SEED_EXAMPLE) == [("default", "console")]


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        ([], {"Succeeded", "Failed", "Cancelled"}),
        ([{"notify": "console"}], ALL),
        ([{"match": {"jobType": "~Delete.*"}, "notify": "console"}], ALL),
        ([{"match": {"status": "Failed"}, "notify": "console"}], {"Failed"}),
        ([{"match": {"status": ["Failed", "Running"]}, "notify": "console"}], {"Failed", "Running"}),
        ([{"match": {"status": "~Cancel.*"}, "notify": "console"}], {"Cancelling", "Cancelled"}),
        ([{"match": {"status": "!Created"}, "notify": "console"}], ALL - {"Created"}),
        ([{"match": {"status": ["~.*ed", "!~Cancel.*"]}, "notify": "console"}], {"Created", "Succeeded", "Failed"}),
        (
            [
                {"match": {"status": "Failed", "jobType": "CopyFileBatchJob"}, "notify": "console"},
                {"match": {"status": "Pending"}, "notify": "pager"},
            ],
            {"Failed", "Pending"},
        ),
    ],
)
def test_notifiable_statuses(rules: list[dict[str, Any]], expected: set[str]) -> None:
    assert notifiable_statuses(compiled(rules)) == expected


def test_compiled_rule_carries_settings() -> None:
    [rule] = compiled(
        [
            {
                "name": "burst",
                "notify": "pager",
                "stop": True,
                "title": "{{ job.jobId }}",
                "group_by": ["jobType", "error_code"],
                "group_wait": "10s",
                "group_interval": "2m",
            }
        ]
    )
    assert (rule.name, rule.index, rule.targets, rule.stop, rule.path) == ("burst", 0, ("pager",), True, "rules[0]")
    assert (rule.group_by, rule.group_wait, rule.group_interval) == (("jobType", "error_code"), 10.0, 120.0)
    assert rule.title is not None and rule.body is None


PROBLEM_CASES: list[tuple[str, list[dict[str, Any]], list[tuple[str, str]]]] = [
    (
        "unknown target",
        [{"notify": ["console", "ops-slak"]}],
        [("rules[0].notify", "unknown target 'ops-slak'; configured: console, ops-slack, pager")],
    ),
    ("no target", [{"notify": []}], [("rules[0].notify", "names no target")]),
    (
        "bad regex",
        [{"notify": "console"}, {"match": {"status": ["Failed", "~("]}, "notify": "console"}],
        [("rules[1].match.status", "invalid regex '~(': missing ), unterminated subpattern")],
    ),
    (
        "bad negated regex",
        [{"match": {"jobType": "!~[a-"}, "notify": "console"}],
        [("rules[0].match.jobType", "invalid regex '~[a-'")],
    ),
    (
        "unknown status",
        [{"match": {"status": "Faild"}, "notify": "console"}],
        [("rules[0].match.status", "unknown status 'Faild'; did you mean 'Failed'?")],
    ),
    (
        "unknown negated status",
        [{"match": {"status": ["Failed", "!running"]}, "notify": "console"}],
        [("rules[0].match.status", "unknown status 'running'")],
    ),
    (
        "status regex matching no status",
        [{"match": {"status": "~fail.*"}, "notify": "console"}],
        [("rules[0].match.status", "regex '~fail.*' matches no status")],
    ),
    (
        "empty list",
        [{"match": {"status": []}, "notify": "console"}],
        [("rules[0].match.status", "empty list; omit the key to match any value")],
    ),
    (
        "empty value",
        [{"match": {"error_code": "!"}, "notify": "console"}],
        [("rules[0].match.error_code", "empty value")],
    ),
    (
        "jobType that no job can have",
        [{"match": {"jobType": "DeleteFolderBatch"}, "notify": "console"}],
        [("rules[0].match.jobType", "jobType 'DeleteFolderBatch' can never match")],
    ),
    (
        "a literal is not a regex",
        [{"match": {"jobType": "CopyFile.*"}, "notify": "console"}],
        [
            (
                "rules[0].match.jobType",
                "jobType 'CopyFile.*' can never match: job types look like SomethingJob (use ~regex",
            )
        ],
    ),
    (
        "accountId that no job can have",
        [{"match": {"accountId": "YOUR_ACCOUNT_ID"}, "notify": "console"}],
        [("rules[0].match.accountId", "accountId 'YOUR_ACCOUNT_ID' can never match")],
    ),
    (
        "error_code that no job can have",
        [{"match": {"error_code": "FileNotFound"}, "notify": "console"}],
        [("rules[0].match.error_code", "error_code 'FileNotFound' can never match")],
    ),
    ("bad title", [{"notify": "console", "title": "{{ job.jobId "}], [("rules[0].title", "invalid template: ")]),
    ("bad body", [{"notify": "console", "body": "{% if x %}never closed"}], [("rules[0].body", "invalid template: ")]),
    (
        "unknown filter",
        [{"notify": "console", "body": "{{ x | nosuchfilter }}"}],
        [("rules[0].body", "invalid template: No filter named 'nosuchfilter'")],
    ),
    (
        "duplicate name",
        [{"name": "a", "notify": "console"}, {"name": "a", "notify": "pager"}],
        [("rules[1].name", "duplicate rule name 'a' (also rules[0])")],
    ),
    (
        "every problem is collected",
        [
            {
                "name": "x",
                "match": {"status": ["Faild", "~("], "jobType": "~)"},
                "notify": ["nope", "console"],
                "title": "{{",
                "body": "{% end %}",
            },
            {"match": {"error_code": "~["}, "notify": "also-nope"},
        ],
        [
            ("rules[0].notify", "unknown target 'nope'"),
            ("rules[0].match.status", "unknown status 'Faild'"),
            ("rules[0].match.status", "invalid regex '~('"),
            ("rules[0].match.jobType", "invalid regex '~)'"),
            ("rules[0].title", "invalid template"),
            ("rules[0].body", "invalid template"),
            ("rules[1].notify", "unknown target 'also-nope'"),
            ("rules[1].match.error_code", "invalid regex '~['"),
        ],
    ),
]


@pytest.mark.parametrize(("rules", "expected"), [c[1:] for c in PROBLEM_CASES], ids=[c[0] for c in PROBLEM_CASES])
def test_compile_problems(rules: list[dict[str, Any]], expected: list[tuple[str, str]]) -> None:
    compiled_rules, problems = compile_rules(settings(rules))
    assert [p["field"] for p in problems] == [field for field, _ in expected]
    for problem, (_, message) in zip(problems, expected, strict=True):
        assert problem["message"].startswith(message), problem
    assert len(compiled_rules) < len(rules)  # a rule with a problem is never handed out


def test_problem_rules_are_left_out_but_good_ones_kept() -> None:
    rules, problems = compile_rules(settings([{"name": "good", "notify": "console"}, {"notify": "nope"}]))
    assert [rule.name for rule in rules] == ["good"]
    assert [p["field"] for p in problems] == ["rules[1].notify"]


def test_console_is_always_a_known_target() -> None:
    _, problems = compile_rules(settings([{"notify": "console"}], targets={}))
    assert problems == []
    _, problems = compile_rules(settings([{"notify": "pager"}], targets={}))
    assert problems == [{"field": "rules[0].notify", "message": "unknown target 'pager'; configured: console"}]
