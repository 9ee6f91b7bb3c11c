"""k-shot evaluation: for each seed draw K normal references, score every test image, report metrics.

Test images are encoded once and reused across seeds (only the memory bank changes with the seed),
so 5 seeds cost little more than one.
"""
from __future__ import annotations

import contextlib
import csv
import os
import platform
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from assistant import tiling
from assistant.checkpoint import save_json
from assistant.data import Split, discover
from assistant.data.datasets import open_image
from assistant.encoders import EncodedImages
from assistant.engine import AnomalyEngine, place_map
from assistant.images import load_mask

from . import metrics, perturb
from .protocol import base_category, select

# Pixel metrics are computed with the longest side scaled to this, to bound memory on big sets.
PIXEL_EVAL_SIDE = 256
# An anomalous image whose capture change left less than this share of its defect's pixels in the
# frame no longer shows its defect: it is left out of that evaluation (eval/perturb.py).
MIN_DEFECT_KEPT = 0.5
METRIC_KEYS = ("image_auroc", "pixel_auroc", "aupro", "image_f1_max", "judgement_accuracy")


@dataclass
class EncodedTest:
    encoded: EncodedImages  # only the levels the memory bank and global statistics read; others None
    text_map: torch.Tensor | None
    size: tuple[int, int]
    box: tuple[int, int, int, int]  # where the encoded view sits in the image (crop)
    seconds: float
    mask: np.ndarray | None  # ground truth at the pixel-evaluation size (after any perturbation)
    kept: float = 1.0  # share of the defect's pixels the perturbed frame still holds


def pixel_eval_size(width: int, height: int) -> tuple[int, int]:
    scale = PIXEL_EVAL_SIDE / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def load_test_image(sample, perturbations: list[str], keep_every_pixel: bool = False):
    """The test image (RGB PIL) and its mask at the pixel-evaluation size, after `perturbations`,
    and the share of its defect's pixels still in the frame (`perturb.apply`)."""
    image = open_image(sample.path)
    mask = load_mask(sample.mask_path, image.size) if sample.mask_path else None
    image, mask, kept = perturb.apply(perturbations, image, mask, perturb.key_of(sample.path), keep_every_pixel)
    small = pixel_eval_size(*image.size)
    if mask is None:
        return image, np.zeros(small[::-1], bool), kept
    return image, cv2.resize(mask.astype(np.uint8), small, interpolation=cv2.INTER_NEAREST).astype(bool), kept


def encode_tests(engine: AnomalyEngine, split: Split, class_name: str, batch_size: int, progress: bool,
                 perturbations: list[str] | None = None) -> list[EncodedTest]:
    keep = engine.scoring_levels()
    out: list[EncodedTest] = []
    samples = split.test
    bar = tqdm(total=len(samples), desc=f"{split.name}: encode", disable=not progress, leave=False)
    for start in range(0, len(samples), batch_size):
        batch = samples[start:start + batch_size]
        loaded = [load_test_image(sample, perturbations or [], not split.has_masks) for sample in batch]
        images = [image for image, _, _ in loaded]
        began = time.perf_counter()
        prepared = [engine.prepare(image) for image in images]
        encoded = engine.encode_each([view for view, _ in prepared], batch_size, sources=dict(enumerate(images)))
        text = [engine.text_maps(one, class_name) for one in encoded]
        per_image = (time.perf_counter() - began) / len(batch)
        for one, text_map, (image, mask, kept), (_, box) in zip(encoded, text, loaded, prepared):
            levels = [level if i in keep else None for i, level in enumerate(one.levels)]
            out.append(EncodedTest(EncodedImages(levels, one.embedding, colour=one.colour), text_map, image.size, box,
                                   per_image, mask, kept))
        bar.update(len(batch))
    bar.close()
    return out


def draw_references(split: Split, shots: int, seed: int) -> list[Path]:
    if shots > len(split.train_good):
        raise ValueError(f"{split.name}: {shots} shots asked but only {len(split.train_good)} normal training images")
    rng = np.random.default_rng(seed)
    return [split.train_good[i] for i in sorted(rng.choice(len(split.train_good), shots, replace=False))]


