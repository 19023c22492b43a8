"""Suite-wide settings: per-test time limits (pytest-timeout; the default is `timeout` in pyproject.toml)."""

from __future__ import annotations

import pytest

# Whole sweeps in subprocesses (e2e, instruct, the fault suite) and the scale-out cluster (PostgreSQL, an MLflow
# server and two Ray nodes started in a module fixture, whose start counts against the first test) take minutes on
# a 2-core machine, several times that under load: they get this limit instead of the 600 s default.
SLOW_TIMEOUT_S = 1800


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))
