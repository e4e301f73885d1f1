"""The operator's offline commands: ``explain`` and ``replay`` (flags in, one call out)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from proxy.config import ConfigError
from proxy.explain import explain, parse_claims
from proxy.policy import load_policy
from proxy.record import read_decisions
from proxy.replay import compare, recorded, replay

__all__ = ["add_explain", "add_replay", "run_explain", "run_replay"]

CHANGED = 3  # replay's exit code when verdicts change (for CI on a policy repository)


def add_explain(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("explain", help="which policy a caller meets, why, and its verdict")
    p.add_argument("--policy", required=True, metavar="FILE")
    p.add_argument("--agent", required=True, metavar="ID")
    p.add_argument("--tool", metavar="NAME", help="a tools/call of this tool")
    p.add_argument("--method", metavar="M", help="the JSON-RPC method (default tools/call)")
    p.add_argument("--claims", nargs="*", default=[], metavar="K=V")
    p.add_argument("--scopes", nargs="*", default=[], metavar="SCOPE")
    p.add_argument("--json", action="store_true", help="one JSON document, for scripts")


def add_replay(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("replay", help="what a candidate policy would change on recorded calls")
    p.add_argument("--policy", required=True, metavar="CANDIDATE")
    p.add_argument("decisions", metavar="DECISIONS.jsonl", help="a --decision-log file")
    p.add_argument(
        "--against",
        metavar="CURRENT",
        help="compare with this policy replayed too (default: the decisions as logged)",
    )
    p.add_argument("--json", action="store_true", help="one JSON document, for scripts")


def run_explain(args: argparse.Namespace) -> int:
    try:
        claims = parse_claims(args.claims)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    found = explain(
        load_policy(args.policy),
        args.agent,
        method=args.method,
        tool=args.tool,
        scopes=args.scopes,
        claims=claims,
    )
    sys.stdout.write(found.to_json() + "\n" if args.json else found.to_text())
    return 0


def run_replay(args: argparse.Namespace) -> int:
    candidate = load_policy(args.policy)
    current = load_policy(args.against) if args.against else None
    try:
        lines = Path(args.decisions).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{args.decisions}: {getattr(exc, 'strerror', None) or exc}") from None
    records, problems = read_decisions(lines)
    for problem in problems[:10]:
        print(f"agent-warden: warning: {args.decisions}: {problem}", file=sys.stderr)
    records.sort(key=lambda r: r.ts)
    started = time.perf_counter()
    after = asyncio.run(replay(records, candidate))
    before = asyncio.run(replay(records, current)) if current is not None else recorded(records)
    report = compare(records, before, after)
    elapsed = time.perf_counter() - started
    if args.json:
        doc = report.to_doc()
        doc["unreadable_lines"] = len(problems)
        doc["seconds"] = round(elapsed, 3)
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        sys.stdout.write(report.to_text())
        if problems:
            sys.stdout.write(f"{len(problems)} unreadable lines skipped\n")
    return CHANGED if report.changed else 0
