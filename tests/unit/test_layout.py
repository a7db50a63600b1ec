"""Dependencies point one way: the client never imports server code (what both sides share lives
in feedsvc.protocol and feedsvc.curve, defined once), and metrics read counters, not the service."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import PROJECT_ROOT


def test_the_client_loads_no_server_module() -> None:
    code = "import sys, feedsvc.client; print('\\n'.join(sorted(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PROJECT_ROOT
    ).stdout.split()
    assert "feedsvc.protocol.sync" in loaded
    assert not [name for name in loaded if name.startswith("feedsvc.server")], loaded


def test_metrics_do_not_import_the_service() -> None:
    code = "import sys, feedsvc.server.observe.metrics; print('\\n'.join(sorted(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PROJECT_ROOT
    ).stdout.split()
    assert "feedsvc.server.observe.metrics" in loaded and "feedsvc.server.service" not in loaded


def test_the_config_reads_no_key_files() -> None:
    code = "import sys, feedsvc.config; print('\\n'.join(sorted(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PROJECT_ROOT
    ).stdout.split()
    assert "feedsvc.config" in loaded and "feedsvc.curve" not in loaded


def test_documented_import_paths_keep_working() -> None:
    import feedsvc.client
    from feedsvc.client.metrics import SubscriberMetrics
    from feedsvc.client_metrics import SubscriberMetrics as SubscriberMetricsOldName

    assert SubscriberMetricsOldName is SubscriberMetrics
    assert {"Subscriber", "AsyncSubscriber", "Gap", "Restart", "SyncError"} <= set(
        feedsvc.client.__all__
    )
    assert all(getattr(feedsvc.client, name) is not None for name in feedsvc.client.__all__)
