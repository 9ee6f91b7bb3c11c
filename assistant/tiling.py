"""Large images and line-scan strips, scored in overlapping tiles on top of the engine's public calls.

The engine resizes each view to about `encoder.image_size`² pixels, so a 10-pixel defect on a
4000-pixel photo shrinks below one cell of its map, and a strip of 8192 x 500 becomes a sliver.
An image whose longer side exceeds `tiling.max_side`, or whose aspect ratio exceeds what one view
takes (`images.MAX_ASPECT`), is instead cut into tiles of the encoder's own size at a working
resolution that keeps defects' pixels; every tile is scored against a reference set made of the
tiles of the normal images (cut the same way), and the tile maps, in threshold units, are stitched
into one map at the image's size. Smaller images never come here.

Preset section "tiling" (every key optional; the defaults below apply when it is absent):
  max_side       1024    longer side, in pixels, up to which an image is one view (the untiled path)
  tile           448     tile side in working pixels; the embedded encoder's view, so tiles are
                         encoded at about 1:1
  overlap        0.25    least share of a tile its neighbour overlaps
  min_defect_px  null    smallest defect, in image pixels, that must stay visible: the image is
                         scaled down only until such a defect spans DEFECT_VIEW_PX working pixels
                         (null: native resolution; never enlarged)
  max_tiles      256     most tiles per image: beyond it the working resolution is lowered (logged)
  stitch         "max"   how overlapping tile maps combine: "max", or "mean" feathered towards
                         the tile edges
"""
from __future__ import annotations

import logging
import math
import time
import weakref
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from .images import MAX_ASPECT
from .maps.anomaly_map import find_regions, place_map, position_word, to_image_size
from .reference_set import ReferenceSet, TiledReferences
from .result import Detection, EngineError, Region

if TYPE_CHECKING:
    from .engine import AnomalyEngine

log = logging.getLogger(__name__)

# A defect of `min_defect_px` keeps this many working pixels: 4 cells of the finest map grid
# (stride 4), about the size of the smoothing kernel, which a single hot cell would not survive.
DEFECT_VIEW_PX = 16
STITCH_MODES = ("max", "mean")
TILE_BATCH = 8
# find_regions drops areas below this share of the image; tiled, the share is of one tile, so a
# small defect on a large image is not discarded for being small next to the whole image.
MIN_REGION_FRACTION = 1e-4


class TilingError(ValueError):
    """A tiling setting that cannot work, named with its preset key."""


