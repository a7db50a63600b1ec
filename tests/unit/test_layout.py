"""The client never imports server code: what both sides share lives in feedsvc.protocol (and
feedsvc.ticks, feedsvc.curve), defined once."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import PROJECT_ROOT

SERVER_MODULES = (
    "feedsvc.service",
    "feedsvc.sync",
    "feedsvc.publisher",
    "feedsvc.sockets",
    "feedsvc.access",
    "feedsvc.guard",
    "feedsvc.mirror",
    "feedsvc.metrics",
    "feedsvc.ingest",
)


def test_the_client_loads_no_server_module() -> None:
    code = "import sys, feedsvc.client; print('\\n'.join(sorted(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PROJECT_ROOT
    ).stdout.split()
    assert "feedsvc.protocol.sync" in loaded
    assert not set(SERVER_MODULES) & set(loaded)


def test_metrics_do_not_import_the_service() -> None:
    code = "import sys, feedsvc.metrics; print('\\n'.join(sorted(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PROJECT_ROOT
    ).stdout.split()
    assert "feedsvc.metrics" in loaded and "feedsvc.service" not in loaded


def test_the_config_reads_no_key_files() -> None:
    code = "import sys, feedsvc.config; print('\\n'.join(sorted(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PROJECT_ROOT
    ).stdout.split()
    assert "feedsvc.config" in loaded and "feedsvc.curve" not in loaded
