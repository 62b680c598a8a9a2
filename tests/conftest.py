"""Shared pytest set-up. Fixture modules live in tests/fixtures/ and are registered here."""

import importlib.util

_FIXTURE_MODULES = ["tests.fixtures.simgpu", "tests.fixtures.sshd"]

# A fixture module may not exist yet while the project grows; register those that do.
pytest_plugins = [m for m in _FIXTURE_MODULES if importlib.util.find_spec(m) is not None]
