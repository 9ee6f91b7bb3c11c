"""Visual evidence: for each anomalous region, the area of a reference photo that shows the same
place of a normal part, so "compare it with the reference" is shown and not only said.

The region itself differs from the references (that is why it was found), so it is located in a
reference by its surroundings: the query's level-2 features in a ring around the region, matched
as one template (mean cosine over the ring's cells) at every position of a reference view. An
object's references are searched in the turned views its memory bank matched the query with
(`MemoryBank.choose_views`), and the place found is turned back into the reference photo's own
pixels; with many references, the views nearest the query are searched; surfaces with few
references are searched as photographed. Cells are those of encoder
level `LEVEL`. Measured accuracy: docs/method.md, "Visual evidence".
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .maps.anomaly_map import position_word
from .maps.memory_bank import augmentation, view_matrix
from .reference_set import ReferenceSet
from .result import Detection

LEVEL = 2  # stride 16: a ring of cells around a region of a few cells still fits inside a part
RING = 1.0  # the ring's width per side, in region sides (at least MIN_RING cells)
MIN_RING = 2
MAX_REFERENCES = 4  # references searched (the first ones): each costs one encoding per view


@dataclass
class ReferenceArea:
    """Where a region's surroundings match a reference photo best."""

    reference: int  # index into the references, from 0
    box: tuple[int, int, int, int]  # in the reference photo's pixels
    position: str  # 3 x 3 grid word in the reference photo
    similarity: float  # mean cosine of the ring's features at the match (1 = identical)

    def to_json(self) -> dict:
        return {"reference": self.reference + 1, "box": [int(v) for v in self.box], "position": self.position,
                "similarity": round(float(self.similarity), 3)}


@dataclass
class SearchedView:
    """One reference view, encoded, and how its pixels go back to the reference photo's."""

    reference: int
    features: torch.Tensor  # C x h x w, L2-normalised per cell
    view_size: tuple[int, int]
    crop: tuple[int, int, int, int]  # the view's box in the turned photo (`engine.prepare`)
    to_photo: np.ndarray  # 3 x 3: turned photo -> photo pixels
    photo_size: tuple[int, int]


@torch.no_grad()
def reference_areas(engine, image: Image.Image, detection: Detection, references: list[Image.Image],
                    reference_set: ReferenceSet) -> list[ReferenceArea | None]:
    """One ReferenceArea per region of `detection` (None where the region has no surroundings to match)."""
    if not detection.regions or not references:
        return []
    view, crop = engine.prepare(image)
    query = engine.encoder.encode_images([view]).levels
    grid = query[LEVEL][0]
    cells = (grid.shape[-1] / view.width, grid.shape[-2] / view.height)
    searched = [searched_view(engine, references[index], index, name)
                for index, name in candidate_views(query, len(references), reference_set)]
    areas = []
    for region in detection.regions:
        template = ring_template(grid, to_cells(region.box, crop, cells))
        if template is None or not searched:
            areas.append(None)
            continue
        similarity, reference, box = max((best_match(template, view) for view in searched), key=lambda m: m[0])
        width, height = references[reference].size
        position = position_word((box[0] + box[2]) / 2, (box[1] + box[3]) / 2, width, height)
        areas.append(ReferenceArea(reference, box, position, similarity))
    return areas


def to_cells(box, crop, cells) -> tuple[int, int, int, int]:
    """A box in image pixels as cells of the view's grid (x0, y0, x1, y1; x1, y1 exclusive)."""
    x0, y0, x1, y1 = box
    fx, fy = cells
    return (int(np.floor((x0 - crop[0]) * fx)), int(np.floor((y0 - crop[1]) * fy)),
            int(np.ceil((x1 - crop[0]) * fx)), int(np.ceil((y1 - crop[1]) * fy)))


def ring_template(grid: torch.Tensor, box: tuple[int, int, int, int]):
    """(weighted normalised features C x th x tw, the region's box inside the template) or None when
    the region leaves no ring: the cells around the region, its own cells weighted 0."""
    _, height, width = grid.shape
    x0, y0 = min(max(0, box[0]), width - 1), min(max(0, box[1]), height - 1)
    x1, y1 = min(width, max(box[2], x0 + 1)), min(height, max(box[3], y0 + 1))
    ring_x, ring_y = max(MIN_RING, round(RING * (x1 - x0))), max(MIN_RING, round(RING * (y1 - y0)))
    tx0, ty0, tx1, ty1 = max(0, x0 - ring_x), max(0, y0 - ring_y), min(width, x1 + ring_x), min(height, y1 + ring_y)
    weights = torch.ones(ty1 - ty0, tx1 - tx0)
    weights[y0 - ty0:y1 - ty0, x0 - tx0:x1 - tx0] = 0
    if weights.sum() == 0:
        return None
    features = F.normalize(grid[:, ty0:ty1, tx0:tx1], dim=0)
    return features * (weights / weights.sum()), (x0 - tx0, y0 - ty0, x1 - tx0, y1 - ty0)


def candidate_views(query: list[torch.Tensor], n_references: int, reference_set: ReferenceSet) -> list[tuple[int, str]]:
    """(reference index, view name) to search: the views the bank matched the query with (turned
    views of the first MAX_REFERENCES references; with many references, the MAX_REFERENCES views
    nearest the query), else each of the first MAX_REFERENCES references as photographed."""
    bank = reference_set.bank
    searched = min(n_references, MAX_REFERENCES)
    if bank.views_apart:
        chosen = bank.views_for(query)
        n_views = len(bank.augmentations)
        views = [(bank.image_of_view[v], bank.augmentations[v % n_views]) for v in chosen]
        if bank.nearest_views > 0:
            return [(index, name) for index, name in views if index < n_references][:MAX_REFERENCES]
        return [(index, name) for index, name in views if index < searched]
    return [(index, "identity") for index in range(searched)]


def searched_view(engine, photo: Image.Image, reference: int, name: str) -> SearchedView:
    view, crop = engine.prepare(augmentation(name)(photo))
    grid = engine.encoder.encode_images([view]).levels[LEVEL][0]
    return SearchedView(reference, F.normalize(grid, dim=0), view.size, crop,
                        np.linalg.inv(view_matrix(name, photo)), photo.size)


def best_match(template, view: SearchedView) -> tuple[float, int, tuple[int, int, int, int]]:
    """(similarity, reference, box in the reference photo) of the template's best position in `view`;
    positions partly outside the view count the missing cells as dissimilar."""
    features, (rx0, ry0, rx1, ry1) = template
    th, tw = features.shape[-2:]
    scores = F.conv2d(view.features[None], features[None], padding=(th - 1, tw - 1))[0, 0]
    top, left = divmod(int(scores.argmax()), scores.shape[-1])
    top, left = top - (th - 1), left - (tw - 1)  # the template's corner in the view's grid
    height, width = view.features.shape[-2:]
    sx, sy = view.view_size[0] / width, view.view_size[1] / height
    corners = np.array([[(left + x) * sx + view.crop[0], (top + y) * sy + view.crop[1], 1.0]
                        for x in (rx0, rx1) for y in (ry0, ry1)])
    xs, ys = (view.to_photo @ corners.T)[:2]
    pw, ph = view.photo_size
    x0, y0 = int(np.clip(np.floor(xs.min()), 0, pw - 1)), int(np.clip(np.floor(ys.min()), 0, ph - 1))
    box = (x0, y0, int(np.clip(np.ceil(xs.max()), x0 + 1, pw)), int(np.clip(np.ceil(ys.max()), y0 + 1, ph)))
    return float(scores.max()), view.reference, box
