"""What the anomaly engine returns: the one structure the LLM, the UI and the CLIs all read."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Region:
    """One connected anomalous area, in original-image pixels."""

    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (x1, y1 exclusive)
    position: str  # coarse 3x3 grid word: "top left", "center", "bottom right", ...
    area_fraction: float  # share of the image the region covers
    peak: float  # highest anomaly-map value inside the region

    def to_json(self) -> dict:
        return {"box": [int(v) for v in self.box], "position": self.position}


@dataclass(frozen=True)
class CaptureChange:
    """A photo whose background detail lies outside what its references show: `change` is
    "noisier" or "smoother" and `ratio` the photo's detail over the nearest reference's."""

    change: str
    ratio: float

    def to_json(self) -> dict:
        return {"change": self.change, "ratio": round(self.ratio, 3)}


@dataclass
class Detection:
    """Judgement, score, map and regions for one query image."""

    anomalous: bool
    score: float
    threshold: float
    anomaly_map: np.ndarray  # float32 HxW at original image size, comparable to `threshold`
    regions: list[Region] = field(default_factory=list)
    image_size: tuple[int, int] = (0, 0)  # width, height
    mode: str = "zero-shot"  # "zero-shot" (self map and text map) or "few-shot" (with references)
    n_references: int = 0
    class_name: str = "object"
    # True when no normal image the engine did not see set the threshold: zero-shot (one fixed
    # threshold for every kind of part) or one surface reference (its own flipped views and a fixed
    # margin). Such a verdict is weaker (docs/method.md, "Calibration"), and the answer says so; a
    # threshold the user set is the user's
    threshold_estimated: bool = False
    # The photo's background detail outside what its references show (assistant/capture.py): a
    # capture change that can move the verdict, which the answer points out; None when within it
    # or not measured (no references, a surface, tiles).
    capture: CaptureChange | None = None

    @property
    def confidence(self) -> float:
        """How far the score sits from the threshold, squashed to 0.5..1 (0.5 = on the line)."""
        margin = (self.score - self.threshold) / max(abs(self.threshold), 1e-6)
        return float(0.5 + 0.5 * np.tanh(2.0 * abs(margin)))

    def to_json(self) -> dict:
        return {
            "anomalous": bool(self.anomalous),
            "score": round(float(self.score), 6),
            "threshold": round(float(self.threshold), 6),
            "regions": [region.to_json() for region in self.regions],
            "capture": self.capture.to_json() if self.capture else None,
        }


class EngineError(ValueError):
    """A one-line problem the user can act on (e.g. nothing to compare against)."""
