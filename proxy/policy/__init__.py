"""Session policies: the YAML model, its loading and validation (pure)."""

from proxy.policy.load import PolicyError, Problem, check_files, load_policy, parse_policy
from proxy.policy.model import (
    DEFAULT_POLICY,
    DEFAULT_POLICY_NAME,
    A2aSpec,
    Budget,
    ErrorsConfig,
    GlobSet,
    Identity,
    Mode,
    NamedPolicy,
    PolicyFile,
    RateLimit,
    Rules,
    SessionRules,
    StoreFailure,
)

__all__ = [
    "DEFAULT_POLICY",
    "DEFAULT_POLICY_NAME",
    "A2aSpec",
    "Budget",
    "ErrorsConfig",
    "GlobSet",
    "Identity",
    "Mode",
    "NamedPolicy",
    "PolicyError",
    "PolicyFile",
    "Problem",
    "RateLimit",
    "Rules",
    "SessionRules",
    "StoreFailure",
    "check_files",
    "load_policy",
    "parse_policy",
]
