"""Defect-kind evaluation: K labelled examples per kind, the other anomalous test images as queries.

For each seed, K examples of every kind are drawn from the anomalous test images of that kind (their
ground-truth masks give the regions) and every other anomalous test image is a query:

- closed set: accuracy of the nearest kind, balanced over kinds (mean of the per-kind accuracies);
- open set: with one kind left out of the examples, the share of its images called "none of these"
  (`open_set_rejection`), and how many images of the known kinds still get their kind and are not
  rejected (`open_set_known_accuracy`), both averaged over the left-out kinds.

Queries are described twice: by their ground-truth mask, and by the engine's own strongest region
(`detect` against one reference drawn from train/good per seed), which is what a user gets. A kind
needs two images (one example, one query); with fewer than K + 1 images it gives all but one as
examples. Images with an empty mask (4 magnetic tile "uneven" ones) have no region and are left out.
`subset` keeps the images whose path hash is even ("dev": constants were chosen there) or odd
("holdout"); examples and queries then both come from it.
"""
from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from assistant.data import Sample, Split
from assistant.data.datasets import open_image
from assistant.defect_kinds import KindMatcher, describe, encode_view, strongest_region_mask
from assistant.images import load_mask

SUBSETS = ("all", "dev", "holdout")
REGIONS = ("mask", "engine")
CALIBRATION_BINS = 5


def subset_of(path: Path, root: Path) -> str:
    """"dev" or "holdout" by a hash of the image's path inside its dataset (stable across machines)."""
    relative = Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    return "dev" if int(hashlib.sha1(relative.encode()).hexdigest(), 16) % 2 == 0 else "holdout"


@dataclass
class DescriptorCache:
    """Descriptors computed once per image (mask) or per image and reference (engine region), so
    seeds and example counts reuse them."""

    masks: dict[Path, dict] = field(default_factory=dict)
    engine: dict[tuple[Path, Path], dict] = field(default_factory=dict)

    def of_mask(self, engine, sample: Sample) -> dict:
        if sample.path not in self.masks:
            image = open_image(sample.path)
            self.masks[sample.path] = describe(engine, image, load_mask(sample.mask_path, image.size), encode_view(engine, image))
        return self.masks[sample.path]

    def of_engine_region(self, engine, sample: Sample, reference: Path, class_name: str) -> dict:
        key = (sample.path, reference)
        if key not in self.engine:
            image = open_image(sample.path)
            detection = engine.detect(image, [open_image(reference)], class_name)
            self.engine[key] = describe(engine, image, strongest_region_mask(detection), encode_view(engine, image),
                                        exact=False)
        return self.engine[key]


def kind_samples(split: Split, subset: str = "all") -> dict[str, list[Sample]]:
    """Anomalous test images with a non-empty mask, per kind; kinds with fewer than two left out."""
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {', '.join(SUBSETS)}, got {subset!r}")
    if not split.has_masks:
        raise ValueError(f"{split.name}: defect kinds need a ground-truth mask for every anomalous test image")
    by_kind: dict[str, list[Sample]] = {}
    for sample in split.test:
        if sample.label != 1 or (subset != "all" and subset_of(sample.path, split.root) != subset):
            continue
        if marks_something(sample.mask_path):
            by_kind.setdefault(sample.defect, []).append(sample)
    kinds = {kind: samples for kind, samples in sorted(by_kind.items()) if len(samples) >= 2}
    if len(kinds) < 2:
        raise ValueError(f"{split.name}: defect kinds need at least two kinds with two masked images each"
                         f"{'' if subset == 'all' else f' in the {subset} subset'}")
    return kinds


def marks_something(mask_path: Path) -> bool:
    with Image.open(mask_path) as mask:
        return bool((np.asarray(mask.convert("L")) > 127).any())


def draw_examples(by_kind: dict[str, list[Sample]], shots: int, seed: int) -> tuple[dict[str, list[Sample]], dict[str, list[Sample]]]:
    """(examples, queries) per kind: min(shots, n - 1) examples drawn at random, the rest queries."""
    rng = np.random.default_rng(seed)
    examples, queries = {}, {}
    for kind, samples in by_kind.items():
        picked = set(rng.choice(len(samples), min(shots, len(samples) - 1), replace=False).tolist())
        examples[kind] = [s for i, s in enumerate(samples) if i in picked]
        queries[kind] = [s for i, s in enumerate(samples) if i not in picked]
    return examples, queries


def seed_scores(example_descriptors: dict[str, list[dict]], query_descriptors: dict[str, list[dict]]) -> dict[str, float]:
    """Closed-set balanced accuracy, calibration, and open-set rejection / known-kind accuracy for one draw."""
    kinds = list(example_descriptors)
    matcher = _matcher(example_descriptors, kinds)
    matches = {kind: matcher.match_many(query_descriptors[kind]) for kind in kinds}
    accuracy = np.mean([np.mean([m.nearest_kind == kind for m in matches[kind]]) for kind in kinds])
    confidences = np.array([m.confidence for kind in kinds for m in matches[kind]])
    correct = np.array([m.nearest_kind == kind for kind in kinds for m in matches[kind]])
    rejection, known = [], []
    for left_out in kinds:
        known_kinds = [kind for kind in kinds if kind != left_out]
        open_matcher = _matcher(example_descriptors, known_kinds)
        rejection.append(np.mean([m.kind is None for m in open_matcher.match_many(query_descriptors[left_out])]))
        known.append(np.mean([np.mean([m.kind == kind for m in open_matcher.match_many(query_descriptors[kind])])
                              for kind in known_kinds]))
    return {"defect_kind_accuracy": 100 * accuracy, "kind_confidence_mean": 100 * confidences.mean(),
            "kind_confidence_ece": 100 * calibration_error(confidences, correct),
            "open_set_rejection": 100 * np.mean(rejection), "open_set_known_accuracy": 100 * np.mean(known)}


