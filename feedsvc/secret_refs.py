"""Secrets in librdkafka settings: `${env:NAME}` and `${file:PATH}` references.

A kafka.producer value that is exactly such a reference is replaced, only where the settings are
handed to librdkafka, by the environment variable or the file's content (one trailing newline
removed). The config object, the logs, /metrics and /healthz only ever hold the reference.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

SECRET_REFERENCE: Final = re.compile(r"\$\{(env|file):([^}]+)\}")


class SecretError(ValueError):
    """A reference cannot be resolved; str() names the setting, never a secret."""


def _resolve(setting: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    match = SECRET_REFERENCE.fullmatch(value)
    if match is None:
        return value
    source, name = match.groups()
    if source == "env":
        if name not in os.environ:
            raise SecretError(f"{setting!r}: environment variable {name} is not set")
        return os.environ[name]
    try:
        return Path(name).read_text().removesuffix("\n")
    except OSError as error:
        raise SecretError(f"{setting!r}: cannot read {name}: {error.strerror}") from None


def resolve_secrets(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings with every reference replaced by its secret; raises SecretError."""
    return {setting: _resolve(setting, value) for setting, value in settings.items()}


def secret_problem(settings: Mapping[str, Any]) -> str | None:
    """Why a reference in `settings` cannot be resolved now, or None (for config validation)."""
    try:
        resolve_secrets(settings)
    except SecretError as error:
        return str(error)
    return None
