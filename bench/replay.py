"""How fast `agent-warden replay` goes through a decision log.

Writes a synthetic decision log (``--calls``, default 1,000,000: 200 agents, a third in MCP
protocol sessions, a third in minted sessions, a third in their windows, tools/call of 20
tools and tools/list) to a temporary file, then runs the same steps as the command: read
and parse the lines, replay them under a candidate policy (budgets, a per-tool budget, a
denied tool, a rate limit), compare with the log's own verdicts. Prints a table; never
part of `make test`.

    .venv/bin/python bench/replay.py [--calls 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.policy import parse_policy
from proxy.record import Decision, read_decisions
from proxy.replay import compare, recorded, replay

CANDIDATE = """\
version: 1
defaults:
  session: {max_per_agent: 50}
  budget: {calls: 2000, tools: {tool-3: 100}}
  rate_limit: {per_minute: 600}
  tools: {deny: ["tool-13"]}
"""


def synthetic(calls: int, start: float) -> list[str]:
    kinds = ("protocol", "minted", "window")
    lines = []
    for i in range(calls):
        agent = i % 200
        kind = kinds[agent % 3]
        session = None if kind == "window" else f"s-{agent}-{i // 50_000}"
        tool = f"tool-{i % 20}" if i % 10 else None
        lines.append(
            Decision(
                ts=start + i / 1000,
                agent=f"agent-{agent}",
                session=session,
                kind=kind,
                protocol="mcp",
                method="tools/call" if tool else "tools/list",
                tool=tool,
                policy="default",
                mode="enforce",
                decision="allow",
                reason=None,
            ).to_json()
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="agent-warden-replay-") as tmp:
        path = Path(tmp) / "decisions.jsonl"
        path.write_text("\n".join(synthetic(args.calls, 1_800_000_000.0)) + "\n")
        size = path.stat().st_size
        t0 = time.perf_counter()
        records, problems = read_decisions(path.read_text().splitlines())
        records.sort(key=lambda r: r.ts)
        t1 = time.perf_counter()
        after = asyncio.run(replay(records, parse_policy(CANDIDATE, "candidate.yaml")))
        t2 = time.perf_counter()
        report = compare(records, recorded(records), after)
        t3 = time.perf_counter()
    assert not problems
    print("| calls | log MB | read s | replay s | compare s | total s | calls/s | changed |")
    print("|--:|--:|--:|--:|--:|--:|--:|--:|")
    print(
        f"| {args.calls:,} | {size / 1e6:.0f} | {t1 - t0:.1f} | {t2 - t1:.1f} | {t3 - t2:.1f} "
        f"| {t3 - t0:.1f} | {args.calls / (t3 - t0):,.0f} | {report.changed:,} |"
    )


if __name__ == "__main__":
    main()
