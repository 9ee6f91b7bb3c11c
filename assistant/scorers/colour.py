"""The colour-distribution scorer, for objects: how far the part's colour distribution moved from
the references'. It adds to the score, never to the map.

Objects get relative maps, which cannot see a change that covers much of the part (a recoloured or
missing piece lifts the map's mean with its peak), and no texture statistics, which move with pose
and framing. A distribution of colours over the part's mask does neither (docs/method.md, "Colour
distribution": logical-anomaly proxy, 1 reference, dev 73.5 -> 78.0, holdout 75.4 -> 78.7; clean tire within 0.4).
Settings: `anomaly_map.colour` (`weight`, `normal_level`)."""
from __future__ import annotations

import numpy as np
import torch

from ..encoders import EncodedImages
from ..maps.colour_stats import centre, colour_shift
from ..reference_set import ReferenceSet
from .base import ReferenceViews, Terms


class ColourScorer:
    levels: set[int] = set()  # reads pixels, not encoder levels

    def __init__(self, preset: dict):
        self.cfg = preset["anomaly_map"].get("colour") or {}
        self.weight = float(self.cfg.get("weight", 0.5))
        # Shift (CIELAB units) that two normal parts may differ by: the unit with one reference,
        # the least unit with several (a few alike references would otherwise make any change count).
        self.normal_level = float(self.cfg.get("normal_level", 1.1))

    @property
    def active(self) -> bool:
        return bool(self.cfg)

    def fit(self, views: ReferenceViews) -> dict:
        """The references' mean quantile function and, as the unit, the largest shift of one
        reference from the others' (leave-one-out), at least `normal_level`."""
        originals = views.originals
        if not self.active or not views.relative or any(view.colour is None for view in originals):
            return {"colour": None}
        quantiles = np.concatenate([view.colour for view in originals])
        unit = self.normal_level
        if len(quantiles) > 1:
            held_out = [float(colour_shift(quantiles[i:i + 1], centre(np.delete(quantiles, i, axis=0)))[0])
                        for i in range(len(quantiles))]
            unit = max(unit, max(held_out))
        return {"colour": centre(quantiles), "colour_unit": unit}

    def assess(self, encoded: EncodedImages, references: ReferenceSet, text_scale: torch.Tensor | None) -> Terms:
        """`weight` x the shift above the unit, in units of it."""
        if references.colour is None:
            return None, None
        if encoded.colour is None:
            raise RuntimeError("these references judge colour: encode the queries with their source images")
        shifts = colour_shift(encoded.colour, references.colour) / references.colour_unit
        return None, self.weight * np.maximum(shifts - 1.0, 0.0)
