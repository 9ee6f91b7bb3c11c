"""Presets are data (assistant/presets/*.json); this module finds, merges and checks them."""
from __future__ import annotations

import copy
import json
from pathlib import Path

PRESETS_DIR = Path(__file__).resolve().parent / "presets"
REPO_DIR = Path(__file__).resolve().parent.parent


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.json"))


def load_preset(name_or_path: str | Path = "embedded", overrides: dict | None = None) -> dict:
    """A preset by name (file in assistant/presets) or by path to a JSON file, with overrides merged in."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESETS_DIR / f"{name_or_path}.json"
    if not path.is_file():
        raise FileNotFoundError(f"preset {name_or_path!r} not found; available: {', '.join(available_presets())}")
    preset = json.loads(path.read_text(encoding="utf-8"))
    return deep_merge(preset, overrides or {})


def deep_merge(base: dict, overrides: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def resolve_path(value: str | None) -> Path | None:
    """Relative paths in presets are relative to the repository root."""
    if not value:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else REPO_DIR / path
