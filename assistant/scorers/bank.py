"""The memory-bank scorer: each patch's distance to the nearest normal patch, calibrated so that 1 is
the highest peak a held-out normal view reached; it sets the map's unit and the score's main term.

Settings: the preset's `memory_bank` section, and `anomaly_map` `sigma`, `score_border`."""
from __future__ import annotations

import numpy as np
import torch

from ..encoders import EncodedImages
from ..maps.anomaly_map import interior_peaks, merge_levels, smooth
from ..maps.memory_bank import MemoryBank
from ..reference_set import ReferenceSet
from .base import ReferenceViews, Terms, grid_size
from .text import TextScorer

# A relative map is divided by its own mean, but not by less than this share of the lowest mean a
# held-out normal view's map had: a copy of a reference comes to ~0 (float noise, which the division
# would blow up into "defects"), while no tire test image came below 0.9 of it (dev half, 1 and 4
# references, 2 seeds), so those images' scores are left as they were (docs/method.md, "Objects and
# surfaces").
MEAN_FLOOR_SHARE = 0.5


def relative_maps(maps: np.ndarray, floor: float = 1e-6) -> np.ndarray:
    """Maps divided by their own mean (at least `floor`), so a pose or lighting change that lifts
    the whole map does not read as a defect."""
    return maps / np.maximum(maps.mean(axis=(1, 2), keepdims=True), max(floor, 1e-6))


