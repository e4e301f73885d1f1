"""``agent-warden webhook``: the sidecar-injection webhook's flags and start-up.

``proxy/__main__.py`` adds the subcommand with ``add_arguments`` and calls ``run``; this
module also runs alone (``python -m proxy.inject.cli``) with the same flags.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import NoReturn

from proxy import logs
from proxy.config import ConfigError, parse_address, seconds
from proxy.inject.config import InjectConfig, load_config
from proxy.inject.server import WebhookSettings, serve

__all__ = ["DEFAULT_LISTEN", "add_arguments", "main", "run", "settings"]

DEFAULT_LISTEN = "0.0.0.0:8443"
_LEVELS = ("debug", "info", "warning", "error")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``webhook`` subcommand's flags."""
    parser.add_argument(
        "--listen", metavar="HOST:PORT", default=DEFAULT_LISTEN, help=f"(default {DEFAULT_LISTEN})"
    )
    parser.add_argument("--cert", metavar="FILE", required=True, help="serving certificate (PEM)")
    parser.add_argument("--key", metavar="FILE", required=True, help="its private key (PEM)")
    parser.add_argument("--config", metavar="FILE", help="injector configuration (YAML)")
    parser.add_argument(
        "--cert-poll-interval",
        metavar="DURATION",
        default="2s",
        help="how often the certificate files are checked for a change (default 2s)",
    )
    parser.add_argument(
        "--log-level", metavar="LEVEL", default="info", help="debug, info, warning or error"
    )


def settings(args: argparse.Namespace) -> WebhookSettings:
    """The settings the flags say; raises ConfigError."""
    level = str(args.log_level).lower()
    if level not in _LEVELS:
        raise ConfigError(f"--log-level: expected {', '.join(_LEVELS)}, got {args.log_level!r}")
    return WebhookSettings(
        listen=parse_address(args.listen, "--listen"),
        cert=args.cert,
        key=args.key,
        config=load_config(args.config) if args.config else InjectConfig(),
        cert_poll_seconds=seconds(args.cert_poll_interval, "--cert-poll-interval"),
    )


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM (exit 0); raises ConfigError on bad flags, config or certificate."""
    webhook = settings(args)
    logs.setup(args.log_level)
    asyncio.run(serve(webhook))
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"agent-warden: error: {message}\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="agent-warden webhook", description="Sidecar-injection webhook.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ConfigError as exc:
        print(f"agent-warden: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
