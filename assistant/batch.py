"""Several images through the engine at once: views that share an input size share one forward pass.

`detect_batch` returns what `AnomalyEngine.detect` returns for each image, built from the engine's
public steps (prepare, encode, assess, place_map, anomalous_regions); tests/test_batch.py checks
that both agree, so a change to `detect` that is not made here too fails there. Images that
`detect` scores in tiles (large photos, strips: assistant/tiling.py) go through `detect` itself.
The engine is imported when first used: the CLI reads MAX_BATCH to check `--batch` before torch loads.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .result import Detection

if TYPE_CHECKING:
    from PIL import Image

    from .engine import AnomalyEngine
    from .reference_set import ReferenceSet

MAX_BATCH = 16  # images per call: half of Assistant's detection cache, so a batch's answers find all of it


def size_groups(engine: AnomalyEngine, views: list[Image.Image]) -> list[list[int]]:
    """Indices of views the encoder can take in one batch: the same input size at the bank's
    resolution and at the text map's extra one (two views may round to one size and not the other)."""
    extra = engine.text_extra_size
    groups: dict[tuple, list[int]] = {}
    for index, view in enumerate(views):
        key = (engine.encoder.input_size(view), engine.encoder.input_size(view, extra) if extra else None)
        groups.setdefault(key, []).append(index)
    return list(groups.values())


def detect_batch(engine: AnomalyEngine, images: list[Image.Image], references: list[Image.Image] | None = None,
                 class_name: str = "object", threshold: float | None = None) -> list[Detection]:
    """`engine.detect` for each image, with the reference set built (or found in the engine's cache) once;
    `references` are normal images or a set built before (a profile's)."""
    from . import tiling
    from .engine import judges_colour
    from .reference_set import TiledReferences

    if len(images) > MAX_BATCH:
        raise ValueError(f"at most {MAX_BATCH} images at once, got {len(images)}")
    detections: list[Detection | None] = [None] * len(images)
    one_view = []
    for index, image in enumerate(images):
        if tiling.applies(engine, image) or isinstance(references, TiledReferences):
            detections[index] = engine.detect(image, references, class_name, threshold)
        else:
            one_view.append(index)
    if not one_view:
        return detections
    reference_set = engine.references(references, class_name) if references else None
    masks = {index: engine.foreground_mask(images[index]) for index in one_view}
    prepared = {index: engine.prepare(images[index], masks[index]) for index in one_view}
    for group in size_groups(engine, [prepared[index][0] for index in one_view]):
        group = [one_view[position] for position in group]
        sources = [images[index] for index in group] if judges_colour(reference_set) else None
        encoded = engine.encode([prepared[index][0] for index in group], sources=sources)
        maps, scores = engine.assess(encoded, reference_set, class_name)
        for row, index in enumerate(group):
            detections[index] = _detection(engine, images[index], prepared[index][1], maps[row], float(scores[row]),
                                           reference_set, class_name, threshold, masks[index])
    return detections


def _detection(engine: AnomalyEngine, image: Image.Image, box, small_map, score: float,
               reference_set: ReferenceSet | None, class_name: str,
               threshold: float | None, mask=None) -> Detection:
    from .engine import anomalous_regions, place_map

    estimated = threshold is None and (reference_set is None or reference_set.threshold_estimated)
    if threshold is None:
        threshold = reference_set.threshold if reference_set else engine.zero_shot_threshold()
    width, height = image.size
    full_map = place_map(small_map, box, width, height)
    anomalous = bool(score > threshold)
    regions = anomalous_regions(full_map, float(small_map.max()), threshold) if anomalous else []
    return Detection(anomalous=anomalous, score=score, threshold=float(threshold), anomaly_map=full_map,
                     regions=regions, image_size=(width, height),
                     mode="few-shot" if reference_set else "zero-shot", threshold_estimated=estimated,
                     n_references=reference_set.n_images if reference_set else 0, class_name=class_name,
                     capture=engine.capture_of(image, reference_set, mask))
