"""The anomaly engine: image -> features -> maps (text, memory bank) -> score, decision, regions.

The LLM, the UI and the CLIs only ever talk to `AnomalyEngine.detect` (or, for batch evaluation,
to `encode` / `references` / `maps`), so changing how a map is made happens in one place.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import checkpoint
from .config import load_preset, resolve_path
from .encoders import EncodedImages, create_encoder
from .maps.anomaly_map import find_regions, image_score, merge_levels, smooth, to_image_size
from .foreground import foreground_box
from .maps.global_stats import GlobalStats
from .maps.memory_bank import MemoryBank, augment
from .maps.text_map import TextMap
from .result import Detection

log = logging.getLogger(__name__)


class EngineError(ValueError):
    """A one-line problem the user can act on (e.g. nothing to compare against)."""


@dataclass
class ReferenceSet:
    """Normal references turned into a memory bank plus a label-free threshold."""

    bank: MemoryBank
    stats: GlobalStats | None
    normal_scores: np.ndarray  # scores of held-out normal views, used for the threshold
    threshold: float
    n_images: int


class AnomalyEngine:
    def __init__(self, preset: dict | str = "embedded", checkpoint_dir: str | Path | None = None):
        self.preset = load_preset(preset) if isinstance(preset, str) else preset
        torch.manual_seed(0)  # untrained adapters are never used for decisions, but keep them reproducible
        self.encoder = create_encoder(self.preset["encoder"])
        text_cfg = self.preset.get("text_map", {})
        norm = self.encoder.adapter_input_norm() if hasattr(self.encoder, "adapter_input_norm") else None
        self.text_map = TextMap(self.encoder.level_dims, self.encoder.text_dim, text_cfg.get("levels"),
                                self.encoder.default_adapter_weights(), norm)
        folder = checkpoint_dir if checkpoint_dir is not None else resolve_path(self.preset.get("checkpoint"))
        self.checkpoint_dir = Path(folder) if folder else None
        if self.checkpoint_dir and (self.checkpoint_dir / checkpoint.ADAPTERS_FILE).is_file():
            checkpoint.load_module(self.text_map, self.checkpoint_dir / checkpoint.ADAPTERS_FILE)
            self.text_map.trained = True
            log.info("text-map adapters loaded from %s", self.checkpoint_dir)
        self.text_map.eval()
        self.map_cfg = self.preset["anomaly_map"]
        self.bank_cfg = self.preset["memory_bank"]
        self.threshold_cfg = self.preset["threshold"]
        self._reference_cache: dict[str, ReferenceSet] = {}

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
    def encode(self, images: list[Image.Image]) -> EncodedImages:
        """Encode already-prepared views."""
        return self.encoder.encode_images(images)

    @property
    def map_size(self) -> tuple[int, int]:
        size = int(self.map_cfg.get("size", 80))
        return size, size

    # -- maps ---------------------------------------------------------------------------------
    @torch.no_grad()
    def text_maps(self, encoded: EncodedImages, class_name: str) -> torch.Tensor | None:
        """B x h x w abnormal probability from the prompt ensembles, or None while adapters are untrained."""
        if not self.text_map.trained:
            return None
        text = self.text_map.text_features(self.encoder, class_name)
        return self.text_map(encoded.levels, text, self.map_size)

    @torch.no_grad()
    def bank_maps(self, encoded: EncodedImages, bank: MemoryBank) -> torch.Tensor:
        return merge_levels(bank.distance_maps(encoded.levels), self.map_size)

    def fuse(self, bank_map: torch.Tensor | None, text_map: torch.Tensor | None) -> np.ndarray:
        """Smoothed B x h x w anomaly map from whichever maps exist."""
        if bank_map is None and text_map is None:
            raise EngineError("no reference image given and the text map is untrained: add at least one known-good reference image")
        if bank_map is None:
            fused = text_map
        elif text_map is None:
            fused = bank_map
        else:
            fused = bank_map + float(self.map_cfg.get("text_weight", 0.5)) * text_map
        return smooth(fused, float(self.map_cfg.get("sigma", 4.0)))

    def assess(self, encoded: EncodedImages, references: ReferenceSet | None, class_name: str,
               text_maps: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(B x h x w smoothed maps, B image scores, B global terms).

        score = map peak + global_weight x texture-statistics shift; the global term is part of
        the score so that regions are where the map exceeds `threshold - global term`.
        """
        if text_maps is None:
            text_maps = self.text_maps(encoded, class_name)
        bank_map = self.bank_maps(encoded, references.bank) if references is not None else None
        maps = self.fuse(bank_map, text_maps)
        global_terms = np.zeros(len(maps))
        if references is not None and references.stats is not None:
            global_terms = float(self.map_cfg.get("global_weight", 0.0)) * references.stats.distance(encoded.levels).numpy()
        top = float(self.map_cfg.get("top_percent", 0.0))
        scores = np.array([image_score(m, top) for m in maps]) + global_terms
        return maps, scores, global_terms

    # -- references and threshold -------------------------------------------------------------
    def references(self, images: list[Image.Image], class_name: str = "object", seed: int = 0) -> ReferenceSet:
        """Memory bank and label-free threshold for a set of normal images (cached by content)."""
        if not images:
            raise EngineError("no reference images given")
        key = _fingerprint(images) + f"|{class_name}|{seed}"
        if key not in self._reference_cache:
            if len(self._reference_cache) >= 16:
                self._reference_cache.pop(next(iter(self._reference_cache)))
            self._reference_cache[key] = self._build_references(images, class_name, seed)
        return self._reference_cache[key]

    def _new_bank(self, seed: int) -> MemoryBank:
        cfg = self.bank_cfg
        return MemoryBank(cfg["levels"], cfg.get("pool", 3), cfg.get("augmentations"), cfg.get("max_patches", 50_000),
                          seed, cfg.get("self_radius", 0))

    def _new_stats(self, per_view: list, n_views: int) -> GlobalStats | None:
        levels = self.map_cfg.get("global_levels", [])
        if not levels or not self.map_cfg.get("global_weight", 0.0):
            return None
        return GlobalStats(levels).fit(per_view[::n_views])  # the unaugmented view of each reference

    @torch.no_grad()
    def _build_references(self, images: list[Image.Image], class_name: str, seed: int) -> ReferenceSet:
        images = [self.prepare(image)[0] for image in images]
        bank = self._new_bank(seed)
        views = augment(images, bank.augmentations)
        encoded = [self.encode(views[i:i + 8]) for i in range(0, len(views), 8)]
        per_view = [[level[b:b + 1] for level in chunk.levels] for chunk in encoded for b in range(chunk.levels[0].shape[0])]
        bank.fit_features(per_view)
        n_views = len(bank.augmentations)
        reference_set = ReferenceSet(bank=bank, stats=self._new_stats(per_view, n_views), normal_scores=np.zeros(0),
                                     threshold=0.0, n_images=len(images))
        reference_set.normal_scores = self._held_out_scores(images, per_view, reference_set, class_name, seed)
        reference_set.threshold = float(reference_set.normal_scores.max() * float(self.threshold_cfg.get("margin", 1.1)))
        return reference_set

    def _held_out_scores(self, images, per_view, full: ReferenceSet, class_name: str, seed: int) -> np.ndarray:
        """Scores of normal views the bank has not seen: leave-one-out over references when there
        are several, otherwise slightly shifted and rotated copies of the single reference."""
        n_views = len(per_view) // len(images)
        scores = []
        if len(images) >= 2:
            for held in range(len(images)):
                others = [v for i, v in enumerate(per_view) if i // n_views != held]
                held_out = ReferenceSet(self._new_bank(seed).fit_features(others), self._new_stats(others, n_views),
                                        np.zeros(0), 0.0, len(images) - 1)
                query = EncodedImages(levels=per_view[held * n_views], embedding=torch.empty(0))
                scores.append(float(self.assess(query, held_out, class_name)[1][0]))
        else:  # one reference: the full bank never saw these shifted crops
            for view in jittered_views(images[0]):
                scores.append(float(self.assess(self.encode([view]), full, class_name)[1][0]))
        return np.asarray(scores, dtype=np.float64)

    def zero_shot_threshold(self) -> float:
        return float(self.threshold_cfg.get("zero_shot", 0.5))

    # -- the one call the assistant uses ------------------------------------------------------
    def detect(self, image: Image.Image, references: list[Image.Image] | None = None, class_name: str = "object",
               threshold: float | None = None) -> Detection:
        view, box = self.prepare(image)
        encoded = self.encode([view])
        reference_set = self.references(references, class_name) if references else None
        maps, scores, global_terms = self.assess(encoded, reference_set, class_name)
        score = float(scores[0])
        if threshold is None:
            threshold = reference_set.threshold if reference_set else self.zero_shot_threshold()
        width, height = image.size
        full_map = place_map(maps[0], box, width, height)
        anomalous = bool(score > threshold)
        regions = find_regions(full_map, threshold - float(global_terms[0])) if anomalous else []
        if anomalous and not regions:
            regions = find_regions(full_map, float(np.quantile(full_map, 0.995)))[:1]
        return Detection(anomalous=anomalous, score=score, threshold=float(threshold), anomaly_map=full_map,
                         regions=regions, image_size=(width, height),
                         mode="few-shot" if reference_set else "zero-shot",
                         n_references=len(references or []), class_name=class_name)


def place_map(small_map: np.ndarray, box: tuple[int, int, int, int], width: int, height: int) -> np.ndarray:
    """The map of a (possibly cropped) view at its place in the full image; outside the crop is 0."""
    x0, y0, x1, y1 = box
    if (x0, y0, x1, y1) == (0, 0, width, height):
        return to_image_size(small_map, width, height)
    full = np.zeros((height, width), np.float32)
    full[y0:y1, x0:x1] = to_image_size(small_map, x1 - x0, y1 - y0)
    return full


def jittered_views(image: Image.Image) -> list[Image.Image]:
    """Small misalignments a second photo of the same part would have: four crops shifted by ~3 %
    of the side, resized back. Crops rather than rotations, so no filled borders look anomalous."""
    width, height = image.size
    dx, dy = max(2, width // 32), max(2, height // 32)
    boxes = [(dx, dy, width, height), (0, 0, width - dx, height - dy), (dx, 0, width, height - dy), (0, dy, width - dx, height)]
    return [image.crop(box).resize((width, height), Image.BILINEAR) for box in boxes]


def _fingerprint(images: list[Image.Image]) -> str:
    digest = hashlib.sha1()
    for image in images:
        digest.update(f"{image.size}{image.mode}".encode())
        digest.update(image.tobytes())
    return digest.hexdigest()