@dataclass(frozen=True)
class TilingSettings:
    max_side: int = 1024
    tile: int = 448
    overlap: float = 0.25
    min_defect_px: float | None = None
    max_tiles: int = 256
    stitch: str = "max"

    @classmethod
    def from_preset(cls, preset: dict) -> "TilingSettings":
        section = preset.get("tiling") or {}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise TilingError(f"unknown tiling setting {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        settings = cls(**section)
        settings.check()
        return settings

    def check(self) -> None:
        if not 64 <= int(self.tile) <= 4096:
            raise TilingError(f"tiling.tile must be 64-4096 pixels, got {self.tile}")
        if not 0.0 <= float(self.overlap) <= 0.75:
            raise TilingError(f"tiling.overlap must be between 0 and 0.75, got {self.overlap}")
        if int(self.max_side) < int(self.tile):
            raise TilingError(f"tiling.max_side ({self.max_side}) must be at least tiling.tile ({self.tile})")
        if self.min_defect_px is not None and not float(self.min_defect_px) > 0:
            raise TilingError(f"tiling.min_defect_px must be a positive number of pixels or null, got {self.min_defect_px}")
        if int(self.max_tiles) < 1:
            raise TilingError(f"tiling.max_tiles must be at least 1, got {self.max_tiles}")
        if self.stitch not in STITCH_MODES:
            raise TilingError(f"tiling.stitch must be one of {', '.join(STITCH_MODES)}, got {self.stitch!r}")


def settings_of(engine: AnomalyEngine) -> TilingSettings:
    return TilingSettings.from_preset(engine.preset)


def is_large(size: tuple[int, int], settings: TilingSettings) -> bool:
    """Larger than one view: a longer side beyond `max_side`, or a strip beyond MAX_ASPECT."""
    width, height = size
    return max(width, height) > settings.max_side or max(width, height) / max(1, min(width, height)) > MAX_ASPECT


def applies(engine: AnomalyEngine, image: Image.Image) -> bool:
    """Whether `engine.detect` scores this image in tiles."""
    return is_large(image.size, settings_of(engine))


# -- where the tiles go -----------------------------------------------------------------------------
@dataclass(frozen=True)
class TilePlan:
    scale: float  # working pixels per pixel of the prepared view
    size: tuple[int, int]  # working image (width, height)
    boxes: tuple[tuple[int, int, int, int], ...]  # tiles in working pixels, row by row
    overlap: int  # least overlap of neighbouring tiles, in working pixels


def axis_spans(length: int, tile: int, overlap: float) -> list[tuple[int, int]]:
    """(start, end) of the tiles along one axis, evenly spread, each pair overlapping by at least
    `overlap` x tile. An axis up to tile x (1 + overlap) long is one tile: the encoder shrinks such
    a tile by at most sqrt(1.25) instead of a second, mostly redundant row."""
    if length <= tile * (1 + overlap):
        return [(0, length)]
    stride = tile * (1 - overlap)
    count = math.ceil((length - tile) / stride) + 1
    starts = [round(i * (length - tile) / (count - 1)) for i in range(count)]
    return [(start, start + tile) for start in starts]


def plan_tiles(size: tuple[int, int], scale: float, settings: TilingSettings) -> TilePlan:
    work = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
    columns = axis_spans(work[0], settings.tile, settings.overlap)
    rows = axis_spans(work[1], settings.tile, settings.overlap)
    boxes = tuple((x0, y0, x1, y1) for y0, y1 in rows for x0, x1 in columns)
    return TilePlan(scale, work, boxes, max(1, round(settings.tile * settings.overlap)))


def work_scale(size: tuple[int, int], settings: TilingSettings) -> float:
    """Working pixels per image pixel: native, or as far down as `min_defect_px` allows, and lower
    still where the image would need more than `max_tiles` tiles."""
    scale = 1.0 if settings.min_defect_px is None else min(1.0, DEFECT_VIEW_PX / float(settings.min_defect_px))
    wanted = scale
    while len(plan_tiles(size, scale, settings).boxes) > settings.max_tiles:
        scale *= 0.9
    if scale < wanted:
        log.warning("%dx%d image: tiled at %.2f x its resolution to stay within %d tiles (tiling.max_tiles); "
                    "defects narrower than %.0f pixels may be missed", *size, scale, settings.max_tiles,
                    DEFECT_VIEW_PX / scale)
    return scale


def cut(view: Image.Image, plan: TilePlan) -> list[Image.Image]:
    work = view if plan.size == view.size else view.resize(plan.size, Image.BICUBIC)
    return [work.crop(box) for box in plan.boxes]


# -- the engine as tiles see it ---------------------------------------------------------------------
_TILE_ENGINES: "weakref.WeakKeyDictionary[AnomalyEngine, AnomalyEngine]" = weakref.WeakKeyDictionary()


def tile_engine(engine: AnomalyEngine) -> AnomalyEngine:
    """The engine with its encoder and text map shared, but without a foreground crop per tile and
    with absolute maps. The whole image is cropped once before it is cut; a crop per tile would
    enlarge each tile by its own factor, and a relative map (divided by its own mean) would make a
    tile of background and a tile of part incomparable. The tiles of a few images are not many
    references: they show different places of one part, not one place of many parts, so their bank
    keeps the self-similarity and every tile's patches however many tiles it holds."""
    view = _TILE_ENGINES.get(engine)
    if view is None:
        view = engine.with_settings({"anomaly_map": {"crop": "none", "relative": False},
                                     "memory_bank": {"self_max_references": None, "nearest_views": None}})
        _TILE_ENGINES[engine] = view
    return view


def reference_scale(engine: AnomalyEngine, images: list[Image.Image]) -> float:
    """The working scale the first reference's prepared view asks for; every reference is cut at it,
    and so are the queries judged against them, so their tiles show patches of one size."""
    return work_scale(engine.prepare(images[0])[0].size, settings_of(engine))


def reference_tiles(engine: AnomalyEngine, images: list[Image.Image], scale: float,
                    settings: TilingSettings) -> list[Image.Image]:
    tiles = []
    for image in images:
        view, _ = engine.prepare(image)
        tiles += cut(view, plan_tiles(view.size, scale, settings))
    return tiles


def references(engine: AnomalyEngine, images: list[Image.Image], class_name: str = "object", seed: int = 0,
               scale: float = 1.0) -> TiledReferences:
    """Bank and threshold from every tile of the normal `images`. The engine holds tiles out in
    folds as it holds out reference images, so the threshold is the highest peak a normal tile
    reached against a bank without it. A set already built (a profile's) is used as it is, at its
    own scale; one built for one-view scoring cannot score tiles."""
    if isinstance(images, TiledReferences):
        return images
    if isinstance(images, ReferenceSet):
        raise EngineError(f"this image needs tiles (longer than {settings_of(engine).max_side} px, or a strip) and the "
                          "profile was made from images scored in one view: make a profile from images of this size")
    if not images:
        raise EngineError("no reference images given")
    tiles = reference_tiles(engine, images, scale, settings_of(engine))
    return TiledReferences(tile_engine(engine).references(tiles, class_name, seed), scale, len(images), len(tiles))


# -- scoring ----------------------------------------------------------------------------------------
@dataclass
class TiledMap:
    """One image scored in tiles: each tile's map (threshold units, on its own grid) and score, and
    where the tiles lie, from which `full_map` stitches the map at the image's size."""

    tile_maps: list[np.ndarray]
    tile_scores: np.ndarray
    plan: TilePlan
    view_box: tuple[int, int, int, int]  # the prepared view in the image
    image_size: tuple[int, int]
    seconds: float

    @property
    def score(self) -> float:
        return float(self.tile_scores.max())

    def full_map(self, mode: str = "max") -> np.ndarray:
        stitched = stitch(self.tile_maps, self.plan, mode)
        return place_map(stitched, self.view_box, *self.image_size)

    @property
    def tile_boxes(self) -> list[tuple[int, int, int, int]]:
        """The tiles in image pixels."""
        x0, y0, x1, y1 = self.view_box
        sx, sy = (x1 - x0) / self.plan.size[0], (y1 - y0) / self.plan.size[1]
        return [(x0 + math.floor(b[0] * sx), y0 + math.floor(b[1] * sy), x0 + math.ceil(b[2] * sx),
                 y0 + math.ceil(b[3] * sy)) for b in self.plan.boxes]


def stitch(tile_maps: list[np.ndarray], plan: TilePlan, mode: str = "max") -> np.ndarray:
    """Tile maps resized to their boxes of the working image; where tiles overlap, the maximum, or
    ("mean") a mean weighted by a ramp falling over the overlap towards each tile's edges, where
    the CNN's zero padding shows."""
    width, height = plan.size
    if mode == "max":
        total = np.full((height, width), -np.inf, np.float32)
        for tile_map, (x0, y0, x1, y1) in zip(tile_maps, plan.boxes):
            np.maximum(total[y0:y1, x0:x1], to_image_size(tile_map, x1 - x0, y1 - y0), out=total[y0:y1, x0:x1])
        return total
    total = np.zeros((height, width), np.float32)
    weights = np.zeros((height, width), np.float32)
    for tile_map, (x0, y0, x1, y1) in zip(tile_maps, plan.boxes):
        weight = np.outer(_ramp(y1 - y0, plan.overlap), _ramp(x1 - x0, plan.overlap))
        total[y0:y1, x0:x1] += weight * to_image_size(tile_map, x1 - x0, y1 - y0)
        weights[y0:y1, x0:x1] += weight
    return total / np.maximum(weights, 1e-12)


def _ramp(length: int, ramp: int) -> np.ndarray:
    position = np.arange(length, dtype=np.float32) + 0.5
    return np.clip(np.minimum(position, length - position) / max(1, ramp), 1e-3, 1.0)


def assess(engine: AnomalyEngine, image: Image.Image, references: TiledReferences | None, class_name: str,
           scale: float | None = None, prepared: tuple[Image.Image, tuple[int, int, int, int]] | None = None) -> TiledMap:
    """Tile maps and scores of `image` (`prepared`: its `engine.prepare` view and box, if already
    made); without references every tile is scored zero-shot. Tiles are encoded and scored a
    batch at a time, so memory holds one batch of features."""
    began = time.perf_counter()
    view, box = prepared or engine.prepare(image)
    if scale is None:
        scale = references.scale if references else work_scale(view.size, settings_of(engine))
    plan = plan_tiles(view.size, scale, settings_of(engine))
    tiles = cut(view, plan)
    scorer = tile_engine(engine)
    reference_set = references.references if references else None
    maps, scores = [], []
    for start in range(0, len(tiles), TILE_BATCH):
        for encoded in scorer.encode_each(tiles[start:start + TILE_BATCH], TILE_BATCH):
            tile_maps, tile_scores = scorer.assess(encoded, reference_set, class_name)
            maps.append(tile_maps[0])
            scores.append(float(tile_scores[0]))
    return TiledMap(maps, np.asarray(scores), plan, box, image.size, time.perf_counter() - began)


def regions(tiled: TiledMap, full: np.ndarray, threshold: float) -> list[Region]:
    """Where to look on an image judged anomalous, from its stitched map `full`: the areas above the
    threshold, or the hottest area when none is (smoothing and resizing can lower a peak), or, when
    only a tile's texture statistics crossed the threshold, that tile."""
    width, height = tiled.image_size
    if float(full.max()) <= threshold:
        x0, y0, x1, y1 = tiled.tile_boxes[int(np.argmax(tiled.tile_scores))]
        return [Region(box=(x0, y0, x1, y1), position=position_word((x0 + x1) / 2, (y0 + y1) / 2, width, height),
                       area_fraction=(x1 - x0) * (y1 - y0) / (width * height), peak=float(full[y0:y1, x0:x1].max()))]
    tile_x0, tile_y0, tile_x1, tile_y1 = tiled.tile_boxes[0]  # every tile has this size
    fraction = MIN_REGION_FRACTION * min(1.0, (tile_x1 - tile_x0) * (tile_y1 - tile_y0) / (width * height))
    found = find_regions(full, threshold, min_area_fraction=fraction)
    return found or find_regions(full, float(np.quantile(full, 0.995)), min_area_fraction=fraction)[:1]


def detect(engine: AnomalyEngine, image: Image.Image, reference_images=None,
           class_name: str = "object", threshold: float | None = None) -> Detection:
    """`AnomalyEngine.detect` for a large image or a strip: the same Detection, made from tiles."""
    settings = settings_of(engine)
    prepared = engine.prepare(image)
    scale = work_scale(prepared[0].size, settings)
    tiled_refs = references(engine, reference_images, class_name, 0, scale) if reference_images else None
    scale = tiled_refs.scale if tiled_refs else scale
    tiled = assess(engine, image, tiled_refs, class_name, scale, prepared)
    estimated = threshold is None and (tiled_refs is None or tiled_refs.threshold_estimated)
    if threshold is None:
        threshold = tiled_refs.threshold if tiled_refs else engine.zero_shot_threshold()
    anomalous = bool(tiled.score > threshold)
    log.info("%dx%d image scored in %d tiles at %.2f x in %.1f s", *image.size, len(tiled.tile_maps), scale,
             tiled.seconds)
    full = tiled.full_map(settings.stitch)
    return Detection(anomalous=anomalous, score=tiled.score, threshold=float(threshold), anomaly_map=full,
                     regions=regions(tiled, full, float(threshold)) if anomalous else [],
                     image_size=image.size, mode="few-shot" if tiled_refs else "zero-shot",
                     threshold_estimated=estimated, n_references=tiled_refs.n_images if tiled_refs else 0, class_name=class_name)
