"""The `jobhook` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from aiohttp import web

from receiver.app import SERVER_OPTIONS, create_app
from receiver.settings import ConfigError, Settings, load_settings

log = logging.getLogger("jobhook")

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jobhook", description="Bytescale job status receiver and notifier.")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "--config",
            metavar="FILE",
            help="config file (default: $JOBHOOK_CONFIG, then config/jobhook.yaml, else built-in defaults)",
        )
        return sub

    command("serve", "run the receiver and the outbox worker")
    command("check-config", "validate the configuration; exit 0 if usable, 2 with one line per problem")
    return parser


def _load(args: argparse.Namespace) -> Settings:
    settings, path = load_settings(args.config)
    log.info("configuration: %s", path or "built-in defaults")
    return settings


def _serve(settings: Settings) -> int:
    if settings.auth.mode != "none":
        log.error(
            "auth.mode %s: signature and token checks are not available in this version; "
            "set auth.mode: none (loopback only) to run",
            settings.auth.mode,
        )
        return EXIT_CONFIG
    if not settings.server.is_loopback:
        log.error(
            "server.host %s is not a loopback address: refusing to accept unauthenticated callbacks "
            "from the network (auth.mode is none)",
            settings.server.host,
        )
        return EXIT_CONFIG
    log.warning("auth.mode none: callbacks are accepted without authentication (loopback only)")
    web.run_app(
        create_app(settings),
        host=settings.server.host,
        port=settings.server.port,
        access_log=None,
        shutdown_timeout=settings.delivery.timeout,
        print=None,
        **SERVER_OPTIONS,
    )
    log.info("stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        settings = _load(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{exc.source}: {problem['field']}: {problem['message']}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check-config":
        print("configuration ok")
        return 0
    return _serve(settings)


if __name__ == "__main__":
    sys.exit(main())
