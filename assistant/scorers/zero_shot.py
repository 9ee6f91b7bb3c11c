"""The zero-shot scorer, for an image without references: each patch against its own image's
patches, scaled by the text map, and scored by how far the worst area stands out from the rest.

Settings: `anomaly_map` `zero_shot_self_radius`, `zero_shot_min_mean`, `sigma`; the threshold is
`threshold.zero_shot`."""
from __future__ import annotations

import numpy as np
import torch

from ..encoders import EncodedImages
from ..maps.anomaly_map import merge_levels, smooth
from ..result import EngineError
from .bank import BankScorer
from .base import grid_size
from .text import TextScorer


class ZeroShotScorer:
    def __init__(self, preset: dict, bank: BankScorer, text: TextScorer, grid_level: int):
        map_cfg = preset["anomaly_map"]
        self.radius = int(map_cfg.get("zero_shot_self_radius", 0))
        self.min_mean = float(map_cfg.get("zero_shot_min_mean", 0.0))
        self.sigma = float(map_cfg.get("sigma", 2.0))
        self.bank = bank
        self.text = text
        self.grid_level = grid_level

    @torch.no_grad()
    def self_maps(self, encoded: EncodedImages) -> torch.Tensor | None:
        """Each patch against its own image's patches more than `zero_shot_self_radius` cells away,
        or None where the preset does not ask for it (the CLIP presets rely on their trained text
        map, as AnomalyGPT does). Repeated structure (tread, weave) vouches for itself; a defect does
        not (docs/method.md, "Zero-shot": tire zero-shot image AUROC 59.4 with the text map alone,
        82.3 fused with this map)."""
        if self.radius <= 0:
            return None
        distances = self.bank.new_bank(0).self_distance_maps(encoded.levels, self.radius)
        return merge_levels(distances, grid_size(encoded, self.grid_level))

    def assess(self, encoded: EncodedImages, text_maps: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray]:
        """(B x h x w maps, B scores). Nothing sets a normal level, so a self map is divided by its
        own mean: a unit that one threshold can serve for every kind of part. The mean is floored at
        `zero_shot_min_mean`: on a blank part every patch matches its neighbours, and the tiny border
        effects left would otherwise be divided into "defects" in every corner."""
        self_maps = self.self_maps(encoded)
        if self_maps is None and text_maps is None:
            raise EngineError("no reference image given and the text map is untrained: add at least one known-good reference image")
        if self_maps is None:
            fused = text_maps
        elif text_maps is None:
            fused = self_maps
        else:
            fused = self_maps * self.text.scale(text_maps)
        maps = smooth(fused, self.sigma)
        if self_maps is not None:
            maps = maps / np.maximum(maps.mean(axis=(1, 2), keepdims=True), max(self.min_mean, 1e-6))
        return maps, maps.reshape(len(maps), -1).max(axis=1)
