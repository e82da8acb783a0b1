"""The one reader of configuration from the environment.

Every setting Prefloop takes from the environment is read here, with its default and a check, so
that a bad value fails at start-up with a message naming the variable.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A configuration variable holds a value that cannot be used."""


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _env_number(name: str, default: Any, parse: Any, what: str, minimum: Any, below: Any = None) -> Any:
    """`name` parsed by `parse` (int or float), `default` when unset; a bad value, one under `minimum`
    or one not under `below` raises."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = parse(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not {what}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(f"{name}={raw!r} must be a finite number")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name}={value} must be at least {minimum}")
    if below is not None and value >= below:
        raise ConfigError(f"{name}={value} must be below {below}")
    return value


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    return int(_env_number(name, default, int, "an integer", minimum))


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = os.environ.get(name) or default
    if value not in choices:
        raise ConfigError(f"{name}={value!r} must be one of {', '.join(choices)}")
    return value


def env_float(name: str, default: float, *, minimum: float | None = None, below: float | None = None) -> float:
    return float(_env_number(name, default, float, "a number", minimum, below))


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean (use 1/0, true/false, yes/no)")


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_path(name: str, default: Path) -> Path:
    raw = os.environ.get(name)
    path = Path(raw) if raw else default
    return path if path.is_absolute() else (BASE_DIR / path)


def env_json_object(name: str) -> dict[str, Any]:
    """A JSON object (e.g. ``{"endpoint_url": "http://minio:9000"}``); empty when unset."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{name} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a JSON object, got {type(value).__name__}")
    return value


def env_secret_key(name: str, path: Path) -> str:
    """`name` from the environment; else a random key kept in `path` (made once, readable by its
    owner only), so no two installations share a key and a restart keeps sessions."""
    import secrets

    raw = os.environ.get(name, "").strip()
    if raw:
        if len(raw) < 50 or len(set(raw)) < 5:
            raise ConfigError(f"{name} must be at least 50 characters with at least 5 different ones")
        return raw
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_text().strip()
        if key:
            return key
        raise ConfigError(f"{path} is empty: remove it (a new key is made) or set {name}") from None
    key = secrets.token_urlsafe(64)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(key + "\n")
    return key
