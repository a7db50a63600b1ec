"""How `feedsvc replay` turns --config, --bootstrap, --topic and -X into consumer settings."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from feedsvc.config import ConfigError
from feedsvc.replay.command import (
    DEFAULT_BOOTSTRAP,
    DEFAULT_TOPIC,
    add_replay_arguments,
    options_from_args,
)
from feedsvc.replay.errors import ReplayError
from feedsvc.replay.reader import make_consumer


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_replay_arguments(parser)
    return parser.parse_args(argv)


SERVICE_CONFIG = """\
publisher:
  endpoints: [tcp://127.0.0.1:5556]
curve:
  enabled: true
  server_secret: /nonexistent/server.key_secret
  authorized_keys: /nonexistent/authorized
kafka:
  bootstrap: kafka-1:9093,kafka-2:9093
  topic: audit-ticks
  producer:
    linger.ms: 50
    compression.type: lz4
    security.protocol: SASL_SSL
    sasl.mechanism: SCRAM-SHA-512
    sasl.username: feedsvc
    sasl.password: ${env:KAFKA_PASSWORD}
    ssl.ca.location: /etc/ssl/kafka-ca.pem
"""


@pytest.fixture
def service_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(SERVICE_CONFIG)
    return path


def test_without_config_the_defaults_and_no_extra_settings() -> None:
    options = options_from_args(_parse())
    assert (options.bootstrap, options.topic, dict(options.kafka_settings)) == (
        DEFAULT_BOOTSTRAP,
        DEFAULT_TOPIC,
        {},
    )


def test_config_gives_cluster_topic_and_only_connection_settings(service_config: Path) -> None:
    """Producer tuning (linger.ms, compression) stays out; the secret stays a reference; the
    Curve files and the secrets the service needs are not read (an auditor may not be able to;
    -X can replace them)."""
    options = options_from_args(_parse("--config", str(service_config)))
    assert options.bootstrap == "kafka-1:9093,kafka-2:9093"
    assert options.topic == "audit-ticks"
    assert dict(options.kafka_settings) == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "feedsvc",
        "sasl.password": "${env:KAFKA_PASSWORD}",
        "ssl.ca.location": "/etc/ssl/kafka-ca.pem",
    }


def test_command_line_wins_over_config(service_config: Path) -> None:
    options = options_from_args(
        _parse(
            "--config",
            str(service_config),
            "--bootstrap",
            "127.0.0.1:9092",
            "--topic",
            "other",
            "-X",
            "sasl.username=auditor",
            "-X",
            "sasl.password=${file:/run/secrets/auditor}",
            "-X",
            "client.id=audit-job",
        )
    )
    assert (options.bootstrap, options.topic) == ("127.0.0.1:9092", "other")
    assert options.kafka_settings["sasl.username"] == "auditor"
    assert options.kafka_settings["sasl.password"] == "${file:/run/secrets/auditor}"
    assert options.kafka_settings["client.id"] == "audit-job"
    assert options.kafka_settings["security.protocol"] == "SASL_SSL"


@pytest.mark.parametrize("argument", ["novalue", "=value"])
def test_a_setting_without_name_or_equals_is_a_usage_error(argument: str) -> None:
    with pytest.raises(argparse.ArgumentError, match="NAME=VALUE"):
        _parse("-X", argument)


def test_a_bad_kafka_section_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("kafka:\n  producer:\n    sasl.password: [not, a, string]\n")
    with pytest.raises(ConfigError, match=r"kafka\.producer"):
        options_from_args(_parse("--config", str(path)))


@pytest.mark.parametrize("name", ["group.id", "enable.auto.commit", "bootstrap.servers"])
def test_settings_replay_relies_on_cannot_be_changed(name: str) -> None:
    with pytest.raises(ReplayError, match=name):
        make_consumer(DEFAULT_BOOTSTRAP, settings={name: "x"})


def test_an_unreadable_secret_names_the_setting_and_no_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FEEDSVC_TEST_UNSET", raising=False)
    with pytest.raises(ReplayError, match=r"sasl\.password.*FEEDSVC_TEST_UNSET is not set"):
        make_consumer(DEFAULT_BOOTSTRAP, settings={"sasl.password": "${env:FEEDSVC_TEST_UNSET}"})


def test_a_secret_librdkafka_refuses_is_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    """librdkafka quotes an invalid value in its error; a value from a reference is masked."""
    monkeypatch.setenv("FEEDSVC_TEST_PROTOCOL", "hunter2-protocol")
    with pytest.raises(ReplayError) as raised:
        make_consumer(
            DEFAULT_BOOTSTRAP, settings={"security.protocol": "${env:FEEDSVC_TEST_PROTOCOL}"}
        )
    assert "hunter2" not in str(raised.value)
    assert "<security.protocol>" in str(raised.value)