def _matcher(example_descriptors: dict[str, list[dict]], kinds: list[str]) -> KindMatcher:
    descriptors = [d for kind in kinds for d in example_descriptors[kind]]
    return KindMatcher(descriptors, [kind for kind in kinds for _ in example_descriptors[kind]])


def calibration_error(confidences: np.ndarray, correct: np.ndarray) -> float:
    """Expected calibration error: |accuracy - mean confidence| per confidence bin, weighted by its share."""
    bins = np.minimum((confidences * CALIBRATION_BINS).astype(int), CALIBRATION_BINS - 1)
    return float(sum(np.sum(bins == b) / len(bins) * abs(correct[bins == b].mean() - confidences[bins == b].mean())
                     for b in range(CALIBRATION_BINS) if np.any(bins == b)))


def evaluate_defect_kinds(engine, split: Split, shots: int, seeds, class_name: str | None = None,
                          regions=REGIONS, subset: str = "all", cache: DescriptorCache | None = None,
                          progress: bool = True) -> dict:
    """{"defect_kind_accuracy": {"mean", "std"}, "open_set_rejection": {...}, ...} in percent over
    seeds, query regions from the ground-truth masks; the same keys under "engine_region" for the
    engine's own regions when `regions` includes "engine"."""
    if shots < 1:
        raise ValueError(f"--defect-shots must be at least 1, got {shots}")
    seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seeds:
        raise ValueError("at least one seed is needed")
    class_name = class_name or split.name
    cache = cache or DescriptorCache()
    by_kind = kind_samples(split, subset)
    per_seed: dict[str, list[dict]] = {region: [] for region in regions}
    for seed in tqdm(seeds, desc=f"{split.name}: defect kinds, {shots} per kind", disable=not progress, leave=False,
                     file=sys.stderr):
        examples, queries = draw_examples(by_kind, shots, seed)
        example_descriptors = {kind: [cache.of_mask(engine, s) for s in samples] for kind, samples in examples.items()}
        if "mask" in regions:
            per_seed["mask"].append(seed_scores(example_descriptors, {
                kind: [cache.of_mask(engine, s) for s in samples] for kind, samples in queries.items()}))
        if "engine" in regions:
            reference = split.train_good[int(np.random.default_rng(seed).integers(len(split.train_good)))]
            per_seed["engine"].append(seed_scores(example_descriptors, {
                kind: [cache.of_engine_region(engine, s, reference, class_name) for s in samples]
                for kind, samples in queries.items()}))
    examples, queries = draw_examples(by_kind, shots, seeds[0])
    report = {"defect_shots": shots, "seeds": len(seeds), "subset": subset, "kinds": list(by_kind),
              "examples_per_kind": {kind: len(samples) for kind, samples in examples.items()},
              "queries": sum(len(samples) for samples in queries.values())}
    if "mask" in regions:
        report.update(_summary(per_seed["mask"]))
    if "engine" in regions:
        report["engine_region"] = _summary(per_seed["engine"])
    return report


def _summary(runs: list[dict]) -> dict:
    return {key: {"mean": round(float(np.mean([run[key] for run in runs])), 2),
                  "std": round(float(np.std([run[key] for run in runs])), 2)} for key in runs[0]}


def format_kinds_table(name: str, report: dict) -> str:
    """One line per region source: accuracy, open-set rejection and known-kind accuracy, mean ± std."""
    keys = ("defect_kind_accuracy", "open_set_rejection", "open_set_known_accuracy", "kind_confidence_ece")
    header = f"{'category':<22}{'regions':<9}{'K':>3}  " + "  ".join(f"{key:>26}" for key in keys)
    lines = [header]
    for label, entry in (("mask", report), ("engine", report.get("engine_region"))):
        if entry and "defect_kind_accuracy" in entry:
            cells = "  ".join(f"{entry[key]['mean']:>19.1f} ± {entry[key]['std']:>4.1f}" for key in keys)
            lines.append(f"{name:<22}{label:<9}{report['defect_shots']:>3}  {cells}")
    return "\n".join(lines)


def run_eval_kinds(args) -> int:
    """`anomaly-assistant eval-kinds`: one report per category and example count; JSON with --output."""
    import json

    from assistant.checkpoint import save_json
    from assistant.data import discover
    from assistant.engine import AnomalyEngine

    shots = list(dict.fromkeys(args.defect_shots))
    if min(shots) < 1:
        raise ValueError(f"--defect-shots must be at least 1, got {min(shots)}")
    if args.seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {args.seeds}")
    subsets = list(dict.fromkeys(args.subset))
    splits = discover(args.data, args.category)
    for split in splits:
        for subset in subsets:
            kind_samples(split, subset)  # a set without masks or kinds fails before the model loads
    engine = AnomalyEngine(args.preset, args.checkpoint)
    regions = REGIONS if args.regions == "both" else (args.regions,)
    results: dict[str, dict] = {}
    for split in splits:
        cache = DescriptorCache()
        for subset in subsets:
            for k in shots:
                report = evaluate_defect_kinds(engine, split, k, args.seeds, args.class_name, regions, subset, cache)
                key = split.name + (f":{subset}" if len(subsets) > 1 else "") + (f":K{k}" if len(shots) > 1 else "")
                results[key] = report
                print(format_kinds_table(key, report), flush=True)
    if args.output:
        save_json(results, args.output)
        print(f"results written to {args.output}")
    else:
        print(json.dumps(results))
    return 0
