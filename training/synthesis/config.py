"""Per-class synthesis settings: the `default` block of training/synthesis.json, updated by a class's
own block (patch sizes, methods and their weights, which augmentations are safe)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

METHODS = ("poisson", "cutpaste", "perlin")
FOREGROUND_MODES = ("auto", "none")
CONFIG_PATH = Path(__file__).resolve().parent.parent / "synthesis.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class SynthesisConfig:
    """How anomalies are synthesised for one class. Sizes are fractions of the image side."""

    methods: dict[str, float] = field(default_factory=lambda: {"poisson": 0.4, "cutpaste": 0.3, "perlin": 0.3})
    patch_min_width: float = 0.06
    patch_max_width: float = 0.25
    patch_min_height: float = 0.06
    patch_max_height: float = 0.25
    max_patches: int = 2
    rotate: bool = False
    flip: bool = True
    foreground: str = "auto"
    min_mask_pixels: int = 24
    # Secondary knobs (all have sensible defaults; overridable from the JSON file as well).
    scar_probability: float = 0.3
    change_threshold: int = 8  # poisson: a pixel counts as changed above this (0-255, max over channels)
    min_mean_change: float = 6.0  # mean |change| inside the mask below this = invisible, try again
    perlin_max_area: float = 0.3  # largest perlin region as a fraction of the foreground
    beta_min: float = 0.2  # perlin texture opacity range
    beta_max: float = 0.8
    max_attempts: int = 6

    def __post_init__(self) -> None:
        self.methods = {str(k): float(v) for k, v in dict(self.methods).items()}
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise ValueError(f"unknown synthesis method(s) {sorted(unknown)}; choose from {list(METHODS)}")
        if any(v < 0 for v in self.methods.values()) or sum(self.methods.values()) <= 0:
            raise ValueError("method weights must be >= 0 with a positive sum")
        if self.foreground not in FOREGROUND_MODES:
            raise ValueError(f"foreground must be one of {FOREGROUND_MODES}, got {self.foreground!r}")
        for lo, hi, name in ((self.patch_min_width, self.patch_max_width, "width"),
                             (self.patch_min_height, self.patch_max_height, "height")):
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"patch {name} range must satisfy 0 < min <= max <= 1, got {lo}..{hi}")
        if not 0 <= self.beta_min <= self.beta_max <= 1:
            raise ValueError("beta range must satisfy 0 <= beta_min <= beta_max <= 1")
        if self.max_patches < 1 or self.min_mask_pixels < 1 or self.max_attempts < 1:
            raise ValueError("max_patches, min_mask_pixels and max_attempts must be >= 1")
        if not 0 < self.perlin_max_area <= 1:
            raise ValueError("perlin_max_area must be in (0, 1]")

    def weights(self) -> dict[str, float]:
        """Normalised weights of the enabled methods."""
        total = sum(self.methods.values())
        return {m: self.methods[m] / total for m in METHODS if self.methods.get(m, 0) > 0}


def normalise_class(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def _read_config_file(path: Path | None = None) -> dict:
    path = Path(path) if path is not None else CONFIG_PATH
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    if not isinstance(data, dict) or not isinstance(data.get("default"), dict):
        raise ValueError(f"{path}: expected an object with a 'default' block")
    return data


def configured_classes(path: Path | None = None) -> list[str]:
    """Class names that have their own block in the settings file."""
    return sorted(_read_config_file(path).get("classes", {}))


def load_synthesis_config(class_name: str | None, path: Path | None = None) -> SynthesisConfig:
    """The settings for `class_name`: the file's default block updated by the class block, if any.

    Unknown classes (and None) get the default. Class names are matched case-insensitively with
    spaces/hyphens treated as underscores.
    """
    data = _read_config_file(path)
    merged = {k: v for k, v in data["default"].items() if not k.startswith("_")}
    classes = {normalise_class(k): v for k, v in data.get("classes", {}).items()}
    override = classes.get(normalise_class(class_name)) if class_name else None
    for key, value in (override or {}).items():
        if key.startswith("_"):
            continue
        if key == "methods":
            base = merged.get("methods", SynthesisConfig().methods)
            merged["methods"] = {**base, **value}
        else:
            merged[key] = value
    known = {f.name for f in fields(SynthesisConfig)}
    unknown = set(merged) - known
    if unknown:
        raise ValueError(f"unknown synthesis setting(s) {sorted(unknown)}")
    return SynthesisConfig(**merged)
