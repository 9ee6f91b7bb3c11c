"""The anomaly engine: image -> features -> scorers (memory bank, text, texture) -> score, decision, regions.

The LLM, the UI and the CLIs only ever talk to `AnomalyEngine.detect` (or, for batch evaluation,
to `encode` / `references` / `assess`). The engine prepares and encodes views, builds reference
sets and adds up the terms of its scorers (`assistant/scorers/`), where each map is made.
"""
from __future__ import annotations

import copy
import hashlib
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .capture import background_detail, capture_change, reference_details
from .config import deep_merge, load_preset, resolve_path
from .encoders import EncodedImages, create_encoder
from .foreground import estimate_foreground, foreground_box
from .maps.anomaly_map import find_regions, place_map, whole_image_region
from .maps.colour_stats import colour_quantiles
from .maps.memory_bank import augment
from .maps.text_map import TextMap
from .reference_set import ReferenceSet, TiledReferences, estimates_threshold
from .result import CaptureChange, Detection, EngineError, Region
from .scorers import (BankScorer, ColourScorer, GlobalStatsScorer, ReferenceViews, TextScorer, TextureScorer,
                      ZeroShotScorer, grid_size, held_out_folds, held_out_queries)

log = logging.getLogger(__name__)


class AnomalyEngine:
    def __init__(self, preset: dict | str = "embedded", checkpoint_dir: str | Path | None = None):
        self.preset = load_preset(preset) if isinstance(preset, str) else preset
        torch.manual_seed(0)  # untrained adapters are never used for decisions, but keep them reproducible
        self.encoder = create_encoder(self.preset["encoder"])
        folder = checkpoint_dir if checkpoint_dir is not None else resolve_path(self.preset.get("checkpoint"))
        self.checkpoint_dir = Path(folder) if folder else None
        self.text = TextScorer(self.encoder, self.preset, self.checkpoint_dir, self._grid_level())
        if self.text.trained:
            log.info("text-map adapters loaded from %s", self.checkpoint_dir)
        self._compose()

    def _grid_level(self) -> int:
        """Maps live on the grid of the finest memory-bank level; sigma is in cells of that grid."""
        return int(self.preset["anomaly_map"].get("grid_level", min(self.preset["memory_bank"]["levels"])))

    def _compose(self) -> None:
        self.map_cfg = self.preset["anomaly_map"]
        self.threshold_cfg = self.preset["threshold"]
        grid = self._grid_level()
        self.bank = BankScorer(self.preset, self.text, grid)
        # Terms are added in this order; the bank's come first because they set the map's unit.
        self.colour = ColourScorer(self.preset)
        self.scorers = [self.bank, TextureScorer(self.preset, grid), GlobalStatsScorer(self.preset), self.colour]
        self.zero_shot = ZeroShotScorer(self.preset, self.bank, self.text, grid)
        self._reference_cache: dict[str, ReferenceSet] = {}

    def with_settings(self, overrides: dict) -> "AnomalyEngine":
        """This engine with preset `overrides` merged in, sharing its encoder and text map (whose
        settings the overrides must leave alone) and with a reference cache of its own."""
        variant = copy.copy(self)
        variant.preset = deep_merge(self.preset, overrides)
        variant._compose()
        return variant

    @property
    def text_map(self) -> TextMap:
        return self.text.text_map

    @property
    def text_extra_size(self) -> int | None:
        return self.text.extra_size

    # -- features -----------------------------------------------------------------------------
    def foreground_mask(self, image: Image.Image) -> np.ndarray | None:
        """The part's mask where views are cropped to it (crop 'auto'), else None: a query's
        `prepare` and its capture check (`capture_of`) both read it, so it is made once."""
        return estimate_foreground(image) if self.map_cfg.get("crop", "none") == "auto" else None

    def prepare(self, image: Image.Image, mask: np.ndarray | None = None) -> tuple[Image.Image, tuple[int, int, int, int]]:
        """The view the encoder sees and its box in the image: with crop 'auto', an object on a plain
        background is cropped to its bounding box so the encoder's resolution goes to the part.
        `mask`: the image's `foreground_mask`, when already made."""
        full = (0, 0, *image.size)
        if self.map_cfg.get("crop", "none") != "auto":
            return image, full
        box = foreground_box(image, mask=mask)
        return (image.crop(box), box) if box else (image, full)

    @torch.no_grad()
    def encode(self, images: list[Image.Image], text_view: bool = True,
               sources: list[Image.Image] | None = None) -> EncodedImages:
        """Encode already-prepared views that share one input size (see `encode_each` otherwise).

        A trained text map with `text_map.extra_image_size` also reads a second, coarser encoding
        (`TextScorer.view_size`); `text_view=False` skips it for views no text map is made of (the
        augmented views of a reference bank). `sources`, the photos the views were prepared from,
        give the colour statistics (`anomaly_map.colour`), which are read on the whole photo."""
        encoded = self.encoder.encode_images(images)
        extra_size = self.text.view_size
        if extra_size and text_view:
            encoded.text_levels = self.encoder.encode_images(images, extra_size).levels
        if sources is not None and self.colour.active:
            encoded.colour = np.stack([colour_quantiles(source) for source in sources])
        return encoded

    @torch.no_grad()
    def encode_each(self, images: list[Image.Image], batch_size: int = 8, text_views: set[int] | None = None,
                    sources: dict[int, Image.Image] | None = None) -> list[EncodedImages]:
        """One EncodedImages per view, batching views whose input size matches; only the views in
        `text_views` (default: all) get the text map's extra encoding, and only those in `sources`
        (view index -> the photo it was prepared from) the colour statistics."""
        extra_size = self.text.view_size
        groups: dict[tuple, list[int]] = {}
        for index, image in enumerate(images):
            wanted = extra_size and (text_views is None or index in text_views)
            extra = self.encoder.input_size(image, extra_size) if wanted else None
            groups.setdefault((self.encoder.input_size(image), extra), []).append(index)
        out: list[EncodedImages | None] = [None] * len(images)
        for (_, extra), indices in groups.items():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start:start + batch_size]
                encoded = self.encode([images[i] for i in chunk], text_view=extra is not None)
                for b, index in enumerate(chunk):
                    out[index] = EncodedImages(_row(encoded.levels, b), encoded.embedding[b:b + 1],
                                               _row(encoded.text_levels, b))
                    if sources is not None and index in sources and self.colour.active:
                        out[index].colour = colour_quantiles(sources[index])[None]
        return out

    def scoring_levels(self) -> set[int]:
        """Encoder levels that scoring reads once the text map is made (batch evaluation drops the rest)."""
        return set().union(*(scorer.levels for scorer in self.scorers))

    def map_size(self, encoded: EncodedImages) -> tuple[int, int]:
        return grid_size(encoded, self._grid_level())

    # -- maps ---------------------------------------------------------------------------------
    def text_maps(self, encoded: EncodedImages, class_name: str) -> torch.Tensor | None:
        return self.text.maps(encoded, class_name)

    def assess(self, encoded: EncodedImages, references: ReferenceSet | None, class_name: str,
               text_maps: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(B x h x w maps, B image scores), both in threshold units: with references, the sum of
        the scorers' terms (1 = the highest peak a held-out normal view reached); without, the
        zero-shot scorer's map. `text_maps`, when given, are this batch's, made before."""
        if text_maps is None:
            text_maps = self.text.maps(encoded, class_name)
        if references is None:
            return self.zero_shot.assess(encoded, text_maps)
        text_scale = self.text.scale(text_maps)
        maps, scores = None, None
        for scorer in self.scorers:
            map_term, score_term = scorer.assess(encoded, references, text_scale)
            maps = map_term if maps is None else maps if map_term is None else maps + map_term
            scores = score_term if scores is None else scores if score_term is None else scores + score_term
        return maps, scores

    # -- references and threshold -------------------------------------------------------------
    def references(self, images: list[Image.Image] | ReferenceSet, class_name: str = "object",
                   seed: int = 0) -> ReferenceSet:
        """Memory bank and label-free threshold for a set of normal images (cached by content); a set
        already built (a profile's) is used as it is."""
        if isinstance(images, ReferenceSet):
            return images
        if not images:
            raise EngineError("no reference images given")
        key = _fingerprint(images) + f"|{class_name}|{seed}"
        if key not in self._reference_cache:
            if len(self._reference_cache) >= 16:
                self._reference_cache.pop(next(iter(self._reference_cache)))
            self._reference_cache[key] = replace(self._build_references(images, class_name, seed), fingerprint=key)
        return self._reference_cache[key]

    def _margin(self, relative: bool, n_images: int) -> float:
        """Threshold in units of the highest held-out normal peak, with `one_reference_margin` on top
        where the held-out views cannot show part-to-part changes (`estimates_threshold`)."""
        margin = float(self.threshold_cfg.get("margin", 1.0))
        if estimates_threshold(relative, n_images):
            margin *= float(self.threshold_cfg.get("one_reference_margin", 1.0))
        return margin

    def _is_relative(self, cropped: list[bool]) -> bool:
        mode = self.map_cfg.get("relative", "auto")
        if mode == "auto":  # objects on a plain background: the crop found a box in every reference
            return all(cropped)
        return bool(mode)

    @torch.no_grad()
    def _build_references(self, images: list[Image.Image], class_name: str, seed: int) -> ReferenceSet:
        views = self.encode_references(images, class_name, seed)
        fields = {}
        for scorer in self.scorers:
            fields.update(scorer.fit(views))
        return ReferenceSet(relative=views.relative, n_images=len(images),
                            threshold=self._margin(views.relative, len(images)),
                            capture=reference_details(images) if views.relative and self.capture_tolerance else None,
                            **fields)

    @property
    def capture_tolerance(self) -> float | None:
        """`capture_check.tolerance`: the factor by which a photo's background detail may lie outside
        its references' before the answer points it out (unset: no capture check)."""
        tolerance = (self.preset.get("capture_check") or {}).get("tolerance")
        if tolerance is None:
            return None
        if not isinstance(tolerance, (int, float)) or tolerance < 1:
            raise EngineError(f"capture_check.tolerance must be a factor of at least 1, got {tolerance!r}")
        return float(tolerance)

    def capture_of(self, image: Image.Image, reference_set: ReferenceSet | None,
                   mask: np.ndarray | None = None) -> CaptureChange | None:
        """How `image` was captured against an object's references (assistant/capture.py), or None;
        `mask`: the image's `foreground_mask`, when already made."""
        if reference_set is None or reference_set.capture is None or not self.capture_tolerance:
            return None
        return capture_change(background_detail(image, mask), reference_set.capture, self.capture_tolerance)

    def encode_references(self, images: list[Image.Image], class_name: str, seed: int) -> ReferenceViews:
        """The views the scorers fit on: each image augmented as the bank asks, then prepared as a
        query is, so a part turned by any angle keeps all of itself and gets the crop (and so the
        scale) a query at that angle gets; only the held-out queries get the text map's extra view."""
        relative = self._is_relative([self.prepare(image)[1] != (0, 0, *image.size) for image in images])
        names, _ = self.bank.reference_views(len(images), relative)
        n_views = len(names)
        if len(images) == 1 and n_views == 1:  # checked before encoding: nothing could be held out
            raise EngineError("one reference image needs a reference augmentation (e.g. hflip) to set a threshold: add one to the preset or give a second reference image")
        queries = set(held_out_queries(len(images), n_views))
        originals = {index * n_views: image for index, image in enumerate(images)}
        per_view = self.encode_each([self.prepare(view)[0] for view in augment(images, names)], text_views=queries,
                                    sources=originals)
        folds = held_out_folds(len(images), n_views, int(self.threshold_cfg.get("held_out_folds", 5)))
        turned = [] if relative else self._turned_views(images, names, per_view)
        return ReferenceViews(per_view, len(images), n_views, relative, class_name, seed, folds, queries, turned)

    def _turned_views(self, images: list[Image.Image], names: list[str],
                      per_view: list[EncodedImages]) -> list[list[EncodedImages]]:
        """Surface references turned by `anomaly_map.texture.turns`, for texture statistics: the
        feature statistics of an anisotropic finish turn with the part, so statistics of the photos
        as taken call a turned normal surface anomalous (docs/method.md, "Turned surfaces"). The
        first `turn_budget` // turns images get them (encoding is most of a bank's build time, and
        a few images show the turned finish as well as all), reusing the bank's views of the same name."""
        cfg = self.map_cfg.get("texture") or {}
        turns = list(cfg.get("turns") or [])
        if not turns:
            return []
        turned_images = min(len(images), max(1, int(cfg.get("turn_budget", 48)) // len(turns)))
        missing = [name for name in turns if name not in names]
        fresh = iter(self.encode_each([self.prepare(view)[0] for view in augment(images[:turned_images], missing)],
                                      text_views=set()) if missing else [])
        turned = []
        for image in range(turned_images):  # `augment` is image-major, so `fresh` is too
            own = {name: next(fresh) for name in missing}
            turned.append([own[name] if name in own else per_view[image * len(names) + names.index(name)]
                           for name in turns])
        return turned + [[] for _ in images[turned_images:]]

    def zero_shot_threshold(self) -> float:
        return float(self.threshold_cfg.get("zero_shot", 0.5))

    # -- the one call the assistant uses ------------------------------------------------------
    def detect(self, image: Image.Image, references=None, class_name: str = "object",
               threshold: float | None = None) -> Detection:
        """Judge `image` against `references`: normal images, or a set built from them before
        (a ReferenceSet, or tiling's TiledReferences; profiles hold one of these)."""
        from . import tiling  # imports this module

        if tiling.applies(self, image) or isinstance(references, TiledReferences):
            return tiling.detect(self, image, references, class_name, threshold)
        mask = self.foreground_mask(image)
        view, box = self.prepare(image, mask)
        reference_set = self.references(references, class_name) if references else None
        encoded = self.encode([view], sources=[image] if judges_colour(reference_set) else None)
        maps, scores = self.assess(encoded, reference_set, class_name)
        score = float(scores[0])
        estimated = threshold is None and (reference_set is None or reference_set.threshold_estimated)
        if threshold is None:
            threshold = reference_set.threshold if reference_set else self.zero_shot_threshold()
        width, height = image.size
        full_map = place_map(maps[0], box, width, height)
        anomalous = bool(score > threshold)
        regions = anomalous_regions(full_map, float(maps[0].max()), threshold) if anomalous else []
        return Detection(anomalous=anomalous, score=score, threshold=float(threshold), anomaly_map=full_map,
                         regions=regions, image_size=(width, height),
                         mode="few-shot" if reference_set else "zero-shot", threshold_estimated=estimated,
                         n_references=reference_set.n_images if reference_set else 0, class_name=class_name,
                         capture=self.capture_of(image, reference_set, mask))


def _row(levels: list[torch.Tensor] | None, index: int) -> list[torch.Tensor] | None:
    return None if levels is None else [level[index:index + 1] for level in levels]


def anomalous_regions(full_map: np.ndarray, map_peak: float, threshold: float) -> list[Region]:
    """Where to look on a part judged anomalous: the whole image when only the texture statistics
    crossed the threshold, else the areas above it (or, when resizing the map to the image lowered
    its peak below the threshold, the single hottest area)."""
    if map_peak <= threshold:
        return [whole_image_region(full_map)]
    return find_regions(full_map, threshold) or find_regions(full_map, float(np.quantile(full_map, 0.995)))[:1]


def judges_colour(reference_set: ReferenceSet | None) -> bool:
    """Whether queries against this set need their colour statistics (objects' sets only)."""
    return reference_set is not None and reference_set.colour is not None


def _fingerprint(images: list[Image.Image]) -> str:
    digest = hashlib.sha1()
    for image in images:
        digest.update(f"{image.size}{image.mode}".encode())
        digest.update(image.tobytes())
    return digest.hexdigest()
