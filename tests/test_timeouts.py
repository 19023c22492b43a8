"""Every test runs under a time limit (pytest-timeout), so a hung server test fails instead of running for hours."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest


def test_the_suite_has_a_per_test_time_limit(request):
    assert request.config.pluginmanager.hasplugin("timeout"), "pytest-timeout is not installed (dev extra)"
    assert float(request.config.getini("timeout")) == 600


@pytest.mark.slow
def test_slow_tests_get_the_longer_limit(request):
    from conftest import SLOW_TIMEOUT_S

    assert request.node.get_closest_marker("timeout").args == (SLOW_TIMEOUT_S,)


def test_a_hanging_test_is_stopped_at_its_limit(tmp_path):
    (tmp_path / "test_hang.py").write_text("import time\n\ndef test_hang():\n    time.sleep(120)\n")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "timeout=2",
                           str(tmp_path / "test_hang.py")], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Timeout" in proc.stdout and time.monotonic() - started < 50
