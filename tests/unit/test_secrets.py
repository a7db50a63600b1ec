"""Kafka secrets by reference: resolved for librdkafka only, checked at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from feedsvc.config import ConfigError, load_config
from feedsvc.server.mirror import producer_settings


def test_env_and_file_references_reach_librdkafka_settings_and_only_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEEDSVC_TEST_SASL_PASSWORD", "pw-from-env")
    key_password = tmp_path / "key-password"
    key_password.write_text("pw-from-file\n")
    config = load_config(
        None,
        [
            "kafka.producer={sasl.password: '${env:FEEDSVC_TEST_SASL_PASSWORD}', "
            f"ssl.key.password: '${{file:{key_password}}}', sasl.username: feedsvc}}"
        ],
    )
    # The config object (what could be logged or shown) holds the references...
    assert config.kafka.producer["sasl.password"] == "${env:FEEDSVC_TEST_SASL_PASSWORD}"
    assert "pw-from" not in repr(config)
    # ...and librdkafka gets the secrets, the file's trailing newline removed.
    settings = producer_settings(config.kafka)
    assert settings["sasl.password"] == "pw-from-env"
    assert settings["ssl.key.password"] == "pw-from-file"
    assert settings["sasl.username"] == "feedsvc"


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("${env:FEEDSVC_TEST_NOT_SET}", "environment variable FEEDSVC_TEST_NOT_SET is not set"),
        ("${file:/nonexistent/feedsvc-secret}", "cannot read /nonexistent/feedsvc-secret"),
    ],
)
def test_an_unresolvable_reference_is_a_config_error_naming_the_setting(
    value: str, words: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FEEDSVC_TEST_NOT_SET", raising=False)
    with pytest.raises(ConfigError) as raised:
        load_config(None, [f"kafka.producer={{sasl.password: '{value}'}}"])
    assert raised.value.key == "kafka.producer"
    assert "'sasl.password'" in str(raised.value) and words in str(raised.value)


def test_a_plain_value_that_only_looks_like_a_reference_is_kept() -> None:
    config = load_config(None, ["kafka.producer={client.id: 'feed-${env}'}"])
    assert producer_settings(config.kafka)["client.id"] == "feed-${env}"
