"""The Kubernetes sidecar-injection webhook: configuration, the pure pod patch, the server."""

from proxy.inject.config import InjectConfig, load_config, parse_config
from proxy.inject.patch import Decision, PodError, decide

__all__ = ["Decision", "InjectConfig", "PodError", "decide", "load_config", "parse_config"]