class BankScorer:
    def __init__(self, preset: dict, text: TextScorer, grid_level: int):
        self.cfg = preset["memory_bank"]
        map_cfg = preset["anomaly_map"]
        self.sigma = float(map_cfg.get("sigma", 2.0))
        self.border = int(map_cfg.get("score_border", 0))
        self.text = text
        self.grid_level = grid_level
        self.levels = set(self.cfg["levels"])

    # -- fitting ------------------------------------------------------------------------------
    @property
    def augmentations(self) -> list[str]:
        """`memory_bank.augmentations`: the views made of each reference where nothing cuts them."""
        return list(self.cfg.get("augmentations") or ["identity"])

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
        cfg = self.cfg
        pooled = self.augmentations
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

    def new_bank(self, seed: int, views: tuple[list[str], int] | None = None, cover: str | None = None,
                 n_images: int = 1) -> MemoryBank:
        cfg = self.cfg
        cover = cover or cfg.get("cover", "greedy")
        names, pose_views = views or (self.augmentations, 0)
        return MemoryBank(cfg["levels"], cfg.get("pool", 1), names, cfg.get("max_patches", 50_000),
                          seed, self.self_radius(n_images), cfg.get("precision", "auto"), cover, pose_views,
                          self.nearest_views(n_images, pose_views))

    def nearest_views(self, n_images: int, pose_views: int) -> int:
        """`memory_bank.nearest_views` for a pooled set of more references than that (else 0).

        A speed setting for many references, off in the embedded preset: the k views nearest a
        query show whole normal parts like it, and the search covers k views instead of the
        coreset cap. At 64 references, k = 16 takes maps + score from 88 to 66 ms and k = 8 to 50 ms
        (tire, 2 threads), for 1.6 (k = 16, 3 seeds) and 5.1 (k = 8, one seed) points of tire image AUROC
        on the holdout half; surfaces keep theirs (docs/method.md, "Many references")."""
        nearest = int(self.cfg.get("nearest_views") or 0)
        return nearest if pose_views == 0 and n_images > nearest else 0

    def self_radius(self, n_images: int) -> int:
        """`memory_bank.self_radius`, up to `self_max_references` references (unset: for any number).

        A patch's match elsewhere in its own image stands in for the normal variation one or a few
        references cannot show (one reference: 4-6 points of image AUROC on every set); many
        references show it themselves, and there the self-match only lets a defect that repeats
        within the image vouch for itself (docs/method.md, "Many references")."""
        cap = self.cfg.get("self_max_references")
        return int(self.cfg.get("self_radius", 0)) if cap is None or n_images <= int(cap) else 0

    def fit(self, views: ReferenceViews) -> dict:
        """The bank of every view, and its units from held-out normal views' raw maps: the highest
        peak (`peak_unit`) and, for relative sets, the floor of a map's own mean (`mean_floor`)."""
        bank = self._fit_bank(views, range(len(views.per_view)), self.cfg.get("cover", "greedy"))
        held_out = self._held_out_maps(views)
        fields = {"bank": bank}
        if views.relative:
            fields["mean_floor"] = MEAN_FLOOR_SHARE * float(min(m.mean() for m in held_out))
        peaks = np.asarray([self.peaks(relative_maps(m) if views.relative else m)[0] for m in held_out])
        fields["peak_unit"] = float(peaks.max())
        fields["normal_scores"] = peaks / fields["peak_unit"]
        return fields

    def _fit_bank(self, views: ReferenceViews, indices, cover: str) -> MemoryBank:
        names = self.reference_views(views.n_images, views.relative)
        features = [views.per_view[index].levels for index in indices]
        owners = [views.image_of(index) for index in indices]
        if self.holds_turned_views(views):
            for image, view in views.fresh_turned_views(sorted(set(owners))):
                features.append(view.levels)
                owners.append(image)
        return self.new_bank(views.seed, names, cover, views.n_images).fit_features(features, owners)

    def holds_turned_views(self, views: ReferenceViews) -> bool:
        """`memory_bank.turned_views`: whether a surface's bank also pools the turned views its
        texture statistics fit on (`anomaly_map.texture.turns`), which costs no encoding.

        Only where the view budget dropped some of the bank's own augmentations: at 64 references it
        leaves one view per image, and turned textile falls to 90.1 against 99.2 upright (95.6 with
        the four augmentations pooled for each); the turned views take it to 98.1 (dev half;
        docs/method.md, "Turned surfaces"). With every augmentation pooled (up to 16 references)
        they added nothing at 1 and 4 references and cost a sixth more query time."""
        return bool(self.cfg.get("turned_views")) and bool(views.turned) and views.n_views < len(self.augmentations)

    def _held_out_maps(self, views: ReferenceViews) -> list[np.ndarray]:
        """Raw maps of normal views scored against banks that did not contain them: with several
        images, each image of a fold against a bank of the other folds (leave-one-out up to
        `threshold.held_out_folds` images, so 64 references cost 5 banks, not 64); with one image,
        each augmented view against the others (the bank's augmentations declare those views normal
        too; for objects they differ about as much as two photos of normal parts do, surfaces get a
        margin). Banks above the patch cap are covered as `memory_bank.held_out_cover` says:
        "random" costs the threshold ~2 % (tire, 16 shots) and saves the k-centre cover that took
        5/6 of a 16-shot build (docs/method.md, "Memory bank")."""
        cover = self.cfg.get("held_out_cover", "greedy")
        maps = []
        for fold in views.folds:
            bank = self._fit_bank(views, views.without(fold), cover)
            for index in views.held_out_queries(fold):
                query = views.per_view[index]
                maps.append(self.raw_maps(query, bank, self.text.scale(self.text.maps(query, views.class_name))))
        return maps

    # -- scoring ------------------------------------------------------------------------------
    @torch.no_grad()
    def distance_maps(self, encoded: EncodedImages, bank: MemoryBank) -> torch.Tensor:
        return merge_levels(bank.distance_maps(encoded.levels), grid_size(encoded, self.grid_level))

    def raw_maps(self, encoded: EncodedImages, bank: MemoryBank, text_scale: torch.Tensor | None) -> np.ndarray:
        """Smoothed distance maps, scaled by the text map, before calibration."""
        distances = self.distance_maps(encoded, bank)
        return smooth(distances if text_scale is None else distances * text_scale, self.sigma)

    def calibrated(self, maps: np.ndarray, references: ReferenceSet) -> np.ndarray:
        """Raw maps in threshold units: relative sets' maps relative to their own mean (floored at the
        references' `mean_floor`), then in units of the highest held-out normal peak."""
        if references.relative:
            maps = relative_maps(maps, references.mean_floor)
        return maps / references.peak_unit

    def peaks(self, maps: np.ndarray) -> np.ndarray:
        """Map peaks that score an image against references, taken `anomaly_map.score_border` cells
        away from the view's edges. The outer cells fire on normal parts: photos cropped at a part's
        bevel or rim differ most there (on magnetic tiles, 65-75 % of good tiles' map peaks lie within
        2 cells of an edge; reflect padding instead of the CNN's zero padding did not change that). A
        defect there still shows in the map, and one reaching inward still scores (docs/method.md,
        "Score border": magnetic tile 1-shot image AUROC 73.2 with no border, 76.2 with 3; textile +2)."""
        return interior_peaks(maps, self.border)

    def assess(self, encoded: EncodedImages, references: ReferenceSet, text_scale: torch.Tensor | None) -> Terms:
        maps = self.calibrated(self.raw_maps(encoded, references.bank, text_scale), references)
        return maps, self.peaks(maps)
