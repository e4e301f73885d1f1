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
from proxy.inject.kube import IN_CLUSTER_CA, IN_CLUSTER_TOKEN, KubeAPI
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
    parser.add_argument(
        "--kube-api",
        metavar="URL",
        help="the Kubernetes API server, for missingObjects skip or deny (default: in a pod, "
        "https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT)",
    )
    parser.add_argument(
        "--kube-token-file",
        metavar="FILE",
        help=f"its bearer token, re-read when it changes (default in a pod: {IN_CLUSTER_TOKEN})",
    )
    parser.add_argument(
        "--kube-ca-file",
        metavar="FILE",
        help=f"the CA its certificate chains to (default in a pod: {IN_CLUSTER_CA})",
    )
    parser.add_argument(
        "--kube-timeout",
        metavar="DURATION",
        default="2s",
        help="time allowed for one lookup; past it the pod is injected unverified (default 2s)",
    )


def settings(args: argparse.Namespace) -> WebhookSettings:
    """The settings the flags say; raises ConfigError."""
    level = str(args.log_level).lower()
    if level not in _LEVELS:
        raise ConfigError(f"--log-level: expected {', '.join(_LEVELS)}, got {args.log_level!r}")
    config = load_config(args.config) if args.config else InjectConfig()
    return WebhookSettings(
        listen=parse_address(args.listen, "--listen"),
        cert=args.cert,
        key=args.key,
        config=config,
        cert_poll_seconds=seconds(args.cert_poll_interval, "--cert-poll-interval"),
        kube=_kube(args, config),
    )


def _kube(args: argparse.Namespace, config: InjectConfig) -> KubeAPI | None:
    """The API server the lookups go to; None when missingObjects is inject."""
    if config.missing_objects == "inject":
        return None
    timeout = seconds(args.kube_timeout, "--kube-timeout")
    if args.kube_api:
        return KubeAPI(
            args.kube_api,
            token_file=args.kube_token_file,
            ca_file=args.kube_ca_file,
            timeout=timeout,
        )
    api = KubeAPI.in_cluster(
        token_file=args.kube_token_file or IN_CLUSTER_TOKEN,
        ca_file=args.kube_ca_file or IN_CLUSTER_CA,
        timeout=timeout,
    )
    if api is None:
        raise ConfigError(
            f"missingObjects: {config.missing_objects} looks objects up in the Kubernetes API: "
            "run in a pod (KUBERNETES_SERVICE_HOST) or give --kube-api"
        )
    return api


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
