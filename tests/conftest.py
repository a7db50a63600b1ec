"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = PROJECT_ROOT / "schemas"


def free_tcp_port() -> int:
    """A loopback port free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def tcp_endpoint() -> str:
    return f"tcp://127.0.0.1:{free_tcp_port()}"


@pytest.fixture
def ipc_dir() -> Iterator[Path]:
    # ipc paths are limited to ~107 bytes and pytest's tmp paths can be long: use a short base.
    path = Path(tempfile.mkdtemp(prefix="fs-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def ipc_endpoint(ipc_dir: Path) -> str:
    return f"ipc://{ipc_dir}/ticks"


@pytest.fixture
def zmq_context() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)
