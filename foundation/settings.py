"""Where kubearc keeps state, and the client-side configuration file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import platformdirs


def default_state_dir() -> Path:
    """The hub's state directory: `$KUBEARC_STATE_DIR` or the user's state dir."""
    env = os.environ.get("KUBEARC_STATE_DIR")
    return Path(env) if env else Path(platformdirs.user_state_dir("kubearc")) / "hub"


def client_config_dir() -> Path:
    env = os.environ.get("KUBEARC_CONFIG_DIR")
    return Path(env) if env else Path(platformdirs.user_config_dir("kubearc"))


def load_client_config() -> dict[str, str]:
    path = client_config_dir() / "config.json"
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return {str(k): str(v) for k, v in data.items()}


def save_client_config(values: dict[str, str]) -> Path:
    directory = client_config_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.json"
    path.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
    return path


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in `90`, `30s`, `15m`, `1h` or `90d`; a ValueError names the bad value."""
    value = text.strip().lower()
    unit = value[-1:] if value[-1:] in _UNITS else "s"
    number = value[:-1] if value[-1:] in _UNITS else value
    try:
        seconds = float(number) * _UNITS[unit]
    except ValueError:
        raise ValueError(f"invalid duration {text!r}: use e.g. 30s, 15m, 1h or 90d") from None
    if seconds <= 0:
        raise ValueError(f"invalid duration {text!r}: must be positive")
    return seconds


_SIZES = {"": 1, "k": 1000, "ki": 1024, "m": 1000**2, "mi": 1024**2, "g": 1000**3, "gi": 1024**3}


def parse_size(text: str) -> int:
    """Bytes in `262144`, `256Ki`, `16Mi` or `1G` (Kubernetes quantity suffixes); a ValueError
    names the bad value."""
    value = text.strip().lower()
    number = value.rstrip("kmgi")
    unit = value[len(number) :]
    if unit not in _SIZES or not number.isdigit():
        raise ValueError(f"invalid size {text!r}: use bytes or e.g. 256Ki, 16Mi, 1Gi")
    size = int(number) * _SIZES[unit]
    if size <= 0:
        raise ValueError(f"invalid size {text!r}: must be positive")
    return size
