"""The texture-map scorer, for surfaces: where window texture statistics leave the references' own
spread. It adds to the map, which says where to look, and never to the score.

It finds zones finished differently (magnetic tile "uneven") yet also fires on normal tiles whose
grinding differs from the reference's, which costs image AUROC when it decides (docs/method.md,
"Texture map"). Objects get none: they are cropped and posed differently from photo to photo, so
their window statistics move without a defect. Settings: `anomaly_map.texture_map`."""
from __future__ import annotations

import numpy as np
import torch

from ..encoders import EncodedImages
from ..maps.anomaly_map import merge_levels
from ..maps.texture_map import TextureBank
from ..reference_set import ReferenceSet
from .base import ReferenceViews, Terms, grid_size


class TextureScorer:
    def __init__(self, preset: dict, grid_level: int):
        self.cfg = preset["anomaly_map"].get("texture_map")
        self.grid_level = grid_level
        self.levels = {int(self.cfg["level"])} if self.cfg else set()

    def fit(self, views: ReferenceViews) -> dict:
        if not self.cfg or views.relative:
            return {"texture": None}
        cfg = self.cfg
        texture = TextureBank(int(cfg["level"]), int(cfg.get("window", 15)), int(cfg.get("max_windows", 16_384)),
                              int(cfg.get("query_stride", 2)))
        return {"texture": texture.fit([view.levels for view in views.per_view], [view.levels for view in views.originals])}

    @torch.no_grad()
    def distance_maps(self, encoded: EncodedImages, texture: TextureBank) -> np.ndarray:
        """B x h x w texture-statistics distance on the map grid, in units of the references' own spread."""
        return merge_levels([texture.distance_maps(encoded.levels)], grid_size(encoded, self.grid_level)).numpy()

    def assess(self, encoded: EncodedImages, references: ReferenceSet, text_scale: torch.Tensor | None) -> Terms:
        """The excess over `normal_level`, weighted, in the memory bank's units.

        The text map scales the excess as it scales the bank distance: the map is divided by the
        fused maps' normal peak, so an unscaled excess would weigh less with trained adapters than
        without (magnetic tile, 1 shot: pixel AUROC 71.3 unscaled, 72.5 scaled; 71.5 untrained)."""
        if references.texture is None:
            return None, None
        excess = np.maximum(self.distance_maps(encoded, references.texture) - float(self.cfg.get("normal_level", 0.0)), 0.0)
        if text_scale is not None:
            excess = excess * text_scale.numpy()
        return float(self.cfg["weight"]) * excess / references.peak_unit, None
