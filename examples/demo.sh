#!/bin/sh
# make demo: the bundled example MCP server on 127.0.0.1:9000, agent-warden in front on :8080,
# admin on :9901 (DEMO_UPSTREAM_PORT, DEMO_PORT, DEMO_ADMIN_PORT change them). examples/demo.py
# does the work: every port checked free first, each process waited for until it answers as
# itself, what to try printed only then; a port in use or a process that fails ends the demo
# with one line on stderr, exit 1, nothing left running.
set -eu
cd "$(dirname "$0")/.."
exec .venv/bin/python examples/demo.py
