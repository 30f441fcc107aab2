"""The `jobhook` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from notifiers.config import check_notifiers, load_notifiers
from notifiers.digest import flood_control_lines
from notifiers.redaction import RedactingFilter, Redactor
from notifiers.render import render
from notifiers.rules import match
from notifiers.targets import send
from receiver import history_cli
from receiver.app import SERVER_OPTIONS, create_app
from receiver.auth import build_authenticator
from receiver.event_loop import loop_factory, loop_name
from receiver.logs import FORMATS, configure_logging
from receiver.models import Job, WatchRequest
from receiver.serving import serve_app
from receiver.settings import ConfigError, Settings, load_settings
from receiver.store.postgres import display_url
from receiver.validation import field_problems

log = logging.getLogger("jobhook")

EXIT_OK, EXIT_NO_MATCH, EXIT_CONFIG = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jobhook", description="Bytescale job status receiver and notifier.")
    levels = ["DEBUG", "INFO", "WARNING", "ERROR"]
    parser.add_argument("--log-level", default="INFO", choices=levels)
    log_format_help = "log lines as text (default) or one JSON object per line"
    parser.add_argument("--log-format", default="text", choices=FORMATS, help=log_format_help)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "--config",
            metavar="FILE",
            help="config file (default: $JOBHOOK_CONFIG, then config/jobhook.yaml, else built-in defaults)",
        )
        # Also after the command (`jobhook serve --log-format json`); SUPPRESS keeps the global one otherwise.
        sub.add_argument("--log-level", choices=levels, default=argparse.SUPPRESS)
        sub.add_argument("--log-format", choices=FORMATS, default=argparse.SUPPRESS, help=log_format_help)
        return sub

    command("serve", "run the receiver and the delivery worker")
    command("check-config", "validate everything, apprise URLs included; exit 0, or 2 with one line per problem")
    command(
        "test-rule", "show which rules and targets a job payload would notify, and the messages (sends nothing)"
    ).add_argument("payload", metavar="PAYLOAD.json", help="a job object as Bytescale sends it")
    command("send-test", "send a test message to one target and report the result").add_argument(
        "target", metavar="TARGET", help="a target name from the configuration"
    )
    watch = command("watch", "follow one Bytescale job until terminal (a running server picks it up on its next poll)")
    watch.add_argument("account_id", metavar="ACCOUNT_ID", help="a sources.bytescale account_id")
    watch.add_argument("job_type", metavar="JOB_TYPE", help="e.g. DeleteFolderBatchJob")
    watch.add_argument("job_id", metavar="JOB_ID", help="the job's 26-character id")
    history_cli.add_commands(command)
    return parser


def _watch(settings: Settings, source: str, account_id: str, job_type: str, job_id: str) -> int:
    try:
        wanted = WatchRequest.model_validate({"accountId": account_id, "jobType": job_type, "jobId": job_id})
    except ValidationError as exc:
        for problem in field_problems(exc, echo_input=True):
            print(f"{problem['field']}: {problem['message']}", file=sys.stderr)
        return EXIT_CONFIG
    if wanted.accountId not in {s.account_id for s in settings.sources.bytescale_accounts}:
        print(
            f"{source}: sources.bytescale: no entry for account {wanted.accountId}; nothing would poll it",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    try:
        added = asyncio.run(
            history_cli.on_store(
                settings, lambda store: store.watch_job(wanted.accountId, wanted.jobType, wanted.jobId)
            )
        )
    except history_cli.STORE_ERRORS as exc:
        print(f"{display_url(settings.database.url)}: cannot record the job: {exc}", file=sys.stderr)
        return EXIT_NO_MATCH
    state = "watching" if added else "already known"
    print(f"{state}: {wanted.accountId} {wanted.jobType} {wanted.jobId}")
    return EXIT_OK


def _serve(settings: Settings, source: str) -> int:
    log.info("configuration: %s", source)
    app = create_app(settings, source)  # refuses unusable auth, rules or targets before anything starts
    if settings.auth.mode == "none":
        log.warning("auth.mode none: callbacks are accepted without authentication (loopback only)")
    # Only `serve` runs on server.event_loop; the other commands' short asyncio.run calls gain nothing from uvloop.
    with asyncio.Runner(loop_factory=loop_factory(settings.server.event_loop)) as runner:
        log.info(
            "listening on http://%s:%d (auth.mode %s, event loop %s)",
            settings.server.host,
            settings.server.port,
            settings.auth.mode,
            loop_name(runner.get_loop()),
        )
        runner.run(serve_app(app, settings, SERVER_OPTIONS))
    log.info("stopped")
    return EXIT_OK


def _check_config(settings: Settings, source: str) -> int:
    _, auth_problems = build_authenticator(settings)
    _, problems = check_notifiers(settings)
    problems = auth_problems + problems
    if problems:
        raise ConfigError(source, problems)
    print("configuration ok")
    return EXIT_OK


def _test_rule(settings: Settings, source: str, payload: str) -> int:
    notifiers = load_notifiers(settings, source)
    try:
        raw = Path(payload).read_bytes()
        job = Job.model_validate_json(raw)
    except OSError as exc:
        print(f"{payload}: cannot read: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ValidationError as exc:
        for problem in field_problems(exc, echo_input=True):
            print(f"{payload}: {problem['field']}: {problem['message']}", file=sys.stderr)
        return EXIT_CONFIG
    pairs = match(notifiers.rules, job)
    if not pairs:
        print(f"no rule matches {job.jobType} {job.jobId} with status {job.status}: nothing would be sent")
        return EXIT_NO_MATCH
    job_data = json.loads(raw)
    for rule, target in pairs:
        message = render(rule, job_data, None)
        print(f"rule {rule.name} -> target {target} ({message.notify_type})")
        for line in flood_control_lines(rule, notifiers.targets[target], job):
            print(f"  {line}")
        print(f"  title: {message.title}")
        for line in message.body.splitlines():
            print(f"  | {line}")
    return EXIT_OK


def _send_test(settings: Settings, source: str, target_name: str) -> int:
    notifiers = load_notifiers(settings, source)
    target = notifiers.targets.get(target_name)
    if target is None:
        known = ", ".join(sorted(notifiers.targets)) or "(none)"
        print(f"unknown target {target_name!r}; configured: {known}", file=sys.stderr)
        return EXIT_CONFIG
    result = asyncio.run(
        send(
            target,
            title="jobhook test message",
            notify_type="info",
            timeout=settings.delivery.timeout,
            body=f"This is a test of target **{target_name}** from `jobhook send-test`.",
            redactor=notifiers.redactor,
        )
    )
    if result.ok:
        print(f"sent to {target_name} in {result.elapsed:.2f} s")
        return EXIT_OK
    print(f"sending to {target_name} failed: {result.error}", file=sys.stderr)
    return EXIT_NO_MATCH


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    log_handler, stop_logging = configure_logging(args.log_level, args.log_format)
    try:
        settings, path = load_settings(args.config)
        log_handler.addFilter(RedactingFilter(Redactor.from_settings(settings)))
        source = str(path) if path else "built-in defaults"
        if args.command == "check-config":
            return _check_config(settings, source)
        if args.command == "test-rule":
            return _test_rule(settings, source, args.payload)
        if args.command == "send-test":
            return _send_test(settings, source, args.target)
        if args.command in history_cli.COMMANDS:
            return history_cli.run_command(settings, args)
        if args.command == "watch":
            return _watch(settings, source, args.account_id, args.job_type, args.job_id)
        return _serve(settings, source)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{exc.source}: {problem['field']}: {problem['message']}", file=sys.stderr)
        return EXIT_CONFIG
    finally:
        stop_logging()


if __name__ == "__main__":
    sys.exit(main())
