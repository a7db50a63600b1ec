"""`feedsvc serve`'s main process loads neither librdkafka nor rich nor the load-test harness:
only the mirror process needs librdkafka, and every subcommand is imported only when it runs."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.conftest import PROJECT_ROOT, free_tcp_port

# Top-level packages, and feedsvc's packages of the other subcommands.
HEAVY = (
    "confluent_kafka",
    "rich",
    "matplotlib",
    "feedsvc.bench",
    "feedsvc.replay",
    "feedsvc.client",
)


def _is_heavy(module: str) -> bool:
    return any(module == heavy or module.startswith(f"{heavy}.") for heavy in HEAVY)


def _modules_after(argv: list[str], seconds: float) -> set[str]:
    """The modules loaded in a `feedsvc` process `seconds` after it started (it is then stopped
    with SIGTERM, by its own pid)."""
    code = textwrap.dedent(
        f"""
        import signal, sys, threading, time
        from feedsvc import cli
        def report():
            # Once serve runs (its SIGTERM handler is set), and a while later.
            deadline = time.monotonic() + 45
            while signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.05)
            time.sleep({seconds})
            loaded = sorted(name for name in sys.modules if name.split(".")[0] in
                            ("confluent_kafka", "rich", "matplotlib", "feedsvc"))
            print("\\n".join(loaded), flush=True)
            signal.raise_signal(signal.SIGTERM)
        threading.Thread(target=report, daemon=True).start()
        sys.exit(cli.main({argv!r}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=PROJECT_ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


@pytest.mark.parametrize("mirror", [False, True], ids=["mirror off", "mirror on"])
def test_serve_main_process_loads_no_kafka_client_rich_or_loadtest(
    mirror: bool, kafka_broker: object
) -> None:
    settings = [
        f"publisher.endpoints=[tcp://127.0.0.1:{free_tcp_port()}]",
        "ingest.endpoint=",
        "sync.endpoint=",
        "recovery.endpoint=",
        "metrics.port=0",
        f"kafka.enabled={str(mirror).lower()}",
        f"kafka.bootstrap={kafka_broker.bootstrap}",
        "kafka.topic=imports-check",
    ]
    loaded = _modules_after(["serve", *(part for s in settings for part in ("--set", s))], 3.0)
    assert "feedsvc.server.service" in loaded
    assert not {name for name in loaded if _is_heavy(name)}, loaded
