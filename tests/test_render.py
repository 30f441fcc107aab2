"""Message rendering: defaults per status for both payload generations, rule templates, and their failure modes."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from notifiers.render import Message, format_duration, make_environment, notify_type_for, render
from notifiers.rules import CompiledRule, compile_rules
from receiver.settings import Settings
from tests.jobs import CURRENT_SHAPE, SEED_EXAMPLE, job


def rule(title: str | None = None, body: str | None = None, name: str | None = None) -> CompiledRule:
    spec: dict[str, Any] = {"notify": "console"}
    spec.update({k: v for k, v in {"title": title, "body": body, "name": name}.items() if v is not None})
    rules, problems = compile_rules(Settings.model_validate({"rules": [spec]}))
    assert problems == []
    return rules[0]


FAILED_SEED = {**SEED_EXAMPLE, "status": "Failed", "jobType": "DeleteFolderBatchJob", "lastUpdated": 1615680311687}


def test_default_failed_2023_shape() -> None:
    message = render(None, FAILED_SEED, "Running")
    assert message.title == "Failed: DeleteFolderBatchJob 01ARZ3NDEKTSV4RRFFQ69G5FAV in A623uY2"
    assert message.notify_type == "failure"
    assert message.body_format == "markdown"
    assert message.body.splitlines() == [
        "- **Job type:** DeleteFolderBatchJob",
        "- **Job ID:** `01ARZ3NDEKTSV4RRFFQ69G5FAV`",
        "- **Account:** `A623uY2`",
        "- **Status:** **Failed** (was Running)",
        "- **Attempts:** 2",
        "- **Error:** `error_code`: Error message.",
        "- **Duration:** 572 ms",
        "- **Last updated:** 2021-03-14 00:05:11 UTC",
    ]
    assert message.template_errors == ()


def test_default_failed_current_shape() -> None:
    message = render(None, CURRENT_SHAPE, None)
    assert message.title == "Failed: ProcessVideoJob 01HGB4G3R466T9EBDVK015JMXS in W142hJk"
    body = message.body
    assert "- **Status:** **Failed** (first seen)" in body
    assert "Attempts" not in body  # the current shape has none
    assert "- **Error:** `file_not_found`: File not found." in body
    assert "- **Duration:** 572 ms" in body
    assert f"- **Job URL:** {CURRENT_SHAPE['jobUrl']}" in body


def test_default_cancelled_seed_example() -> None:
    message = render(None, SEED_EXAMPLE, "Cancelling")
    assert message.title == "Cancelled: DeleteFileBatchJob 01ARZ3NDEKTSV4RRFFQ69G5FAV in A623uY2"
    assert message.notify_type == "warning"
    assert "**Cancelled** (was Cancelling)" in message.body
    assert "- **Duration:** 0 ms" in message.body
    assert "Job URL" not in message.body


@pytest.mark.parametrize(
    "payload",
    [
        job(status="Succeeded", attempts=1, lastUpdated=1700000003400),
        {**CURRENT_SHAPE, "status": "Succeeded", "error": None},
    ],
    ids=["2023", "current"],
)
def test_default_succeeded(payload: dict[str, Any]) -> None:
    message = render(None, payload, "Running")
    assert message.title.startswith(f"Succeeded: {payload['jobType']} {payload['jobId']} in ")
    assert message.notify_type == "success"
    assert "Error" not in message.body
    assert "**Succeeded** (was Running)" in message.body


def test_default_truncates_a_huge_error_message() -> None:
    payload = {**CURRENT_SHAPE, "error": {"code": "boom", "message": "x" * 50_000}}
    assert len(render(None, payload, None).body) < 2000


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("Failed", "failure"),
        ("Succeeded", "success"),
        ("Cancelled", "warning"),
        ("Running", "info"),
        ("Created", "info"),
        ("Pending", "info"),
        ("Rollback", "info"),
        ("Cancelling", "info"),
        (None, "info"),
    ],
)
def test_notify_type(status: str | None, expected: str) -> None:
    assert notify_type_for(status) == expected
    if status is not None:
        assert render(None, job(status=status), None).notify_type == expected


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "0 ms"),
        (572, "572 ms"),
        (999, "999 ms"),
        (1000, "1 s"),
        (1234, "1.2 s"),
        (1250, "1.3 s"),
        (59_940, "59.9 s"),
        (59_960, "1 min"),
        (60_000, "1 min"),
        (184_000, "3 min 4 s"),
        (184_600, "3 min 5 s"),
        (3_599_400, "59 min 59 s"),
        (3_599_700, "1 h"),
        (7_500_000, "2 h 5 min"),
        (86_400_000, "1 d"),
        (100_800_000, "1 d 4 h"),
    ],
)
def test_format_duration(ms: int, text: str) -> None:
    assert format_duration(ms) == text


def test_custom_templates_see_job_and_scope() -> None:
    r = rule(
        title="{{ job.jobType }} {{ job.jobId }} failed",
        body="{{ job.error.code }}: {{ job.error.message }} after {{ duration }} ({{ duration_ms }} ms), "
        "was {{ previous_status }}, rule {{ rule }}, {{ job.summary | length }} summary keys, {{ job.extra }}",
        name="failed-jobs",
    )
    message = render(r, {**CURRENT_SHAPE, "extra": "kept"}, "Running")
    assert message == Message(
        title=f"ProcessVideoJob {CURRENT_SHAPE['jobId']} failed",
        body="file_not_found: File not found. after 572 ms (572 ms), was Running, rule failed-jobs, "
        "0 summary keys, kept",
        notify_type="failure",
    )


@pytest.mark.parametrize("error", [None, "absent"])
def test_missing_error_renders_empty(error: str | None) -> None:
    payload = job(status="Succeeded")
    if error is None:
        payload["error"] = None
    r = rule(body="[{{ job.error.code }}|{{ job.error.message }}|{{ job.error }}|{{ job.nothing.deeper }}]")
    message = render(r, payload, None)
    assert message.body == "[|||]"
    assert message.template_errors == ()


def test_only_one_template_given_keeps_the_other_default() -> None:
    message = render(rule(title="custom"), SEED_EXAMPLE, None)
    assert message.title == "custom"
    assert message.body == render(None, SEED_EXAMPLE, None).body


def test_render_error_falls_back_to_default_with_a_note() -> None:
    message = render(rule(title="{{ 1/0 }}", body="{{ job.jobId }}"), SEED_EXAMPLE, None)
    assert message.title == render(None, SEED_EXAMPLE, None).title
    assert message.body == "01ARZ3NDEKTSV4RRFFQ69G5FAV\n\n(template error in rules[0].title: ZeroDivisionError)"
    assert message.template_errors == ("template error in rules[0].title: ZeroDivisionError",)


def test_both_templates_failing() -> None:
    message = render(rule(title="{{ 1/0 }}", body="{{ job.jobId + 1 }}"), SEED_EXAMPLE, None)
    default = render(None, SEED_EXAMPLE, None)
    assert message.title == default.title
    assert message.body == (
        default.body
        + "\n\n(template error in rules[0].title: ZeroDivisionError)"
        + "\n\n(template error in rules[0].body: TypeError)"
    )


@pytest.mark.parametrize(
    "template",
    [
        "{{ job.__class__.__mro__ }}",
        "{{ job.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ job.items.__self__ }}",
        "{{ job.update({'status': 'Succeeded'}) }}",
        "{{ job.summary.deletions.append('x') }}",
    ],
)
def test_sandbox_escape_is_a_render_error(template: str) -> None:
    payload = copy.deepcopy(SEED_EXAMPLE)
    message = render(rule(body=template), payload, None)
    assert message.template_errors == ("template error in rules[0].body: SecurityError",)
    assert message.body.startswith(render(None, SEED_EXAMPLE, None).body)
    assert "<class" not in message.body and "object" not in message.body
    assert payload == SEED_EXAMPLE  # templates cannot change the stored job


def test_environment() -> None:
    environment = make_environment()
    assert environment.autoescape is False
    assert environment.from_string("{{ '<b>' }}").render() == "<b>"
