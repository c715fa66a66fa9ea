"""The agent tests' fixtures (fast retries, ``fbus``) for the policy tests too."""

from tests.agents.conftest import fast_settings, fbus

__all__ = ["fast_settings", "fbus"]
