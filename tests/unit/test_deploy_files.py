"""The container set-up starts with a valid config (there is no Docker engine to try it here)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from feedsvc.config import load_config
from feedsvc.curve import create_key_pair
from tests.conftest import PROJECT_ROOT


def _entrypoint() -> list[str]:
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    match = re.search(r"^ENTRYPOINT (\[.*\])$", dockerfile, re.MULTILINE)
    assert match, "Dockerfile has no exec-form ENTRYPOINT"
    return json.loads(match.group(1))


def test_container_command_line_is_a_valid_config() -> None:
    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
    argv = _entrypoint() + compose["services"]["feedsvc"]["command"]
    assert argv[:2] == ["feedsvc", "serve"]
    assignments = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--set"]
    config = load_config(PROJECT_ROOT / "config.yaml", assignments)
    # Published ports must be bound on all interfaces inside the container.
    assert "tcp://0.0.0.0:5556" in config.publisher.endpoints
    assert config.ingest.endpoint == "tcp://0.0.0.0:5557"
    published = {port.split(":")[-1] for port in compose["services"]["feedsvc"]["ports"]}
    assert {"5556", "5557"} <= published


def test_compose_mirrors_to_its_own_kafka_broker() -> None:
    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:4.")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]
    argv = compose["services"]["feedsvc"]["command"]
    assignments = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--set"]
    config = load_config(PROJECT_ROOT / "config.yaml", assignments)
    assert config.kafka.enabled
    # feedsvc must use the listener advertised to containers.
    host_port = config.kafka.bootstrap
    assert f"INTERNAL://{host_port}" in kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert compose["services"]["feedsvc"]["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_compose_curve_override_turns_curve_on_with_mounted_keys(tmp_path: Path) -> None:
    """docker-compose.curve.yml keeps the base stack's settings and adds Curve on both ends,
    with key paths inside the read-only mount."""
    base = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())["services"]
    override = yaml.safe_load((PROJECT_ROOT / "docker-compose.curve.yml").read_text())["services"]
    server_argv = _entrypoint() + override["feedsvc"]["command"]
    assignments = [server_argv[i + 1] for i, arg in enumerate(server_argv) if arg == "--set"]
    base_assignments = [arg for arg in base["feedsvc"]["command"] if arg != "--set"]
    assert set(base_assignments) <= set(assignments)
    assert "./keys:/keys:ro" in override["feedsvc"]["volumes"]
    assert "./keys:/keys:ro" in override["subscriber"]["volumes"]
    # The same files, made by feedsvc keygen, where the mount puts them.
    create_key_pair(tmp_path, "server")
    create_key_pair(tmp_path, "subscriber")
    (tmp_path / "authorized").mkdir()
    (tmp_path / "subscriber.key").rename(tmp_path / "authorized" / "subscriber.key")
    mounted = [assignment.replace("/keys", str(tmp_path)) for assignment in assignments]
    config = load_config(PROJECT_ROOT / "config.yaml", mounted)
    assert config.curve.enabled and config.sync.endpoint == "tcp://0.0.0.0:5558"
    client = override["subscriber"]["command"][0]
    assert "--curve-server-key /keys/server.key " in client
    assert "--curve-client-cert /keys/subscriber.key_secret " in client
    assert "tcp://feedsvc:5556" in client
