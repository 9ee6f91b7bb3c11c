"""The anomaly engine: image -> features -> maps (text, memory bank) -> score, decision, regions.

The LLM, the UI and the CLIs only ever talk to `AnomalyEngine.detect` (or, for batch evaluation,
to `encode` / `references` / `maps`), so changing how a map is made happens in one place.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import checkpoint
from .config import load_preset, resolve_path
from .encoders import EncodedImages, create_encoder
from .maps.anomaly_map import find_regions, interior_peaks, merge_levels, place_map, smooth, whole_image_region
from .foreground import foreground_box
from .maps.global_stats import GlobalStats
from .maps.memory_bank import MemoryBank, augment
from .maps.text_map import TextMap
from .maps.texture_map import TextureBank
from .reference_set import ReferenceSet, TiledReferences, estimates_threshold
from .result import Detection, EngineError, Region

log = logging.getLogger(__name__)

# A relative map is divided by its own mean, but not by less than this share of the lowest mean a
# held-out normal view's map had: a copy of a reference comes to ~0 (float noise, which the division
# would blow up into "defects"), while no tire test image came below 0.9 of it (dev half, 1 and 4
# references, 2 seeds), so those images' scores are left as they were (docs/method.md, "Objects and
# surfaces").
MEAN_FLOOR_SHARE = 0.5


class AnomalyEngine:
    def __init__(self, preset: dict | str = "embedded", checkpoint_dir: str | Path | None = None):
        self.preset = load_preset(preset) if isinstance(preset, str) else preset
        torch.manual_seed(0)  # untrained adapters are never used for decisions, but keep them reproducible
        self.encoder = create_encoder(self.preset["encoder"])
        self.text_map = TextMap.for_encoder(self.encoder, self.preset.get("text_map", {}),
                                            self.encoder.default_adapter_weights())
        folder = checkpoint_dir if checkpoint_dir is not None else resolve_path(self.preset.get("checkpoint"))
        self.checkpoint_dir = Path(folder) if folder else None
        if self.checkpoint_dir and (self.checkpoint_dir / checkpoint.ADAPTERS_FILE).is_file():
            checkpoint.load_module(self.text_map, self.checkpoint_dir / checkpoint.ADAPTERS_FILE)
            self.text_map.trained = True
            log.info("text-map adapters loaded from %s", self.checkpoint_dir)
        self.text_map.eval()
        self.text_extra_size = self._text_extra_size()
        self.map_cfg = self.preset["anomaly_map"]
        self.bank_cfg = self.preset["memory_bank"]
        self.threshold_cfg = self.preset["threshold"]
        self._reference_cache: dict[str, ReferenceSet] = {}

    def _text_extra_size(self) -> int | None:
        size = self.preset.get("text_map", {}).get("extra_image_size")
        if size and self.encoder.resize != "area":
            raise EngineError(f"text_map.extra_image_size needs an encoder that takes any input size; "
                              f"{self.preset['encoder'].get('model', 'this encoder')} has a fixed one")
        return int(size) if size else None

    # -- features -----------------------------------------------------------------------------
    def prepare(self, image: Image.Image) -> tuple[Image.Image, tuple[int, int, int, int]]:
        """The view the encoder sees and its box in the image: with crop 'auto', an object on a plain
        background is cropped to its bounding box so the encoder's resolution goes to the part."""
        full = (0, 0, *image.size)
        if self.map_cfg.get("crop", "none") != "auto":
            return image, full
        box = foreground_box(image)
        return (image.crop(box), box) if box else (image, full)

    @torch.no_grad()
    def encode(self, images: list[Image.Image], text_view: bool = True) -> EncodedImages:
        """Encode already-prepared views that share one input size (see `encode_each` otherwise).

        A trained text map with `text_map.extra_image_size` also reads a second, coarser encoding:
        at the bank's resolution alone its per-patch verdict fires on every sharp edge of a regular
        pattern (tire tread) as readily as on a cut (docs/method.md, "Text map"). `text_view=False`
        skips it for views no text map is made of (the augmented views of a reference bank)."""
        encoded = self.encoder.encode_images(images)
        extra_size = self._extra_view_size()
        if extra_size and text_view:
            encoded.text_levels = self.encoder.encode_images(images, extra_size).levels
        return encoded

    def _extra_view_size(self) -> int | None:
        """The text map's extra input size while its adapters are trained (untrained ones are never read)."""
        return self.text_extra_size if self.text_map.trained else None

    @torch.no_grad()
    def encode_each(self, images: list[Image.Image], batch_size: int = 8,
                    text_views: set[int] | None = None) -> list[EncodedImages]:
        """One EncodedImages per view, batching views whose input size matches; only the views in
        `text_views` (default: all) get the text map's extra encoding."""
        extra_size = self._extra_view_size()
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
        return out

    def scoring_levels(self) -> set[int]:
        """Encoder levels that scoring reads once the text map is made (batch evaluation drops the rest)."""
        levels = set(self.bank_cfg["levels"]) | set(self.map_cfg.get("global_levels", []))
        if self.map_cfg.get("texture_map"):
            levels.add(int(self.map_cfg["texture_map"]["level"]))
        return levels

    def map_size(self, encoded: EncodedImages) -> tuple[int, int]:
        """Maps live on the grid of the finest memory-bank level; sigma is in cells of that grid."""
        level = encoded.levels[int(self.map_cfg.get("grid_level", min(self.bank_cfg["levels"])))]
        return int(level.shape[-2]), int(level.shape[-1])

    # -- maps ---------------------------------------------------------------------------------
    @torch.no_grad()
    def text_maps(self, encoded: EncodedImages, class_name: str) -> torch.Tensor | None:
        """B x h x w abnormal probability from the prompt ensembles, or None while adapters are untrained;
        with an extra input size, the mean of the maps at both sizes."""
        if not self.text_map.trained:
            return None
        text = self.text_map.text_features(self.encoder, class_name)
        size = self.map_size(encoded)
        maps = [self.text_map(levels, text, size) for levels in (encoded.levels, encoded.text_levels) if levels is not None]
        return sum(maps) / len(maps)

    @torch.no_grad()
    def bank_maps(self, encoded: EncodedImages, bank: MemoryBank) -> torch.Tensor:
        return merge_levels(bank.distance_maps(encoded.levels), self.map_size(encoded))

    @torch.no_grad()
    def texture_maps(self, encoded: EncodedImages, texture: TextureBank) -> np.ndarray:
        """B x h x w texture-statistics distance on the map grid, in units of the references' own spread."""
        return merge_levels([texture.distance_maps(encoded.levels)], self.map_size(encoded)).numpy()

    @torch.no_grad()
    def self_maps(self, encoded: EncodedImages) -> torch.Tensor | None:
        """Zero-shot map from the image alone: each patch against its own image's patches more than
        `anomaly_map.zero_shot_self_radius` cells away, or None where the preset does not ask for it
        (the CLIP presets rely on their trained text map, as AnomalyGPT does). Repeated structure
        (tread, weave) vouches for itself; a defect does not (docs/method.md, "Zero-shot": tire zero-shot image
        AUROC 59.4 with the text map alone, 82.3 fused with this map)."""
        radius = int(self.map_cfg.get("zero_shot_self_radius", 0))
        if radius <= 0:
            return None
        return merge_levels(self._new_bank(0).self_distance_maps(encoded.levels, radius), self.map_size(encoded))

    def fuse(self, bank_map: torch.Tensor | None, text_map: torch.Tensor | None) -> np.ndarray:
        """Smoothed B x h x w anomaly map from whichever maps exist.

        Together, the text map's abnormal probability scales the memory-bank (zero-shot: the self-)
        distance by up to 1 + text_weight: unit-free, and it can raise a patch the references
        already find unusual but cannot invent a defect where the references match."""
        if bank_map is None and text_map is None:
            raise EngineError("no reference image given and the text map is untrained: add at least one known-good reference image")
        if bank_map is None:
            fused = text_map
        elif text_map is None:
            fused = bank_map
        else:
            fused = bank_map * self.text_scale(text_map)
        return smooth(fused, float(self.map_cfg.get("sigma", 2.0)))

    def text_scale(self, text_map: torch.Tensor) -> torch.Tensor:
        """The factor, 1 to 1 + text_weight, by which the text map scales a distance to the references."""
        return 1.0 + float(self.map_cfg.get("text_weight", 1.0)) * text_map

    def assess(self, encoded: EncodedImages, references: ReferenceSet | None, class_name: str,
               text_maps: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(B x h x w maps, B image scores), both in threshold units.

        With references, maps are in units of the normal level the references set (1 = the
        highest peak a held-out normal view reached), and the score is the map's peak away from
        its edges (`peaks`) plus `texture.weight` x the part of the texture-statistics shift above
        its normal level: added, not a max, so a surface whose tone varies between normal parts
        more than the references show still ranks by its map (docs/method.md, "Texture statistics": 4 references,
        magnetic tile 67.0 -> 71.7, textile local 82.9 -> 92.0, global 100 -> 99.8). Surface maps
        also carry the texture map (`with_texture_map`); scores never do.
        """
        if text_maps is None:
            text_maps = self.text_maps(encoded, class_name)
        if references is None:
            return self._zero_shot(encoded, text_maps)
        maps = self.calibrated(self.raw_maps(encoded, references, text_maps), references)
        peaks = self.peaks(maps)
        maps = self.with_texture_map(maps, encoded, references, text_maps)
        if references.stats is None:
            return maps, peaks
        shifts = references.stats.distance(encoded.levels).numpy() / references.global_unit
        weight = float(self.map_cfg.get("texture", {}).get("weight", 0.5))
        return maps, peaks + weight * np.maximum(shifts - references.texture_normal, 0.0)

    def peaks(self, maps: np.ndarray) -> np.ndarray:
        """Map peaks that score an image against references, taken `anomaly_map.score_border` cells
        away from the view's edges. The outer cells fire on normal parts: photos cropped at a part's
        bevel or rim differ most there (on magnetic tiles, 65-75 % of good tiles' map peaks lie within
        2 cells of an edge; reflect padding instead of the CNN's zero padding did not change that). A
        defect there still shows in the map, and one reaching inward still scores (docs/method.md,
        "Score border": magnetic tile 1-shot image AUROC 73.2 with no border, 76.2 with 3; textile +2)."""
        return interior_peaks(maps, int(self.map_cfg.get("score_border", 0)))

    def _zero_shot(self, encoded: EncodedImages, text_maps: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray]:
        """Without references nothing sets a normal level, so a self map is divided by its own mean:
        the score is how far the worst area stands out from the rest of the same image, a unit that
        one threshold (`threshold.zero_shot`) can serve for every kind of part. The mean is floored
        at `anomaly_map.zero_shot_min_mean`: on a blank part every patch matches its neighbours, and
        the tiny border effects left would otherwise be divided into "defects" in every corner."""
        self_maps = self.self_maps(encoded)
        maps = self.fuse(self_maps, text_maps)
        if self_maps is not None:
            floor = max(float(self.map_cfg.get("zero_shot_min_mean", 0.0)), 1e-6)
            maps = maps / np.maximum(maps.mean(axis=(1, 2), keepdims=True), floor)
        return maps, maps.reshape(len(maps), -1).max(axis=1)

    def with_texture_map(self, maps: np.ndarray, encoded: EncodedImages, references: ReferenceSet,
                         text_maps: torch.Tensor | None) -> np.ndarray:
        """Surfaces: the texture map's excess over the references' own spread added to the map, which
        says where to look, but not to the score: it finds zones finished differently (magnetic tile
        "uneven") yet also fires on normal tiles whose grinding differs from the reference's, which
        costs image AUROC when it decides (docs/method.md, "Texture map").

        The text map scales the excess as it scales the bank distance: the map is divided by the
        fused maps' normal peak, so an unscaled excess would weigh less with trained adapters than
        without (magnetic tile, 1 shot: pixel AUROC 71.3 unscaled, 72.5 scaled; 71.5 untrained)."""
        if references.texture is None:
            return maps
        cfg = self.map_cfg["texture_map"]
        excess = np.maximum(self.texture_maps(encoded, references.texture) - float(cfg.get("normal_level", 0.0)), 0.0)
        if text_maps is not None:
            excess = excess * self.text_scale(text_maps).numpy()
        return maps + float(cfg["weight"]) * excess / references.peak_unit

    def raw_maps(self, encoded: EncodedImages, references: ReferenceSet, text_maps: torch.Tensor | None) -> np.ndarray:
        """Fused, smoothed maps before calibration."""
        return self.fuse(self.bank_maps(encoded, references.bank), text_maps)

    @staticmethod
    def relative_maps(maps: np.ndarray, floor: float = 1e-6) -> np.ndarray:
        """Maps divided by their own mean (at least `floor`), so a pose or lighting change that lifts
        the whole map does not read as a defect."""
        return maps / np.maximum(maps.mean(axis=(1, 2), keepdims=True), max(floor, 1e-6))

    def calibrated(self, maps: np.ndarray, references: ReferenceSet) -> np.ndarray:
        """Raw maps in threshold units: relative sets' maps relative to their own mean (floored at the
        references' `mean_floor`), then in units of the highest held-out normal peak."""
        if references.relative:
            maps = self.relative_maps(maps, references.mean_floor)
        return maps / references.peak_unit

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

    def reference_views(self, n_images: int, relative: bool) -> tuple[list[str], int]:
        """(view names made of each reference image, pose views per image; 0 = one pooled bank).

        With `memory_bank.pose`, each reference of an object (a relative set) is turned by
        `rotations` evenly spaced angles, as many as `budget` views over all images allow, and a
        query is matched against the `views` turned views of each image that fit it best: one
        reference of a part seen at any angle needs its turned views to be matched at all, while 64
        references already show many poses and would make 24 views each unaffordable. At one angle
        per image, and for surfaces (turned views of one tile did not help a turned tile and raised
        the threshold: docs/method.md, "Pose and logical changes"), the bank pools
        `memory_bank.augmentations`, as many of them (in order, at least the first) as
        `memory_bank.view_budget` views over all images allow: views stand in for the variation of
        normal parts that few references cannot show, and many references show it themselves
        (docs/method.md, "Many references")."""
        cfg = self.bank_cfg
        pooled = list(cfg.get("augmentations") or ["identity"])
        if cfg.get("view_budget"):
            pooled = pooled[:max(1, int(cfg["view_budget"]) // n_images)]
        pose = cfg.get("pose")
        if not pose or not relative:
            return pooled, 0
        flips = list(pose.get("flips", ["identity", "hflip"]))
        rotations = min(int(pose.get("rotations", 12)), int(pose.get("budget", 24)) // (n_images * len(flips)))
        if rotations <= 1:
            return pooled, 0
        return ([f"{flip}+rot{360.0 * step / rotations:g}" for flip in flips for step in range(rotations)],
                int(pose.get("views", 1)))

    def _new_bank(self, seed: int, views: tuple[list[str], int] | None = None, cover: str | None = None,
                  n_images: int = 1) -> MemoryBank:
        cfg = self.bank_cfg
        cover = cover or cfg.get("cover", "greedy")
        names, pose_views = views or (list(cfg.get("augmentations") or ["identity"]), 0)
        return MemoryBank(cfg["levels"], cfg.get("pool", 1), names, cfg.get("max_patches", 50_000),
                          seed, self._self_radius(n_images), cfg.get("precision", "auto"), cover, pose_views)

    def _self_radius(self, n_images: int) -> int:
        """`memory_bank.self_radius`, up to `self_max_references` references (unset: for any number).

        A patch's match elsewhere in its own image stands in for the normal variation one or a few
        references cannot show (one reference: 4-6 points of image AUROC on every set); many
        references show it themselves, and there the self-match only lets a defect that repeats
        within the image vouch for itself (docs/method.md, "Many references")."""
        cap = self.bank_cfg.get("self_max_references")
        return int(self.bank_cfg.get("self_radius", 0)) if cap is None or n_images <= int(cap) else 0

    def _new_stats(self, originals: list[EncodedImages], relative: bool) -> GlobalStats | None:
        """Whole-image texture statistics, for surfaces with at least two references: on a cropped
        object they move with pose and framing (tire 85.5 -> 66.3 image AUROC with them; docs/method.md,
        "Objects and surfaces")."""
        levels = self.map_cfg.get("global_levels", [])
        return GlobalStats(levels).fit([view.levels for view in originals]) if levels and not relative else None

    def _new_texture(self, views: list[EncodedImages], originals: list[EncodedImages], relative: bool) -> TextureBank | None:
        """Window texture statistics for surfaces (`anomaly_map.texture_map`); objects are cropped and
        posed differently from photo to photo, so their window statistics move without a defect."""
        cfg = self.map_cfg.get("texture_map")
        if not cfg or relative:
            return None
        return TextureBank(int(cfg["level"]), int(cfg.get("window", 15)), int(cfg.get("max_windows", 16_384)),
                           int(cfg.get("query_stride", 2))).fit(
            [view.levels for view in views], [view.levels for view in originals])

    def _one_reference_texture(self, reference: EncodedImages, full: ReferenceSet) -> None:
        """Tile statistics for one surface reference, in units of its own tile-to-tile spread.

        Nothing shows how far texture moves between normal parts (flipped views move it more than
        two normal textiles differ and less than two normal magnetic tiles), so the normal level
        (`texture.one_reference`) is a fixed guess rather than a held-out measurement."""
        cfg = self.map_cfg.get("texture", {}).get("one_reference")
        levels = self.map_cfg.get("global_levels", [])
        if not cfg or not levels or full.relative:
            return
        full.stats = GlobalStats(levels, int(cfg.get("grid", 2)), int(cfg.get("border", 1))).fit([reference.levels])
        full.global_unit = max(full.stats.tile_spread(), 1e-6)  # a blank reference has no spread
        full.texture_normal = float(cfg.get("normal_level", 0.5))

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
        relative = self._is_relative([self.prepare(image)[1] != (0, 0, *image.size) for image in images])
        views = self.reference_views(len(images), relative)
        bank = self._new_bank(seed, views, n_images=len(images))
        n_views = len(bank.augmentations)
        if len(images) == 1 and n_views == 1:  # checked before encoding: nothing could be held out
            raise EngineError("one reference image needs a reference augmentation (e.g. hflip) to set a threshold: add one to the preset or give a second reference image")
        # Views are made from the whole photo and then cropped, as a query is: a part turned by any
        # angle keeps all of itself and gets the crop (and so the scale) a query at that angle gets.
        prepared = [self.prepare(view) for view in augment(images, bank.augmentations)]
        held_out_queries = set(self._held_out_queries(len(images), n_views))
        per_view = self.encode_each([view for view, _ in prepared], text_views=held_out_queries)
        bank.fit_features([view.levels for view in per_view], [i // n_views for i in range(len(per_view))])
        stats = self._new_stats(per_view[::n_views], relative) if len(images) >= 2 else None
        full = ReferenceSet(bank, stats, relative, len(images), threshold=self._margin(relative, len(images)),
                            texture=self._new_texture(per_view, per_view[::n_views], relative))
        held_out_maps, shifts = self._held_out_levels(per_view, len(images), full, class_name, seed, views)
        if relative:
            full.mean_floor = MEAN_FLOOR_SHARE * float(min(m.mean() for m in held_out_maps))
        peaks = np.asarray([self.peaks(self.relative_maps(m) if relative else m)[0] for m in held_out_maps])
        full.peak_unit = float(peaks.max())
        full.normal_scores = peaks / full.peak_unit
        if len(images) == 1:
            self._one_reference_texture(per_view[0], full)
        elif shifts.size:
            full.global_unit = float(shifts.max())
        return full

    def _held_out_levels(self, per_view: list[EncodedImages], n_images: int, full: ReferenceSet,
                         class_name: str, seed: int, views: tuple[list[str], int]) -> tuple[list[np.ndarray], np.ndarray]:
        """Raw maps and texture shifts of normal views scored against references that did not
        contain them: with several images, each image of a fold against a bank of the other folds
        (leave-one-out up to `held_out_folds` images, so 64 references cost 5 banks, not 64); with one
        image, each augmented view against the others (the bank's augmentations declare those views
        normal too; for objects they differ about as much as two photos of normal parts do, surfaces
        get a margin). Banks above the patch cap are covered as `memory_bank.held_out_cover` says:
        "random" costs the threshold ~2 % (tire, 16 shots) and saves the k-centre cover that took
        5/6 of a 16-shot build (docs/method.md, "Memory bank")."""
        n_views = len(per_view) // n_images
        queries = set(self._held_out_queries(n_images, n_views))
        held_out_cover = self.bank_cfg.get("held_out_cover", "greedy")
        maps, shifts = [], []
        for held_out_views in self._held_out_folds(n_images, n_views):
            kept = [index for index in range(len(per_view)) if index not in held_out_views]
            others = [per_view[index] for index in kept]
            bank = self._new_bank(seed, views, held_out_cover, n_images).fit_features([view.levels for view in others],
                                                                     [index // n_views for index in kept])
            held_out = replace(full, bank=bank)
            stats = self._new_stats(others[::n_views], full.relative) if full.stats is not None else None
            for query in (per_view[index] for index in sorted(held_out_views) if index in queries):
                maps.append(self.raw_maps(query, held_out, self.text_maps(query, class_name)))
                if stats is not None:
                    shifts.append(float(stats.distance(query.levels)[0]))
        return maps, np.asarray(shifts)

    @staticmethod
    def _held_out_queries(n_images: int, n_views: int) -> range:
        """The views scored as held-out normals: every view of one image, else each image's unaugmented view."""
        return range(n_views) if n_images == 1 else range(0, n_images * n_views, n_views)

    def _held_out_folds(self, n_images: int, n_views: int) -> list[set[int]]:
        """View indices held out together: one view at a time for one image, else the views of
        every image in a fold (image i in fold i mod k)."""
        if n_images == 1:
            return [{view} for view in range(n_views)]
        k = min(n_images, max(2, int(self.threshold_cfg.get("held_out_folds", 5))))  # 1 fold would leave no bank
        return [{image * n_views + view for image in range(fold, n_images, k) for view in range(n_views)}
                for fold in range(k)]

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
        view, box = self.prepare(image)
        encoded = self.encode([view])
        reference_set = self.references(references, class_name) if references else None
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
                         n_references=reference_set.n_images if reference_set else 0, class_name=class_name)


def _row(levels: list[torch.Tensor] | None, index: int) -> list[torch.Tensor] | None:
    return None if levels is None else [level[index:index + 1] for level in levels]


def anomalous_regions(full_map: np.ndarray, map_peak: float, threshold: float) -> list[Region]:
    """Where to look on a part judged anomalous: the whole image when only the texture statistics
    crossed the threshold, else the areas above it (or, when resizing the map to the image lowered
    its peak below the threshold, the single hottest area)."""
    if map_peak <= threshold:
        return [whole_image_region(full_map)]
    return find_regions(full_map, threshold) or find_regions(full_map, float(np.quantile(full_map, 0.995)))[:1]


def _fingerprint(images: list[Image.Image]) -> str:
    digest = hashlib.sha1()
    for image in images:
        digest.update(f"{image.size}{image.mode}".encode())
        digest.update(image.tobytes())
    return digest.hexdigest()
