"""agent-warden: a session-policy reverse-proxy sidecar for MCP and A2A agent servers."""

__version__ = "0.1.0"
