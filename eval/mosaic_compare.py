"""A mosaic set (`anomaly-assistant data mosaic`) scored two ways on the same images and references:

  tiled     each mosaic as `detect` scores a large image: cut into tiles, stitched (both stitch
            modes; the score as the highest tile score and as the stitched map's peak)
  per cell  each cell an ordinary image against the reference mosaics' cells, the mosaic's score
            its highest cell's, the cells' maps placed side by side

    python -m eval.mosaic_compare --data DIR [--category C] [--shots 1] [--seeds 1] [--output JSON]

Run one at a time on a shared machine (OMP_NUM_THREADS=1): a 20-mosaic tire set takes ~25 min on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from assistant import tiling
from assistant.checkpoint import save_json
from assistant.data import Split, discover
from assistant.data.datasets import open_image
from assistant.data.mosaic import MANIFEST, Grid, read_grid
from assistant.engine import AnomalyEngine, place_map

from . import metrics
from .evaluate import draw_references, load_test_image, pixel_eval_size
from .protocol import base_category


def cells(image: Image.Image, grid: Grid) -> list[Image.Image]:
    return [image.crop(grid.box(index)) for index in range(grid.count)]


def per_cell(engine: AnomalyEngine, image: Image.Image, grid: Grid, references, class_name: str) -> tuple[float, np.ndarray]:
    """The highest cell score and the cells' maps side by side, each cell scored as an ordinary image."""
    pieces = cells(image, grid)
    prepared = [engine.prepare(cell) for cell in pieces]
    full = np.zeros(image.size[::-1], np.float32)
    scores = []
    encoded_cells = engine.encode_each([view for view, _ in prepared], sources=dict(enumerate(pieces)))
    for index, (encoded, (_, box)) in enumerate(zip(encoded_cells, prepared)):
        maps, cell_scores = engine.assess(encoded, references, class_name)
        x0, y0, x1, y1 = grid.box(index)
        full[y0:y1, x0:x1] = place_map(maps[0], box, x1 - x0, y1 - y0)
        scores.append(float(cell_scores[0]))
    return max(scores), full


def peak_cell(full: np.ndarray, grid: Grid) -> int:
    """The cell that holds the map's highest value."""
    y, x = np.unravel_index(int(np.argmax(full)), full.shape)
    return int(y // grid.cell[1]) * grid.cols + int(x // grid.cell[0])


def compare_split(engine: AnomalyEngine, split: Split, shots: int, seed: int, class_name: str, progress: bool) -> dict:
    grid = read_grid(split.root)
    manifest = json.loads((split.root / MANIFEST).read_text(encoding="utf-8"))["images"]
    mosaics = [open_image(p) for p in draw_references(split, shots, seed)]
    began = time.perf_counter()
    tiled_refs = tiling.references(engine, mosaics, class_name, seed, tiling.reference_scale(engine, mosaics))
    tiled_ref_s = time.perf_counter() - began
    began = time.perf_counter()
    cell_refs = engine.references([cell for mosaic in mosaics for cell in cells(mosaic, grid)], class_name, seed)
    cell_ref_s = time.perf_counter() - began
    rows = []
    gts, preds = [], {"tiled max": [], "tiled mean": [], "per cell": []}
    for sample in tqdm(split.test, desc=split.name, disable=not progress, leave=False):
        image, mask, _ = load_test_image(sample, [])
        small = pixel_eval_size(*image.size)
        tiled = tiling.assess(engine, image, tiled_refs, class_name)
        stitched = {mode: tiled.full_map(mode) for mode in ("max", "mean")}
        began = time.perf_counter()
        cell_score, cell_map = per_cell(engine, image, grid, cell_refs, class_name)
        cell_s = time.perf_counter() - began
        gts.append(mask)
        for name, full in (("tiled max", stitched["max"]), ("tiled mean", stitched["mean"]), ("per cell", cell_map)):
            preds[name].append(cv2.resize(full, small, interpolation=cv2.INTER_LINEAR))
        at = manifest[str(sample.path.relative_to(split.root))].get("anomalous_cell")
        rows.append({"file": str(sample.path), "label": sample.label, "defect": sample.defect, "anomalous_cell": at,
                     "tiled_peak_cell": peak_cell(stitched["max"], grid), "per_cell_peak_cell": peak_cell(cell_map, grid),
                     "tiled": tiled.score, "tiled_peak_max": float(stitched["max"].max()),
                     "tiled_peak_mean": float(stitched["mean"].max()), "per_cell": cell_score,
                     "tiled_s": round(tiled.seconds, 2), "per_cell_s": round(cell_s, 2)})
    labels = np.array([r["label"] for r in rows])
    has_pixels = any(g.any() for g in gts)
    image_auroc = {key: 100 * metrics.image_auroc(labels, np.array([r[key] for r in rows]))
                   for key in ("tiled", "tiled_peak_max", "tiled_peak_mean", "per_cell")}
    pixel_auroc = {name: 100 * metrics.pixel_auroc(gts, p) if has_pixels else None for name, p in preds.items()}
    accuracy = {"tiled": 100 * metrics.balanced_accuracy(labels, np.array([r["tiled"] for r in rows]) > tiled_refs.threshold),
                "per_cell": 100 * metrics.balanced_accuracy(labels, np.array([r["per_cell"] for r in rows]) > cell_refs.threshold)}
    anomalous = [r for r in rows if r["label"] == 1]
    peak_in_cell = {name: 100 * float(np.mean([r[f"{name}_peak_cell"] == r["anomalous_cell"] for r in anomalous]))
                    for name in ("tiled", "per_cell")} if anomalous else {}
    return {"category": split.name, "seed": seed, "shots": shots, "n_test": len(rows), "grid": grid.to_json(),
            "tiles_per_image": len(tiled.tile_maps), "image_auroc": image_auroc, "pixel_auroc": pixel_auroc,
            "verdict_accuracy": accuracy, "peak_in_anomalous_cell": peak_in_cell, "reference_seconds": {"tiled": round(tiled_ref_s, 1), "per_cell": round(cell_ref_s, 1)},
            "thresholds": {"tiled": tiled_refs.threshold, "per_cell": cell_refs.threshold}, "images": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="folder written by `anomaly-assistant data mosaic` (or one set in it)")
    parser.add_argument("--category", action="append", default=None)
    parser.add_argument("--shots", type=int, default=1, help="reference mosaics per seed (default 1)")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--preset", default="embedded")
    parser.add_argument("--output", type=Path, default=None, help="JSON with the figures and every image's scores")
    args = parser.parse_args(argv)
    engine = AnomalyEngine(args.preset)
    report = []
    for split in discover(args.data, args.category):
        class_name = base_category(split.name.rsplit("_", 1)[0]).replace("_", " ")
        for seed in range(args.seeds):
            result = compare_split(engine, split, args.shots, seed, class_name, sys.stderr.isatty())
            report.append(result)
            summary = {k: result[k] for k in ("category", "seed", "image_auroc", "pixel_auroc", "verdict_accuracy",
                                              "peak_in_anomalous_cell", "reference_seconds", "tiles_per_image")}
            print(json.dumps(summary), flush=True)
    if args.output:
        from eval.evaluate import machine_description

        command = "python -m eval.mosaic_compare " + " ".join(argv if argv is not None else sys.argv[1:])
        save_json({"preset": args.preset, "command": command, "machine": machine_description(), "results": report},
                  args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
