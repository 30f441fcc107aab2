"""Malformed configurations through `jobhook check-config`: exit 0 or 2 with `source: key.path: reason` lines,
never a traceback (SPEC §4, §7 "config errors")."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from receiver.cli import main

SECTIONS = {
    "server": ["host", "port", "max_body_bytes", "idle_timeout", "read_timeout", "max_connections"],
    "database": ["url", "synchronous", "busy_timeout"],
    "auth": ["mode", "secrets", "tolerance_seconds"],
    "admin": ["token"],
    "delivery": ["max_attempts", "backoff_initial", "backoff_max", "timeout", "concurrency", "lease"],
    "retention": ["events"],
    "targets": ["console", "hook", "mail"],
    "rules": [],
    "sources": ["bytescale"],
}
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(
        [
            "${UNSET}",
            "${HOME:-x}",
            "${",
            "10s",
            "-1s",
            "1e9d",
            "json://127.0.0.1:1/x",
            "mailto://x",
            "not a url",
            "standard-webhooks",
            "token",
            "none",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "~[",
            "!Failed",
            "{{ job.jobId",
            "sqlite:///",
            "sqlite:////",
            "postgresql://x",
            "0.0.0.0",
        ]
    ),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=10,
)
RULE = st.fixed_dictionaries(
    {},
    optional={
        "name": VALUES,
        "match": st.dictionaries(st.sampled_from(["status", "jobType", "accountId", "error_code", "x"]), VALUES),
        "notify": VALUES | st.sampled_from(["console", ["console", "nope"]]),
        "title": VALUES,
        "body": VALUES,
        "stop": VALUES,
        "group_by": VALUES,
    },
)


@st.composite
def configs(draw: st.DrawFn) -> Any:
    config: dict[str, Any] = {}
    for section in draw(st.lists(st.sampled_from(sorted(SECTIONS)), unique=True, max_size=5)):
        keys = SECTIONS[section]
        if section == "rules":
            config[section] = draw(st.lists(RULE, max_size=3) | VALUES)
        elif draw(st.booleans()) and keys:
            config[section] = draw(st.dictionaries(st.sampled_from(keys), VALUES, max_size=4))
        else:
            config[section] = draw(VALUES)
    if draw(st.booleans()):
        config[draw(st.text(max_size=8))] = draw(VALUES)
    return config


RAW_TEXT = st.one_of(
    st.text(max_size=200),
    st.sampled_from(
        [
            "server: [",
            "server:\n\tport: 1",  # a tab
            "server: {port: 1}\nserver: {port: 2}\n",  # a repeated key
            "a: &x [1]\nb: *x\nserver: *x\n",
            "server: !!python/object/apply:os.system ['true']\n",
            "- just\n- a list\n",
            "42",
            "'a string'",
            "\x00\x01",
            "\ufeffserver: {port: 1}",
            "[" * 5000 + "]" * 5000,
            "server: " + "{a: " * 2000 + "1" + "}" * 2000,
        ]
    ),
)
PROBLEM_LINE = re.compile(r"^[^:]+: \S.*: .+$")


def check_config(text: str) -> tuple[int, str, str]:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "jobhook.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["check-config", "--config", str(path)])
        return code, out.getvalue(), err.getvalue()


def assert_clean_answer(code: int, out: str, err: str) -> None:
    note(f"exit {code}; stdout {out!r}; stderr {err!r}")
    assert "Traceback" not in out + err
    assert code in (0, 2)
    if code == 0:
        assert out.strip() == "configuration ok"
        return
    lines = err.strip().splitlines()
    assert lines, "exit 2 says nothing"
    for line in lines:
        assert line.isprintable() and PROBLEM_LINE.match(line), f"not a `source: key.path: reason` line: {line!r}"


FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(configs())
def test_generated_configs_exit_0_or_2_with_key_paths(config: Any) -> None:
    text = yaml.safe_dump(config, allow_unicode=True)
    note(text)
    assert_clean_answer(*check_config(text))


@FUZZ
@given(RAW_TEXT)
def test_arbitrary_text_exits_0_or_2_with_key_paths(text: str) -> None:
    assert_clean_answer(*check_config(text))


@pytest.mark.slow
@pytest.mark.parametrize(
    "text",
    ["server: [", "[" * 5000 + "]" * 5000, "rules: [{name: x, notify: nope}]\n", "delivery: {timeout: -1s}\n"],
    ids=["bad-yaml", "deep", "unknown-target", "bad-duration"],
)
def test_the_real_command_never_shows_a_traceback(tmp_path: Path, text: str) -> None:
    config = tmp_path / "jobhook.yaml"
    config.write_text(text)
    run = subprocess.run(
        [sys.executable, "-m", "receiver", "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    assert all(PROBLEM_LINE.match(line) for line in run.stderr.strip().splitlines()), run.stderr
