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
