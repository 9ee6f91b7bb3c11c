"""The colour-distribution scorer, for objects: how far the part's colour distribution moved from
the references'. It adds to the score, never to the map.

Objects get relative maps, which cannot see a change that covers much of the part (a recoloured or
missing piece lifts the map's mean with its peak), and no texture statistics, which move with pose
and framing. A distribution of colours over the part's mask does neither (docs/method.md, "Colour
distribution": logical-anomaly proxy, 4 references, dev 86.5 -> 87.6, holdout 85.2 -> 87.0; clean tire unchanged).

It needs two references or more: its unit, how far normal parts' colours differ, is measured by
holding each reference out. One photo cannot show that, and a fixed unit read off tire photos
(1.1) made every part whose colours vary more than a tire's anomalous: on the part proxy of magnetic
tile (docs/protocol.md) one-reference image AUROC fell to 52.6 with the term, against 61.0 without.
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
        # The least unit (CIELAB units): a few alike references would otherwise make any change count.
        self.normal_level = float(self.cfg.get("normal_level", 1.1))

    @property
    def active(self) -> bool:
        return bool(self.cfg)

    def fit(self, views: ReferenceViews) -> dict:
        """The references' mean quantile function and, as the unit, the largest shift of one
        reference from the others' (leave-one-out), at least `normal_level`; no term for one
        reference (module docstring)."""
        originals = views.originals
        if not self.active or not views.relative or len(originals) < 2 or any(view.colour is None for view in originals):
            return {"colour": None}
        quantiles = np.concatenate([view.colour for view in originals])
        held_out = [float(colour_shift(quantiles[i:i + 1], centre(np.delete(quantiles, i, axis=0)))[0])
                    for i in range(len(quantiles))]
        return {"colour": centre(quantiles), "colour_unit": max(self.normal_level, max(held_out))}

    def assess(self, encoded: EncodedImages, references: ReferenceSet, text_scale: torch.Tensor | None) -> Terms:
        """`weight` x the shift above the unit, in units of it."""
        if references.colour is None:
            return None, None
        if encoded.colour is None:
            raise RuntimeError("these references judge colour: encode the queries with their source images")
        shifts = colour_shift(encoded.colour, references.colour) / references.colour_unit
        return None, self.weight * np.maximum(shifts - 1.0, 0.0)
