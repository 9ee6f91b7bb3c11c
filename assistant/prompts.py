"""Access to the data files in prompts/ (prompt ensembles, positions, classes, answer templates)."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"


@lru_cache(maxsize=None)
def load(name: str) -> dict:
    path = PROMPTS_DIR / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"prompt data file missing: {path}")
    return json.loads(path.read_text(encoding="utf-8"))


def ensemble(class_name: str) -> dict[str, list[str]]:
    """Every template x state sentence, per state ('normal', 'abnormal'), for one class name."""
    states, templates = load("states"), load("templates")["templates"]
    return {
        state: [template.format(phrase.format(class_name)) for phrase in states[state] for template in templates]
        for state in ("normal", "abnormal")
    }


def position_grid() -> list[list[str]]:
    return load("positions")["grid"]


def whole_position() -> str:
    return load("positions")["whole"]


@lru_cache(maxsize=None)
def load_text(name: str) -> str:
    path = PROMPTS_DIR / f"{name}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"prompt text file missing: {path}")
    return path.read_text(encoding="utf-8").strip()
