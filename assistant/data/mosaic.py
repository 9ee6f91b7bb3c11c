"""Large-image benchmarks made from a small-image set: mosaics and strips in the MVTec layout.

No shared set has large images, so these are built from one: a mosaic is a grid of cells (4 x 4 by
default; a strip is 1 x 16) pasted at native pixel size, each cell one image of the source set.

  train/good/NNN.jpg         cells from the source's train/good, each image in at most one mosaic
                             (the references an evaluation draws)
  test/good/NNN.jpg          cells drawn from the source's test/good (distinct within a mosaic,
                             reused across mosaics: a set has fewer normal test images than cells)
  test/<defect>/<stem>.jpg   one anomalous test image of the source in a random cell, the other
                             cells normal test images as above
  ground_truth/<defect>/<stem>_mask.png   that image's mask at its cell, zero elsewhere
  mosaic.json                the grid, the cell size and, per image, its cells' source files

Cells are the median size of the source's training images; an image of another size (magnetic
tiles vary from 103 to 512 pixels) is resized to it, its mask with nearest neighbours. Images are
written as JPEG at quality 95, the quality the shared sets are stored at. The folder is built
beside OUT and moved there when complete; sources are only read.
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from assistant.checkpoint import atomic_write_bytes
from assistant.data.datasets import DatasetError, Sample, Split, discover, open_image
from assistant.data.staging import staged_folder
from assistant.images import MAX_PIXELS, load_mask

LAYOUTS = {"mosaic": (4, 4), "strip": (1, 16)}
JPEG_QUALITY = 95
MANIFEST = "mosaic.json"


def default_root() -> Path:
    """`$ANOMALY_ASSISTANT_CACHE/mosaics`, by default under the user's cache folder: mosaics are made
    of licensed images and never belong inside the repository."""
    base = os.environ.get("ANOMALY_ASSISTANT_CACHE") or Path.home() / ".cache" / "anomaly-assistant"
    return Path(base).expanduser() / "mosaics"


@dataclass(frozen=True)
class Grid:
    rows: int
    cols: int
    cell: tuple[int, int]  # width, height

    @property
    def size(self) -> tuple[int, int]:
        return self.cols * self.cell[0], self.rows * self.cell[1]

    @property
    def count(self) -> int:
        return self.rows * self.cols

    def box(self, index: int) -> tuple[int, int, int, int]:
        """Cell `index` (row by row) in mosaic pixels."""
        row, col = divmod(index, self.cols)
        x0, y0 = col * self.cell[0], row * self.cell[1]
        return x0, y0, x0 + self.cell[0], y0 + self.cell[1]

    def to_json(self) -> dict:
        return {"rows": self.rows, "cols": self.cols, "cell": list(self.cell)}

    @classmethod
    def from_json(cls, data: dict) -> "Grid":
        return cls(int(data["rows"]), int(data["cols"]), (int(data["cell"][0]), int(data["cell"][1])))


@dataclass
class Built:
    destination: Path
    grid: Grid
    counts: dict[str, int]


def read_grid(root: Path) -> Grid:
    """The grid of a mosaic set written by `build` (its mosaic.json)."""
    path = Path(root) / MANIFEST
    try:
        return Grid.from_json(json.loads(path.read_text(encoding="utf-8"))["grid"])
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise DatasetError(f"{path}: not a mosaic set's manifest ({type(exc).__name__}: {exc})") from None


def cell_size(paths: list[Path]) -> tuple[int, int]:
    """The median width and height of the images (read from their headers)."""
    sizes = []
    for path in paths:
        try:
            with Image.open(path) as image:
                sizes.append(image.size)
        except OSError as exc:
            raise DatasetError(f"{path}: unreadable image ({exc})") from None
    width, height = np.median(np.asarray(sizes), axis=0)
    return int(round(width)), int(round(height))


class _Writer:
    """Pastes cells and writes mosaics (JPEG) and masks (PNG) under a staging folder."""

    def __init__(self, staging: Path, grid: Grid, mode: str, source_root: Path):
        self.staging, self.grid, self.mode, self.source_root = staging, grid, mode, source_root
        self.manifest: dict[str, dict] = {}

    def cell(self, path: Path) -> Image.Image:
        image = open_image(path).convert(self.mode)
        return image if image.size == self.grid.cell else image.resize(self.grid.cell, Image.BICUBIC)

    def write(self, relative: str, cells: list[Path], defect: Sample | None = None, at: int | None = None) -> None:
        mosaic = Image.new(self.mode, self.grid.size)
        for index, path in enumerate(cells):
            mosaic.paste(self.cell(path), self.grid.box(index)[:2])
        entry = {"cells": [self._name(p) for p in cells]}
        if defect is not None:
            entry["anomalous_cell"] = at
            if defect.mask_path is not None:
                self._write_mask(relative, defect, at)
        buffer = io.BytesIO()
        mosaic.save(buffer, format="JPEG", quality=JPEG_QUALITY)
        atomic_write_bytes(self.staging / relative, buffer.getvalue())
        self.manifest[relative] = entry

    def _write_mask(self, relative: str, sample: Sample, at: int) -> None:
        with Image.open(sample.path) as source:
            size = source.size
        cell_mask = Image.fromarray(load_mask(sample.mask_path, size).astype(np.uint8) * 255)
        if cell_mask.size != self.grid.cell:
            cell_mask = cell_mask.resize(self.grid.cell, Image.NEAREST)
        mask = Image.new("L", self.grid.size)
        mask.paste(cell_mask, self.grid.box(at)[:2])
        stem = Path(relative).stem
        buffer = io.BytesIO()
        mask.save(buffer, format="PNG")
        atomic_write_bytes(self.staging / "ground_truth" / sample.defect / f"{stem}_mask.png", buffer.getvalue())

    def _name(self, path: Path) -> str:
        try:
            return str(Path(path).relative_to(self.source_root))
        except ValueError:
            return str(path)


def _pick(rng: np.random.Generator, pool: list[Path], count: int) -> list[Path]:
    """`count` images of `pool`, distinct while the pool has enough."""
    indices = rng.choice(len(pool), count, replace=len(pool) < count)
    return [pool[i] for i in indices]


def _limit(rng: np.random.Generator, items: list, count: int | None) -> list:
    if count is None or count >= len(items):
        return list(items)
    return [items[i] for i in sorted(rng.choice(len(items), count, replace=False))]


def plan_counts(split: Split, grid: Grid, normal: int | None, anomalous: int | None, train: int | None) -> dict[str, int]:
    n_train = len(split.train_good) // grid.count
    if n_train < 1:
        raise DatasetError(f"{split.root}: {len(split.train_good)} normal training images, a {grid.rows} x {grid.cols} "
                           f"reference mosaic needs {grid.count}")
    test_good = [s for s in split.test if s.label == 0]
    if not test_good:
        raise DatasetError(f"{split.root}: no normal test images (test/good/) to fill the test mosaics")
    n_anomalous = sum(s.label for s in split.test)
    for option, value in (("--normal", normal), ("--anomalous", anomalous), ("--train", train)):
        if value is not None and value < 1:
            raise DatasetError(f"{option} must be at least 1, got {value}")
    return {"train_good": min(n_train, train or n_train), "test_good": normal or len(test_good),
            "test_anomalous": min(n_anomalous, anomalous or n_anomalous)}


def build(split: Split, out: Path, layout: str = "mosaic", *, normal: int | None = None,
          anomalous: int | None = None, train: int | None = None, seed: int = 0, force: bool = False) -> Built:
    """Write the `layout` benchmark of `split` to OUT (see the module docstring)."""
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown layout {layout!r}; choose {', '.join(LAYOUTS)}")
    out = Path(out)
    _check_destination(out, split.root, force)
    rows, cols = LAYOUTS[layout]
    grid = Grid(rows, cols, cell_size(split.train_good))
    width, height = grid.size
    if width * height > MAX_PIXELS:
        raise DatasetError(f"{split.root}: a {rows} x {cols} {layout} of {grid.cell[0]}x{grid.cell[1]} cells would be "
                           f"{width}x{height}, over the {MAX_PIXELS // 1_000_000} megapixel limit")
    counts = plan_counts(split, grid, normal, anomalous, train)
    rng = np.random.default_rng(seed)
    mode = "L" if all(_mode(p) == "L" for p in split.train_good[:8]) else "RGB"
    with staged_folder(out, "building") as staging:
        writer = _Writer(staging, grid, mode, split.root)
        order = rng.permutation(len(split.train_good))
        for n in range(counts["train_good"]):
            chosen = order[n * grid.count:(n + 1) * grid.count]
            writer.write(f"train/good/{n:03d}.jpg", [split.train_good[i] for i in chosen])
        good_pool = [s.path for s in split.test if s.label == 0]
        for n in range(counts["test_good"]):
            writer.write(f"test/good/{n:03d}.jpg", _pick(rng, good_pool, grid.count))
        for sample in _limit(rng, [s for s in split.test if s.label == 1], counts["test_anomalous"]):
            at = int(rng.integers(grid.count))
            cells = _pick(rng, good_pool, grid.count - 1)
            cells.insert(at, sample.path)
            writer.write(f"test/{sample.defect}/{sample.path.stem}.jpg", cells, sample, at)
        manifest = {"layout": layout, "grid": grid.to_json(), "source": str(split.root), "seed": seed,
                    "images": writer.manifest}
        atomic_write_bytes(staging / MANIFEST, json.dumps(manifest, indent=1).encode("utf-8"))
        discover(staging)  # the layout loads before it replaces anything
    return Built(out, grid, counts)


def _mode(path: Path) -> str:
    with Image.open(path) as image:
        return image.mode


def _check_destination(out: Path, source: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise DatasetError(f"{out}: folder is not empty (use --force to replace it)")
    resolved, src = out.resolve(), Path(source).resolve()
    if resolved == src or src in resolved.parents or resolved in src.parents:
        raise DatasetError(f"{out}: must lie outside the source set {source}")
