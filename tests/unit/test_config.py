"""Config: defaults equal config.yaml, --set overrides parse YAML, wrong values name their key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from feedsvc.config import Config, ConfigError, load_config, parse_override
from tests.conftest import PROJECT_ROOT

CONFIG_YAML = PROJECT_ROOT / "config.yaml"


def test_config_yaml_documents_every_key_with_its_default() -> None:
    documented = yaml.safe_load(CONFIG_YAML.read_text())
    assert documented == dataclasses.asdict(Config())


def test_issue_contract_keys_exist() -> None:
    config = load_config(CONFIG_YAML)
    assert any(e.startswith("ipc://") for e in config.publisher.endpoints)
    assert any(e.startswith("tcp://") for e in config.publisher.endpoints)
    assert config.ingest.endpoint
    assert config.synthetic.enabled is True
    assert config.synthetic.symbols > 0
    assert config.synthetic.rate >= 0
    assert config.metrics.port > 0
    assert config.kafka.enabled is True
    assert config.kafka.topic == "ticks"


def test_overrides_are_parsed_as_yaml() -> None:
    config = load_config(
        CONFIG_YAML,
        [
            "publisher.endpoints=[ipc:///tmp/x/ticks, tcp://127.0.0.1:7000]",
            "synthetic.rate=0",
            "synthetic.enabled=false",
            "ingest.endpoint=",
            "publisher.heartbeat_interval_s=0.25",
        ],
    )
    assert config.publisher.endpoints == ["ipc:///tmp/x/ticks", "tcp://127.0.0.1:7000"]
    assert config.synthetic.rate == 0.0
    assert isinstance(config.synthetic.rate, float)
    assert config.synthetic.enabled is False
    assert config.ingest.endpoint == ""
    assert config.publisher.heartbeat_interval_s == 0.25
    # Untouched keys keep their defaults.
    assert config.publisher.sndhwm == Config().publisher.sndhwm


def test_override_wins_over_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("synthetic:\n  symbols: 7\n  rate: 10\n")
    config = load_config(path, ["synthetic.symbols=9"])
    assert (config.synthetic.symbols, config.synthetic.rate) == (9, 10.0)


@pytest.mark.parametrize(
    ("override", "key", "words"),
    [
        ("synthetic.rate=-5", "synthetic.rate", ">= 0"),
        ("synthetic.rate=fast", "synthetic.rate", "number"),
        ("synthetic.symbols=1.5", "synthetic.symbols", "integer"),
        ("synthetic.enabled=maybe", "synthetic.enabled", "true or false"),
        ("publisher.endpoints=[]", "publisher.endpoints", "at least one"),
        ("publisher.endpoints=[http://x]", "publisher.endpoints", "ipc:// or tcp://"),
        ("publisher.endpoints=tcp://127.0.0.1:1", "publisher.endpoints", "list"),
        ("publisher.io_threads=0", "publisher.io_threads", ">= 1"),
        ("metrics.port=70000", "metrics.port", "<= 65535"),
        ("ingest.endpoint=udp://x", "ingest.endpoint", "ipc:// or tcp://"),
        ("log.level=LOUD", "log.level", "one of"),
        ("synthetic.colour=red", "synthetic.colour", "unknown key"),
        ("nosuch.key=1", "nosuch", "unknown key"),
        ("synthetic=3", "synthetic", "mapping"),
        ("synthetic.rate", "synthetic.rate", "section.key=value"),
        ("synthetic.rate=[1", "synthetic.rate", "YAML"),
        ("synthetic.burst_rate=-1", "synthetic.burst_rate", ">= 0"),
        ("synthetic.burst_every_s=0", "synthetic.burst_every_s", ">= 0.01"),
        ("synthetic.burst_duration_s=soon", "synthetic.burst_duration_s", "number"),
        ("publisher.shard=east west", "publisher.shard", "[0-9A-Za-z_.-]"),
        ("publisher.shard=" + "x" * 65, "publisher.shard", "0 to 64"),
        ("synthetic.prefix=_SYS", "synthetic.prefix", "a symbol may start with"),
        ("synthetic.prefix=", "synthetic.prefix", "1 to 16"),
    ],
)
def test_wrong_value_names_the_key(override: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(None, [override])
    message = str(raised.value)
    assert message.startswith(f"{key}: ")
    assert words in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("overrides", "key", "words"),
    [
        (
            [
                "synthetic.burst_rate=5000",
                "synthetic.burst_every_s=2",
                "synthetic.burst_duration_s=2",
            ],
            "synthetic.burst_duration_s",
            "< synthetic.burst_every_s (2)",
        ),
        (["synthetic.burst_rate=5000", "synthetic.rate=0"], "synthetic.burst_rate", "rate > 0"),
    ],
)
def test_burst_keys_are_checked_together(overrides: list[str], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(None, overrides)
    message = str(raised.value)
    assert message.startswith(f"{key}: ")
    assert words in message
    assert "\n" not in message


def test_burst_keys_accept_a_schedule() -> None:
    config = load_config(
        CONFIG_YAML,
        ["synthetic.burst_rate=2e4", "synthetic.burst_every_s=5", "synthetic.burst_duration_s=1"],
    )
    synthetic = config.synthetic
    assert (synthetic.burst_rate, synthetic.burst_every_s, synthetic.burst_duration_s) == (
        20_000.0,
        5.0,
        1.0,
    )
    # Without a burst rate the other two keys are inert and not cross-checked.
    assert load_config(None, ["synthetic.burst_duration_s=90"]).synthetic.burst_rate == 0.0


def test_bad_file_is_one_line_naming_config(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("publisher: [unclosed\n")
    with pytest.raises(ConfigError, match=r"^--config: ") as raised:
        load_config(path)
    assert "\n" not in str(raised.value)
    with pytest.raises(ConfigError, match=r"^--config: cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_parse_override_splits_key_path() -> None:
    assert parse_override("kafka.topic=audit") == (["kafka", "topic"], "audit")
    assert parse_override("synthetic.rate=2e4") == (["synthetic", "rate"], 2e4)


def test_a_key_is_named_as_written_not_as_the_number_yaml_reads(tmp_path: Path) -> None:
    for text, named in (("0E0: 1\n", "0E0"), ("publisher:\n  1e3: 5\n", "publisher.1e3")):
        path = tmp_path / "c.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError) as error:
            load_config(path)
        assert error.value.key == named
        assert str(error.value).startswith(f"{named}: unknown key")


def test_min_insync_replicas_above_the_replication_factor_names_the_key() -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(None, ["kafka.replication_factor=3", "kafka.min_insync_replicas=4"])
    message = str(raised.value)
    assert message.startswith("kafka.min_insync_replicas:") and "\n" not in message
    config = load_config(None, ["kafka.replication_factor=3", "kafka.min_insync_replicas=2"])
    assert config.kafka.min_insync_replicas == 2
