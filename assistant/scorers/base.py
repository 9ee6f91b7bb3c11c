"""What every scorer shares: the encoded reference views it fits on, the held-out folds it
calibrates on, and the terms it adds to an assessment."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from ..encoders import EncodedImages

if TYPE_CHECKING:
    from ..reference_set import ReferenceSet

# (added to the B x h x w anomaly map, added to the B image scores), both in threshold units; None
# where the scorer adds nothing to that side.
Terms = tuple[np.ndarray | None, np.ndarray | None]


@dataclass
class ReferenceViews:
    """The encoded views of the normal images a reference set is built from, image-major (image i's
    views are `per_view[i * n_views:(i + 1) * n_views]`, its unaugmented view first), and the
    held-out protocol every scorer calibrates with."""

    per_view: list[EncodedImages]
    n_images: int
    n_views: int
    relative: bool  # an object on a plain background: maps in units of their own mean
    class_name: str
    seed: int
    folds: list[set[int]]  # view indices held out together
    queries: set[int]  # the held-out views scored as normal parts
    # Surfaces: the turned views of each image that texture statistics also fit on (`texture.turns`);
    # an image beyond the turn budget, an object, or a preset without turns has none.
    turned: list[list[EncodedImages]] = field(default_factory=list)

    @property
    def originals(self) -> list[EncodedImages]:
        """Each image's unaugmented view."""
        return self.per_view[::self.n_views]

    def texture_views(self, images: list[int] | range | None = None) -> list[EncodedImages]:
        """The unaugmented and turned views of `images` (default: all): what texture statistics fit on."""
        images = range(self.n_images) if images is None else images
        return [view for image in images
                for view in [self.originals[image], *(self.turned[image] if self.turned else [])]]

    def fresh_turned_views(self, images: list[int]) -> list[tuple[int, EncodedImages]]:
        """(image, view) for the turned views of `images` that are not among the bank's own views
        (a turn the bank also makes, rot180, is that view, not a copy)."""
        own = {id(view) for view in self.per_view}
        return [(image, view) for image in images for view in (self.turned[image] if self.turned else [])
                if id(view) not in own]

    def image_of(self, index: int) -> int:
        return index // self.n_views

    def without(self, fold: set[int]) -> list[int]:
        """View indices a fold's bank is built from: every view not held out in it."""
        return [index for index in range(len(self.per_view)) if index not in fold]

    def held_out_queries(self, fold: set[int]) -> list[int]:
        return [index for index in sorted(fold) if index in self.queries]


def held_out_queries(n_images: int, n_views: int) -> range:
    """The views scored as held-out normals: every view of one image, else each image's unaugmented view."""
    return range(n_views) if n_images == 1 else range(0, n_images * n_views, n_views)


def held_out_folds(n_images: int, n_views: int, max_folds: int) -> list[set[int]]:
    """View indices held out together: one view at a time for one image, else the views of every
    image in a fold (image i in fold i mod k, k at most `max_folds` and at least 2, since one fold
    would leave no bank)."""
    if n_images == 1:
        return [{view} for view in range(n_views)]
    k = min(n_images, max(2, max_folds))
    return [{image * n_views + view for image in range(fold, n_images, k) for view in range(n_views)}
            for fold in range(k)]


def grid_size(encoded: EncodedImages, grid_level: int) -> tuple[int, int]:
    """The cells of the map grid: maps live on the grid of the finest memory-bank level."""
    level = encoded.levels[grid_level]
    return int(level.shape[-2]), int(level.shape[-1])


class Scorer(Protocol):
    """One term of an assessment against references: it fits on the reference views, calibrates on
    the held-out folds, and stores both in its fields of the `ReferenceSet` (which profiles save)."""

    levels: set[int]  # encoder levels it reads

    def fit(self, views: ReferenceViews) -> dict:
        """`ReferenceSet` fields this scorer owns, fitted on `views` and calibrated on their folds."""

    def assess(self, encoded: EncodedImages, references: ReferenceSet, text_scale: torch.Tensor | None) -> Terms:
        """This scorer's terms for the encoded queries; `text_scale` is the text map's factor (or None)."""
