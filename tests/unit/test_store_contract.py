"""The shared decision suite, run against every store (memory and Redis)."""

from tests.unit.store_contract import *  # noqa: F403
