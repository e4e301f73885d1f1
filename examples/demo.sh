#!/bin/sh
# make demo: the bundled example MCP server on 127.0.0.1:9000, agent-warden in front on :8080.
set -eu
cd "$(dirname "$0")/.."
BIN=.venv/bin
UP_PORT=${DEMO_UPSTREAM_PORT:-9000}
PORT=${DEMO_PORT:-8080}
ADMIN=${DEMO_ADMIN_PORT:-9901}
$BIN/python examples/mcp_server.py --port "$UP_PORT" &
UP_PID=$!
trap 'kill $UP_PID 2>/dev/null || true' EXIT INT TERM
i=0
until $BIN/python -c "import socket,sys; socket.create_connection(('127.0.0.1', $UP_PORT), 1)" 2>/dev/null; do
  i=$((i + 1)); [ $i -gt 50 ] && { echo "example server did not start" >&2; exit 1; }
  sleep 0.2
done
cat <<MSG

agent-warden is starting on http://127.0.0.1:$PORT in front of the example MCP server.
Try (in another terminal):

  curl -s -X POST http://127.0.0.1:$PORT/mcp \\
    -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \\
    -H 'X-Agent-Id: demo-agent' \\
    -d '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"curl","version":"1"}}}' -i

  curl -s http://127.0.0.1:$ADMIN/readyz

Stop with Ctrl-C.

MSG
$BIN/agent-warden run --upstream "http://127.0.0.1:$UP_PORT" --listen "127.0.0.1:$PORT" \
  --admin "127.0.0.1:$ADMIN" --policy policies/example.yaml