def pixel_arrays(tests: list[EncodedTest], maps: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Masks and maps at the pixel-evaluation size, each map first placed at its crop in the image."""
    preds = []
    for test, small in zip(tests, maps):
        placed = place_map(small, test.box, *test.size)
        preds.append(cv2.resize(placed, pixel_eval_size(*test.size), interpolation=cv2.INTER_LINEAR))
    return [test.mask for test in tests], preds


def evaluate_split(engine: AnomalyEngine, split: Split, shots: int, seeds: list[int], class_name: str,
                   batch_size: int = 8, progress: bool = True, csv_rows: list | None = None,
                   split_defects: bool = False, perturbations: list[str] | None = None,
                   fixed_references=None) -> dict[str, dict]:
    """Metrics of the split's test images against `shots` references drawn per seed, or against
    `fixed_references` (a profile's built set) for every seed."""
    if is_tiled(engine, split) or isinstance(fixed_references, tiling.TiledReferences):
        return evaluate_tiled_split(engine, split, shots, seeds, class_name, progress, csv_rows, split_defects,
                                    perturbations, fixed_references)
    tests = encode_tests(engine, split, class_name, batch_size, progress, perturbations)
    split, tests, left_out = in_frame(split, tests)
    return with_left_out(score_tests(engine, split, tests, shots, seeds, class_name, progress, csv_rows, split_defects,
                                     fixed_references), left_out)


def in_frame(split: Split, tests: list[EncodedTest]) -> tuple[Split, list[EncodedTest], int]:
    """The split and its encoded tests without the anomalous images whose capture change cut their
    defect out of the frame (less than MIN_DEFECT_KEPT of it left), and how many those were."""
    keep = [i for i, test in enumerate(tests) if split.test[i].label == 0 or test.kept >= MIN_DEFECT_KEPT]
    if len(keep) == len(tests):
        return split, tests, 0
    return replace(split, test=[split.test[i] for i in keep]), [tests[i] for i in keep], len(tests) - len(keep)


def with_left_out(results: dict[str, dict], left_out: int) -> dict[str, dict]:
    """Results whose entries also say how many anomalous images were left out as out of frame."""
    for entry in results.values():
        entry["defects_out_of_frame"] = left_out
    return results


def is_tiled(engine: AnomalyEngine, split: Split) -> bool:
    """True when any test image is larger than one view (read from the file headers)."""
    settings = tiling.settings_of(engine)
    for sample in split.test:
        with Image.open(sample.path) as image:
            if tiling.is_large(image.size, settings):
                return True
    return False


def evaluate_tiled_split(engine: AnomalyEngine, split: Split, shots: int, seeds: list[int], class_name: str,
                         progress: bool = True, csv_rows: list | None = None, split_defects: bool = False,
                         perturbations: list[str] | None = None, fixed_references=None) -> dict[str, dict]:
    """The metrics `evaluate.score_tests` reports, with every image of the set scored in tiles (an
    image smaller than a tile is one tile)."""
    mode = tiling.settings_of(engine).stitch
    lost = {i for i, sample in enumerate(split.test) if perturbations and sample.label == 1
            and load_test_image(sample, perturbations, not split.has_masks)[2] < MIN_DEFECT_KEPT}
    split = replace(split, test=[sample for i, sample in enumerate(split.test) if i not in lost])
    per_seed: dict[str, list[dict]] = {}
    ms, reference_seconds = [], []
    for seed in seeds:
        references = fixed_references
        began = time.perf_counter()
        if shots and references is None:
            images = [open_image(p) for p in draw_references(split, shots, seed)]
            references = tiling.references(engine, images, class_name, seed, tiling.reference_scale(engine, images))
        if references is not None:
            reference_seconds.append(time.perf_counter() - began)
        threshold = references.threshold if references else engine.zero_shot_threshold()
        scores, gts, preds, seconds = [], [], [], []
        for sample in tqdm(split.test, desc=f"{split.name}: seed {seed}", disable=not progress, leave=False):
            image, mask, _ = load_test_image(sample, perturbations or [], not split.has_masks)
            tiled = tiling.assess(engine, image, references, class_name)
            scores.append(tiled.score)
            seconds.append(tiled.seconds)
            if split.has_masks:
                gts.append(mask)
                preds.append(cv2.resize(tiled.full_map(mode), pixel_eval_size(*image.size), interpolation=cv2.INTER_LINEAR))
        ms.append(1000 * float(np.mean(seconds)))
        _record_seed(per_seed, split, seed, np.asarray(scores), threshold, gts, preds,
                     split_defects, csv_rows)
    return with_left_out(_summary(split, per_seed, ms, reference_seconds), len(lost))


def score_tests(engine: AnomalyEngine, split: Split, tests: list[EncodedTest], shots: int, seeds: list[int],
                class_name: str, progress: bool = True, csv_rows: list | None = None,
                split_defects: bool = False, fixed_references=None) -> dict[str, dict]:
    """Metrics of encoded test images against K references per seed (encoding is shared by every
    number of shots, so a benchmark matrix encodes each set once per capture condition)."""
    per_seed: dict[str, list[dict]] = {}
    ms = []
    for seed in tqdm(seeds, desc=f"{split.name}: seeds", disable=not progress, leave=False):
        references = (fixed_references if fixed_references is not None else
                      engine.references([open_image(p) for p in draw_references(split, shots, seed)], class_name, seed)
                      if shots else None)
        threshold = references.threshold if references else engine.zero_shot_threshold()
        began = time.perf_counter()
        assessed = [engine.assess(t.encoded, references, class_name, t.text_map) for t in tests]
        scores = np.array([float(s[0]) for _, s in assessed])
        map_seconds = (time.perf_counter() - began) / len(tests)
        ms.append(1000 * (map_seconds + np.mean([t.seconds for t in tests])))
        gts, preds = pixel_arrays(tests, [m[0] for m, _ in assessed]) if split.has_masks else (None, None)
        _record_seed(per_seed, split, seed, scores, threshold, gts, preds, split_defects, csv_rows)
    return _summary(split, per_seed, ms)


def _record_seed(per_seed: dict[str, list[dict]], split: Split, seed: int, scores: np.ndarray, threshold: float,
                 gts: list | None, preds: list | None, split_defects: bool, csv_rows: list | None) -> None:
    """One seed's metrics on the whole set and, with split_defects, per defect type (appended to
    per_seed), and its per-image CSV rows."""
    labels = np.array([s.label for s in split.test])
    defects = np.array([s.defect for s in split.test])
    for name, subset in _subsets(defects, split_defects):
        chosen = np.flatnonzero(subset)
        per_seed.setdefault(name, []).append(_metrics(labels[subset], scores[subset], threshold,
                                                      [gts[i] for i in chosen] if gts else None,
                                                      [preds[i] for i in chosen] if preds else None))
    if csv_rows is not None:
        for sample, score in zip(split.test, scores):
            csv_rows.append([split.name, seed, str(sample.path), sample.label, sample.defect, f"{score:.6f}",
                             f"{threshold:.6f}", int(score > threshold)])


def _summary(split: Split, per_seed: dict[str, list[dict]], ms: list[float],
             reference_seconds: list[float] | None = None) -> dict[str, dict]:
    """Mean and spread over seeds of each metric, keyed "<set>" and "<set>:<defect>"."""
    results = {}
    for name, runs in per_seed.items():
        key = split.name if name == "all" else f"{split.name}:{name}"
        entry = {metric: _mean_std([run[metric] for run in runs]) for metric in METRIC_KEYS}
        entry["ms_per_image"] = round(float(np.mean(ms)), 2)
        entry["n_test"] = int(runs[0]["n_test"])
        if reference_seconds:
            entry["reference_seconds"] = round(float(np.mean(reference_seconds)), 1)
        results[key] = entry
    return results


def _subsets(defects: np.ndarray, split_defects: bool):
    yield "all", np.ones(len(defects), bool)
    if split_defects:
        for defect in sorted(set(defects) - {"good"}):
            yield defect, (defects == "good") | (defects == defect)


def _metrics(labels, scores, threshold, gts, preds) -> dict:
    has_pixels = gts is not None and any(g.any() for g in gts)
    return {
        "image_auroc": metrics.image_auroc(labels, scores),
        "image_f1_max": metrics.image_f1_max(labels, scores),
        "judgement_accuracy": metrics.balanced_accuracy(labels, scores > threshold),
        "pixel_auroc": metrics.pixel_auroc(gts, preds) if has_pixels else float("nan"),
        "aupro": metrics.aupro(gts, preds) if has_pixels else float("nan"),
        "n_test": len(labels),
    }


def _mean_std(values: list[float]) -> dict:
    array = np.array(values, dtype=np.float64) * 100.0
    if np.isnan(array).any():
        return {"mean": None, "std": None}
    return {"mean": round(float(array.mean()), 2), "std": round(float(array.std()), 2)}


def proxy_root() -> Path:
    """Where derived evaluation sets are written: `$ANOMALY_ASSISTANT_CACHE/proxies`, by default
    under the user's cache folder (never inside the repository: they are made from licensed images)."""
    import os

    base = os.environ.get("ANOMALY_ASSISTANT_CACHE") or Path.home() / ".cache" / "anomaly-assistant"
    return Path(base) / "proxies"


def evaluation_splits(data: str, categories: list[str] | None, which: str = "all", logical_proxy: bool = False,
                      part_proxy: bool = False) -> list[Split]:
    """The sets to evaluate: each found set, or with `logical_proxy` its logical proxy
    (eval/logical_proxy.py), or with `part_proxy` the part proxy of each surface set
    (eval/part_proxy.py), made once into `proxy_root()`; cut to the dev or holdout half."""
    from . import logical_proxy as logical
    from . import part_proxy as part

    splits = discover(data, categories)
    if logical_proxy:
        splits = [discover(logical.build(split, proxy_root()))[0] for split in splits]
    if part_proxy:
        splits = [discover(part.build(split, proxy_root()))[0] for split in splits if part.applies(split)]
    return [select(split, which) for split in splits]


def every_split(sources: list[str], which: str, logical_proxy: bool, part_proxy: bool) -> list[Split]:
    """The sets found in `sources`, then (with the flags) their logical proxies and the part proxies
    of the surface sets, each cut to the `which` half: the sets a multi-set run measures."""
    splits = [split for source in sources for split in evaluation_splits(source, None, which)]
    if logical_proxy:
        splits += [split for source in sources for split in evaluation_splits(source, None, which, logical_proxy=True)]
    if part_proxy:
        splits += [split for source in sources for split in evaluation_splits(source, None, which, part_proxy=True)]
    return splits


def machine_description() -> str:
    """'<cores>-core <CPU model>, <GPU or no GPU>': what the timings in a report depend on."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), model)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()}-core {model}, {gpu}"


def run_evaluation(data: str, categories: list[str] | None, shots: int, seeds: int, output: Path | None,
                   preset: str = "embedded", checkpoint_dir: str | None = None, csv_path: Path | None = None,
                   class_name: str | None = None, batch_size: int = 8, split_defects: bool = False,
                   overrides: dict | None = None, progress: bool | None = None, which: str = "all",
                   perturbations: list[str] | None = None, logical_proxy: bool = False,
                   engine: AnomalyEngine | None = None, profile: str | None = None, part_proxy: bool = False) -> dict:
    """Evaluate every set under `data` (see `evaluation_splits`); `engine` reuses a loaded one. With
    `profile`, every set is judged against that profile's references (its bank and threshold, one
    seed), as `inspect --profile` would judge it."""
    from assistant.config import load_preset

    if shots < 0:
        raise ValueError("--shots must be 0 (zero-shot: no references) or more")
    if seeds < 1:
        raise ValueError("--seeds must be at least 1")
    perturbations = perturb.parse(perturbations)
    splits = evaluation_splits(data, categories, which, logical_proxy, part_proxy)
    progress = sys.stderr.isatty() if progress is None else progress
    config = engine.preset if engine else load_preset(preset, overrides)
    engine = engine or AnomalyEngine(config, checkpoint_dir)
    fixed = None
    if profile is not None:
        from assistant.profiles import load

        loaded = load(profile, engine)
        fixed, shots, seeds, class_name = loaded.references, loaded.info["n_good_images"], 1, class_name or loaded.class_name
    seed_list = list(range(seeds))
    csv_rows: list | None = [] if csv_path else None
    results = {}
    for split in splits:
        name = class_name or base_category(split.name).replace("_", " ")
        results.update(evaluate_split(engine, split, shots, seed_list, name, batch_size, progress, csv_rows,
                                      split_defects, perturbations, fixed))
    report = {
        "config": {
            "data": str(data), "categories": [s.name for s in splits], "shots": shots, "seeds": seed_list,
            "split": which, "perturbations": perturbations, "perturb_version": perturb.VERSION, "logical_proxy": logical_proxy,
            "part_proxy": part_proxy, "profile": profile,
            "preset": config.get("name", str(preset)), "encoder": config["encoder"], "memory_bank": config["memory_bank"],
            "anomaly_map": config["anomaly_map"], "threshold": config.get("threshold"),
            "text_map_trained": engine.text_map.trained,
            "checkpoint": str(engine.checkpoint_dir) if engine.checkpoint_dir else None,
            "torch_threads": torch.get_num_threads(),
            "machine": machine_description(),
            "pixel_eval_side": PIXEL_EVAL_SIDE,
        },
        "results": results,
    }
    if output:
        save_json(report, output)
    if csv_path:
        lines = [["category", "seed", "file", "label", "defect", "score", "threshold", "predicted"]] + csv_rows
        _write_csv(csv_path, lines)
    return report


def _write_csv(path: Path, rows: list[list]) -> None:
    import io

    from assistant.checkpoint import atomic_write_bytes

    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    atomic_write_bytes(Path(path), buffer.getvalue().encode("utf-8"))


def format_table(report: dict) -> str:
    header = (f"{'category':<24}{'img AUROC':>14}{'pix AUROC':>14}{'AUPRO':>14}{'F1-max':>14}{'verdict acc':>14}"
              f"{'ms/img':>9}{'n':>6}")
    lines = [header, "-" * len(header)]
    for name, entry in report["results"].items():
        cells = [_cell(entry[k]) for k in METRIC_KEYS]
        lines.append(f"{name:<24}" + "".join(f"{c:>14}" for c in cells) + f"{entry['ms_per_image']:>9.1f}{entry['n_test']:>6}")
    return "\n".join(lines)


def _cell(value: dict) -> str:
    return "n/a" if value["mean"] is None else f"{value['mean']:.1f}±{value['std']:.1f}"
