"""Hypothesis profiles for the fuzz suite.

`make test` runs the default profile, ``warden`` (150 examples a test, no deadline, no
example database written into the work tree). ``HYPOTHESIS_PROFILE=long`` runs many more
by hand, e.g. ``HYPOTHESIS_PROFILE=long .venv/bin/pytest tests/fuzz``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "warden",
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "long",
    max_examples=5000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "warden"))
