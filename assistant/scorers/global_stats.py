"""The texture-statistics scorer, for surfaces: how far the whole image's channel statistics moved
from the references'. It adds to the score, never to the map.

Added, not a max, so a surface whose tone varies between normal parts more than the references show
still ranks by its map (docs/method.md, "Texture statistics": 4 references, magnetic tile 67.0 ->
71.7, textile local 82.9 -> 92.0, global 100 -> 99.8). On a cropped object the statistics move with
pose and framing (tire 85.5 -> 66.3 image AUROC with them; docs/method.md, "Objects and surfaces"),
so objects get none. A surface's statistics are also fitted on its references turned by right
angles (`texture.turns`): an anisotropic finish's statistics turn with it (docs/method.md, "Turned
surfaces": turned textile, 1 reference, 63.1 -> 96.1). Settings: `anomaly_map.global_levels` and
`anomaly_map.texture`."""
from __future__ import annotations

import numpy as np
import torch

from ..encoders import EncodedImages
from ..maps.global_stats import GlobalStats
from ..reference_set import ReferenceSet
from .base import ReferenceViews, Terms


class GlobalStatsScorer:
    def __init__(self, preset: dict):
        map_cfg = preset["anomaly_map"]
        self.global_levels = list(map_cfg.get("global_levels", []))
        self.cfg = map_cfg.get("texture", {})
        self.weight = float(self.cfg.get("weight", 0.5))
        self.levels = set(self.global_levels)

    def fit(self, views: ReferenceViews) -> dict:
        """Statistics of every reference and, as their unit, the largest shift of a held-out normal
        image from the statistics of the other folds; one reference is fitted on its own tiles."""
        if not self.global_levels or views.relative:
            return {"stats": None}
        if views.n_images == 1:
            return self._fit_one_reference(views)
        shifts = self._held_out_shifts(views)
        return {"stats": GlobalStats(self.global_levels).fit([view.levels for view in views.texture_views()]),
                "global_unit": float(shifts.max())}

    def _held_out_shifts(self, views: ReferenceViews) -> np.ndarray:
        shifts = []
        for fold in views.folds:
            kept = sorted({views.image_of(index) for index in views.without(fold)})
            stats = GlobalStats(self.global_levels).fit([view.levels for view in views.texture_views(kept)])
            shifts += [float(stats.distance(views.per_view[index].levels)[0]) for index in views.held_out_queries(fold)]
        return np.asarray(shifts)

    def _fit_one_reference(self, views: ReferenceViews) -> dict:
        """Tile statistics for one surface reference (and its turned views), in units of its own
        tile-to-tile spread as photographed.

        Nothing shows how far texture moves between normal parts (flipped views move it more than
        two normal textiles differ and less than two normal magnetic tiles), so the normal level
        (`texture.one_reference`) is a fixed guess rather than a held-out measurement."""
        cfg = self.cfg.get("one_reference")
        if not cfg:
            return {"stats": None}

        def tiles(fitted: list[EncodedImages]) -> GlobalStats:
            return GlobalStats(self.global_levels, int(cfg.get("grid", 2)), int(cfg.get("border", 1))).fit(
                [view.levels for view in fitted])
        unit = max(tiles(views.originals).tile_spread(), 1e-6)  # a blank reference has no spread
        return {"stats": tiles(views.texture_views()), "global_unit": unit,
                "texture_normal": float(cfg.get("normal_level", 0.5))}

    def assess(self, encoded: EncodedImages, references: ReferenceSet, text_scale: torch.Tensor | None) -> Terms:
        """`texture.weight` x the shift above its normal level, in units the held-out images set, at
        most `texture.cap` threshold units where the preset sets one (embedded: 0.5).

        A capture change (blur, noise, a turn that enlarges the crop) moves every image's statistics,
        and an unbounded term then ranks images by how far the capture moved them rather than by
        their maps (docs/method.md, "Turned surfaces": magnetic tile, 4 references, dev, turned
        52.9 -> 63.7 and capture changes 66.3 -> 73.8 with cap 0.5; textile unchanged)."""
        if references.stats is None:
            return None, None
        shifts = references.stats.distance(encoded.levels).numpy() / references.global_unit
        term = self.weight * np.maximum(shifts - references.texture_normal, 0.0)
        cap = self.cfg.get("cap")
        return None, term if cap is None else np.minimum(term, float(cap))
